"""How a policy writes tool calls, and how textgym reads them: one `CallFormat` per family of models.

- `"hermes"`: `<tool_call>{"name": "get", "arguments": {"key": "blue/ant"}}</tool_call>`, the format
  Hermes- and Qwen-style chat templates teach (their system prompt lists the tools as JSON schemas
  inside `<tools></tools>`; results come back in `tool` turns).
- `"tags"`: `<get>blue/ant</get>` — one tag per tool, its text the tool's one argument (a JSON object
  for a tool with several): short enough for a small model without a tool template to learn.

A format finds every call of a turn in one pass over its text (`parse`: None when the turn holds no
call, i.e. it is the final answer), names its turn-ending strings (`stop_strings`: each closing tag),
writes a call (`call_text`, for worked examples) and, for chat templates without a tool section,
describes the tools in words for the system prompt (`describe`). A call it cannot read (bad JSON, a
tag whose argument does not fit) comes back as a `ToolCall` with an `error`: the tool turn that says so.

`template_tool_format(tokenizer)` says whether a tokenizer's chat template shows tools, and in which
format; `HERMES_TEMPLATE` is a ChatML template with a Hermes-style tool section, for models whose own
template has none (`EnvConfig(jinja_template="hermes")`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textgym.tools.core import Tool, ToolSet

__all__ = ["ToolCall", "CallFormat", "HermesFormat", "TagFormat", "FORMATS", "get_format", "tag_calls",
           "template_tool_format", "HERMES_TEMPLATE", "load_chat_template"]  # fmt: skip


@dataclass(frozen=True)
class ToolCall:
    """One call read from the policy's text: a tool name and its arguments, or the error that kept it
    from being read (then `name` and `arguments` are None)."""

    name: str | None
    arguments: Any = None
    error: str | None = None


class CallFormat:
    """A way of writing tool calls (see the module docstring)."""

    name = "format"

    def stop_strings(self, tools: ToolSet) -> tuple[str, ...]:
        raise NotImplementedError

    def parse(self, text: str, tools: ToolSet) -> list[ToolCall] | None:
        """The calls in a turn, in order; None when it holds none (the turn is the final answer)."""
        raise NotImplementedError

    def call_text(self, tool: Tool, arguments: dict[str, Any]) -> str:
        raise NotImplementedError

    def describe(self, tools: ToolSet) -> str:
        raise NotImplementedError


class HermesFormat(CallFormat):
    """`<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (see the module docstring)."""

    name = "hermes"
    OPEN, CLOSE = "<tool_call>", "</tool_call>"

    def stop_strings(self, tools: ToolSet) -> tuple[str, ...]:
        return (self.CLOSE,) if len(tools) else ()

    def parse(self, text: str, tools: ToolSet) -> list[ToolCall] | None:
        if not len(tools):
            return None
        found = [inner for _, inner in _spans(text, {self.OPEN[1:-1]: self.CLOSE})]
        if not found:
            if text.rstrip().endswith(self.CLOSE):
                return [ToolCall(None, None, f"error: no {self.OPEN} before {self.CLOSE}")]
            return None
        return [self._read(inner) for inner in found]

    def _read(self, inner: str) -> ToolCall:
        shape = '<tool_call>{"name": <tool name>, "arguments": {<argument>: <value>, ...}}</tool_call>'
        try:
            call = json.loads(inner)
        except json.JSONDecodeError as e:
            return ToolCall(None, None, f"error: the tool call is not valid JSON ({e.msg} at character {e.pos}); write {shape}")
        except (ValueError, RecursionError) as e:  # nesting too deep, an integer too long to read
            return ToolCall(None, None, f"error: the tool call cannot be read ({type(e).__name__}); write {shape}")
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            return ToolCall(None, None, f"error: a tool call is a JSON object with a \"name\" and \"arguments\"; write {shape}")
        arguments = call.get("arguments", call.get("parameters", {}))
        if isinstance(arguments, str):  # some models write the arguments as a JSON string
            try:
                arguments = json.loads(arguments)
            except (ValueError, RecursionError):
                return ToolCall(None, None, f"error: the arguments of {call['name']} are not a JSON object; write {shape}")
        return ToolCall(call["name"], arguments)

    def call_text(self, tool: Tool, arguments: dict[str, Any]) -> str:
        return f"{self.OPEN}{json.dumps({'name': tool.name, 'arguments': arguments}, ensure_ascii=False)}{self.CLOSE}"

    def describe(self, tools: ToolSet) -> str:
        schemas = "\n".join(json.dumps(s, ensure_ascii=False) for s in tools.schemas())
        return (
            f"You can call tools. They are described by JSON schemas inside <tools></tools>:\n<tools>\n{schemas}\n</tools>\n"
            f'To call a tool, reply with only {self.OPEN}{{"name": <tool name>, "arguments": <arguments as a JSON object>}}'
            f"{self.CLOSE}; its result comes back to you in a tool message."
        )


class TagFormat(CallFormat):
    """`<name>argument</name>` per tool (see the module docstring)."""

    name = "tags"

    def stop_strings(self, tools: ToolSet) -> tuple[str, ...]:
        return tuple(f"</{name}>" for name in tools.names)

    def parse(self, text: str, tools: ToolSet) -> list[ToolCall] | None:
        found = tag_calls(text, tools.names)
        if not found:
            stripped = text.rstrip()
            closed = next((name for name in tools.names if stripped.endswith(f"</{name}>")), None)
            return None if closed is None else [ToolCall(closed, None, f"error: no <{closed}> before </{closed}>")]
        return [self._arguments(tools[name], inner) for name, inner in found]

    @staticmethod
    def _arguments(tool: Tool, inner: str) -> ToolCall:
        names = tool.argument_names
        if not names:
            return ToolCall(tool.name, {})
        if len(names) > 1:
            try:
                arguments = json.loads(inner)
            except (ValueError, RecursionError):
                return ToolCall(None, None, f"error: {tool.name} takes several arguments: write them as a JSON object, "
                                            f"<{tool.name}>{{\"{names[0]}\": ...}}</{tool.name}>")  # fmt: skip
            return ToolCall(tool.name, arguments)
        kind = tool.parameters["properties"][names[0]].get("type")
        readers = {"integer": int, "number": float, "boolean": lambda t: {"true": True, "false": False}[t.lower()],
                   "array": json.loads, "object": json.loads}  # fmt: skip
        if kind not in readers:  # a string (or any value): the text between the tags, as written
            return ToolCall(tool.name, {names[0]: inner})
        try:
            return ToolCall(tool.name, {names[0]: readers[kind](inner.strip())})
        except (ValueError, KeyError, RecursionError):
            article = "an" if kind[0] in "aeiou" else "a"
            return ToolCall(None, None, f"error: {tool.name} takes {article} {kind}, got {inner.strip()[:40]!r}")

    def call_text(self, tool: Tool, arguments: dict[str, Any]) -> str:
        inner = str(next(iter(arguments.values()))) if len(arguments) == 1 else json.dumps(arguments) if arguments else ""
        return f"<{tool.name}>{inner}</{tool.name}>"

    def describe(self, tools: ToolSet) -> str:
        def argument(tool: Tool) -> str:
            names = tool.argument_names
            return names[0] if len(names) == 1 else "JSON arguments" if names else ""

        lines = [f"- <{t.name}>{argument(t)}</{t.name}>: {t.description}" for t in tools]
        return ("You can use tools. To call one, reply with only the call; its result comes back to you. The tools:\n"
                + "\n".join(lines))  # fmt: skip


FORMATS: dict[str, CallFormat] = {"hermes": HermesFormat(), "tags": TagFormat()}


def get_format(name: str) -> CallFormat:
    if name not in FORMATS:
        raise ValueError(f"unknown tool-call format {name!r}; the formats are: {', '.join(FORMATS)}")
    return FORMATS[name]


def tag_calls(text: str, names: list[str] | tuple[str, ...]) -> list[tuple[str, str]]:
    """(tool name, text inside) of every `<name>…</name>` in `text`, left to right (each call ends at the
    first closing tag of its name after its opening one)."""
    return _spans(text, {name: f"</{name}>" for name in names})


def _spans(text: str, closers: dict[str, str]) -> list[tuple[str, str]]:
    """One pass over `text` for `<name>…closer` spans. A pattern like `<calc>(.*?)</calc>` rescans the
    rest of the text from every unclosed opening tag, quadratic in the text's length; here a name
    whose closing tag is missing after one opening is missing after every later one, so it is skipped
    from then on and every character is looked at a bounded number of times."""
    if not closers:
        return []
    opening = re.compile("<(" + "|".join(re.escape(n) for n in sorted(closers, key=len, reverse=True)) + ")>")
    spans, at, unclosed = [], 0, set()
    while len(unclosed) < len(closers) and (m := opening.search(text, at)):
        name = m.group(1)
        end = -1 if name in unclosed else text.find(closers[name], m.end())
        if end == -1:
            unclosed.add(name)
            at = m.end()
            continue
        spans.append((name, text[m.end() : end]))
        at = end + len(closers[name])
    return spans


_PROBE_TOOL = {"type": "function", "function": {"name": "textgym_probe_tool", "description": "probe",
                                                 "parameters": {"type": "object", "properties": {}, "required": []}}}  # fmt: skip


def template_tool_format(tokenizer: Any) -> str | None:
    """The tool-call format a tokenizer's chat template teaches: "hermes" when it shows tools and asks
    for `<tool_call>` calls, "other" when it shows them in another way, None when it shows no tools
    (or has no template)."""
    if not getattr(tokenizer, "has_chat_template", False):
        return None
    messages = [{"role": "user", "content": "probe"}]
    try:
        rendered = tokenizer.apply_chat_template(messages, tools=[_PROBE_TOOL])
    except Exception:  # a template that fails on tools= has no tool section to speak of
        return None
    if "textgym_probe_tool" not in rendered:
        return None
    return "hermes" if HermesFormat.OPEN in rendered else "other"


# A ChatML template (the <|im_start|>/<|im_end|> turns of SmolLM2, Qwen and others) with a tool section
# in the Hermes style: the tools as JSON schemas in the system turn, calls in <tool_call> tags, results
# as <tool_response> blocks in a user turn (consecutive tool results share one). Prefix-preserving:
# earlier turns render the same when a turn is added, as textgym's multi-turn episodes need.
HERMES_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] + '\\n\\n' }}{%- endif %}"
    "{{- '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n'"
    " + 'You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' + (tool | tojson) }}{%- endfor %}"
    "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within '"
    " + '<tool_call></tool_call> XML tags:\\n<tool_call>\\n{\"name\": <function-name>, \"arguments\": <args-json-object>}'"
    " + '\\n</tool_call><|im_end|>\\n' }}"
    "{%- elif messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' and loop.first %}"
    "{%- elif message['role'] == 'tool' %}"
    "{%- if loop.first or loop.previtem['role'] != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + message['content'] + '\\n</tool_response>' }}"
    "{%- if loop.last or loop.nextitem['role'] != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

TEMPLATES = {"hermes": HERMES_TEMPLATE}


def load_chat_template(spec: str) -> str:
    """A Jinja chat template by name ("hermes": `HERMES_TEMPLATE`) or from a file path."""
    if spec in TEMPLATES:
        return TEMPLATES[spec]
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ValueError(f"jinja_template={spec!r} is neither a built-in template ({', '.join(TEMPLATES)}) nor a file; "
                         "pass 'hermes' or the path of a Jinja chat template")  # fmt: skip
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"jinja_template={spec!r}: cannot read the file ({e})") from None
    if not text.strip():
        raise ValueError(f"jinja_template={spec!r}: the file is empty")
    return text
