"""math-verify, called where its signal-based timeouts work (a process's main thread), on nothing too costly.

`verify_here` is what `math_equal` calls in the main thread. Run as a script, this file is the
helper process `math_equal` starts for other threads: it reads one JSON [pred, ref] per line on
stdin and writes one JSON verdict (true, false or null) per line on stdout. It imports nothing from
textgym, so the helper starts in the time math-verify takes to import; for the same reason the
screen on parsed expressions, `too_costly`, lives here, and `math_equal`'s sympy path uses it too.
"""

from __future__ import annotations

import json
import math
import sys

TIMEOUT_SECONDS = 2  # math-verify's limit for one parse or one comparison (whole seconds: signal.alarm)

# What an expression may cost before any judge compares it. Digits bound every number it denotes
# and every value it takes at small rational points (sympy computes them exactly); terms bound
# the size of its expansion (simplify's work grows with it: 286 terms took 1 s on a busy machine).
MAX_DIGITS = 10_000
MAX_ARGUMENT_DIGITS = 100  # sin(10^{4000}) takes seconds to evaluate: 4,000 digits of pi to reduce it
MAX_TERMS = 150
MAX_NODES = 600
MAX_SYMBOLS = 8
_SYMBOL_DIGITS = 2  # the points at which symbols are evaluated have 2-digit numerators and denominators


def as_latex(text: str) -> str:
    """Bare text in math mode: math-verify's extractors look for math ("2x+1" bare parses as 2)."""
    text = text.strip()
    return text if text.startswith("$") and text.endswith("$") and len(text) > 1 else f"${text}$"


def _digits(value: float) -> float:
    return math.inf if value > 300 else 10.0**value


def too_costly(expr) -> str | None:
    """Why comparing `expr` could take unbounded time or memory, or None when it cannot.

    Bounds, computed from the expression tree without evaluating it: every number it denotes (and
    every value at points whose numbers have 2 digits) has at most `MAX_DIGITS` digits (towers,
    factorials, binomials, exp of large arguments), and functions' arguments at most
    `MAX_ARGUMENT_DIGITS`; expanding it gives at most `MAX_TERMS` terms
    (`(a+b+c+d)^{100}` has 176,851); at most `MAX_NODES` nodes and `MAX_SYMBOLS` symbols; no
    unevaluated sums, products, integrals, limits or derivatives.
    """
    import sympy

    refused = (sympy.Sum, sympy.Product, sympy.Integral, sympy.Limit, sympy.Derivative)
    nodes = 0
    symbols: set = set()

    def walk(e) -> tuple[float, float]:
        """(digits bound, terms bound) of e; raises ValueError with the reason when over a limit."""
        nonlocal nodes
        nodes += 1
        if nodes > MAX_NODES:
            raise ValueError("too many nodes")
        if isinstance(e, refused):
            raise ValueError(f"unevaluated {type(e).__name__}")
        if isinstance(e, sympy.MatrixBase):
            args = list(e)
        elif isinstance(e, sympy.Basic):
            args = list(e.args)
        elif isinstance(e, (list, tuple)):
            args = list(e)
        else:
            return 1.0, 1.0
        if isinstance(e, sympy.Integer):
            digits, terms = max(1.0, int(e).bit_length() * 0.30103), 1.0
        elif isinstance(e, sympy.Rational):
            digits, terms = max(1.0, max(abs(e.p).bit_length(), e.q.bit_length()) * 0.30103), 1.0
        elif isinstance(e, sympy.Float):
            _, _, exponent, bits = e._mpf_  # mantissa * 2**exponent, the mantissa of `bits` bits
            digits, terms = max(1.0, abs(exponent + bits) * 0.30103), 1.0
        elif isinstance(e, sympy.Symbol):
            symbols.add(e)
            if len(symbols) > MAX_SYMBOLS:
                raise ValueError("too many symbols")
            digits, terms = float(_SYMBOL_DIGITS), 1.0
        elif not args:
            digits, terms = 1.0, 1.0  # pi, E, I, oo, ...
        else:
            parts = [walk(a) for a in args]
            if isinstance(e, (sympy.Pow, sympy.MatPow)):
                (base, base_terms), (exp_digits, _) = parts
                exponent = e.args[1]
                if isinstance(exponent, sympy.Rational):
                    size = max(1.0, math.ceil(abs(exponent)))
                else:
                    size = _digits(exp_digits)  # |exponent| < 10**digits
                digits = max(base, 1.0) * size
                if isinstance(exponent, sympy.Integer) and base_terms > 1:
                    n, k = int(min(abs(exponent), 10**6)), int(min(base_terms, 10**6))
                    terms = math.inf if n * k > 10**5 else float(math.comb(n + k - 1, k - 1))
                else:
                    terms = base_terms
            elif isinstance(e, sympy.exp):
                digits, terms = 0.4343 * _digits(parts[0][0]), parts[0][1]
            elif isinstance(e, (sympy.factorial, sympy.gamma, sympy.factorial2, sympy.subfactorial)):
                n = _digits(parts[0][0])
                digits, terms = n * max(1.0, math.log10(n)) if n < math.inf else n, parts[0][1]
            elif isinstance(e, sympy.binomial):
                digits, terms = 0.30103 * _digits(parts[0][0]), 1.0
            elif isinstance(e, sympy.Add):
                digits, terms = sum(d for d, _ in parts), sum(t for _, t in parts)
            elif isinstance(e, (sympy.Mul, sympy.MatMul)):
                digits, terms = sum(d for d, _ in parts), math.prod(t for _, t in parts)
            elif isinstance(e, (sympy.Function, sympy.Mod)):
                digits, terms = sum(d for d, _ in parts), max(t for _, t in parts)
                if digits > MAX_ARGUMENT_DIGITS:
                    raise ValueError(f"a function of a number of more than {MAX_ARGUMENT_DIGITS} digits")
            else:  # containers: tuples, sets, intervals, relations, matrices, And
                digits, terms = max(d for d, _ in parts), max(t for _, t in parts)
        if digits > MAX_DIGITS:
            raise ValueError(f"a number of more than {MAX_DIGITS} digits")
        if terms > MAX_TERMS:
            raise ValueError(f"an expansion of more than {MAX_TERMS} terms")
        return digits, terms

    try:
        walk(expr)
    except ValueError as e:
        return str(e)
    except (RecursionError, OverflowError, TypeError, AttributeError):
        return "too deep or too odd to bound"
    return None


