"""`textgym eval`: pass@k, maj@k, mean@k and greedy accuracy of a model, every sample on disk.

    textgym eval --task reasoning_gym:chain_sum --task-kwargs '{"size": 500}' --samples 8 --problems 64
    textgym eval --model runs/addition-20261201-120000 --task addition      # a `textgym train` run
    textgym eval --model tiny --task copy,sort --samples 4 --out runs/eval-toys --resume

`bench` compares kinds of agent (random, SB3, LM) on mean reward; `eval` measures one language
model the way the field reports it: n samples per problem, pass@k, maj@k and mean@k over those
samples, and greedy decoding, on the problems of one split (`test` by default: held out from
training). It takes a base model, a `textgym train` run directory (its `latest` checkpoint) or a
checkpoint, or any model `LMPolicy.from_pretrained` takes, on built-in, `reasoning_gym:<name>`,
`file:<path>` and `hf:<name>` tasks, single- and multi-turn.

Metrics, per problem with n samples of which c are correct (the verifier's `answer` component, or
the reward, is 1), then averaged over the P problems:
- pass@k: the chance that at least one of k samples is correct, by the unbiased estimator of
  Chen et al. (2021), 1 - C(n-c, k) / C(n, k), computed as a product (no big binomials);
- maj@k: whether the answer most of the first k samples give is correct. The answer is what the
  task's verifier reads (`extract_answer`); numbers vote by value ("7.0" with "7"); a tie goes to
  the answer given first; samples without an answer do not vote;
- mean@k: the mean reward of the samples (k = n: all of them);
- greedy: the accuracy of one argmax decoding per problem.
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
import math
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence

import numpy as np

from textgym.config import EnvConfig, add_arguments as add_config_arguments, check_choices, given, setting
from textgym.rewards.builtin import (
    boxed_math, contains, exact_match, gsm8k, math_equiv, numeric_match, partial_credit, r1_format, r1_zero,
)
from textgym.rewards.extract import answer_tag, boxed, gsm8k_answer, last_number, parse_number
from textgym.tasks import Task, make_task
from textgym.tasks.base import _ExampleListTask

__all__ = [
    "EvalConfig", "EvalResult", "evaluate_policy", "load_policy", "resolve_checkpoint", "extract_answer", "vote_key",
    "pass_at_k", "majority_vote", "wilson_interval", "bootstrap_intervals", "read_samples", "summarize_samples",
    "fingerprint", "format_table", "resolve_settings", "add_arguments", "run", "main", "SAMPLES_FILE",
]

SAMPLES_FILE = "samples.jsonl"
FORMAT_VERSION = 1
BOOTSTRAP_RESAMPLES = 1000
Z95 = 1.959963984540054


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


# -- the metrics ---------------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k) (Chen et al., 2021).

    C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k/i): a product of c factors in (0, 1], with no
    binomial coefficient that could overflow a float.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def vote_key(answer: str | None) -> str | None:
    """What makes two answers the same vote: a number's value, else the text with spaces collapsed."""
    if answer is None:
        return None
    number = parse_number(answer)
    if number is not None:
        return str(number)
    text = " ".join(answer.split())
    return text or None


