"""`textgym eval`: pass@k, maj@k, mean@k and greedy accuracy of a model, every sample on disk.

    textgym eval --task reasoning_gym:chain_sum --task-kwargs '{"size": 500}' --samples 8 --problems 64
    textgym eval --model runs/addition-20261201-120000 --task addition      # a `textgym train` run
    textgym eval --model tiny --task copy,sort --samples 4 --out runs/eval-toys --resume

`bench` compares kinds of agent (random, SB3, LM) on mean reward; `eval` measures one language
model the way the field reports it: n samples per problem, pass@k, maj@k and mean@k over those
samples, and greedy decoding, on the problems of one split (`test` by default: held out from
training). It takes a base model, a `textgym train` run directory (its `latest` checkpoint) or a
checkpoint, or any model `LMPolicy.from_pretrained` takes, on built-in, `reasoning_gym:<name>`,
`file:<path>` and `hf:<name>` tasks, single- and multi-turn. Its settings resolve as train's and
bench's do (`agents.runs`: a model's preset or a run's recorded settings, the task's recommended
budget, the flags); the statistics themselves are `agents.statistics`.

Metrics, per problem with n samples of which c are correct (the verifier's `answer` component, or
the reward, is 1), then averaged over the P problems:
- pass@k: the chance that at least one of k samples is correct, by the unbiased estimator of
  Chen et al. (2021), 1 - C(n-c, k) / C(n, k), computed as a product (no big binomials);
- maj@k: whether the answer most of the first k samples give is correct. The answer is what the
  task's verifier reads (`extract_answer`); numbers vote by value ("7.0" with "7"); a tie goes to
  the answer given first; samples without an answer do not vote;
- mean@k: the mean reward of the samples (k = n: all of them);
- greedy: the accuracy of one argmax decoding per problem;
- prior: what always giving the commonest reference answer of the evaluated problems scores, by
  pass@1's rule (the answer, e.g. "Yes", is named beside it). That one answer, in the task's format,
  is scored by the verifier on every problem (one call each), so numeric equivalence and partial
  credit count as they do for the model (`agents.answers`); prior_reward is its mean reward. None
  (—) where the problems have no reference answers, and for multi-turn tasks;
- lift: pass@1 - prior, per problem (the constant answer solves a problem or not), averaged: what
  the model scores above answering every problem alike;
- answers: how many different answers the samples give (same answer by `vote_key`; samples without
  an answer are not counted), over all samples and the mean per problem; answer entropy: their
  entropy in bits, over all samples and the mean per problem. A model that says "Yes" to every
  problem has 1 answer and entropy 0 while its pass@1 is the prior.
Confidence intervals (95%) are over problems, not samples: a percentile bootstrap that resamples
the P problems (1,000 resamples, seeded by --seed; every metric of a task from the same
resamples). A metric that is the same on every problem gets a zero-width interval. The per-problem
table gives each problem's success rate with a Wilson interval over its n samples.

Efficiency: a batch is `batch_size` episodes: groups of g samples of one problem (g the largest
divisor of n that fits), all through one `TextGenVectorEnv(group_size=g)` rollout, so P problems x
n samples cost about P*n / batch_size batched rollouts. Every batch has its own sampling seed
(from --seed and its number), so the same configuration gives the same samples, resumed or not.

Files in --out: samples.jsonl (a config line, then one line per sample, written and flushed after
every batch, so a killed evaluation loses at most the batch it was in), summary.json, tasks.csv,
problems.csv. `--resume` continues in --out: batches already written are skipped, and a file
written under another configuration (model, task, samples, k, seed, sampling, ...) is refused
with the settings that differ. Without --resume an existing samples.jsonl is never overwritten.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence

import numpy as np

from agents.answers import Prior, constant_answer_prior
from agents.checkpoints import resolve_checkpoint
from agents.runs import (
    ENV_EXCLUDED, SAMPLING, Command, RunConfig, SamplingConfig, Section, jsonable, load_policy, make_tasks,
)
from agents.statistics import (  # noqa: F401 (pass_at_k ... wilson_interval: re-exported, where they were)
    BOOTSTRAP_RESAMPLES, answer_entropy, bootstrap_intervals, distinct_answers, majority_vote, means_with_intervals,
    pass_at_k, problem_statistics, wilson_interval,
)
from textgym.config import EnvConfig, check_choices, setting
from textgym.rewards.answers import extract_answer, vote_key
from textgym.tasks import Task, make_task

__all__ = [
    "EvalConfig", "EvalResult", "evaluate_policy", "load_policy", "resolve_checkpoint", "extract_answer", "vote_key",
    "pass_at_k", "majority_vote", "wilson_interval", "bootstrap_intervals", "read_samples", "summarize_samples",
    "fingerprint", "format_table", "resolve_settings", "add_arguments", "run", "main", "SAMPLES_FILE",
]

SAMPLES_FILE = "samples.jsonl"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class EvalConfig:
    """What an evaluation measures and where it writes; the model and env settings are separate."""

    split: Literal["train", "validation", "test"] = setting("test", "the split whose problems are evaluated (test: held out from training)")
    problems: int | None = setting(None, "evaluate problems 0..P-1 of the split (None: the whole split; an unbounded split needs a number)")
    samples: int = setting(8, "sampled completions per problem, n (0: greedy only)")
    k: tuple[int, ...] | None = setting(None, "the k of pass@k and maj@k, each <= --samples, e.g. --k 1 8 (None: 1 and --samples)")
    greedy: bool = setting(True, "also decode every problem once greedily (the greedy column)")
    batch_size: int = setting(64, "episodes per batched rollout")
    seed: int = setting(0, "seed of the samples (each batch's sampling seed derives from it) and of the bootstrap")
    out: str | None = setting(None, "output directory (None: runs/eval-<date>-<time>)")
    resume: bool = setting(False, "continue the evaluation in --out, keeping every sample written (fresh if none is)")
    progress_bar: bool = setting(True, "show a progress bar over the batches")

    def __post_init__(self) -> None:
        check_choices(self)
        for name, minimum in (("samples", 0), ("batch_size", 1), ("problems", 1)):
            value = getattr(self, name)
            if name == "problems" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
        if self.samples == 0 and not self.greedy:
            raise ValueError("samples=0 and greedy=False evaluate nothing: ask for samples, or greedy decoding")
        if self.k is not None:
            ks = _parse_ks(self.k)
            object.__setattr__(self, "k", ks)
            too_big = [k for k in ks if k > self.samples]
            if too_big:
                raise ValueError(
                    f"k={too_big[0]} is larger than the {self.samples} samples per problem (--samples): pass@k and "
                    f"maj@k need at least k samples of each problem; raise --samples to {max(too_big)} or drop k={too_big[0]}"
                )

    @property
    def ks(self) -> tuple[int, ...]:
        """The k values reported (1 and n by default; none when only greedy decoding is asked for)."""
        if self.k is not None:
            return self.k
        return tuple(sorted({1, self.samples})) if self.samples else ()


def _parse_ks(value: Any) -> tuple[int, ...]:
    items = [value] if isinstance(value, (int, str)) else list(value)
    ks = []
    for item in items:
        for part in str(item).replace(",", " ").split():
            try:
                k = int(part)
            except ValueError:
                raise ValueError(f"k must be positive integers such as 1 8, got {part!r}") from None
            if k < 1:
                raise ValueError(f"k must be positive integers, got {k}")
            ks.append(k)
    if not ks:
        raise ValueError("k is empty; give at least one value, e.g. --k 1")
    return tuple(sorted(set(ks)))


# -- running the samples ---------------------------------------------------------------------------


def _group_size(per_problem: int, batch_size: int) -> int:
    """The largest divisor of `per_problem` that fits in a batch: one problem per group."""
    return max(d for d in range(1, min(per_problem, batch_size) + 1) if per_problem % d == 0)


def _plan(problems: Sequence[int], per_problem: int, batch_size: int) -> tuple[int, list[list[tuple[int, int]]]]:
    """(group size g, batches of groups (problem, first sample)): problem-major, g samples a group."""
    g = _group_size(per_problem, batch_size)
    groups = [(p, s) for p in problems for s in range(0, per_problem, g)]
    per_batch = max(1, batch_size // g)
    return g, [groups[i : i + per_batch] for i in range(0, len(groups), per_batch)]


def _batch_seed(seed: int, mode: str, batch: int) -> int:
    return int(np.random.SeedSequence([int(seed), 0 if mode == "sample" else 1, int(batch)]).generate_state(1)[0])


def _sample_key(record: Mapping[str, Any]) -> tuple:
    return record["task"], record["mode"], int(record["problem"]), int(record["sample"])


def _record(task_name: str, task: Task, mode: str, problem: int, sample: int, seed: int, batch: int, episode: Any,
            tokenizer: Any, reward: Any, batch_s: float) -> dict[str, Any]:  # fmt: skip
    info = episode.info
    completion = str(info.get("completion", ""))
    record = {
        "task": task_name, "mode": mode, "problem": problem, "sample": sample, "seed": seed, "batch": batch,
        "prompt": tokenizer.decode(episode.prompt_ids.tolist()), "reference": info.get("answer"),
        "completion": completion, "extracted": extract_answer(task, completion, reward=reward, info=info),
        "reward": episode.reward, "reward_components": info.get("reward_components") or {},
        "reward_error": info.get("reward_error"), "correct": episode.success, "ended_by": info.get("ended_by"),
        "tokens": int(len(episode.action_positions)), "prompt_tokens": int(episode.prompt_len),
        "completion_ids": episode.actions.tolist(), "batch_s": round(batch_s, 4),
    }  # fmt: skip
    for key in ("turns", "turn_rewards", "conversation"):
        if key in info:
            record[key] = info[key]
    return record


@dataclass
class _TaskRun:
    """One task's problems and batches, as planned from the configuration alone."""

    name: str
    task: Task
    problems: list[int]
    modes: list[tuple[str, int, list[list[tuple[int, int]]]]]  # (mode, group size, batches)

    @property
    def episodes(self) -> int:
        return sum(g * len(b) for _, g, batches in self.modes for b in batches)


