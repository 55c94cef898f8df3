"""An MCP server's tools as textgym tools: the stdio transport, a pool of sessions, per-call timeouts.

    from textgym.tasks import ToolTask
    from textgym.tools import mcp_tools

    with mcp_tools(["python", "my_server.py"], timeout=5.0, sessions=2) as tools:
        env = textgym.TextGenEnv(task=ToolTask(tools, task="file:questions.jsonl"), tokenizer=...)
        ...                                   # the servers stop when the block ends (or at tools.close())

Needs the `mcp` package: `pip install 'textgym[mcp]'`.

The env is synchronous; MCP clients are asyncio. `MCPToolSet` runs one asyncio loop in a background
thread, starts `sessions` server processes on it (each an MCP session over stdin/stdout), lists the
first one's tools (`list_tools` -> `Tool`s with the server's JSON schemas) and sends every call
(`call_tool`) to a free session. A call waits at most `timeout` seconds, the wait for a free session
included; one that runs past it, a server that answers with an error, or one that has died all become
a tool error turn ("error: ..."), never an exception. `close()` ends the sessions and stops the
server processes (stdin closed, then terminated, then killed), then the loop; an MCPToolSet that is
never closed is closed when the interpreter exits. A server that cannot start (no such command, it
exits, it does not answer the MCP handshake within `start_timeout`) is a `MCPServerError` naming the
command, with the end of what it wrote to stderr.

The tools are shared by every episode (the sessions are not per episode): an MCP server that keeps
state keeps it across episodes. Calls made in a forked worker (`reward_isolation="process"`) cannot
reach the loop, which lives in the parent: they get a tool error saying so.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import os
import shlex
import tempfile
import weakref
from typing import Any, Sequence

from textgym.background import BackgroundLoop
from textgym.tools.core import Tool, ToolResult, ToolSet

__all__ = ["MCPToolSet", "MCPServerError", "mcp_tools"]

_INSTALL = "pip install 'textgym[mcp]' (or pip install mcp)"


class MCPServerError(RuntimeError):
    """An MCP server could not be started or listed."""


def _import_mcp():
    try:
        import mcp
        from mcp.client.stdio import StdioServerParameters, stdio_client
    except ImportError as e:
        raise ImportError(f"MCP tools need the 'mcp' package, which is not installed ({e}); install it with {_INSTALL}") from None
    return mcp.ClientSession, StdioServerParameters, stdio_client


def mcp_tools(command: str | Sequence[str], **kwargs: Any) -> "MCPToolSet":
    """The tools of the MCP server that `command` starts (see `MCPToolSet` for the arguments)."""
    return MCPToolSet(command, **kwargs)


class MCPToolSet(ToolSet):
    """The tools of an MCP server reached over stdio (see the module docstring).

    Args:
        command: the server's command line, as a list (`["python", "server.py"]`) or a string
            (split like a shell would).
        env: environment variables for the server, over the few MCP passes by default (PATH, HOME, ...).
        cwd: the server's working directory.
        timeout: seconds a call may take, the wait for a free session included (None: no limit).
        sessions: server processes started, hence calls that can run at once (from several threads).
        start_timeout: seconds each server has to start and answer the MCP handshake.
        errlog: a file (with a descriptor) for the servers' stderr, e.g. `sys.stderr`; None: a
            temporary file per server, quoted when the server fails to start.
    """

    def __init__(self, command: str | Sequence[str], *, env: dict[str, str] | None = None, cwd: str | None = None,
                 timeout: float | None = 10.0, sessions: int = 1, start_timeout: float = 30.0,
                 errlog: Any = None):  # fmt: skip
        ClientSession, StdioServerParameters, stdio_client = _import_mcp()
        argv = shlex.split(command) if isinstance(command, str) else [str(part) for part in command]
        if not argv:
            raise ValueError("command must name the MCP server's executable, e.g. ['python', 'server.py']")
        if isinstance(sessions, bool) or not isinstance(sessions, int) or sessions < 1:
            raise ValueError(f"sessions must be a positive integer, got {sessions!r}")
        super().__init__((), timeout=None)  # timeouts are the pool's own (below), not a thread per call
        self.call_timeout = timeout
        self.command = argv
        self._errlog = errlog
        self._pid = os.getpid()
        self._closed = False
        self._params = StdioServerParameters(command=argv[0], args=argv[1:], env=env, cwd=cwd)
        self._client = ClientSession, stdio_client
        self._background = BackgroundLoop("textgym-mcp")
        self._stop = self._background.run(_make_event())
        self._tasks: list[concurrent.futures.Future] = []
        self._sessions: list[Any] = []
        self._free: asyncio.Queue | None = None
        self._finalizer = weakref.finalize(self, _shutdown, self._background, self._stop, self._tasks)
        atexit.register(self._finalizer)
        try:
            self._start(sessions, start_timeout)
            listed = self._background.submit(self._sessions[0].list_tools()).result(start_timeout)
        except BaseException:
            self.close()
            raise
        for tool in listed.tools:
            schema = _field(tool, "input_schema", "inputSchema") or {"type": "object", "properties": {}}
            self.tools[tool.name] = Tool(tool.name, tool.description or "", dict(schema), self._remote(tool.name), remote=True)

    # -- starting and stopping -------------------------------------------------------------------

    def _start(self, sessions: int, start_timeout: float) -> None:
        # Each server's stderr goes to a file of its own (unlinked: it goes when the server does), so that a
        # server that fails to start can be quoted; the file stays the server's, ours is closed once it runs.
        errlogs = [self._errlog or tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") for _ in range(sessions)]
        ready = [concurrent.futures.Future() for _ in range(sessions)]
        self._tasks.extend(self._background.submit(self._serve(r, e)) for r, e in zip(ready, errlogs))
        try:
            for r, errlog in zip(ready, errlogs):
                try:
                    self._sessions.append(r.result(start_timeout))
                except concurrent.futures.TimeoutError:
                    reason = f"it did not answer the MCP handshake within {start_timeout:g} s"
                    raise MCPServerError(self._failed(reason, errlog)) from None
                except Exception as e:
                    raise MCPServerError(self._failed(f"{type(e).__name__}: {_reason(e)}", errlog)) from None
        finally:
            for errlog in errlogs:
                if errlog is not self._errlog:
                    errlog.close()
        self._free = self._background.submit(_make_queue(self._sessions)).result()

    def _failed(self, reason: str, errlog: Any) -> str:
        tail = ""
        if errlog is not self._errlog:
            errlog.flush()
            errlog.seek(0)
            tail = errlog.read()[-600:].strip()
        said = f"; its stderr ended with:\n{tail}" if tail else ""
        return f"the MCP server {shlex.join(self.command)!r} could not start: {reason}{said}"

    async def _serve(self, ready: concurrent.futures.Future, errlog: Any) -> None:
        """One session, start to end in one task (the transport's cancel scopes need that): open it,
        hand it over, wait for close(), then leave the contexts, which stop the server process."""
        ClientSession, stdio_client = self._client
        try:
            async with stdio_client(self._params, errlog=errlog) as (read, write):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    ready.set_result(session)
                    await self._stop.wait()
        except BaseException as e:  # noqa: BLE001 - handed to the thread that waits, not swallowed
            if not ready.done():
                ready.set_exception(e if isinstance(e, Exception) else RuntimeError(repr(e)))

    def close(self) -> None:
        """End the sessions, stop the server processes and the loop; idempotent."""
        if not self._closed:
            self._closed = True
            self._finalizer()
            atexit.unregister(self._finalizer)

    def __enter__(self) -> "MCPToolSet":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- calls -------------------------------------------------------------------------------------

    def _remote(self, name: str):
        def run(arguments: Any, state: Any = None) -> ToolResult:
            return self._call(name, arguments)

        return run

    def _call(self, name: str, arguments: Any) -> ToolResult:
        if os.getpid() != self._pid:
            return ToolResult(f"error: {name} is an MCP tool, whose client lives in the parent process; it cannot be "
                              "called from a forked worker (use reward_isolation='thread')", False)  # fmt: skip
        if self._closed:
            return ToolResult(f"error: {name} cannot be called: its MCP server was closed", False)
        if not isinstance(arguments, dict):
            return ToolResult(f"error: the arguments of {name} must be a JSON object", False)
        future = self._background.submit(self._send(name, arguments))
        try:
            result = future.result(self.call_timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            return ToolResult(f"error: {name} timed out after {self.call_timeout:g} s", False)
        except Exception as e:  # the session broke (the server died, the pipe closed): a tool turn, not the run's end
            return ToolResult(f"error: {name} failed: {type(e).__name__}: {_reason(e)}", False)
        text = "\n".join(_content_text(block) for block in (result.content or []))
        if _field(result, "is_error", "isError"):
            return ToolResult(f"error: {text}" if not text.startswith("error") else text, False)
        return ToolResult(text)

    async def _send(self, name: str, arguments: dict) -> Any:
        session = await self._free.get()
        try:
            return await session.call_tool(name, arguments)
        finally:
            self._free.put_nowait(session)

    def __repr__(self) -> str:
        return f"MCPToolSet({shlex.join(self.command)!r}, tools=[{', '.join(self.tools)}])"


async def _make_event() -> asyncio.Event:
    return asyncio.Event()


async def _make_queue(items: list) -> asyncio.Queue:
    queue: asyncio.Queue = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)
    return queue


def _shutdown(background: BackgroundLoop, stop: asyncio.Event, tasks: list[concurrent.futures.Future]) -> None:
    """Stop every session (each stops its server process), then the loop and its thread. Bounded:
    the transport gives a server 2 s to exit after its stdin closes, then terminates and kills it."""
    if background.usable:
        background.loop.call_soon_threadsafe(stop.set)
        _, running = concurrent.futures.wait(tasks, timeout=5.0)
        for task in running:  # stuck before the handshake, or in a call: cancelled, which still stops its server
            task.cancel()
        concurrent.futures.wait(running, timeout=10.0)
    background.close()


def _field(obj: Any, *names: str) -> Any:
    """An attribute of an MCP type under its name in either major version (snake_case or camelCase)."""
    return next((getattr(obj, n) for n in names if getattr(obj, n, None) is not None), None)


def _content_text(block: Any) -> str:
    text = getattr(block, "text", None)
    return text if isinstance(text, str) else f"[{getattr(block, 'type', type(block).__name__)}]"


def _reason(e: BaseException) -> str:
    """An exception's message; for an exception group, its first leaf's."""
    while getattr(e, "exceptions", None):  # an ExceptionGroup (anyio's task groups raise them)
        e = e.exceptions[0]
    return str(e) or type(e).__name__
