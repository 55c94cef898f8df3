"""Env overhead: TextGenVectorEnv steps/s with random actions vs Gymnasium's CartPoleVectorEnv, and
the env's share of a full LM rollout step (time in envs.step vs policy.act).

    python examples/benchmarks/env_overhead.py [--num-envs 8 64] [--model smollm2-135m-instruct]
    python examples/benchmarks/env_overhead.py --model tiny --smoke
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from gymnasium.envs.classic_control.cartpole import CartPoleVectorEnv

import textgym
from agents import LMPolicy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rollout_throughput import env_loop, make_setup  # noqa: E402  (the same a-loop)


def steps_per_second(envs, steps: int, seed: int = 0) -> float:
    """Env-steps/s (num_envs per call) of a random-action loop, autoresets included."""
    envs.reset(seed=seed)
    rng = np.random.default_rng(seed)
    actions = rng.integers(0, envs.single_action_space.n, size=(steps, envs.num_envs))
    start = time.perf_counter()
    for a in actions:
        envs.step(a)
    return steps * envs.num_envs / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--num-envs", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--lm-batch", type=int, default=8)
    parser.add_argument("--lm-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (proves it runs)")
    args = parser.parse_args()
    if args.smoke:
        args.num_envs, args.steps, args.repeats, args.lm_batch, args.lm_new_tokens = [4], 20, 1, 2, 4
    torch.set_num_threads(args.threads)
    policy = LMPolicy.from_pretrained(args.model, device="cpu", temperature=0.7, seed=0)
    tokenizer = policy.tokenizer

    print("\n| num_envs | TextGenVectorEnv steps/s | CartPoleVectorEnv steps/s | TextGen / CartPole |")
    print("|---:|---:|---:|---:|")
    for n in args.num_envs:
        # max_new_tokens=16 and random tokens over the whole vocabulary: episodes end (and are
        # decoded and verified) every 16 steps or on the end token, as in a real rollout.
        text = textgym.TextGenVectorEnv(num_envs=n, task="addition", tokenizer=tokenizer, max_new_tokens=16)
        cart = CartPoleVectorEnv(num_envs=n)
        ratios, text_rates, cart_rates = [], [], []
        for r in range(args.repeats):  # alternate the two, ratio within each repeat
            t = steps_per_second(text, args.steps, seed=r)
            c = steps_per_second(cart, args.steps, seed=r)
            text_rates.append(t), cart_rates.append(c), ratios.append(t / c)
        print(f"| {n} | {statistics.median(text_rates):,.0f} | {statistics.median(cart_rates):,.0f} "
              f"| {statistics.median(ratios):.3f} |", flush=True)

    # The env's share of the a-loop of rollout_throughput.py (eos masked, fixed-length episodes).
    envs, _, _ = make_setup(policy, args.lm_batch, args.lm_new_tokens)
    banned = np.zeros(policy.vocab_size, dtype=bool)
    banned[tokenizer.eos_token_id] = True
    policy.restrict_actions(~banned)
    shares = []
    with torch.no_grad():
        env_loop(policy, envs, args.lm_new_tokens)  # warm-up
        for _ in range(max(1, min(args.repeats, 3))):
            timings = {"act": 0.0, "step": 0.0}
            env_loop(policy, envs, args.lm_new_tokens, timings=timings)
            shares.append(timings["step"] / (timings["act"] + timings["step"]))
    policy.restrict_actions(None)
    print(f"\nenv share of a full LM step ({args.model}, B={args.lm_batch}, N={args.lm_new_tokens}): "
          f"envs.step = {100 * statistics.median(shares):.2f}% of envs.step + policy.act (target < 2%)")


if __name__ == "__main__":
    main()
