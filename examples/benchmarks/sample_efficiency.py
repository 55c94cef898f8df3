"""Sample efficiency: validation reward vs. training samples, textgym's REINFORCE vs TRL's GRPOTrainer.

Both start from the same model and train on the same task with the same budget of samples: P prompts
x G completions per update, at most N new tokens at temperature T, the same learning rate, no KL
term, one gradient step per batch. Every `--eval-every` updates both are scored by the *same*
evaluator: textgym's `evaluate` on the validation split (problems never trained on), sampling at T
with a fixed seed, so every point of both curves sees the same prompts and the same random numbers.
Train rewards (the batch's mean) are logged for both too.

What each agent is, at its defaults:
  reinforce      `textgym train`'s recipe: REINFORCEConfig's defaults.
  reinforce-std  the same, with the group advantage divided by the group's std (`normalize_std`).
  reinforce-linear  the same as reinforce, with the learning rate decayed linearly to 0 (TRL's schedule).
  trl            TRL's GRPOTrainer defaults: std-scaled group advantages, DAPO token aggregation,
                 linearly decaying lr, clipped ratio (= 1 with one step per batch).
  --variant NAME SETTINGS  any other REINFORCE recipe: REINFORCEConfig settings as JSON, e.g.
                 --variant loo-2epochs '{"baseline": "leave_one_out", "epochs": 2}'

    python examples/benchmarks/sample_efficiency.py                       # ~25 min per seed on 2 CPU cores
    python examples/benchmarks/sample_efficiency.py --agents reinforce reinforce-std trl --seeds 0 1 2
    python examples/benchmarks/sample_efficiency.py --model tiny --task copy --max-new-tokens 4 --updates 2 --eval-every 1

Writes curves.csv, curves.json and curves.png to --out, after every finished (trainer, seed) run; a
rerun with the same settings reuses the finished runs found there (add seeds without redoing any). TRL is an optional, bench-only dependency
(`pip install trl`).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import torch
from trl_grpo import TRL_MISSING, grpo_trainer, trl_available

from agents.reinforce import REINFORCEConfig
from textgym.config import EnvConfig

AGENTS = ("reinforce", "reinforce-std", "reinforce-linear", "trl")
EVAL_SEED = 104729


class Evaluator:
    """The one evaluator both trainers are scored by: validation split, sampled at T, fixed seed."""

    def __init__(self, args, tokenizer):
        import textgym

        self.args, self.tokenizer = args, tokenizer
        self.env = textgym.TextGenVectorEnv(
            num_envs=min(64, args.eval_episodes), split="validation", task=args.task, task_kwargs=args.task_kwargs,
            tokenizer=tokenizer, max_new_tokens=args.max_new_tokens,
        )  # fmt: skip

    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        from agents import LMPolicy
        from agents.rollouts import evaluate

        was_training = model.training
        model.eval()
        try:
            policy = LMPolicy(model, self.tokenizer, temperature=self.args.temperature)
            return evaluate(policy, self.env, episodes=self.args.eval_episodes, seed=EVAL_SEED)
        finally:
            model.train(was_training)


class Curve:
    """One trainer's run with one seed: rows of (update, samples, train reward, validation reward ...)."""

    def __init__(self, agent: str, seed: int, samples_per_update: int):
        self.agent, self.seed, self.samples_per_update = agent, seed, samples_per_update
        self.rows: list[dict] = []
        self.train_seconds = 0.0

    def add(self, update: int, train_reward: float | None, val: dict[str, float] | None) -> None:
        row = {"agent": self.agent, "seed": self.seed, "update": update, "samples": update * self.samples_per_update,
               "train_seconds": round(self.train_seconds, 2), "train_reward": train_reward}  # fmt: skip
        if val is not None:
            row.update(val_reward=val["reward"], val_ci95=val["reward_ci95"], val_accuracy=val["accuracy"],
                       val_length=val["episode_length"])  # fmt: skip
            train = "  -  " if train_reward is None else f"{train_reward:.3f}"
            print(f"{self.agent:>16} seed {self.seed} update {update:3d} ({row['samples']:4d} samples): train {train}  "
                  f"validation {val['reward']:.3f} ± {val['reward_ci95']:.3f}", flush=True)  # fmt: skip
        self.rows.append(row)


