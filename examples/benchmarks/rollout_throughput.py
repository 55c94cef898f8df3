"""Rollout throughput: the env.step loop (LMPolicy.act over TextGenVectorEnv) vs model.generate,
vs re-encoding the prefix every step, vs the bare KV-cache forward loop of the HF model, vs the vLLM policy.

Every variant turns the same left-padded batch of `addition` prompts (chat format) into exactly
B x N new tokens: the end token is masked out everywhere and the env has no stop strings, so
nobody stops early. The variants alternate inside each repeat (the machine is shared, so only
ratios measured side by side mean anything) and the table reports medians.

    (a) env.step loop   policy.act(obs) -> envs.step(actions), the policy's per-slot KV cache, its
                        one-token steps by LMPolicy's default decode step (the static one on a CPU)
    (a') HF forward     the same loop with LMPolicy(decode="hf"): one-token steps through the HF
                        forward and its DynamicCache
    (a") compiled       the same loop with LMPolicy(decode="compiled") (only with --compiled)
    (b) generate        model.generate(do_sample=True, same temperature, min/max_new_tokens=N)
    (c) no cache        one forward of the whole prefix per step, then sample
    (d) HF KV loop      one-token HF forward passes through a DynamicCache; no sampling, no env
    (e) vLLM policy     VLLMPolicy.act(obs) -> envs.step(actions): the engine generates each slot's
                        turn from its token ids, handed out one token per step (only where vLLM
                        imports: the vLLM environment, `bash .ci/setup-vllm VENV`)

The first call of each variant (4 tokens) is timed apart as its warm-up: packing the weights for
the static step, compiling for (a").

    python examples/benchmarks/rollout_throughput.py [--batch 8 32] [--new-tokens 32 64] [--repeats 3] [--compiled]
        [--skip b c d] [--out results.json]
    python examples/benchmarks/rollout_throughput.py --model tiny --smoke
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
from transformers import DynamicCache, LogitsProcessor, LogitsProcessorList

import textgym
from agents import LMPolicy
from agents.models import cache_argument


class BanTokens(LogitsProcessor):
    """-inf on the end token and on ids past the tokenizer's vocabulary (what the policy never samples)."""

    def __init__(self, banned: torch.Tensor):
        self.banned = banned

    def __call__(self, input_ids, scores):
        return scores.masked_fill(self.banned[: scores.shape[-1]], float("-inf"))


def make_setup(policy: LMPolicy, batch: int, new_tokens: int, seed: int = 0):
    envs = textgym.TextGenVectorEnv(num_envs=batch, task="addition", tokenizer=policy.tokenizer,
                                    max_new_tokens=new_tokens, stop_strings=())
    obs, _ = envs.reset(seed=seed)
    lengths = obs["seq_len"][:, 0]
    width = int(lengths.max())
    ids = np.zeros((batch, width), dtype=np.int64)
    mask = np.zeros((batch, width), dtype=np.int64)
    for i, n in enumerate(lengths):
        ids[i, width - n:] = obs["input_ids"][i, :n]
        mask[i, width - n:] = 1
    return envs, torch.as_tensor(ids), torch.as_tensor(mask)


def env_loop(policy, envs, new_tokens, seed=0, timings=None):
    """(a) The ordinary Gymnasium loop; returns the number of tokens generated."""
    policy.reset_cache()
    obs, _ = envs.reset(seed=seed)
    tokens = 0
    for _ in range(new_tokens):
        t0 = time.perf_counter()
        actions, _ = policy.act(obs)
        t1 = time.perf_counter()
        obs, _, terminated, truncated, _ = envs.step(actions)
        t2 = time.perf_counter()
        tokens += len(actions)
        if timings is not None:
            timings["act"] += t1 - t0
            timings["step"] += t2 - t1
    assert not terminated.any() and truncated.all(), "an episode ended early: the benchmark is unfair"
    return tokens


