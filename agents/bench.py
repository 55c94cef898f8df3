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
A model samples and spends tokens as it does in `textgym train` and `textgym eval` (one resolver,
`agents.runs`): its preset (SmolLM2-135M-Instruct: T = 0.7, 24 new tokens), or for reinforce:<dir>
the run's recorded settings, under the task's recommended budget and the flags; bench.json names
each row's budget and sampling.
Accuracy is the fraction of episodes whose answer is fully right (reward or answer component >= 1).
For pass@k, majority vote and per-sample records of one model, use `textgym eval`.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

import numpy as np

from agents.runs import (
    ENV_EXCLUDED, SAMPLING, Command, RunConfig, SamplingConfig, Section, jsonable, load_policy, make_tasks,
)
from textgym.config import EnvConfig, check_choices, setting

COLUMNS = ("agent", "task", "reward", "reward_ci95", "accuracy", "completion_length", "tokens_per_s", "episodes")

SB3_AGENTS = ("sb3-ppo", "sb3-a2c")
LM_AGENTS = ("lm", "lm-greedy", "reinforce")
# Above these sizes one-hot PPO is not a sensible baseline (and would not learn in a bench run).
SB3_MAX_ACTIONS = 16
SB3_MAX_OBS_LEN = 48


class Skip(Exception):
    """An agent does not apply to a task; the message says why."""