def load(args, seed: int):
    from agents.models import load_model

    torch.manual_seed(seed)
    return load_model(args.model, device="auto", dtype="float32")


VARIANTS = {"reinforce": {}, "reinforce-std": {"normalize_std": True}, "reinforce-linear": {"lr_schedule": "linear"}}


def run_reinforce(args, seed: int, variant: str) -> Curve:
    import textgym
    from agents import REINFORCE, LMPolicy

    model, tokenizer = load(args, seed)
    curve = Curve(variant, seed, args.prompts * args.group_size)
    evaluator = Evaluator(args, tokenizer)
    policy = LMPolicy(model, tokenizer, temperature=args.temperature, seed=seed)
    envs = textgym.TextGenVectorEnv(num_envs=args.prompts * args.group_size, group_size=args.group_size,
                                    task=args.task, task_kwargs=args.task_kwargs, tokenizer=tokenizer,
                                    max_new_tokens=args.max_new_tokens)  # fmt: skip
    agent = REINFORCE(policy, **{"lr": args.lr, "amp": args.amp, **VARIANTS[variant], "seed": seed})
    curve.add(0, None, evaluator(model))
    clock = time.perf_counter()

    def callback(metrics: dict) -> None:
        nonlocal clock
        curve.train_seconds += time.perf_counter() - clock
        it = metrics["iteration"]
        val = evaluator(model) if it % args.eval_every == 0 or it == args.updates else None
        curve.add(it, metrics["train_reward"], val)
        clock = time.perf_counter()

    agent.learn(envs, iterations=args.updates, progress_bar=False, callback=callback)
    return curve


