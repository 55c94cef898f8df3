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

from textgym.tasks.base import Example, Task, budget_for, register_task_family, split_of

__all__ = [
    "reasoning_gym_task", "reasoning_gym_datasets", "reasoning_gym_config_fields", "ReasoningGymTask",
    "ReasoningGymCurriculum", "FAMILY",
]

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
            spec = DatasetSpec(name=spec["name"], weight=float(spec.get("weight", 1.0)),
                               config=dict(spec.get("config", {})))
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
        generated_config = curriculum.generate_configuration({"size": size, "seed": seed})
        generated = {f.name: getattr(generated_config, f.name) for f in dataclasses.fields(generated_config)}
        values = {**generated, **values}
    try:
        dataset_config = config_cls(**values)
        if hasattr(dataset_config, "validate"):
            dataset_config.validate()
    except (AssertionError, TypeError, ValueError) as e:  # its checks are asserts
        at_level = "" if level is None else f" (its reasoning-gym curriculum at level {level} gave {generated})"
        message = f"invalid config for reasoning-gym dataset {name!r}: {e or type(e).__name__}{at_level}"
        raise ValueError(message) from None
    return package.factory.DATASETS[name][0](config=dataset_config)


class ReasoningGymTask(Task):
    """A reasoning-gym dataset as a textgym task (see `reasoning_gym_task`)."""

    def __init__(self, name: str, *, size: int = 1000, seed: int = 0, prompt_style: str = "plain",
                 reward: Any = None, level: int | None = None, **config: Any):
        super().__init__(seed=seed, prompt_style=prompt_style, reward=reward)
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size (how many entries reasoning-gym generates) must be a positive integer, "
                             f"got {size!r}")
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
        # Room for the longest answer at one character a token (answers are digits, lists and symbols,
        # which subword tokenizers split finely) and 16 tokens to say it: 32 for most datasets.
        self.recommended_max_new_tokens = budget_for(self.max_answer_chars + 16, chars_per_token=1)

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

    All entries are generated here, once: most datasets take well under a millisecond per entry,
    a few much longer (measured here: knight_swap ~1 s, zebra_puzzles, quantum_lock, puzzle24,
    futoshiki, intermediate_integration 0.1-0.2 s), so size those with a smaller `size`.

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


class ReasoningGymCurriculum:
    """Raises a reasoning-gym dataset's difficulty once validation reward reaches a threshold.

        curriculum = ReasoningGymCurriculum("chain_sum", threshold=0.8, size=500)
        env = TextGenEnv(task=curriculum.task, ...)
        ...                                   # after each evaluation on the validation split:
        if curriculum.update(validation_reward):
            env = TextGenEnv(task=curriculum.task, ...)   # the same dataset, one level harder

    A level is reasoning-gym's own curriculum level for the dataset: every difficulty attribute
    (number of terms, digits, grid size...) at that level, clipped to the attribute's last one.
    The level goes up by one after `patience` evaluations in a row at or above `threshold`, until
    `max_level` (default: the highest level any attribute has). Options given in `task_kwargs`
    stay fixed at every level (they win over the curriculum), and so do size and seed.
    """

    def __init__(self, name: str, *, threshold: float = 0.8, patience: int = 1, start_level: int = 0,
                 max_level: int | None = None, **task_kwargs: Any):
        package = _package()
        _config_class(name)  # an unknown name: the error that lists the datasets
        if name not in package.factory.CURRICULA:
            raise ValueError(f"reasoning-gym dataset {name!r} has no curriculum; datasets with one: "
                             f"{', '.join(sorted(package.factory.CURRICULA))}")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be a positive integer, got {patience!r}")
        if not isinstance(threshold, (int, float)) or threshold != threshold:
            raise ValueError(f"threshold must be a number, got {threshold!r}")
        top = max(len(a.levels) for a in package.factory.create_curriculum(name).attributes.values()) - 1
        self.max_level = top if max_level is None else int(max_level)
        if not 0 <= start_level <= self.max_level:
            raise ValueError(f"start_level must be in [0, {self.max_level}] for {name!r}, got {start_level!r}")
        if "level" in task_kwargs:
            raise TypeError("the curriculum sets level= itself; use start_level=")
        self.name, self.threshold, self.patience = name, float(threshold), patience
        self.task_kwargs = task_kwargs
        self.level = int(start_level)
        self.task = reasoning_gym_task(name, level=self.level, **task_kwargs)
        self.history: list[tuple[int, float]] = []  # (level, reward) of every update
        self._streak = 0

    def update(self, reward: float) -> bool:
        """Record a validation reward; True when it raised the level (then `task` is the harder one)."""
        reward = float(reward)
        self.history.append((self.level, reward))
        self._streak = self._streak + 1 if reward >= self.threshold else 0
        if self._streak < self.patience or self.level >= self.max_level:
            return False
        self.level += 1
        self._streak = 0
        self.task = reasoning_gym_task(self.name, level=self.level, **self.task_kwargs)
        return True

    def __repr__(self) -> str:
        return (f"ReasoningGymCurriculum({self.name!r}, level={self.level}/{self.max_level}, "
                f"threshold={self.threshold}, patience={self.patience})")


register_task_family(FAMILY, reasoning_gym_task)
