"""Countdown: reach a target number from given numbers with + - * / and parentheses.

The verifier reads model-written arithmetic, so it never calls eval: the answer is parsed with
`ast` and only integer literals, + - * /, and parentheses are evaluated (exactly, with Fractions).
Each literal must be one of the given numbers, each used at most as often as it was given.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from fractions import Fraction
from typing import Any, Sequence

import numpy as np

from textgym.tasks.base import Example, Task, register_task

__all__ = ["CountdownTask", "evaluate_expression"]

_MAX_EXPRESSION_CHARS = 200  # also keeps ast.parse away from deep-nesting recursion limits
_OPERATORS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
_EXPRESSION_RUN = re.compile(r"[\d\s+\-*/()]+")  # linear-time; runs without a digit are dropped


def evaluate_expression(expression: str, numbers: Sequence[int]) -> Fraction:
    """The exact value of `expression`, built only from `numbers` (each at most once) with + - * /
    and parentheses. Raises ValueError saying what is wrong otherwise (never evaluates code)."""
    if len(expression) > _MAX_EXPRESSION_CHARS:
        raise ValueError(f"expression longer than {_MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as e:
        raise ValueError(f"not an arithmetic expression: {e}") from None
    remaining = Counter(int(n) for n in numbers)

    def value(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            if remaining[node.value] <= 0:
                raise ValueError(f"{node.value} is not one of the given numbers, or is used too often")
            remaining[node.value] -= 1
            return Fraction(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Add):
                return left + right
            if isinstance(node.op, ast.Sub):
                return left - right
            if isinstance(node.op, ast.Mult):
                return left * right
            if right == 0:
                raise ValueError("division by zero")
            return left / right
        raise ValueError(f"only numbers, + - * / and parentheses are allowed, found {type(node).__name__}")

    return value(tree.body)


@register_task("countdown")
class CountdownTask(Task):
    """Combine numbers with + - * / to hit a target (the Countdown numbers game, as in TinyZero).

    ## Description
    `numbers` random numbers from 1 to `max_number` and a target that some arithmetic expression
    over all of them reaches exactly (every intermediate result a non-negative integer). Any
    correct expression scores, not only the reference one; numbers may be left unused.

    ## Prompt
    Plain: `Using the numbers [3, 7, 2], make 17 with + - * / and parentheses, using each number at
    most once. Answer with just the expression.` r1_zero: the question (without the last sentence)
    inside the R1-zero template.

    ## Answer
    A reference expression like `(3 * 7) - 2`... metadata `{"numbers": [...], "target": t}`.
    About `numbers * (digits of max_number + 5)` characters at most.

    ## Rewards
    1.0 when the expression evaluates exactly to the target using only the given numbers (each at
    most as often as given), + - * / and parentheses; else 0.0. The expression is read from the
    last line holding a digit (inside <answer> for r1_zero), as its longest arithmetic run, so
    "(3 * 7) - 2 = 19" and "Answer: 3*7-2" both work. Power, names, calls, unary minus and
    anything else are refused without being evaluated.

    ## Arguments
    - `numbers=3`: how many numbers are given (2 to 6).
    - `max_number=10`: numbers are drawn from 1..max_number.
    - `max_target=100`: targets are 1..max_target.
    - `seed=0`, `prompt_style="plain"`, `reward=None`.

    ## Example
    ```python
    from textgym.tasks import make_task
    task = make_task("countdown", numbers=4)
    ex = task.example("train", 0)
    assert task.reward(ex.answer, ex) == 1.0
    assert task.reward("__import__('os')", ex) == 0.0
    ```
    """

    name = "countdown"
    description = "Reach the target from the given numbers with + - * / and parentheses"
    instruction = "Answer with just the expression."
    answer_chars = "0123456789+-*/() "

    def __init__(self, numbers: int = 3, max_number: int = 10, max_target: int = 100, *,
                 seed: int = 0, prompt_style: str = "plain", reward: Any = None):
        super().__init__(seed=seed, prompt_style=prompt_style, reward=reward)
        if not 2 <= int(numbers) <= 6:
            raise ValueError(f"numbers must be 2 to 6, got {numbers!r}")
        if int(max_number) < 1 or int(max_target) < 1:
            raise ValueError("max_number and max_target must be >= 1")
        self.count, self.max_number, self.max_target = int(numbers), int(max_number), int(max_target)
        self.params = {"numbers": self.count, "max_number": self.max_number, "max_target": self.max_target}
        self.max_answer_chars = self.count * (len(str(self.max_number)) + 5)

    def sample(self, rng: np.random.Generator) -> Example:
        for _ in range(1000):
            numbers = [int(n) for n in rng.integers(1, self.max_number + 1, size=self.count)]
            found = self._random_expression(numbers, rng)
            if found is not None:
                expression, target = found
                return self._make(numbers, expression, target)
        raise RuntimeError(f"countdown: no reachable target <= {self.max_target}; raise max_target")

    def _random_expression(self, numbers: list[int], rng: np.random.Generator) -> tuple[str, int] | None:
        # Combine two random items with a random operator until one is left: a random binary tree.
        items = [(str(n), n, True) for n in numbers]  # (text, value, is_leaf)
        while len(items) > 1:
            i, j = (int(k) for k in rng.choice(len(items), size=2, replace=False))
            (ta, a, leaf_a), (tb, b, leaf_b) = items[i], items[j]
            op = "+-*/"[int(rng.integers(4))]
            if op == "-" and a < b:
                (ta, a, leaf_a), (tb, b, leaf_b) = (tb, b, leaf_b), (ta, a, leaf_a)
            if op == "/" and (b == 0 or a % b):
                op = "+"
            value = {"+": a + b, "-": a - b, "*": a * b, "/": a // b if b else 0}[op]
            text = f"{ta if leaf_a else f'({ta})'} {op} {tb if leaf_b else f'({tb})'}"
            items = [it for k, it in enumerate(items) if k not in (i, j)] + [(text, value, False)]
        text, value, _ = items[0]
        return (text, value) if 1 <= value <= self.max_target else None

    def _make(self, numbers: list[int], expression: str, target: int) -> Example:
        prompt = (f"Using the numbers {numbers}, make {target} with + - * / and parentheses, "
                  f"using each number at most once.")
        return Example(prompt, expression, {"numbers": numbers, "target": target})

    def problem_key(self, example: Example) -> str:
        return f"{sorted(example.metadata['numbers'])}->{example.metadata['target']}"

    def extract(self, text: str) -> str | None:
        lines = [line for line in text.splitlines() if any(c.isdigit() for c in line)]
        if not lines:
            return None
        runs = [run for run in _EXPRESSION_RUN.findall(lines[-1]) if any(c.isdigit() for c in run)]
        return max(runs, key=len).strip() if runs else None

    def check(self, answer: str, example: Example) -> float:
        try:
            value = evaluate_expression(answer, example.metadata["numbers"])
        except ValueError:
            return 0.0
        return float(value == example.metadata["target"])
