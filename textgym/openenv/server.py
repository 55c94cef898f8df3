"""Serve a textgym task as an OpenEnv environment server: text in, text out.

    from textgym.openenv import serve_task
    with serve_task("kvstore", port=8000) as server:     # returns once it listens
        print(server.url)                              # http://127.0.0.1:8000: /ws, /reset, /step, /health, /schema

or from a shell: `textgym serve --task kvstore --port 8000`. Needs `openenv-core`:
`pip install 'textgym[openenv]'`.

Any textgym task, single- or multi-turn, becomes an OpenEnv `Environment` (`TaskEnvironment`) served by
OpenEnv's own HTTP/WebSocket server (`create_fastapi_app`, run by uvicorn): every WebSocket session gets
its own episode. `reset(seed=i)` starts example `i` of the split (`split=` and `index=` may say
otherwise; no seed: a random one) and observes the prompt — its `text` and its chat `messages` (the
task's system prompt, then the question). `step({"message": text})` takes the policy's whole answer
(single-turn: scored by the task's verifier, the episode ends) or one turn (multi-turn: the task's
reply, its reward and `done`; the task's `max_turns` ends it too). The verifier and the replies run
guarded (`reward_timeout`; what they raise is caught): a failure is reward 0 with the observation's
`error`, never a broken session. The reference answer is never sent.
"""

from __future__ import annotations

import functools
import threading
import time
from typing import Any, Mapping

import numpy as np

try:
    from openenv.core.env_server.http_server import create_fastapi_app
    from openenv.core.env_server.interfaces import Environment
    from openenv.core.env_server.types import Action, Observation, State
    from pydantic import Field
except ImportError as _missing:  # the optional extra: say which, and how to get it
    raise ImportError(f"serving a task over OpenEnv needs the 'openenv-core' package, which is not installed "
                      f"({_missing}); install it with pip install 'textgym[openenv]' "
                      "(or pip install openenv-core)") from None  # fmt: skip

from textgym.example import Example
from textgym.rewards.core import RewardResult, score
from textgym.tasks.base import Task, make_task
from textgym.tasks.multiturn import ReplyResult, call_reply

__all__ = ["TextAction", "TextObservation", "TaskEnvironment", "TaskServer", "make_app", "serve_task"]


class TextAction(Action):
    """The policy's text: a whole completion (single-turn tasks) or one turn (multi-turn tasks)."""

    message: str = Field(..., description="the policy's answer, or its turn of the conversation")


class TextObservation(Observation):
    """What the policy reads next: the prompt after `reset`, the environment's reply after a `step`."""

    text: str = Field(default="", description="the prompt, or the environment's reply ('' when it says nothing)")
    messages: list[dict[str, str]] = Field(
        default_factory=list, description="the same as chat messages: the system prompt and question, or the reply's turns"
    )
    components: dict[str, float] = Field(default_factory=dict, description="the named parts of the reward")
    error: str | None = Field(default=None, description="why the verifier or the reply failed (the reward is then 0)")


