"""Run management around `REINFORCE.learn`, as callbacks (Stable-Baselines3 style).

    agent.learn(envs, iterations=50, callback=[
        Evaluation(eval_env, every=5, episodes=64),    # validation reward, before the first and every 5
        AnswerCollapse(),                                 # says once when every problem gets one answer
        MetricsWriter("runs/x"),                         # runs/x/metrics.jsonl, one line per iteration
        ProgressBar(),                                    # train and validation reward in the postfix
        Checkpoint("runs/x", every=10),                   # runs/x/checkpoint-NNNNNN and runs/x/latest
        Plot("runs/x"),                                   # runs/x/rewards.png
        EarlyStopping(threshold=0.95),
    ])

`learn(..., eval_env=, log_dir=, save_every=, progress_bar=)` builds that list itself
(`standard_callbacks`); `callback=` adds more after it. The order matters and is that of the list:
`on_iteration_end(metrics)` hands every callback the same dict, so the evaluation adds `val_*`
entries before the writer, the tracker and the progress bar read them.

A callback sees the trainer only through `agent.iteration` (iterations done), `agent.end_iteration`
(where the current `learn` call stops), `agent.policy` (for evaluation), `agent.checkpoint(dir)` and
`agent.config`, so any trainer that has those can reuse them.

Signals: `learn` runs inside `stop_on_signals()`. The first SIGINT (Ctrl-C) or SIGTERM (what torchrun,
SLURM and Kubernetes send before they kill a job) lets the iteration in progress finish, so callbacks
end the run at a consistent point (the checkpoint callback saves), and then `learn` raises
`TrainingInterrupted`; a second signal aborts at once. The handlers are installed explicitly for the
duration of `learn` (and the previous ones restored), because a process started as a background job
inherits SIGINT ignored and would otherwise never see Ctrl-C.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from agents.checkpoints import CheckpointError, latest_checkpoint
from agents.rollouts import evaluate
from textgym.config import replace, setting

__all__ = [
    "RunManagementConfig",
    "Callback",
    "CallbackList",
    "FunctionCallback",
    "Evaluation",
    "AnswerCollapse",
    "MetricsWriter",
    "Checkpoint",
    "Plot",
    "ProgressBar",
    "EarlyStopping",
    "ReportTo",
    "REPORT_TO",
    "standard_callbacks",
    "as_callback",
    "stop_on_signals",
    "TrainingInterrupted",
    "read_metrics",
    "plot_metrics",
]

EVAL_SEED_OFFSET = 104729  # validation episodes are seeded apart from every training iteration's seeds
REPORT_TO = ("tensorboard", "wandb", "trackio")


@dataclass(frozen=True)
class RunManagementConfig:
    """The settings of the standard callbacks (`learn`'s keyword arguments, `textgym train`'s flags)."""

    eval_every: int = setting(5, "validation reward every this many iterations (and before the first and after the last)")
    eval_episodes: int = setting(
        256, "validation episodes per evaluation (on a split of known size, that many distinct problems, the same each time)"
    )
    save_every: int | None = setting(10, "checkpoint every this many iterations, and at the end (None: only at the end)")
    progress_bar: bool = setting(True, "show a progress bar with the train and validation reward")
    early_stop_reward: float | None = setting(None, "stop once the validation reward reaches this")
    early_stop_patience: int | None = setting(None, "stop after this many evaluations without a new best validation reward")
    report_to: tuple[str, ...] = setting((), "also log to these trackers: tensorboard, wandb, trackio")

    def __post_init__(self) -> None:
        for name in ("eval_every", "eval_episodes", "save_every", "early_stop_patience"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        object.__setattr__(self, "report_to", (self.report_to,) if isinstance(self.report_to, str) else tuple(self.report_to))
        bad = [b for b in self.report_to if b not in REPORT_TO]
        if bad:
            raise ValueError(f"report_to takes {', '.join(REPORT_TO)}; got {', '.join(bad)}")

    kind = "run-management"  # how errors name these settings (a class attribute, not a setting)

    @classmethod
    def make(cls, **settings: Any) -> "RunManagementConfig":
        """The config with some settings changed (an unknown name raises a TypeError listing the known)."""
        return replace(cls, **settings)


class Callback:
    """Hooks `learn` calls. Subclass and override what you need.

    - `on_training_start(agent, metrics)`: before the first iteration. `metrics` is the row of the
      starting point ({"iteration": agent.iteration}); a callback may add to it (the evaluation does,
      on a fresh run) and the ones after it see that, as in `on_iteration_end`.
    - `on_iteration_end(metrics) -> bool | None`: after each iteration's update; returning False
      stops training after this iteration (every callback still sees it).
    - `on_training_end(error)`: once, however `learn` ends. `error` is None when it ends at an
      iteration boundary (done, stopped by a callback or a signal): the state is consistent and
      may be saved. Otherwise it is the exception that aborts training.
    """

    agent: Any = None

    def on_training_start(self, agent: Any, metrics: dict) -> None:
        self.agent = agent

    def on_iteration_end(self, metrics: dict) -> bool | None:
        return True

    def on_training_end(self, error: BaseException | None = None) -> None:
        pass


class CallbackList(Callback):
    """Several callbacks, called in order."""

    def __init__(self, callbacks: Iterable[Callback]):
        self.callbacks = list(callbacks)

    def on_training_start(self, agent: Any, metrics: dict) -> None:
        super().on_training_start(agent, metrics)
        for c in self.callbacks:
            c.on_training_start(agent, metrics)

    def on_iteration_end(self, metrics: dict) -> bool:
        keep_going = True
        for c in self.callbacks:
            keep_going = (c.on_iteration_end(metrics) is not False) and keep_going
        return keep_going

    def on_training_end(self, error: BaseException | None = None) -> None:
        failure = None
        for c in self.callbacks:  # every callback closes its files, even if another one fails
            try:
                c.on_training_end(error)
            except Exception as e:  # noqa: BLE001
                failure = failure or e
        if failure is not None and error is None:
            raise failure


class FunctionCallback(Callback):
    """A plain function `f(metrics) -> bool | None` called after every iteration."""

    def __init__(self, fn: Callable[[dict], bool | None]):
        self.fn = fn

    def on_iteration_end(self, metrics: dict) -> bool | None:
        return self.fn(metrics)


def as_callback(callback: Callback | Callable | Sequence | None) -> CallbackList:
    """None, a Callback, a function of the metrics, or a list of those, as one CallbackList."""
    if callback is None:
        return CallbackList([])
    if isinstance(callback, CallbackList):
        return callback
    if isinstance(callback, Callback):
        return CallbackList([callback])
    if callable(callback):
        return CallbackList([FunctionCallback(callback)])
    if isinstance(callback, (list, tuple)):
        return CallbackList([c if isinstance(c, Callback) else as_callback(c) for c in callback])
    raise TypeError(f"callback must be a Callback, a function of the metrics dict or a list of them, got {type(callback).__name__}")


# -- evaluation -----------------------------------------------------------------------------------


class Evaluation(Callback):
    """Validation reward on `env`: before the first iteration of a fresh run, every `every` iterations
    and after the last, as `val_*` entries of the metrics (reward, reward_ci95, accuracy, ...).

    Beside the reward, what the policy answers (`agents.answers`): `val_prior` (what always giving
    the commonest reference answer of the validation problems scores, by pass@1's rule; that answer
    is `val_prior_answer`), `val_lift` = pass@1 - prior per problem, averaged, with `val_lift_lo` /
    `val_lift_hi` (95% bootstrap over problems); `val_distinct_answers` and `val_answer_entropy`
    (bits) over all validation samples, their `_per_problem` means, `val_top_answer` and
    `val_distinct_references`. The prior is None where undefined (no reference answers, multi-turn
    tasks); it costs one verifier call per problem and is scored once per run (the problems are
    the same at every evaluation).

    Every evaluation uses the same prompts and samples (seed `agent.config.seed + 104729` unless
    `seed` is given), so the points of one run are comparable; the policy's sampling stream is
    left where it was. A resumed run does not re-evaluate its starting point (its row is logged).
    `time_val_s` is the evaluation's wall time.
    """

    def __init__(
        self,
        env: Any,
        every: int = RunManagementConfig.eval_every,
        episodes: int = RunManagementConfig.eval_episodes,
        seed: int | None = None,
        greedy: bool = False,
    ):
        if every < 1 or episodes < 1:
            raise ValueError(f"every and episodes must be >= 1, got every={every}, episodes={episodes}")
        self.env, self.every, self.episodes, self.seed, self.greedy = env, int(every), int(episodes), seed, greedy
        self.last: dict[str, Any] = {}
        self.priors: dict = {}  # the prior per validation problem set, scored once

    def on_training_start(self, agent: Any, metrics: dict) -> None:
        super().on_training_start(agent, metrics)
        if agent.iteration == 0:
            self._evaluate(metrics)

    def on_iteration_end(self, metrics: dict) -> bool:
        it = metrics["iteration"]
        if it % self.every == 0 or it == self.agent.end_iteration:
            self._evaluate(metrics)
        return True

    def _evaluate(self, metrics: dict) -> None:
        seed = self.seed if self.seed is not None else self.agent.config.seed + EVAL_SEED_OFFSET
        start = time.perf_counter()
        self.last = evaluate(self.agent.policy, self.env, episodes=self.episodes, greedy=self.greedy, seed=seed,
                             priors=self.priors)  # fmt: skip
        metrics.update({f"val_{k}": v for k, v in self.last.items()})
        metrics["time_val_s"] = time.perf_counter() - start  # what the evaluation cost (outside time_*_s of the update)


COLLAPSE_UPDATES = 3


class AnswerCollapse(Callback):
    """Says once per `learn` call, in the terminal and in the metrics row (`collapse`, the message),
    when the policy gives one answer to problems whose right answers differ.

    Collapsed means either, with answers read as the verifier reads them and the same by `vote_key`:
    - validation: every answered validation sample gives the same answer while the validation
      problems' references hold two or more answers (`val_distinct_answers` == 1 <
      `val_distinct_references`), on any evaluation (the one before training too); or
    - training: the same in `updates` consecutive updates whose prompts' references differ
      (`train_distinct_answers` == 1 < `train_distinct_references`). An update whose prompts share
      one reference answer neither counts nor breaks the run; any other (two or more answers, or
      none) breaks it.
    One answer to problems that share their answer (a bandit, one prompt per update) is not a
    collapse, and neither is a policy that answers each prompt consistently but differently.
    Such a policy scores the prior: compare `val_prior` and `val_lift`.
    """

    def __init__(self, updates: int = COLLAPSE_UPDATES):
        if updates < 1:
            raise ValueError(f"updates must be >= 1, got {updates}")
        self.updates = int(updates)
        self.streak = 0
        self.message: str | None = None

    def on_training_start(self, agent: Any, metrics: dict) -> None:
        super().on_training_start(agent, metrics)
        self.streak, self.message = 0, None
        self._check(metrics)

    def on_iteration_end(self, metrics: dict) -> bool:
        self._check(metrics)
        return True

    def _check(self, metrics: dict) -> None:
        found = None
        if _one_of_several(metrics, "val"):
            found = (f"every validation sample answers {metrics.get('val_top_answer')!r} although the "
                     f"{int(metrics['val_distinct_references'])} validation references differ")  # fmt: skip
        if "train_distinct_answers" in metrics and metrics.get("train_distinct_references", 0) >= 2:
            self.streak = self.streak + 1 if _one_of_several(metrics, "train") else 0
            if self.streak >= self.updates and found is None:
                found = (f"every sample of the last {self.streak} updates answers {metrics.get('train_top_answer')!r} "
                         "although their prompts' references differ")  # fmt: skip
        if found is None or self.message is not None:
            return
        prior = metrics.get("val_prior")
        self.message = (f"collapse at iteration {metrics['iteration']}: the policy gives one answer to every problem: "
                        f"{found}" + (f" (validation: prior {prior:.3f}, lift {metrics['val_lift']:+.3f})"
                                      if prior is not None and metrics.get("val_lift") is not None else ""))  # fmt: skip
        metrics["collapse"] = self.message
        from tqdm.auto import tqdm

        tqdm.write(f"warning: {self.message}", file=sys.stderr)


def _one_of_several(metrics: dict, prefix: str) -> bool:
    """Whether the `prefix_` samples all give one answer while their references hold two or more."""
    answers, references = metrics.get(f"{prefix}_distinct_answers"), metrics.get(f"{prefix}_distinct_references")
    return answers is not None and references is not None and answers == 1 and references >= 2


# -- files: metrics, checkpoints, plot ------------------------------------------------------------


def _check_writable(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise PermissionError(f"cannot write to the output directory {path}: {e}; pick another with log_dir/--out") from e
    return path


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The rows of a metrics.jsonl (a run directory or the file); a line cut off mid-write is skipped."""
    path = Path(path)
    path = path / "metrics.jsonl" if path.is_dir() else path
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


