"""The run layer under `textgym train`, `textgym eval` and `textgym bench` (siblings that never import
each other): the presets, the configs they share, one settings resolver, and the run directory.

- `PRESETS`: a model's own defaults (its sampling and budget; for the toy models, a task), by the
  model's exact name or `--preset`. Every command applies the same one, so a model gets the same
  temperature and budget in `train`, `eval` and `bench`.
- `RunConfig` (the model and the run) and `SamplingConfig` (the policy's sampling), beside the
  configs of the components (`textgym.config.EnvConfig`, `agents.reinforce.REINFORCEConfig`, ...).
- `Command`: a command's configs as sections; its flags are generated from them, and `resolve` is
  the one place that layers a command's settings, from lowest to highest precedence:
    1. every config's defaults;
    2. the model's preset or, for a model that is a `textgym train` run (eval, bench), the run's
       recorded env and sampling settings (the episodes it trained on);
    3. the task's recommended budget (`Task.recommended_max_new_tokens`) for max_new_tokens, except
       where a run's recorded settings say it (a run's budget is a choice already made);
    4. the flags given on the command line.
  A resumed run (`textgym train --resume`) replaces 2 and 3 with its recorded settings.
- `RunDir`: a run directory: config.json (the settings a run started with) and resumes.jsonl (what
  each `--resume` changed), replayed by `RunDir.settings`; its checkpoints and `latest` pointer
  (read only through `agents.checkpoints`); and `load_policy`, the policy of a model name, a run or
  a checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from agents.checkpoints import CheckpointError, latest_checkpoint, resolve_checkpoint
from textgym.config import EnvConfig, add_arguments as add_config_arguments, check_choices, given, setting
from textgym.tokenizers import DEFAULT_MODEL

__all__ = [
    "PRESETS", "TASK_BOUND", "ENV_EXCLUDED", "SAMPLING", "RunConfig", "SamplingConfig", "Section", "Command",
    "RunDir", "RunError", "refuse_recorded_code", "load_policy", "recommended_budget", "split_tasks", "make_tasks", "run_name", "jsonable",
]

# Settings that differ from the configs' defaults, as named recipes: a model by the exact name of a
# preset uses it unless --preset says otherwise; other presets are asked for with --preset. Flags
# override a preset.
PRESETS: dict[str, dict[str, Any]] = {
    # The embedded default: room for a short chat answer; at T = 1.0 the 4-bit-quantized model
    # rambles, at 0.7 it mostly answers (on comparison 9% of its first replies name the larger number).
    DEFAULT_MODEL: dict(max_new_tokens=24, temperature=0.7),
    # The randomly initialised char model: copy 6 characters over "abc" (729 problems, 73 held out),
    # with edit-distance credit so a half-right answer beats a wrong one. It learns the rule (copy by
    # position), not the problems: held-out reward goes from 0.25 (chance) to >= 0.9 within 55-70
    # updates and stays >= 0.92 after (seeds 0-5; README). The entropy bonus keeps it sampling while
    # it finds the rule: without it 2 of those 6 seeds settle on a half-right answer (~0.5) for 100
    # updates.
    "tiny": dict(task="copy", task_kwargs={"length": 6, "alphabet": "abc"}, reward="partial_credit", max_new_tokens=6,
                 lr=1e-3, entropy_coef=0.01, iterations=100, prompts=8, mask_actions=True),
    # The toy before 2026-12-02: sort 6 characters over "ab" (64 problems, 6 held out). The model
    # learns where to switch from a to b only approximately, and the switch point drifts with every
    # update: a shift by one turns most strings from exact (1.0) to one-off (0.83) at once, so
    # after reaching 0.9 validation fell to 0.42-0.88 (seeds 0-5; one never got there; README).
    # Kept for its results.
    "tiny-sort": dict(task="sort", task_kwargs={"length": 6, "alphabet": "ab"}, reward="partial_credit", max_new_tokens=6,
                      lr=1e-3, iterations=60, prompts=8, mask_actions=True),
    # The tiny model on the multi-turn guessing game (`--model tiny --preset tiny-guess`): a code of 6
    # binary digits, 3 guesses, per-digit higher/lower feedback, a little partial credit per right
    # digit; a guess is exactly 6 tokens (the turn ends there). Learning to use the feedback finds
    # codes never trained on: held-out success from 0.02 to >= 0.97 within 175 updates (seed 0).
    "tiny-guess": dict(task="guess", task_kwargs={"length": 6, "digits": "12", "max_turns": 3, "partial_credit": 0.3},
                       max_new_tokens=40, max_turn_tokens=6, lr=1e-3, iterations=300, prompts=8, mask_actions=True,
                       eval_every=25, eval_episodes=128),
}  # fmt: skip
TASK_BOUND = ("task_kwargs", "reward")  # preset settings that belong to its task: dropped when --task is given
ENV_EXCLUDED = ("split", "budget_is_terminal", "action_mask_in_info")  # the commands choose these themselves
SAMPLING = ("temperature", "top_k", "top_p")
NOTES = {  # what every command's help adds to a setting's own
    "task": "or 'package.module:name' (a Task subclass, a function returning a Task, or a Task, from your module)",
    "reward": "or 'package.module:function'",
    "max_new_tokens": "(not given: a run's own, else the task's recommendation, else the model's preset)",
}
RUN_FILES = ("latest", "metrics.jsonl", "resumes.jsonl", "rewards.png")  # a directory with one of these holds a run


@dataclass(frozen=True)
class RunConfig:
    """The settings of a `textgym train` run that belong to neither the env, the agent nor the sampling
    (`textgym eval` takes its model settings: model, preset, mask_actions, device, dtype, threads)."""

    model: str = setting(DEFAULT_MODEL, "'smollm2-135m-instruct' (the embedded default), 'tiny', an HF id, a local dir or a .gguf file")
    preset: Literal[tuple(PRESETS)] | None = setting(None, "a preset of other defaults (None: the model's own, if it has one)")
    iterations: int = setting(50, "total updates of the run (with --resume: the new total)")
    prompts: int = setting(2, "prompts per update")
    group_size: int = setting(8, "samples per prompt (the group of the group baselines)")
    mask_actions: bool = setting(False, "sample only the task's allowed tokens")
    device: str = setting("auto", "cuda, mps, cpu, or auto (CUDA, then MPS, then CPU)")
    dtype: str = setting("auto", "float32, bfloat16, float16, or auto (bf16 on CUDA, float32 elsewhere)")
    threads: int | None = setting(None, "torch CPU threads (None: torch's default, all cores)")
    curriculum_threshold: float | None = setting(
        None,
        "reasoning-gym tasks: raise the dataset's curriculum level (task_kwargs 'level': the start) when the update's "
        "pass rate is >= this for curriculum_patience updates in a row (None: a fixed level)",
    )
    curriculum_patience: int = setting(5, "updates in a row at or above curriculum_threshold before the level rises")
    out: str | None = setting(None, "output directory (None: runs/<task>-<date>-<time>); a directory that holds a run is refused (see --resume, --overwrite)")
    overwrite: bool = setting(False, "with --out: delete the run already in that directory and start a new one there")
    resume: str | None = setting(None, "continue the run in this directory; other flags given override its settings (recorded in resumes.jsonl)")

    def __post_init__(self) -> None:
        check_choices(self)
        for name in ("iterations", "prompts", "group_size", "curriculum_patience"):
            value = getattr(self, name)
            minimum = 0 if name == "iterations" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class SamplingConfig:
    """The policy's sampling distribution (`LMPolicy(temperature, top_k, top_p)`), in every command."""

    temperature: float = setting(1.0, "sampling temperature T > 0 (log-probs are of softmax(logits / T))")
    top_k: int | None = setting(None, "sample among the k most likely tokens only (None: all)")
    top_p: float | None = setting(None, "sample from the smallest set of tokens with probability >= p (None: all)")


