"""Multi-turn rollout throughput: LMPolicy's suffix prefill vs recomputing a slot after every reply.

In a multi-turn episode the environment appends its reply (feedback, a tool result) after the
policy's turn, so the next observation extends the previous one by several tokens. LMPolicy then
prefills only those new tokens into the slot's KV cache (a). The alternative (b) — what a policy
without that path does — drops the slot's cache whenever more than one token arrived and runs the
whole prefix through the model again.

Both variants run the same guessing-game episodes (chat template, several turns each, feedback after
every guess) through the ordinary `policy.act(obs) -> envs.step(actions)` loop on a vector env, from
the same seeds; they alternate inside each repeat (the machine is shared: only ratios measured side
by side mean anything) and the table reports medians. Tokens/s counts the policy's sampled tokens;
replies/s the environment replies appended.

    python examples/benchmarks/multiturn_throughput.py [--batch 8] [--steps 200] [--repeats 3]
    python examples/benchmarks/multiturn_throughput.py --model tiny --smoke
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

import textgym
from agents import LMPolicy


class RecomputingPolicy(LMPolicy):
    """(b) LMPolicy that recomputes a slot's whole prefix whenever its observation grew by more than
    the one token it chose (after every environment reply), instead of prefilling the new tokens."""

    def act(self, obs, greedy=False, active=None):
        seq_len = np.asarray(obs["seq_len"]).reshape(-1).astype(np.int64)
        if self._cached_len.shape == seq_len.shape:
            grew = seq_len > self._cached_len + 1
            self._cached_len[grew] = 0  # not an extension any more: the slot is recomputed
        return super().act(obs, greedy=greedy, active=active)


def rollout(policy, envs, steps: int, seed: int) -> tuple[int, int]:
    """`steps` env.step calls from a seeded reset; returns (policy tokens, env replies)."""
    policy.reset_cache()
    policy.seed(seed)
    obs, _ = envs.reset(seed=seed)
    tokens = replies = 0
    for _ in range(steps):
        before = np.asarray(obs["seq_len"]).reshape(-1).copy()
        actions, _ = policy.act(obs)
        obs, _, terminated, truncated, _ = envs.step(actions)
        tokens += len(actions)
        after = np.asarray(obs["seq_len"]).reshape(-1)
        ended = terminated | truncated
        replies += int(((after > before + 1) & ~ended).sum())
    return tokens, replies


def measure(model: str, batch: int, steps: int, repeats: int, temperature: float, env_kwargs: dict) -> dict:
    fast = LMPolicy.from_pretrained(model, device="cpu", temperature=temperature, seed=0)
    slow = RecomputingPolicy(fast.model, fast.tokenizer, temperature=temperature, seed=0)
    envs = {name: textgym.TextGenVectorEnv(num_envs=batch, tokenizer=fast.tokenizer, **env_kwargs) for name in "ab"}
    policies = {"a": fast, "b": slow}
    rates: dict[str, list[float]] = {"a": [], "b": []}
    replies: dict[str, list[int]] = {"a": [], "b": []}
    with torch.no_grad():
        for k in "ab":  # warm-up
            rollout(policies[k], envs[k], min(8, steps), seed=123)
        for r in range(repeats):
            for k in ("ab" if r % 2 == 0 else "ba"):
                t0 = time.perf_counter()
                tokens, n_replies = rollout(policies[k], envs[k], steps, seed=r)
                rates[k].append(tokens / (time.perf_counter() - t0))
                replies[k].append(n_replies)
    ratio = statistics.median(a / b for a, b in zip(rates["a"], rates["b"]))
    return {"a": statistics.median(rates["a"]), "b": statistics.median(rates["b"]), "a/b": ratio,
            "replies": statistics.median(replies["a"]), "replies_b": statistics.median(replies["b"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--batch", type=int, nargs="+", default=[8])
    parser.add_argument("--steps", type=int, default=200, help="env.step calls per repeat")
    parser.add_argument("--max-turn-tokens", type=int, default=16)
    parser.add_argument("--max-turns", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=160,
                        help="the episode's budget after the prompt: the policy's tokens and the replies")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="one tiny configuration, one repeat (proves it runs)")
    args = parser.parse_args()
    if args.smoke:
        args.batch, args.steps, args.repeats = [2], 12, 1
        args.max_turn_tokens, args.max_turns, args.max_new_tokens = 3, 3, 40
    torch.set_num_threads(args.threads)
    env_kwargs = {"task": "guess", "max_turns": args.max_turns, "max_turn_tokens": args.max_turn_tokens,
                  "max_new_tokens": args.max_new_tokens}
    print(f"\n{args.model}, {torch.get_num_threads()} CPU threads, T={args.temperature}, task guess "
          f"({args.max_turns} turns of <= {args.max_turn_tokens} tokens), {args.steps} env steps, "
          f"median of {args.repeats} alternating repeats\n")
    print("| B | replies per repeat | (a) suffix prefill tokens/s | (b) recompute after replies tokens/s | a/b |")
    print("|---:|---:|---:|---:|---:|")
    for batch in args.batch:
        m = measure(args.model, batch, args.steps, args.repeats, args.temperature, env_kwargs)
        print(f"| {batch} | {m['replies']:.0f} | {m['a']:.0f} | {m['b']:.0f} | {m['a/b']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
