"""The `kvstore` task: answer a question about a key-value store the policy can only read through tools."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from textgym.example import Example
from textgym.rewards.extract import final_number, numbers_equal
from textgym.tasks.base import register_task
from textgym.tasks.multiturn import Reply
from textgym.tasks.tooluse import ToolTask
from textgym.tools.core import ToolResult
from textgym.tools.formats import ToolCall

__all__ = ["KVStoreTask", "get", "list_keys"]

COLOURS = ("red", "blue", "green", "gold", "grey", "pink", "teal", "plum", "jade", "rust", "navy", "sand")
ANIMALS = ("ant", "bee", "cat", "cod", "cow", "dog", "eel", "elk", "emu", "fox", "gnu", "hen", "jay", "owl",
           "pig", "ram", "rat", "yak")  # fmt: skip
LOOKUPS = ("key", "prefix")


def get(key: str, state: dict) -> str:
    """Get the value stored under a key.

    Args:
        key: the key, e.g. "blue/ant".
    """
    store = state["store"]
    key = key.strip()
    if key not in store:
        raise ValueError(f"no key {key!r} in the store; list_keys shows the keys")
    return str(store[key])


def list_keys(prefix: str, state: dict) -> str:
    """List the keys that start with a prefix.

    Args:
        prefix: the start of the keys to list, e.g. "blue/" ("" lists them all).
    """
    keys = sorted(k for k in state["store"] if k.startswith(prefix.strip()))
    return ", ".join(keys) if keys else "(no keys)"


@register_task("kvstore")
class KVStoreTask(ToolTask):
    """Look a value up in a key-value store with tools, then report it.

    ## Description
    Each episode has its own small store: `keys` keys such as `blue/ant` (a colour, a slash, an
    animal), each holding a 2-digit number. The question asks for one key's value, which the policy
    cannot know: it must look it up with the tools `get(key)` and `list_keys(prefix)`, which read
    the episode's store (per-episode tool state). `lookup="key"` names the key ("What is the value of
    blue/ant?"; one `get`); `lookup="prefix"` names only its colour, which exactly one key has ("What
    is the value of the key that starts with blue/?"; `list_keys` then `get`).

    ## Tool-call format
    A `ToolTask`: native `<tool_call>{"name": "get", "arguments": {"key": "blue/ant"}}</tool_call>`
    where the chat template shows tools in the Hermes/Qwen style (e.g. `jinja_template="hermes"`),
    `<get>blue/ant</get>` / `<list_keys>blue/</list_keys>` otherwise (`tool_format` chooses).

    ## Prompt
    `The store holds {keys} keys. What is the value of blue/ant? Look it up with the tools, then
    answer with the number.` The system prompt describes the tools with one worked exchange.

    ## Turns and replies
    A call: the tool's result (`get`: the value, or `error: no key ...`; `list_keys`: the matching
    keys, comma-separated), or a tool error for a call it cannot read. A turn without a call is the
    final answer and ends the episode. At most `max_turns` turns (default 4).

    ## Answer
    The value, e.g. `"57"`; metadata `{"store": {key: value}, "key": key}`. Splits by the problem
    (the store and the question).

    ## Rewards
    On the final answer: 1.0 when its last number is the value, else 0.0; components `answer` and
    `calls`. `call_credit` (default 0) pays that much once per episode, on the first call that
    returns the value (a `get` of the right key).

    ## Arguments
    - `keys=5` (2-12), `lookup="key"` ("key" | "prefix"), `call_credit=0.0`, `max_turns=4`,
      `tool_format="auto"`, `seed=0`, `prompt_style="plain"`.
    """

    name = "kvstore"
    description = "look a value up in a per-episode key-value store with get/list_keys tools (multi-turn)"
    max_answer_chars = 2
    demo = ("What is the value of red/fox?", [("get", {"key": "red/fox"}, "17")], "17")

    def __init__(self, keys: int = 5, lookup: str = "key", *, call_credit: float = 0.0, max_turns: int = 4,
                 tool_format: str = "auto", seed: int = 0, prompt_style: str = "plain"):  # fmt: skip
        super().__init__([get, list_keys], tool_format=tool_format, max_turns=max_turns, seed=seed,
                         prompt_style=prompt_style)  # fmt: skip
        if not 2 <= int(keys) <= len(COLOURS):
            raise ValueError(f"keys must be between 2 and {len(COLOURS)}, got {keys!r}")
        if lookup not in LOOKUPS:
            raise ValueError(f"lookup must be one of {', '.join(map(repr, LOOKUPS))}, got {lookup!r}")
        if not 0.0 <= float(call_credit) < 1.0:
            raise ValueError(f"call_credit must be in [0, 1) (a call pays less than the answer), got {call_credit}")
        self.keys, self.lookup, self.call_credit = int(keys), lookup, float(call_credit)
        self.params = {"keys": self.keys, "lookup": lookup, "call_credit": self.call_credit, "max_turns": self.max_turns,
                       "tool_format": tool_format}  # fmt: skip
        if lookup == "prefix":
            self.demo = ("What is the value of the key that starts with red/?",
                         [("list_keys", {"prefix": "red/"}, "red/fox"), ("get", {"key": "red/fox"}, "17")], "17")  # fmt: skip

    @property
    def instruction(self) -> str:
        return "Look it up with the tools, then answer with the number."

    def sample(self, rng: np.random.Generator) -> Example:
        # Distinct colours, so "the key that starts with <colour>/" names exactly one key.
        colours = rng.choice(len(COLOURS), size=self.keys, replace=False)
        animals = rng.choice(len(ANIMALS), size=self.keys, replace=True)
        values = rng.integers(10, 100, size=self.keys)
        store = {f"{COLOURS[c]}/{ANIMALS[a]}": int(v) for c, a, v in zip(colours, animals, values)}
        key = list(store)[int(rng.integers(self.keys))]
        asked = key if self.lookup == "key" else f"the key that starts with {key.split('/')[0]}/"
        prompt = f"The store holds {self.keys} keys. What is the value of {asked}?"
        return Example(prompt, str(store[key]), {"store": store, "key": key})

    def problem_key(self, example: Example) -> str:
        return f"{example.prompt} {json.dumps(example.metadata['store'], sort_keys=True)}"

    def extract(self, text: str) -> str | None:
        return final_number(text)

    def start(self, example: Example) -> dict[str, Any]:
        return {"calls": 0, "credited": 0, "store": dict(example.metadata["store"])}

    def credit(self, call: ToolCall, result: ToolResult, example: Example, state: dict[str, Any]) -> float:
        if result.ok and not state["credited"] and call.name == "get" and result.text == example.answer:
            state["credited"] = 1
            return self.call_credit
        return 0.0

    def answer(self, text: str, example: Example, state: dict[str, Any]) -> Reply:
        correct = float(numbers_equal(final_number(text), example.answer))
        return Reply(reward=correct, done=True, components={"answer": correct, "calls": float(state["calls"])})