def _episode_settings() -> set[str]:
    """What a run's recorded settings say about its episodes: the env's and the sampling's settings."""
    return {f.name for cls in (EnvConfig, SamplingConfig) for f in dataclasses.fields(cls)} - set(ENV_EXCLUDED)


# -- a command's settings --------------------------------------------------------------------------


@dataclass(frozen=True)
class Section:
    """One config of a command: its settings (less `exclude`) are the command's flags, in one group."""

    config: type
    title: str
    exclude: tuple[str, ...] = ()

    def names(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self.config) if f.metadata.get("cli", True) and f.name not in self.exclude]


class Command:
    """The settings of one command: its configs (`sections`), their flags, and the one resolver.

    Args:
        sections: the command's configs, in the order of its help.
        models_from_runs: whether a model that is a `textgym train` run (or checkpoint) brings the
            run's recorded env and sampling settings (eval, bench); else only presets apply (train).
        not_from_model: settings the command declares itself that a preset must not set (bench's
            --mask-actions is auto/on/off, not a preset's True).
    """

    def __init__(self, sections: Sequence[Section], *, models_from_runs: bool = False, not_from_model: tuple[str, ...] = ()):
        self.sections = list(sections)
        self.models_from_runs = models_from_runs
        self.not_from_model = not_from_model

    def add_arguments(self, parser: argparse.ArgumentParser, notes: Mapping[str, str] | None = None) -> None:
        """Every setting of every section as a flag, a group per section; each preset's value of a
        setting is noted in its help."""
        notes = {name: "; ".join(filter(None, (note, (notes or {}).get(name)))) for name, note in NOTES.items()} | {
            name: note for name, note in (notes or {}).items() if name not in NOTES}  # fmt: skip
        for preset, values in PRESETS.items():
            for name, value in values.items():
                if name in self.not_from_model:
                    continue
                notes[name] = (notes.get(name, "") + f" [{preset}: {json.dumps(value)}]").strip()
        for section in self.sections:
            names = set(section.names())
            exclude = tuple(f.name for f in dataclasses.fields(section.config) if f.name not in names)
            add_config_arguments(parser.add_argument_group(section.title), section.config, exclude=exclude, notes=notes)

    def flags(self, args: argparse.Namespace) -> dict[str, Any]:
        """The settings given on the command line, by name."""
        return {k: v for section in self.sections for k, v in given(args, section.config).items()}

    def defaults(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for section in self.sections:
            fields = {f.name: f for f in dataclasses.fields(section.config)}
            for name in section.names():
                f = fields[name]
                out.setdefault(name, f.default if f.default is not dataclasses.MISSING else f.default_factory())
        return out

    def resolve(self, flags: Mapping[str, Any], *, model: str | None = None, recorded: Mapping[str, Any] | None = None
                ) -> tuple[dict[str, Any], str]:  # fmt: skip
        """(every setting by name, where those not at their default came from), layered as the module
        docstring says. `model` names the model when the command has no --model (bench's agents);
        `recorded` holds the settings of the run a `--resume` continues (`RunDir.settings`). Building
        the task for its recommended budget may raise what `make_task` raises (an unknown task, a
        missing file); a run whose files name code is a RunError (`refuse_recorded_code`)."""
        settings = self.defaults()
        if recorded is not None:
            return {**settings, **recorded, **flags}, "the run's settings"
        model = model if model is not None else flags.get("model", settings.get("model"))
        trained = RunDir.of_model(model) if self.models_from_runs and model is not None else None
        if trained is not None:
            names = _episode_settings()
            base = {k: v for k, v in trained.settings(missing_ok=True).items() if k in names and k in settings}
            source = f"the run's settings ({trained.config_file})"
        else:
            preset = flags.get("preset") or (model if model in PRESETS else None)
            base = {k: v for k, v in PRESETS.get(preset, {}).items() if k in settings}
            if "preset" in settings:
                base["preset"] = preset
            source = f"preset {preset}" if preset else "defaults"
        base = {k: v for k, v in base.items() if k not in self.not_from_model}
        if "task" in flags:  # the preset's (or run's) task, and what belongs to it, give way
            base = {k: v for k, v in base.items() if k not in ("task", *TASK_BOUND)}
        if trained is not None:
            refuse_recorded_code(base, flags, trained.config_file)
        settings = {**settings, **base, **flags}
        if trained is None and "max_new_tokens" in settings and "max_new_tokens" not in flags and settings.get("task"):
            budget = recommended_budget(settings["task"], settings.get("task_kwargs") or {})
            if budget is not None:
                settings["max_new_tokens"] = budget
                source += f", the task's recommended budget ({budget} new tokens)"
        return settings, source

    def split(self, settings: Mapping[str, Any]) -> list[Any]:
        """One config per section, made from a flat dict of settings (each takes its own names)."""
        return [s.config(**{k: v for k, v in settings.items() if k in s.names()}) for s in self.sections]


CODE_SETTINGS = ("task", "task_kwargs", "reward")  # settings whose values may name code ("package.module:name")


def _module_paths(value: Any, key: str) -> list[str]:
    """The module paths a setting's value names as a task or a reward, at any depth of task_kwargs
    (a task that wraps another, e.g. retry's `task`); registered families and rewards are not code."""
    from textgym.registry import is_module_path
    from textgym.rewards.core import REWARDS
    from textgym.tasks import list_task_families

    if isinstance(value, Mapping):
        return [p for k, v in value.items() for p in _module_paths(v, str(k))]
    if isinstance(value, (list, tuple)):
        return [p for v in value for p in _module_paths(v, key)]
    if not isinstance(value, str) or key not in ("task", "reward"):
        return []
    names = [n.strip() for n in value.split(",")] if key == "task" else [value]
    return [n for n in names if is_module_path(n) and n.split(":")[0] not in list_task_families()
            and not (key == "reward" and REWARDS.registered(n))]  # fmt: skip


def refuse_recorded_code(recorded: Mapping[str, Any], given: Mapping[str, Any], where: Path) -> None:
    """Refuse a run's recorded task or reward that names code by module path unless the command line
    gives that setting itself: a run directory's files never make textgym import code (a crafted
    config.json would otherwise run any installed function), as its checkpoints never unpickle any."""
    for key in CODE_SETTINGS:
        paths = _module_paths(recorded.get(key), key) if key in recorded and key not in given else []
        if paths:
            flag = "--" + key.replace("_", "-")
            value = recorded[key] if isinstance(recorded[key], str) else json.dumps(recorded[key])
            raise RunError(f"{where} names {paths[0]!r} as its {key.replace('_kwargs', '')}, code from a module, and "
                           f"textgym does not import code that a run directory's files name; if you trust it, give "
                           f"it on the command line: {flag} '{value}'")  # fmt: skip


def split_tasks(task: Any, task_kwargs: Mapping[str, Any] | None) -> tuple[list[str], dict[str, dict]]:
    """(task names, each one's arguments) from a comma-separated --task and --task-kwargs, which holds
    the arguments of every task, or per task: {"a": {...}, "b": {...}}."""
    names = [t.strip() for t in str(task).split(",") if t.strip()]
    if not names:
        raise ValueError("--task is empty; name a task (see `textgym tasks`)")
    kwargs = dict(task_kwargs or {})
    if kwargs and all(k in names and isinstance(v, Mapping) for k, v in kwargs.items()):
        return names, {t: dict(kwargs.get(t, {})) for t in names}
    return names, {t: dict(kwargs) for t in names}


def make_tasks(task: Any, task_kwargs: Mapping[str, Any] | None, reward: Any = None) -> tuple[list[str], dict[str, dict], list[Any]]:
    """(names, arguments, Tasks) of a --task and its --task-kwargs (`split_tasks`), built, and the
    --reward looked up: an unknown name, a missing file or module fails here, before a model loads."""
    from textgym.rewards import get_reward
    from textgym.tasks import make_task

    names, kwargs = split_tasks(task, task_kwargs)
    tasks = [make_task(name, **kwargs[name]) for name in names]
    if reward is not None:
        get_reward(reward)
    return names, kwargs, tasks


def recommended_budget(task: Any, task_kwargs: Mapping[str, Any]) -> int | None:
    """The largest `recommended_max_new_tokens` of the task(s) (a Task, a name, or comma-separated
    names with their --task-kwargs); None when none recommends one."""
    from textgym.tasks import Task

    tasks = [task] if isinstance(task, Task) else make_tasks(task, task_kwargs)[2]
    budgets = [t.recommended_max_new_tokens for t in tasks if t.recommended_max_new_tokens is not None]
    return max(budgets) if budgets else None


# -- run directories -------------------------------------------------------------------------------


class RunError(ValueError):
    """A run directory that cannot be used as asked; the message names the file and what to do."""


class RunDir:
    """A `textgym train` run directory.

    It holds config.json (the run's settings as it started), resumes.jsonl (the flags each
    `--resume` changed), metrics.jsonl, rewards.png, and checkpoint-NNNNNN/ directories with a
    `latest` pointer. A new run never writes into a directory that holds one.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def config_file(self) -> Path:
        return self.path / "config.json"

    @property
    def resumes_file(self) -> Path:
        return self.path / "resumes.jsonl"

    @classmethod
    def of_model(cls, model: str | os.PathLike) -> "RunDir | None":
        """The run a model name belongs to when it is a run directory or a checkpoint, else None.
        Raises what `resolve_checkpoint` raises for a damaged run."""
        checkpoint = resolve_checkpoint(model)
        return None if checkpoint is None else cls(checkpoint.parent)

    @classmethod
    def fresh(cls, task: str) -> "RunDir":
        """runs/<task>-<date>-<time>, with a suffix when a run started in the same second already has it."""
        base = Path("runs") / f"{run_name(task)}-{time.strftime('%Y%m%d-%H%M%S')}"
        out, n = base, 1
        while out.exists():
            n += 1
            out = base.with_name(f"{base.name}-{n}")
        return cls(out)

    def latest(self) -> Path | None:
        """The checkpoint `latest` names (`agents.checkpoints.latest_checkpoint`), or None."""
        return latest_checkpoint(self.path)

    def settings(self, missing_ok: bool = False) -> dict[str, Any]:
        """The run's settings as recorded: config.json, then each resume's changes (resumes.jsonl).

        A missing config.json is a RunError (with `missing_ok`: no settings, {}, as for a checkpoint
        copied out of its run); a damaged file or line is a RunError that names it.
        """
        path = self.config_file
        try:
            base = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(base, dict):
                raise ValueError("not a JSON object")
        except FileNotFoundError:
            if missing_ok:
                return {}
            raise RunError(f"{path} is missing, so the run's settings are unknown: {self.path} cannot be resumed; "
                           f"start a new run (its weights: --model {self._policy_hint()})") from None  # fmt: skip
        except (ValueError, UnicodeDecodeError) as e:
            raise RunError(f"{path} is damaged ({e}); restore it, or start a new run") from None
        lines = self.resumes_file.read_text(encoding="utf-8", errors="replace").splitlines() if self.resumes_file.exists() else []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                base.update(json.loads(line)["overrides"])
            except (ValueError, KeyError, TypeError) as e:
                raise RunError(f"{self.resumes_file} line {number} is damaged ({e}); fix or delete that line") from None
        return base

    def record_start(self, settings: Mapping[str, Any]) -> None:
        self.config_file.write_text(json.dumps(jsonable(settings), indent=2) + "\n")

    def record_resume(self, iteration: int, overrides: Mapping[str, Any]) -> None:
        entry = {"iteration": iteration, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "overrides": jsonable(overrides)}
        with open(self.resumes_file, "a") as f:
            f.write(json.dumps(entry) + "\n")

    def _policy_hint(self) -> str:
        try:
            checkpoint = self.latest()
        except CheckpointError:
            checkpoint = None
        return str(checkpoint / "policy") if checkpoint else "<checkpoint>/policy"

    def not_resumable(self) -> str:
        """Why `--resume` of this path has nothing to resume, and what to do instead."""
        path = self.path
        if not path.exists():
            return f"{path} has no checkpoint to resume from: it does not exist (--resume takes a textgym train run's directory)"
        if not path.is_dir():
            return f"{path} is a file; --resume takes the directory of a textgym train run"
        if (path / "agent.pt").exists():
            return f"{path} is a checkpoint; resume its run: --resume {path.parent}"
        if (path / "config.json").exists() and (any(path.glob("*.safetensors")) or (path / "pytorch_model.bin").exists()):
            return f"{path} is a model directory, not a textgym train run; start a new run from it with --model {path}"
        return f"{path} has no checkpoint to resume from ({path / 'latest'} is missing)"

    def holds_run(self) -> bool:
        """Whether the directory holds (part of) a textgym train run: its files, a checkpoint, or its config.json."""
        path = self.path
        if any((path / name).exists() for name in RUN_FILES) or any(path.glob("checkpoint-*")):
            return True
        try:
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(config, dict) and {"model", "task", "iterations"} <= set(config)

    def check_new(self, overwrite: bool) -> None:
        """Refuse (RunError) to start a run here when that would destroy something: the run here, or other files."""
        out = self.path
        if not out.exists():
            return
        if not out.is_dir():
            raise RunError(f"--out {out} is a file; pick a directory")
        if not any(out.iterdir()):
            return
        if self.holds_run():
            if overwrite:
                return
            if not (out / "latest").exists():
                raise RunError(f"{out} already holds a textgym train run, which stopped before its first checkpoint: "
                               "pass --overwrite to delete it and start over there, or pick another --out")  # fmt: skip
            raise RunError(f"{out} already holds a textgym train run; continue it with --resume {out}, "
                           "or pass --overwrite to delete it and start over there (or pick another --out)")  # fmt: skip
        raise RunError(f"--out {out} is not empty and holds no textgym run; pick a new or empty directory "
                       "(--overwrite only replaces a run)")  # fmt: skip

    def delete(self) -> None:
        """Delete the run (--overwrite): renamed aside first, so a kill midway leaves no half run."""
        aside = self.path.with_name(f".{self.path.name}.overwritten-{os.getpid()}")
        os.replace(self.path, aside)
        shutil.rmtree(aside)


def load_policy(model: str, device: str = "auto", dtype: str = "auto", **sampling: Any) -> tuple[Any, dict[str, Any]]:
    """(an LMPolicy, what it is) for a model name, a `textgym train` run directory or checkpoint.

    A run's policy keeps the token restriction it was trained with; `sampling` (temperature,
    top_k, top_p) replaces the checkpoint's. The description names the checkpoint and its
    iteration, so an evaluation of a run that trained further is not mistaken for this one.
    """
    checkpoint = resolve_checkpoint(model)
    if checkpoint is None:
        from agents.policy import LMPolicy

        return LMPolicy.from_pretrained(model, device=device, dtype=dtype, **sampling), {"model": str(model)}
    from agents.reinforce import REINFORCE

    agent = REINFORCE.load(checkpoint, device=device, dtype=dtype, **sampling)
    return agent.policy, {"model": str(model), "checkpoint": str(checkpoint.resolve()), "iteration": agent.iteration}


def run_name(task: str, limit: int = 60) -> str:
    """A directory name for a task spec: letters, digits and - _ . only, at most `limit` characters,
    still recognisable ("file:/data/x/gsm8k.jsonl" -> "file-data-x-gsm8k.jsonl"): a spec is text a
    user typed, and a path or a name with / : .. in it must not decide where a run is written."""
    name = re.sub(r"[-.]{2,}", "-", re.sub(r"[^A-Za-z0-9_.-]+", "-", task)).strip("-.")  # no "..", no "/"
    if len(name) > limit:  # keep the head (the task family) and the tail (the file or dataset name)
        head = limit // 3
        name = name[:head].rstrip("-.") + "-" + name[-(limit - head - 1) :].lstrip("-.")
    return name or "run"


def jsonable(value: Any) -> Any:
    """Settings as JSON values: tuples as lists, mappings as dicts, objects (a Task, a reward function)
    by their name."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return getattr(value, "name", None) or getattr(value, "__name__", None) or repr(value)
