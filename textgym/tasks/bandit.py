"""The bandit: one fixed prompt, one-character actions, a reward per action you choose."""

from __future__ import annotations

import math
from typing import Any, Mapping

from textgym.tasks.base import Example, Task, register_task

__all__ = ["BanditTask", "parse_bandit_rewards"]


def parse_bandit_rewards(rewards: Mapping[str, float] | str) -> dict[str, float]:
    """{"A": 1.0, "B": 0.2} from itself or from the string "A=1,B=0.2"."""
    if isinstance(rewards, str):
        pairs = [p.split("=", 1) for p in rewards.split(",") if p.strip()]
        if any(len(p) != 2 for p in pairs):
            raise ValueError(f"bandit rewards string must look like 'A=1,B=0.2', got {rewards!r}")
        rewards = {k.strip(): float(v) for k, v in pairs}
    parsed = {str(k): float(v) for k, v in dict(rewards).items()}
    if not parsed:
        raise ValueError("bandit needs at least one action")
    bad = [k for k in parsed if len(k) != 1 or k.isspace()]
    if bad:
        raise ValueError(f"bandit actions must be single non-space characters, got {bad}")
    if not all(math.isfinite(v) for v in parsed.values()):
        raise ValueError(f"bandit rewards must be finite, got {parsed}")
    return parsed


@register_task("bandit")
class BanditTask(Task):
    """A multi-armed bandit written as text: the policy answers a fixed prompt with one character.

    ## Description
    The "Try it" world of the REINFORCE chapter: a handful of actions, each with a reward you set.
    Every episode has the same prompt; the first character the policy writes is its action. Good
    for watching the action distribution move towards what you reward, with and without a
    baseline. There is one problem, so every split holds that same example (nothing to hold out).

    ## Prompt
    `Pick one of ABCD:` (the actions, in the order given). r1_zero: inside the R1-zero template.

    ## Answer
    The best action (first of the best on ties); metadata `{"rewards": {...}}`. 1 character.

    ## Rewards
    `rewards[action]` for the first non-blank character of the completion (of the text inside
    <answer> for r1_zero, paid only with the right format); 0.0 for anything not an action.

    ## Arguments
    - `rewards="A=0.2,B=1,C=0,D=0.5"`: a dict `{"A": 0.2, "B": 1.0, ...}` or that string.
    - `prompt=None`: the fixed prompt; None gives `Pick one of <actions>:`.
    - `seed=0`, `prompt_style="plain"`, `reward=None`.

    ## Example
    ```python
    from textgym.tasks import make_task
    task = make_task("bandit", rewards="A=1,B=0.2")
    ex = task.example("train", 0)
    assert ex.prompt == "Pick one of AB:" and task.allowed_chars == "AB"
    assert task.reward("B", ex) == 0.2 and task.reward(ex.answer, ex) == 1.0
    ```
    """

    name = "bandit"
    description = "One fixed prompt, one-character actions with rewards you choose"
    max_answer_chars = 1

    def __init__(self, rewards: Mapping[str, float] | str = "A=0.2,B=1,C=0,D=0.5", *,
                 prompt: str | None = None, seed: int = 0, prompt_style: str = "plain", reward: Any = None):
        super().__init__(seed=seed, prompt_style=prompt_style, reward=reward)
        self.action_rewards = parse_bandit_rewards(rewards)
        self.answer_chars = "".join(self.action_rewards)
        self.params = {"rewards": self.action_rewards}
        best = max(self.action_rewards, key=self.action_rewards.__getitem__)
        prompt = f"Pick one of {self.answer_chars}:" if prompt is None else prompt
        self._example = Example(prompt, best, {"rewards": dict(self.action_rewards)})

    def example(self, split: str, index: int) -> Example:
        self._check_split(split)
        return self._example

    def num_examples(self, split: str) -> int:
        self._check_split(split)
        return 1

    def extract(self, text: str) -> str | None:
        text = text.strip()
        return text[0] if text else None

    def check(self, answer: str, example: Example) -> float:
        return example.metadata["rewards"].get(answer, 0.0)