class TaskEnvironment(Environment):
    """One session's environment: episodes of a textgym task (see the module docstring).

    Args:
        task: a Task, or a task name (with `task_kwargs`).
        split: the split episodes come from unless a reset names another.
        reward_timeout: seconds the verifier or a reply may take (each runs in a thread of its own; one
            that runs past them scores 0 with an `error`).
    """

    SUPPORTS_CONCURRENT_SESSIONS = True  # each session has its own episode; the task itself is never mutated

    def __init__(self, task: Task | str, split: str = "train", reward_timeout: float | None = 10.0,
                 task_kwargs: Mapping[str, Any] | None = None):  # fmt: skip
        super().__init__()
        self.task = make_task(task, **dict(task_kwargs or {}))
        self.task._check_split(split)
        self.split, self.reward_timeout = split, reward_timeout
        self.max_turns = int(getattr(self.task, "max_turns", 1)) if self.task.multi_turn else 1
        self.example: Example | None = None
        self.episode: Any = None  # a multi-turn task's state
        self.turns, self.running = 0, False
        self._state = State(episode_id=None, step_count=0)
        self._rng = np.random.default_rng()

    def reset(self, seed: int | None = None, episode_id: str | None = None, split: str | None = None,
              index: int | None = None, **kwargs: Any) -> TextObservation:  # fmt: skip
        self._finish()
        split = split or self.split
        self.task._check_split(split)
        if index is None:
            index = int(seed) if seed is not None else int(self._rng.integers(0, self.task.num_examples(split) or 2**31 - 1))
        self.example = self.task.example(split, int(index))
        self.episode = self.task.start(self.example) if self.task.multi_turn else None
        self.turns, self.running = 0, True
        self._state = State(episode_id=episode_id, step_count=0, split=split, index=int(index))
        messages = self.task.messages(self.example, self.episode)
        if self.task.system_prompt and not any(m["role"] == "system" for m in messages):
            messages = [{"role": "system", "content": self.task.system_prompt}, *messages]
        text = "\n".join(m["content"] for m in messages if m["role"] != "system")
        return TextObservation(text=text, messages=messages, metadata={"split": split, "index": int(index)})

    def step(self, action: TextAction, timeout_s: float | None = None, **kwargs: Any) -> TextObservation:
        if not self.running:
            return TextObservation(done=True, reward=0.0, error="no episode is running: reset first")
        self._state.step_count += 1
        self.turns += 1
        if not self.task.multi_turn:
            result = self._guarded(score, self.task.reward, action.message, self.example)
            if result is None:
                result = RewardResult(0.0, error=f"the verifier of task {self.task.name!r} timed out after {self.reward_timeout:g} s")
            self._finish()
            return TextObservation(done=True, reward=result.reward, components=dict(result.components), error=result.error)
        result = self._guarded(call_reply, self.task, action.message, self.example, self.episode)
        if result is None:
            result = ReplyResult(None, None, f"task {self.task.name!r}: reply() timed out after {self.reward_timeout:g} s")
        reply = result.reply
        if reply is None:
            self._finish()
            return TextObservation(done=True, reward=0.0, error=result.error)
        self.episode = result.state
        said = reply.as_messages()
        done = reply.done or not said or self.turns >= self.max_turns
        observation = TextObservation(text="\n".join(m["content"] for m in said), messages=said, done=done,
                                      reward=reply.reward, components=dict(reply.components))  # fmt: skip
        if done:
            self._finish()
        return observation

    def _guarded(self, fn: Any, *args: Any) -> Any:
        """`fn(*args)` (which never raises) in a thread of its own, waited for at most `reward_timeout`
        seconds: None when it ran past them (the thread is abandoned). Not textgym's shared guard,
        which runs one batch at a time in a process: a client in the same process waits in it for
        this server's answer."""
        if self.reward_timeout is None:
            return fn(*args)
        box: list[Any] = []
        worker = threading.Thread(target=lambda: box.append(fn(*args)), daemon=True, name="textgym-openenv-reply")
        worker.start()
        worker.join(self.reward_timeout)
        return box[0] if box else None

    @property
    def state(self) -> State:
        return self._state

    def close(self) -> None:
        self._finish()

    def _finish(self) -> None:
        if self.running and self.task.multi_turn:
            try:
                self.task.end(self.example, self.episode)
            except Exception:  # end() must not raise; a server keeps serving the other sessions
                pass
        self.running, self.episode = False, None


def make_app(task: Task | str, *, split: str = "train", max_sessions: int = 64, reward_timeout: float | None = 10.0,
             task_kwargs: Mapping[str, Any] | None = None):  # fmt: skip
    """The FastAPI app of OpenEnv's server for `task` (serve it with any ASGI server, e.g. uvicorn)."""
    task = make_task(task, **dict(task_kwargs or {}))  # made once: a bad name or argument fails here, not per session
    TaskEnvironment(task, split, reward_timeout)  # a bad split fails here too
    factory = functools.partial(TaskEnvironment, task, split, reward_timeout)
    return create_fastapi_app(factory, TextAction, TextObservation, max_concurrent_envs=int(max_sessions))


class TaskServer:
    """A running server (uvicorn in a background thread): `url`, `stop()`; a context manager."""

    def __init__(self, app: Any, host: str, port: int, start_timeout: float = 30.0):
        import uvicorn

        # Open sessions are given 2 s to finish when the server stops; a client that keeps its connection
        # open (an idle session kept for the next episode) must not hold the shutdown up.
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True, name="textgym-openenv-server")
        self.thread.start()
        deadline = time.monotonic() + start_timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise OSError(f"the OpenEnv server did not start on {host}:{port} (is the port taken? see the log above)")
            time.sleep(0.02)
        self.host = host
        self.port = int(self.server.servers[0].sockets[0].getsockname()[1])  # the real one when port=0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving: open sessions are closed, the port is released; idempotent."""
        self.server.should_exit = True
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(timeout)

    def __enter__(self) -> "TaskServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def serve_task(task: Task | str, *, host: str = "127.0.0.1", port: int = 8000, **kwargs: Any) -> TaskServer:
    """Serve `task` on `host:port` (0: any free port) in a background thread; returns once it listens.
    `kwargs`: `make_app`'s (split, max_sessions, reward_timeout, task_kwargs)."""
    return TaskServer(make_app(task, **kwargs), host, port)