class MetricsWriter(Callback):
    """Appends one JSON line per iteration to `run_dir/metrics.jsonl`, flushed and fsynced.

    At the start it keeps only the rows up to the iteration the agent starts from (all of them are
    dropped on a fresh run): a run killed after logging iteration k but before its next checkpoint
    would otherwise log the iterations after its checkpoint twice when resumed. Iterations are
    seeded from (seed, iteration), so a resumed run logs the same rows again. The directory is
    checked when the callback is made, so a bad path fails before any work.

    Every row gets `wall_s`: wall-clock seconds of training so far, evaluations included, counted
    from when the callback was made and continued from the last kept row on resume (the time to a
    target reward, read off the run itself).
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.path = _check_writable(Path(run_dir)) / "metrics.jsonl"
        self.file = None
        self.started = time.perf_counter()
        self.offset = 0.0

    def on_training_start(self, agent: Any, metrics: dict) -> None:
        super().on_training_start(agent, metrics)
        keep = [r for r in read_metrics(self.path) if agent.iteration > 0 and r.get("iteration", 0) <= agent.iteration]
        self.offset = max((float(r.get("wall_s", 0.0)) for r in keep), default=0.0)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
        os.replace(tmp, self.path)
        self.file = open(self.path, "a")
        if len(metrics) > 1:  # the starting point has more than its iteration number (validation)
            self._write(metrics)

    def on_iteration_end(self, metrics: dict) -> bool:
        self._write(metrics)
        return True

    def _write(self, metrics: dict) -> None:
        row = {**metrics, "wall_s": round(self.offset + time.perf_counter() - self.started, 3)}
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        os.fsync(self.file.fileno())

    def on_training_end(self, error: BaseException | None = None) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class Checkpoint(Callback):
    """Saves the agent into `run_dir` every `every` iterations and when training ends consistently.

    `agent.checkpoint(run_dir)` writes `checkpoint-NNNNNN` and then moves the `latest` pointer, so
    `latest` always names a complete checkpoint. An iteration is saved once: not again at the end
    when `every` already saved it, and not again when a resumed run stops where it started.
    """

    def __init__(self, run_dir: str | os.PathLike, every: int | None = RunManagementConfig.save_every, keep: int = 1):
        if every is not None and every < 1:
            raise ValueError(f"every must be >= 1 or None, got {every}")
        self.run_dir, self.every, self.keep = _check_writable(Path(run_dir)), every, keep
        self.saved_at: int | None = None

    def on_training_start(self, agent: Any, metrics: dict) -> None:
        super().on_training_start(agent, metrics)
        try:
            latest = latest_checkpoint(self.run_dir)
        except CheckpointError:
            latest = None  # names nothing usable: the first save replaces it
        if agent.iteration > 0 and latest is not None and _iteration_of(latest.name) == agent.iteration:
            self.saved_at = agent.iteration  # resumed from it: already on disk

    def on_iteration_end(self, metrics: dict) -> bool:
        if self.every and metrics["iteration"] % self.every == 0:
            self._save()
        return True

    def on_training_end(self, error: BaseException | None = None) -> None:
        if error is None and self.saved_at != self.agent.iteration:
            self._save()

    def _save(self) -> None:
        self.agent.checkpoint(self.run_dir, keep=self.keep)
        self.saved_at = self.agent.iteration


def _iteration_of(name: str) -> int | None:
    try:
        return int(name.split("-")[1])
    except (IndexError, ValueError):
        return None


def plot_metrics(metrics_path: str | os.PathLike, out: str | os.PathLike) -> Path | None:
    """Train and validation reward against iteration, from metrics.jsonl, as a PNG."""
    rows = read_metrics(metrics_path)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=110)
    ax = fig.add_subplot()
    train = [(r["iteration"], r["train_reward"]) for r in rows if "train_reward" in r]
    if train:
        ax.plot(*zip(*train), label="train reward", alpha=0.6)
    val = [(r["iteration"], r["val_reward"], r.get("val_reward_ci95", 0.0)) for r in rows if "val_reward" in r]
    if val:
        x, y, e = map(np.asarray, zip(*val))
        ax.errorbar(x, y, yerr=np.nan_to_num(e), marker="o", capsize=3, label="validation reward (95% CI)")
    prior = [(r["iteration"], r["val_prior"]) for r in rows if r.get("val_prior") is not None]
    if prior:
        ax.plot(*zip(*prior), linestyle="--", color="grey", label="one answer for all (validation prior)")
    ax.set_xlabel("iteration")
    ax.set_ylabel("reward")
    ax.set_ylim(-0.05, max([1.05] + [r + 0.05 for _, r in train]))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp.png")
    try:
        fig.savefig(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk leaves no half PNG behind
        raise
    os.replace(tmp, out)  # a reader never sees half a PNG
    return out


class Plot(Callback):
    """Draws `run_dir/rewards.png` from metrics.jsonl when training ends (and every `every` iterations)."""

    def __init__(self, run_dir: str | os.PathLike, every: int | None = None):
        self.run_dir, self.every = Path(run_dir), every

    def on_iteration_end(self, metrics: dict) -> bool:
        if self.every and metrics["iteration"] % self.every == 0:
            self.draw()
        return True

    def on_training_end(self, error: BaseException | None = None) -> None:
        self.draw()

    def draw(self) -> Path | None:
        return plot_metrics(self.run_dir / "metrics.jsonl", self.run_dir / "rewards.png")


# -- the terminal ---------------------------------------------------------------------------------


def _fmt_eval(metrics: dict) -> str:
    text = (f"{metrics['val_reward']:.3f} ± {metrics['val_reward_ci95']:.3f} "
            f"(accuracy {metrics['val_accuracy']:.3f}, {metrics['val_episodes']} episodes")  # fmt: skip
    if metrics.get("val_prior") is not None:
        text += (f"; one answer for all ({metrics['val_prior_answer']!r}) scores {metrics['val_prior']:.3f}, lift "
                 f"{metrics['val_lift']:+.3f} [{metrics['val_lift_lo']:+.2f}, {metrics['val_lift_hi']:+.2f}]")  # fmt: skip
    if "val_distinct_answers" in metrics:
        text += f"; {metrics['val_distinct_answers']} answers, entropy {metrics['val_answer_entropy']:.2f} bits"
    return text + ")"


class ProgressBar(Callback):
    """A tqdm bar over the `learn` call's iterations, with train and last validation reward."""

    def __init__(self, desc: str = "REINFORCE"):
        self.desc = desc
        self.bar = None
        self.postfix: dict[str, str] = {}

    def on_training_start(self, agent: Any, metrics: dict) -> None:
        super().on_training_start(agent, metrics)
        from tqdm.auto import tqdm

        self.bar = tqdm(total=agent.end_iteration - agent.iteration, desc=self.desc, unit="it", dynamic_ncols=True)
        if "val_reward" in metrics:
            self.bar.write(f"validation reward before iteration {metrics['iteration']}: {_fmt_eval(metrics)}")

    def on_iteration_end(self, metrics: dict) -> bool:
        self.postfix["train"] = f"{metrics['train_reward']:.2f}"
        if "val_reward" in metrics:
            self.postfix["val"] = f"{metrics['val_reward']:.2f}"
            if metrics.get("val_lift") is not None:
                self.postfix["lift"] = f"{metrics['val_lift']:+.2f}"
        self.bar.set_postfix(self.postfix, refresh=False)
        self.bar.update(1)
        return True

    def on_training_end(self, error: BaseException | None = None) -> None:
        if self.bar is not None:
            self.bar.close()


