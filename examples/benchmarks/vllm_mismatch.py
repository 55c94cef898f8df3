"""How far the vLLM engine's behaviour log-probs are from the learner's, and what eq. 27's ratio does with it.

The vllm policy samples with the engine and records the engine's log-prob of each token, b(a|s);
the update recomputes pi(a|s) with the learner (the HF model, same weights). Both are float32 here,
so they differ by rounding in two different implementations. On episodes of the default task
(SmolLM2-135M-Instruct on comparison, the train preset's T = 0.7 and 24 new tokens) this prints,
over every sampled token:

- mean and max |log pi - log b|;
- KL(b || pi) estimated from the engine's own samples: k1 = mean(log b - log pi) (unbiased, can be
  negative) and k3 = mean(rho - 1 - log rho) (>= 0), with rho = pi / b;
- the importance ratio rho: its range, and the share of tokens eq. 27a's clip (1 ± ε) would touch;
- per sequence, the largest |sum of log pi - log b| (a sequence-level ratio's log).

The figures, with the settings and versions, go to --out (examples/results/vllm_mismatch.json).
The task, budget and temperature default to `textgym train`'s on the default model (its preset).

    VENV/bin/python examples/benchmarks/vllm_mismatch.py             # in the vLLM environment (.ci/setup-vllm VENV)
    VENV/bin/python examples/benchmarks/vllm_mismatch.py --episodes 64 --top-k 50 --top-p 0.9 --out /tmp/m.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

import textgym
from agents.policy import LMPolicy
from agents.rollouts import collect_episodes
from agents.runs import PRESETS
from textgym.config import EnvConfig
from textgym.tokenizers import DEFAULT_MODEL


def learner_log_probs(learner: LMPolicy, episode) -> np.ndarray:
    """log pi of the episode's sampled tokens under the learner (one forward of the whole sequence)."""
    ids = torch.as_tensor(episode.token_ids)[None]
    with torch.no_grad():
        columns = learner.log_probs(ids, torch.ones_like(ids))["log_probs"][0]
    return columns[episode.action_positions - 1].numpy()


def measure_mismatch(policy, envs, episodes: int, seed: int = 0, cliprange: float = 0.2) -> dict[str, float]:
    """The figures above for `episodes` episodes of `envs` acted by `policy` (a VLLMPolicy)."""
    deltas, sums = [], []
    for batch in range(-(-episodes // envs.num_envs)):
        for episode in collect_episodes(policy, envs, seed=seed + batch * envs.num_envs)[0]:
            delta = learner_log_probs(policy.learner, episode).astype(np.float64) - episode.log_probs  # log rho
            deltas.append(delta)
            sums.append(delta.sum())
    log_rho = np.concatenate(deltas)
    rho = np.exp(log_rho)
    return {
        "episodes": len(sums),
        "tokens": len(log_rho),
        "mean_abs": float(np.abs(log_rho).mean()),
        "max_abs": float(np.abs(log_rho).max()),
        "kl_k1": float((-log_rho).mean()),
        "kl_k3": float((rho - 1 - log_rho).mean()),
        "rho_min": float(rho.min()),
        "rho_max": float(rho.max()),
        "clipped": float(((rho < 1 - cliprange) | (rho > 1 + cliprange)).mean()),
        "max_abs_sequence": float(np.abs(sums).max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--task", default=EnvConfig().task)
    parser.add_argument("--episodes", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16, help="env slots per rollout")
    parser.add_argument("--max-new-tokens", type=int, default=PRESETS[DEFAULT_MODEL]["max_new_tokens"])
    parser.add_argument("--temperature", type=float, default=PRESETS[DEFAULT_MODEL]["temperature"])
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--kv-cache-mib", type=int, default=None, help="the engine's KV cache (None: VLLMPolicy's default)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "results" / "vllm_mismatch.json"),
                        help="where the figures go (JSON)")
    parser.add_argument("--note", default="", help="recorded with the figures (e.g. how busy the machine was)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from agents.backends import make_policy

    learner = LMPolicy.from_pretrained(args.model, device="cpu", dtype="float32", temperature=args.temperature,
                                       top_k=args.top_k, top_p=args.top_p, seed=args.seed)  # fmt: skip
    t0 = time.perf_counter()
    engine = {} if args.kv_cache_mib is None else {"kv_cache_memory_bytes": args.kv_cache_mib * 2**20}
    policy = make_policy(learner, "vllm", source=args.model, **engine)
    started = time.perf_counter() - t0
    print(f"engine started in {started:.0f} s")
    envs = textgym.TextGenVectorEnv(num_envs=args.batch, task=args.task, tokenizer=learner.tokenizer,
                                    max_new_tokens=args.max_new_tokens)  # fmt: skip
    t0 = time.perf_counter()
    m = measure_mismatch(policy, envs, args.episodes, seed=args.seed)
    measured = time.perf_counter() - t0
    print(f"\n{args.model} on {args.task}, float32, T={args.temperature}, top_k={args.top_k}, top_p={args.top_p}: "
          f"{m['episodes']} episodes, {m['tokens']} sampled tokens (engine b vs learner pi, same weights)\n")  # fmt: skip
    print(f"mean |log pi - log b|      {m['mean_abs']:.2e}")
    print(f"max  |log pi - log b|      {m['max_abs']:.2e}")
    print(f"KL(b || pi), k1 estimate   {m['kl_k1']:.2e}")
    print(f"KL(b || pi), k3 estimate   {m['kl_k3']:.2e}")
    print(f"rho = pi / b               {m['rho_min']:.6f} .. {m['rho_max']:.6f}")
    print(f"tokens eq. 27a clips       {m['clipped']:.1%} (clip range 1 ± 0.2)")
    print(f"max |log rho| of a sequence {m['max_abs_sequence']:.2e}")

    import vllm

    record = {
        "figures": m,
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "note")} | {"dtype": "float32", "device": "cpu",
                                                                                        "cliprange": 0.2},
        "versions": {"vllm": vllm.__version__, "torch": torch.__version__, "python": platform.python_version()},
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads; no GPU",
        "seconds": {"engine_start": round(started, 1), "measurement": round(measured, 1)},
        "note": args.note,
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
