r"""The one order in which answer-checking rewards read a completion, unfinished replies, and linear time.

Order: <answer> tags -> \boxed{} -> "####" -> last number (`extract.final_answer`); a reply that
stops on an open operator is unfinished and answers nothing. Every extractor and reward runs in
time linear in the completion's length: 200,000 characters of repeated tags cost milliseconds
(the `<answer>(.*?)</answer>` regex took over a minute).
"""

import time

import pytest

from textgym.rewards import (
    boxed_math, contains, exact_match, gsm8k, math_equiv, numeric_match, partial_credit, r1_format, r1_zero,
)
from textgym.rewards.extract import (
    answer_tag, boxed, ends_open, final_answer, final_number, first_line, gsm8k_answer, last_number, numbers,
    parse_number,
)
from textgym.rewards.builtin import is_r1_format
from textgym.tasks import Example, make_task

# (completion, final_answer, final_number)
ORDER = [
    (r"\boxed{18} dollars a day, i.e. 126 per week", "18", "18"),  # the box wins over later numbers
    (r"<answer>7</answer> and then \boxed{8}", "7", "7"),  # the tags win over a box outside them
    (r"<answer>\boxed{7} or 8</answer>", "7", "7"),  # inside the tags, a box wins
    ("<answer>it is 42 apples</answer>", "it is 42 apples", "42"),  # inside the tags, no box: their content
    ("so \\boxed{5}\n#### 6", "5", "5"),  # a box wins over "####"
    ("so 12 - 2 = 10\n#### 1,010", "1,010", "1010"),
    ("#### 18 wait, no: 19", "18 wait, no: 19", "18"),  # after "####", its first number
    ("<answer>#### 3</answer> 4", "3", "3"),  # "####" inside the tags
    ("3 + 4 = 7. The answer is 7.", "7", "7"),  # no marker at all: the last number
    ("I think 5\n####", "5", "5"),  # an empty marker is no answer: the last number
    ("no number here", None, None),
    ("", None, None),
    ("<answer></answer>", "", None),
    # unfinished: the text (or the answer read) stops on an open operator
    ("so the total is 9 + ", None, None),
    ("... 9 +", None, None),
    ("3 \\times", None, None),
    ("4 * 3 =", None, None),
    ("the answer is 5 -", None, None),
    ("it is 2^", None, None),
    ("that makes 7 (", None, None),
    ("12 ÷", None, None),
    ("<answer>9 +</answer>", None, None),
    ("\\boxed{9+}", None, None),
    ("#### 9 +", None, None),
    ("<answer>9</answer> and 3 +", "9", "9"),  # the tags closed: the answer was finished
]


@pytest.mark.parametrize("completion, answer, number", ORDER)
def test_final_answer_and_number(completion, answer, number):
    assert final_answer(completion) == answer
    assert final_number(completion) == number


@pytest.mark.parametrize("text, is_open", [
    ("9 +", True), ("9 + ", True), ("9 +\n\n", True), ("x =", True), ("a / ", True), ("2 −", True), ("5 \\cdot", True),
    ("9", False), ("9 + 1", False), ("x = 5", False), ("50%", False), ("(1, 2)", False), ("", False),
])
def test_ends_open(text, is_open):
    assert ends_open(text) is is_open


@pytest.mark.parametrize("reward", [numeric_match, gsm8k, math_equiv], ids=lambda r: r.__name__)
@pytest.mark.parametrize("completion, answer, number", ORDER)
def test_every_numeric_reward_reads_the_same_answer(reward, completion, answer, number):
    """Each pays exactly when what the order reads is the reference: numeric_match and gsm8k its
    number, math_equiv the answer itself (so prose around the number is not a math answer)."""
    read = number if reward is not math_equiv or parse_number(answer) is not None else None
    for reference in ["18", "7", "42", "5", "1010", "3", "9", "126", "19", "6", "8"]:
        assert reward(completion, Example("q", reference)) == float(read == reference)


def test_the_issue_cases():
    eighteen, nine = Example("q", "18"), Example("q", "9")
    for reward in (numeric_match, gsm8k, math_equiv):
        assert reward(r"\boxed{18} dollars a day, i.e. 126 per week", eighteen) == 1.0  # gsm8k paid 0
        assert reward("so the total is 9 + ", nine) == 0.0  # gsm8k and numeric_match paid 1


