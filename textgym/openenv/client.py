"""`OpenEnvTask`: an OpenEnv environment server driven as a textgym multi-turn task.

    from textgym.openenv import OpenEnvTask
    task = OpenEnvTask("http://127.0.0.1:8000", action_key="message")
    envs = textgym.TextGenVectorEnv(num_envs=8, task=task, tokenizer=policy.tokenizer, max_new_tokens=256)
    ...
    envs.close(); task.close()

Needs `openenv-core`: `pip install 'textgym[openenv]'`.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
from typing import Any, Callable, Mapping

from textgym.background import BackgroundLoop
from textgym.example import Example
from textgym.tasks.multiturn import ROLES, MultiTurnTask, Reply

__all__ = ["OpenEnvTask", "OpenEnvError", "TEXT_FIELDS"]

_INSTALL = "pip install 'textgym[openenv]' (or pip install openenv-core)"
# Where an observation's text usually is, in order, when `observation_text` does not say.
TEXT_FIELDS = ("text", "prompt", "message", "content", "observation", "echoed_message")


class OpenEnvError(ConnectionError):
    """An OpenEnv server could not be reached, refused a session, or answered with an error."""


class Session:
    """One session of an OpenEnv server over its WebSocket protocol, as OpenEnv's own `EnvClient` speaks it:
    connect to `<base_url>/ws` (one connection, one server-side environment), then JSON messages
    `{"type": "reset", "data": {seed, ...}}` and `{"type": "step", "data": action}`, each answered by
    `{"type": "observation", "data": {"observation": {...}, "reward": r, "done": d}}` or
    `{"type": "error", "data": {"message": ..., "code": ...}}`; `{"type": "close"}` ends the session.
    Written against the protocol, not OpenEnv's client classes, whose package import pulls in a web UI
    (gradio: ~12 s) that a client does not need; `tests/test_openenv.py` checks it against OpenEnv's server."""

    def __init__(self, base_url: str, connect_timeout: float, step_timeout: float):
        url = base_url.rstrip("/")
        for http, ws in (("http://", "ws://"), ("https://", "wss://")):
            if url.startswith(http):
                url = ws + url[len(http) :]
        self.url = url if url.startswith(("ws://", "wss://")) else "ws://" + url
        self.url += "/ws"
        self.connect_timeout, self.step_timeout = connect_timeout, step_timeout
        self.ws: Any = None

    async def connect(self) -> None:
        connect = _websockets_connect()
        options = {"open_timeout": self.connect_timeout, "max_size": 100 * 2**20}
        if "proxy" in inspect.signature(connect).parameters:
            options["proxy"] = None  # a loopback or cluster server is reached directly, whatever HTTP_PROXY says
        self.ws = await connect(self.url, **options)

    async def request(self, message: dict[str, Any]) -> dict[str, Any]:
        try:
            await self.ws.send(json.dumps(message))
        except Exception as e:  # closed: a server that refuses a session says why, then closes; read that first
            try:
                raw = await asyncio.wait_for(self.ws.recv(), timeout=1.0)
            except Exception:
                raise e from None
        else:
            raw = await asyncio.wait_for(self.ws.recv(), timeout=self.step_timeout)
        answer = json.loads(raw)
        data = answer.get("data", {}) if isinstance(answer, dict) else {}
        if not isinstance(answer, dict) or answer.get("type") == "error" or not isinstance(data, dict):
            raise OpenEnvError(f"the server answered {message['type']} with an error: {data.get('message', answer)} "
                               f"(code {data.get('code', 'unknown')})")  # fmt: skip
        return data

    async def close(self) -> None:
        """End the session: `close`, then let the server close the connection (closing it from this
        side first makes OpenEnv's server log a traceback per session)."""
        if self.ws is not None:
            try:
                await self.ws.send(json.dumps({"type": "close"}))
                await asyncio.wait_for(self.ws.wait_closed(), timeout=2.0)
            except Exception:  # the connection was already gone, or the server did not close it in time
                pass
            finally:
                await self.ws.close()
                self.ws = None


def _websockets_connect():
    try:
        from websockets.asyncio.client import connect
    except ImportError as e:
        raise ImportError(f"OpenEnv tasks need the 'websockets' package that openenv-core brings ({e}); install it with "
                          f"{_INSTALL}") from None  # fmt: skip
    return connect


