"""Tools for multi-turn tasks: Python functions (or an MCP server's tools) the policy calls in its own
model family's format.

    from textgym.tools import Tool, ToolSet
    tools = ToolSet([get, list_keys])          # plain functions: schemas from signatures and docstrings
    tools.schemas()                            # what the chat template gets: apply_chat_template(..., tools=...)
    tools.call("get", {"key": "blue/ant"})     # ToolResult(text, ok); never raises

    from textgym.tools import mcp_tools        # needs the `mcp` extra: pip install 'textgym[mcp]'
    with mcp_tools(["python", "server.py"], timeout=5.0, sessions=2) as tools:
        task = textgym.tasks.ToolTask(tools, ...)

core.py: `Tool`, `ToolSet`. formats.py: how calls are written and read (`"hermes"` `<tool_call>` JSON,
`"tags"` `<name>arg</name>`) and the built-in Hermes-style chat template. mcp.py: an MCP server's tools.
The task that puts them in front of a policy is `textgym.tasks.ToolTask`.
"""

from textgym.tools.core import STATE_PARAMETER, Tool, ToolResult, ToolSet
from textgym.tools.formats import (
    FORMATS, HERMES_TEMPLATE, CallFormat, ToolCall, get_format, load_chat_template, template_tool_format,
)

__all__ = ["Tool", "ToolSet", "ToolResult", "ToolCall", "CallFormat", "FORMATS", "get_format", "STATE_PARAMETER",
           "template_tool_format", "HERMES_TEMPLATE", "load_chat_template", "mcp_tools", "MCPToolSet"]  # fmt: skip


def __getattr__(name: str):
    # The MCP client lives in its own module; it imports the optional `mcp` package only when used.
    if name in ("mcp_tools", "MCPToolSet"):
        from textgym.tools import mcp

        return getattr(mcp, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
