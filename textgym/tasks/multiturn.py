"""Multi-turn tasks: the environment speaks too. A task author writes text logic; textgym does the tokens.

A `MultiTurnTask` says what the first prompt is (like any task) and how the environment answers
each turn of the policy:

    class Echo(MultiTurnTask):
        max_turns = 3

        def reply(self, text, example, state):
            state["turns"] = state.get("turns", 0) + 1
            if text.strip() == example.answer:
                return Reply(reward=1.0, done=True)              # the episode ends, paid 1.0
            return Reply("Not quite, try again.", reward=0.0)     # appended, then the policy goes on

The env calls `reply` when the policy ends its turn (its end token, a stop string, or the turn's
token budget), with the turn's text decoded once, under the verifier's guard (`call_reply`): an
exception, a bad return value or a timeout ends that episode with reward 0 and `reply_error` in
its final info, never the run. The reply text is turned into tokens *in
context* by the env (the chat template's end of the assistant turn, the user/tool turn, the start
of the next assistant turn) and appended after the sampled tokens, which are never re-encoded:
s_{t+1} = s_t ‖ a_t ‖ o_t. Rewards are paid on the step that ends each turn.

`MessageEnvTask` wraps an existing message-level environment (`reset() -> messages`,
`step(text) -> (messages, reward, done)`) the same way.
"""

from __future__ import annotations

import inspect
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from textgym.example import Example
from textgym.tasks.base import Task

__all__ = ["Reply", "ReplyResult", "MultiTurnTask", "MessageEnvTask", "ROLES", "call_reply"]

ROLES = ("user", "tool")  # the roles an environment's reply can take in the chat template


@dataclass(frozen=True)
class Reply:
    """The environment's answer to one turn of the policy.

    Attributes:
        text: the message to append (None: nothing is said and the episode ends).
        reward: paid on the step that ended the policy's turn (per-turn rewards add up to the return).
        done: end the episode after this turn (the text, if any, is then not appended).
        role: "user" (feedback, the next question) or "tool" (a tool's result).
        components: named parts of the reward, reported in the final info's `reward_components`.
        messages: several messages at once, e.g. a tool result then a user turn (instead of `text`).
    """

    text: str | None = None
    reward: float = 0.0
    done: bool = False
    role: str = "user"
    components: Mapping[str, float] = field(default_factory=dict)
    messages: Sequence[Mapping[str, str]] | None = None

    def as_messages(self) -> list[dict[str, str]]:
        """The reply as chat messages ([] when there is nothing to append)."""
        if self.messages is not None:
            return [{"role": str(m["role"]), "content": m["content"]} for m in self.messages]
        return [] if self.text is None else [{"role": self.role, "content": self.text}]


def check_reply(reply: Any, task: Task) -> Reply:
    """Validate what a task's `reply` returned; errors name the task and say what to return."""
    where = f"task {task.name!r}: reply()"
    if not isinstance(reply, Reply):
        raise TypeError(f"{where} must return a textgym Reply(text, reward, done), got {type(reply).__name__} {reply!r:.80}")
    if reply.text is not None and not isinstance(reply.text, str):
        raise TypeError(f"{where} returned a reply text of type {type(reply.text).__name__}; it must be a str or None")
    for m in reply.as_messages():
        if m["role"] not in ROLES or not isinstance(m["content"], str):
            raise ValueError(f"{where} returned the message {m!r:.80}; a message is {{'role': one of {ROLES}, 'content': str}}")
    for name, value in [("reward", reply.reward), *((f"component {k!r}", v) for k, v in reply.components.items())]:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ValueError(f"{where} returned a {name} of {value!r}; it must be a finite number")
    return reply


@dataclass(frozen=True)
class ReplyResult:
    """What one guarded `reply` call gave: the checked reply and the episode's state after it, or the
    error that ended the episode (`reply` None)."""

    reply: Reply | None
    state: Any = None
    error: str | None = None


def call_reply(task: Task, text: str, example: Example, state: Any) -> ReplyResult:
    """`task.reply(text, example, state)`, checked; never raises: what it raises, or a return value
    that is not a valid Reply, becomes the result's `error`. The state comes back with the reply, so
    a reply computed in a worker process (reward_isolation="process") updates the episode's state."""
    try:
        reply = task.reply(text, example, state)
    except Exception as e:  # a task's code reads the policy's text: any failure ends the episode, not the run
        return ReplyResult(None, None, f"task {task.name!r}: reply() raised {type(e).__name__}: {e}")
    try:
        return ReplyResult(check_reply(reply, task), state)
    except (TypeError, ValueError) as e:  # check_reply's own messages name the task and what to return
        return ReplyResult(None, None, str(e))
    except Exception as e:  # a Reply whose parts are not what they claim (components without .items(), ...)
        return ReplyResult(None, None, f"task {task.name!r}: reply() returned a malformed Reply ({type(e).__name__}: {e})")


