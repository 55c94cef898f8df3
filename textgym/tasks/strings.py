"""String tasks for tiny models and the char tokenizer: copy, reverse, sort, counting.

Prompts are a few tens of characters. A problem is a random string over `alphabet` with a length
from `min_length` to `length`; the answer is a function of it.
"""

from __future__ import annotations

import itertools
import string
from typing import Any, Iterable

import numpy as np

from textgym.rewards.extract import final_number, numbers_equal
from textgym.tasks.base import ENUMERATE_LIMIT, Example, Task, register_task

__all__ = ["CopyTask", "ReverseTask", "SortTask", "CountingTask"]


class _StringTask(Task):
    """Shared machinery: a random string in, `transform(string)` out, checked on the first line."""

    verb = ""

    def __init__(self, length: int = 5, *, min_length: int | None = None,
                 alphabet: str = string.ascii_lowercase, seed: int = 0,
                 prompt_style: str = "plain", reward: Any = None):
        super().__init__(seed=seed, prompt_style=prompt_style, reward=reward)
        min_length = length if min_length is None else min_length
        if not 1 <= int(min_length) <= int(length):
            raise ValueError(f"need 1 <= min_length <= length, got min_length={min_length}, length={length}")
        if not alphabet or len(set(alphabet)) != len(alphabet) or any(c.isspace() for c in alphabet):
            # whitespace would be stripped away by the verifier; repeats would skew sampling
            raise ValueError(f"alphabet must be distinct non-whitespace characters, got {alphabet!r}")
        self.length, self.min_length, self.alphabet = int(length), int(min_length), alphabet
        self.params = {"length": self.length, "min_length": self.min_length, "alphabet": alphabet}
        self.answer_chars = alphabet
        self.max_answer_chars = self.length

    def transform(self, text: str) -> str:
        raise NotImplementedError

    def make(self, text: str) -> Example:
        return Example(f"{self.verb}: {text}", self.transform(text), {"text": text})

    def _lengths(self) -> range:
        return range(self.min_length, self.length + 1)

    def _space_size(self) -> int:
        return sum(len(self.alphabet) ** n for n in self._lengths())

    def _random_string(self, rng: np.random.Generator) -> str:
        n = int(rng.integers(self.min_length, self.length + 1))
        return "".join(self.alphabet[int(i)] for i in rng.integers(len(self.alphabet), size=n))

    def _all_strings(self) -> Iterable[str]:
        for n in self._lengths():
            for chars in itertools.product(self.alphabet, repeat=n):
                yield "".join(chars)

    def sample(self, rng: np.random.Generator) -> Example:
        return self.make(self._random_string(rng))

    def all_problems(self) -> Iterable[Example] | None:
        if self._space_size() > ENUMERATE_LIMIT:
            return None
        return [self.make(s) for s in self._all_strings()]


_STRING_ARGS = """- `length=5`: the longest string; `min_length=None` the shortest (None: same as length).
    - `alphabet="abcdefghijklmnopqrstuvwxyz"`: distinct non-whitespace characters to draw from.
    - `seed=0`, `prompt_style="plain"`, `reward=None` (e.g. "partial_credit" for edit-distance credit)."""


@register_task("copy")
class CopyTask(_StringTask):
    __doc__ = f"""Repeat a string.

    ## Description
    The simplest sequence task: the answer is the string in the prompt. A tiny char-level model
    learns it in seconds.

    ## Prompt
    `Copy: {{text}}` (plain style adds nothing). r1_zero: inside the R1-zero template.

    ## Answer
    `text`; metadata `{{"text": text}}`. At most `length` characters.

    ## Rewards
    Plain: 1.0 when the first non-blank line of the completion, stripped, equals the answer, else
    0.0. r1_zero: the same on the text inside <answer>, paid only with the right format.

    ## Arguments
    {_STRING_ARGS}

    ## Example
    ```python
    from textgym.tasks import make_task
    task = make_task("copy", length=3, alphabet="ab")
    ex = task.example("train", 0)
    assert task.reward(ex.answer + "\\n", ex) == 1.0
    ```
    """

    name = "copy"
    description = "Repeat the given string"
    verb = "Copy"

    def transform(self, text):
        return text


