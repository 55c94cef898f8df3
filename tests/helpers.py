"""Helpers shared by test files (pytest puts this folder on sys.path)."""

import re
from pathlib import Path

import numpy as np


def assert_same(a, b, where=""):
    """Equal vector-env outputs: nested tuples/dicts, object arrays element by element, other arrays
    with their dtype, plain values with ==."""
    if isinstance(a, tuple):
        assert isinstance(b, tuple) and len(a) == len(b), where
        for k, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{k}]")
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, np.ndarray) and a.dtype == object:
        assert isinstance(b, np.ndarray) and b.dtype == object and a.shape == b.shape, where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b, err_msg=where)
        assert a.dtype == b.dtype, f"{where}: {a.dtype} != {b.dtype}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


# -- the README's code, for the tests that run it word for word -----------------------------------------

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"```(\w*)\n(.*?)```", re.S)


def readme_section(heading):
    """The README's text under the line `heading` ("### Add a task"), up to the next heading of any level
    (a line starting with "#" and a space, outside code blocks); an AssertionError if there is no such line."""
    lines = README.read_text().splitlines(keepends=True)
    assert heading + "\n" in lines, f"README.md has no heading {heading!r}"
    start = lines.index(heading + "\n") + 1
    fenced = False
    for end in range(start, len(lines)):
        if lines[end].startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", lines[end]):
            break
    else:
        end = len(lines)
    return "".join(lines[start:end])


def code_blocks(text, language):
    """The bodies of the fenced blocks of `language` ("python", "toml", "bash") in `text`, in order."""
    return [body for lang, body in FENCE.findall(text) if lang == language]


# A user's task module, as a test writes it to disk: `Echo` says a word over "ab" back.
ECHO_TASK_MODULE = '''
import itertools
from textgym import Example, Task

class Echo(Task):
    """Say a word back."""
    name, description, answer_chars = "echo", "say a word back", "ab"

    def __init__(self, length=2, **kwargs):
        super().__init__(**kwargs)
        self.length = self.max_answer_chars = length

    def all_problems(self):
        for letters in itertools.product(self.answer_chars, repeat=self.length):
            yield Example("Say: " + "".join(letters), "".join(letters))
'''