def test_boxed_math_stays_strict_and_refuses_unfinished_boxes():
    half = Example("q", r"\frac{1}{2}")
    assert boxed_math(r"\boxed{0.5}", half) == 1.0
    assert boxed_math("0.5", half) == 0.0  # no box, no reward (MATH grading)
    assert boxed_math(r"\boxed{9+}", Example("q", "9")) == 0.0  # math-verify read "9+" as 9


@pytest.mark.parametrize("name, op, solve", [("addition", "+", int.__add__), ("multiplication", "*", int.__mul__)])
def test_arithmetic_tasks_read_the_final_number(name, op, solve):
    task = make_task(name)
    ex = Example(f"What is 3 {op} 4?", str(solve(3, 4)), {"a": 3, "b": 4})
    assert task.reward(f"\\boxed{{{ex.answer}}} since 3 {op} 4", ex) == 1.0  # the last number, 4, was read
    assert task.reward(f"3 {op} 4 = {ex.answer}", ex) == 1.0
    a = 0 if op == "+" else 1  # the question's answer is its second number
    echo = Example(f"What is {a} {op} 4?", "4", {"a": a, "b": 4})
    assert task.reward(f"{a} {op} 4 =", echo) == 0.0  # an unfinished echo of the question was paid 1


def test_comparison_keeps_its_own_reading():
    task = make_task("comparison")
    ex = Example("Which is larger: 37 or 52?", "52", {"a": 37, "b": 52})
    assert task.reward("52 is larger than 37", ex) == 1.0
    assert task.reward("37 or 52.", ex) == 0.0


# -- linear time -----------------------------------------------------------------------------------

