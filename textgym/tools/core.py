"""Tools as Python functions, described by the JSON schemas chat templates take.

    def get(key: str) -> str:
        \"\"\"Look up a key in the store.

        Args:
            key: the key, e.g. "blue/ant".
        \"\"\"
        ...

    tool = Tool.from_function(get)
    tool.schema()   # {"type": "function", "function": {"name": "get", "description": "Look up a key in the store.",
                    #  "parameters": {"type": "object", "properties": {"key": {"type": "string",
                    #  "description": "the key, e.g. \\"blue/ant\\"."}}, "required": ["key"]}}}
    tools = ToolSet([get, list_keys])
    tools.call("get", {"key": "blue/ant"})   # ToolResult(text="57", ok=True); never raises

A tool's parameters come from its signature (type hints: str, int, float, bool, list[...], dict,
Literal[...], Optional[...]) and its docstring (the summary is the tool's description; a Google-style
`Args:` section or `:param x:` lines describe the parameters). A parameter named `state` is not shown
to the model: it receives the episode's state (per-episode data such as a key-value store).

A call never raises: an unknown tool, missing, unexpected or mistyped arguments, a tool that raises or
runs past the set's `timeout` all come back as a `ToolResult` whose text starts with "error: " and says
what was wrong — the tool turn a policy learns from. A tool refuses an input by raising ValueError:
its message becomes the error text as is ("error: division by zero").
"""

from __future__ import annotations

import collections.abc
import inspect
import json
import math
import re
import threading
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Literal, Mapping

__all__ = ["Tool", "ToolSet", "ToolResult", "STATE_PARAMETER"]

STATE_PARAMETER = "state"  # a tool parameter of this name receives the episode's state, unseen by the model
_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", dict: "object", list: "array",
               type(None): "null"}  # fmt: skip
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")  # what MCP allows, and what a tag can be


@dataclass(frozen=True)
class ToolResult:
    """What one tool call gave: the text of the tool turn, and whether the call succeeded."""

    text: str
    ok: bool = True