def _problems_of(task: Task, split: str, problems: int | None) -> tuple[list[int], str | None]:
    """Problem indices 0..P-1 of the split, and a note when fewer than asked exist."""
    size = task.num_examples(split)
    if size == 0:
        raise ValueError(f"task {task.name!r} has no problems in split {split!r}; evaluate another split (--split)")
    if problems is None:
        if size is None:
            raise ValueError(f"the {split} split of task {task.name!r} is unbounded (problems are generated); "
                             "say how many to evaluate with --problems")  # fmt: skip
        return list(range(size)), None
    if size is not None and problems > size:
        return list(range(size)), f"{task.name}: the {split} split has {size} problems; evaluating all {size} (asked for {problems})"
    return list(range(problems)), None


def _plan_task(name: str, task: Task, config: EvalConfig) -> tuple[_TaskRun, str | None]:
    problems, note = _problems_of(task, config.split, config.problems)
    modes = []
    if config.samples:
        modes.append(("sample", *_plan(problems, config.samples, config.batch_size)))
    if config.greedy:
        modes.append(("greedy", *_plan(problems, 1, config.batch_size)))
    return _TaskRun(name, task, problems, modes), note


def _run_batches(policy: Any, run: _TaskRun, env: EnvConfig, config: EvalConfig, done: set, write: Callable,
                 bar: Any = None) -> None:  # fmt: skip
    """Roll out every batch of `run` that has a sample not in `done`, writing its missing samples."""
    from agents.rollouts import collect_episodes
    from textgym.vector import TextGenVectorEnv

    envs: dict[tuple[int, int], Any] = {}
    env = env.replace(task=run.task, task_kwargs={}, split=config.split, tokenizer=policy.tokenizer)
    for mode, g, batches in run.modes:
        for b, groups in enumerate(batches):
            keys = [(run.name, mode, p, s0 + j) for p, s0 in groups for j in range(g)]
            missing = [k not in done for k in keys]
            if not any(missing):
                if bar is not None:
                    bar.update(len(keys))
                continue
            n = len(groups) * g
            if (n, g) not in envs:
                envs[(n, g)] = TextGenVectorEnv(num_envs=n, group_size=g, config=env)
            seed = _batch_seed(config.seed, mode, b)
            policy.seed(seed)
            if hasattr(policy, "reset_cache"):
                policy.reset_cache()
            t0 = time.perf_counter()
            index = np.repeat([p for p, _ in groups], g)  # each group its problem (a group takes its first slot's)
            episodes, _ = collect_episodes(policy, envs[(n, g)], seed=seed, greedy=mode == "greedy", options={"index": index})
            elapsed = time.perf_counter() - t0
            records = []
            for key, episode, new in zip(keys, episodes, missing):
                if int(episode.info.get("index", key[2])) != key[2]:
                    raise RuntimeError(f"slot {episode.slot} ran problem {episode.info.get('index')}, not {key[2]}")
                if new:
                    records.append(_record(run.name, run.task, mode, key[2], key[3], seed, b, episode,
                                           envs[(n, g)].tokenizer, env.reward, elapsed))  # fmt: skip
            write(records)
            if bar is not None:
                bar.update(len(keys))


