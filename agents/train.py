"""`textgym train`: a REINFORCE run with train and validation rewards, a progress bar and a plot.

With no arguments it trains the embedded default model SmolLM2-135M-Instruct on two-digit
comparison in its chat format ("Which is larger: 37 or 52?"; reward 1 when the number the reply
says is larger is the larger one), with a group baseline over 8 samples of each of 2 prompts per
update, and validation on 256 distinct held-out problems every 5 updates.

Every flag comes from a config dataclass, with its default and help: `RunConfig` and
`SamplingConfig` (`agents.runs`), `agents.callbacks.RunManagementConfig`, `textgym.config.EnvConfig`
and `agents.reinforce.REINFORCEConfig`. A preset (`agents.runs.PRESETS`) changes a few defaults for
a model that needs other values, a task may recommend its budget (a data file of worked solutions),
and flags override both: one resolver for train, eval and bench (`agents.runs.Command`).

A run directory holds config.json (the run's settings as it started), metrics.jsonl, rewards.png,
checkpoint-NNNNNN/ with a `latest` pointer, and resumes.jsonl (the flags each `--resume` changed).
A new run never writes into a directory that holds one: `--resume D` continues it, `--overwrite`
deletes it first. The default directory's name is the task's, made safe (letters, digits, - _ .).
SIGINT (Ctrl-C) or SIGTERM saves a checkpoint after the current update and exits with 130 (SIGINT)
or 143 (SIGTERM); a second signal aborts at once (the previous checkpoint stays the latest).
"""

from __future__ import annotations

import argparse
import builtins
import dataclasses
import errno
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from agents.runs import (
    ENV_EXCLUDED, PRESETS, Command, RunConfig, RunDir, SamplingConfig, Section, jsonable, refuse_recorded_code, run_name,
)
from textgym.config import EnvConfig
from textgym.rewards import get_reward

__all__ = ["RunConfig", "SamplingConfig", "PRESETS", "add_arguments", "run", "main", "resolve_settings", "split_settings", "run_name"]

FIXED_ON_RESUME = ("model", "preset", "mask_actions")  # a checkpoint already holds what these decide
NOT_RECORDED = ("resume", "overwrite")  # how this command was started, not what the run is
ENV = Section(EnvConfig, "the environment (textgym.config.EnvConfig)", ENV_EXCLUDED)  # train on train, validate on validation


