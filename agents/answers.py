"""What a policy answers, and what one answer for every problem would score.

A policy can score well by learning the answer most problems share ("Yes" on a dataset that is
90% "Yes") instead of the task. Three numbers tell the two apart:

- the **prior**: the score of always giving the commonest reference answer, found by scoring that
  one answer with the env's verifier against every evaluated problem (so numeric equivalence and
  partial credit count as they do for the policy; success by pass@1's rule). One verifier call per
  problem; the caller caches it per problem set (`priors`). Undefined (None) where the problems
  have no reference answers, and for multi-turn tasks (their rewards come from a conversation);
- the **lift**: pass@1 - prior, per problem (pass@1 of the problem minus 0 or 1 for the constant
  answer on it), averaged, with a 95% bootstrap interval over problems;
- the **diversity** of the answers, as the verifier reads them (`extract_answer`, same answers by
  `vote_key`): how many distinct ones and their entropy in bits, over all samples and per problem
  (training: per prompt group).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from agents.statistics import answer_entropy, bootstrap_intervals, distinct_answers, majority_vote
from textgym.rewards.answers import extract_answer, vote_key

__all__ = [
    "Prior", "is_success", "env_core", "episode_answers", "reference_key", "constant_answer_prior", "evaluation_answers",
    "update_answers",
]


def is_success(reward: float, components: Mapping[str, float] | None = None) -> bool:
    """Solved: the verifier's `answer` component (or, without one, the reward) is >= 1 (pass@1's rule)."""
    return bool((components or {}).get("answer", reward) >= 1.0 - 1e-9)


@dataclass(frozen=True)
class Prior:
    """What giving one answer to every problem scores (`constant_answer_prior`).

    Attributes:
        answer: the commonest answer among the problems' references, as the verifier reads it.
        completion: the completion that was scored on every problem (the task's format around the
            reference that gives `answer`).
        success: problem index -> 1.0 when that completion solves it (pass@1's rule), else 0.0.
        reward: problem index -> the verifier's reward for it.
        errors: verifier calls that failed (scored 0).
    """

    answer: str
    completion: str
    success: dict[int, float]
    reward: dict[int, float]
    errors: int = 0


def env_core(env: Any) -> Any:
    """The env's `Transition` (its task, settings and verifier), or None for an env that is not textgym's."""
    env = getattr(env, "unwrapped", env)
    core = getattr(env, "core", None)
    if core is None and getattr(env, "envs", None):  # a SyncVectorEnv of TextGenEnvs
        core = getattr(env.envs[0].unwrapped, "core", None)
    return core


def episode_answers(episodes: Sequence[Any], core: Any) -> list[str | None]:
    """The answer of every episode, as the env's verifier reads its completion (None: no answer)."""
    return [extract_answer(core.task, str(e.info.get("completion", "")), reward=core.config.reward, info=e.info)
            for e in episodes]  # fmt: skip


def reference_key(core: Any, reference: str | None) -> str | None:
    """The answer a reference gives, by `vote_key`: what the verifier reads in the task's completion
    of it (so a GSM8K solution gives its number), else the stripped reference; None when empty."""
    if reference is None or not str(reference).strip():
        return None
    text = str(reference).strip()
    read = extract_answer(core.task, core.task.completion_for(text), reward=core.config.reward)
    return vote_key(read if read is not None else text)


def constant_answer_prior(core: Any, indices: Sequence[int]) -> Prior | None:
    """Score the commonest reference answer of problems `indices` (of the env's split) on each of them.

    The commonest answer is counted by `reference_key` (ties: the one met first); its reference,
    in the task's format (`Task.completion_for`), is what every problem's verifier scores, through
    the env's own scoring (its reward, timeout and isolation). None for a multi-turn task, or when
    no problem has a reference answer.
    """
    task = core.task
    if task.multi_turn or not len(indices):
        return None
    indices = list(dict.fromkeys(int(i) for i in indices))
    examples = [task.example(core.config.split, i) for i in indices]
    keys = [reference_key(core, e.answer) for e in examples]
    counts = Counter(k for k in keys if k is not None)
    if not counts:
        return None
    top = max(counts.values())
    chosen = next(i for i, k in enumerate(keys) if k is not None and counts[k] == top)
    reference = str(examples[chosen].answer).strip()
    completion = task.completion_for(reference)
    results = core.score([completion] * len(examples), examples)
    answer = extract_answer(task, completion, reward=core.config.reward)
    return Prior(
        answer=answer if answer is not None else reference,
        completion=completion,
        success={i: float(is_success(r.reward, r.components)) for i, r in zip(indices, results)},
        reward={i: float(r.reward) for i, r in zip(indices, results)},
        errors=sum(r.error is not None for r in results),
    )


def _cached_prior(core: Any, indices: Sequence[int], priors: dict | None) -> Prior | None:
    key = tuple(sorted(set(int(i) for i in indices)))
    if priors is not None and key in priors:
        return priors[key]
    prior = constant_answer_prior(core, key)
    if priors is not None:
        priors[key] = prior
    return prior


def evaluation_answers(episodes: Sequence[Any], env: Any, priors: dict | None = None, seed: int = 0) -> dict[str, Any]:
    """The prior, the lift and the answers' diversity of an evaluation's episodes on `env`.

    Problems are the episodes' example indices (`info["index"]`). Keys: `prior` (mean over problems
    of the constant answer's success), `prior_reward` (its mean reward), `prior_answer`, `lift`
    (mean over problems of pass@1 - prior) with `lift_lo`/`lift_hi` (95% bootstrap over problems,
    seeded by `seed`), `distinct_answers` and `answer_entropy` (bits) over all episodes,
    `distinct_answers_per_problem` and `answer_entropy_per_problem` (means over problems), and
    `distinct_references` (different reference answers among the problems), `top_answer` (the
    commonest answer, by `vote_key`; None when no episode answers). The prior's keys are
    None where it is undefined; {} for an env that is not textgym's. `priors` caches the prior
    per problem set (an evaluation repeated on the same problems scores it once).
    """
    core = env_core(env)
    if core is None or not episodes:
        return {}
    answers = episode_answers(episodes, core)
    indices = [int(e.info.get("index", -1)) for e in episodes]
    by_problem: dict[int, list[int]] = {}
    for k, index in enumerate(indices):
        by_problem.setdefault(index, []).append(k)
    per_problem = [[answers[k] for k in ks] for ks in by_problem.values()]
    out: dict[str, Any] = {
        "distinct_answers": distinct_answers(answers),
        "answer_entropy": answer_entropy(answers),
        "distinct_answers_per_problem": float(np.mean([distinct_answers(a) for a in per_problem])),
        "answer_entropy_per_problem": float(np.mean([answer_entropy(a) for a in per_problem])),
        "distinct_references": _distinct_references(core, episodes),
        "top_answer": majority_vote(answers)[1],
    }  # fmt: skip
    prior = None if min(by_problem) < 0 else _cached_prior(core, list(by_problem), priors)
    out.update(prior=None, prior_reward=None, prior_answer=None, lift=None, lift_lo=None, lift_hi=None)
    if prior is not None:
        problems = list(by_problem)
        pass1 = [float(np.mean([episodes[k].success for k in by_problem[p]])) for p in problems]
        lift = [a - prior.success[p] for a, p in zip(pass1, problems)]
        lo, hi = bootstrap_intervals({"lift": lift}, seed=seed)["lift"]
        out.update(prior=float(np.mean([prior.success[p] for p in problems])),
                   prior_reward=float(np.mean([prior.reward[p] for p in problems])), prior_answer=prior.answer,
                   lift=float(np.mean(lift)), lift_lo=lo, lift_hi=hi)  # fmt: skip
    return out


def update_answers(episodes: Sequence[Any], env: Any, group_size: int = 1) -> dict[str, Any]:
    """The answers' diversity in an update's episodes (groups of `group_size` consecutive episodes
    answer one prompt): `answer_entropy` (bits, the mean over groups of each group's entropy: 0 when
    every group agrees within itself), `distinct_answers`, `distinct_references` and `top_answer`
    over the whole update. {} for an env that is not textgym's."""
    core = env_core(env)
    if core is None or not episodes:
        return {}
    answers = episode_answers(episodes, core)
    g = max(int(group_size), 1)
    groups = [answers[i : i + g] for i in range(0, len(answers), g)]
    return {
        "answer_entropy": float(np.mean([answer_entropy(group) for group in groups])),
        "distinct_answers": distinct_answers(answers),
        "distinct_references": _distinct_references(core, episodes),
        "top_answer": majority_vote(answers)[1],
    }


def _distinct_references(core: Any, episodes: Sequence[Any]) -> int:
    references = {e.info.get("answer") for e in episodes}
    return len({reference_key(core, r) for r in references} - {None})