# -- tables ----------------------------------------------------------------------------------------


def _metric_names(config: EvalConfig) -> list[str]:
    names = [f"pass@{k}" for k in config.ks] + [f"maj@{k}" for k in config.ks if k > 1]
    if config.samples:
        names.append(f"mean@{config.samples}")
    if config.greedy:
        names.append("greedy")
    return names


def summarize_samples(records: Iterable[Mapping[str, Any]], config: EvalConfig, tasks: Sequence[str],
                      priors: Mapping[str, Prior | None] | None = None) -> tuple[list[dict], list[dict]]:  # fmt: skip
    """(one row per task, one row per problem) from the sample records, in task and problem order.

    `priors` holds each task's constant-answer prior on these problems (`constant_answer_prior`;
    a task without one has no prior or lift). Depends only on the records, the configuration and
    the priors, so a resumed evaluation and an uninterrupted one with the same seed give the same
    tables.
    """
    priors = priors or {}
    by_problem: dict[tuple[str, int], dict[str, list]] = {}
    for r in records:
        slot = by_problem.setdefault((r["task"], int(r["problem"])), {"sample": [], "greedy": []})
        slot[r["mode"]].append(r)
    task_rows, problem_rows = [], []
    for task in tasks:
        prior = priors.get(task)
        keys = sorted(p for t, p in by_problem if t == task)
        rows = []
        every_answer: list[str | None] = []
        for p in keys:
            samples = sorted(by_problem[(task, p)]["sample"], key=lambda r: int(r["sample"]))
            greedy = by_problem[(task, p)]["greedy"]
            first = (samples or greedy)[0]
            row: dict[str, Any] = {"task": task, "problem": p, "reference": first.get("reference"), "prompt": first.get("prompt")}
            if config.samples:
                if len(samples) != config.samples:
                    raise ValueError(f"{task} problem {p} has {len(samples)} samples, expected {config.samples}: "
                                     "the file is incomplete")  # fmt: skip
                answers = [r["extracted"] for r in samples]
                every_answer += answers
                row.update(problem_statistics([bool(r["correct"]) for r in samples], [r["reward"] for r in samples],
                                              answers, config.ks))  # fmt: skip
            if prior is not None:
                row["prior"], row["prior_reward"] = prior.success[p], prior.reward[p]
                if config.samples:
                    row["lift"] = row["success_rate"] - row["prior"]  # pass@1 of the problem - the constant answer's
            if config.greedy:
                if len(greedy) != 1:
                    raise ValueError(f"{task} problem {p} has {len(greedy)} greedy decodings, expected 1")
                row["greedy"] = float(bool(greedy[0]["correct"]))
                row["greedy_answer"] = greedy[0]["extracted"]
            every = samples + greedy
            row["tokens"] = float(np.mean([r["tokens"] for r in every]))
            row["truncated"] = float(np.mean([r["ended_by"] == "budget" for r in every]))
            row["reward_errors"] = sum(r.get("reward_error") is not None for r in every)
            rows.append(row)
        problem_rows += rows
        if not rows:
            continue
        names = _metric_names(config) + _prior_names(config, prior)
        summary: dict[str, Any] = {"task": task, "problems": len(rows), "samples": config.samples}
        summary.update(means_with_intervals({m: [r[m] for r in rows] for m in names}, seed=config.seed))
        summary["prior_answer"] = None if prior is None else prior.answer
        summary["prior_reward"] = None if prior is None else float(np.mean([r["prior_reward"] for r in rows]))
        summary.setdefault("prior", None)
        summary.setdefault("lift", None)
        if config.samples:
            summary["distinct_answers"] = distinct_answers(every_answer)
            summary["distinct_answers_per_problem"] = float(np.mean([r["distinct_answers"] for r in rows]))
            summary["answer_entropy"] = answer_entropy(every_answer)
            summary["answer_entropy_per_problem"] = float(np.mean([r["answer_entropy"] for r in rows]))
        summary["tokens"] = float(np.mean([r["tokens"] for r in rows]))
        summary["truncated"] = float(np.mean([r["truncated"] for r in rows]))
        summary["reward_errors"] = int(sum(r["reward_errors"] for r in rows))
        task_rows.append(summary)
    return task_rows, problem_rows


