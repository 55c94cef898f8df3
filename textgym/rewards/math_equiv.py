r"""Are two math answers the same value? ("1/2" vs "\frac{1}{2}" vs "0.5", "2x+1" vs "1+2*x").

Model output is untrusted, so before any symbolic work the two answers pass these steps, in order:

1. Identical up to spacing: equal. Longer than `MAX_CHARS` (1,000): otherwise never equal.
2. Unfinished or malformed ("9 +", "=5", "(5", "5)"): not equal. Scientific notation ("1e3") and
   repeating decimals ("0.\overline{3}") are rewritten as LaTeX both judges read.
3. Both plain numbers ("1,000", "-2.50", "1e3", "2.5 \times 10^{3}", "50\%" as 50): compared
   exactly as fractions, and that is the verdict.
4. Formulas the sympy path can read are built (capped, see below) and screened by
   `math_verify_worker.too_costly`: a number of more than 10,000 digits (towers, factorials), an
   expansion of more than 150 terms (`(a+b+c+d)^{100}` has 176,851), too many nodes or symbols:
   not equal, without any judge's work.
5. Two judges; either one's "equal" is the verdict (each says so only when it is sure):

- math-verify, when installed (`pip install "textgym[math]"`): LaTeX, intervals, sets, units,
  percentages. It reads some text loosely ("3**2" as 3, "5 5" as 10, "0.\overline{3}" as 0, a
  word as a product of letters), so it gets only text that passes a screen: at most 200
  characters, brackets nested at most 8 deep, no `**`, no power of a power, exponents and
  factorial arguments at most 10,000 and the powers' digits at most 10,000 in all, numbers of at
  most 40 digits, no two numbers side by side, no run of three operators, no words but function
  names and units after a number. It parses before it compares, and its parsed expressions pass
  `too_costly` too. An equation against a non-equation is an answer only as `x = value` with a
  single symbol on the left ("x = 5" answers 5; "2x = 6" and "x + 1 = 4" answer nothing). Its own
  timeouts use `signal.alarm`, which works only in a process's main thread: in the main thread it
  runs here with those timeouts on (`TIMEOUT_SECONDS` per parse or comparison); in any other thread
  (where `score()` runs rewards when it has a timeout) it runs in a helper process, in that
  process's main thread with the same timeouts, and the process is killed and replaced if it does
  not answer within `HARD_LIMIT_SECONDS`. These timeouts are the backstop; the screens keep calls far
  below them.
- A small sympy path. It never calls sympy's string parser (it evals): the text is parsed by `ast`
  and only numbers, names, + - * / ** and a few functions are turned into sympy objects, with caps
  on length (200), size of exponents (100) and number of nodes (80), then `too_costly`. Numbers are
  compared to 30 digits; formulas with symbols at fixed rational points (exact arithmetic, then 30
  digits), never with `simplify`, whose time has no bound.

Bound: every call does bounded work in any thread (no step's cost grows without limit with the
input), leaves memory flat, and returned within 1.3 s on a 2-core machine under load 10
(tests/test_math_hostile.py and tests/test_math_table.py, main thread and worker thread alike):
112 hostile answers took 0.3 ms each at the median and 0.6 s at most (one math-verify parse before
`too_costly` refused it); 240 ordinary pairs 10 ms at the median and 1.3 s at most (math-verify's
LaTeX parser). The sympy path alone took 22 ms at most. If anything got past the screens, the
timeouts above still bound it.
"""

from __future__ import annotations

import ast
import atexit
import json
import math
import os
import queue
import re
import subprocess
import sys
import threading
from fractions import Fraction

from textgym.rewards import math_verify_worker
from textgym.rewards.extract import ends_open, parse_number
from textgym.rewards.math_verify_worker import too_costly

__all__ = ["math_equal", "TIMEOUT_SECONDS", "HARD_LIMIT_SECONDS", "MAX_CHARS"]

MAX_CHARS = 1000  # longer answers are equal only when identical: no real final answer is this long
_MAX_CHARS = 200  # the sympy path's limits
_MAX_NODES = 80
_MAX_EXPONENT = 100

TIMEOUT_SECONDS = math_verify_worker.TIMEOUT_SECONDS  # math-verify's own limit for one parse or comparison
HARD_LIMIT_SECONDS = 8.0  # a helper process that has not answered by then is killed (below score()'s default 10 s)
_STARTUP_SECONDS = 120.0  # importing sympy and math-verify in a fresh process on a slow, busy machine

