"""The README's tool, MCP, OpenEnv and TRL sections, run word for word.

Each test takes the Python blocks under one README heading (`helpers.readme_section`) and runs them
as they are, in this process, in a temporary working directory: a block whose first line names a file
(`# kv_server.py`) is written there first, as the reader would save it. Then it checks what the
example claims, the output its comments show included: a comment that shows a printed value must be
what the code prints, so the README cannot drift from what the code does.
"""

import contextlib
import io
import os

import pytest
from helpers import code_blocks, readme_section


def run_section(heading, tmp_path):
    """Run the section's Python blocks in `tmp_path` (files first); (the last block's namespace, its stdout)."""
    blocks = code_blocks(readme_section(heading), "python")
    assert blocks, f"no Python example under {heading!r}"
    scripts = []
    for body in blocks:
        first = body.splitlines()[0]
        if first.startswith("# ") and first.endswith(".py"):
            (tmp_path / first[2:]).write_text(body)
        else:
            scripts.append(body)
    assert len(scripts) == 1, f"{heading!r}: expected one example to run, found {len(scripts)}"
    namespace = {"__name__": "readme_example"}
    out = io.StringIO()
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(scripts[0], f"README.md {heading}", "exec"), namespace)
    finally:
        os.chdir(cwd)
    return namespace, scripts[0], out.getvalue()


def comment_after(script, code):
    """The comment at the end of the line of `script` that starts with `code`."""
    (line,) = [line.strip() for line in script.splitlines() if line.strip().startswith(code)]
    return line.split("# ", 1)[1].strip()


def test_native_tool_calls(tmp_path):
    ns, script, out = run_section("## Tools in the model's own format", tmp_path)
    env = ns["env"]
    assert env.task.native and env.task.tool_schemas[0]["function"]["name"] == "multiply"
    prompt = env.tokenizer.decode(ns["obs"]["input_ids"][: ns["obs"]["prompt_len"][0]])
    assert '"name": "multiply"' in prompt.split("<|im_start|>user")[0], "the tools are in the system turn"
    assert ns["terminated"] and ns["reward"] == 1.0
    # the last comment of the block is the line it prints
    assert out.strip() == script.strip().splitlines()[-1].removeprefix("# ")


def test_a_tool_with_state(tmp_path):
    ns, script, out = run_section("### A tool with state: `kvstore`", tmp_path)
    example, key, value, final = ns["example"], ns["key"], ns["value"], ns["final"]
    assert key == example.metadata["key"] and value == example.answer  # found through the tools
    assert final.reward == 1.0 and final.done
    first, last = out.splitlines()
    assert first.endswith(comment_after(script, "print(example.prompt)").removeprefix("... "))
    assert last == comment_after(script, "print(key, value")
    assert f'"{key}"' in comment_after(script, "key = ") and f'"{value}"' in comment_after(script, "value = ")


def test_mcp_servers_as_tools(tmp_path):
    pytest.importorskip("mcp")
    ns, script, out = run_section("### MCP servers as tools", tmp_path)
    schema, result, error = out.splitlines()
    assert "'name': 'get'" in schema and "'description': 'Get the value stored under a key.'" in schema
    assert result == comment_after(script, 'print(tools.call("get", {"key": "red/fox"}))')
    assert error.startswith("error: ")
    assert ns["env"].task.toolset.names == ["get"] and ns["env"].task.native
    assert ns["tools"].call("get", {"key": "red/fox"}).text.startswith("error: "), "the servers stopped with the block"


def test_openenv_both_ways(tmp_path):
    pytest.importorskip("openenv")
    ns, script, out = run_section("## Environments served over HTTP: OpenEnv", tmp_path)
    shown = comment_after(script, "print(envs.tokenizer.decode(prompt))").removesuffix(" ...")
    assert out.startswith(shown), (out, shown)
    assert ns["obs"]["input_ids"].shape[0] == 4


@pytest.mark.filterwarnings(r"ignore:`(is_)?gradient_checkpointing\w*` is deprecated:FutureWarning")  # transformers, in TRL
def test_inside_trls_grpo_trainer(tmp_path):
    pytest.importorskip("trl")
    ns, _, _ = run_section("## Inside TRL's GRPOTrainer", tmp_path)
    trainer = ns["trainer"]
    assert trainer.state.global_step == 2
    logged = [row for row in trainer.state.log_history if "reward" in row]
    assert logged and all("textgym/reward_errors" in row for row in logged), "textgym's verifier gave the rewards"