@dataclass(frozen=True)
class Tool:
    """One tool: its name, description and JSON-schema parameters, and how to run it.

    Attributes:
        name: what the model calls it by.
        description: one or two sentences for the model.
        parameters: a JSON schema of an object (`{"type": "object", "properties": ..., "required": [...]}`).
        fn: the Python function that runs a call, with the arguments as keywords (and `state=` when it
            takes the episode's state); or a function of (arguments, state) for tools run elsewhere
            (`remote=True`, e.g. an MCP server's).
        takes_state: whether `fn` receives the episode's state.
        remote: `fn(arguments, state)` runs the call and checks the arguments itself.
    """

    name: str
    description: str
    parameters: Mapping[str, Any]
    fn: Callable[..., Any] = field(repr=False, compare=False)
    takes_state: bool = False
    remote: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(f"tool name {self.name!r} must be 1-128 letters, digits, '_', '.' or '-' (not starting with '.' or '-')")
        if not isinstance(self.parameters, Mapping) or self.parameters.get("type", "object") != "object":
            raise ValueError(f"tool {self.name!r}: parameters must be a JSON schema of an object, got {self.parameters!r:.80}")
        if not callable(self.fn):
            raise TypeError(f"tool {self.name!r}: fn must be callable, got {type(self.fn).__name__}")

    @classmethod
    def from_function(cls, fn: Callable[..., Any], *, name: str | None = None, description: str | None = None) -> "Tool":
        """The tool that calls `fn`: name, description and parameters read from its signature, type
        hints and docstring (see the module docstring). A parameter without a type hint takes any JSON
        value; one with a hint that has no JSON equivalent is refused here, naming it."""
        if not callable(fn):
            raise TypeError(f"Tool.from_function needs a function, got {type(fn).__name__} {fn!r:.60}")
        tool_name = name or getattr(fn, "__name__", None)
        summary, described = _parse_docstring(inspect.getdoc(fn) or "")
        try:
            hints = typing.get_type_hints(fn)
        except Exception as e:  # an unresolvable forward reference: say which function
            raise TypeError(f"tool {tool_name!r}: cannot read the type hints of {fn!r:.60} ({e})") from None
        properties: dict[str, Any] = {}
        required: list[str] = []
        takes_state = False
        for p in inspect.signature(fn).parameters.values():
            if p.name == STATE_PARAMETER:
                takes_state = True
                continue
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
                raise TypeError(f"tool {tool_name!r}: parameter {p.name!r} must be passable by keyword (no *args, **kwargs, /)")
            schema = _json_schema(hints.get(p.name, Any), f"tool {tool_name!r}, parameter {p.name!r}")
            if p.name in described:
                schema["description"] = described[p.name]
            if p.default is inspect.Parameter.empty:
                required.append(p.name)
            elif _is_json(p.default):
                schema["default"] = p.default
            properties[p.name] = schema
        parameters = {"type": "object", "properties": properties, "required": required}
        return cls(tool_name, description if description is not None else summary, parameters, fn, takes_state)

    @property
    def argument_names(self) -> list[str]:
        return list(self.parameters.get("properties", {}))

    def schema(self) -> dict[str, Any]:
        """The tool as chat templates take it (`apply_chat_template(..., tools=[...])`)."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": dict(self.parameters)}}  # fmt: skip

    def check_arguments(self, arguments: Any) -> dict[str, Any]:
        """The arguments, checked against the schema; a ValueError says what is wrong."""
        if not isinstance(arguments, Mapping):
            raise ValueError(f"the arguments of {self.name} must be a JSON object, got {_show(arguments)}")
        properties = self.parameters.get("properties", {})
        unknown = [k for k in arguments if k not in properties]
        if unknown:
            raise ValueError(f"{self.name} has no argument {', '.join(map(repr, unknown))}; its arguments are: "
                             f"{', '.join(properties) or '(none)'}")  # fmt: skip
        missing = [k for k in self.parameters.get("required", ()) if k not in arguments]
        if missing:
            raise ValueError(f"{self.name} needs the argument{'s' * (len(missing) > 1)} {', '.join(map(repr, missing))}")
        out = dict(arguments)
        for key, value in arguments.items():
            out[key] = _check_value(value, properties[key], f"argument {key!r} of {self.name}")
        return out

    def run(self, arguments: Any, state: Any = None) -> Any:
        """Run a call (arguments checked first; raises what the tool raises)."""
        if self.remote:
            return self.fn(arguments, state)
        arguments = self.check_arguments(arguments)
        return self.fn(**arguments, state=state) if self.takes_state else self.fn(**arguments)


class ToolSet:
    """Tools by name, and the one safe way to call them (`call`).

    Args:
        tools: `Tool`s or plain functions (each becomes `Tool.from_function(fn)`).
        timeout: seconds a call may take before it becomes a tool error (None: no limit but the
            env's guard on the whole reply, `reward_timeout`). With a limit, each call runs in a
            daemon thread of its own; one that times out is abandoned (it finishes in the background).
    """

    def __init__(self, tools: Iterable[Tool | Callable[..., Any]] = (), *, timeout: float | None = None):
        self.tools: dict[str, Tool] = {}
        for t in tools:
            tool = t if isinstance(t, Tool) else Tool.from_function(t)
            if tool.name in self.tools:
                raise ValueError(f"two tools are named {tool.name!r}; tool names must be unique")
            self.tools[tool.name] = tool
        if timeout is not None and not (isinstance(timeout, (int, float)) and timeout > 0 and math.isfinite(timeout)):
            raise ValueError(f"timeout must be a positive number of seconds or None, got {timeout!r}")
        self.timeout = timeout

    def __iter__(self) -> Iterator[Tool]:
        return iter(self.tools.values())

    def __len__(self) -> int:
        return len(self.tools)

    def __contains__(self, name: object) -> bool:
        return name in self.tools

    def __getitem__(self, name: str) -> Tool:
        return self.tools[name]

    @property
    def names(self) -> list[str]:
        return list(self.tools)

    def schemas(self) -> list[dict[str, Any]]:
        """Every tool's schema, for the chat template's `tools=`."""
        return [tool.schema() for tool in self]

    def call(self, name: Any, arguments: Any, state: Any = None) -> ToolResult:
        """Run one call; never raises (see the module docstring for what becomes an error)."""
        tool = self.tools.get(name) if isinstance(name, str) else None
        if tool is None:
            return ToolResult(f"error: there is no tool {_show(name)}; the tools are: {', '.join(self.tools) or '(none)'}", False)
        if self.timeout is None:
            return _run(tool, arguments, state)
        box: list[ToolResult] = []
        worker = threading.Thread(target=lambda: box.append(_run(tool, arguments, state)), daemon=True, name=f"textgym-tool-{name}")
        worker.start()
        worker.join(self.timeout)
        if not box:
            return ToolResult(f"error: {name} timed out after {self.timeout:g} s", False)
        return box[0]

    def close(self) -> None:
        """Release what the tools hold (nothing for Python functions; servers for MCP tools)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}([{', '.join(self.tools)}])"


