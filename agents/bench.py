"""`textgym bench`: agents x tasks with fixed seeds and budgets -> a table, CSV, JSON and a chart.

    textgym bench --agents random,lm:tiny,lm-greedy:tiny --tasks copy,bandit --episodes 64
    textgym bench --agents random,sb3-ppo --tasks bandit,copy --task-kwargs '{"copy": {"length": 2, "alphabet": "abc"}}'
    textgym bench --agents lm-greedy:smollm2-135m-instruct,reinforce:runs/addition-20261201-120000 --tasks addition

Agents:
  random              uniform over the task's allowed tokens (`env.action_masks()`), char tokenizer
  lm:<model>          an LMPolicy, sampled (any name `LMPolicy.from_pretrained` takes; "tiny")
  lm-greedy:<model>   the same, argmax
  reinforce:<dir>     a `textgym train` run's policy (the run directory: its `latest` checkpoint; or a
                      checkpoint-NNNNNN directory), sampled
  sb3-ppo             Stable-Baselines3 PPO trained here for --sb3-timesteps on the train split, deterministic
                      (one-hot observations, allowed tokens as actions, char tokenizer); toy tasks only
  sb3-a2c             the same with Stable-Baselines3 A2C

Every agent is evaluated by `agents.rollouts.evaluate` on the same prompts (the split's episodes
drawn from --seed), so rows are comparable and the same seed gives the same table (tokens/s aside).
Accuracy is the fraction of episodes whose answer is fully right (reward or answer component >= 1).
For pass@k, majority vote and per-sample records of one model, use `textgym eval`.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

COLUMNS = ("agent", "task", "reward", "reward_ci95", "accuracy", "completion_length", "tokens_per_s", "episodes")

SB3_AGENTS = ("sb3-ppo", "sb3-a2c")
# Above these sizes one-hot PPO is not a sensible baseline (and would not learn in a bench run).
SB3_MAX_ACTIONS = 16
SB3_MAX_OBS_LEN = 48


class Skip(Exception):
    """An agent does not apply to a task; the message says why."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = __doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--agents", default="random,lm:tiny,lm-greedy:tiny",
                   help="comma-separated: random, lm:<model>, lm-greedy:<model>, reinforce:<dir>, sb3-ppo, sb3-a2c")  # fmt: skip
    p.add_argument("--tasks", default="bandit,copy", help="comma-separated task names (see `textgym tasks`)")
    p.add_argument("--task-kwargs", default=None,
                   help='JSON task arguments for every task, e.g. \'{"length": 2}\', or per task: \'{"copy": {"length": 2}}\'')  # fmt: skip
    p.add_argument("--episodes", type=int, default=64, help="evaluation episodes per agent and task")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="token budget per episode (default: the task's longest answer + 1 with the char "
                        "tokenizer, 32 with others)")  # fmt: skip
    p.add_argument("--split", default="test", choices=["train", "validation", "test"], help="split to evaluate on")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of lm:/reinforce: agents")
    p.add_argument("--mask-actions", choices=["auto", "on", "off"], default="auto",
                   help="restrict lm: agents to the task's allowed tokens (auto: on for char-tokenizer models)")  # fmt: skip
    p.add_argument("--sb3-timesteps", type=int, default=20_000, help="training steps of the sb3-ppo / sb3-a2c agents per task")
    p.add_argument("--num-envs", type=int, default=16, help="episodes evaluated in parallel")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, help="output directory (default: runs/bench-<time>)")
    p.add_argument("--no-progress", action="store_true")


# -- agents ------------------------------------------------------------------------------------


class RandomPolicy:
    """Uniform over the allowed tokens, with LMPolicy's `act`/`seed`/`generator`, so `evaluate` runs it
    and seeds its samples."""

    def __init__(self, allowed: np.ndarray, seed: int):
        import torch

        self.tokens = np.flatnonzero(allowed)
        self.generator = torch.Generator()
        self.seed(seed)

    def seed(self, seed: int | None) -> None:
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(int(seed))

    def act(self, obs: dict, greedy: bool = False, active: np.ndarray | None = None):
        import torch

        ids = np.asarray(obs["input_ids"])
        n = 1 if ids.ndim == 1 else ids.shape[0]
        choice = torch.randint(len(self.tokens), (n,), generator=self.generator).numpy()
        return self.tokens[choice], np.full(n, -math.log(len(self.tokens)), dtype=np.float32)


class SB3Policy(RandomPolicy):
    """An SB3 model trained on `agents.sb3` one-hot/allowed-token envs, behind LMPolicy's `act`
    (evaluated deterministically; the generator is only there for `evaluate`'s seeding)."""

    def __init__(self, model: Any, tokens: np.ndarray):
        super().__init__(np.ones(len(tokens), dtype=bool), seed=0)
        self.model, self.tokens = model, tokens

    def act(self, obs: dict, greedy: bool = False, active: np.ndarray | None = None):
        choice, _ = self.model.predict({"input_ids": np.asarray(obs["input_ids"])}, deterministic=greedy)
        actions = self.tokens[np.asarray(choice, dtype=np.int64).reshape(-1)]
        return actions, np.zeros(len(actions), dtype=np.float32)