def _prior_names(config: EvalConfig, prior: Prior | None) -> list[str]:
    """The prior's columns with intervals: the prior, and the lift over it where there are samples."""
    if prior is None:
        return []
    return ["prior", "lift"] if config.samples else ["prior"]


def _short(text: Any, width: int = 12) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def format_table(task_rows: Sequence[Mapping[str, Any]], config: EvalConfig) -> str:
    """The per-task table: every metric with its 95% bootstrap interval over problems, the prior (and
    its answer), the lift over it, and the answers' diversity (over all samples / mean per problem)."""
    names = _metric_names(config)
    diversity = ["answers all / problem", "answer entropy all / problem"] if config.samples else []
    head = ["task", "problems", *names, "prior (answer)", *(["lift"] if config.samples else []), *diversity, "tokens",
            "truncated"]  # fmt: skip
    body = []
    for r in task_rows:
        cells = [r["task"], str(r["problems"]), *(f"{r[m]:.3f} [{r[m + '_lo']:.2f}, {r[m + '_hi']:.2f}]" for m in names)]
        cells.append("—" if r.get("prior") is None else f"{r['prior']:.3f} ({_short(r['prior_answer'])})")
        if config.samples:
            cells.append("—" if r.get("lift") is None else f"{r['lift']:+.3f} [{r['lift_lo']:+.2f}, {r['lift_hi']:+.2f}]")
            cells.append(f"{r['distinct_answers']} / {r['distinct_answers_per_problem']:.1f}")
            cells.append(f"{r['answer_entropy']:.2f} / {r['answer_entropy_per_problem']:.2f}")
        body.append([*cells, f"{r['tokens']:.1f}", f"{r['truncated']:.2f}"])
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, body)])


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


