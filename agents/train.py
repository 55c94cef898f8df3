"""`textgym train`: a REINFORCE run with train and validation rewards, a progress bar and a plot.

With no arguments it trains the embedded default model SmolLM2-135M-Instruct on single-digit
addition in its chat format ("What is 3 + 4?"; reward 1 when the last number in the reply is the
sum), with a group baseline over 8 samples of each of 2 prompts per update.
"""

from __future__ import annotations

import argparse
import builtins
import json
import sys
import time
from pathlib import Path

from textgym.rewards.core import ISOLATIONS

# Defaults that differ between the real model and the tiny char-level model.
MODEL_DEFAULTS = {
    "default": dict(task="addition", max_new_tokens=24, temperature=0.7, lr=2e-5, iterations=50, prompts=2, group_size=8),
    # Sort 6-character strings over "ab" (64 problems; 6 held out for validation), with edit-distance
    # credit so a half-right answer is better than a wrong one. The randomly initialised tiny model
    # memorises, rather than learns, tasks with a dozen problems (copy of 2 chars over "abc": 7 to
    # train on, 0 validation reward after 300 updates); here it goes from 0.33 (chance) to >= 0.9
    # validation reward in 25-30 updates, 10-15 s on 2 busy CPU cores (seeds 0-2).
    "tiny": dict(task="sort", max_new_tokens=6, temperature=1.0, lr=1e-3, iterations=60, prompts=8, group_size=8,
                 task_kwargs={"length": 6, "alphabet": "ab"}, reward="partial_credit"),
}  # fmt: skip


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m-instruct", help="'smollm2-135m-instruct' (default), 'tiny', an HF id, a local dir or a .gguf file")
    p.add_argument("--task", default=None, help="a task from `textgym tasks` (default: addition; sort for --model tiny)")
    p.add_argument("--task-kwargs", default=None, help='task arguments as JSON, e.g. \'{"digits": 2}\'')
    p.add_argument("--prompt-style", choices=["plain", "r1_zero"], default=None)
    p.add_argument("--reward", default=None, help="a reward name from `textgym rewards` instead of the task's (--model tiny: partial_credit)")
    p.add_argument("--reward-isolation", choices=ISOLATIONS, default="thread",
                   help="run the verifier in a worker process that is killed on timeout (for verifiers that can hang)")
    p.add_argument("--chat-template", choices=["auto", "on", "off"], default="auto")
    p.add_argument("--iterations", type=int, default=None)
    p.add_argument("--prompts", type=int, default=None, help="prompts per update")
    p.add_argument("--group-size", type=int, default=None, help="samples per prompt")
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--mask-actions", choices=["auto", "on", "off"], default="auto",
                   help="sample only the task's allowed tokens (auto: on for --model tiny)")
    p.add_argument("--baseline", default="group", choices=["none", "mean", "group", "leave_one_out", "value"])
    p.add_argument("--normalize-std", action="store_true", help="divide group advantages by the group std")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--lr-schedule", choices=["constant", "linear"], default="constant",
                   help="linear: decay the learning rate to 0 over the run")
    p.add_argument("--gamma", type=float, default=1.0)
    p.add_argument("--loss-aggregation", default="token_mean", choices=["token_mean", "sequence_mean", "sum"])
    p.add_argument("--epochs", type=int, default=1, help="update epochs per batch (>1: clipped importance ratios)")
    p.add_argument("--cliprange", type=float, default=0.2)
    p.add_argument("--kl-coef", type=float, default=0.0)
    p.add_argument("--entropy-coef", type=float, default=0.0)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--micro-batch-size", type=int, default=None)
    p.add_argument("--amp", choices=["auto", "bf16", "off"], default="auto",
                   help="bf16 autocast of the update (auto: where the GPU/CPU has native bf16)")
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--eval-episodes", type=int, default=64)
    p.add_argument("--save-every", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    p.add_argument("--out", default=None, help="output directory (default: runs/<task>-<time>)")
    p.add_argument("--resume", default=None, help="continue a run from its output directory")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    import torch

    import textgym
    from agents import distributed
    from agents.policy import LMPolicy
    from agents.reinforce import REINFORCE

    if args.threads:
        torch.set_num_threads(args.threads)
    ctx = distributed.setup()  # under torchrun: join the job (each rank runs this same command)
    print = builtins.print if ctx.is_main else (lambda *a, **k: None)  # noqa: A001
    defaults = MODEL_DEFAULTS["tiny" if args.model.startswith("tiny") else "default"]
    pick = lambda name: getattr(args, name) if getattr(args, name) is not None else defaults.get(name)  # noqa: E731
    task = pick("task")
    task_kwargs = json.loads(args.task_kwargs) if args.task_kwargs else dict(defaults.get("task_kwargs", {})) if args.task is None else {}
    if args.prompt_style:
        task_kwargs["prompt_style"] = args.prompt_style
    prompts, group = pick("prompts"), pick("group_size")
    if prompts is None or prompts < 1 or group is None or group < 1:
        raise SystemExit("error: --prompts and --group-size must be >= 1")

    resume = Path(args.resume) if args.resume else None
    out = Path(args.out) if args.out else resume or Path("runs") / f"{task}-{time.strftime('%Y%m%d-%H%M%S')}"
    if resume is not None:
        if not (resume / "latest").exists():
            raise SystemExit(f"error: {resume} has no checkpoint to resume from ({resume / 'latest'} is missing)")
        agent = REINFORCE.load(resume, device=args.device, dtype=args.dtype)
        policy = agent.policy
        config = json.loads((resume / "config.json").read_text())
        task, task_kwargs, prompts, group = config["task"], config["task_kwargs"], config["prompts"], config["group_size"]
        max_new_tokens, chat = config["max_new_tokens"], config["chat_template"]
        reward = config.get("reward") if args.reward is None else args.reward
        iterations = config["iterations"] - agent.iteration if args.iterations is None else args.iterations
        print(f"resuming {resume} at iteration {agent.iteration}")
    else:
        print(f"loading {args.model} ...", flush=True)
        t0 = time.perf_counter()
        policy = LMPolicy.from_pretrained(
            args.model, device=args.device, dtype=args.dtype, temperature=pick("temperature"),
            top_k=args.top_k, top_p=args.top_p, seed=args.seed,
        )  # fmt: skip
        print(f"loaded in {time.perf_counter() - t0:.1f} s: {policy.model.num_parameters() / 1e6:.1f}M parameters on {policy.device} ({policy.dtype})")
        agent = REINFORCE(
            policy, baseline=args.baseline, lr=pick("lr"), lr_schedule=args.lr_schedule, seed=args.seed, gamma=args.gamma,
            normalize_std=args.normalize_std, loss_aggregation=args.loss_aggregation, epochs=args.epochs,
            cliprange=args.cliprange, kl_coef=args.kl_coef, entropy_coef=args.entropy_coef,
            max_grad_norm=args.max_grad_norm or None, micro_batch_size=args.micro_batch_size, amp=args.amp,
        )  # fmt: skip
        max_new_tokens = pick("max_new_tokens")
        reward = pick("reward") if args.task is None else args.reward  # the tiny defaults' reward goes with their task
        chat = {"auto": None, "on": True, "off": False}[args.chat_template]
        iterations = pick("iterations")
    env_kwargs = dict(task=task, task_kwargs=task_kwargs, tokenizer=policy.tokenizer, max_new_tokens=max_new_tokens,
                      chat_template=chat, reward=reward, reward_isolation=args.reward_isolation)  # fmt: skip
    envs = textgym.TextGenVectorEnv(num_envs=prompts * group, group_size=group, **env_kwargs)
    eval_env = textgym.TextGenVectorEnv(num_envs=min(32, max(args.eval_episodes, 1)), split="validation", **env_kwargs)
    if resume is None and (args.mask_actions == "on" or (args.mask_actions == "auto" and args.model.startswith("tiny"))):
        policy.restrict_actions(envs.action_masks()[0])
    if agent.baseline in ("group", "leave_one_out") and group < 2:
        raise SystemExit(f"error: --baseline {agent.baseline} needs --group-size >= 2")

    if ctx.enabled:
        print(f"data-parallel on {ctx.world_size} ranks: {prompts * group} episodes per rank, {prompts * group * ctx.world_size} per update")
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
    if resume is None and ctx.is_main:
        config = dict(model=args.model, task=task, task_kwargs=task_kwargs, prompts=prompts, group_size=group,
                      max_new_tokens=max_new_tokens, chat_template=chat, reward=reward, iterations=iterations, **agent.hparams,
                      temperature=policy.temperature, top_k=policy.top_k, top_p=policy.top_p)  # fmt: skip
        (out / "config.json").write_text(json.dumps(config, indent=2))
    print(f"task {task} {task_kwargs or ''}: {prompts} prompts x {group} samples per update, {iterations} updates -> {out}")
    try:
        agent.learn(
            envs, iterations=iterations, eval_env=eval_env, eval_every=args.eval_every, eval_episodes=args.eval_episodes,
            progress_bar=not args.no_progress, log_dir=out, save_every=args.save_every,
        )  # fmt: skip
    except KeyboardInterrupt:
        print(f"interrupted at iteration {agent.iteration}; checkpoint saved. Continue with: textgym train --resume {out}")
        return 130
    if not ctx.is_main:
        return 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    trains = [r for r in rows if "train_reward" in r]
    if trains:
        print(f"train reward: {trains[0]['train_reward']:.3f} (iteration {trains[0]['iteration']}) -> "
              f"{trains[-1]['train_reward']:.3f} (iteration {trains[-1]['iteration']})")  # fmt: skip
    evals = [r for r in rows if "val_reward" in r]
    if evals:
        first, last = evals[0], evals[-1]
        print(f"validation reward: {first['val_reward']:.3f} (iteration {first['iteration']}) -> "
              f"{last['val_reward']:.3f} ± {last['val_reward_ci95']:.3f} (iteration {last['iteration']}); "
              f"accuracy {first['val_accuracy']:.3f} -> {last['val_accuracy']:.3f}")  # fmt: skip
    latest = out / (out / "latest").read_text().strip()
    print(f"metrics: {out / 'metrics.jsonl'}\nplot:    {out / 'rewards.png'}\ncheckpoint: {latest}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="textgym train", description=__doc__)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