@dataclass
class AgentSpec:
    name: str
    kind: str  # random | lm | lm-greedy | reinforce | sb3-ppo | sb3-a2c
    target: str | None = None


def parse_agents(text: str) -> list[AgentSpec]:
    specs = []
    for name in [a.strip() for a in text.split(",") if a.strip()]:
        kind, _, target = name.partition(":")
        if kind in ("random", *SB3_AGENTS) and not target:
            specs.append(AgentSpec(name, kind))
        elif kind in ("lm", "lm-greedy", "reinforce") and target:
            specs.append(AgentSpec(name, kind, target))
        else:
            raise SystemExit(
                f"error: unknown agent {name!r}; use random, lm:<model>, lm-greedy:<model>, reinforce:<dir>, sb3-ppo or sb3-a2c"
            )
    if not specs:
        raise SystemExit("error: --agents is empty")
    return specs


def parse_task_kwargs(text: str | None, tasks: list[str]) -> dict[str, dict]:
    if not text:
        return {t: {} for t in tasks}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise SystemExit(f"error: --task-kwargs is not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise SystemExit("error: --task-kwargs must be a JSON object")
    if value and all(k in tasks and isinstance(v, dict) for k, v in value.items()):
        return {t: dict(value.get(t, {})) for t in tasks}
    return {t: dict(value) for t in tasks}


class Loader:
    """Loads each model / checkpoint once for all tasks."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.cache: dict[str, Any] = {}

    def lm(self, spec: AgentSpec):
        from agents.checkpoints import CheckpointError
        from agents.evaluation import load_policy, resolve_checkpoint

        key = f"{spec.kind == 'reinforce'}:{spec.target}"
        if key not in self.cache:
            try:
                if spec.kind == "reinforce" and resolve_checkpoint(spec.target) is None:
                    raise FileNotFoundError(f"{spec.target} is not a textgym train run directory nor a checkpoint (no "
                                            "'latest' pointer, no agent.pt); use lm:<model> for other models")  # fmt: skip
                policy, _ = load_policy(spec.target, device=self.args.device, temperature=self.args.temperature)
            except (FileNotFoundError, CheckpointError) as e:  # a missing, damaged or foreign run: one line
                raise SystemExit(f"error: agent {spec.name}: {e}") from None
            self.cache[key] = policy
        return self.cache[key]


def _env_kwargs(task: str, task_kwargs: dict, tokenizer: Any, args: argparse.Namespace) -> dict:
    from textgym.tasks import make_task
    from textgym.tokenizers import as_tokenizer

    budget = args.max_new_tokens
    if budget is None:
        tok = as_tokenizer(tokenizer)
        budget = make_task(task, **task_kwargs).max_answer_chars + 1 if tok.name == "char" else 32
    return dict(task=task, task_kwargs=task_kwargs, tokenizer=tokenizer, max_new_tokens=int(budget))


def _train_sb3(kind: str, env_kwargs: dict, args: argparse.Namespace) -> SB3Policy:
    import torch
    from stable_baselines3 import A2C, PPO

    from agents.sb3 import make_vec_env

    train = make_vec_env(8, one_hot=True, allowed_actions=True, **env_kwargs)
    venv = train.venv
    tokens = venv.tokens
    if len(tokens) > SB3_MAX_ACTIONS or venv.venv.obs_len > SB3_MAX_OBS_LEN:
        raise Skip(
            f"{kind} applies to toy configurations (<= {SB3_MAX_ACTIONS} allowed tokens, observations of "
            f"<= {SB3_MAX_OBS_LEN} chars); this one has {len(tokens)} allowed tokens and {venv.venv.obs_len} chars"
        )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # SB3's small MLPs: 1 thread is ~10x faster than 2 here
    try:
        train.seed(args.seed)
        if kind == "sb3-ppo":
            model = PPO("MultiInputPolicy", train, n_steps=64, batch_size=128, ent_coef=0.01, seed=args.seed,
                        device="cpu", verbose=0)  # fmt: skip
        else:
            model = A2C("MultiInputPolicy", train, ent_coef=0.01, seed=args.seed, device="cpu", verbose=0)
        model.learn(total_timesteps=args.sb3_timesteps)
    finally:
        torch.set_num_threads(threads)
    return SB3Policy(model, tokens)


def run_one(spec: AgentSpec, task: str, task_kwargs: dict, args: argparse.Namespace, loader: Loader) -> dict:
    """Evaluate one agent on one task; returns its row (raises Skip when it does not apply)."""
    from textgym.vector import TextGenVectorEnv
    from agents.rollouts import evaluate

    if spec.kind in ("lm", "lm-greedy", "reinforce"):
        policy = loader.lm(spec)
        kwargs = _env_kwargs(task, task_kwargs, policy.tokenizer, args)
    else:
        kwargs = _env_kwargs(task, task_kwargs, "char", args)
    if spec.kind in SB3_AGENTS:
        from textgym.tasks import make_task

        if make_task(task, **task_kwargs).allowed_chars is None:
            raise Skip(f"{spec.kind} needs a task with a small set of allowed characters")
        policy = _train_sb3(spec.kind, kwargs, args)
    envs = TextGenVectorEnv(num_envs=max(1, min(args.num_envs, args.episodes)), split=args.split, **kwargs)
    if spec.kind == "random":
        policy = RandomPolicy(envs.action_masks()[0], seed=args.seed)
    elif spec.kind in ("lm", "lm-greedy"):
        chars = policy.tokenizer.name == "char"
        if args.mask_actions == "on" or (args.mask_actions == "auto" and chars):
            policy.restrict_actions(envs.action_masks()[0])
        else:
            policy.restrict_actions(None)
    policy.seed(args.seed)
    if hasattr(policy, "reset_cache"):
        policy.reset_cache()
    t0 = time.perf_counter()
    result = evaluate(policy, envs, episodes=args.episodes, greedy=spec.kind in ("lm-greedy", *SB3_AGENTS), seed=args.seed)
    elapsed = time.perf_counter() - t0
    tokens = result["episode_length"] * result["episodes"]
    return {
        "agent": spec.name,
        "task": task,
        "reward": result["reward"],
        "reward_ci95": result["reward_ci95"],
        "accuracy": result["accuracy"],
        "completion_length": result["episode_length"],
        "tokens_per_s": tokens / max(elapsed, 1e-9),
        "episodes": result["episodes"],
    }


# -- output ------------------------------------------------------------------------------------


def format_table(rows: list[dict]) -> str:
    head = ["agent", "task", "reward ± 95% CI", "accuracy", "length", "tokens/s", "episodes"]
    body = [
        [r["agent"], r["task"], f"{r['reward']:.3f} ± {r['reward_ci95']:.3f}", f"{r['accuracy']:.3f}",
         f"{r['completion_length']:.2f}", f"{r['tokens_per_s']:.0f}", str(r["episodes"])]
        for r in rows
    ]  # fmt: skip
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    out = [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    return "\n".join(out + [line(b) for b in body])


def write_outputs(out: Path, rows: list[dict], skipped: list[dict], config: dict) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "bench.csv", "json": out / "bench.json", "png": out / "bench.png"}
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(COLUMNS))
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{r[k]:.6g}" if isinstance(r[k], float) else r[k]) for k in COLUMNS})
    paths["json"].write_text(json.dumps({"config": config, "results": rows, "skipped": skipped}, indent=2) + "\n")
    plot(rows, paths["png"])
    return paths


def plot(rows: list[dict], path: Path) -> None:
    """Grouped bars: mean reward with its 95% CI, one group per task, one bar per agent."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    agents = list(dict.fromkeys(r["agent"] for r in rows))
    fig = Figure(figsize=(max(5.0, 1.6 * len(tasks) * max(1, len(agents)) ** 0.5 + 2), 4), dpi=110)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(agents))
    for j, agent in enumerate(agents):
        by_task = {r["task"]: r for r in rows if r["agent"] == agent}
        xs = [i + (j - (len(agents) - 1) / 2) * width for i, t in enumerate(tasks) if t in by_task]
        ys = [by_task[t]["reward"] for t in tasks if t in by_task]
        es = [0.0 if not np.isfinite(by_task[t]["reward_ci95"]) else by_task[t]["reward_ci95"] for t in tasks if t in by_task]
        ax.bar(xs, ys, width, yerr=es, capsize=3, label=agent)
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_ylabel("mean reward (95% CI)")
    ax.grid(axis="y", alpha=0.3)
    if agents:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    if args.episodes < 1:
        raise SystemExit("error: --episodes must be >= 1")
    import textgym

    agents = parse_agents(args.agents)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in textgym.list_tasks()]
    if unknown or not tasks:
        raise SystemExit(f"error: unknown task(s) {unknown or tasks}; see `textgym tasks`")
    task_kwargs = parse_task_kwargs(args.task_kwargs, tasks)
    out = Path(args.out) if args.out else Path("runs") / f"bench-{time.strftime('%Y%m%d-%H%M%S')}"

    loader = Loader(args)
    rows: list[dict] = []
    skipped: list[dict] = []
    pairs = [(a, t) for a in agents for t in tasks]
    bar = tqdm(pairs, desc="bench", unit="run", disable=args.no_progress, dynamic_ncols=True, file=sys.stderr)
    for spec, task in bar:
        bar.set_postfix_str(f"{spec.name} on {task}")
        try:
            rows.append(run_one(spec, task, task_kwargs[task], args, loader))
        except Skip as why:
            skipped.append({"agent": spec.name, "task": task, "reason": str(why)})
            bar.write(f"skipped {spec.name} on {task}: {why}")
    bar.close()

    config = {k: v for k, v in vars(args).items() if k != "func"}
    config["task_kwargs"] = task_kwargs
    paths = write_outputs(out, rows, skipped, config)
    print(format_table(rows))
    for s in skipped:
        print(f"(skipped {s['agent']} on {s['task']}: {s['reason']})")
    print(f"\n{args.episodes} episodes per row on the {args.split} split, seed {args.seed}")
    print(f"wrote {paths['csv']}, {paths['json']}, {paths['png']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="textgym bench")
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