class OpenEnvTask(MultiTurnTask):
    """An OpenEnv environment server as a multi-turn task: the server's observations are the
    environment's turns, each policy turn is the server's action, its reward and `done` are the episode's.

    ## Sessions
    Each episode is a session of the server: OpenEnv's WebSocket protocol (`/ws`: `reset`, `step`,
    `close` messages; `Session`). A vector env holds one
    session per slot at once; a finished episode's connection is kept and reused by the next episode
    (a new `reset` on it), so N slots need N sessions of the server (its `max_concurrent_envs`), and
    reconnect only when a connection broke. All connections share one asyncio loop in a background
    thread (`textgym.background`).

    ## Turns
    `reset(seed=..., **reset_kwargs)` gives the first observation, whose text is the prompt (a user
    message). Each policy turn is sent as the action `{action_key: text}`; the observation's text
    comes back as a `reply_role` message, its `reward` is paid on that turn (None counts 0), and its
    `done` ends the episode. Example `i` of a split resets with seed `split * 2**29 + 7919 * seed + i`
    (modulo 2**31): the same episode every time, different ones per split.

    ## Failures
    A server that cannot be reached is an `OpenEnvError` naming the URL, when the env is made (it
    renders a first episode) or at the reset that needs a session. A step that runs past
    `step_timeout`, a server error or a dropped connection ends that episode with `reply_error`
    (reward 0), never the run; that connection is dropped, not reused.

    Args:
        base_url: the server, `http://host:port` (or `ws://`).
        action_key: the action's text field (`message` in OpenEnv's echo and chat environments).
        observation_text: how an observation (a dict) becomes text: a field name, a function of the
            dict, or None: the first string among `TEXT_FIELDS`, else its only string field, else JSON.
        reset_kwargs: more fields of every reset (e.g. `{"split": "validation"}` for a textgym server).
        reply_role: "user" or "tool", the role of the server's turns in the chat template.
        max_turns: the policy's turns per episode. connect_timeout, step_timeout: seconds.
        stop_strings: strings that end the policy's turn besides its end token (e.g. the closing tag
            of the server's tool calls).
        name: the task's name.
    """

    name = "openenv"
    prompt_probe = 4  # each prompt the env measures is a server reset

    def __init__(self, base_url: str, *, action_key: str = "message",
                 observation_text: str | Callable[[Mapping[str, Any]], str] | None = None,
                 reset_kwargs: Mapping[str, Any] | None = None, reply_role: str = "user", max_turns: int = 8,
                 stop_strings: tuple[str, ...] = (),
                 connect_timeout: float = 10.0, step_timeout: float = 30.0, name: str = "openenv", seed: int = 0):  # fmt: skip
        super().__init__(seed=seed)
        _websockets_connect()  # the missing extra is an error now, not at the first reset
        if not isinstance(base_url, str) or not base_url:
            raise ValueError(f"base_url must be the server's address, e.g. 'http://127.0.0.1:8000', got {base_url!r}")
        if reply_role not in ROLES:
            raise ValueError(f"reply_role must be one of {ROLES}, got {reply_role!r}")
        if not (isinstance(observation_text, str) or observation_text is None or callable(observation_text)):
            raise TypeError(f"observation_text must be a field name, a function or None, got {type(observation_text).__name__}")
        self.base_url, self.action_key, self.observation_text = base_url.rstrip("/"), action_key, observation_text
        self.reset_kwargs = dict(reset_kwargs or {})
        self.reply_role, self.reply_roles = reply_role, (reply_role,)
        self.max_turns, self.connect_timeout, self.step_timeout = int(max_turns), float(connect_timeout), float(step_timeout)
        self.name, self._stop_strings = name, tuple(stop_strings)
        self.description = f"the OpenEnv environment at {self.base_url} (multi-turn)"
        self.params = {"base_url": self.base_url, "action_key": action_key, "max_turns": self.max_turns}
        self._loop: BackgroundLoop | None = None
        self._idle: list[Any] = []  # connected clients whose episode ended, for the next episodes
        self._lock = threading.Lock()

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return self._stop_strings

    # -- examples: seeds ---------------------------------------------------------------------------

    def example(self, split: str, index: int) -> Example:
        self._check_split(split)
        seed = (self.SPLITS.index(split) * 2**29 + self.seed * 7919 + int(index)) % 2**31  # what np.random takes
        return Example(prompt="", answer="", metadata={"seed": seed})

    def num_examples(self, split: str) -> int | None:
        self._check_split(split)
        return None

    # -- sessions ----------------------------------------------------------------------------------

    @property
    def background(self) -> BackgroundLoop:
        with self._lock:
            if self._loop is None or not self._loop.usable:
                self._loop, self._idle = BackgroundLoop("textgym-openenv"), []
            return self._loop

    def _session(self) -> Any:
        """A connected client: an idle one, or a new connection."""
        with self._lock:
            if self._idle:
                return self._idle.pop()
        client = Session(self.base_url, self.connect_timeout, self.step_timeout)
        try:
            self.background.run(client.connect(), self.connect_timeout + 5)
        except Exception as e:
            raise OpenEnvError(f"cannot reach the OpenEnv server at {self.base_url}: {_reason(e)}; is it running? "
                               "(start it, or check base_url)") from None  # fmt: skip
        return client

    def _drop(self, client: Any) -> None:
        try:
            self.background.run(client.close(), 5.0)
        except Exception:  # a broken connection is being thrown away: nothing more to do with it
            pass

    def start(self, example: Example) -> dict[str, Any]:
        client = self._session()
        reset = {"type": "reset", "data": {"seed": example.metadata["seed"], **self.reset_kwargs}}
        try:
            result = self.background.run(client.request(reset), self.step_timeout + 5)
        except Exception as e:
            self._drop(client)
            raise OpenEnvError(f"the OpenEnv server at {self.base_url} did not start an episode: {_reason(e)}") from None
        observation = result.get("observation", {})
        first = self.messages_of(observation) or [{"role": "user", "content": self.text_of(observation)}]
        return {"client": client, "first": first, "broken": False}

    def end(self, example: Example, state: Any) -> None:
        client = state["client"]
        if state["broken"] or not self.background.usable:
            self._drop(client)
        else:
            with self._lock:
                self._idle.append(client)

    def close(self) -> None:
        """Close every connection (each ends its server session) and stop the loop."""
        with self._lock:
            idle, self._idle = self._idle, []
            loop, self._loop = self._loop, None
        if loop is not None and loop.usable:
            for client in idle:
                try:
                    loop.run(client.close(), 5.0)
                except Exception:  # best effort: the server reaps a dropped connection itself
                    pass
            loop.close()

    # -- turns -------------------------------------------------------------------------------------

    def messages(self, example: Example, state: Any = None) -> list[dict[str, str]]:
        return list(state["first"])

    def reply(self, text: str, example: Example, state: dict[str, Any]) -> Reply:
        if self._loop is None or not self._loop.usable:
            raise OpenEnvError("an OpenEnv task's connections live in the process that opened them; its replies cannot run "
                               "in a forked worker (use reward_isolation='thread')")  # fmt: skip
        state["broken"] = True  # until the step's answer has come back whole
        step = {"type": "step", "data": {self.action_key: text}}
        try:
            result = self.background.run(state["client"].request(step), self.step_timeout + 5)
        except (TimeoutError, asyncio.TimeoutError):
            raise OpenEnvError(f"the OpenEnv server at {self.base_url} did not answer a step within "
                               f"{self.step_timeout:g} s") from None  # fmt: skip
        except Exception as e:
            raise OpenEnvError(f"the OpenEnv server at {self.base_url} failed a step: {_reason(e)}") from None
        state["broken"] = False
        observation, reward = result.get("observation", {}), result.get("reward")
        reward = 0.0 if reward is None else float(reward)
        said = [m for m in self.messages_of(observation) or () if m["role"] in ROLES]
        if said:
            return Reply(messages=said, reward=reward, done=bool(result.get("done")))
        return Reply(self.text_of(observation), reward=reward, done=bool(result.get("done")), role=self.reply_role)

    @staticmethod
    def messages_of(observation: Any) -> list[dict[str, str]] | None:
        """An observation's chat messages, when it carries them (a `messages` list of {role, content},
        as a served textgym task's do); None otherwise."""
        messages = observation.get("messages") if isinstance(observation, Mapping) else None
        if isinstance(messages, list) and messages and all(
            isinstance(m, Mapping) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in messages
        ):
            return [{"role": m["role"], "content": m["content"]} for m in messages]
        return None

    def text_of(self, observation: Any) -> str:
        """An observation's text (see `observation_text`)."""
        if not isinstance(observation, Mapping):
            return str(observation)
        how = self.observation_text
        if callable(how):
            return str(how(observation))
        if isinstance(how, str):
            if how not in observation:
                raise OpenEnvError(f"the observations of {self.base_url} have no field {how!r}; their fields are: "
                                   f"{', '.join(observation)} (set observation_text)")  # fmt: skip
            return str(observation[how])
        found = next((observation[k] for k in TEXT_FIELDS if isinstance(observation.get(k), str)), None)
        strings = [v for v in observation.values() if isinstance(v, str)]
        if found is None and len(strings) == 1:
            found = strings[0]
        return found if found is not None else json.dumps(observation, ensure_ascii=False, default=str)


def _reason(e: BaseException) -> str:
    """An exception's message, or its type when it has none (a bare timeout)."""
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