def majority_vote(answers: Sequence[str | None]) -> tuple[int | None, str | None]:
    """(index of the first sample giving the most common answer, that answer's vote key).

    Ties go to the answer given first; samples without an answer (None) do not vote; (None, None)
    when no sample gives one.
    """
    keys = [vote_key(a) for a in answers]
    counts = Counter(k for k in keys if k is not None)
    if not counts:
        return None, None
    top = max(counts.values())
    for i, key in enumerate(keys):
        if key is not None and counts[key] == top:
            return i, key
    raise AssertionError("unreachable")


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% by default); (0, 1) when n = 0."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_intervals(
    columns: Mapping[str, Sequence[float]], seed: int, resamples: int = BOOTSTRAP_RESAMPLES
) -> dict[str, tuple[float, float]]:
    """95% percentile-bootstrap intervals of the mean of every column (one value per problem).

    The same resampled problem sets serve every column, so the intervals of a task's metrics are
    paired; the seed makes them reproducible.
    """
    sizes = {len(v) for v in columns.values()}
    if not sizes:
        return {}
    if len(sizes) != 1:
        raise ValueError(f"every column needs one value per problem; got lengths {sorted(sizes)}")
    p = sizes.pop()
    if p == 0:
        return {name: (math.nan, math.nan) for name in columns}
    rows = np.random.default_rng(seed).integers(0, p, size=(resamples, p))
    out = {}
    for name, values in columns.items():
        means = np.asarray(values, dtype=np.float64)[rows].mean(axis=1)
        lo, hi = np.percentile(means, [2.5, 97.5])
        out[name] = (float(lo), float(hi))
    return out


# -- what a completion answers -------------------------------------------------------------------


def _stripped(text: str) -> str | None:
    return text.strip() or None


def _answer_region(text: str) -> str | None:
    tagged = answer_tag(text)
    return tagged if tagged is not None else _stripped(text)


def _numeric(text: str) -> str | None:
    region = answer_tag(text)
    if region is None:
        region = boxed(text)
    return last_number(text if region is None else region)


def _math(text: str) -> str | None:
    region = answer_tag(text)
    if region is not None:
        return boxed(region) or region
    return boxed(text) or last_number(text)


def _gsm8k(text: str) -> str | None:
    found = gsm8k_answer(text)
    return found if found is not None else last_number(_answer_region(text) or "")


def _boxed(text: str) -> str | None:
    return boxed(_answer_region(text) or "")


# Each built-in reward's own reading of a completion, for tasks scored by a reward function.
REWARD_EXTRACTORS: dict[Any, Callable[[str], str | None]] = {
    exact_match: _answer_region, partial_credit: _answer_region, contains: _stripped, numeric_match: _numeric,
    math_equiv: _math, gsm8k: _gsm8k, boxed_math: _boxed, r1_zero: answer_tag, r1_format: answer_tag,
}  # fmt: skip


def _reward_extractor(reward: Any) -> Callable[[str], str | None]:
    from textgym.rewards.core import get_reward

    return REWARD_EXTRACTORS.get(get_reward(reward), _stripped)


def _task_extractor(task: Task) -> Callable[[str], str | None]:
    """How the task's verifier reads an answer out of (the answer region of) a completion."""
    if task.reward_override is not None:
        return _reward_extractor(task.reward_override)
    if isinstance(task, _ExampleListTask):  # tasks from examples and data files: their reward reads it
        return _reward_extractor(task.answer_reward)
    if type(task).score_answer is Task.score_answer or type(task).extract is not Task.extract:
        return task.extract  # the extract / check design of the built-in tasks
    return _stripped  # a verifier of the whole text (reasoning-gym's score_answer reads it stripped)


def extract_answer(task: Task, completion: str, *, reward: Any = None, info: Mapping[str, Any] | None = None) -> str | None:
    """The answer `completion` gives, as the verifier reads it: what maj@k votes on.

    `reward` is the env's reward when it replaces the task's verifier (`EnvConfig.reward`): a
    built-in reward's own extraction is used, otherwise the stripped completion. In r1_zero style
    the answer is read inside the <answer> tags (None without them). In a multi-turn task it is
    read from the policy's last turn (`info["conversation"]`, the episode's final info). Tasks
    whose verifier reads the whole text (reasoning-gym's) vote on the stripped completion.
    """
    if reward is not None:
        return _reward_extractor(reward)(completion)
    if task.multi_turn:
        turns = [span["text"] for span in (info or {}).get("conversation", []) if span.get("role") == "assistant"]
        text = turns[-1] if turns else completion
        return task.extract(text) if type(task).extract is not Task.extract else _stripped(text)
    if task.reward_override is None and task.prompt_style == "r1_zero":
        completion = answer_tag(completion)
        if completion is None:
            return None
    return _task_extractor(task)(completion)