N = 200_000
SHAPES = {
    "open tags": "<answer>" * (N // 8),
    "open boxes": "\\boxed{" * (N // 7),
    "markers": "####" * (N // 4),
    "spaces then x": " " * N + "x",
    "think then spaces": "</think>" + " " * N + "x",
    "think-answer pairs": "</think><answer>" * (N // 16),
    "closed tags then text": "<answer>a</answer>x" * (N // 19),
    "closing tags": "</answer> " * (N // 10),
    "digit groups": "1," * (N // 2),
    "digits": "1" * N,
    "minus signs": "-" * N,
    "open sums": "9 + " * (N // 4),
    "nested braces": "\\boxed{" + "{" * N,
    "tag then spaces": "<answer>" + " " * N,
    "answer with spaces": ("<answer>" + " " * 100) * (N // 108),
}
EXTRACTORS = [answer_tag, boxed, gsm8k_answer, last_number, numbers, first_line, final_answer, final_number, is_r1_format]
REWARDS = [numeric_match, gsm8k, math_equiv, boxed_math, r1_zero, r1_format, exact_match, partial_credit, contains]


@pytest.mark.parametrize("shape", SHAPES)
def test_extraction_and_rewards_take_linear_time(shape):
    text = SHAPES[shape]
    example = Example("q", "7")
    for fn in EXTRACTORS + REWARDS:
        start = time.process_time()  # CPU time: a busy machine must not fail it, only a slow algorithm
        fn(text) if fn in EXTRACTORS else fn(text, example)
        elapsed = time.process_time() - start
        # a bound, not a speed target: each takes milliseconds; the quadratic regexes took > 60 s
        assert elapsed < 5, f"{fn.__name__} took {elapsed:.1f} s on {shape!r}"


@pytest.mark.parametrize("text, expected", [
    ("<answer>a <answer>b</answer>", "a <answer>b"),  # as the regex read it: from the first opening tag
    ("<answer>a</answer> </answer>", "a"),
    ("<answer>1</answer><answer>2</answer>", "2"),
    ("<answer>1</answer><answer>2", "1"),
])
def test_answer_tag_reads_as_the_regex_did(text, expected):
    assert answer_tag(text) == expected


@pytest.mark.parametrize("completion, fmt", [
    ("r </think> <answer>7</answer>", True), ("<think>r</think>\n<answer>7</answer> \n", True),
    ("r </think> <answer>7</answer> x", False), ("r </think> x <answer>7</answer>", False),
    ("r </think> <answer>a</answer> <answer>b</answer>", False), ("r </think> <answer>a <answer>b</answer>", False),
    ("r </think><answer></answer>", True), ("</think> <answer>7</answer></answer>", True), ("<answer>7</answer>", False),
])
def test_r1_format_reads_as_the_regex_did(completion, fmt):
    assert is_r1_format(completion) is fmt


# -- the comparison task's claim reader: the same answers, in linear time ---------------------------

def claimed_larger_by_regex(text):
    """The reader before it was made linear (regexes searched over the text before each claim)."""
    import re

    from textgym.rewards.extract import numbers, parse_number

    num, more, less = r"(-?\d+(?:\.\d+)?)", r"(?:larger|bigger|greater|higher)", r"(?:smaller|less|lower)"
    slow = [
        (re.compile(rf"{num}\s+is\s+(?:the\s+)?{more}\b", re.IGNORECASE), 1),
        (re.compile(rf"{num}\s+is\s+(?:the\s+)?{less}(?:\s+number|\s+one)?\s+than\s+{num}", re.IGNORECASE), 2),
        (re.compile(rf"\b(?:the\s+)?{more}(?:\s+number|\s+one)?\s+is\s+{num}", re.IGNORECASE), 1),
        (re.compile(rf"{num}\s*>\s*{num}"), 1),
        (re.compile(rf"{num}\s*<\s*{num}"), 2),
    ]
    before = re.compile(r"-?\d+(?:\.\d+)?\s*(?:,|/|\bor\b|\band\b)\s*$", re.IGNORECASE)
    after = re.compile(r"^\s*(?:,|/|\bor\b|\band\b)\s*-?\d", re.IGNORECASE)
    claims = []
    for pattern, g in slow:
        for m in pattern.finditer(text):
            start, end = m.span(g)
            if not (before.search(text, 0, start) or after.match(text[end:])):
                claims.append((m.start(), m.group(g)))
    if claims:
        return max(claims)[1]
    found = numbers(text)
    return found[-1] if len({parse_number(n) for n in found}) == 1 else None


NUMBERS = ["5", "52", "37", "-37", "1.5", ".5", "5.", "12-7"]
WORDS = ["is larger", "is larger than", "is smaller than", "is the smaller one than", "the larger is",
         "the larger number is", "is Bigger", "or", "OR", "and", "for", "band", ",", "/", ">", "<", "-", ".", "x", "_"]


def test_comparison_reads_claims_as_before():
    from hypothesis import given, settings, strategies as st

    from textgym.tasks.arithmetic import claimed_larger

    gap = st.sampled_from(["", " ", " ", "  ", "\n"])

    @settings(max_examples=3000, deadline=None, derandomize=True)
    @given(st.lists(st.tuples(st.sampled_from(NUMBERS), gap, st.sampled_from(WORDS), gap), max_size=6))
    def same(parts):
        text = "".join("".join(part) for part in parts)
        assert claimed_larger(text) == claimed_larger_by_regex(text), text

    same()
    for text in ["52 is larger than 37", "37 is smaller than 52", "the larger is 66 or 90", "16 or 95 is larger",
                 "66 or90 is larger", "52or 37 is larger", "the larger number is 52, 37", "52 > 37", "37 < 52 and 3",
                 "the larger is 52 or -37", ".5 is larger than 3", "the larger is 52 or5", "the larger is 52 / 37",
                 "12-7 is larger", "1.5.3 is larger", "the larger is 52 AND 37", "16 and\n95 is larger"]:
        assert claimed_larger(text) == claimed_larger_by_regex(text), text


@pytest.mark.parametrize("text", [
    "1" * N, "5 is larger " * (N // 12), "1 or " * (N // 5), "1" * N + " is larger", "the larger is " * (N // 14),
    ("1" * 100 + " ") * (N // 101), "9 > " * (N // 4),
])
def test_comparison_reads_claims_in_linear_time(text):
    from textgym.tasks.arithmetic import claimed_larger

    start = time.process_time()  # CPU time: a busy machine must not fail it, only a slow algorithm
    claimed_larger(text)
    assert time.process_time() - start < 5  # "1" * 20,000 took 220 s, "5 is larger " * 8,000 85 s
