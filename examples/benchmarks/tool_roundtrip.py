"""What a tool turn costs when the tool lives in another process: MCP and OpenEnv against an in-process reply.

The same operation each way — look a key up in a store, `get(key)` — answered by:
  (a) in-process: the `kvstore` task's Python tool (parse the call, run the function);
  (b) MCP: the same lookup in an MCP server written below, started as a subprocess (stdio, JSON-RPC);
  (c) OpenEnv: the `kvstore` task served by `textgym serve` in another process, driven by `OpenEnvTask`
      over OpenEnv's WebSocket protocol (the whole turn is the server's: it parses and looks up).
Two levels: `reply` (the task's reply to one turn that holds a call: the round trip itself) and `turn`
(a whole policy turn through `TextGenEnv`, char tokenizer: the turn's ~20 `env.step` calls, the reply and
its tokens appended). The backends alternate inside every repeat (the machine is shared: medians, and
only figures measured side by side compare).

    python examples/benchmarks/tool_roundtrip.py [--replies 300] [--turns 100] [--repeats 3]
    python examples/benchmarks/tool_roundtrip.py --smoke
Needs the mcp and openenv extras: pip install 'textgym[mcp,openenv]'.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import textgym
from textgym.openenv import OpenEnvTask
from textgym.tasks import ToolTask
from textgym.tools import mcp_tools

STORE = {"red/fox": 17, "blue/ant": 42, "gold/owl": 63}
MCP_SERVER = textwrap.dedent(f'''
    try:
        from mcp.server.mcpserver import MCPServer as Server
    except ImportError:
        from mcp.server.fastmcp import FastMCP as Server
    server = Server("kv", log_level="CRITICAL")
    STORE = {STORE!r}

    @server.tool()
    def get(key: str) -> str:
        """Get the value stored under a key."""
        return str(STORE[key.strip()])

    server.run()
''')


def start_openenv_server() -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-m", "textgym.cli", "serve", "--task", "kvstore", "--port", "0",
                                "--task-kwargs", '{"max_turns": 100000}'], stdout=subprocess.PIPE, text=True)  # fmt: skip
    found = re.search(r"at (http://\S+) ", process.stdout.readline())
    if found is None:
        process.kill()
        raise SystemExit("the OpenEnv server did not start")
    return process, found.group(1)


class Backend:
    """One way of answering `get(key)`: a task whose replies to `<get>key</get>` make the round trip."""

    def __init__(self, name: str, task, key_of):
        self.name, self.task, self.key_of = name, task, key_of

    def replies(self, n: int) -> list[float]:
        """Seconds of each of `n` replies to a turn holding one call."""
        example = self.task.example("train", 0)
        state = self.task.start(example)
        key = self.key_of(self.task, example, state)
        times = []
        for _ in range(n):
            began = time.perf_counter()
            reply = self.task.reply(f"<get>{key}</get>", example, state)
            times.append(time.perf_counter() - began)
        assert reply.as_messages()[0]["content"].isdigit(), reply  # a real answer, not an error
        self.task.end(example, state)
        return times

    def turns(self, n: int, per_episode: int = 10) -> list[float]:
        """Seconds of each of `n` whole policy turns through the env (the call written token by token)."""
        env = textgym.TextGenEnv(task=self.task, tokenizer="char", max_new_tokens=40 * (per_episode + 1),
                                 max_turns=per_episode + 1, max_prompt_tokens=800)  # fmt: skip
        tok, times = env.unwrapped.tokenizer, []
        for episode in range(0, n, per_episode):
            env.reset(seed=episode)
            core = env.unwrapped.core
            key = self.key_of(self.task, core.examples[0], core.states[0])
            ids = tok.encode(f"<get>{key}</get>")
            for _ in range(min(per_episode, n - episode)):
                began = time.perf_counter()
                for token in ids:
                    env.step(token)
                times.append(time.perf_counter() - began)
                assert core.messages[0][-1]["content"].isdigit(), core.messages[0][-1]
        env.close()
        return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replies", type=int, default=300, help="replies timed per backend and repeat")
    parser.add_argument("--turns", type=int, default=100, help="env turns timed per backend and repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="a few of each, to check the script runs")
    parser.add_argument("--out", type=Path, help="write the medians as JSON here")
    args = parser.parse_args()
    if args.smoke:
        args.replies, args.turns, args.repeats = 5, 5, 1

    server_file = Path(tempfile.mkdtemp()) / "kv_server.py"
    server_file.write_text(MCP_SERVER)
    openenv_process, url = start_openenv_server()
    tools = mcp_tools([sys.executable, str(server_file)], timeout=30.0, start_timeout=120)

    def prompt_key(task, example, state):  # the key the served task's question names
        return re.search(r"value of (\S+)\?", task.messages(example, state)[-1]["content"]).group(1)

    backends = [
        Backend("in-process", textgym.make_task("kvstore", max_turns=100000), lambda task, ex, state: ex.metadata["key"]),
        Backend("MCP (stdio)", ToolTask(tools, task="addition", max_turns=100000), lambda *_: "red/fox"),
        Backend("OpenEnv (WebSocket)", OpenEnvTask(url, max_turns=100000, stop_strings=("</get>",)), prompt_key),
    ]
    results = {b.name: {"reply": [], "turn": []} for b in backends}
    try:
        for backend in backends:  # warm up: connections, first-call costs
            backend.replies(3)
        for _ in range(args.repeats):
            for backend in backends:
                results[backend.name]["reply"] += backend.replies(args.replies)
                results[backend.name]["turn"] += backend.turns(args.turns)
    finally:
        tools.close()
        backends[2].task.close()
        openenv_process.terminate()
        openenv_process.wait(30)

    base = {level: statistics.median(results["in-process"][level]) for level in ("reply", "turn")}
    print(f"{'backend':<22}{'reply median':>14}{'p90':>10}{'x in-proc':>11}{'turn median':>14}{'x in-proc':>11}{'turns/s':>10}")
    summary = {}
    for name, r in results.items():
        reply, turn = statistics.median(r["reply"]), statistics.median(r["turn"])
        p90 = statistics.quantiles(r["reply"], n=10)[-1] if len(r["reply"]) >= 10 else max(r["reply"])
        summary[name] = {"reply_median_s": reply, "reply_p90_s": p90, "turn_median_s": turn,
                         "replies": len(r["reply"]), "turns": len(r["turn"])}  # fmt: skip
        print(f"{name:<22}{reply * 1e3:>11.3f} ms{p90 * 1e3:>7.3f} ms{reply / base['reply']:>10.1f}x"
              f"{turn * 1e3:>11.2f} ms{turn / base['turn']:>10.2f}x{1 / turn:>10.1f}")  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