def command() -> Command:
    """train's settings: the run, its management, the env (train on train, validate on validation), the agent, sampling."""
    from agents.callbacks import RunManagementConfig
    from agents.reinforce import REINFORCEConfig

    return Command([
        Section(RunConfig, "the run"),
        Section(RunManagementConfig, "evaluation, checkpoints, logs (agents.callbacks.RunManagementConfig)"),
        ENV,
        Section(REINFORCEConfig, "the REINFORCE agent (agents.reinforce.REINFORCEConfig)"),
        Section(SamplingConfig, "the policy's sampling"),
    ])  # fmt: skip


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Every setting of the five configs as a flag; presets noted in the help and listed below it."""
    p.description = __doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    command().add_arguments(p)
    p.epilog = "presets (flags override them):\n" + "\n".join(
        f"  {name}: " + ", ".join(f"{k}={json.dumps(v)}" for k, v in values.items()) for name, values in PRESETS.items()
    )


def resolve_settings(flags: dict[str, Any], base: dict[str, Any] | None = None) -> dict[str, Any]:
    """All settings of a run, by name: the configs' defaults, then the preset (or the task's
    recommended budget, `agents.runs`), then `flags`.

    On a resumed run `base` is the run's recorded settings (config.json and earlier resumes'
    changes) and replaces preset and recommendation.
    """
    return command().resolve(flags, recorded=base)[0]


def split_settings(settings: dict[str, Any]) -> list[Any]:
    """The five configs (RunConfig, RunManagementConfig, EnvConfig, REINFORCEConfig, SamplingConfig)
    made from a flat dict of settings such as `resolve_settings` returns (each takes its own names)."""
    return command().split(settings)


def run(args: argparse.Namespace) -> int:
    import torch

    import textgym
    from agents import distributed
    from agents.callbacks import TrainingInterrupted, read_metrics
    from agents.curriculum import LevelUp
    from agents.checkpoints import CheckpointError
    from agents.policy import LMPolicy
    from agents.reinforce import REINFORCE

    train = command()
    flags = train.flags(args)
    resume = RunDir(flags.pop("resume")) if flags.get("resume") else None
    ctx = distributed.setup()  # under torchrun: join the job (each rank runs this same command)
    print = builtins.print if ctx.is_main else (lambda *a, **k: None)  # noqa: A001

    try:  # the task, its data file, the run directory: a mistake there is one line
        if resume is not None:
            if flags.pop("overwrite", False):
                raise SystemExit("error: --overwrite starts a new run in --out; it does not go with --resume")
            checkpoint = resume.latest() if resume.path.is_dir() else None
            if checkpoint is None:
                raise SystemExit(f"error: {resume.not_resumable()}")
            out_flag = flags.pop("out", None)
            if out_flag is not None and Path(out_flag) != resume.path:
                raise SystemExit(f"error: --resume continues the run in {resume.path}; drop --out (or make it the same directory)")
            base = resume.settings()
            refuse_recorded_code(base, flags, resume.config_file)
            flags = {k: v for k, v in flags.items() if jsonable(v) != base.get(k)}  # what this resume changes
            fixed = [k for k in FIXED_ON_RESUME if k in flags]
            if fixed:
                raise SystemExit(f"error: --{fixed[0].replace('_', '-')} cannot change on --resume (the checkpoint decides it); start a new run instead")
            settings, _ = train.resolve(flags, recorded=base)
        else:
            settings, _ = train.resolve(flags)
        run_cfg, management, env_cfg, agent_cfg, sampling = train.split(settings)
        if env_cfg.reward is not None:
            get_reward(env_cfg.reward)  # a missing module or function fails before the model loads
        if resume is not None:
            out = resume
        elif run_cfg.out:
            out = RunDir(run_cfg.out)
            out.check_new(run_cfg.overwrite)  # before the model loads: fail fast, delete nothing yet
        else:
            out = RunDir.fresh(env_cfg.task)
    except (TypeError, ValueError, LookupError, OSError, ImportError) as e:  # RunError and CheckpointError too
        raise SystemExit(f"error: {e}") from None
    if run_cfg.threads:
        torch.set_num_threads(run_cfg.threads)

    if resume is not None:
        # The recorded settings, with this resume's changes, replace the checkpoint's.
        settings_now = {**dataclasses.asdict(agent_cfg), **dataclasses.asdict(sampling)}
        try:
            agent = REINFORCE.load(checkpoint, device=run_cfg.device, dtype=run_cfg.dtype, **settings_now)
        except (CheckpointError, FileNotFoundError) as e:
            raise SystemExit(f"error: {e}") from None
        policy = agent.policy
        print(f"resuming {resume.path} at iteration {agent.iteration}" + (f" with {json.dumps(flags)}" if flags else ""))
    else:
        print(f"loading {run_cfg.model} ...", flush=True)
        t0 = time.perf_counter()
        policy = LMPolicy.from_pretrained(run_cfg.model, device=run_cfg.device, dtype=run_cfg.dtype, seed=agent_cfg.seed,
                                          **dataclasses.asdict(sampling))  # fmt: skip
        print(f"loaded in {time.perf_counter() - t0:.1f} s: {policy.model.num_parameters() / 1e6:.1f}M parameters on {policy.device} ({policy.dtype})")
        agent = REINFORCE(policy, agent_cfg)
    env_settings = {k: getattr(env_cfg, k) for k in ENV.names()}
    curriculum = None
    if run_cfg.curriculum_threshold is not None:
        curriculum, env_settings = _curriculum(run_cfg, env_settings, policy.tokenizer, out.path if resume else None, agent.iteration)
    try:  # the task, its data file and its arguments are the user's: a mistake there is one line
        envs = textgym.TextGenVectorEnv(num_envs=run_cfg.prompts * run_cfg.group_size, group_size=run_cfg.group_size,
                                        tokenizer=policy.tokenizer, **env_settings)  # fmt: skip
        eval_env = textgym.TextGenVectorEnv(num_envs=min(64, management.eval_episodes), split="validation",
                                            tokenizer=policy.tokenizer, **env_settings)  # fmt: skip
    except (ValueError, TypeError, LookupError, OSError, ImportError) as e:
        raise SystemExit(f"error: {e}") from None
    if run_cfg.mask_actions:
        # The restriction is the current task's allowed tokens, also on resume: a resume may change the
        # task (--task, --task-kwargs), and keeping the checkpoint's mask would forbid the new task's tokens.
        allowed = envs.action_masks()[0]
        before = policy.allowed_tokens
        if before is not None and not np.array_equal(before.cpu().numpy(), allowed):
            print(f"the task's allowed tokens changed since the checkpoint ({int(before.sum())} -> {int(allowed.sum())} "
                  "tokens): sampling among the new task's")  # fmt: skip
        policy.restrict_actions(allowed)

    if ctx.enabled:
        n = run_cfg.prompts * run_cfg.group_size
        print(f"data-parallel on {ctx.world_size} ranks: {n} episodes per rank, {n * ctx.world_size} per update")
    if ctx.is_main:
        if resume is None and run_cfg.overwrite and out.path.is_dir() and any(out.path.iterdir()):
            out.delete()
            print(f"--overwrite: deleted the run that was in {out.path}")
        out.path.mkdir(parents=True, exist_ok=True)
        if resume is None:
            out.record_start({k: v for k, v in settings.items() if k not in NOT_RECORDED})
        elif flags:
            out.record_resume(agent.iteration, flags)
    out = out.path
    task_kwargs = f" {json.dumps(dict(env_cfg.task_kwargs))}" if env_cfg.task_kwargs else ""
    print(f"task {env_cfg.task}{task_kwargs}: {run_cfg.prompts} prompts x "
          f"{run_cfg.group_size} samples per update, updates {agent.iteration} -> {run_cfg.iterations} -> {out}")  # fmt: skip
    try:
        level_up = None if curriculum is None else LevelUp(curriculum, envs, eval_env)
        agent.learn(envs, iterations=max(run_cfg.iterations - agent.iteration, 0), eval_env=eval_env, callback=level_up,
                    log_dir=out if ctx.is_main else None, **dataclasses.asdict(management))  # fmt: skip
    except TrainingInterrupted as e:
        print(f"stopped at iteration {agent.iteration} ({e}); checkpoint saved. Continue with: textgym train --resume {out}")
        return 128 + e.signum
    except KeyboardInterrupt:
        print(f"aborted during iteration {agent.iteration + 1}; the last checkpoint is kept. Continue with: textgym train --resume {out}")
        return 130
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        if str(e.strerror).startswith("disk full"):  # a checkpoint's: it says what is left and what to do
            raise SystemExit(f"error: {e.strerror}") from None
        raise SystemExit(f"error: disk full while writing into {out} ({e}); the last checkpoint is kept. Free space, "
                         f"then continue with: textgym train --resume {out}") from None  # fmt: skip
    if not ctx.is_main:
        return 0
    rows = read_metrics(out)
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
        if last.get("val_prior") is not None:  # what one answer for every validation problem scores
            print(f"one answer for all ({last['val_prior_answer']!r}) scores {last['val_prior']:.3f}; lift over it "
                  f"{last['val_lift']:+.3f} [{last['val_lift_lo']:+.2f}, {last['val_lift_hi']:+.2f}] (iteration "
                  f"{last['iteration']}); {last['val_distinct_answers']} distinct answers, entropy "
                  f"{last['val_answer_entropy']:.2f} bits")  # fmt: skip
    collapses = [r["collapse"] for r in rows if "collapse" in r]
    if collapses:
        print(f"warning: {collapses[0]}")
    latest = RunDir(out).latest()
    print(f"metrics: {out / 'metrics.jsonl'}\nplot:    {out / 'rewards.png'}\ncheckpoint: {latest}")
    return 0


def _curriculum(run_cfg: RunConfig, env_settings: dict[str, Any], tokenizer: Any, resumed: Path | None,
                iteration: int) -> tuple[Any, dict[str, Any]]:
    """The reasoning-gym curriculum of a run (at the level a resumed run had reached), and the env
    settings that serve its task with room for the prompts of its hardest level."""
    import textgym
    from agents.callbacks import read_metrics
    from textgym.tasks.reasoning_gym import FAMILY, ReasoningGymCurriculum

    task = env_settings["task"]
    if not (isinstance(task, str) and task.startswith(f"{FAMILY}:")):
        raise SystemExit(f"error: --curriculum-threshold raises a reasoning-gym dataset's level; --task {task} is not one "
                         f"(use --task {FAMILY}:<dataset>)")  # fmt: skip
    kwargs = dict(env_settings["task_kwargs"] or {})
    start = int(kwargs.pop("level", 0))
    if resumed is not None:  # the level the run had reached at its checkpoint
        start = max([int(r["curriculum_level"]) for r in read_metrics(resumed)
                     if r.get("iteration") == iteration and "curriculum_level" in r] or [start])  # fmt: skip
    try:
        curriculum = ReasoningGymCurriculum(task.split(":", 1)[1], threshold=run_cfg.curriculum_threshold,
                                            patience=run_cfg.curriculum_patience, start_level=start, **kwargs)  # fmt: skip
    except (TypeError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    settings = {**env_settings, "task": curriculum.task, "task_kwargs": {}}
    if settings.get("max_prompt_tokens") is None:  # the hardest level's prompts are the longest
        hardest = ReasoningGymCurriculum(task.split(":", 1)[1], start_level=curriculum.max_level, **kwargs).task
        rooms = [textgym.TextGenVectorEnv(num_envs=1, tokenizer=tokenizer, **{**settings, "task": t}).obs_len
                 for t in (curriculum.task, hardest)]  # fmt: skip
        settings["max_prompt_tokens"] = max(rooms) - int(settings["max_new_tokens"])
    return curriculum, settings


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="textgym train")
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
