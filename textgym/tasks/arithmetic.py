"""Arithmetic tasks: addition, multiplication, comparison. Verified by the final number written."""

from __future__ import annotations

import re
from typing import Any, Iterable

import numpy as np

from textgym.rewards.extract import final_number, numbers, numbers_equal, parse_number
from textgym.tasks.base import ENUMERATE_LIMIT, Example, Task, register_task

__all__ = ["AdditionTask", "MultiplicationTask", "ComparisonTask"]

_DIGITS = "0123456789"


def operand_range(digits: int) -> tuple[int, int]:
    """Smallest and largest operand with `digits` digits; 1 digit includes 0."""
    if not isinstance(digits, (int, np.integer)) or not 1 <= digits <= 18:
        # 18: operands stay inside int64 for numpy's generator
        raise ValueError(f"digits must be an integer from 1 to 18, got {digits!r}")
    return (0 if digits == 1 else 10 ** (digits - 1)), 10**digits - 1


class _TwoOperandTask(Task):
    """Shared machinery: two operands of `digits` digits, answer verified as the final number (`final_number`)."""

    answer_chars = _DIGITS

    def __init__(self, digits: int = 1, *, seed: int = 0, prompt_style: str = "plain", reward: Any = None):
        super().__init__(seed=seed, prompt_style=prompt_style, reward=reward)
        self.digits = int(digits)
        self.params = {"digits": self.digits}
        self.low, self.high = operand_range(digits)
        self.max_answer_chars = len(self.solve(self.high, self.high))

    def solve(self, a: int, b: int) -> str:
        raise NotImplementedError

    def question(self, a: int, b: int) -> str:
        raise NotImplementedError

    def valid(self, a: int, b: int) -> bool:
        return True

    def make(self, a: int, b: int) -> Example:
        return Example(self.question(a, b), self.solve(a, b), {"a": a, "b": b})

    def sample(self, rng: np.random.Generator) -> Example:
        while True:
            a, b = (int(x) for x in rng.integers(self.low, self.high + 1, size=2))
            if self.valid(a, b):
                return self.make(a, b)

    def all_problems(self) -> Iterable[Example] | None:
        if (self.high - self.low + 1) ** 2 > ENUMERATE_LIMIT:
            return None
        span = range(self.low, self.high + 1)
        return [self.make(a, b) for a in span for b in span if self.valid(a, b)]

    def extract(self, text: str) -> str | None:
        return final_number(text)  # the order every numeric reward reads: \boxed{}, "####", last number

    def check(self, answer: str, example: Example) -> float:
        return float(numbers_equal(answer, example.answer))


@register_task("addition")
class AdditionTask(_TwoOperandTask):
    """Add two numbers.

    ## Description
    "What is 3 + 4?" The default (one digit, 100 problems, split exactly 80/10/10 by problem) is
    easy enough that a small instruct model is right some of the time, which leaves room to learn.

    ## Prompt
    Plain: `What is {a} + {b}?`. r1_zero: that question inside the R1-zero template.

    ## Answer
    `str(a + b)`; metadata `{"a": a, "b": b}`. At most `digits + 1` characters.

    ## Rewards
    Plain: 1.0 when the completion's final number equals a + b, else 0.0: the last \\boxed{} or
    the number after "####" when it writes one, else its last number ("3 + 4 = 7." counts; "1,000"
    equals "1000"); a completion that stops on an open operator ("3 + 4 =") answers nothing.
    r1_zero: the same check on the text inside <answer>, paid only when the R1 format is right;
    components `format` and `answer`.

    ## Arguments
    - `digits=1`: digits per operand (1: 0-9; d >= 2: exactly d digits). Up to 18.
    - `seed=0`, `prompt_style="plain"` ("plain" | "r1_zero"), `reward=None` (override verifier).

    ## Example
    ```python
    from textgym.tasks import make_task
    task = make_task("addition", digits=2)
    ex = task.example("train", 0)
    assert task.reward(f"It is {ex.answer}.", ex) == 1.0
    ```
    """

    name = "addition"
    description = "What is a + b? (two numbers of `digits` digits)"

    def question(self, a, b):
        return f"What is {a} + {b}?"

    def solve(self, a, b):
        return str(a + b)


@register_task("multiplication")
class MultiplicationTask(_TwoOperandTask):
    """Multiply two numbers.

    ## Description
    "What is 6 * 7?" Harder than addition at the same number of digits.

    ## Prompt
    Plain: `What is {a} * {b}?`. r1_zero: that question inside the R1-zero template.

    ## Answer
    `str(a * b)`; metadata `{"a": a, "b": b}`. At most `2 * digits` characters.

    ## Rewards
    1.0 when the completion's final number (inside <answer> for r1_zero, with the format checked)
    equals a * b, else 0.0; read as in addition.

    ## Arguments
    - `digits=1`: digits per operand (1: 0-9; d >= 2: exactly d digits).
    - `seed=0`, `prompt_style="plain"`, `reward=None`.

    ## Example
    ```python
    from textgym.tasks import make_task
    task = make_task("multiplication", digits=2, prompt_style="r1_zero")
    ex = task.example("validation", 3)
    reward, parts = task.reward(f"easy </think> <answer>{ex.answer}</answer>", ex)
    assert reward == 1.0 and parts == {"format": 1.0, "answer": 1.0}
    ```
    """

    name = "multiplication"
    description = "What is a * b? (two numbers of `digits` digits)"

    def question(self, a, b):
        return f"What is {a} * {b}?"

    def solve(self, a, b):
        return str(a * b)


