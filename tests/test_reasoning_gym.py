"""reasoning-gym datasets as tasks: every dataset runs an episode through the env with the default
model's tokenizer, and the env's reward for the reference answer is reasoning-gym's own score."""

import os
import pickle
import sys

import pytest

import textgym
from textgym.rewards import score
from textgym.tasks import Task, make_task, reasoning_gym_config_fields, reasoning_gym_datasets, reasoning_gym_task

if os.environ.get("CI"):  # CI installs the `reasoning` extra: a missing package must fail there, not skip
    import reasoning_gym
else:
    reasoning_gym = pytest.importorskip("reasoning_gym")

NAMES = reasoning_gym_datasets()
NO_REFERENCE = {"boxnet", "graph_color", "propositional_logic", "rubiks_cube", "rush_hour"}
# Options that keep each episode cheap; every other dataset runs with its defaults.
CONFIGS = {
    "composite": {"datasets": [{"name": "chain_sum", "weight": 1.0, "config": {"max_terms": 3}},
                               {"name": "leg_counting", "weight": 1.0, "config": {}}]},
}
SIZES = {"knight_swap": 2}  # ~0.6 s per generated entry
TOKENIZER = "smollm2-135m-instruct"


def test_every_dataset_is_listed():
    assert len(NAMES) == len(reasoning_gym.factory.DATASETS) >= 100
    assert NAMES == sorted(NAMES) and {"chain_sum", "composite", "rush_hour"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_dataset_runs_an_episode_and_scores_like_reasoning_gym(name):
    task = make_task(f"reasoning_gym:{name}", size=SIZES.get(name, 5), seed=0, **CONFIGS.get(name, {}))
    examples = {s: [task.example(s, i) for i in range(task.num_examples(s))] for s in Task.SPLITS}
    for example in (e for split in examples.values() for e in split):
        entry = example.metadata["entry"]
        if entry["answer"] is None:
            assert name in NO_REFERENCE and example.answer == "" and not task.has_reference_answers
        else:
            # the task's verifier gives every reference answer reasoning-gym's own score
            expected = task.dataset.score_answer(answer=entry["answer"], entry=entry)
            assert task.reward(example.answer, example) == expected

    split = next(s for s in Task.SPLITS if examples[s])
    tokenizer = textgym.as_tokenizer(TOKENIZER)
    attempt = lambda ex: ex.answer or "no idea"  # noqa: E731  (no reference: any proposed solution)
    budget = max(len(tokenizer.encode(attempt(e))) for e in examples[split]) + 1
    env = textgym.TextGenEnv(task=task, tokenizer=TOKENIZER, max_new_tokens=budget, split=split)
    env.reset(seed=0)
    example = env.example
    ids = tokenizer.encode(attempt(example)) + [tokenizer.eos_token_id]
    for token in ids:
        _, reward, terminated, truncated, info = env.step(token)
    assert terminated and not truncated and "reward_error" not in info
    entry = example.metadata["entry"]
    expected = task.dataset.score_answer(answer=info["completion"].strip(), entry=entry)
    assert reward == expected
    if entry["answer"] is not None:
        assert reward == task.dataset.score_answer(answer=entry["answer"], entry=entry)


def test_config_passes_through_to_the_dataset():
    task = reasoning_gym_task("chain_sum", size=40, seed=1, min_terms=4, max_terms=4, min_digits=1, max_digits=1)
    ex = task.example("train", 0)
    assert ex.metadata["entry"]["metadata"]["num_terms"] == 4
    assert task.dataset.config.size == 40 and task.dataset.config.seed == 1
    assert make_task("reasoning_gym:bitwise_arithmetic", size=5, difficulty=1).dataset.config.difficulty == 1
    assert "min_terms" in reasoning_gym_config_fields("chain_sum")


def test_curriculum_level_sets_the_difficulty():
    easy = reasoning_gym_task("chain_sum", size=20, level=0)
    hard = reasoning_gym_task("chain_sum", size=20, level=3)
    assert easy.dataset.config.max_terms < hard.dataset.config.max_terms
    assert reasoning_gym_task("chain_sum", size=20, level=3, max_terms=2).dataset.config.max_terms == 2  # explicit wins


def test_splits_are_disjoint_and_deterministic():
    task = reasoning_gym_task("leg_counting", size=200)
    questions = {s: {task.example(s, i).prompt for i in range(task.num_examples(s))} for s in Task.SPLITS}
    assert all(questions.values()) and not (questions["train"] & (questions["validation"] | questions["test"]))
    again = reasoning_gym_task("leg_counting", size=200)
    assert [again.example("test", i) for i in range(5)] == [task.example("test", i) for i in range(5)]
    assert pickle.loads(pickle.dumps(task)).example("test", 0) == task.example("test", 0)


def test_r1_zero_style_scores_the_text_in_answer_tags():
    task = reasoning_gym_task("leg_counting", size=50, prompt_style="r1_zero")
    ex = task.example("train", 0)
    assert score(task.reward, f"count </think> <answer>{ex.answer}</answer>", ex).reward == 1.0
    assert score(task.reward, f"count </think> {ex.answer}", ex).reward == 0.0


@pytest.mark.parametrize("name, config, message", [
    ("no_such_dataset", {}, r"unknown reasoning-gym dataset 'no_such_dataset'; the \d+ known ones are: ab, acre"),
    ("chain_sum", {"bogus": 1}, "has no option.*bogus; its options are: min_terms"),
    ("chain_sum", {"min_terms": 5, "max_terms": 2}, "invalid config for reasoning-gym dataset 'chain_sum': max_terms"),
    ("composite", {}, "composite.*pass datasets="),
    ("list_functions", {"level": 1}, "has no curriculum"),
    ("chain_sum", {"level": 1, "min_terms": 9, "max_terms": 2}, r"max_terms .*\(its reasoning-gym curriculum at level 1 gave"),
    ("chain_sum", {"size": 0}, "size .* must be a positive integer"),
])
def test_bad_config_errors(name, config, message):
    with pytest.raises(ValueError, match=message):
        make_task(f"reasoning_gym:{name}", **config)


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "reasoning_gym", None)  # what `import` sees when it is not installed
    with pytest.raises(ImportError, match=r"pip install \"textgym\[reasoning\]\""):
        make_task("reasoning_gym:leg_counting")
    with pytest.raises(ImportError, match="reasoning-gym"):
        reasoning_gym_datasets()