# -- loading the model -----------------------------------------------------------------------------


def resolve_checkpoint(model: str | os.PathLike) -> Path | None:
    """The checkpoint directory `model` names, or None when it is not a `textgym train` run.

    A checkpoint (a directory with agent.pt) is itself; a run directory gives the checkpoint its
    `latest` file names (runs write checkpoint-NNNNNN directories and move `latest` last).
    """
    path = Path(model)
    if not path.is_dir():
        return None
    if (path / "agent.pt").exists():
        return path
    if (path / "latest").exists():
        target = path / (path / "latest").read_text().strip()
        if not (target / "agent.pt").exists():
            raise FileNotFoundError(f"{path / 'latest'} names {target.name}, which holds no agent.pt; the run directory is damaged")
        return target
    if (path / "metrics.jsonl").exists() or any(path.glob("checkpoint-*")):
        raise FileNotFoundError(
            f"{path} is a textgym train run without a finished checkpoint ({path / 'latest'} is missing); "
            "train it further, or evaluate a checkpoint-NNNNNN directory"
        )
    return None


def _run_settings(checkpoint: Path) -> dict[str, Any]:
    """The recorded settings of the run a checkpoint belongs to (config.json, then its resumes)."""
    run_dir = checkpoint.parent
    path = run_dir / "config.json"
    settings = json.loads(path.read_text()) if path.exists() else {}
    resumes = run_dir / "resumes.jsonl"
    for line in resumes.read_text().splitlines() if resumes.exists() else []:
        settings.update(json.loads(line)["overrides"])
    return settings


def load_policy(model: str, device: str = "auto", dtype: str = "auto", policy: str = "hf", **sampling: Any) -> tuple[Any, dict[str, Any]]:
    """(a Policy, what it is) for a model name, a `textgym train` run directory or checkpoint.

    A run's policy keeps the token restriction it was trained with; `sampling` (temperature,
    top_k, top_p) replaces the checkpoint's. `policy` picks the backend that acts ("hf", "vllm";
    `agents.backends.make_policy`). The description names the checkpoint and its iteration, so an
    evaluation of a run that trained further is not mistaken for this one, and a backend other
    than hf (its samples are not the hf policy's).
    """
    checkpoint = resolve_checkpoint(model)
    backend = {} if policy == "hf" else {"policy": policy}
    if checkpoint is None:
        from agents.backends import make_policy
        from agents.policy import LMPolicy

        learner = LMPolicy.from_pretrained(model, device=device, dtype=dtype, **sampling)
        return make_policy(learner, policy, source=model), {"model": str(model), **backend}
    from agents.reinforce import REINFORCE

    agent = REINFORCE.load(checkpoint, device=device, dtype=dtype, policy=policy, **sampling)
    return agent.policy, {"model": str(model), "checkpoint": str(checkpoint.resolve()), "iteration": agent.iteration, **backend}


# -- running the samples ---------------------------------------------------------------------------


class _AssignedProblems:
    """A TextGenVectorEnv whose every reset starts group q on problem `indices[q]` (not a draw).

    `collect_episodes` resets the env itself; this hands it the problems of the batch. A full
    reset starts every slot on the first problem, then each other group is reset on its own.
    """

    def __init__(self, envs: Any, indices: Sequence[int]):
        self.envs, self.indices = envs, list(indices)
        self.num_envs, self.group_size = envs.num_envs, envs.group_size
        if len(self.indices) * self.group_size != self.num_envs:
            raise ValueError(f"{len(self.indices)} problems do not fill {self.num_envs} slots in groups of {self.group_size}")

    @property
    def unwrapped(self) -> "_AssignedProblems":
        return self

    @property
    def autoreset_mode(self) -> Any:
        return self.envs.autoreset_mode

    @autoreset_mode.setter
    def autoreset_mode(self, mode: Any) -> None:
        self.envs.autoreset_mode = mode

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        g = self.group_size
        obs, info = self.envs.reset(seed=seed, options={"index": self.indices[0]})
        for q, index in enumerate(self.indices[1:], 1):
            mask = np.zeros(self.num_envs, dtype=bool)
            mask[q * g : (q + 1) * g] = True
            obs, _ = self.envs.reset(options={"reset_mask": mask, "index": index})
        return obs, info

    def step(self, actions: Any):
        return self.envs.step(actions)


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
            episodes, _ = collect_episodes(policy, _AssignedProblems(envs[(n, g)], [p for p, _ in groups]), seed=seed,
                                           greedy=mode == "greedy")  # fmt: skip
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