@register_task("comparison")
class ComparisonTask(_TwoOperandTask):
    """Say which of two different numbers is larger.

    ## Description
    "Which is larger: 37 or 52?" The two numbers always differ.

    ## Prompt
    Plain: `Which is larger: {a} or {b}?`. r1_zero: that question inside the R1-zero template.

    ## Answer
    `str(max(a, b))`; metadata `{"a": a, "b": b}`. At most `digits` characters.

    ## Rewards
    1.0 when the number the completion says is larger (inside <answer> for r1_zero, with the format
    checked) is the larger one, else 0.0. The answer is read from the last claim the text makes —
    "52 is larger than 37", "37 is smaller than 52", "52 > 37", "the larger number is 52" all answer
    52 — and, when it makes none, from the one number it names ("52", "The answer is 52."). A text
    that names several numbers without a claim ("37 or 52."), or hedges one ("the larger is 37 or
    52"), answers nothing. Both rules close reward hacks seen in training runs: reading only the
    last number paid "30 is larger than 85." for its 85 (a policy learned to state falsehoods), and
    paid an echo of the question ("37 or 52.") whenever the second number was the larger.

    ## Arguments
    - `digits=2`: digits per number (1: 0-9, 90 problems; d >= 2: exactly d digits).
    - `seed=0`, `prompt_style="plain"`, `reward=None`.

    ## Example
    ```python
    from textgym.tasks import make_task
    task = make_task("comparison")
    ex = task.example("test", 0)
    assert task.reward(ex.answer, ex) == 1.0
    ```
    """

    name = "comparison"
    description = "Which is larger: a or b?"

    def __init__(self, digits: int = 2, *, seed: int = 0, prompt_style: str = "plain", reward: Any = None):
        super().__init__(digits, seed=seed, prompt_style=prompt_style, reward=reward)

    def valid(self, a, b):
        return a != b

    def question(self, a, b):
        return f"Which is larger: {a} or {b}?"

    def solve(self, a, b):
        return str(max(a, b))

    def extract(self, text: str) -> str | None:
        return claimed_larger(text)


# (?<!\d): a number is tried where its digits start, not once per digit (a run of 2,000 digits took
# 1.7 s, 20,000 digits 220 s); no claim's number can start inside a run of digits anyway.
_NUM = r"(-?(?<!\d)\d+(?:\.\d+)?)"
_MORE = r"(?:larger|bigger|greater|higher)"
_LESS = r"(?:smaller|less|lower)"
# Each pattern: a claim about which number is larger, and which of its groups names that number.
_CLAIMS = [
    (re.compile(rf"{_NUM}\s+is\s+(?:the\s+)?{_MORE}\b", re.IGNORECASE), 1),                     # 52 is larger (than 37)
    (re.compile(rf"{_NUM}\s+is\s+(?:the\s+)?{_LESS}(?:\s+number|\s+one)?\s+than\s+{_NUM}", re.IGNORECASE), 2),  # 37 is smaller than 52
    (re.compile(rf"\b(?:the\s+)?{_MORE}(?:\s+number|\s+one)?\s+is\s+{_NUM}", re.IGNORECASE), 1),  # the larger number is 52
    (re.compile(rf"{_NUM}\s*>\s*{_NUM}"), 1),                                                       # 52 > 37
    (re.compile(rf"{_NUM}\s*<\s*{_NUM}"), 2),                                                       # 37 < 52
]


# A number offered with an alternative next to it ("the larger is 66 or 90", "16 or 95 is larger")
# names no one number. Read by walking from the claim's number, not with a regex searched over the
# text before it: that costs the text's length per claim, quadratic in all.


def _separator_before(text: str, i: int) -> int | None:
    """Where "," "/" "or" "and" (as a word) ends right before text[i], spaces between; its start, else None."""
    while i > 0 and text[i - 1].isspace():
        i -= 1
    if i > 0 and text[i - 1] in ",/":
        return i - 1
    for word in ("or", "and"):
        j = i - len(word)
        if j > 0 and text[j:i].lower() == word and text[j - 1].isspace():  # a word of its own, after spaces
            return j
    return None


def _alternative_before(text: str, start: int) -> bool:
    """Whether a number and a separator come right before text[start] ("66 or |90")."""
    i = _separator_before(text, start)
    if i is None:
        return False
    while i > 0 and text[i - 1].isspace():
        i -= 1
    return i > 0 and text[i - 1].isdecimal()


def _alternative_after(text: str, end: int) -> bool:
    """Whether a separator and a number come right after text[:end] ("66| or 90")."""
    i, n = end, len(text)
    while i < n and text[i].isspace():
        i += 1
    if i < n and text[i] in ",/":
        i += 1
    else:
        for word in ("or", "and"):
            k = i + len(word)
            if text[i:k].lower() == word and (k == n or not (text[k].isalnum() or text[k] == "_")):
                i = k
                break
        else:
            return False
    while i < n and text[i].isspace():
        i += 1
    if i < n and text[i] == "-":
        i += 1
    return i < n and text[i].isdecimal()


def claimed_larger(text: str) -> str | None:
    """The number a text says is the larger: from its last comparison claim, else its only number.

    A claim whose number comes with an alternative ("the larger is 66 or 90") is no claim. Without
    a claim the text must name one number (as often as it likes): "16 or 95." names both numbers of
    the question and says nothing about which is larger, so it answers nothing (reading its last
    number would pay an echo of the question half of the time, which a policy learns to exploit).
    """
    claims = []
    for pattern, g in _CLAIMS:
        for m in pattern.finditer(text):
            start, end = m.span(g)
            if not (_alternative_before(text, start) or _alternative_after(text, end)):
                claims.append((m.start(), m.group(g)))
    if claims:
        return max(claims)[1]
    found = numbers(text)  # the same reading of numbers as last_number ("1,000" is one number)
    return found[-1] if len({parse_number(n) for n in found}) == 1 else None