def test_curriculum_raises_the_level_when_validation_reward_passes_the_threshold():
    from textgym.tasks import ReasoningGymCurriculum

    curriculum = ReasoningGymCurriculum("chain_sum", threshold=0.8, patience=2, size=20)
    first = curriculum.task
    assert curriculum.level == 0 and curriculum.max_level >= 2
    assert not curriculum.update(0.9) and not curriculum.update(0.5) and not curriculum.update(0.85)  # streak broken
    assert curriculum.update(0.8) and curriculum.level == 1  # two in a row at the threshold
    assert curriculum.task.dataset.config.max_terms > first.dataset.config.max_terms
    assert curriculum.history == [(0, 0.9), (0, 0.5), (0, 0.85), (0, 0.8)]
    top = ReasoningGymCurriculum("chain_sum", threshold=0.5, size=20, start_level=1, max_level=2)
    assert top.update(1.0) and top.level == 2 and not top.update(1.0) and top.level == 2  # stays at the top
    fixed = ReasoningGymCurriculum("chain_sum", threshold=0.5, size=20, max_terms=2)
    fixed.update(1.0)
    assert fixed.task.dataset.config.max_terms == 2  # options given stay fixed


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "list_functions"}, "has no curriculum"),
    ({"name": "nope"}, "unknown reasoning-gym dataset"),
    ({"name": "chain_sum", "patience": 0}, "patience must be a positive integer"),
    ({"name": "chain_sum", "start_level": 99}, r"start_level must be in \[0, "),
])
def test_curriculum_bad_arguments(kwargs, message):
    from textgym.tasks import ReasoningGymCurriculum

    with pytest.raises(ValueError, match=message):
        ReasoningGymCurriculum(size=10, **kwargs)
