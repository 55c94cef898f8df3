"""OpenEnv, both ways, on loopback: a textgym task served as an OpenEnv environment (checked with OpenEnv's
own client), and an OpenEnv server driven as a textgym multi-turn task (one session per slot, timeouts, a
clear error when the server is down). Every server here is started and stopped by the test."""

import importlib
import re
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("openenv")

import textgym  # noqa: E402
import textgym.cli  # noqa: E402
from textgym import Example, TextGenEnv, TextGenVectorEnv  # noqa: E402
from textgym.openenv import OpenEnvError, OpenEnvTask  # noqa: E402
from textgym.openenv.client import Session  # noqa: E402
from textgym.tasks import MultiTurnTask, Reply  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def kvstore_server():
    """`textgym serve --task kvstore --port 0` in a process of its own; its URL; stopped (SIGTERM) at the end."""
    command = [sys.executable, "-m", "textgym.cli", "serve", "--task", "kvstore", "--port", "0", "--max-sessions", "8"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = process.stdout.readline()  # printed once it listens
    found = re.search(r"at (http://127\.0\.0\.1:(\d+))", line)
    if found is None:
        process.kill()
        pytest.fail(f"the server did not start: {line!r} {process.stderr.read()[-2000:]}")
    yield found.group(1)
    process.terminate()
    assert process.wait(30) == 0, process.stderr.read()[-2000:]
    assert not listening(int(found.group(2))), "the port is released"


def key_of(prompt: str) -> str:
    return re.search(r"value of (\S+)\?", prompt).group(1)


# -- a textgym task served as an OpenEnv environment -------------------------------------------------------


def test_a_served_task_speaks_openenvs_protocol_to_openenvs_own_client(kvstore_server):
    import httpx
    from openenv.core.generic_client import GenericEnvClient

    assert httpx.get(f"{kvstore_server}/health").status_code == 200
    schema = httpx.get(f"{kvstore_server}/schema").json()
    assert schema["action"]["required"] == ["message"] and "messages" in schema["observation"]["properties"]
    local = textgym.make_task("kvstore")
    expected = local.example("train", 3)
    with GenericEnvClient(base_url=kvstore_server).sync() as client:
        first = client.reset(seed=3)
        assert first.observation["text"] == local.format_prompt(expected) and not first.done
        assert [m["role"] for m in first.observation["messages"]] == ["system", "user"]
        assert first.observation["messages"][0]["content"] == local.system_prompt  # the tools, described
        assert set(first.observation) == {"text", "messages", "components", "error"}  # never the reference answer
        looked = client.step({"message": f"<get>{expected.metadata['key']}</get>"})
        assert looked.observation["messages"] == [{"role": "tool", "content": expected.answer}]
        assert (looked.reward, looked.done) == (0.0, False)
        final = client.step({"message": f"It is {expected.answer}."})
        assert (final.reward, final.done, final.observation["components"]) == (1.0, True, {"answer": 1.0, "calls": 1.0})
        again = client.step({"message": "more"})
        assert again.done and again.observation["error"] == "no episode is running: reset first"
        other = client.reset(split="validation", index=0)  # a textgym server also takes split and index
        assert other.observation["text"] == local.format_prompt(local.example("validation", 0))


def test_a_single_turn_task_is_one_step_scored_by_its_verifier():
    from textgym.openenv import serve_task

    with serve_task("addition", port=0, task_kwargs={"digits": 2}) as server:
        task = OpenEnvTask(server.url)
        env = TextGenEnv(task=task, tokenizer="char", max_new_tokens=12)
        local = textgym.make_task("addition", digits=2)
        for seed in range(3):
            _, info = env.reset(seed=seed)
            expected = local.example("train", info["index"] % 2**31)  # example i resets the server with seed i
            assert env.unwrapped.core.messages[0] == [{"role": "user", "content": local.format_prompt(expected)}]
            for token in env.unwrapped.tokenizer.encode(expected.answer) + [0]:
                _, reward, terminated, truncated, info = env.step(token)
            assert terminated and reward == 1.0 and info["turns"] == 1
        env.close()
        task.close()
    assert not listening(server.port)


# -- an OpenEnv server as a textgym task --------------------------------------------------------------------


def test_openenv_task_runs_one_session_per_slot_and_reuses_them(kvstore_server, monkeypatch):
    connects = []
    original = Session.connect

    async def counted(self):
        connects.append(self.url)
        await original(self)

    monkeypatch.setattr(Session, "connect", counted)
    task = OpenEnvTask(kvstore_server, reply_role="tool", stop_strings=("</get>",))
    envs = TextGenVectorEnv(num_envs=4, task=task, tokenizer="char", max_new_tokens=80, max_prompt_tokens=700)
    tok = envs.unwrapped.tokenizer
    core = envs.unwrapped.core
    rewards = []
    for round_ in range(2):  # two rounds of episodes: 8 episodes, 4 sessions
        envs.reset(seed=round_)
        keys = [key_of(core.messages[i][-1]["content"]) for i in range(4)]
        assert core.messages[0][0]["role"] == "system" and "<get>key</get>" in core.messages[0][0]["content"]
        width = max(map(len, keys))
        scripts = [tok.encode(f"<get>{k.rjust(width)}</get>") for k in keys]  # the turns end together, at </get>
        for t in range(len(scripts[0])):
            envs.step(np.array([s[t] for s in scripts]))
        values = [core.messages[i][-1]["content"] for i in range(4)]
        assert all(v.isdigit() for v in values) and [core.messages[i][-1]["role"] for i in range(4)] == ["tool"] * 4
        answers = [tok.encode(v) + [0] for v in values]
        for t in range(max(map(len, answers))):
            _, reward, terminated, _, _ = envs.step(np.array([a[min(t, len(a) - 1)] for a in answers]))
            rewards += reward[terminated].tolist()
    assert rewards == [1.0] * 8
    assert len(connects) == 4, "one session per slot, kept across episodes (the env's own probe reused one too)"
    envs.close()
    task.close()


def test_a_server_that_is_down_is_a_clear_error():
    url = f"http://127.0.0.1:{free_port()}"
    began = time.monotonic()
    with pytest.raises(OpenEnvError, match=rf"cannot reach the OpenEnv server at {url}: .*; is it running\?"):
        TextGenEnv(task=OpenEnvTask(url, connect_timeout=2), tokenizer="char", max_new_tokens=8)
    assert time.monotonic() - began < 15


class Slow(MultiTurnTask):
    """A reply that takes `delay` seconds (a hung environment)."""

    name = "slow"
    delay = 3.0

    def all_problems(self):
        return [Example(f"Say {w}.", w) for w in ("yes", "no", "maybe", "sure", "never", "always", "often", "seldom")]

    def reply(self, text, example, state):
        time.sleep(self.delay)
        return Reply(reward=1.0, done=True)


def test_a_step_past_its_timeout_ends_that_episode_not_the_run(monkeypatch):
    from textgym.openenv import serve_task

    with serve_task(Slow(), port=0, reward_timeout=None) as server:
        task = OpenEnvTask(server.url, step_timeout=0.5)
        env = TextGenEnv(task=task, tokenizer="char", max_new_tokens=10)
        env.reset(seed=0)
        for token in env.unwrapped.tokenizer.encode("ok") + [0]:
            _, reward, terminated, _, info = env.step(token)
        assert terminated and reward == 0.0
        assert info["reply_error"].endswith(f"did not answer a step within 0.5 s")
        assert not task._idle, "the connection that timed out is dropped, not reused"
        env.reset(seed=1)  # the next episode gets a fresh session
        env.close()
        task.close()


def test_a_server_at_capacity_refuses_clearly():
    from textgym.openenv import serve_task

    with serve_task("guess", port=0, max_sessions=1) as server:
        task = OpenEnvTask(server.url)
        envs = TextGenVectorEnv(num_envs=2, task=task, tokenizer="char", max_new_tokens=8)  # its probe used one session
        with pytest.raises(OpenEnvError, match=r"did not start an episode: .*CAPACITY_REACHED"):
            envs.reset(seed=0)  # the second slot's session is one too many
        envs.close()
        task.close()


def test_a_missing_openenv_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "websockets.asyncio.client", None)
    with pytest.raises(ImportError, match=r"pip install 'textgym\[openenv\]'"):
        OpenEnvTask("http://127.0.0.1:1")
    monkeypatch.setitem(sys.modules, "openenv.core.env_server.http_server", None)
    monkeypatch.delitem(sys.modules, "textgym.openenv.server", raising=False)
    with pytest.raises(ImportError, match=r"serving a task over OpenEnv needs the 'openenv-core' package.*textgym\[openenv\]"):
        importlib.import_module("textgym.openenv.server")
    assert textgym.cli.main(["serve", "--task", "addition", "--port", "0"]) == 1  # said on stderr, not a traceback