# -- the samples file ------------------------------------------------------------------------------


def read_samples(path: str | os.PathLike, repair: bool = False) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """(the config line, the sample records) of a samples.jsonl.

    A last line cut short (the process was killed while writing it) is dropped, and with
    `repair` cut from the file, so appending goes on from a whole line; a bad line anywhere else is
    an error that names it (nothing is deleted).
    """
    path = Path(path)
    if not path.exists():
        return None, []
    data = path.read_bytes()
    lines = data.split(b"\n")
    complete = lines[:-1]  # what follows the last newline was not finished
    header, records = None, []
    for number, line in enumerate(complete, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} line {number} is not valid JSON ({e.msg}); the file is damaged: "
                             "repair or remove that line, or evaluate into another --out") from None  # fmt: skip
        if number == 1 or item.get("type") == "config":
            if item.get("type") != "config" or number != 1:
                raise ValueError(f"{path} line {number}: the first line of a samples file is its config, and only it")
            header = item
        else:
            records.append(item)
    if header is None and records:
        raise ValueError(f"{path} has no config line; it is not a textgym eval samples file")
    if lines[-1] and repair:
        with open(path, "r+b") as f:
            f.truncate(len(data) - len(lines[-1]))
    return header, records


def _differences(recorded: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """The settings that differ. A setting the file does not name (one added to textgym after the file
    was written) that is at its default now is not a difference: the samples were drawn as it says."""
    defaults = _setting_defaults()
    keys = list(dict.fromkeys([*recorded, *now]))
    return [f"{k}: {json.dumps(recorded.get(k))} in the file, {json.dumps(now.get(k))} now"
            for k in keys if recorded.get(k) != now.get(k)
            and not (k not in recorded and k in defaults and now.get(k) == defaults[k])]  # fmt: skip


def _setting_defaults() -> dict[str, Any]:
    """Every EnvConfig and EvalConfig setting's default, as the fingerprint writes it."""
    out = {}
    for cls in (EnvConfig, EvalConfig):
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                out[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                out[f.name] = f.default_factory()
    return jsonable(out)


class _SampleWriter:
    """Appends records to samples.jsonl, flushed and synced after every batch."""

    def __init__(self, path: Path):
        self.path = path
        self.file = open(path, "a", encoding="utf-8")

    def __call__(self, records: Sequence[Mapping[str, Any]]) -> None:
        for r in records:
            self.file.write(json.dumps(r, ensure_ascii=False) + "\n")
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()


# -- the whole evaluation --------------------------------------------------------------------------


@dataclass
class EvalResult:
    """An evaluation's tables (`summarize_samples`) and its records."""

    tasks: list[dict[str, Any]]
    problems: list[dict[str, Any]]
    samples: list[dict[str, Any]]
    config: EvalConfig
    header: dict[str, Any]  # the settings recorded in (and checked against) samples.jsonl
    paths: dict[str, Path] = dataclasses.field(default_factory=dict)

    def table(self) -> str:
        return format_table(self.tasks, self.config)


def fingerprint(config: EvalConfig, env: EnvConfig, tasks: Sequence[str], task_kwargs: Mapping[str, Mapping],
                model: Mapping[str, Any], sampling: Mapping[str, Any]) -> dict[str, Any]:  # fmt: skip
    """Every setting that decides which samples an evaluation draws (the resume check compares it)."""
    env_settings = {f.name: getattr(env, f.name) for f in dataclasses.fields(EnvConfig)
                    if f.name not in ("task", "task_kwargs", "tokenizer", *ENV_EXCLUDED)}  # fmt: skip
    evaluation = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("out", "resume", "progress_bar")}
    evaluation["k"] = list(config.ks)
    return jsonable({**model, "tasks": list(tasks), "task_kwargs": {t: dict(task_kwargs.get(t, {})) for t in tasks},
                      **evaluation, **dict(sampling), **env_settings})  # fmt: skip


def evaluate_policy(
    policy: Any,
    tasks: str | Task | Sequence[str | Task | tuple[str, Task]],
    config: EvalConfig | None = None,
    env: EnvConfig | None = None,
    *,
    task_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    model: Mapping[str, Any] | None = None,
    out: str | os.PathLike | None = None,
    notes: list[str] | None = None,
) -> EvalResult:
    """Evaluate `policy` on `tasks`: pass@k, maj@k, mean@k and greedy accuracy, per task and problem.

    `tasks` are names (built with `task_kwargs[name]`), Task objects, or (name, Task) pairs.

    `env` holds the environment's settings (budget, chat template, system prompt, reward...; its
    task and split are ignored: `tasks` and `config.split` say them). With `out`, every sample
    goes to `out/samples.jsonl` as its batch finishes, and the tables to summary.json, tasks.csv
    and problems.csv; `config.resume` continues such a file (refusing one from another
    configuration). `model` describes the policy for that check (`load_policy` gives it).
    """
    config = config or EvalConfig()
    env = env or EnvConfig()
    items = [tasks] if isinstance(tasks, (str, Task)) else list(tasks)
    task_kwargs = dict(task_kwargs or {})
    built: list[tuple[str, Task]] = []
    for item in items:
        if isinstance(item, tuple):
            built.append((str(item[0]), make_task(item[1])))
        elif isinstance(item, str):
            built.append((item, make_task(item, **dict(task_kwargs.get(item, {})))))
        else:
            built.append((item.name, make_task(item)))
    names = [n for n, _ in built]
    if len(set(names)) != len(names):
        raise ValueError(f"a task is named twice in {names}; evaluate each once")
    sampling = {k: getattr(policy, k, None) for k in ("temperature", "top_k", "top_p")}
    header = fingerprint(config, env, names, task_kwargs, model or {"model": type(policy).__name__}, sampling)
    notes = notes if notes is not None else []
    runs = []
    for name, task in built:
        run_, note = _plan_task(name, task, config)
        runs.append(run_)
        if note:
            notes.append(note)

    records: list[dict[str, Any]] = []
    paths: dict[str, Path] = {}
    sink = None
    if out is not None:
        out = Path(out)
        paths = {"samples": out / SAMPLES_FILE, "summary": out / "summary.json", "tasks": out / "tasks.csv",
                 "problems": out / "problems.csv"}  # fmt: skip
        recorded, records = _open_samples(paths["samples"], header, config.resume)
        sink = _SampleWriter(paths["samples"])
        if recorded is None:
            sink([{"type": "config", "version": FORMAT_VERSION, "config": header}])

    def write(batch: Sequence[dict[str, Any]]) -> None:
        if sink is not None:
            sink(batch)  # on disk before anything else happens
        records.extend(batch)

    done = {_sample_key(r) for r in records}
    total = sum(r.episodes for r in runs)
    bar = None
    if config.progress_bar:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="eval", unit="sample", dynamic_ncols=True, file=sys.stderr)
    generator = getattr(policy, "generator", None)
    state = generator.get_state() if generator is not None else None  # training that evaluates is not perturbed
    t0 = time.perf_counter()
    try:
        for run_ in runs:
            if bar is not None:
                bar.set_postfix_str(run_.name)
            _run_batches(policy, run_, env, config, done, write, bar)
    finally:
        if state is not None:
            generator.set_state(state)
        if bar is not None:
            bar.close()
        if sink is not None:
            sink.close()
    elapsed = time.perf_counter() - t0

    priors = {run_.name: _prior(run_, env, config, policy.tokenizer) for run_ in runs}
    task_rows, problem_rows = summarize_samples(records, config, names, priors)
    result = EvalResult(task_rows, problem_rows, records, config, header, paths)
    if out is not None:
        summary = {"config": header, "tasks": task_rows, "notes": notes,
                   "timing": {"seconds_this_run": elapsed, "samples": len(records)}}  # fmt: skip
        paths["summary"].write_text(json.dumps(jsonable(summary), indent=2) + "\n")
        _write_csv(paths["tasks"], task_rows)
        _write_csv(paths["problems"], problem_rows)
    return result


