"""The statistics of evaluations: pass@k, majority vote, answer diversity, Wilson and bootstrap intervals.

Pure functions of numbers and answers (no model, no env), shared by `textgym eval`
(`agents.evaluation`) and the evaluations inside training (`agents.rollouts`, `agents.callbacks`).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Iterable, Mapping, Sequence

import numpy as np

from textgym.rewards.answers import vote_key

__all__ = [
    "pass_at_k", "majority_vote", "vote_key", "distinct_answers", "answer_entropy", "wilson_interval",
    "bootstrap_intervals", "problem_statistics", "means_with_intervals", "BOOTSTRAP_RESAMPLES", "Z95",
]

BOOTSTRAP_RESAMPLES = 1000
Z95 = 1.959963984540054


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


def _answer_counts(answers: Iterable[str | None]) -> Counter:
    return Counter(k for k in map(vote_key, answers) if k is not None)


def distinct_answers(answers: Iterable[str | None]) -> int:
    """How many different answers (by `vote_key`: "7" and "7.0" are one) the samples give; samples
    without an answer are not counted."""
    return len(_answer_counts(answers))


def answer_entropy(answers: Iterable[str | None]) -> float:
    """The entropy in bits of the answers' distribution, H = -sum_a p(a) log2 p(a), p(a) the share of
    the answered samples that give answer a (by `vote_key`; samples without an answer are left out,
    as in the vote). 0 when every answered sample gives the same answer (or none answers); log2(m)
    for m answers given equally often."""
    counts = np.array(list(_answer_counts(answers).values()), dtype=np.float64)
    if counts.size <= 1:
        return 0.0
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


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


def problem_statistics(correct: Sequence[bool], rewards: Sequence[float], answers: Sequence[str | None],
                       ks: Iterable[int]) -> dict[str, float | int | str | None]:  # fmt: skip
    """The statistics of one problem's n samples, in sample order: how many are correct with the
    Wilson interval of the success rate; pass@k and, for k > 1, maj@k (whether the answer most of the
    first k give is correct) with that answer; mean@n (the mean reward); and the answers' diversity."""
    n, c = len(correct), sum(bool(x) for x in correct)
    lo, hi = wilson_interval(c, n)
    row: dict[str, float | int | str | None] = {"samples": n, "correct": c, "success_rate": c / n, "success_lo": lo,
                                                "success_hi": hi}  # fmt: skip
    for k in ks:
        row[f"pass@{k}"] = pass_at_k(n, c, k)
        if k > 1:
            winner, answer = majority_vote(answers[:k])
            row[f"maj@{k}"] = float(winner is not None and bool(correct[winner]))
            row[f"maj@{k}_answer"] = answer
    row[f"mean@{n}"] = float(np.mean(rewards))
    row["distinct_answers"], row["answer_entropy"] = distinct_answers(answers), answer_entropy(answers)
    return row


def means_with_intervals(columns: Mapping[str, Sequence[float]], seed: int) -> dict[str, float]:
    """Each column's mean over problems, `name`, with its 95% bootstrap interval, `name_lo` and
    `name_hi` (`bootstrap_intervals`: the same resamples for every column)."""
    intervals = bootstrap_intervals(columns, seed=seed)
    out = {}
    for name, values in columns.items():
        out[name] = float(np.mean(values))
        out[f"{name}_lo"], out[f"{name}_hi"] = intervals[name]
    return out