def _is_equation(expr) -> bool:
    import sympy

    return isinstance(expr, sympy.Eq) or (
        isinstance(expr, sympy.And) and all(isinstance(a, sympy.Eq) for a in expr.args)
    )


def _assigned_value(expr):
    """The value `x = ...` assigns (the last right side of a chain), or None when the left side is no single symbol.

    "2x = 6" and "x + 1 = 4" are equations, not answers: they do not equal 6 or 3.
    """
    import sympy

    chain = list(expr.args) if isinstance(expr, sympy.And) else [expr]
    chain = [c for c in chain if isinstance(c, sympy.Eq)]
    if not chain or not isinstance(chain[0].lhs, sympy.Symbol):
        return None
    return chain[-1].rhs


def _plain_values(parsed: list, other: list) -> list:
    """`parsed`, with an equation compared to a non-equation read as `x = value`, or dropped."""
    other_is_equation = any(_is_equation(o) for o in other if not isinstance(o, str))
    out = []
    for item in parsed:
        if not isinstance(item, str) and _is_equation(item) and not other_is_equation:
            item = _assigned_value(item)
            if item is None:
                continue
        out.append(item)
    return out


def verify_here(pred: str, ref: str, timeout: int | None = TIMEOUT_SECONDS) -> bool | None:
    """math-verify's verdict, computed in this thread (a timeout needs the main thread).

    None (no verdict) when a parsed expression is too costly to compare (`too_costly`).
    """
    from math_verify import parse, verify

    gold = parse(as_latex(ref), parsing_timeout=timeout)
    answer = parse(as_latex(pred), parsing_timeout=timeout)
    if not gold or not answer:
        return False
    golds, answers = _plain_values(gold, answer), _plain_values(answer, gold)
    if any(too_costly(e) for e in golds + answers if not isinstance(e, str)):
        return None
    return bool(golds and answers and verify(golds, answers, timeout_seconds=timeout))


def serve() -> None:
    import math_verify  # noqa: F401  (imported before "ready", so the first question is not slow)

    sys.stdout.write("ready\n")
    sys.stdout.flush()
    for line in sys.stdin:
        pred, ref = json.loads(line)
        try:
            verdict = verify_here(pred, ref)
        except BaseException:  # noqa: BLE001  (math-verify's timeout is not an Exception; "no verdict" is safe)
            verdict = None
        sys.stdout.write(json.dumps(verdict) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    serve()