def summarize_samples(records: Iterable[Mapping[str, Any]], config: EvalConfig, tasks: Sequence[str]) -> tuple[list[dict], list[dict]]:
    """(one row per task, one row per problem) from the sample records, in task and problem order.

    Depends only on the records and the configuration, so a resumed evaluation and an
    uninterrupted one with the same seed give the same tables.
    """
    by_problem: dict[tuple[str, int], dict[str, list]] = {}
    for r in records:
        slot = by_problem.setdefault((r["task"], int(r["problem"])), {"sample": [], "greedy": []})
        slot[r["mode"]].append(r)
    task_rows, problem_rows = [], []
    for task in tasks:
        keys = sorted(p for t, p in by_problem if t == task)
        rows = []
        for p in keys:
            samples = sorted(by_problem[(task, p)]["sample"], key=lambda r: int(r["sample"]))
            greedy = by_problem[(task, p)]["greedy"]
            first = (samples or greedy)[0]
            row: dict[str, Any] = {"task": task, "problem": p, "reference": first.get("reference"), "prompt": first.get("prompt")}
            if config.samples:
                n, c = len(samples), sum(bool(r["correct"]) for r in samples)
                if n != config.samples:
                    raise ValueError(f"{task} problem {p} has {n} samples, expected {config.samples}: the file is incomplete")
                lo, hi = wilson_interval(c, n)
                row.update(samples=n, correct=c, success_rate=c / n, success_lo=lo, success_hi=hi)
                for k in config.ks:
                    row[f"pass@{k}"] = pass_at_k(n, c, k)
                    if k > 1:
                        winner, answer = majority_vote([r["extracted"] for r in samples[:k]])
                        row[f"maj@{k}"] = float(winner is not None and bool(samples[winner]["correct"]))
                        row[f"maj@{k}_answer"] = answer
                row[f"mean@{config.samples}"] = float(np.mean([r["reward"] for r in samples]))
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
        names = _metric_names(config)
        intervals = bootstrap_intervals({m: [r[m] for r in rows] for m in names}, seed=config.seed)
        summary: dict[str, Any] = {"task": task, "problems": len(rows), "samples": config.samples}
        for m in names:
            summary[m] = float(np.mean([r[m] for r in rows]))
            summary[f"{m}_lo"], summary[f"{m}_hi"] = intervals[m]
        summary["tokens"] = float(np.mean([r["tokens"] for r in rows]))
        summary["truncated"] = float(np.mean([r["truncated"] for r in rows]))
        summary["reward_errors"] = int(sum(r["reward_errors"] for r in rows))
        task_rows.append(summary)
    return task_rows, problem_rows


def format_table(task_rows: Sequence[Mapping[str, Any]], config: EvalConfig) -> str:
    """The per-task table: every metric with its 95% bootstrap interval over problems."""
    names = _metric_names(config)
    head = ["task", "problems", *names, "tokens", "truncated"]
    body = [[r["task"], str(r["problems"]), *(f"{r[m]:.3f} [{r[m + '_lo']:.2f}, {r[m + '_hi']:.2f}]" for m in names),
             f"{r['tokens']:.1f}", f"{r['truncated']:.2f}"] for r in task_rows]  # fmt: skip
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
    keys = list(dict.fromkeys([*recorded, *now]))
    return [f"{k}: {json.dumps(recorded.get(k))} in the file, {json.dumps(now.get(k))} now"
            for k in keys if recorded.get(k) != now.get(k)]  # fmt: skip


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


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return getattr(value, "name", None) or getattr(value, "__name__", None) or repr(value)