class EarlyStopping(Callback):
    """Stops training when `metric` reaches `threshold`, or after `patience` evaluations without a
    new best (improvement by more than `min_delta`). Rows without the metric are ignored."""

    def __init__(self, threshold: float | None = None, patience: int | None = None, metric: str = "val_reward", min_delta: float = 0.0):
        if threshold is None and patience is None:
            raise ValueError("EarlyStopping needs a threshold, a patience, or both")
        if patience is not None and patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        self.threshold, self.patience, self.metric, self.min_delta = threshold, patience, metric, min_delta
        self.best = -math.inf
        self.waited = 0
        self.reason: str | None = None

    def on_iteration_end(self, metrics: dict) -> bool:
        if self.metric not in metrics:
            return True
        value = float(metrics[self.metric])
        if self.threshold is not None and value >= self.threshold:
            self.reason = f"{self.metric} {value:.3f} reached {self.threshold}"
        elif value > self.best + self.min_delta:
            self.best, self.waited = value, 0
        else:
            self.waited += 1
            if self.patience is not None and self.waited >= self.patience:
                self.reason = f"{self.metric} did not improve on {self.best:.3f} for {self.waited} evaluations"
        if self.reason:
            print(f"early stopping at iteration {metrics['iteration']}: {self.reason}", file=sys.stderr, flush=True)
            return False
        return True