def generate(policy, ids, mask, new_tokens, banned):
    """(b) Hugging Face generate, sampling at the policy's temperature with nothing filtered."""
    out = policy.model.generate(
        input_ids=ids, attention_mask=mask, do_sample=True, temperature=policy.temperature, top_k=0, top_p=1.0,
        max_new_tokens=new_tokens, min_new_tokens=new_tokens, logits_processor=LogitsProcessorList([BanTokens(banned)]),
        pad_token_id=policy.tokenizer.eos_token_id,
    )
    return (out.shape[1] - ids.shape[1]) * ids.shape[0]


def _positions(mask):
    return (mask.cumsum(dim=1) - 1).clamp(min=0)


def no_cache(policy, ids, mask, new_tokens, banned):
    """(c) Re-encode the whole prefix every step (no KV cache), then sample."""
    model = policy.model
    for _ in range(new_tokens):
        logits = model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask), logits_to_keep=1).logits[:, -1]
        logits = logits.float().masked_fill(banned[: logits.shape[-1]], float("-inf")) / policy.temperature
        nxt = torch.multinomial(logits.softmax(-1), 1)
        ids = torch.cat([ids, nxt], dim=1)
        mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
    return new_tokens * ids.shape[0]


def kv_limit(policy, ids, mask, new_tokens, banned=None):
    """(d) Prefill, then one-token HF forwards through a DynamicCache; no sampling, no env."""
    model = policy.model
    cache = {cache_argument(model): DynamicCache()}  # the keyword this transformers' forward takes
    positions = _positions(mask)
    model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1, **cache)
    token, pos = ids[:, -1:], positions[:, -1:]
    for _ in range(new_tokens - 1):  # the prefill produced the first token's logits
        mask = torch.cat([mask, torch.ones_like(token)], dim=1)
        pos = pos + 1
        model(input_ids=token, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1, **cache)
    return new_tokens * ids.shape[0]


NAMES = {"a": "(a) env.step loop", "a'": "(a') HF forward", 'a"': '(a") compiled', "b": "(b) generate",
         "c": "(c) no cache", "d": "(d) HF KV loop", "e": "(e) vLLM policy"}


def measure(policy, batch, new_tokens, repeats, others, skip=(), engine=None):
    """Tokens/s of each variant per repeat and their medians, the ratios of (a) to the others, and
    each variant's first call in seconds; `others` maps more env.step-loop columns (a', a") to their
    policies; `skip` names the columns of b, c, d to leave out; `engine`, a VLLMPolicy around `policy`,
    adds (e)."""
    envs, ids, mask = make_setup(policy, batch, new_tokens)
    banned = torch.zeros(max(policy.model.config.vocab_size, policy.vocab_size), dtype=torch.bool)
    banned[policy.vocab_size:] = True
    banned[policy.tokenizer.eos_token_id] = True
    for p in [policy, *others.values()]:
        p.restrict_actions(~banned[: policy.vocab_size].numpy())  # the engine samples what its learner allows
    short_envs, _, _ = make_setup(policy, batch, min(4, new_tokens))
    variants = {
        "a": lambda n: env_loop(policy, envs if n == new_tokens else short_envs, n),
        **{k: (lambda n, p=p: env_loop(p, envs if n == new_tokens else short_envs, n)) for k, p in others.items()},
        "b": lambda n: generate(policy, ids, mask, n, banned),
        "c": lambda n: no_cache(policy, ids, mask, n, banned),
        "d": lambda n: kv_limit(policy, ids, mask, n),
    }
    if engine is not None:
        def engine_loop(n):
            loop_envs = envs if n == new_tokens else short_envs
            engine.check_env(loop_envs)  # each request asks for the env's budget, as in a rollout
            return env_loop(engine, loop_envs, n)

        variants["e"] = engine_loop
    variants = {k: fn for k, fn in variants.items() if k not in skip}
    rates = {k: [] for k in variants}
    first_call = {}
    with torch.no_grad():
        for k, fn in variants.items():  # warm-up (a few tokens: allocator, kernels, caches, packing, compiling)
            t0 = time.perf_counter()
            fn(min(4, new_tokens))
            first_call[k] = time.perf_counter() - t0
        for r in range(repeats):
            order = list(variants) if r % 2 == 0 else list(variants)[::-1]  # alternate the order
            for k in order:
                t0 = time.perf_counter()
                tokens = variants[k](new_tokens)
                rates[k].append(tokens / (time.perf_counter() - t0))
    for p in [policy, *others.values()]:
        p.restrict_actions(None)
    # Ratios are taken within each repeat (variants measured minutes apart on a shared machine are
    # not comparable), then the median over repeats.
    return {
        "batch": batch, "new_tokens": new_tokens, "tokens_per_s": rates,
        "median": {k: statistics.median(v) for k, v in rates.items()},
        "ratio": {f"a/{k}": statistics.median(a / o for a, o in zip(rates["a"], v)) for k, v in rates.items() if k != "a"},
        "first_call_s": first_call,
    }  # fmt: skip


