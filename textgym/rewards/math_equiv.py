r"""Are two math answers the same value? ("1/2" vs "\frac{1}{2}" vs "0.5", "2x+1" vs "1+2*x").

Two judges, and either one's "equal" is the verdict (each says so only when it is sure):

- math-verify, when installed (`pip install "textgym[math]"`): LaTeX, intervals, sets, units,
  percentages. It can spend unbounded time on hostile input (`9^{9^{9^{9}}}`), and its own
  timeouts use `signal.alarm`, which works only in a process's main thread. So in the main thread
  it runs here with those timeouts on; in any other thread (where `score()` runs rewards when it
  has a timeout) it runs in a helper process, in that process's main thread with the same
  timeouts, and the process is killed and replaced if it does not answer within
  `HARD_LIMIT_SECONDS`. Either way a call returns within seconds and never hangs the caller.
- A small sympy path. Model output is untrusted, so it never calls sympy's string parser (it
  evals): the text is parsed by `ast` and only numbers, names, + - * / ** and a few functions are
  turned into sympy objects, with caps on length, size of exponents and number of nodes, so
  "9**9**9**9" or a 10,000-character answer costs microseconds, not minutes.
"""

from __future__ import annotations

import ast
import atexit
import json
import os
import queue
import re
import subprocess
import sys
import threading

from textgym.rewards import math_verify_worker
from textgym.rewards.extract import parse_number

__all__ = ["math_equal", "TIMEOUT_SECONDS", "HARD_LIMIT_SECONDS"]

_MAX_CHARS = 200
_MAX_NODES = 80
_MAX_EXPONENT = 100

TIMEOUT_SECONDS = math_verify_worker.TIMEOUT_SECONDS  # math-verify's own limit for one parse or comparison
HARD_LIMIT_SECONDS = 8.0  # a helper process that has not answered by then is killed (below score()'s default 10 s)
_MATH_VERIFY_MAX_CHARS = 1000  # longer answers are not math-verify's business: they go to the capped sympy path
_STARTUP_SECONDS = 120.0  # importing sympy and math-verify in a fresh process on a slow, busy machine


def _normalize(s: str) -> str:
    s = s.strip().strip("$").strip()
    s = re.sub(r"\\text\{([^{}]*)\}|\\mathrm\{([^{}]*)\}", lambda m: m.group(1) or m.group(2) or "", s)
    for a, b in (("\\left", ""), ("\\right", ""), ("\\!", ""), ("\\,", ""), ("\\;", ""), ("\\ ", ""),
                 ("^\\circ", ""), ("^{\\circ}", ""), ("\\%", ""), ("%", ""), ("\\dfrac", "\\frac"),
                 ("\\tfrac", "\\frac"), ("\\cdot", "*"), ("\\times", "*"), ("\\div", "/"),
                 ("\\pi", "pi"), ("\\infty", "oo"), ("\\ln", "log"), ("\\log", "log")):
        s = s.replace(a, b)
    s = s.rstrip(".").strip()
    if "=" in s:  # "x = 5" answers 5
        s = s.rsplit("=", 1)[1]
    return s


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
    """A sympy expression for `text`, or None when it is not a small, plain formula."""
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
    """math-verify's verdict; None when it is not installed, the text is too long, or it failed."""
    global _helper
    try:
        import math_verify  # noqa: F401
    except ImportError:
        return None
    if len(pred) > _MATH_VERIFY_MAX_CHARS or len(ref) > _MATH_VERIFY_MAX_CHARS:
        return None
    if threading.current_thread() is threading.main_thread():
        try:
            return math_verify_worker.verify_here(pred, ref)
        except Exception:  # math-verify and sympy raise odd types on odd input: not a verdict
            return None
    with _helper_lock:
        if _helper is None or not _helper.ready or _helper.pid != os.getpid():
            if _helper is not None:
                _helper.close()
            _helper = _HelperProcess()
        return _helper.ask(pred, ref)


def math_equal(pred: str | None, ref: str | None) -> bool:
    """True when `pred` and `ref` denote the same mathematical value (see the module docstring)."""
    if pred is None or ref is None:
        return False
    if "".join(pred.split()) == "".join(ref.split()):  # "(1, 2)" vs "(1,2)": spacing never matters
        return True
    a, b = parse_number(_normalize(pred)), parse_number(_normalize(ref))
    if a is not None and b is not None:
        return a == b
    if _math_verify_equal(pred, ref):
        return True
    x, y = _to_sympy(pred), _to_sympy(ref)
    if x is None or y is None:
        return _normalize(pred) == _normalize(ref)
    import sympy

    try:
        if x == y:
            return True
        diff = x - y
        if diff.is_number:
            return bool(abs(sympy.N(diff, 30)) < 1e-12)
        return sympy.simplify(diff) == 0
    except Exception:  # sympy raises a zoo of types on odd input; odd input is simply not equal
        return False