def _prior(run: _TaskRun, env: EnvConfig, config: EvalConfig, tokenizer: Any) -> Prior | None:
    """The constant-answer prior of a task on its evaluated problems, scored by the env's verifier."""
    from textgym.vector import TextGenVectorEnv

    envs = TextGenVectorEnv(num_envs=1, config=env.replace(task=run.task, task_kwargs={}, split=config.split,
                                                           tokenizer=tokenizer))  # fmt: skip
    return constant_answer_prior(envs.core, run.problems)


def _open_samples(path: Path, header: dict[str, Any], resume: bool) -> tuple[dict[str, Any] | None, list[dict]]:
    """The records already in `path`, after checking they belong to this configuration."""
    if path.exists() and path.stat().st_size and not resume:
        raise FileExistsError(
            f"{path} already holds an evaluation; pass --resume to continue it, or choose another --out "
            "(nothing is overwritten)"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    recorded, records = read_samples(path, repair=True)
    if recorded is not None:
        if recorded.get("version") != FORMAT_VERSION:
            raise ValueError(f"{path} was written by another version of textgym eval ({recorded.get('version')}); "
                             "evaluate into another --out")  # fmt: skip
        differences = _differences(recorded["config"], header)
        if differences:
            raise ValueError(
                f"{path} was written under another configuration, so its samples cannot be resumed into this one:\n  "
                + "\n  ".join(differences)
                + "\nrun with the settings in the file, or evaluate into another --out"
            )
    return recorded, records


# -- the command -----------------------------------------------------------------------------------

MODEL_SETTINGS = ("model", "preset", "mask_actions", "device", "dtype", "threads")  # RunConfig's that pick and load the model
MODEL_NOTE = "; or a `textgym train` run directory (its latest checkpoint) or checkpoint-NNNNNN directory"


def command() -> Command:
    """eval's settings: the evaluation, the model's part of RunConfig, the env (EvalConfig says the split), sampling."""
    return Command([
        Section(EvalConfig, "the evaluation (agents.evaluation.EvalConfig)"),
        Section(RunConfig, "the model (agents.runs.RunConfig)",
                tuple(f.name for f in dataclasses.fields(RunConfig) if f.name not in MODEL_SETTINGS)),
        Section(EnvConfig, "the environment (textgym.config.EnvConfig)", ENV_EXCLUDED),
        Section(SamplingConfig, "sampling (agents.runs.SamplingConfig)"),
    ], models_from_runs=True)  # fmt: skip


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Every setting of EvalConfig, the model's part of RunConfig, EnvConfig and SamplingConfig as a flag."""
    p.description = __doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    command().add_arguments(p, notes={"model": MODEL_NOTE.lstrip("; "), "task": "several: a,b,c",
                                      "task_kwargs": '; per task: {"a": {...}, "b": {...}}'})  # fmt: skip


def resolve_settings(flags: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """(every setting, where its non-default values came from): defaults, then the model's preset or,
    for a `textgym train` run, the run's own recorded settings, then the flags (`agents.runs.Command`)."""
    return command().resolve(flags)


def run(args: argparse.Namespace) -> int:
    evaluation = command()
    try:
        settings, source = evaluation.resolve(evaluation.flags(args))
        config, run_cfg, env, _ = evaluation.split(settings)
        names, task_kwargs, tasks = make_tasks(env.task, env.task_kwargs, env.reward)  # mistakes fail before the model loads
    except (TypeError, ValueError, LookupError, OSError, ImportError) as e:
        raise SystemExit(f"error: {e}") from None
    out = Path(config.out or Path("runs") / f"eval-{time.strftime('%Y%m%d-%H%M%S')}")
    if (out / SAMPLES_FILE).exists() and not config.resume:
        raise SystemExit(f"error: {out / SAMPLES_FILE} already holds an evaluation; pass --resume to continue it, "
                         "or choose another --out (nothing is overwritten)")  # fmt: skip

    import torch

    if run_cfg.threads:
        torch.set_num_threads(run_cfg.threads)
    sampling = {k: settings[k] for k in SAMPLING}
    print(f"loading {run_cfg.model} ...", flush=True)
    try:
        policy, model = load_policy(run_cfg.model, device=run_cfg.device, dtype=run_cfg.dtype, **sampling)
    except (FileNotFoundError, ValueError, OSError) as e:
        raise SystemExit(f"error: {e}") from None
    if run_cfg.mask_actions:
        from textgym.vector import TextGenVectorEnv

        probe = TextGenVectorEnv(num_envs=1, config=env.replace(task=tasks[0], task_kwargs={}, split=config.split,
                                                                tokenizer=policy.tokenizer))  # fmt: skip
        policy.restrict_actions(probe.action_masks()[0])
    model["mask_actions"] = run_cfg.mask_actions
    model["dtype"], model["device"] = run_cfg.dtype, run_cfg.device
    print(f"settings: {source}, then flags; {config.samples} samples per problem, k = {list(config.ks)}"
          f"{', greedy' if config.greedy else ''}; {config.split} split -> {out}")  # fmt: skip
    notes: list[str] = []
    try:
        result = evaluate_policy(policy, list(zip(names, tasks)), config, env, task_kwargs=task_kwargs, model=model,
                                 out=out, notes=notes)  # fmt: skip
    except (ValueError, FileExistsError) as e:
        raise SystemExit(f"error: {e}") from None
    for note in notes:
        print(f"note: {note}")
    print(format_table(result.tasks, config))
    print(f"\n95% intervals: percentile bootstrap over problems ({BOOTSTRAP_RESAMPLES} resamples, seed {config.seed}); "
          f"mean@{config.samples} is the mean reward")  # fmt: skip
    print("prior: the score of giving every problem the commonest reference answer (named), by the verifier; "
          "lift: pass@1 - prior; answers and their entropy (bits): over all samples / mean per problem")  # fmt: skip
    print("wrote " + ", ".join(str(p) for p in result.paths.values()))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="textgym eval")
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