def fingerprint(config: EvalConfig, env: EnvConfig, tasks: Sequence[str], task_kwargs: Mapping[str, Mapping],
                model: Mapping[str, Any], sampling: Mapping[str, Any]) -> dict[str, Any]:  # fmt: skip
    """Every setting that decides which samples an evaluation draws (the resume check compares it)."""
    env_settings = {f.name: getattr(env, f.name) for f in dataclasses.fields(EnvConfig)
                    if f.name not in ("task", "task_kwargs", "tokenizer", *ENV_EXCLUDED)}  # fmt: skip
    evaluation = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("out", "resume", "progress_bar")}
    evaluation["k"] = list(config.ks)
    return _jsonable({**model, "tasks": list(tasks), "task_kwargs": {t: dict(task_kwargs.get(t, {})) for t in tasks},
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

    task_rows, problem_rows = summarize_samples(records, config, names)
    result = EvalResult(task_rows, problem_rows, records, config, header, paths)
    if out is not None:
        summary = {"config": header, "tasks": task_rows, "notes": notes,
                   "timing": {"seconds_this_run": elapsed, "samples": len(records)}}  # fmt: skip
        paths["summary"].write_text(json.dumps(_jsonable(summary), indent=2) + "\n")
        _write_csv(paths["tasks"], task_rows)
        _write_csv(paths["problems"], problem_rows)
    return result


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

# RunConfig's settings that pick and load the model (the rest are training's).
MODEL_SETTINGS = ("model", "preset", "mask_actions", "device", "dtype", "threads", "policy")
ENV_EXCLUDED = ("split", "budget_is_terminal", "action_mask_in_info")  # EvalConfig says the split
MODEL_NOTE = "; or a `textgym train` run directory (its latest checkpoint) or checkpoint-NNNNNN directory"


def _configs() -> list[tuple[type, tuple[str, ...], str]]:
    from agents.train import RunConfig, SamplingConfig

    run_excluded = tuple(f.name for f in dataclasses.fields(RunConfig) if f.name not in MODEL_SETTINGS)
    return [
        (EvalConfig, (), "the evaluation (agents.evaluation.EvalConfig)"),
        (RunConfig, run_excluded, "the model (agents.train.RunConfig)"),
        (EnvConfig, ENV_EXCLUDED, "the environment (textgym.config.EnvConfig)"),
        (SamplingConfig, (), "sampling (agents.train.SamplingConfig)"),
    ]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Every setting of EvalConfig, the model's part of RunConfig, EnvConfig and SamplingConfig as a flag."""
    from agents.train import PRESETS

    p.description = __doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    notes: dict[str, str] = {"model": MODEL_NOTE.lstrip("; "), "task": "; several: a,b,c",
                             "task_kwargs": '; per task: {"a": {...}, "b": {...}}'}  # fmt: skip
    for preset, values in PRESETS.items():
        for name, value in values.items():
            notes[name] = (notes.get(name, "") + f" [{preset}: {json.dumps(value)}]").strip()
    for cls, excluded, title in _configs():
        add_config_arguments(p.add_argument_group(title), cls, exclude=excluded, notes=notes)


def _defaults() -> dict[str, Any]:
    out = {}
    for cls, excluded, _ in _configs():
        for f in dataclasses.fields(cls):
            if f.metadata.get("cli", True) and f.name not in excluded:
                out.setdefault(f.name, f.default if f.default is not dataclasses.MISSING else f.default_factory())
    return out


def resolve_settings(flags: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """(every setting, where its non-default values came from): defaults, then the model's preset or,
    for a `textgym train` run, the run's own recorded settings, then the flags."""
    from agents.train import PRESETS, TASK_BOUND

    settings = _defaults()
    model = flags.get("model", settings["model"])
    checkpoint = resolve_checkpoint(model)
    if checkpoint is not None:
        from agents.train import SamplingConfig

        recorded = _run_settings(checkpoint)  # only how the run's episodes looked: its env and sampling
        names = {f.name for cls in (EnvConfig, SamplingConfig) for f in dataclasses.fields(cls)} - set(ENV_EXCLUDED)
        base = {k: v for k, v in recorded.items() if k in names and k in settings}
        source = f"the run's settings ({checkpoint.parent / 'config.json'})"
    else:
        preset = flags.get("preset") or (model if model in PRESETS else None)
        base = {k: v for k, v in PRESETS.get(preset, {}).items() if k in settings}
        source = f"preset {preset}" if preset else "defaults"
    if "task" in flags:
        base = {k: v for k, v in base.items() if k not in ("task", *TASK_BOUND)}
    return {**settings, **base, **flags}, source


def _split_tasks(task: Any, task_kwargs: Mapping[str, Any]) -> tuple[list[str], dict[str, dict]]:
    names = [t.strip() for t in str(task).split(",") if t.strip()]
    if not names:
        raise ValueError("--task is empty; name a task (see `textgym tasks`)")
    kwargs = dict(task_kwargs or {})
    if len(names) > 1 and kwargs and all(k in names and isinstance(v, Mapping) for k, v in kwargs.items()):
        return names, {t: dict(kwargs.get(t, {})) for t in names}
    return names, {t: dict(kwargs) for t in names}


def run(args: argparse.Namespace) -> int:
    flags = {k: v for cls, _, _ in _configs() for k, v in given(args, cls).items()}
    try:
        settings, source = resolve_settings(flags)
        pick = lambda cls, excluded=(): {f.name: settings[f.name] for f in dataclasses.fields(cls)  # noqa: E731
                                         if f.name in settings and f.name not in excluded}  # fmt: skip
        config = EvalConfig(**pick(EvalConfig))
        env = EnvConfig(**pick(EnvConfig, ENV_EXCLUDED))
        names, task_kwargs = _split_tasks(env.task, env.task_kwargs)
        tasks = [make_task(name, **task_kwargs[name]) for name in names]  # bad names and files fail before the model loads
    except (TypeError, ValueError, FileNotFoundError, ImportError) as e:
        raise SystemExit(f"error: {e}") from None
    out = Path(config.out or Path("runs") / f"eval-{time.strftime('%Y%m%d-%H%M%S')}")
    if (out / SAMPLES_FILE).exists() and not config.resume:
        raise SystemExit(f"error: {out / SAMPLES_FILE} already holds an evaluation; pass --resume to continue it, "
                         "or choose another --out (nothing is overwritten)")  # fmt: skip

    import torch

    if settings.get("threads"):
        torch.set_num_threads(int(settings["threads"]))
    sampling = {k: settings[k] for k in ("temperature", "top_k", "top_p")}
    print(f"loading {settings['model']} ...", flush=True)
    try:
        policy, model = load_policy(settings["model"], device=settings["device"], dtype=settings["dtype"],
                                    policy=settings["policy"], **sampling)  # fmt: skip
    except (FileNotFoundError, ValueError, OSError, ImportError) as e:
        raise SystemExit(f"error: {e}") from None
    if settings.get("mask_actions"):
        from textgym.vector import TextGenVectorEnv

        probe = TextGenVectorEnv(num_envs=1, config=env.replace(task=tasks[0], task_kwargs={}, tokenizer=policy.tokenizer))
        policy.restrict_actions(probe.action_masks()[0])
    model["mask_actions"] = bool(settings.get("mask_actions"))
    model["dtype"], model["device"] = settings["dtype"], settings["device"]
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
    print("wrote " + ", ".join(str(p) for p in result.paths.values()))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="textgym eval")
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
