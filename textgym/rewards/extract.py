"""Answer extraction: pull the answer out of a completion, kept apart from scoring it.

Every extractor takes the completion text and returns the answer as a string, or None when the
completion holds nothing of that shape (so a reward can tell "no answer" from "wrong answer").
"""

from __future__ import annotations

import re
from fractions import Fraction

__all__ = [
    "answer_tag", "boxed", "gsm8k_answer", "last_number", "numbers", "first_line", "parse_number", "numbers_equal", "EXTRACTORS",
]

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)

# A number is a run of digits (optionally grouped "1,000" and with a decimal part), never the tail
# of a longer digit run or word. A minus sign counts only when it is not a binary minus ("12-7").
_NUMBER = re.compile(r"(?:(?<![\w)\]])-)?(?<![\d.,])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\d,]\d)")

_GROUPED = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d*)?")

# Longer literals are refused: Fraction() of a 10^5-digit string is slow and never a real answer.
_MAX_NUMBER_CHARS = 100


def answer_tag(text: str) -> str | None:
    """The stripped content of the last `<answer>...</answer>` pair, or None."""
    found = _ANSWER_TAG.findall(text)
    return found[-1].strip() if found else None


def boxed(text: str) -> str | None:
    r"""The content of the last `\boxed{...}` or `\fbox{...}` (nested braces allowed), or None.

    `\boxed 5` (no braces, as some MATH solutions write it) gives the word after it. An unclosed
    brace gives None.
    """
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    rest = text[start + (6 if text.startswith("\\boxed", start) else 5) :]
    if rest.startswith(" "):
        word = rest.split(None, 1)
        return word[0].rstrip("$.") if word else None
    if not rest.startswith("{"):
        return None
    depth = 0
    for j, ch in enumerate(rest):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return rest[1:j].strip()
    return None


def gsm8k_answer(text: str) -> str | None:
    """The final answer of a GSM8K-style solution: the number after the last "####", commas dropped.

    "... so she has 18 left.\n#### 1,018" gives "1018". None without "####"; the text after it
    as written (stripped, first line) when it holds no number.
    """
    if "####" not in text:
        return None
    tail = text.rsplit("####", 1)[1].strip()
    line = tail.splitlines()[0].strip() if tail else ""
    found = _NUMBER.search(line.replace("$", ""))
    if found is None:
        return line or None
    number = found.group(0)
    return number.replace(",", "") if _GROUPED.fullmatch(number) else number


def numbers(text: str) -> list[str]:
    """Every number written in the text, in order, as written ("1,000", "-3", "7.5")."""
    return _NUMBER.findall(text)


def last_number(text: str) -> str | None:
    """The last number written in the text, as written ("1,000", "-3", "7.5"), or None."""
    found = numbers(text)
    return found[-1] if found else None


def first_line(text: str) -> str | None:
    """The first non-blank line, stripped, or None for blank text."""
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return None


def parse_number(text: str | None) -> Fraction | None:
    """Exact value of a number written loosely: "1,000", " 7.0", "7.", "+3", "-2.50". None if not one
    ("1,2" is a list, not twelve).

    Exact fractions, not floats, so "12345678901234567891" is not equal to its neighbour.
    """
    if text is None:
        return None
    s = text.strip().rstrip(".")
    if s.isdigit() and s.isascii() and len(s) <= _MAX_NUMBER_CHARS:  # the common case, without the regexes
        return Fraction(int(s))
    if _GROUPED.fullmatch(s):  # "1,000" but not "1,2" (a list) nor "12,34"
        s = s.replace(",", "")
    if not s or len(s) > _MAX_NUMBER_CHARS or not re.fullmatch(r"[+-]?(\d+(\.\d*)?|\.\d+)", s):
        return None
    return Fraction(s)


def numbers_equal(a: str | None, b: str | None) -> bool:
    """True when both strings are numbers of the same value."""
    x, y = parse_number(a), parse_number(b)
    return x is not None and y is not None and x == y


# By name, for loaders and tools that take an extractor as a string ("gsm8k", "boxed", ...).
EXTRACTORS = {
    "answer_tag": answer_tag,
    "boxed": boxed,
    "gsm8k": gsm8k_answer,
    "last_number": last_number,
    "first_line": first_line,
}
