"""What each guard against learning the prior does, one at a time, on the tiny model's toy task.

Each variant is the `tiny` preset of `textgym train` (copy 6 characters over "abc", edit-distance
credit; `--preset` picks another) with some REINFORCEConfig settings changed, trained for
`--iterations` updates on each seed. Per run it reports what the guard acts on, read from the run's
metrics: the validation reward at the end and its lowest value after first reaching 0.9, the mean
token entropy over the last 10 updates, the share of groups whose rewards were all equal (no
gradient), the samples spent, and for the clipped loss the share of clipped tokens.

    python examples/benchmarks/guards.py                                    # the built-in variants, seeds 0-2
    python examples/benchmarks/guards.py --variants plain clip-higher --seeds 0 1 2 3
    python examples/benchmarks/guards.py --variant mine '{"dynamic_sampling": true, "kl_coef": 0.05}'

Writes one JSON line per (variant, seed) to --out; rows already there are reused (it resumes).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

import textgym
from agents import LMPolicy, REINFORCE
from agents.train import resolve_settings, split_settings

# Each guard alone on top of the preset, and the two-epoch clipped loss they are compared with.
VARIANTS: dict[str, dict] = {
    "plain": {},
    "dynamic-sampling": {"dynamic_sampling": True},
    "frontier": {"frontier_weight": 0.1},
    "entropy-target": {"entropy_target": 0.3, "entropy_lr": 0.05},
    "mask-truncated": {"mask_truncated": True},
    "kl": {"kl_coef": 0.05},
    "2-epochs": {"epochs": 2},
    "clip-higher": {"epochs": 2, "cliprange_high": 0.28},
}


def run(variant: str, settings: dict, seed: int, args: argparse.Namespace) -> dict:
    flags = {"model": "tiny", **({"preset": args.preset} if args.preset else {})}
    run_cfg, management, env_cfg, agent_cfg, sampling = split_settings(resolve_settings(flags))
    torch.manual_seed(seed)
    policy = LMPolicy.from_pretrained("tiny", seed=seed, temperature=sampling.temperature)
    envs = textgym.TextGenVectorEnv(num_envs=run_cfg.prompts * run_cfg.group_size, group_size=run_cfg.group_size,
                                    config=env_cfg, tokenizer=policy.tokenizer)  # fmt: skip
    eval_env = textgym.TextGenVectorEnv(num_envs=32, split="validation", config=env_cfg, tokenizer=policy.tokenizer)
    if run_cfg.mask_actions:
        policy.restrict_actions(envs.action_masks()[0])
    agent = REINFORCE(policy, agent_cfg.replace(seed=seed, **settings))
    rows: list[dict] = []
    t0 = time.perf_counter()
    agent.learn(envs, iterations=args.iterations, eval_env=eval_env, eval_every=args.eval_every,
                eval_episodes=args.eval_episodes, progress_bar=False, callback=rows.append)  # fmt: skip
    train = [r for r in rows if "train_reward" in r]
    vals = [(r["iteration"], r["val_reward"]) for r in rows if "val_reward" in r]
    first = next((i for i, v in vals if v >= 0.9), None)
    last = train[-10:]
    mean = lambda key: float(np.mean([r[key] for r in last if key in r])) if any(key in r for r in last) else None  # noqa: E731
    return {
        "variant": variant, "seed": seed, "settings": settings, "preset": args.preset or "tiny",
        "iterations": args.iterations, "final_val": vals[-1][1] if vals else None,
        "first_0.9": first, "lowest_after_0.9": min((v for i, v in vals if first is not None and i >= first), default=None),
        "entropy_last10": mean("entropy"), "all_equal_groups": float(np.mean([r["groups_all_equal"] for r in train])),
        "samples": train[-1]["samples"] if train else 0, "clip_fraction": mean("clip_fraction"),
        "seconds": round(time.perf_counter() - t0, 1),
    }  # fmt: skip


def _num(value: float | None) -> str:
    return "–" if value is None or value != value else f"{value:.3f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), help=f"built-in variants: {', '.join(VARIANTS)}")
    p.add_argument("--variant", nargs=2, action="append", default=[], metavar=("NAME", "SETTINGS"),
                   help="another variant: a name and REINFORCEConfig settings as JSON")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--eval-episodes", type=int, default=64)
    p.add_argument("--preset", default=None, help="a preset of `textgym train --model tiny` (default: tiny)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("runs/guards.jsonl"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; built in: {', '.join(VARIANTS)} (or --variant NAME JSON)")
    variants = {v: VARIANTS[v] for v in args.variants} | {name: json.loads(text) for name, text in args.variant}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    done = {}
    if args.out.exists():
        for line in args.out.read_text().splitlines():
            row = json.loads(line)
            done[(row["variant"], row["seed"], row["preset"], row["iterations"], json.dumps(row["settings"], sort_keys=True))] = row
    results = []
    for name, settings in variants.items():
        for seed in args.seeds:
            key = (name, seed, args.preset or "tiny", args.iterations, json.dumps(settings, sort_keys=True))
            row = done.get(key)
            if row is None:
                row = run(name, settings, seed, args)
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
            results.append(row)
            print(f"{name:>18} seed {seed}: final {_num(row['final_val'])}, first >= 0.9 at {row['first_0.9']}, "
                  f"lowest after {_num(row['lowest_after_0.9'])}, entropy {_num(row['entropy_last10'])}, "
                  f"all-equal groups {row['all_equal_groups']:.2f}, samples {row['samples']:.0f}", flush=True)  # fmt: skip
    print("\n| variant | final validation (mean over seeds) | updates to 0.9 | lowest after 0.9 | entropy, last 10 | "
          "groups with no gradient | samples | clipped tokens |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for name in variants:
        rows = [r for r in results if r["variant"] == name]
        avg = lambda key: np.mean([r[key] for r in rows if r[key] is not None]) if any(r[key] is not None for r in rows) else math.nan  # noqa: E731
        firsts = ", ".join("never" if r["first_0.9"] is None else str(r["first_0.9"]) for r in rows)
        lows = ", ".join("–" if r["lowest_after_0.9"] is None else f"{r['lowest_after_0.9']:.2f}" for r in rows)
        clip = avg("clip_fraction")
        print(f"| {name} | {_num(avg('final_val'))} | {firsts} | {lows} | {_num(avg('entropy_last10'))} | "
              f"{avg('all_equal_groups'):.2f} | {avg('samples'):.0f} | {_num(clip)} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
