"""Tool tasks: the environment is a set of tools the policy calls in its own model family's format.

    from textgym.tasks import ToolTask
    from textgym.tools import mcp_tools

    task = ToolTask([get, list_keys], task="file:questions.jsonl")      # Python functions as tools
    task = ToolTask(mcp_tools(["python", "server.py"]), task=...)       # an MCP server's tools

`ToolTask` turns tools (`textgym.tools`) and problems into a multi-turn task; the built-in tool tasks
(`calculator`, `kvstore`) subclass it.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Iterable, Sequence

from textgym.example import Example
from textgym.rewards.core import score
from textgym.tasks.base import Task, make_task
from textgym.tasks.multiturn import MultiTurnTask, Reply
from textgym.tools.core import Tool, ToolResult, ToolSet
from textgym.tools.formats import ToolCall, get_format, template_tool_format

__all__ = ["ToolTask"]

TOOL_FORMATS = ("auto", "hermes", "tags")


class ToolTask(MultiTurnTask):
    """A multi-turn task whose environment is a set of tools: the policy calls them, then answers.

    ## Turns and replies
    A turn that holds tool calls gets one `tool` turn per call: the tool's result, or a tool error
    ("error: ...": a call that is not valid JSON, an unknown tool, missing or mistyped arguments, a tool
    that raised or ran past its time) — never an exception. The policy's turn ends at a call's closing
    tag (a stop string). A turn without a call is the final answer: scored by `answer`, it ends the
    episode. At most `max_turns` turns; a last turn that is still a call ends the episode unanswered.

    ## Tool-call formats (`tool_format`)
    - `"auto"` (default): native where the tokenizer's chat template shows tools in the Hermes/Qwen
      style — the tools go to the template (`apply_chat_template(..., tools=schemas)`) and calls are
      `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`; otherwise `"tags"`.
    - `"hermes"`: `<tool_call>` calls always; with a template that has no tool section the system
      prompt describes the tools (their JSON schemas) instead.
    - `"tags"`: `<name>argument</name>` calls, described in the system prompt, for models without a
      tool template (SmolLM2-135M-Instruct's has none).
    The env resolves the format once, when it is made (`for_tokenizer`); `env.task.call_format`
    and `env.task.native` say what it chose. `EnvConfig(jinja_template="hermes")` gives a model
    whose template has no tool section a Hermes-style one.

    ## Problems and rewards
    With `task=` (a single-turn task or its name), its problems, prompts and verifier: the final
    answer is scored by the task's reward (components `answer` and `calls`). Subclasses generate their
    own problems and override `answer` (and `credit`, paid per tool call, e.g. for the right one).

    ## Arguments
    - `tools`: a `ToolSet`, or `Tool`s / plain functions (`Tool.from_function`).
    - `task=None`, `task_kwargs=None`: the problems (a single-turn task or its name).
    - `tool_format="auto"`, `max_turns=4`, `max_calls_per_turn=4`, `seed=0`, `prompt_style="plain"`.
    """

    name = "tools"
    description = "a single-turn task answered with the help of tools (multi-turn)"
    reply_roles = ("tool",)
    demo: tuple[str, Sequence[tuple[str, dict[str, Any], str]], str] | None = None  # (question, [(tool, args, result)], answer)

    def __init__(self, tools: ToolSet | Iterable[Tool | Callable[..., Any]] = (), task: str | Task | None = None,
                 task_kwargs: dict | None = None, *, tool_format: str = "auto", max_turns: int = 4,
                 max_calls_per_turn: int = 4, seed: int = 0, prompt_style: str = "plain"):  # fmt: skip
        super().__init__(seed=seed, prompt_style=prompt_style)
        self.toolset = tools if isinstance(tools, ToolSet) else ToolSet(tools)
        if tool_format not in TOOL_FORMATS:
            raise ValueError(f"tool_format must be one of {', '.join(map(repr, TOOL_FORMATS))}, got {tool_format!r}")
        if int(max_turns) < 1 or int(max_calls_per_turn) < 1:
            raise ValueError(f"need max_turns >= 1 and max_calls_per_turn >= 1, got {max_turns} and {max_calls_per_turn}")
        self.tool_format = tool_format
        self.format_name = "hermes" if tool_format == "hermes" else "tags"  # "auto" until the env resolves it
        self.native = False  # the tools go to the chat template (resolved by for_tokenizer)
        self.max_turns, self.max_calls_per_turn = int(max_turns), int(max_calls_per_turn)
        self.inner: Task | None = None
        if task is not None:
            self.inner = make_task(task, **{"seed": seed, "prompt_style": prompt_style, **(task_kwargs or {})})
            if self.inner.multi_turn:
                raise ValueError(f"ToolTask takes a single-turn task's problems; {self.inner.name!r} is multi-turn")
            self.name = f"{self.inner.name}+tools"
            self.description = f"{self.inner.name} with tools {', '.join(self.toolset.names)} (multi-turn)"
            self.answer_chars, self.max_answer_chars = self.inner.answer_chars, self.inner.max_answer_chars
        self.params = {"tools": self.toolset.names, "tool_format": tool_format, "max_turns": self.max_turns}

    # -- the format, resolved for the env's tokenizer ----------------------------------------------

    @property
    def call_format(self):
        return get_format(self.format_name)

    def for_tokenizer(self, tokenizer: Any, chat_template: bool) -> "ToolTask":
        """A copy with the tool-call format resolved for `tokenizer` (see "Tool-call formats")."""
        shows = template_tool_format(tokenizer) if chat_template and len(self.toolset) else None
        native = shows == "hermes" and self.tool_format in ("auto", "hermes")
        name = "hermes" if native or self.tool_format == "hermes" else "tags"
        if (name, native) == (self.format_name, self.native):
            return self
        adapted = copy.copy(self)
        adapted.format_name, adapted.native = name, native
        return adapted

    @property
    def tool_schemas(self) -> list[dict] | None:  # the chat template shows the tools only in native mode
        return self.toolset.schemas() if self.native else None

    @property
    def stop_strings(self) -> tuple[str, ...]:
        inner = self.inner.stop_strings if self.inner is not None else ()
        return (*self.call_format.stop_strings(self.toolset), *inner)

    @property
    def system_prompt(self) -> str | None:
        """Native: the worked example (the template shows the tools); otherwise the tools described in
        the call format, then the worked example. None without tools."""
        if not len(self.toolset):
            return self.inner.system_prompt if self.inner is not None else None
        guide = self.worked_example()
        if self.native:
            return guide
        described = self.call_format.describe(self.toolset)
        return f"{described}\n{guide}" if guide else described

    def worked_example(self) -> str | None:
        """`demo` as one exchange in the current format ("Example:\\nUser: ...\\nAssistant: <call>\\nTool:
        ...\\nAssistant: answer"): a 135M model almost never calls a tool it has only been told about."""
        if self.demo is None:
            return None
        question, calls, answer = self.demo
        lines = ["Example:", f"User: {question}"]
        for tool, arguments, result in calls:
            lines += [f"Assistant: {self.call_format.call_text(self.toolset[tool], arguments)}", f"Tool: {result}"]
        return "\n".join([*lines, f"Assistant: {answer}"])

    # -- problems: the wrapped task's, or a subclass's ---------------------------------------------

    def example(self, split: str, index: int) -> Example:
        return self.inner.example(split, index) if self.inner is not None else super().example(split, index)

    def num_examples(self, split: str) -> int | None:
        return self.inner.num_examples(split) if self.inner is not None else super().num_examples(split)

    def format_prompt(self, example: Example) -> str:
        return self.inner.format_prompt(example) if self.inner is not None else super().format_prompt(example)

    def answer_reader(self):
        return self.inner.answer_reader() if self.inner is not None else super().answer_reader()

    # -- the turns ---------------------------------------------------------------------------------

    def start(self, example: Example) -> dict[str, Any]:
        return {"calls": 0}

    def reply(self, text: str, example: Example, state: dict[str, Any]) -> Reply:
        calls = self.call_format.parse(text, self.toolset)
        if calls is None:
            return self.answer(text, example, state)
        outputs, credit = [], 0.0
        for call in calls[: self.max_calls_per_turn]:
            state["calls"] += 1
            result = ToolResult(call.error, False) if call.error else self.toolset.call(call.name, call.arguments, state)
            credit += self.credit(call, result, example, state)
            outputs.append(result.text)
        if len(calls) > self.max_calls_per_turn:
            skipped = len(calls) - self.max_calls_per_turn
            outputs.append(f"error: at most {self.max_calls_per_turn} tool calls per turn; the other {skipped} were not run")
        parts = {"answer": 0.0, "calls": float(state["calls"])}
        if len(outputs) == 1:
            return Reply(outputs[0], reward=credit, role="tool", components=parts)
        return Reply(messages=[{"role": "tool", "content": out} for out in outputs], reward=credit, components=parts)

    def answer(self, text: str, example: Example, state: dict[str, Any]) -> Reply:
        """The final answer's reply (it ends the episode): the wrapped task's verifier, by default."""
        if self.inner is None:
            raise NotImplementedError(f"{type(self).__name__} must define answer(text, example, state) or be given task=")
        result = score(self.inner.reward, text, example)
        value = float(result.components.get("answer", result.reward))
        return Reply(reward=result.reward, done=True, components={"answer": value, "calls": float(state["calls"])})

    def credit(self, call: ToolCall, result: ToolResult, example: Example, state: dict[str, Any]) -> float:
        """Reward paid for one tool call (0 by default: success alone)."""
        return 0.0

    def close(self) -> None:
        self.toolset.close()