# math-verify's screen (see the module docstring). Parsing time grows fast with nesting: 10
# parentheses deep took 1.3 s, 40 deep over 5 s.
_MATH_VERIFY_MAX_CHARS = 200
_MAX_DEPTH = 8
_MAX_NUMBER_DIGITS = 40
_MAX_POWER = 10_000  # an exponent or a factorial's argument
_MAX_DIGITS = math_verify_worker.MAX_DIGITS
# Words math-verify reads as math; any other run of 3+ letters (not a LaTeX command) is prose.
_FUNCTION_NAMES = frozenset(
    "sin cos tan cot sec csc arcsin arccos arctan sinh cosh tanh log ln exp sqrt pi mod gcd lcm max min det "
    "inf infty".split()
)

_WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{3,}")
_NAMED_GROUP = re.compile(r"\\(?:begin|end|operatorname|mathrm|mathbf|mathit)\{[A-Za-z*]*\}")  # \begin{pmatrix}
_TOKEN = re.compile(r"\d+|\\[A-Za-z]+|.")

_UNICODE = {"∞": r"\infty", "π": r"\pi", "−": "-", "×": r"\times", "÷": r"\div", "·": r"\cdot"}
_E_NOTATION = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?|\.\d+)[eE]([+-]?\d{1,4})(?![\w.])")
_REPEATING = re.compile(r"(?<![\w.])([+-]?)(\d*)\.(\d{0,40})\\overline\{(\d{1,40})\}")
_SCIENTIFIC = re.compile(r"([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*\*\s*10\s*(?:\^|\*\*)\s*\{?\s*([+-]?\d{1,4})\s*\}?")
# Units after a value: words of 3+ letters ("18 dollars", "5 square meters") or \text{...}.
_UNIT = re.compile(
    r"(?<=[\d}).])(?:\s|\\[,;:! ])*(?:[A-Za-z]{3,}(?:\s+[A-Za-z]{3,})*\.?|\\(?:text|mathrm|mbox)\{[^{}]*\})\s*$"
)
_ASSIGNMENT = re.compile(r"\s*(?:[A-Za-z]|\\[A-Za-z]+)(?:_\{?\w+\}?)?\s*")


def _squeeze(s: str) -> str:
    return "".join(s.split())


def _clean(s: str) -> str:
    r"""Unicode operators as LaTeX, "1e3" as "1\times10^{3}", "0.\overline{3}" as "\frac{1}{3}", units dropped."""
    for a, b in _UNICODE.items():
        s = s.replace(a, b)
    s = _E_NOTATION.sub(lambda m: f"{m.group(1)}\\times10^{{{int(m.group(2))}}}", s)

    def fraction(m: re.Match) -> str:
        sign, whole, fixed, cycle = m.groups()
        value = Fraction(int(whole or 0)) + Fraction(int(fixed or 0), 10 ** len(fixed))
        value += Fraction(int(cycle), 10 ** len(fixed) * (10 ** len(cycle) - 1))
        return f"{sign}\\frac{{{value.numerator}}}{{{value.denominator}}}"

    s = _REPEATING.sub(fraction, s)
    return _UNIT.sub("", s)  # "18 dollars", "5 square meters": the unit is not part of the value


def _unfinished(s: str) -> bool:
    """Whether s stops on an open operator, starts with one that needs a left operand, or has unbalanced brackets."""
    t = s.strip().strip("$").strip()
    if not t or ends_open(t) or t.endswith(","):
        return True
    if t[0] in "*/=^,)]}" or t.startswith(("\\times", "\\cdot", "\\div")):
        return True
    round_and_square, curly = 0, 0
    for ch in t:
        if ch in "([":
            round_and_square += 1
        elif ch in ")]":
            round_and_square -= 1
        elif ch == "{":
            curly += 1
        elif ch == "}":
            curly -= 1
            if curly < 0:
                return True
    return round_and_square != 0 or curly != 0  # "[1,2)" mixes kinds; only the counts must match


