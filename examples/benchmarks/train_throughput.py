"""Training throughput: textgym's REINFORCE vs TRL's GRPOTrainer, same model, batch, group, lengths.

Both run the same recipe: P prompts x G samples per update (group baseline), at most N new tokens
at temperature T, AdamW at the same learning rate, no KL term, one gradient step per batch. Each
update is sampling + reward + one forward/backward; the measure is completion tokens per second of
wall time over whole updates (sampling included), after `--warmup` updates that are not counted.
TRL is an optional, bench-only dependency (`pip install trl`; it also brings `datasets`).

    python examples/benchmarks/train_throughput.py                    # SmolLM2-135M-Instruct, comparison
    python examples/benchmarks/train_throughput.py --model tiny --task copy --max-new-tokens 6 --updates 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
from trl_grpo import TRL_MISSING, grpo_trainer, trl_available

from agents.reinforce import REINFORCEConfig
from textgym.config import EnvConfig


def reinforce_updates(args) -> list[tuple[float, int]]:
    """(seconds, completion tokens) of each REINFORCE update after the warm-up."""
    import textgym
    from agents import REINFORCE, LMPolicy

    policy = LMPolicy.from_pretrained(args.model, temperature=args.temperature, seed=args.seed, dtype="float32")
    envs = textgym.TextGenVectorEnv(num_envs=args.prompts * args.group_size, group_size=args.group_size,
                                    task=args.task, task_kwargs=args.task_kwargs, tokenizer=policy.tokenizer,
                                    max_new_tokens=args.max_new_tokens)  # fmt: skip
    agent = REINFORCE(policy, baseline="group", lr=args.lr, seed=args.seed, amp=args.amp)
    marks: list[tuple[float, int]] = []

    def callback(metrics: dict) -> None:
        marks.append((time.perf_counter(), int(round(metrics["episode_length"] * envs.num_envs))))

    start = time.perf_counter()
    agent.learn(envs, iterations=args.warmup + args.updates, progress_bar=False, callback=callback)
    times = [start] + [t for t, _ in marks]
    return [(times[i + 1] - times[i], marks[i][1]) for i in range(args.warmup, len(marks))]


def trl_updates(args) -> list[tuple[float, int]]:
    """(seconds, completion tokens) of each GRPOTrainer step after the warm-up."""
    from transformers import TrainerCallback

    from agents.models import load_model
    from textgym.transition import Transition

    model, tokenizer = load_model(args.model, device="auto", dtype="float32")
    rules = Transition(EnvConfig(task=args.task, task_kwargs=args.task_kwargs, tokenizer=tokenizer,
                                   max_new_tokens=args.max_new_tokens))  # fmt: skip
    steps = args.warmup + args.updates
    marks: list[tuple[float, int]] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            marks.append((time.perf_counter(), 0))

        def on_log(self, a, state, control, logs=None, **kw):
            length = (logs or {}).get("completions/mean_length")
            if length is not None and marks:
                marks[-1] = (marks[-1][0], int(round(length * args.prompts * args.group_size)))

    trainer = grpo_trainer(model, tokenizer, rules, prompts=args.prompts, group_size=args.group_size,
                           max_new_tokens=args.max_new_tokens, temperature=args.temperature, lr=args.lr,
                           steps=steps, seed=args.seed, callbacks=[Clock()])  # fmt: skip
    trainer.train()
    end = time.perf_counter()
    times = [t for t, _ in marks] + [end]
    return [(times[i + 1] - times[i], marks[i][1]) for i in range(args.warmup, len(marks))]


def summarize(name: str, updates: list[tuple[float, int]]) -> float:
    seconds = sum(s for s, _ in updates)
    tokens = sum(n for _, n in updates)
    rate = tokens / seconds
    print(f"{name:>10}: {len(updates)} updates, median {statistics.median(s for s, _ in updates):.2f} s/update, "
          f"{tokens / len(updates):.0f} completion tokens/update, {rate:.1f} tokens/s")  # fmt: skip
    return rate


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct", help="'smollm2-135m-instruct' (default), 'tiny', an HF id or dir")
    p.add_argument("--task", default=EnvConfig.task, help=f"default: textgym train's ({EnvConfig.task})")
    p.add_argument("--task-kwargs", type=json.loads, default={}, help="JSON task arguments, e.g. '{\"length\": 2}'")
    p.add_argument("--prompts", type=int, default=2)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--lr", type=float, default=REINFORCEConfig.lr, help=f"both trainers (default: textgym train's, {REINFORCEConfig.lr})")
    p.add_argument("--updates", type=int, default=4, help="timed updates per trainer")
    p.add_argument("--warmup", type=int, default=1, help="untimed updates first")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--amp", choices=["off", "bf16", "auto"], default="off",
                   help="REINFORCE's update precision (off: float32 like TRL here; auto: what textgym train uses)")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if not trl_available():
        print(TRL_MISSING)
        return 0
    import trl
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"model {args.model}, task {args.task}: {args.prompts} prompts x {args.group_size} samples, "
          f"<= {args.max_new_tokens} new tokens, T={args.temperature}, lr={args.lr}, {torch.get_num_threads()} threads, "
          f"{'cuda' if torch.cuda.is_available() else 'cpu'}, trl {trl.__version__}")  # fmt: skip
    ours = summarize("REINFORCE", reinforce_updates(args))
    theirs = summarize("TRL GRPO", trl_updates(args))
    print(f"ratio REINFORCE / TRL GRPOTrainer: {ours / theirs:.2f}x completion tokens/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
