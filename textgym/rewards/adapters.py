"""Use reward functions and datasets written for other libraries (TRL, reasoning-gym)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from textgym.tasks.base import Example, Task

__all__ = ["from_trl", "reasoning_gym_task"]


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


def reasoning_gym_task(name: str, *, size: int = 1000, seed: int = 0, prompt_style: str = "plain",
                       reward: Any = None, **dataset_kwargs: Any) -> "Task":
    """A textgym Task from a reasoning-gym dataset (`pip install reasoning-gym`).

    Generates `size` entries with `reasoning_gym.create_dataset(name, size=size, seed=seed,
    **dataset_kwargs)` and splits them 80/10/10 by a hash of the question, so the splits never
    share a question. The verifier is the dataset's own `score_answer`, given the answer text (the
    stripped completion in plain style, the text inside <answer> in r1_zero style). Also reachable
    as `make_task("reasoning_gym:<name>", ...)`.
    """
    try:
        import reasoning_gym
    except ImportError:
        raise ImportError(
            f"reasoning_gym_task({name!r}) needs the optional reasoning-gym package: "
            "pip install reasoning-gym"
        ) from None
    from textgym.tasks.base import Example, Task, split_of

    dataset = reasoning_gym.create_dataset(name, size=size, seed=seed, **dataset_kwargs)
    splits: dict[str, list[Example]] = {s: [] for s in Task.SPLITS}
    seen = set()
    for entry in dataset:
        question = str(entry["question"])
        if question in seen:  # the same question twice would be counted twice in evaluation
            continue
        seen.add(question)
        example = Example(question, str(entry["answer"]), {"entry": entry})
        splits[split_of(f"reasoning_gym:{name}:{question}")].append(example)

    def score_answer(answer: str, example: Example) -> float:
        return float(dataset.score_answer(answer=answer.strip(), entry=example.metadata["entry"]))

    return Task.from_examples(
        f"reasoning_gym:{name}",
        **splits,
        reward=reward or score_answer,
        description=f"reasoning-gym dataset {name!r}",
        prompt_style=prompt_style,
        seed=seed,
    )