def run_trl(args, seed: int) -> Curve:
    from transformers import TrainerCallback

    from textgym.transition import Transition

    model, tokenizer = load(args, seed)
    curve = Curve("trl", seed, args.prompts * args.group_size)
    evaluator = Evaluator(args, tokenizer)
    rules = Transition(EnvConfig(task=args.task, task_kwargs=args.task_kwargs, tokenizer=tokenizer,
                                   max_new_tokens=args.max_new_tokens))  # fmt: skip
    curve.add(0, None, evaluator(model))

    class Track(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            self.clock = time.perf_counter()

        def on_step_end(self, a, state, control, model=None, **kw):
            curve.train_seconds += time.perf_counter() - self.clock
            self.pending = state.global_step

        def on_log(self, a, state, control, logs=None, model=None, **kw):
            # TRL logs the step's mean reward after on_step_end; evaluate once it is known.
            if logs and "reward" in logs and getattr(self, "pending", None) == state.global_step:
                step, self.pending = state.global_step, None
                val = evaluator(model) if step % args.eval_every == 0 or step == args.updates else None
                curve.add(step, float(logs["reward"]), val)

    trainer = grpo_trainer(model, tokenizer, rules, prompts=args.prompts, group_size=args.group_size,
                           max_new_tokens=args.max_new_tokens, temperature=args.temperature, lr=args.lr,
                           steps=args.updates, seed=seed, callbacks=[Track()], random_prompts=True)  # fmt: skip
    trainer.train()
    if len(curve.rows) != args.updates + 1:
        raise RuntimeError(f"TRL logged {len(curve.rows) - 1} of {args.updates} steps; its logging keys may have changed")
    return curve


def first_reaching(rows: list[dict], level: float, key: str = "samples") -> float | None:
    """`key` (samples, or training seconds) at the first evaluation whose validation reward is >= level (None: never)."""
    return next((r[key] for r in rows if r.get("val_reward") is not None and r["val_reward"] >= level), None)


FIELDS = ["agent", "seed", "update", "samples", "train_seconds", "train_reward", "val_reward", "val_ci95", "val_accuracy",
          "val_length"]  # fmt: skip
# The settings a saved curve must share with this run to be reused (not seeds, agents, threads, out).
SAME = ("model", "task", "task_kwargs", "prompts", "group_size", "max_new_tokens", "temperature", "lr", "updates",
        "eval_every", "eval_episodes", "amp")  # fmt: skip
# A saved run of a --variant is reused only when the variant's settings are the same too (saved_rows).


def save(rows: list[dict], args, out: Path) -> None:
    """curves.csv and curves.json, rewritten after every finished run, so a crash loses nothing."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "curves.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    tmp = out / "curves.json.tmp"
    tmp.write_text(json.dumps({"config": vars(args), "rows": rows}, indent=1))
    tmp.replace(out / "curves.json")


def saved_rows(args, out: Path) -> list[dict]:
    """Rows of finished (agent, seed) runs already in `out` with the same settings, to reuse."""
    path = out / "curves.json"
    if not path.exists():
        return []
    saved = json.loads(path.read_text())
    if any(saved["config"].get(k) != getattr(args, k) for k in SAME):
        print(f"{path} has other settings: starting over")
        return []
    same_variant = {name for name, settings in saved["config"].get("variant", []) if [name, settings] in args.variant}
    finished = {(r["agent"], r["seed"]) for r in saved["rows"] if r["update"] == args.updates
                and (r["agent"] in AGENTS or r["agent"] in same_variant)}  # fmt: skip
    return [r for r in saved["rows"] if (r["agent"], r["seed"]) in finished]


def report(rows: list[dict], args, out: Path) -> None:
    agents = list(dict.fromkeys(r["agent"] for r in rows))
    seeds = {a: sorted({r["seed"] for r in rows if r["agent"] == a}) for a in agents}
    runs = {(a, s): [r for r in rows if r["agent"] == a and r["seed"] == s] for a in agents for s in seeds[a]}
    evals = {a: {} for a in agents}  # agent -> update -> validation rewards over seeds
    for (a, _), run in runs.items():
        for r in run:
            if r.get("val_reward") is not None:
                evals[a].setdefault(r["update"], []).append(r["val_reward"])
    updates = sorted(set().union(*evals.values()))
    print(f"\nvalidation reward, mean over seeds (sampled at T; the same prompts and random numbers for every agent)")
    print(f"{'update':>6} {'samples':>7} " + " ".join(f"{a + f' ({len(seeds[a])})':>20}" for a in agents))
    for u in updates:
        cells = [f"{sum(evals[a][u]) / len(evals[a][u]):20.3f}" if u in evals[a] else f"{'':>20}" for a in agents]
        print(f"{u:>6} {u * args.prompts * args.group_size:>7} " + " ".join(cells))
    print()
    reach: dict[str, list[float | None]] = {}
    seconds: dict[str, list[float | None]] = {}
    for a in agents:
        reach[a] = [first_reaching(runs[a, s], args.target) for s in seeds[a]]
        seconds[a] = [first_reaching(runs[a, s], args.target, "train_seconds") for s in seeds[a]]
        finals = [runs[a, s][-1]["val_reward"] for s in seeds[a]]
        means = [sum(v) / len(v) for v in evals[a].values()]
        print(f"{a:>16}: final validation {sum(finals) / len(finals):.3f} (per seed {', '.join(f'{v:.3f}' for v in finals)}); "
              f"mean over the curve {sum(means) / len(means):.3f}; to >= {args.target} per seed: "
              + ", ".join("never" if v is None else f"{v:.0f} samples / {t:.0f} s" for v, t in zip(reach[a], seconds[a])))  # fmt: skip
    if "trl" in agents:
        for a in agents:
            if a != "trl" and None not in reach[a] + reach["trl"]:
                ours, theirs = sum(reach[a]) / len(reach[a]), sum(reach["trl"]) / len(reach["trl"])
                ours_s, theirs_s = sum(seconds[a]) / len(seconds[a]), sum(seconds["trl"]) / len(seconds["trl"])
                print(f"to validation >= {args.target}, mean over seeds: {a} {ours:.0f} samples in {ours_s:.0f} s of training, "
                      f"TRL GRPO {theirs:.0f} samples in {theirs_s:.0f} s: {a} / TRL = {ours / theirs:.2f}x the samples, "
                      f"{ours_s / theirs_s:.2f}x the wall time")  # fmt: skip

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.2), dpi=110)
    ax = fig.add_subplot()
    for i, a in enumerate(agents):
        color = f"C{i}"
        for s in seeds[a]:  # each seed thin, the mean thick
            ev = [r for r in runs[a, s] if r.get("val_reward") is not None]
            ax.plot([r["samples"] for r in ev], [r["val_reward"] for r in ev], color=color, alpha=0.3, lw=1)
        ax.plot([u * args.prompts * args.group_size for u in updates if u in evals[a]],
                [sum(evals[a][u]) / len(evals[a][u]) for u in updates if u in evals[a]],
                marker="o", color=color, lw=2, label=f"{a}: validation, mean of {len(seeds[a])} seed(s)")  # fmt: skip
    ax.set_xlabel("training samples (completions)")
    ax.set_ylabel("validation reward")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(f"{args.task}, {args.model}: {args.prompts}x{args.group_size} per update, T={args.temperature}, lr={args.lr}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "curves.png")
    print(f"wrote {out / 'curves.csv'}, {out / 'curves.json'} and {out / 'curves.png'}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct", help="'smollm2-135m-instruct' (default), 'tiny', an HF id or dir")
    p.add_argument("--task", default=EnvConfig.task, help=f"default: textgym train's ({EnvConfig.task})")
    p.add_argument("--task-kwargs", type=json.loads, default={}, help="JSON task arguments, e.g. '{\"length\": 2}'")
    p.add_argument("--agents", nargs="+", default=["reinforce", "trl"], help=f"{', '.join(AGENTS)}, or a --variant's name")
    p.add_argument("--variant", nargs=2, action="append", default=[], metavar=("NAME", "SETTINGS"),
                   help="a REINFORCE recipe: REINFORCEConfig settings as JSON (lr and amp default to --lr and --amp)")
    p.add_argument("--prompts", type=int, default=2)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--lr", type=float, default=REINFORCEConfig.lr, help=f"both trainers (default: textgym train's, {REINFORCEConfig.lr})")
    p.add_argument("--updates", type=int, default=40)
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--eval-episodes", type=int, default=256, help="distinct validation problems per evaluation")
    p.add_argument("--target", type=float, default=0.9, help="report the samples each agent needs to reach it")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per trainer and seed")
    p.add_argument("--amp", choices=["off", "bf16", "auto"], default="off",
                   help="REINFORCE's update precision (off: float32 like TRL here; auto: what textgym train uses)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="runs/sample_efficiency")
    args = p.parse_args()
    for name in ("prompts", "updates", "eval_every", "eval_episodes"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.group_size < 2:
        p.error("--group-size must be >= 2: both trainers compare completions of the same prompt")
    for name, settings in args.variant:
        VARIANTS[name] = json.loads(settings)
    unknown = [a for a in args.agents if a not in VARIANTS and a != "trl"]
    if unknown:
        p.error(f"unknown agent(s) {unknown}: use {', '.join(AGENTS)} or define them with --variant NAME SETTINGS")
    if "trl" in args.agents and not trl_available():
        print(TRL_MISSING)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"model {args.model}, task {args.task}: {args.prompts} prompts x {args.group_size} samples per update, "
          f"{args.updates} updates, <= {args.max_new_tokens} new tokens, T={args.temperature}, lr={args.lr}, "
          f"validation every {args.eval_every} updates on {args.eval_episodes} episodes, {torch.get_num_threads()} threads")  # fmt: skip
    runners = {name: (lambda s, name=name: run_reinforce(args, s, name)) for name in VARIANTS}
    runners["trl"] = lambda s: run_trl(args, s)
    out = Path(args.out)
    rows = saved_rows(args, out)
    done = {(r["agent"], r["seed"]) for r in rows}
    for seed in args.seeds:
        for name in args.agents:
            if (name, seed) in done:
                print(f"{name} seed {seed}: reusing the finished run in {out / 'curves.json'}")
                continue
            curve = runners[name](seed)
            rows += curve.rows
            save(rows, args, out)
            print(f"{name} seed {seed}: {curve.train_seconds / args.updates:.1f} s per update (sampling + update, "
                  "evaluations excluded)", flush=True)  # fmt: skip
    save(rows, args, out)  # also when every run was reused (curves.json merged from two out dirs has no csv yet)
    report([r for r in rows if r["agent"] in args.agents and r["seed"] in args.seeds], args, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
