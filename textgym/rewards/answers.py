"""The answers completions give: each built-in reward's own reading, and when two answers are the same.

    extract_answer(task, "The sum is 7.")                   # "7": the task's verifier reads the last number
    extract_answer(task, "\\boxed{12}", reward="boxed_math")  # "12": the env's reward replaces the verifier
    vote_key("7.0") == vote_key(" 7")                        # numbers are the same answer by value

A reward's reading is registered with it (`register_reward(name, fn, extract=...)`); here the
built-in rewards get theirs (each is what its reward reads in `builtin`: the numeric ones share
`extract.final_number` / `final_answer`, one reading order for all). A task reads
answers through `Task.answer_of` (its prompt style, its last turn, its verifier's reading).
"""

from __future__ import annotations

from typing import Any, Mapping

from textgym.rewards.builtin import (
    boxed_math, contains, exact_match, gsm8k, math_equiv, numeric_match, partial_credit, r1_format, r1_zero,
)
from textgym.rewards.core import get_extractor, register_reward, stripped
from textgym.rewards.extract import answer_tag, boxed, final_answer, final_number, parse_number

__all__ = ["extract_answer", "vote_key", "answer_region"]


def answer_region(text: str) -> str | None:
    """The inside of the last <answer> tags, else the whole completion (stripped; None when blank)."""
    tagged = answer_tag(text)
    return tagged if tagged is not None else stripped(text)


def _boxed(text: str) -> str | None:
    return boxed(answer_region(text) or "")


for _name, _fn, _extract in [
    ("exact_match", exact_match, answer_region), ("partial_credit", partial_credit, answer_region),
    ("contains", contains, stripped), ("numeric_match", numeric_match, final_number),
    ("math_equiv", math_equiv, final_answer), ("gsm8k", gsm8k, final_number), ("boxed_math", boxed_math, _boxed), ("r1_zero", r1_zero, answer_tag),
    ("r1_format", r1_format, answer_tag),
]:  # fmt: skip
    register_reward(_name, _fn, extract=_extract)  # the same function again: only its extraction is added


def vote_key(answer: str | None) -> str | None:
    """What makes two answers the same: a number's value, else the text with spaces collapsed."""
    if answer is None:
        return None
    number = parse_number(answer)
    if number is not None:
        return str(number)
    text = " ".join(answer.split())
    return text or None


def extract_answer(task: Any, completion: str, *, reward: Any = None, info: Mapping[str, Any] | None = None) -> str | None:
    """The answer `completion` gives, as the verifier reads it: what maj@k votes on.

    `reward` is the env's reward when it replaces the task's verifier (`EnvConfig.reward`): that
    reward's registered extraction reads the whole completion (the stripped completion for a reward
    registered without one). Otherwise the task reads it (`task.answer_of(completion, info)`: in
    r1_zero style inside the <answer> tags, in a multi-turn task the policy's last turn).
    """
    if reward is not None:
        return get_extractor(reward)(completion)
    return task.answer_of(completion, info)
