"""Use reward functions written for other libraries (TRL)."""

from __future__ import annotations

from typing import Callable

from textgym.example import Example

__all__ = ["from_trl"]


def from_trl(fn: Callable[..., list]) -> Callable[[str, Example], tuple[float, dict[str, float]]]:
    """Turn a TRL reward function into a textgym reward.

    TRL calls `fn(prompts=[...], completions=[...], **columns) -> list[float | None]`, one column
    list per dataset column. Here each call is a batch of one: the prompt is `example.prompt`, and
    the columns are `example.metadata` plus `answer`. TRL's None ("this reward does not apply")
    becomes 0.0 with the component `none` = 1.0, so it is counted rather than silently averaged in.
    """

    def trl_reward(completion: str, example: Example) -> tuple[float, dict[str, float]]:
        columns = {k: [v] for k, v in example.metadata.items()}
        columns["answer"] = [example.answer]
        out = fn(prompts=[example.prompt], completions=[completion], **columns)
        if len(out) != 1:
            raise ValueError(f"TRL reward returned {len(out)} values for 1 completion")
        if out[0] is None:
            return 0.0, {"none": 1.0}
        return out[0], {"none": 0.0}

    trl_reward.__name__ = trl_reward.__qualname__ = f"from_trl({getattr(fn, '__name__', 'fn')})"
    return trl_reward