def _normalize(s: str) -> str:
    s = s.strip().strip("$").strip()
    s = re.sub(r"\\text\{([^{}]*)\}|\\mathrm\{([^{}]*)\}", lambda m: m.group(1) or m.group(2) or "", s)
    for a, b in (("\\left", ""), ("\\right", ""), ("\\!", ""), ("\\,", ""), ("\\;", ""), ("\\ ", ""),
                 ("^\\circ", ""), ("^{\\circ}", ""), ("\\%", ""), ("%", ""), ("\\dfrac", "\\frac"),
                 ("\\tfrac", "\\frac"), ("\\cdot", "*"), ("\\times", "*"), ("\\div", "/"),
                 ("\\pi", "pi"), ("\\infty", "oo"), ("\\ln", "log"), ("\\log", "log")):
        s = s.replace(a, b)
    s = s.rstrip(".").strip()
    if "=" in s:  # "x = 5" answers 5; "2x = 6" and "x + 1 = 4" stay equations, equal to no number
        left, right = s.split("=", 1)
        if _ASSIGNMENT.fullmatch(left):
            s = right.rsplit("=", 1)[-1].strip()  # a chain "x = 2 + 3 = 5" answers its last value
    return s


def _number(text: str) -> Fraction | None:
    r"""The exact value of a plain number ("1,000", "-2.5", "2.5 \times 10^{3}"), else None."""
    s = _normalize(text)
    value = parse_number(s)
    if value is None and len(s) <= 100:
        m = _SCIENTIFIC.fullmatch(s)
        mantissa = parse_number(m.group(1)) if m else None
        if mantissa is not None:
            value = mantissa * Fraction(10) ** int(m.group(2))
    return value


def _power_refusal(s: str) -> str | None:
    """Why the powers and factorials written in s may denote huge numbers (or parse slowly), or None."""
    open_of: dict[int, int] = {}
    close_of: dict[int, int] = {}
    stack: list[int] = []
    for i, ch in enumerate(s):
        if ch in "([{":
            stack.append(i)
            if len(stack) > _MAX_DEPTH:
                return "brackets nested too deep"
        elif ch in ")]}" and stack:
            j = stack.pop()
            open_of[i], close_of[j] = j, i

    def bound(text: str) -> int:
        """An upper bound of the value written in text: the product of its integers (1 when none)."""
        value = 1
        for literal in re.findall(r"\d+", text):
            value *= max(1, int(literal))
            if value > _MAX_POWER:
                return _MAX_POWER + 1
        return value

    total = 0.0
    for i, ch in enumerate(s):
        if ch not in "^!" or s.startswith("!=", i):
            continue
        j = i - 1
        while j >= 0 and s[j] == " ":
            j -= 1
        if j >= 0 and j in open_of:  # a bracketed base: (x+1)^2, \sqrt{2}^3, (2n)!
            first = open_of[j]
        else:
            first = j
            while first > 0 and (s[first - 1].isdigit() or s[first - 1] == "."):
                first -= 1
        base = s[max(first, 0) : j + 1]
        if "^" in base or s[:max(first, 0)].rstrip().endswith("^"):
            return "a power of a power"
        if ch == "!":
            n = bound(base)
            if n > _MAX_POWER:
                return "a factorial too large"
            total += n * max(1.0, math.log10(n))
            continue
        k = i + 1
        while k < len(s) and s[k] == " ":
            k += 1
        if k < len(s) and k in close_of:
            exponent = s[k : close_of[k] + 1]
        else:
            m = _TOKEN.match(s, k)
            exponent = m.group(0) if m else ""
        if "^" in exponent:
            return "a power of a power"
        n = bound(exponent)
        if n > _MAX_POWER:
            return "an exponent too large"
        total += max(1, sum(len(d) for d in re.findall(r"\d+", base))) * n
    if total > _MAX_DIGITS:
        return "powers too large"
    if ("binom" in s or "choose" in s) and bound(s) > _MAX_POWER:  # math-verify computes binomials as it parses
        return "a binomial too large"
    return None


def _math_verify_refusal(s: str) -> str | None:
    """Why s is not given to math-verify (see the module docstring), or None."""
    if len(s) > _MATH_VERIFY_MAX_CHARS:
        return "too long"
    if "**" in s:
        return "Python's ** (math-verify reads 3**2 as 3)"
    if re.search(r"\d{%d}" % (_MAX_NUMBER_DIGITS + 1), s):
        return "a number too long"
    if re.search(r"(?<![\d_^])\d+\s+\d", s):  # "5 5" (read as 10), not "\log_2 8"
        return "two numbers side by side"
    if re.search(r"[-+*/]\s*[-+*/]\s*[-+*/]", s):
        return "a run of operators"
    if "\\overline" in s or "\\bar" in s:
        return "a repeating decimal"
    for word in _WORD.findall(_NAMED_GROUP.sub("", s)):
        if word not in _FUNCTION_NAMES:
            return f"the word {word!r}"
    return _power_refusal(s)


