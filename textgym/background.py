"""`BackgroundLoop`: one asyncio event loop in a daemon thread, for synchronous code to send coroutines to.

The env is synchronous (it steps N slots in one thread); the clients of MCP servers and OpenEnv servers
are asyncio. Rather than an event loop per call or per session, each of them keeps one loop running in
a background thread and submits its calls there, waiting for each with a timeout:

    loop = BackgroundLoop("textgym-mcp")
    result = loop.run(session.call_tool(name, arguments), timeout=5.0)   # TimeoutError after 5 s
    loop.close()
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from typing import Any, Awaitable

__all__ = ["BackgroundLoop"]


class BackgroundLoop:
    """An asyncio loop running in a daemon thread (see the module docstring).

    Args:
        name: the thread's name (shown in tracebacks and `threading.enumerate()`).
    """

    def __init__(self, name: str):
        self.pid = os.getpid()  # a forked child inherits this object but not the thread
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name=name)
        self.thread.start()

    @property
    def usable(self) -> bool:
        """Whether coroutines can run here: the loop's thread lives in this process and is running."""
        return os.getpid() == self.pid and self.thread.is_alive() and not self.loop.is_closed()

    def submit(self, coroutine: Awaitable[Any]) -> concurrent.futures.Future:
        """Schedule `coroutine` on the loop; its future, to wait on from any thread."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def run(self, coroutine: Awaitable[Any], timeout: float | None = None) -> Any:
        """Run `coroutine` on the loop and wait for its result (what it raises is raised here). Past
        `timeout` seconds it is cancelled and TimeoutError raised."""
        future = self.submit(coroutine)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"no answer within {timeout:g} s") from None

    def close(self, timeout: float = 5.0) -> None:
        """Stop the loop and its thread (coroutines still running are abandoned); idempotent."""
        if self.usable:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout)
        if not self.thread.is_alive() and not self.loop.is_closed():
            self.loop.close()