def vllm_policy(policy, model):
    """A VLLMPolicy around `policy` where vLLM imports, else None (the column is left out)."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return None
    from agents.backends import make_policy

    return make_policy(policy, "vllm", source=model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--new-tokens", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="one tiny configuration, one repeat (proves it runs)")
    parser.add_argument("--compiled", action="store_true", help='add (a"): LMPolicy(decode="compiled") (minutes of compilation)')
    parser.add_argument("--skip", nargs="+", default=[], choices=["b", "c", "d"], help="leave out these columns")
    parser.add_argument("--no-vllm", action="store_true", help="leave out the vLLM policy even where vLLM imports")
    parser.add_argument("--out", help="also write the settings and every repeat's figures to this JSON file")
    args = parser.parse_args()
    if args.smoke:
        args.batch, args.new_tokens, args.repeats = [2], [4], 1
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    policy = LMPolicy.from_pretrained(args.model, device="cpu", dtype="float32", temperature=args.temperature, seed=0)
    others = {"a'": LMPolicy(policy.model, policy.tokenizer, temperature=args.temperature, seed=0, decode="hf")}
    if args.compiled:
        others['a"'] = LMPolicy(policy.model, policy.tokenizer, temperature=args.temperature, seed=0, decode="compiled")
    engine = None if args.no_vllm else vllm_policy(policy, args.model)

    columns = [k for k in ["a", *others, "b", "c", "d", *["e"][: engine is not None]] if k not in args.skip]
    print(f"\n{args.model}, {torch.get_num_threads()} CPU threads, T={args.temperature}, (a) decode={policy.decode!r}, "
          f"median of {args.repeats} alternating repeats, useful tokens/s\n")
    print("| B | N | " + "".join(f"{NAMES[k]} | " for k in columns) + "".join(f"a/{k} | " for k in columns[1:]))
    print("|---:|---:|" + "---:|" * (2 * len(columns) - 1))
    rows = []
    for batch in args.batch:
        for new_tokens in args.new_tokens:
            m = measure(policy, batch, new_tokens, args.repeats, others, args.skip, engine)
            print(f"| {batch} | {new_tokens} | " + "".join(f"{m['median'][k]:.0f} | " for k in columns)
                  + "".join(f"{m['ratio']['a/' + k]:.2f} | " for k in columns[1:]), flush=True)
            rows.append(m)
    print("\nFirst call of each variant (4 tokens; packing the weights, compiling), seconds:")
    for m in rows:
        print(f"  B={m['batch']} N={m['new_tokens']}: " + ", ".join(f"({k}) {v:.1f}" for k, v in m["first_call_s"].items()))
    if args.out:
        settings = {k: getattr(args, k) for k in ("model", "repeats", "temperature")}
        settings.update(threads=torch.get_num_threads(), decode=policy.decode, torch=torch.__version__, columns=NAMES)
        with open(args.out, "w") as f:
            json.dump({"settings": settings, "rows": rows}, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
