r"""Are two math answers the same value? ("1/2" vs "\frac{1}{2}" vs "0.5", "2x+1" vs "1+2*x").

math-verify is used when it is installed (`pip install math-verify`); otherwise a small sympy
path. Model output is untrusted, so the sympy path never calls sympy's string parser (it evals):
the text is parsed by `ast` and only numbers, names, + - * / ** and a few functions are turned into
sympy objects, with caps on length, size of exponents and number of nodes, so "9**9**9**9" or a
10,000-character answer costs microseconds, not minutes.
"""

from __future__ import annotations

import ast
import re

from textgym.rewards.extract import parse_number

__all__ = ["math_equal"]

_MAX_CHARS = 200
_MAX_NODES = 80
_MAX_EXPONENT = 100
_FUNCTIONS = ("sqrt", "sin", "cos", "tan", "log", "ln", "exp", "abs")
_CONSTANTS = ("pi", "e", "i", "oo", "inf", "infty")


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


def _math_verify_equal(pred: str, ref: str) -> bool | None:
    try:
        from math_verify import parse, verify
    except ImportError:
        return None
    try:
        # math-verify's own timeouts use signal.alarm, which fails off the main thread (score()
        # runs rewards in a worker thread when it has a timeout), so they are switched off here.
        return bool(verify(parse(ref, parsing_timeout=None), parse(pred, parsing_timeout=None), timeout_seconds=None))
    except Exception:
        return None


def math_equal(pred: str | None, ref: str | None) -> bool:
    """True when `pred` and `ref` denote the same mathematical value."""
    if pred is None or ref is None:
        return False
    if "".join(pred.split()) == "".join(ref.split()):  # "(1, 2)" vs "(1,2)": spacing never matters
        return True
    a, b = parse_number(_normalize(pred)), parse_number(_normalize(ref))
    if a is not None and b is not None:
        return a == b
    verdict = _math_verify_equal(pred, ref)
    if verdict is not None:
        return verdict
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
