"""Tasks from reasoning-gym's procedural datasets (`pip install "textgym[reasoning]"`).

    from textgym.tasks import make_task
    task = make_task("reasoning_gym:chain_sum", size=500, min_terms=3, max_terms=4)
    reasoning_gym_datasets()          # every name make_task("reasoning_gym:<name>") accepts

Every keyword that is not one of textgym's own (seed, size, prompt_style, reward, level) is a
field of the dataset's config dataclass and goes to `reasoning_gym.create_dataset` unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from textgym.tasks.base import Example, Task, register_task_family, split_of

__all__ = ["reasoning_gym_task", "reasoning_gym_datasets", "reasoning_gym_config_fields", "FAMILY"]

FAMILY = "reasoning_gym"
INSTALL = 'pip install "textgym[reasoning]"  (or: pip install reasoning-gym)'


def _package():
    try:
        import reasoning_gym
    except ImportError:
        raise ImportError(f"reasoning-gym tasks need the optional reasoning-gym package: {INSTALL}") from None
    return reasoning_gym


def reasoning_gym_datasets() -> list[str]:
    """The names of every reasoning-gym dataset, sorted; ImportError with the install command if absent."""
    return sorted(_package().factory.DATASETS)


def _config_class(name: str):
    datasets = _package().factory.DATASETS
    if name not in datasets:
        raise ValueError(
            f"unknown reasoning-gym dataset {name!r}; the {len(datasets)} known ones are: {', '.join(sorted(datasets))}"
        )
    return datasets[name][1]


def reasoning_gym_config_fields(name: str) -> list[str]:
    """The options of dataset `name` (its config dataclass's fields, `size` and `seed` included)."""
    return [f.name for f in dataclasses.fields(_config_class(name))]


def _dataset_specs(datasets: Any) -> list:
    """`composite`'s `datasets` option: dicts ({"name", "weight", "config"}) become DatasetSpecs."""
    from reasoning_gym.composite import DatasetSpec

    if not datasets:
        raise ValueError(
            "reasoning-gym's 'composite' dataset mixes other datasets: pass "
            "datasets=[{'name': 'chain_sum', 'weight': 1.0, 'config': {}}, ...]"
        )
    specs = []
    for spec in datasets:
        if isinstance(spec, dict):
            spec = DatasetSpec(name=spec["name"], weight=float(spec.get("weight", 1.0)), config=dict(spec.get("config", {})))
        specs.append(spec)
    return specs


def _create_dataset(name: str, size: int, seed: int, level: int | None, config: dict[str, Any]):
    package = _package()
    config_cls = _config_class(name)
    fields = reasoning_gym_config_fields(name)
    unknown = sorted(set(config) - set(fields))
    if unknown:
        raise ValueError(
            f"reasoning-gym dataset {name!r} has no option(s) {', '.join(unknown)}; its options are: "
            f"{', '.join(f for f in fields if f not in ('size', 'seed'))} (size and seed are make_task's own)"
        )
    if name == "composite" or "datasets" in config:
        config = {**config, "datasets": _dataset_specs(config.get("datasets"))}
    values = {**config, "size": size, "seed": seed}
    if level is not None:
        # A curriculum level sets the dataset's difficulty attributes; explicit options still win.
        if name not in package.factory.CURRICULA:
            raise ValueError(f"reasoning-gym dataset {name!r} has no curriculum, so level= does not apply; "
                             f"datasets with one: {', '.join(sorted(package.factory.CURRICULA))}")
        curriculum = package.factory.create_curriculum(name)
        curriculum.set_global_level(int(level))
        generated = dataclasses.asdict(curriculum.generate_configuration({"size": size, "seed": seed}))
        values = {**generated, **values}
    try:
        dataset_config = config_cls(**values)
        if hasattr(dataset_config, "validate"):
            dataset_config.validate()
    except (AssertionError, TypeError, ValueError) as e:  # its checks are asserts
        raise ValueError(f"invalid config for reasoning-gym dataset {name!r}: {e or type(e).__name__}") from None
    return package.factory.DATASETS[name][0](config=dataset_config)


class ReasoningGymTask(Task):
    """A reasoning-gym dataset as a textgym task (see `reasoning_gym_task`)."""

    def __init__(self, name: str, *, size: int = 1000, seed: int = 0, prompt_style: str = "plain",
                 reward: Any = None, level: int | None = None, **config: Any):
        super().__init__(seed=seed, prompt_style=prompt_style, reward=reward)
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size (how many entries reasoning-gym generates) must be a positive integer, got {size!r}")
        self.name = f"{FAMILY}:{name}"
        self.dataset_name = name
        self.params = {"dataset": name, "size": size, **({"level": level} if level is not None else {}), **config}
        self.dataset = _create_dataset(name, size, self.seed, level, config)
        self.description = f"reasoning-gym dataset {name!r} ({size} generated entries)"
        splits: dict[str, list[Example]] = {s: [] for s in self.SPLITS}
        seen = set()
        self.has_reference_answers = True
        for entry in self.dataset:
            question = str(entry["question"])
            if question in seen:  # the same question twice would be counted twice in evaluation
                continue
            seen.add(question)
            if entry["answer"] is None:
                self.has_reference_answers = False
            answer = "" if entry["answer"] is None else str(entry["answer"])
            splits[split_of(f"{self.name}:{question}")].append(Example(question, answer, {"entry": entry}))
        self._lists = splits
        self.max_answer_chars = max((len(e.answer) for exs in splits.values() for e in exs), default=0)

    def score_answer(self, text: str, example: Example) -> float:
        """The dataset's own verifier, given the stripped answer text."""
        return float(self.dataset.score_answer(answer=text.strip(), entry=example.metadata["entry"]))

    def _empty_split_message(self, split: str, total: int) -> str:
        return (f"split {split!r} of task {self.name!r} is empty: {total} distinct questions were generated; "
                f"pass a larger size=")


def reasoning_gym_task(name: str, *, size: int = 1000, seed: int = 0, prompt_style: str = "plain",
                       reward: Any = None, level: int | None = None, **config: Any) -> Task:
    """A textgym Task from the reasoning-gym dataset `name`.

    Generates `size` entries with `reasoning_gym.create_dataset(name, size=size, seed=seed,
    **config)`, drops repeated questions and splits them 80/10/10 by a hash of the question, so the
    splits never share one. `config` is any option of the dataset's config (its difficulty knobs;
    `reasoning_gym_config_fields(name)` lists them); `level` sets every attribute of the
    dataset's reasoning-gym curriculum to that level first (explicit options win).

    The verifier is the dataset's own `score_answer`, given the answer text: the stripped
    completion in plain style, the text inside <answer> tags in r1_zero style.

    Reference answers: `Example.answer` is the entry's answer as text. Some datasets (boxnet,
    graph_color, propositional_logic, rubiks_cube, rush_hour) have none: their verifier checks the
    proposed solution itself (a colouring, a move list). Their `Example.answer` is "" (there is
    nothing to show or compare with), `task.has_reference_answers` is False, and only the task's
    own verifier can score them: a reward that compares with `example.answer` (exact_match, ...)
    makes no sense there. The full entry is `example.metadata["entry"]`.
    """
    return ReasoningGymTask(name, size=size, seed=seed, prompt_style=prompt_style, reward=reward,
                            level=level, **config)


register_task_family(FAMILY, reasoning_gym_task)
