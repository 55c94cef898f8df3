"""MCP tools: an MCP server written here, started as a subprocess over stdio, whose tools become the
tools of a multi-turn task — per-call timeouts, a bounded pool of sessions, tool error turns for
every failure, a clear error when the server cannot start, and no server process left after close."""

import os
import sys
import textwrap
import threading
import time

import pytest

pytest.importorskip("mcp")

from textgym import TextGenEnv  # noqa: E402
from textgym.tasks import ToolTask  # noqa: E402
from textgym.tools.mcp import MCPServerError, mcp_tools  # noqa: E402

SERVER = textwrap.dedent('''
    import os, time
    import anyio
    try:
        from mcp.server.mcpserver import MCPServer as Server   # mcp 2
    except ImportError:
        from mcp.server.fastmcp import FastMCP as Server       # mcp 1

    server = Server("textgym-test", log_level="CRITICAL")

    @server.tool()
    def add(a: int, b: int) -> str:
        """Add two integers."""
        return str(a + b)

    @server.tool()
    async def sleep(seconds: float) -> str:
        """Sleep, then say when (this process, start and end times)."""
        start = time.time()
        await anyio.sleep(seconds)
        return f"{os.getpid()} {start} {time.time()}"

    @server.tool()
    def fail(message: str) -> str:
        """Raise an error."""
        raise ValueError(message)

    @server.tool()
    def pid() -> str:
        """This server's process id."""
        return str(os.getpid())

    server.run()
''')


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = tmp_path_factory.mktemp("mcp") / "server.py"
    path.write_text(SERVER)
    return [sys.executable, str(path)]


@pytest.fixture(scope="module")
def tools(server):
    """Two sessions (two server processes) of the server above; 2 s per call."""
    with mcp_tools(server, timeout=2.0, sessions=2, start_timeout=60) as tools:
        yield tools


def test_the_servers_tools_become_tools_and_every_failure_a_tool_error(tools):
    assert tools.names == ["add", "sleep", "fail", "pid"]
    [add] = [s["function"] for s in tools.schemas() if s["function"]["name"] == "add"]
    assert add["description"] == "Add two integers." and add["parameters"]["required"] == ["a", "b"]
    assert tools.call("add", {"a": 2, "b": 40}).text == "42"
    failed = tools.call("fail", {"message": "boom"})
    assert not failed.ok and failed.text.startswith("error: ") and "fail" in failed.text
    began = time.monotonic()
    slow = tools.call("sleep", {"seconds": 30})
    assert (slow.text, slow.ok) == ("error: sleep timed out after 2 s", False) and time.monotonic() - began < 10
    assert tools.call("add", {"a": 1, "b": 1}).text == "2", "the session still works after a timed-out call"
    assert tools.call("nope", {}).text.startswith('error: there is no tool "nope"')
    bad = tools.call("add", {"a": "two", "b": 1})
    assert not bad.ok and bad.text.startswith("error: ")  # the server's own validation error, as a tool turn


def test_at_most_sessions_calls_run_at_once(tools):
    """Six calls from six threads, two sessions: the servers' own clocks show two calls at a time, each on
    its own process."""
    results = []
    threads = [threading.Thread(target=lambda: results.append(tools.call("sleep", {"seconds": 0.3}).text)) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 6 and not any(r.startswith("error") for r in results), results
    spans = [(float(start), float(end), pid) for pid, start, end in (r.split() for r in results)]
    overlap = max(sum(s <= t < e for s, e, _ in spans) for t, _, _ in spans)
    assert overlap == 2 and len({pid for *_, pid in spans}) == 2


def test_mcp_tools_through_the_env_tags_and_native(server, tools):
    task = ToolTask(tools, task="addition", task_kwargs={"digits": 2})
    env = TextGenEnv(task=task, tokenizer="char", max_new_tokens=200)
    env.reset(seed=0)
    assert task.stop_strings == ("</add>", "</sleep>", "</fail>", "</pid>")
    replies = {'<add>{"a": 2, "b": 3}</add>': "5", "<sleep>9</sleep>": "error: sleep timed out after 2 s",
               "<fail>x</fail>": "error: "}  # fmt: skip
    tok = env.unwrapped.tokenizer
    for turn, expected in replies.items():
        for token in tok.encode(turn):
            _, _, terminated, truncated, info = env.step(token)
        assert not (terminated or truncated) and env.unwrapped.core.messages[0][-1]["content"].startswith(expected)
    answer = env.unwrapped.example.answer
    for token in tok.encode(answer) + [tok.eos_token_id]:
        _, reward, terminated, _, info = env.step(token)
    assert terminated and reward == 1.0 and info["reward_components"]["calls"] == 3.0 and "reply_error" not in info
    env.close()
    assert tools.call("add", {"a": 1, "b": 2}).text == "3", "a task passed in is the caller's: the env leaves it open"

    native = TextGenEnv(task=task, tokenizer="smollm2-135m-instruct", jinja_template="hermes", max_new_tokens=120)
    native.reset(seed=0)
    assert native.unwrapped.task.native and '"name": "sleep"' in native.unwrapped.core.text(0)
    call = '<tool_call>{"name": "add", "arguments": {"a": 20, "b": 22}}</tool_call>'
    for token in native.unwrapped.tokenizer.encode(call):
        native.step(token)
    assert native.unwrapped.core.text(0).endswith("<tool_response>\n42\n</tool_response><|im_end|>\n<|im_start|>assistant\n")


def test_close_stops_every_server_process(server):
    tools = mcp_tools(server, timeout=5.0, sessions=2, start_timeout=60)
    pids = {int(tools.call("pid", {}).text) for _ in range(6)}
    assert len(pids) == 2 and all(map(alive, pids))
    tools.close()
    assert not any(map(alive, pids)), "no server process outlives close()"
    tools.close()  # idempotent
    assert tools.call("add", {"a": 1, "b": 1}).text == "error: add cannot be called: its MCP server was closed"


def test_a_server_that_cannot_start_is_a_clear_error(tmp_path):
    with pytest.raises(MCPServerError, match=r"the MCP server 'no-such-mcp-server --x' could not start: .*No such file"):
        mcp_tools(["no-such-mcp-server", "--x"])
    dies = [sys.executable, "-c", "import sys; sys.stderr.write('missing API key\\n'); sys.exit(3)"]
    with pytest.raises(MCPServerError, match=r"could not start: .*its stderr ended with:\nmissing API key"):
        mcp_tools(dies, start_timeout=60)
    silent = [sys.executable, "-c", "import time; time.sleep(60)"]
    began = time.monotonic()
    with pytest.raises(MCPServerError, match=r"could not start: it did not answer the MCP handshake within 1 s"):
        mcp_tools(silent, start_timeout=1)
    assert time.monotonic() - began < 20, "the silent server is stopped, not waited for"


def test_a_missing_mcp_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mcp", None)
    with pytest.raises(ImportError, match=r"pip install 'textgym\[mcp\]'"):
        mcp_tools(["anything"])