def _latex_to_python(s: str) -> str:
    # \frac{a}{b} -> ((a)/(b)) and \sqrt{a} -> sqrt(a); repeated to unwrap nesting from inside out.
    for _ in range(10):
        t = re.sub(r"\\frac\{([^{}]*)\}\{([^{}]*)\}", r"((\1)/(\2))", s)
        t = re.sub(r"\\frac(\d)(\d)", r"((\1)/(\2))", t)
        t = re.sub(r"\\sqrt\{([^{}]*)\}", r"sqrt(\1)", t)
        if t == s:
            break
        s = t
    s = s.replace("{", "(").replace("}", ")").replace("^", "**").replace("\\", "")
    s = s.replace(",", "") if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s.strip()) else s
    # implicit multiplication: 2x, 2(x+1), )(, x(... only for single-letter names
    s = re.sub(r"(\d)\s*([a-zA-Z(])", r"\1*\2", s)
    s = re.sub(r"\)\s*([\w(])", r")*\1", s)
    return s


def _to_sympy(text: str):
    """A sympy expression for `text`, or None when it is not a small, plain formula (see `too_costly` for the rest)."""
    import sympy

    if len(text) > _MAX_CHARS:
        return None
    src = _latex_to_python(_normalize(text))
    if not src or len(src) > _MAX_CHARS:
        return None
    try:
        tree = ast.parse(src, mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None
    if sum(1 for _ in ast.walk(tree)) > _MAX_NODES:
        return None
    ops = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
           ast.Mult: lambda a, b: a * b, ast.Div: lambda a, b: a / b}
    consts = {"pi": sympy.pi, "e": sympy.E, "i": sympy.I, "oo": sympy.oo, "inf": sympy.oo, "infty": sympy.oo}
    funcs = {"sqrt": sympy.sqrt, "sin": sympy.sin, "cos": sympy.cos, "tan": sympy.tan,
             "log": sympy.log, "ln": sympy.log, "exp": sympy.exp, "abs": sympy.Abs}

    def build(node):
        if isinstance(node, ast.Expression):
            return build(node.body)
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            if len(repr(node.value)) > 40:
                raise ValueError("number too long")
            return sympy.Rational(repr(node.value)) if isinstance(node.value, float) else sympy.Integer(node.value)
        if isinstance(node, ast.Name):
            if node.id in consts:
                return consts[node.id]
            if len(node.id) <= 2 and node.id.isalpha():
                return sympy.Symbol(node.id)
            raise ValueError(f"name {node.id!r}")
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = build(node.operand)
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp) and type(node.op) in ops:
            return ops[type(node.op)](build(node.left), build(node.right))
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
            base, exponent = build(node.left), build(node.right)
            if exponent.is_number and (not exponent.is_finite or abs(exponent) > _MAX_EXPONENT):
                raise ValueError("exponent too large")
            if base.is_number and base.is_finite and abs(base) > 10**40:
                raise ValueError("base too large")
            return base**exponent
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in funcs
                and len(node.args) == 1 and not node.keywords):
            return funcs[node.func.id](build(node.args[0]))
        raise ValueError(f"unsupported syntax {type(node).__name__}")

    try:
        return build(tree)
    except (ValueError, TypeError, ZeroDivisionError, OverflowError, RecursionError, AttributeError):
        return None


# Where formulas with symbols are compared: rationals with 2-digit numerators and denominators,
# of both signs, none a root or pole of the usual small polynomials (0, 1, -1, 2 are avoided).
_POINTS = [Fraction(n, d) for n, d in ((7, 11), (-13, 17), (19, 7), (-5, 3), (23, 29), (-31, 37), (11, 13),
                                        (-17, 19), (41, 43), (-47, 53), (29, 23), (-59, 61))]


def _value(expr):
    """expr's value to 30 digits, or None when it has none there (a pole, nan, a symbol left)."""
    import sympy

    value = sympy.N(expr, 30)
    return value if value.is_number and value.is_finite else None