@register_task("reverse")
class ReverseTask(_StringTask):
    __doc__ = f"""Reverse a string.

    ## Description
    The answer is the prompt's string backwards: the model must read ahead of where it writes.

    ## Prompt
    `Reverse: {{text}}`. r1_zero: inside the R1-zero template.

    ## Answer
    `text[::-1]`; metadata `{{"text": text}}`. At most `length` characters.

    ## Rewards
    1.0 when the first non-blank line of the completion (inside <answer> for r1_zero, with the
    format checked), stripped, equals the reversed string, else 0.0.

    ## Arguments
    {_STRING_ARGS}

    ## Example
    ```python
    from textgym.tasks import make_task
    task = make_task("reverse", length=4)
    ex = task.example("train", 0)
    assert ex.answer == ex.metadata["text"][::-1] and task.reward(ex.answer, ex) == 1.0
    ```
    """

    name = "reverse"
    description = "Write the given string backwards"
    verb = "Reverse"

    def transform(self, text):
        return text[::-1]


@register_task("sort")
class SortTask(_StringTask):
    __doc__ = f"""Sort the characters of a string (letters or digits).

    ## Description
    The answer is the string's characters in alphabet order (the order of `alphabet`, so
    `alphabet="0123456789"` sorts digits numerically). Characters may repeat.

    ## Prompt
    `Sort: {{text}}`. r1_zero: inside the R1-zero template.

    ## Answer
    The sorted string; metadata `{{"text": text}}`. At most `length` characters.

    ## Rewards
    1.0 when the first non-blank line of the completion (inside <answer> for r1_zero, with the
    format checked), stripped, equals the sorted string, else 0.0.

    ## Arguments
    {_STRING_ARGS}

    ## Example
    ```python
    from textgym.tasks import make_task
    task = make_task("sort", alphabet="0123456789")
    ex = task.example("train", 0)
    assert list(ex.answer) == sorted(ex.metadata["text"]) and task.reward(ex.answer, ex) == 1.0
    ```
    """

    name = "sort"
    description = "Sort the characters of the given string"
    verb = "Sort"

    def transform(self, text):
        return "".join(sorted(text, key=self.alphabet.index))


@register_task("counting")
class CountingTask(_StringTask):
    """Count how often a character occurs in a string.

    ## Description
    A random string and one character of the alphabet (which may occur zero times).

    ## Prompt
    `How many '{char}' in {text}?`. r1_zero: inside the R1-zero template.

    ## Answer
    The count as a number; metadata `{"text": text, "char": char}`. At most `len(str(length))`
    characters.

    ## Rewards
    1.0 when the last number in the completion (inside <answer> for r1_zero, with the format
    checked) equals the count, else 0.0.

    ## Arguments
    - `length=8`: the longest string; `min_length=None` the shortest (None: same as length).
    - `alphabet="abc"`: distinct non-whitespace characters to draw from (small, so counts vary).
    - `seed=0`, `prompt_style="plain"`, `reward=None`.

    ## Example
    ```python
    from textgym.tasks import make_task
    task = make_task("counting")
    ex = task.example("train", 0)
    assert int(ex.answer) == ex.metadata["text"].count(ex.metadata["char"])
    assert task.reward(f"There are {ex.answer}.", ex) == 1.0
    ```
    """

    name = "counting"
    description = "Count the occurrences of a character in a string"

    def __init__(self, length: int = 8, *, min_length: int | None = None, alphabet: str = "abc",
                 seed: int = 0, prompt_style: str = "plain", reward: Any = None):
        super().__init__(length, min_length=min_length, alphabet=alphabet, seed=seed,
                         prompt_style=prompt_style, reward=reward)
        self.answer_chars = "0123456789"
        self.max_answer_chars = len(str(self.length))

    def make_counting(self, text: str, char: str) -> Example:
        return Example(f"How many '{char}' in {text}?", str(text.count(char)), {"text": text, "char": char})

    def sample(self, rng):
        char = self.alphabet[int(rng.integers(len(self.alphabet)))]
        return self.make_counting(self._random_string(rng), char)

    def all_problems(self):
        if len(self.alphabet) * self._space_size() > ENUMERATE_LIMIT:
            return None
        return [self.make_counting(s, c) for s in self._all_strings() for c in self.alphabet]

    def extract(self, text):
        return final_number(text)  # the order every numeric reward reads

    def check(self, answer, example):
        return float(numbers_equal(answer, example.answer))
