r"""math_equal against a table of labelled answer pairs, each label what a careful grader would say.

Rows: equal forms (fractions, decimals, percent, LaTeX, units, separators, sets, intervals,
scientific notation, negatives, `x = 5`), different answers, and adversarial forms (equations
whose left side is no single symbol, exponent towers, Python's `**`, unfinished expressions, empty
text, '∞', prose). Forms a grader could read two ways (a mixed number "2\frac{1}{2}", "50%" vs
"0.5", "1/3" vs "0.333333", two-letter words, "i" as the imaginary unit or an index, "2e-3" as 0.002 or
2e - 3) are left out rather than guessed.
"""

import os

import pytest

from textgym.rewards import math_equal

if os.environ.get("CI"):  # CI installs the `math` extra: a missing package must fail there, not skip
    import math_verify  # noqa: F401
else:
    pytest.importorskip("math_verify")

EQUAL = [
    # fractions and decimals
    ("0.5", "1/2"), (r"\frac{1}{2}", "0.5"), (r"\dfrac{3}{4}", "0.75"), (r"\tfrac{1}{4}", "0.25"), ("2/4", "1/2"),
    (r"-\frac{1}{2}", "-0.5"), (r"\frac{-1}{2}", "-0.5"), ("-1/2", r"\frac{-1}{2}"), ("0.125", r"\frac{1}{8}"),
    ("1.50", "1.5"), ("3.0", "3"), (".5", "0.5"), (r"\frac{6}{8}", r"\frac{3}{4}"), (r"\frac{10}{4}", "2.5"),
    (r"\frac{7}{2}", "3.5"), (r"\frac12", "0.5"), ("4/6", r"\frac{2}{3}"), ("0.2", r"\frac{1}{5}"),
    ("10/3", r"\frac{10}{3}"), (r"\frac{3}{1}", "3"),
    # repeating decimals
    (r"0.\overline{3}", "1/3"), (r"0.1\overline{6}", r"\frac{1}{6}"), (r"0.\overline{142857}", r"\frac{1}{7}"),
    # percent and degrees
    (r"50\%", "50"), ("50%", "50"), (r"12.5\%", "12.5"), (r"90^\circ", "90"), (r"90^{\circ}", "90"),
    # square roots
    (r"\sqrt{8}", r"2\sqrt{2}"), (r"\sqrt{2}/2", r"\frac{\sqrt{2}}{2}"), (r"\frac{1}{\sqrt{2}}", r"\frac{\sqrt{2}}{2}"),
    (r"\sqrt{12}", r"2\sqrt{3}"), (r"\sqrt{4}", "2"), (r"3\sqrt{3}", r"\sqrt{27}"), (r"\sqrt{\frac{1}{4}}", r"\frac{1}{2}"),
    (r"\sqrt[3]{27}", "3"), (r"\frac{\sqrt{3}}{3}", r"\frac{1}{\sqrt{3}}"), (r"\sqrt{50}", r"5\sqrt{2}"),
    # pi
    (r"2\pi", r"\pi \cdot 2"), (r"\frac{\pi}{2}", r"\pi/2"), (r"\pi", "π"), (r"4\pi", r"4 \pi"),
    (r"\frac{3\pi}{4}", r"0.75\pi"), (r"\pi r^2", r"r^2 \pi"), (r"\frac{\pi}{6}", r"\frac{1}{6}\pi"),
    # units after the value
    (r"5\text{ cm}", "5"), ("18 dollars", "18"), (r"12 \text{ inches}", "12"), (r"\$18", "18"),
    ("7 square meters", "7"), (r"3.5\text{ hours}", "3.5"), (r"\frac{1}{2}\text{ cup}", "0.5"),
    # thousands separators
    ("1,000", "1000"), ("1,000,000", "1000000"), ("12,345.5", "12345.5"), ("1{,}000", "1000"), ("-1,500", "-1500"),
    # sets, intervals, tuples
    (r"\{1,2\}", r"\{2,1\}"), ("[1,2)", "[1, 2)"), (r"(-\infty, 3]", r"(-\infty,3]"),
    (r"(-\infty,0)\cup(1,\infty)", r"(1,\infty)\cup(-\infty,0)"), (r"\{1, 2, 3\}", r"\{3, 2, 1\}"),
    (r"\left[0, 1\right]", "[0,1]"), (r"(\frac{1}{2}, 3)", "(0.5, 3)"), (r"\{-1, 1\}", r"\{1, -1\}"),
    # scientific notation
    ("1e3", "1000"), ("1.5e3", "1500"), (r"2.5 \times 10^{3}", "2500"), ("1E-2", "0.01"), (r"3 \cdot 10^{2}", "300"),
    ("6.02e23", r"6.02 \times 10^{23}"), ("1e3", "10^3"), (r"1 \times 10^{6}", "1,000,000"),
    # negative numbers
    ("-5", "-5.0"), ("−5", "-5"), ("-0.5", r"-\frac{1}{2}"), ("- 3", "-3"), ("(-3)", "-3"), ("-7", "-(7)"),
    # x = 5 forms
    ("x = 5", "5"), ("x=5", "5"), ("y = -2", "-2"), (r"a = \frac{1}{2}", "0.5"), (r"\theta = 30", "30"),
    ("x_1 = 5", "5"), ("n = 12", "12"), ("k=3", "3"), ("x = 2 + 3", "5"), ("5", "x = 5"), ("y = 2x+1", "2x+1"),
    # powers and other exact values
    ("2^{10}", "1024"), ("10^3", "1000"), ("3^2", "9"), ("3**2", "9"), ("2**10", "1024"), (r"\binom{5}{2}", "10"),
    ("5!", "120"), ("|-3|", "3"), (r"\log_2 8", "3"), (r"\ln(e^2)", "2"), ("e^0", "1"), ("2^{-1}", "0.5"),
    (r"\left(\frac{1}{2}\right)^2", r"\frac{1}{4}"), (r"\frac{2^{3}}{4}", "2"), (r"(\sqrt{2})^2", "2"),
    # formulas
    ("2x+1", "1+2x"), ("x^2-1", "(x-1)(x+1)"), ("x^2+2x+1", "(x+1)^2"), ("2(x+1)", "2x+2"), (r"\frac{x}{2}", "0.5x"),
    (r"x \cdot y", "yx"), ("a^2 - b^2", "(a-b)(a+b)"), (r"\sin^2 x + \cos^2 x", "1"), (r"\frac{x^2-1}{x-1}", "x+1"),
    ("2x+1", "1 + 2*x"), ("(x+1)^3", "x^3+3x^2+3x+1"), (r"\frac{1}{x} + \frac{1}{y}", r"\frac{x+y}{xy}"),
    (r"e^{x^2}", r"e^{x \cdot x}"), ("(x^2+1)^2", "x^4+2x^2+1"), (r"\frac{a}{b}", r"a \div b"),
    # matrices and multiple choice
    (r"\begin{pmatrix} 1/2 \\ 2 \end{pmatrix}", r"\begin{pmatrix} 0.5 \\ 2 \end{pmatrix}"),
    (r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}", r"\begin{pmatrix} 1 & 2 \\ 3 & 4.0 \end{pmatrix}"),
    (r"\text{(C)}", "(C)"),
    # infinity
    ("∞", r"\infty"), ("-∞", r"-\infty"), (r"\infty", r"+\infty"),
    # spacing only
    ("(1, 2)", "(1,2)"), (r"\frac{1}{2}", r"\frac {1} {2}"),
]

