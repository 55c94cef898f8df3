"""Baselines compared: none vs mean vs group vs leave-one-out (vs a learned value), over seeds.

Two measurements, on the tiny model's toy task (`--model tiny`: the `tiny` preset of `textgym
train`; `--preset tiny-sort` for the earlier toy) or on the default model and task
(`--model smollm2-135m-instruct`: `textgym train`'s main job):

1. Gradient variance at a fixed policy: many independent batches of rollouts from the same initial
   policy, the REINFORCE gradient of each under every baseline; the trace of the covariance of the
   gradient estimates (summed per parameter, so it fits in memory for a 134M-parameter model), and
   the distance of their mean from the no-baseline mean (the claim of eq. 24-25: a state-only baseline
   keeps the mean and lowers the variance).
2. Learning: validation reward after a fixed number of updates, for every baseline and seed, with
   the mean and a 95% interval over seeds.

    python examples/benchmarks/baselines.py --model tiny                       # 3 seeds, 30 updates, 32 batches
    python examples/benchmarks/baselines.py --model smollm2-135m-instruct --iterations 20 --batches 16
    python examples/benchmarks/baselines.py --skip-variance --seeds 3 4        # more learning runs

Writes a JSON line per measurement to --out (learning runs already there are reused, so it resumes).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

import textgym
from agents import LMPolicy, REINFORCE
from agents.rollouts import collect_episodes, to_batch
from agents.train import PRESETS, resolve_settings, split_settings

BASELINES = ["none", "mean", "group", "leave_one_out", "value"]


def setup(model: str, preset: str | None = None):
    """The configs of `textgym train --model <model> [--preset P]`: the defaults, then the preset."""
    run, _, env, agent, sampling = split_settings(resolve_settings({"model": model, **({"preset": preset} if preset else {})}))
    return run, env, agent, sampling


def make(args, seed: int, baseline: str):
    run, env, agent_cfg, sampling = setup(args.model, args.preset)
    policy = LMPolicy.from_pretrained(args.model, seed=seed, temperature=sampling.temperature)
    envs = textgym.TextGenVectorEnv(num_envs=run.prompts * args.group_size, group_size=args.group_size,
                                    config=env, tokenizer=policy.tokenizer)  # fmt: skip
    if run.mask_actions:
        policy.restrict_actions(envs.action_masks()[0])
    agent = REINFORCE(policy, agent_cfg, baseline=baseline, seed=seed)
    return agent, envs


def gradient_variance(args) -> dict[str, dict[str, float]]:
    """Per baseline: trace Cov[g] and |mean g - mean g_none| / |mean g_none|, all from the same rollouts."""
    agent, envs = make(args, 0, "none")
    # the REINFORCE estimator alone: a preset's entropy bonus or KL term would add the same extra
    # gradient under every baseline
    agent = REINFORCE(agent.policy, agent.config, entropy_coef=0.0, kl_coef=0.0)
    rollouts = []
    for b in range(args.batches):
        agent.policy.seed(1000 + b)
        rollouts.append(to_batch(collect_episodes(agent.policy, envs, seed=1000 + b)[0], group_size=args.group_size))
    params = [p for p in agent.policy.model.parameters() if p.requires_grad]
    out, reference = {}, None
    for baseline in BASELINES[:4]:  # the value head starts at 0, i.e. as "none": compared in learning only
        agent = REINFORCE(agent.policy, agent.config, baseline=baseline)
        agent.running_mean = [float(np.mean([r.episode_returns.mean() for r in rollouts]))]  # a converged running mean
        total = [torch.zeros_like(p, dtype=torch.float64) for p in params]
        squares = [torch.zeros_like(p, dtype=torch.float64) for p in params]
        for batch in rollouts:
            agent.compute_gradients(batch, agent.advantages(batch)[0])
            for t, q, p in zip(total, squares, params):
                g = p.grad.double() if p.grad is not None else torch.zeros_like(t)
                t += g
                q += g * g
        n = len(rollouts)
        mean = [t / n for t in total]
        trace = sum(float(((q - n * m * m) / (n - 1)).sum()) for q, m in zip(squares, mean))  # Σ_i unbiased Var(g_i)
        if reference is None:
            reference = mean
        shift = math.sqrt(sum(float(((m - r) ** 2).sum()) for m, r in zip(mean, reference)))
        norm = math.sqrt(sum(float((r**2).sum()) for r in reference))
        out[baseline] = {"trace": trace, "shift": shift / norm}
        agent.policy.model.zero_grad(set_to_none=True)
    return out


def learning(args, seed: int, baseline: str) -> float:
    agent, envs = make(args, seed, baseline)
    val = textgym.TextGenVectorEnv(num_envs=64, config=setup(args.model, args.preset)[1], split="validation", tokenizer=agent.policy.tokenizer)
    agent.learn(envs, iterations=args.iterations, progress_bar=False)
    return agent.evaluate(val, episodes=args.eval_episodes)["reward"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny", help="tiny (the toy task) or smollm2-135m-instruct (the main job)")
    p.add_argument("--preset", choices=list(PRESETS), default=None, help="the model's own preset unless given (tiny-sort: the earlier toy)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--baselines", nargs="+", default=BASELINES, choices=BASELINES)
    p.add_argument("--iterations", type=int, default=30)
    p.add_argument("--batches", type=int, default=32, help="rollout batches for the variance estimate")
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--eval-episodes", type=int, default=256)
    p.add_argument("--skip-variance", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="runs/baselines.jsonl")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []

    # which toy a tiny row was measured on: rows written before the presets were named carry none
    preset = args.preset or ("tiny" if args.model == "tiny" else None)

    def record(row: dict) -> None:
        row = {"model": args.model, **({"preset": preset} if preset else {}), **row}
        with open(out, "a") as f:
            f.write(json.dumps(row) + "\n")
        done.append(row)

    if not args.skip_variance:
        var = gradient_variance(args)
        record({"kind": "variance", "batches": args.batches, **{b: v for b, v in var.items()}})
        prompts = setup(args.model, args.preset)[0].prompts
        print(f"gradient estimates at the initial policy ({args.batches} batches of {prompts}x{args.group_size} episodes):\n")
        print("| baseline | trace Cov[ĝ] | vs none | mean shift vs none (|Δ|/|ĝ|) |\n|---|---|---|---|")
        for b, v in var.items():
            print(f"| {b} | {v['trace']:.4g} | {v['trace'] / var['none']['trace']:.3f} | {v['shift']:.3f} |", flush=True)

    print(f"\nvalidation reward after {args.iterations} updates ({args.eval_episodes} episodes; seeds {args.seeds}):\n")
    print("| baseline | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean ± 95% CI over seeds |\n|---|"
          + "---|" * (len(args.seeds) + 1))  # fmt: skip
    for baseline in args.baselines:
        finals = []
        for seed in args.seeds:
            key = {"kind": "learning", "preset": preset, "baseline": baseline, "seed": seed, "iterations": args.iterations,
                   "eval_episodes": args.eval_episodes}  # fmt: skip
            found = [r for r in done if r.get("model") == args.model and all(r.get(k) == v for k, v in key.items())]
            reward = found[-1]["validation_reward"] if found else learning(args, seed, baseline)
            if not found:
                record({k: v for k, v in key.items() if k != "preset"} | {"validation_reward": reward})
            finals.append(reward)
        half = 1.96 * np.std(finals, ddof=1) / math.sqrt(len(finals)) if len(finals) > 1 else float("nan")
        print(f"| {baseline} | " + " | ".join(f"{f:.3f}" for f in finals) + f" | {np.mean(finals):.3f} ± {half:.3f} |", flush=True)


if __name__ == "__main__":
    main()
