"""Built-in multi-turn tasks: a calculator tool, a code-guessing game, answer-and-retry.

Each is a `MultiTurnTask` (textgym/tasks/multiturn.py): procedural, seeded, split by problem like
every task, with its environment's replies written as text logic.
"""

from __future__ import annotations

import ast
import itertools
import math
import re
from fractions import Fraction
from typing import Any, Iterable

import numpy as np

from textgym.example import Example
from textgym.rewards.core import score
from textgym.rewards.extract import final_number, numbers_equal
from textgym.tasks.arithmetic import operand_range
from textgym.tasks.base import ENUMERATE_LIMIT, Task, make_task, register_task
from textgym.tasks.multiturn import MultiTurnTask, Reply
from textgym.tasks.tooluse import ToolTask
from textgym.tools.core import ToolResult
from textgym.tools.formats import ToolCall, tag_calls

__all__ = ["CalculatorTask", "GuessTask", "RetryTask", "calculate", "calc", "calc_calls"]

_MAX_CALC_CHARS = 100  # also keeps ast.parse away from deep-nesting recursion limits
_MAX_CALC_DIGITS = 60  # results (and operands) beyond this many digits are refused, not computed
_MAX_EXPONENT = 64


def calc_calls(text: str) -> list[str]:
    """The expressions of every `<calc>…</calc>` in `text`, left to right (each call ends at the first
    closing tag after its opening one), found in one pass (`textgym.tools.formats.tag_calls`)."""
    return [inner for _, inner in tag_calls(text, ("calc",))]