def _sympy_equal(x, y) -> bool:
    """Equal numbers to 30 digits; formulas with symbols: equal values at three of the fixed points."""
    import sympy

    if x == y:
        return True
    symbols = sorted(x.free_symbols | y.free_symbols, key=str)
    points = [{}] if not symbols else [
        {s: sympy.Rational(_POINTS[(3 * k + 5 * i) % len(_POINTS)]) for i, s in enumerate(symbols)} for k in range(4)
    ]
    agree = 0
    for point in points:
        a, b = _value(x.subs(point)), _value(y.subs(point))
        if a is None or b is None:
            continue  # no value here (1/x at a pole): try the next point
        if abs(a - b) > sympy.Float(1e-20) * max(1, abs(a), abs(b)):
            return False
        agree += 1
    return agree >= min(3, len(points))


class _HelperProcess:
    """A Python process that runs math-verify for threads other than the main one."""

    def __init__(self) -> None:
        self.pid = os.getpid()  # a forked child must start its own, not talk to its parent's
        # run_path: the worker file runs as a script without importing textgym (nor adding its folder to sys.path)
        self.process = subprocess.Popen(
            [sys.executable, "-c", "import runpy, sys; runpy.run_path(sys.argv[1], run_name='__main__')",
             math_verify_worker.__file__],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        self.lines: queue.SimpleQueue = queue.SimpleQueue()
        self.reader = threading.Thread(target=self._read, daemon=True, name="textgym-math-verify")
        self.reader.start()
        self.ready = self._next_line(_STARTUP_SECONDS) == "ready"

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line.strip())
        self.lines.put(None)  # end of file: the process is gone

    def _next_line(self, timeout: float) -> str | None:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            return None

    def ask(self, pred: str, ref: str) -> bool | None:
        """The verdict, or None when the process fails or overruns (it is then killed)."""
        if not self.ready:
            return None
        try:
            self.process.stdin.write(json.dumps([pred, ref]) + "\n")
            self.process.stdin.flush()
        except (OSError, ValueError):
            self.ready = False
            return None
        line = self._next_line(HARD_LIMIT_SECONDS)
        if line is None:
            self.close()
            return None
        return json.loads(line)

    def close(self) -> None:
        """Stop the process and release its pipes (a forked child leaves its parent's alone)."""
        self.ready = False
        if self.pid != os.getpid():
            return
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.reader.join(1.0)  # it reads to the end of the dead process's output, then stops
        for stream in (self.process.stdin, self.process.stdout):
            try:
                stream.close()
            except OSError:
                pass


_helper: _HelperProcess | None = None
_helper_lock = threading.Lock()


def _close_helper() -> None:
    if _helper is not None:
        _helper.close()


atexit.register(_close_helper)


def _math_verify_equal(pred: str, ref: str) -> bool | None:
    """math-verify's verdict; None when it is not installed, the text fails its screen, or it failed."""
    global _helper
    try:
        import math_verify  # noqa: F401
        from math_verify.errors import TimeoutException
    except ImportError:
        return None
    if _math_verify_refusal(pred) or _math_verify_refusal(ref):
        return None
    if threading.current_thread() is threading.main_thread():
        try:
            return math_verify_worker.verify_here(pred, ref)
        except (Exception, TimeoutException):  # math-verify and sympy raise odd types on odd input: not a verdict
            return None
    with _helper_lock:
        if _helper is None or not _helper.ready or _helper.pid != os.getpid():
            if _helper is not None:
                _helper.close()
            _helper = _HelperProcess()
        return _helper.ask(pred, ref)


def math_equal(pred: str | None, ref: str | None) -> bool:
    """True when `pred` and `ref` denote the same mathematical value (see the module docstring).

    Never raises, and returns within the module's bound whatever the text: a verdict it cannot
    reach in that bound is "not equal".
    """
    if pred is None or ref is None:
        return False
    if _squeeze(pred) == _squeeze(ref):  # "(1, 2)" vs "(1,2)": spacing never matters
        return True
    if len(pred) > MAX_CHARS or len(ref) > MAX_CHARS:
        return False
    pred, ref = _clean(pred), _clean(ref)
    if _unfinished(pred) or _unfinished(ref):
        return False
    a, b = _number(pred), _number(ref)
    if a is not None and b is not None:
        return a == b
    x, y = _to_sympy(pred), _to_sympy(ref)
    if any(e is not None and too_costly(e) for e in (x, y)):
        return False
    if _math_verify_equal(pred, ref):
        return True
    if x is None or y is None:
        return _normalize(pred) == _normalize(ref)
    try:
        return _sympy_equal(x, y)
    except Exception:  # sympy raises a zoo of types on odd input; odd input is simply not equal
        return False