class MultiTurnTask(Task):
    """Base class of multi-turn tasks: implement `reply` (and `start` for per-episode state).

    Examples, splits and prompts work as for any `Task` (`sample`/`all_problems`, `format_prompt`).
    The env pays nothing but what `reply` returns, so `reward` is not used for scoring.

    Class attributes:
        max_turns: the policy's turns per episode (the env's `max_turns` setting overrides it).
            An episode whose last allowed turn gets no `done` reply ends `truncated`.
        max_turn_tokens: the policy's tokens per turn (None: no limit but the episode's budget;
            the env's `max_turn_tokens` setting overrides it).
        reply_roles: the roles the replies take, which the env checks the chat template with.
        stop_strings: strings that end the policy's turn (e.g. a tool call's closing tag), besides
            its end token.
    """

    max_turns: int = 4
    max_turn_tokens: int | None = None
    reply_roles: tuple[str, ...] = ("user",)
    multi_turn = True

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return ()

    def start(self, example: Example) -> Any:
        """The state of a new episode, passed to every `reply` of it (default: an empty dict)."""
        return {}

    def reply(self, text: str, example: Example, state: Any) -> Reply:
        """The environment's answer to the policy's turn `text` (decoded, end token removed)."""
        raise NotImplementedError(f"{type(self).__name__} must define reply(text, example, state)")

    def end(self, example: Example, state: Any) -> None:
        """Called once when an episode ends, however it ends (a `done` reply, the turn or token budget,
        a failed reply, a reset or `close()` mid-episode): release what `start` took (a server session).
        Nothing by default. It runs outside the reply's guard: keep it short, and it must not raise."""

    def close(self) -> None:
        """Release what the task holds (server processes, connections). An env closes the task it
        made from a name; a task object you pass in is yours to close. Nothing by default."""

    def reward(self, completion: str, example: Example) -> float:
        raise TypeError(
            f"task {self.name!r} is multi-turn: its rewards come from reply(), per turn; "
            "it has no single-completion verifier"
        )


class MessageEnvTask(MultiTurnTask):
    """A message-level environment as a token-level TextGen task.

    `make_env()` returns an object with `reset() -> messages` (or `reset(seed=...)`) and
    `step(assistant_text) -> (messages, reward, done)`, where messages are
    `[{"role": "user" | "tool" | "system", "content": str}, ...]` — the shape of TextArena-, GEM- or
    verifiers-style environments. Every episode gets a fresh object; example `i` of a split resets
    it with seed `i` (and a per-split offset), so episodes are reproducible and the vector env's
    group resets give every slot of a group the same start.

    Args:
        name: the task's name.
        make_env: builds one message-level environment.
        size: examples (seeds) per split.
        max_turns: the policy's turns per episode.
    """

    def __init__(self, name: str, make_env: Callable[[], Any], *, size: int = 1000, max_turns: int = 8, seed: int = 0):
        super().__init__(seed=seed)
        if not callable(make_env):
            raise TypeError(f"make_env must be a callable that returns a message-level environment, got {make_env!r}")
        self.name, self.make_env, self.size, self.max_turns = name, make_env, int(size), int(max_turns)
        self.description = f"message-level environment {name!r}"

    def example(self, split: str, index: int) -> Example:
        self._check_split(split)
        seed = self.seed * 1_000_003 + self.SPLITS.index(split) * self.size + int(index) % self.size
        return Example(prompt="", answer="", metadata={"seed": seed})

    def num_examples(self, split: str) -> int:
        self._check_split(split)
        return self.size

    def start(self, example: Example) -> dict[str, Any]:
        env = self.make_env()
        reset = env.reset
        takes_seed = "seed" in inspect.signature(reset).parameters
        messages = reset(seed=example.metadata["seed"]) if takes_seed else reset()
        return {"env": env, "messages": _check_messages(messages, self.name, "reset()")}

    def messages(self, example: Example, state: Any = None) -> list[dict[str, str]]:
        return list(state["messages"])

    def reply(self, text: str, example: Example, state: Any) -> Reply:
        out = state["env"].step(text)
        if not (isinstance(out, tuple) and len(out) == 3):
            raise TypeError(f"task {self.name!r}: step() must return (messages, reward, done), got {out!r:.80}")
        messages, reward, done = out
        messages = _check_messages(messages or [], self.name, "step()")
        return Reply(reward=float(reward), done=bool(done), messages=messages)


def _check_messages(messages: Any, name: str, where: str) -> list[dict[str, str]]:
    if not isinstance(messages, (list, tuple)) or not all(
        isinstance(m, Mapping) and isinstance(m.get("content"), str) and isinstance(m.get("role"), str) for m in messages
    ):
        raise TypeError(f"task {name!r}: {where} must give a list of {{'role': str, 'content': str}} messages, got {messages!r:.120}")
    return [{"role": m["role"], "content": m["content"]} for m in messages]