# -- experiment tracking --------------------------------------------------------------------------


class ReportTo(Callback):
    """Sends every metrics row to TensorBoard, Weights & Biases and/or Trackio.

    The scalars are those of metrics.jsonl, at step = iteration; the sample completion goes as
    text; the run's settings (`config`, else `run_dir/config.json` as `textgym train` writes it,
    else the agent's config) go along once. TensorBoard writes event files under
    `run_dir/tensorboard` (view them with `tensorboard --logdir runs`); wandb and trackio log to
    their own project ("textgym"). A backend that is asked for but not installed raises here,
    before any work.
    """

    def __init__(self, backends: Sequence[str], run_dir: str | os.PathLike, config: dict | None = None, project: str = "textgym"):
        self.backends = [b for b in dict.fromkeys(backends) if b]  # "none" and duplicates dropped
        self.backends = [b for b in self.backends if b != "none"]
        for b in self.backends:
            if b not in REPORT_TO:
                raise ValueError(f"unknown report_to backend {b!r}; choose from {', '.join(REPORT_TO)}")
            module = "tensorboard" if b == "tensorboard" else b
            if importlib.util.find_spec(module) is None:
                extra = " (or: pip install 'textgym[tensorboard]')" if b == "tensorboard" else ""
                raise ModuleNotFoundError(f"report_to={b!r} needs the {module} package: pip install {module}{extra}")
        self.run_dir, self.config, self.project = Path(run_dir), config, project
        self.writers: dict[str, Any] = {}

    def on_training_start(self, agent: Any, metrics: dict) -> None:
        super().on_training_start(agent, metrics)
        name = self.run_dir.name
        if self.config is None:
            recorded = self.run_dir / "config.json"
            self.config = json.loads(recorded.read_text()) if recorded.exists() else dataclasses.asdict(agent.config)
        for b in self.backends:
            if b == "tensorboard":
                from torch.utils.tensorboard import SummaryWriter

                writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"), purge_step=agent.iteration + 1 if agent.iteration else None)
                if agent.iteration == 0:
                    writer.add_text("config", "```\n" + json.dumps(self.config, indent=2, default=str) + "\n```", 0)
                self.writers[b] = writer
            else:
                module = importlib.import_module(b)
                kwargs = {"dir": str(self.run_dir)} if b == "wandb" else {}
                module.init(project=self.project, name=name, config=self.config, **kwargs)
                self.writers[b] = module
        if len(metrics) > 1:
            self._log(metrics)

    def on_iteration_end(self, metrics: dict) -> bool:
        self._log(metrics)
        return True

    def _log(self, metrics: dict) -> None:
        step = int(metrics["iteration"])
        scalars = {k: float(v) for k, v in metrics.items()
                   if k != "iteration" and isinstance(v, (int, float)) and not isinstance(v, bool)}  # fmt: skip
        text = metrics.get("sample_completion")
        for b, w in self.writers.items():
            if b == "tensorboard":
                for k, v in scalars.items():
                    w.add_scalar(k, v, step)
                if text is not None:
                    w.add_text("sample_completion", f"```\n{text}\n```", step)
                w.flush()
            else:
                row: dict[str, Any] = dict(scalars)
                if text is not None:
                    row["sample_completion"] = w.Table(columns=["iteration", "completion"], data=[[step, text]])
                w.log(row, step=step)

    def on_training_end(self, error: BaseException | None = None) -> None:
        for b, w in self.writers.items():
            if b == "tensorboard":
                w.close()
            else:
                w.finish()
        self.writers = {}