DIFFERENT = [
    ("1/3", "0.33"), (r"\frac{1}{2}", r"\frac{1}{3}"), ("2", "3"), ("-5", "5"), ("0.5", "0.05"), ("1,000", "100"),
    ("1,2", "12"), ("x+1", "x+2"), ("2x", "x^2"), (r"\sqrt{2}", "1.41"), (r"\pi", "3.14"), ("[1,2)", "(1,2)"),
    ("[1,2]", "[1,2)"), (r"\{1,2\}", r"\{1,3\}"), ("x = 5", "6"), ("5", "50"), ("1000", "1e4"), ("1e3", "100"),
    ("0", "1"), ("-0.5", "0.5"), ("x^2-1", "(x-1)^2"), (r"\sqrt{8}", r"3\sqrt{2}"), (r"2\pi", r"\pi"),
    (r"\frac{\pi}{2}", r"\frac{\pi}{3}"), (r"(-\infty, 3]", r"(-\infty, 3)"), ("2x+1", "2x+7"), ("12", "21"),
    ("0.1", "0.01"), ("1/2", "2"), ("100", "10^3"), (r"\infty", r"-\infty"), ("1.5", "15"), (r"\sin x", r"\cos x"),
    ("a+b", "a-b"), ("xy", "x+y"), ("1e-9", "0"), ("0.0000001", "0"), (r"2.5 \times 10^{3}", "250"),
    (r"0.\overline{3}", "0"), (r"0.\overline{3}", "0.3"), ("12345678901234567891", "12345678901234567890"),
    ("5 5", "10"), (r"\frac{1}{2}", "2"), ("(x+1)^2", "x^2+1"), ("-3", "3"), (r"\sqrt{-1}", "1"),
    ("x = 5", "-5"), ("2^{10}", "1000"), ("5!", "100"), (r"\binom{5}{2}", "20"), ("x", "y"), ("2", "x"),
    (r"\frac{x^2-1}{x-1}", "x-1"), ("99", "100"), ("0.999", "1"),
    (r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", r"\begin{pmatrix} 2 \\ 1 \end{pmatrix}"), (r"\text{(A)}", r"\text{(C)}"),
    (r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}", r"\begin{pmatrix} 1 & 2 \\ 3 & 5 \end{pmatrix}"),
    # equations are not answers unless the left side is a single symbol
    ("2x = 6", "6"), ("2x = 6", "3"), ("x + 1 = 4", "4"), ("x + 1 = 4", "3"), ("f(x) = 5", "5"), ("3 + 4 = 7", "7"),
    ("1 + 1 = 2", "2"), ("2 = 2", "2"), (r"\frac{x}{2} = 3", "3"), ("x^2 = 4", "4"), ("x y = 6", "6"),
    # exponent towers and Python's **
    ("2**100**100", "2"), (r"2^{100^{100}}", "2"), (r"9^{9^{9}}", "9"), (r"x^{x^{x}}", "x"), (r"10^{10^{10}}", "10"),
    ("3**2", "3"), ("2**10", "2"), ("9**9**9**9", "9"), ("(a+b+c+d)^{100}", "5"), (r"(x+1)^{100}", "x+1"),
    # unfinished or malformed
    ("9 +", "9"), ("5*", "5"), ("1/", "1"), ("=5", "5"), ("2 =", "2"), (r"\frac{1}{", "1"), (r"\sqrt{", "2"),
    ("(5", "5"), ("5)", "5"), ("x=", "5"), ("1,2,", "1.2"), ("3 -", "3"), (r"3 \times", "3"), ("7^", "7"),
    ("5..", "5.5"), ("*5", "5"), ("/2", "2"),
    # empty
    ("", "5"), ("   ", "5"), ("5", ""), ("$$", "5"), ("$", "5"),
    # infinity and prose
    ("∞", "5"), ("∞", r"-\infty"), ("yes", "sey"), ("hello", "world"), ("the answer", "5"), ("I don't know", "5"),
    ("1 if 1 else 0", "1"), ("five", "four"), ("__import__('os').getcwd()", "0"), ("x" * 2000, "x"),
]


@pytest.mark.parametrize("pred, ref", EQUAL)
def test_equal_forms(pred, ref):
    assert math_equal(pred, ref) is True
    assert math_equal(ref, pred) is True  # a grader's "same value" does not depend on which side is the reference


@pytest.mark.parametrize("pred, ref", DIFFERENT)
def test_different_and_adversarial_answers(pred, ref):
    assert math_equal(pred, ref) is False


def test_the_table_is_large_enough():
    assert len(EQUAL) + len(DIFFERENT) >= 200
    assert len(set(EQUAL + DIFFERENT)) == len(EQUAL + DIFFERENT)  # no row counted twice