@dataclass(frozen=True)
class BenchConfig:
    """What `textgym bench` compares and how; the env's, the models' and the sampling's settings are separate."""

    agents: str = setting("random,lm:tiny,lm-greedy:tiny",
                          "comma-separated: random, lm:<model>, lm-greedy:<model>, reinforce:<dir>, sb3-ppo, sb3-a2c")
    tasks: str = setting("bandit,copy", "comma-separated task names (see `textgym tasks`)")
    episodes: int = setting(64, "evaluation episodes per agent and task")
    split: Literal["train", "validation", "test"] = setting("test", "split to evaluate on")
    seed: int = setting(0, "seed of the episodes' prompts, the samples and the SB3 agents' training")
    mask_actions: Literal["auto", "on", "off"] = setting(
        "auto", "restrict lm: agents to the task's allowed tokens (auto: on for char-tokenizer models)")
    sb3_timesteps: int = setting(20_000, "training steps of the sb3-ppo / sb3-a2c agents per task")
    num_envs: int = setting(16, "episodes evaluated in parallel")
    out: str | None = setting(None, "output directory (None: runs/bench-<time>)")
    progress: bool = setting(True, "show a progress bar over the runs")

    def __post_init__(self) -> None:
        check_choices(self)
        for name in ("episodes", "sb3_timesteps", "num_envs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


ENV = Section(EnvConfig, "the environment (textgym.config.EnvConfig)", ("task", *ENV_EXCLUDED))  # --tasks, --split say those


def command() -> Command:
    """bench's settings: the benchmark, the models' device, the env, and the sampling of lm:/reinforce: agents. A
    model's preset (or a run's recorded settings) sets its budget and sampling, as in train and eval."""
    return Command([
        Section(BenchConfig, "the benchmark (agents.bench.BenchConfig)"),
        Section(RunConfig, "the models (agents.runs.RunConfig)",
                tuple(f.name for f in dataclasses.fields(RunConfig) if f.name not in ("device", "dtype", "threads"))),
        ENV,
        Section(SamplingConfig, "sampling of lm: and reinforce: agents (agents.runs.SamplingConfig)"),
    ], models_from_runs=True, not_from_model=("mask_actions",))  # fmt: skip


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = __doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    command().add_arguments(p, notes={
        "max_new_tokens": "(for agents without a model: the task's longest answer + 1)",
        "task_kwargs": '; per task: {"copy": {"length": 2}}',
    })  # fmt: skip


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
        elif kind in LM_AGENTS and target:
            specs.append(AgentSpec(name, kind, target))
        else:
            raise SystemExit(
                f"error: unknown agent {name!r}; use random, lm:<model>, lm-greedy:<model>, reinforce:<dir>, sb3-ppo or sb3-a2c"
            )
    if not specs:
        raise SystemExit("error: --agents is empty")
    return specs


class Bench:
    """One benchmark: its command-line flags, its settings, and each model loaded once for all tasks."""

    def __init__(self, command: Command, flags: Mapping[str, Any]):
        self.command, self.flags = command, dict(flags)
        settings, _ = command.resolve(flags)  # the benchmark's own (no model, no task)
        self.config, self.run_cfg, self.env, _ = command.split(settings)
        self.settings = settings
        self.policies: dict[tuple[bool, str], Any] = {}

    def row_settings(self, spec: AgentSpec, task: str, task_kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """One agent's settings on one task: the flags over its model's preset (or its run's recorded
        settings) and the task's recommended budget, as train and eval resolve them. Agents without a
        model write char tokens: their budget, unless given or recommended, is the task's longest answer + 1."""
        from agents.checkpoints import CheckpointError
        from textgym.tasks import make_task

        model = spec.target if spec.kind in LM_AGENTS else None
        try:
            settings, _ = self.command.resolve({**self.flags, "task": task, "task_kwargs": dict(task_kwargs)}, model=model)
        except (FileNotFoundError, CheckpointError) as e:  # a damaged run, or one without a checkpoint: one line
            raise SystemExit(f"error: agent {spec.name}: {e}") from None
        if model is None and "max_new_tokens" not in self.flags:
            made = make_task(task, **task_kwargs)
            if made.recommended_max_new_tokens is None:
                settings["max_new_tokens"] = made.max_answer_chars + 1
        return settings

    def policy(self, spec: AgentSpec, settings: Mapping[str, Any]) -> Any:
        """The agent's LMPolicy, sampling as `settings` say (its model's, the same on every task)."""
        from agents.checkpoints import CheckpointError, resolve_checkpoint

        key = (spec.kind == "reinforce", str(spec.target))
        if key not in self.policies:
            try:
                if spec.kind == "reinforce" and resolve_checkpoint(spec.target) is None:
                    raise FileNotFoundError(f"{spec.target} is not a textgym train run directory nor a checkpoint (no "
                                            "'latest' pointer, no agent.pt); use lm:<model> for other models")  # fmt: skip
                self.policies[key], _ = load_policy(spec.target, device=self.run_cfg.device, dtype=self.run_cfg.dtype,
                                                    **{k: settings[k] for k in SAMPLING})  # fmt: skip
            except (FileNotFoundError, CheckpointError) as e:  # a missing, damaged or foreign run: one line
                raise SystemExit(f"error: agent {spec.name}: {e}") from None
        return self.policies[key]


def _train_sb3(kind: str, env_kwargs: dict, config: BenchConfig) -> SB3Policy:
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
        train.seed(config.seed)
        if kind == "sb3-ppo":
            model = PPO("MultiInputPolicy", train, n_steps=64, batch_size=128, ent_coef=0.01, seed=config.seed,
                        device="cpu", verbose=0)  # fmt: skip
        else:
            model = A2C("MultiInputPolicy", train, ent_coef=0.01, seed=config.seed, device="cpu", verbose=0)
        model.learn(total_timesteps=config.sb3_timesteps)
    finally:
        torch.set_num_threads(threads)
    return SB3Policy(model, tokens)


def run_one(spec: AgentSpec, task: str, task_kwargs: dict, bench: Bench) -> dict:
    """Evaluate one agent on one task; returns its row (raises Skip when it does not apply)."""
    from textgym.tasks import make_task
    from textgym.vector import TextGenVectorEnv
    from agents.rollouts import evaluate

    config = bench.config
    settings = bench.row_settings(spec, task, task_kwargs)
    policy = bench.policy(spec, settings) if spec.kind in LM_AGENTS else None
    kwargs = {k: settings[k] for k in ENV.names()}
    kwargs.update(task=task, task_kwargs=task_kwargs, tokenizer=policy.tokenizer if policy is not None else "char")
    if spec.kind in SB3_AGENTS:
        if make_task(task, **task_kwargs).allowed_chars is None:
            raise Skip(f"{spec.kind} needs a task with a small set of allowed characters")
        policy = _train_sb3(spec.kind, kwargs, config)
    envs = TextGenVectorEnv(num_envs=max(1, min(config.num_envs, config.episodes)), split=config.split, **kwargs)
    if spec.kind == "random":
        policy = RandomPolicy(envs.action_masks()[0], seed=config.seed)
    elif spec.kind in ("lm", "lm-greedy"):
        chars = policy.tokenizer.name == "char"
        if config.mask_actions == "on" or (config.mask_actions == "auto" and chars):
            policy.restrict_actions(envs.action_masks()[0])
        else:
            policy.restrict_actions(None)
    policy.seed(config.seed)
    if hasattr(policy, "reset_cache"):
        policy.reset_cache()
    t0 = time.perf_counter()
    result = evaluate(policy, envs, episodes=config.episodes, greedy=spec.kind in ("lm-greedy", *SB3_AGENTS), seed=config.seed)
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
        "max_new_tokens": kwargs["max_new_tokens"],  # in bench.json: what each row ran with
        **({k: getattr(policy, k, None) for k in SAMPLING} if spec.kind in LM_AGENTS else {}),
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

    try:
        bench = Bench(command(), command().flags(args))
        config = bench.config
        agents = parse_agents(config.agents)
        tasks, task_kwargs, _ = make_tasks(config.tasks, bench.env.task_kwargs, bench.env.reward)  # mistakes: one line, now
    except (TypeError, ValueError, LookupError, OSError, ImportError) as e:
        raise SystemExit(f"error: {e}") from None
    out = Path(config.out) if config.out else Path("runs") / f"bench-{time.strftime('%Y%m%d-%H%M%S')}"

    rows: list[dict] = []
    skipped: list[dict] = []
    pairs = [(a, t) for a in agents for t in tasks]
    bar = tqdm(pairs, desc="bench", unit="run", disable=not config.progress, dynamic_ncols=True, file=sys.stderr)
    for spec, task in bar:
        bar.set_postfix_str(f"{spec.name} on {task}")
        try:
            rows.append(run_one(spec, task, task_kwargs[task], bench))
        except Skip as why:
            skipped.append({"agent": spec.name, "task": task, "reason": str(why)})
            bar.write(f"skipped {spec.name} on {task}: {why}")
    bar.close()

    paths = write_outputs(out, rows, skipped, jsonable({**bench.settings, "task_kwargs": task_kwargs}))
    print(format_table(rows))
    for s in skipped:
        print(f"(skipped {s['agent']} on {s['task']}: {s['reason']})")
    print(f"\n{config.episodes} episodes per row on the {config.split} split, seed {config.seed}")
    print(f"wrote {paths['csv']}, {paths['json']}, {paths['png']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="textgym bench")
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