def calculate(expression: str) -> str:
    """The value of an arithmetic expression, as the calculator tool prints it; never runs code.

    Integers and decimals, + - * / // % **, unary minus and parentheses, computed exactly (with
    Fractions) and printed as an integer or a decimal rounded to 6 places. Bounded work: at most
    100 characters (so nesting is shallow), whole exponents up to 64, operands and results up to 60
    digits. Anything else raises a ValueError that says what is wrong, and so does every
    arithmetic failure (division by zero, 0 to a negative power): the tool's "error: ..." reply.
    """
    if len(expression) > _MAX_CALC_CHARS:
        raise ValueError(f"expression longer than {_MAX_CALC_CHARS} characters")
    try:
        tree = ast.parse(expression.strip().replace("×", "*").replace("÷", "/"), mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        raise ValueError("not an arithmetic expression") from None
    try:
        return _evaluate(tree)
    except (ArithmeticError, RecursionError, MemoryError) as e:  # bounded above; a last net, never an exception out
        raise ValueError(f"cannot compute it ({type(e).__name__})") from None


def _evaluate(tree: ast.Expression) -> str:
    """`calculate`'s arithmetic on a parsed expression (raises ValueError; see there)."""

    def checked(x: Fraction) -> Fraction:
        if max(abs(x.numerator), x.denominator).bit_length() > _MAX_CALC_DIGITS * 3.33:
            raise ValueError("number too large")
        return x

    def value(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            if not math.isfinite(node.value):  # a literal such as 1e999 reads as inf
                raise ValueError("number too large")
            return checked(Fraction(str(node.value)))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = value(node.operand)
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp):
            a, b = value(node.left), value(node.right)
            op = type(node.op)
            if op in (ast.Div, ast.FloorDiv, ast.Mod) and b == 0:
                raise ValueError("division by zero")
            if op is ast.Pow:
                if b.denominator != 1 or abs(b) > _MAX_EXPONENT:
                    raise ValueError(f"exponents must be whole numbers up to {_MAX_EXPONENT}")
                if a == 0 and b < 0:
                    raise ValueError("division by zero")
                return checked(a ** int(b))
            ops = {ast.Add: a.__add__, ast.Sub: a.__sub__, ast.Mult: a.__mul__, ast.Div: a.__truediv__,
                   ast.FloorDiv: a.__floordiv__, ast.Mod: a.__mod__}  # fmt: skip
            if op in ops:
                return checked(Fraction(ops[op](b)))
        raise ValueError(f"only numbers, + - * / // % ** and parentheses are allowed, found {type(node).__name__}")

    result = value(tree.body)
    if result.denominator == 1:
        return str(result.numerator)
    return f"{float(result):.6f}".rstrip("0").rstrip(".")


def calc(expression: str) -> str:
    """Evaluate an arithmetic expression exactly: numbers, + - * / // % ** and parentheses.

    Args:
        expression: the expression, e.g. "123*45".
    """
    return calculate(expression)


@register_task("calculator")
class CalculatorTask(ToolTask):
    """Multiply numbers a small model gets wrong in its head, with a calculator it can call.

    ## Description
    "What is 123 * 45?" — multi-digit multiplication, which small models mostly get wrong when they
    answer directly. The policy may call the calculator (the tool `calc(expression)`, the safe
    evaluator `calculate`): its turn ends at the call's closing tag and the environment replies with
    the result as a tool message. A turn without a call is the final answer.

    ## Tool-call format
    A `ToolTask` (textgym/tasks/tooluse.py): `tool_format="auto"` offers the tool natively where the
    tokenizer's chat template shows tools in the Hermes/Qwen style (`<tool_call>{"name": "calc",
    "arguments": {"expression": "123*45"}}</tool_call>`, e.g. with `jinja_template="hermes"`), and as
    `<calc>123*45</calc>` otherwise — SmolLM2-135M-Instruct's own template, and the char tokenizer.

    ## Prompt
    Tags: `What is {a} * {b}? You can use a calculator: write <calc>expression</calc> and you get the
    result. Then answer with the number.` Native or `<tool_call>`: `What is {a} * {b}? You can use the
    calc tool. Then answer with the number.`

    ## Turns and replies
    A call: the tool replies with `calculate(expression)` (or `error: ...` for an expression it
    refuses, or a call it cannot read). The final answer (a turn without a call) ends the episode. At
    most `max_turns` turns (default 3); a last turn that is still a call ends the episode unanswered.

    ## Answer
    `str(a * b)`; metadata `{"a": a, "b": b}`.

    With the tool, the task's system prompt describes it with one worked exchange in the call format
    (as chat templates describe tools in the system message); `--system-prompt` replaces it. A 135M
    model without that example almost never writes a call (SmolLM2-135M-Instruct: 0 of 640 samples).

    ## Rewards
    On the final answer: 1.0 when its last number equals a * b, else 0.0; components `answer` and
    `calls` (how many calculator calls the episode made). `call_credit` (default 0: success alone)
    pays that much, once per episode, on the first call whose result is a * b — the right
    calculation — so a policy learns to call the calculator correctly before it ever reports the
    result (paying any well-formed call was farmed in a trial: `<calc>95.5</calc>`). The success
    rate is the `answer` component either way.

    ## Arguments
    - `digits=3`, `digits2=2`: digits of the two operands (123 * 45 by default).
    - `tool=True`: offer the calculator. `tool=False` asks the same problems without it (one turn,
      the prompt ends "Answer with the number.", no system prompt of its own): the baseline the
      tool is measured against.
    - `tool_format="auto"` ("auto" | "hermes" | "tags"), `call_credit=0.0`, `max_turns=3`, `seed=0`,
      `prompt_style="plain"`.

    ## Example
    ```python
    import textgym
    env = textgym.TextGenEnv(task="calculator", tokenizer="smollm2-135m-instruct", max_new_tokens=64)
    ```
    """

    name = "calculator"
    description = "What is a * b? with a calculator tool, <calc>…</calc> or native tool calls (multi-turn)"
    answer_chars = None
    demo = ("What is 12 * 34?", [("calc", {"expression": "12*34"}, "408")], "408")

    # The tags format's system prompt, word for word as before tools had formats (the README's results).
    tool_system_prompt = (
        "You can use a calculator. To use it, reply with only <calc>expression</calc>; the result comes back "
        "to you. Example:\nUser: What is 12 * 34?\nAssistant: <calc>12*34</calc>\nTool: 408\nAssistant: 408"
    )

    def __init__(self, digits: int = 3, digits2: int = 2, *, tool: bool = True, call_credit: float = 0.0,
                 max_turns: int = 3, tool_format: str = "auto", seed: int = 0, prompt_style: str = "plain"):  # fmt: skip
        self.tool = bool(tool)
        super().__init__([calc] if self.tool else [], tool_format=tool_format, max_turns=int(max_turns) if self.tool else 1,
                         seed=seed, prompt_style=prompt_style)  # fmt: skip
        self.ranges = operand_range(int(digits)), operand_range(int(digits2))
        if not 0.0 <= float(call_credit) < 1.0:
            raise ValueError(f"call_credit must be in [0, 1) (a call pays less than the answer), got {call_credit}")
        self.call_credit = float(call_credit)
        self.params = {"digits": int(digits), "digits2": int(digits2), "tool": self.tool, "max_turns": self.max_turns,
                       "call_credit": self.call_credit, "tool_format": tool_format}  # fmt: skip
        self.max_answer_chars = int(digits) + int(digits2)

    @property
    def instruction(self) -> str:
        if not self.tool:
            return "Answer with the number."
        if self.format_name == "tags":
            return "You can use a calculator: write <calc>expression</calc> and you get the result. Then answer with the number."
        return "You can use the calc tool. Then answer with the number."

    @property
    def system_prompt(self) -> str | None:
        if self.tool and self.format_name == "tags":
            return self.tool_system_prompt
        return super().system_prompt

    def problem_key(self, example: Example) -> str:
        return example.prompt  # "What is a * b?": the same split with and without the tool

    def sample(self, rng: np.random.Generator) -> Example:
        (lo_a, hi_a), (lo_b, hi_b) = self.ranges
        a, b = int(rng.integers(lo_a, hi_a + 1)), int(rng.integers(lo_b, hi_b + 1))
        return Example(f"What is {a} * {b}?", str(a * b), {"a": a, "b": b})

    def start(self, example: Example) -> dict[str, int]:
        return {"calls": 0, "credited": 0}

    def credit(self, call: ToolCall, result: ToolResult, example: Example, state: dict[str, int]) -> float:
        if result.ok and not state["credited"] and numbers_equal(result.text, example.answer):
            state["credited"] = 1
            return self.call_credit
        return 0.0

    def answer(self, text: str, example: Example, state: dict[str, int]) -> Reply:
        correct = float(numbers_equal(final_number(text), example.answer))
        return Reply(reward=correct, done=True, components={"answer": correct, "calls": float(state["calls"])})


@register_task("guess")
class GuessTask(MultiTurnTask):
    """Guess a secret code from higher/lower feedback on each digit.

    ## Description
    The secret is `length` digits from `digits` (in their order: "1234" means 1 < 2 < 3 < 4). After
    each guess the environment says, digit by digit, `+` (the secret's digit is higher), `-`
    (lower) or `=` (right) — e.g. secret 312, guess 222: `+-=`. Finding the code within
    `max_turns` guesses pays 1. Binary search on each digit needs ceil(log2(len(digits))) + 1
    guesses, so the default (3 digits from 1234, 4 guesses) leaves one spare. With `length=1`
    and `digits="0123456789"` it is the classic higher/lower number game; `feedback="words"`
    spells the feedback out ("higher lower right").

    The policy's rule can be learned digit by digit — read the last guess's digit and its
    feedback — so a policy trained on some codes finds codes it never saw: the tiny char-level
    model learns it (see the README).

    ## Prompt
    Plain: `Guess the 3-digit code, digits 1234. Feedback per digit: + higher, - lower, = right.`

    ## Turns and replies
    Each turn is one guess: its last run of exactly `length` code digits ("My guess: 222." reads
    222). The reply is the feedback (a user message); a turn with no such run gets `invalid` and
    counts as a guess. A char-level policy that writes bare codes can end its turns after `length`
    tokens with the env's `max_turn_tokens` (the tiny model's runs do).

    ## Answer
    The secret; metadata `{"secret": ...}`. The split is by secret (held-out codes).

    ## Rewards
    1.0 on the turn the code is found, then the episode ends. A wrong guess pays
    `partial_credit * (digits right) / length` (default 0: success alone); a little of it (0.1)
    gives a policy that starts from random guesses something to learn from before it ever finds a
    code. Components: `answer` (1 when found: the success rate), `guesses`.

    ## Arguments
    - `length=3`, `digits="1234"`, `max_turns=4`, `feedback="symbols"` ("symbols" | "words"),
      `partial_credit=0.0`, `seed=0`.
    """

    name = "guess"
    description = "guess a code from per-digit higher/lower feedback (multi-turn)"

    def __init__(self, length: int = 3, digits: str = "1234", *, max_turns: int = 4, feedback: str = "symbols",
                 partial_credit: float = 0.0, seed: int = 0, prompt_style: str = "plain"):  # fmt: skip
        super().__init__(seed=seed, prompt_style=prompt_style)
        if int(length) < 1 or len(set(digits)) != len(digits) or len(digits) < 2 or any(c.isspace() for c in digits):
            raise ValueError(f"need length >= 1 and at least 2 distinct non-space digits, got length={length}, digits={digits!r}")
        if feedback not in ("symbols", "words"):
            raise ValueError(f"feedback must be 'symbols' or 'words', got {feedback!r}")
        if not 0.0 <= float(partial_credit) < 1.0:
            raise ValueError(f"partial_credit must be in [0, 1) (finding the code pays 1), got {partial_credit!r}")
        self.length, self.digits, self.max_turns, self.feedback = int(length), digits, int(max_turns), feedback
        self.partial_credit = float(partial_credit)
        self.params = {"length": self.length, "digits": digits, "max_turns": self.max_turns, "feedback": feedback,
                       "partial_credit": self.partial_credit}  # fmt: skip
        self.answer_chars = digits
        self.max_answer_chars = self.length
        self._guess = re.compile(f"(?<![{re.escape(digits)}])[{re.escape(digits)}]{{{self.length}}}(?![{re.escape(digits)}])")

    def format_prompt(self, example: Example | None) -> str:
        legend = "+ higher, - lower, = right" if self.feedback == "symbols" else "higher, lower or right"
        return f"Guess the {self.length}-digit code, digits {self.digits}. Feedback per digit: {legend}."

    def all_problems(self) -> Iterable[Example] | None:
        if len(self.digits) ** self.length > ENUMERATE_LIMIT:
            return None
        return (self._make("".join(p)) for p in itertools.product(self.digits, repeat=self.length))

    def sample(self, rng: np.random.Generator) -> Example:
        return self._make("".join(self.digits[int(i)] for i in rng.integers(len(self.digits), size=self.length)))

    def _make(self, secret: str) -> Example:
        return Example(self.format_prompt(None), secret, {"secret": secret})

    def problem_key(self, example: Example) -> str:
        return example.answer

    def start(self, example: Example) -> dict[str, int]:
        return {"guesses": 0}

    def reply(self, text: str, example: Example, state: dict[str, int]) -> Reply:
        state["guesses"] += 1
        guesses, secret = self._guess.findall(text), example.answer
        guess = guesses[-1] if guesses else None
        found = guess == secret
        parts = {"answer": float(found), "guesses": float(state["guesses"])}
        if found:
            return Reply(reward=1.0, done=True, components=parts)
        if guess is None:
            return Reply("invalid", components=parts)
        rank = {c: k for k, c in enumerate(self.digits)}
        signs = ["=" if g == s else "+" if rank[s] > rank[g] else "-" for g, s in zip(guess, secret)]
        credit = self.partial_credit * signs.count("=") / self.length
        if self.feedback == "words":
            return Reply(" ".join({"+": "higher", "-": "lower", "=": "right"}[c] for c in signs), credit, components=parts)
        return Reply("".join(signs), credit, components=parts)


@register_task("retry")
class RetryTask(MultiTurnTask):
    """Answer, and if wrong, try again: any single-turn task with `attempts` tries.

    ## Description
    The problems, prompts and verifier are those of `task` (built with `task_kwargs`). When an
    answer is wrong the environment says only `Wrong, try again.`; the reward of a right answer
    decays with the attempt it came on: `decay ** (attempt - 1)`.

    ## Turns and replies
    One answer per turn. Right (the wrapped verifier's score, or its `answer` component, is 1):
    the episode ends. Wrong: the reply above, until `attempts` answers were given.

    ## Answer
    The wrapped task's; metadata likewise.

    ## Rewards
    `decay ** (attempt - 1)` times the wrapped verifier's score on the right answer, 0.0 for wrong
    ones (components `answer`: 1 for a right answer, and `attempt`). A verifier that fails scores 0, as in the env.

    ## Arguments
    - `task="addition"`, `task_kwargs=None`, `attempts=3`, `decay=0.5`, `seed=0`.
    """

    name = "retry"
    description = "a single-turn task with several attempts; the reward decays per attempt (multi-turn)"

    def __init__(self, task: str | Task = "addition", task_kwargs: dict | None = None, *, attempts: int = 3,
                 decay: float = 0.5, seed: int = 0, prompt_style: str = "plain"):  # fmt: skip
        super().__init__(seed=seed, prompt_style=prompt_style)
        inner = make_task(task, **{"seed": seed, "prompt_style": prompt_style, **(task_kwargs or {})})
        if inner.multi_turn:
            raise ValueError(f"retry wraps a single-turn task; {inner.name!r} is multi-turn")
        if int(attempts) < 1 or not 0 < float(decay) <= 1:
            raise ValueError(f"need attempts >= 1 and 0 < decay <= 1, got attempts={attempts}, decay={decay}")
        self.inner, self.max_turns, self.decay = inner, int(attempts), float(decay)
        self.params = {"task": inner.name, "attempts": self.max_turns, "decay": self.decay}
        self.description = f"{inner.name} with {self.max_turns} attempts (multi-turn)"
        self.answer_chars, self.max_answer_chars, self.system_prompt = inner.answer_chars, inner.max_answer_chars, inner.system_prompt

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return self.inner.stop_strings

    @property
    def allowed_chars(self) -> str | None:
        return self.inner.allowed_chars

    def example(self, split: str, index: int) -> Example:
        return self.inner.example(split, index)

    def num_examples(self, split: str) -> int | None:
        return self.inner.num_examples(split)

    def format_prompt(self, example: Example) -> str:
        return self.inner.format_prompt(example)

    def start(self, example: Example) -> dict[str, int]:
        return {"attempt": 0}

    def reply(self, text: str, example: Example, state: dict[str, int]) -> Reply:
        state["attempt"] += 1
        result = score(self.inner.reward, text, example)
        value = result.components.get("answer", result.reward)
        parts = {"answer": float(value >= 1.0), "attempt": float(state["attempt"])}
        if value >= 1.0:
            return Reply(reward=self.decay ** (state["attempt"] - 1) * result.reward, done=True, components=parts)
        return Reply("Wrong, try again.", components=parts)