def standard_callbacks(
    config: RunManagementConfig | None = None, eval_env: Any = None, log_dir: str | os.PathLike | None = None
) -> list[Callback]:
    """The run management `config` asks for, in the order it must run.

    Validation on `eval_env` (when given); the collapse warning; with `log_dir`: metrics.jsonl, trackers (`report_to`), a
    checkpoint every `save_every` iterations and at the end, and rewards.png (redrawn at every
    checkpoint and at the end); a progress bar; early stopping.
    """
    config = config or RunManagementConfig()
    if config.report_to and log_dir is None:
        raise ValueError("report_to needs a run directory (log_dir / --out) for the trackers' files")
    callbacks: list[Callback] = []
    if eval_env is not None:
        callbacks.append(Evaluation(eval_env, every=config.eval_every, episodes=config.eval_episodes))
    callbacks.append(AnswerCollapse())  # before the writer, so the row records it
    if log_dir is not None:
        callbacks.append(MetricsWriter(log_dir))
        if config.report_to:
            callbacks.append(ReportTo(config.report_to, log_dir))
    if config.progress_bar:
        callbacks.append(ProgressBar())
    if log_dir is not None:
        callbacks += [Checkpoint(log_dir, every=config.save_every), Plot(log_dir, every=config.save_every)]
    if config.early_stop_reward is not None or config.early_stop_patience is not None:
        callbacks.append(EarlyStopping(threshold=config.early_stop_reward, patience=config.early_stop_patience))
    return callbacks


# -- signals --------------------------------------------------------------------------------------


class TrainingInterrupted(KeyboardInterrupt):
    """`learn` stopped at an iteration boundary because of SIGINT or SIGTERM (`signum`); the
    callbacks ended the run normally (a checkpoint callback saved). A shell reports such an exit as
    128 + signum: 130 for SIGINT, 143 for SIGTERM."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


class stop_on_signals:
    """While active (main thread only), the first SIGINT/SIGTERM sets `signum` and lets the work in
    progress finish; a second one raises KeyboardInterrupt at once. The previous handlers (including
    SIG_IGN, which background jobs inherit for SIGINT) are restored on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, message: str = "stopping after this iteration (checkpoint); send the signal again to abort now"):
        self.message = message
        self.signum: int | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> "stop_on_signals":
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self.previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: aborting without a checkpoint")
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: {self.message}", file=sys.stderr, flush=True)

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        self.previous = {}
