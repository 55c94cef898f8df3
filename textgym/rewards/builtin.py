"""The built-in reward functions. Each compares a completion with `example.answer`.

Where a completion wraps its answer in `<answer>...</answer>` (the R1 format), the rewards look
inside the tags; otherwise at the whole completion. The rewards that check an answer's value
(`numeric_match`, `gsm8k`, `math_equiv`) read it in one order, `extract.final_answer`'s: answer
tags, then `\\boxed{}`, then "####", then the last number; a reply that stops on an open operator
("... 9 + ") is unfinished and scores 0.
"""

from __future__ import annotations

import re
from typing import Callable

from textgym.example import Example
from textgym.rewards.core import register_reward
from textgym.rewards.extract import answer_tag, boxed, final_answer, final_number, gsm8k_answer, numbers_equal
from textgym.rewards.math_equiv import math_equal

__all__ = [
    "exact_match",
    "numeric_match",
    "contains",
    "regex",
    "r1_format",
    "r1_zero",
    "r1_zero_reward",
    "is_r1_format",
    "math_equiv",
    "gsm8k",
    "boxed_math",
    "partial_credit",
    "edit_distance",
]



def _answer_region(completion: str) -> str:
    tagged = answer_tag(completion)
    return tagged if tagged is not None else completion.strip()


@register_reward("exact_match")
def exact_match(completion: str, example: Example) -> float:
    """1.0 when the answer (inside <answer> tags if any, stripped) equals the reference exactly."""
    return float(_answer_region(completion) == example.answer.strip())


@register_reward("numeric_match")
def numeric_match(completion: str, example: Example) -> float:
    r"""1.0 when the completion's final number equals the reference (`extract.final_number`).

    The number is read in <answer> tags, else in the last \boxed{}, else after "####", else it is
    the last number; a reply that stops on an open operator ("... 9 + ") scores 0. Formatting is
    forgiven: "1,000" == "1000", " 7.0" == "7." == "7".
    """
    return float(numbers_equal(final_number(completion), example.answer))


@register_reward("contains")
def contains(completion: str, example: Example) -> float:
    """1.0 when the reference answer appears anywhere in the completion."""
    return float(example.answer.strip() in completion)


def regex(pattern: str, flags: int = 0) -> Callable[[str, Example], float]:
    r"""A reward that is 1.0 when `pattern` matches the completion (re.search).

    "{answer}" in the pattern stands for the reference answer, escaped:
    `regex(r"^\s*{answer}\s*$")` accepts the bare answer with surrounding whitespace.
    """
    needs_answer = "{answer}" in pattern
    fixed = None if needs_answer else re.compile(pattern, flags)

    def matches(completion: str, example: Example) -> float:
        rx = fixed or re.compile(pattern.replace("{answer}", re.escape(example.answer.strip())), flags)
        return float(rx.search(completion) is not None)

    matches.__name__ = matches.__qualname__ = f"regex({pattern!r})"
    return matches


def is_r1_format(completion: str) -> bool:
    """Whether the completion is `[<think>] ... </think> <answer> ... </answer>` and nothing more.

    The completion continues a prompt that ends inside "<think>", so the opening tag is optional;
    it ends with the stop string "</answer>" (only whitespace may follow), and the answer holds no
    "<answer>" of its own. Read with string searches, in linear time (a backtracking regex of
    this shape takes quadratic time on long runs of whitespace).
    """
    text = completion.rstrip()
    if not text.endswith("</answer>"):
        return False
    body = text[: -len("</answer>")]
    start = body.rfind("<answer>")  # the answer holds no "<answer>", so it opens at the last one
    return start >= 0 and body[:start].rstrip().endswith("</think>")


@register_reward("r1_format")
def r1_format(completion: str, example: Example) -> float:
    """1.0 for the R1 format `<think> ... </think> <answer> ... </answer>` (opening <think> optional)."""
    return float(is_r1_format(completion))


def _default_answer_check(answer: str, example: Example) -> float:
    return float(answer == example.answer.strip() or numbers_equal(answer, example.answer))


def r1_zero_reward(check: Callable[[str, Example], float] | None = None) -> Callable:
    """The R1-zero reward: (reward, {"format": f, "answer": a}).

    `format` is 1.0 when the completion is in R1 format; `answer` is check(text inside <answer>,
    example) (default: equal as text or as numbers). The reward is the answer score, paid only
    when the format is right, as in DeepSeek-R1-Zero.
    """
    check = check or _default_answer_check

    def r1_zero(completion: str, example: Example) -> tuple[float, dict[str, float]]:
        """R1-zero: the answer in <answer> tags scores, paid only with the right format (components format, answer)."""
        fmt = is_r1_format(completion)
        answer = answer_tag(completion)
        correct = float(check(answer, example)) if answer is not None else 0.0
        return (correct if fmt else 0.0), {"format": float(fmt), "answer": correct}

    return r1_zero


r1_zero = register_reward("r1_zero", r1_zero_reward())


@register_reward("math_equiv")
def math_equiv(completion: str, example: Example) -> float:
    r"""1.0 when the answer is mathematically equal to the reference ("0.5" == "\frac{1}{2}").

    The answer is `extract.final_answer`'s: the content of <answer> tags (a \boxed{} inside them
    wins), else the last \boxed{}, else the line after "####", else the last number; none when
    the reply stops on an open operator. math-verify when installed, else a guarded sympy comparison.
    """
    return float(math_equal(final_answer(completion), example.answer))


@register_reward("gsm8k")
def gsm8k(completion: str, example: Example) -> float:
    r"""1.0 when the completion's final number equals the GSM8K reference ("#### 1,018" == "1018").

    The completion's number is `extract.final_number`'s, as in `numeric_match`: in <answer> tags,
    else in the last \boxed{}, else the number after the last "####", else the last number; none
    when the reply stops on an open operator. The reference may be a whole GSM8K solution (its
    number after "####" counts) or the bare final answer.
    """
    ref = gsm8k_answer(example.answer)
    return float(numbers_equal(final_number(completion), example.answer.strip() if ref is None else ref))


@register_reward("boxed_math")
def boxed_math(completion: str, example: Example) -> float:
    r"""1.0 when the last \boxed{} of the completion is mathematically equal to the reference (MATH).

    Strict about the format, as MATH's own grading is: no \boxed{} (inside <answer> tags if any),
    no reward. The reference may be a whole MATH solution (its last \boxed{} counts) or the bare
    answer. Equality is `math_equal` (math-verify when installed).
    """
    pred = boxed(_answer_region(completion))
    if pred is None:
        return 0.0
    ref = boxed(example.answer)
    return float(math_equal(pred, example.answer if ref is None else ref))


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions), O(len(a)·len(b))."""
    if len(a) < len(b):
        a, b = b, a
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


@register_reward("partial_credit")
def partial_credit(completion: str, example: Example) -> float:
    """1 - edit_distance(answer, reference) / max(len): 1.0 exact, 0.0 nothing in common.

    Answers longer than 4x the reference (or 1,000 chars) score 0 without the quadratic work.
    """
    pred, ref = _answer_region(completion), example.answer.strip()
    longest = max(len(pred), len(ref))
    if longest == 0:
        return 1.0
    if len(pred) > max(4 * len(ref), 1000):
        return 0.0
    return 1.0 - edit_distance(pred, ref) / longest
