"""Answer extraction: pull the answer out of a completion, kept apart from scoring it.

Every extractor takes the completion text and returns the answer as a string, or None when the
completion holds nothing of that shape (so a reward can tell "no answer" from "wrong answer").
`final_answer` and `final_number` hold the one order in which every answer-checking reward reads a
completion. Every extractor runs in time linear in the text's length (model output is untrusted:
a 200,000-character completion of repeated tags costs milliseconds).
"""

from __future__ import annotations

import re
from fractions import Fraction

__all__ = [
    "answer_tag", "boxed", "gsm8k_answer", "last_number", "numbers", "first_line", "parse_number", "numbers_equal",
    "final_answer", "final_number", "ends_open", "EXTRACTORS",
]

_OPEN, _CLOSE = "<answer>", "</answer>"

# A number is a run of digits (optionally grouped "1,000" and with a decimal part), never the tail
# of a longer digit run or word. A minus sign counts only when it is not a binary minus ("12-7").
_NUMBER = re.compile(r"(?:(?<![\w)\]])-)?(?<![\d.,])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\d,]\d)")

_GROUPED = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d*)?")

# Longer literals are refused: Fraction() of a 10^5-digit string is slow and never a real answer.
_MAX_NUMBER_CHARS = 100


def answer_tag(text: str) -> str | None:
    """The stripped content of the last `<answer>...</answer>` pair, or None.

    Pairs are read left to right, each from an opening tag to the first closing tag after it (a
    regex `<answer>(.*?)</answer>` reads the same, but in time quadratic in the number of tags).
    """
    found, start = None, text.find(_OPEN)
    while start >= 0:
        end = text.find(_CLOSE, start + len(_OPEN))
        if end < 0:
            break  # no later opening tag has a closing tag after it either
        found = text[start + len(_OPEN) : end]
        start = text.find(_OPEN, end + len(_CLOSE))
    return found.strip() if found is not None else None


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


# An operator still waiting for its right operand: a text that ends on one was cut off mid-expression.
_OPEN_OPERATORS = ("+", "-", "*", "/", "^", "=", "(", "×", "÷", "−", "·", "±", "\\times", "\\cdot", "\\div", "\\pm")


def ends_open(text: str) -> bool:
    """Whether the text stops on an operator that waits for an operand ("so 9 + ", "3 \\times"): unfinished."""
    return text.rstrip().endswith(_OPEN_OPERATORS)


def _final(text: str) -> tuple[str, bool] | None:
    """(the final answer, whether it follows a "####" marker), in the order `final_answer` states."""
    region = answer_tag(text)
    tagged = region is not None
    if not tagged:
        region = text
    answer = boxed(region)
    marker = False
    if answer is None and "####" in region:
        tail = region.rsplit("####", 1)[1].strip()
        answer = tail.splitlines()[0].strip() if tail else None
        marker = bool(answer)
        answer = answer or None
    if answer is None:
        if tagged:
            answer = region
        elif not ends_open(region):
            answer = last_number(region)
    if answer is None or ends_open(answer):
        return None
    return answer, marker


def final_answer(text: str) -> str | None:
    r"""The final answer of a completion, read in the one order every answer-checking reward uses.

    1. Inside the last `<answer>...</answer>` when there is one; steps 2 and 3 then read inside
       the tags, and without a box or marker there the answer is the tags' whole content.
    2. Else the content of the last `oxed{}` (or `box{}`).
    3. Else the first line after the last "####" (the GSM8K marker).
    4. Else the last number of the text.

    None when there is no answer, or when it stops on an open operator ("... 9 + ": a reply cut off
    mid-expression is unfinished, whatever its last number). `final_number` reads a number from it.
    """
    found = _final(text)
    return None if found is None else found[0]


def final_number(text: str) -> str | None:
    r"""The number `final_answer` gives: its last number, or after "####" its first (as GSM8K writes it).

    "oxed{18} dollars a day, i.e. 126 per week" gives "18"; "#### 1,018" gives "1018"; "3 + 4 ="
    gives None (it stops on an open operator).
    """
    found = _final(text)
    if found is None:
        return None
    answer, marker = found
    return gsm8k_answer("####" + answer) if marker else last_number(answer)


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