def _run(tool: Tool, arguments: Any, state: Any) -> ToolResult:
    try:
        out = tool.run(arguments, state)
        return out if isinstance(out, ToolResult) else ToolResult(as_text(out))
    except ValueError as e:  # the tool's own refusal, or arguments that do not fit the schema
        return ToolResult(f"error: {e}", False)
    except Exception as e:  # a tool reads the policy's arguments: its failure is a tool turn, not the run's
        return ToolResult(f"error: {tool.name} raised {type(e).__name__}: {e}", False)


def as_text(value: Any) -> str:
    """A tool's return value as the tool turn's text: a str as is, JSON for JSON values, else str()."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(value)


# -- schemas from type hints and docstrings --------------------------------------------------------


def _json_schema(tp: Any, where: str) -> dict[str, Any]:
    """The JSON schema of a type hint (a TypeError names the parameter when there is none)."""
    if tp is Any or tp is inspect.Parameter.empty:
        return {}
    if tp in _JSON_TYPES:
        return {"type": _JSON_TYPES[tp]}
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        kinds = sorted({_JSON_TYPES[type(a)] for a in args if type(a) in _JSON_TYPES})
        return {"type": kinds[0] if len(kinds) == 1 else kinds, "enum": list(args)}
    if origin in (typing.Union, types.UnionType):
        parts = [_json_schema(a, where) for a in args]
        if all(set(p) == {"type"} and isinstance(p["type"], str) for p in parts):
            return {"type": [p["type"] for p in parts]}
        return {"anyOf": parts}
    if origin in (list, tuple, set, frozenset, collections.abc.Sequence, collections.abc.Iterable):
        if not args:
            return {"type": "array"}
        item = args[0] if len(args) == 1 or (len(args) == 2 and args[1] is Ellipsis) else Any
        return {"type": "array", "items": _json_schema(item, where)}
    if origin in (dict, collections.abc.Mapping):
        return {"type": "object"}
    raise TypeError(f"{where}: the type {tp!r} has no JSON-schema equivalent; use str, int, float, bool, list[...], "
                    "dict, Literal[...] or an Optional of these (or no hint for any JSON value)")  # fmt: skip


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """(the summary: the docstring's first paragraph, {parameter: description}) from a Google-style
    `Args:` section or Sphinx `:param name:` lines."""
    paragraphs = doc.strip().split("\n\n")
    summary = " ".join(paragraphs[0].split()) if paragraphs and not _is_section(paragraphs[0]) else ""
    described: dict[str, str] = {}
    for m in re.finditer(r":param\s+(?:\w+\s+)?(\w+):\s*(.+?)(?=\n\s*:|\Z)", doc, re.S):
        described[m.group(1)] = " ".join(m.group(2).split())
    lines = doc.splitlines()
    for i, line in enumerate(lines):
        if line.strip() not in ("Args:", "Arguments:", "Parameters:"):
            continue
        indent, name = None, None
        for row in lines[i + 1 :]:
            if not row.strip():
                continue
            depth = len(row) - len(row.lstrip())
            if indent is None:
                indent = depth
            if depth < indent or (depth == indent and _is_section(row.strip())):
                break
            m = re.match(r"\s*\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)", row) if depth == indent else None
            if m:
                name = m.group(1)
                described[name] = m.group(2).strip()
            elif name:
                described[name] = f"{described[name]} {row.strip()}".strip()
        break
    return summary, described


def _is_section(text: str) -> bool:
    return bool(re.match(r"^(Args|Arguments|Parameters|Returns|Raises|Yields|Examples?|Notes?):", text.strip()))


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if _is_json(value) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_value(value: Any, schema: Mapping[str, Any], where: str) -> Any:
    """`value` if it fits `schema` (its type and enum; an integer is a fine number), else a ValueError."""
    if "enum" in schema and value not in schema["enum"]:
        raise ValueError(f"{where} must be one of {', '.join(map(_show, schema['enum']))}, got {_show(value)}")
    kinds = schema.get("type")
    if kinds is None:
        return value
    kinds = [kinds] if isinstance(kinds, str) else list(kinds)
    fits = {
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
        "array": lambda v: isinstance(v, list),
        "object": lambda v: isinstance(v, dict),
        "null": lambda v: v is None,
    }
    if not any(fits.get(kind, lambda v: True)(value) for kind in kinds):
        raise ValueError(f"{where} must be {' or '.join(f'a JSON {k}' for k in kinds)}, got {_show(value)}")
    if "items" in schema and isinstance(value, list):
        return [_check_value(v, schema["items"], f"an item of {where}") for v in value]
    return value
