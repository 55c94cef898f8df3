"""Baselines compared: none vs mean vs group vs leave-one-out (vs a learned value), over seeds.

Two measurements, both on the tiny model's toy task (sorting 6 characters over "ab", reward = edit-
distance credit, the defaults of `textgym train --model tiny`):

1. Gradient variance at a fixed policy: many independent batches of rollouts from the same initial
   policy, the REINFORCE gradient of each under every baseline; the trace of the covariance of the
   gradient estimates, and the distance of their mean from the no-baseline mean (the seed's claim:
   a state-only baseline keeps the mean and lowers the variance).
2. Learning: validation reward after a fixed number of updates, for every baseline and seed.

    python examples/benchmarks/baselines.py                  # 3 seeds, 40 updates, 64 variance batches
    python examples/benchmarks/baselines.py --seeds 0 1 --iterations 10 --batches 16   # quicker
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import textgym
from agents import LMPolicy, REINFORCE
from agents.rollouts import collect_episodes, to_batch

TASK = dict(task="sort", task_kwargs={"length": 6, "alphabet": "ab"}, reward="partial_credit", max_new_tokens=6)
BASELINES = ["none", "mean", "group", "leave_one_out", "value"]


def make(seed: int, baseline: str, prompts: int, group: int):
    policy = LMPolicy.from_pretrained("tiny", seed=seed)
    envs = textgym.TextGenVectorEnv(num_envs=prompts * group, group_size=group, tokenizer=policy.tokenizer, **TASK)
    policy.restrict_actions(envs.action_masks()[0])
    agent = REINFORCE(policy, baseline=baseline, lr=1e-3, seed=seed, loss_aggregation="sum")
    return agent, envs


def flat_grad(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel()) for p in model.parameters()])


def gradient_variance(batches: int, prompts: int, group: int) -> dict[str, tuple[float, float]]:
    """trace Cov[g] and |mean g - mean g_none| / |mean g_none| per baseline, same rollouts for all."""
    agent, envs = make(0, "none", prompts, group)
    rollouts = []
    for b in range(batches):
        agent.policy.seed(1000 + b)
        rollouts.append(to_batch(collect_episodes(agent.policy, envs, seed=1000 + b)[0], group_size=group))
    grads = {}
    for baseline in BASELINES[:4]:  # the value head starts at 0, i.e. as "none": compared in learning only
        agent = REINFORCE(agent.policy, agent.config, baseline=baseline)
        agent.running_mean = float(np.mean([r.episode_returns.mean() for r in rollouts]))  # a converged running mean
        gs = []
        for batch in rollouts:
            agent.compute_gradients(batch, agent.advantages(batch)[0])
            gs.append(flat_grad(agent.policy.model))
        grads[baseline] = torch.stack(gs).double()
    ref = grads["none"].mean(0)
    out = {}
    for baseline, g in grads.items():
        trace = float(g.var(dim=0, unbiased=True).sum())
        shift = float((g.mean(0) - ref).norm() / ref.norm())
        out[baseline] = (trace, shift)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--iterations", type=int, default=40)
    p.add_argument("--batches", type=int, default=64, help="rollout batches for the variance estimate")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    var = gradient_variance(args.batches, args.prompts, args.group_size)
    print(f"gradient estimates at the initial policy ({args.batches} batches of {args.prompts}x{args.group_size} episodes):\n")
    print("| baseline | trace Cov[g] | relative to none | mean shift vs none (|Δ|/|g|) |\n|---|---|---|---|")
    for b, (trace, shift) in var.items():
        print(f"| {b} | {trace:.4g} | {trace / var['none'][0]:.3f} | {shift:.3f} |")

    print(f"\nvalidation reward after {args.iterations} updates (seeds {args.seeds}):\n")
    print("| baseline | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean |\n|---|" + "---|" * (len(args.seeds) + 1))
    for baseline in BASELINES:
        finals = []
        for seed in args.seeds:
            agent, envs = make(seed, baseline, args.prompts, args.group_size)
            val = textgym.TextGenVectorEnv(num_envs=32, split="validation", tokenizer=agent.policy.tokenizer, **TASK)
            agent.learn(envs, iterations=args.iterations, progress_bar=False)
            finals.append(agent.evaluate(val, episodes=64)["reward"])
        print(f"| {baseline} | " + " | ".join(f"{f:.3f}" for f in finals) + f" | {np.mean(finals):.3f} |", flush=True)


if __name__ == "__main__":
    main()
