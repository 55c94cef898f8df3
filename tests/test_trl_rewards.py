"""Every reward function TRL ships, unchanged, through `from_trl` and a real env episode."""

import os

import pytest

import textgym
from textgym.example import Example
from textgym.rewards import from_trl, score
from textgym.tasks import Task

if os.environ.get("CI"):  # CI installs the `bench` and `math` extras: missing packages must fail there
    import math_verify  # noqa: F401
    import trl.rewards as trl_rewards
else:
    pytest.importorskip("math_verify")
    trl_rewards = pytest.importorskip("trl.rewards")

TOKENIZER = "smollm2-135m-instruct"
PROBLEM = Example("What is 1/2 + 1/4?", r"\frac{3}{4}")
COMPLETIONS = {
    "right": "<think>\nHalf plus a quarter is three quarters.\n</think>\nThe answer is $\\boxed{\\frac{3}{4}}$.",
    "wrong": "<think>\nHm.\n</think>\nThe answer is $\\boxed{\\frac{1}{2}}$.",
    "no_think": "The answer is $\\boxed{\\frac{3}{4}}$.",
    "repetitive": "no no no no no no no no no no no no no no no no no no no no no no no no",
}
# Each TRL reward as a trainer would set it up (the get_* are factories).
REWARDS = {
    "think_format_reward": lambda: trl_rewards.think_format_reward,
    "accuracy_reward": lambda: trl_rewards.accuracy_reward,
    "reasoning_accuracy_reward": lambda: trl_rewards.reasoning_accuracy_reward,
    "get_cosine_scaled_reward": lambda: trl_rewards.get_cosine_scaled_reward(max_len=32),
    "get_repetition_penalty_reward": lambda: trl_rewards.get_repetition_penalty_reward(ngram_size=2),
    "get_soft_overlong_punishment": lambda: trl_rewards.get_soft_overlong_punishment(max_completion_len=30, soft_punish_cache=10),
}
# What each gives the four completions: the test would pass on all-zero rewards without these.
EXPECTED_SIGNS = {
    "think_format_reward": {"right": 1.0, "wrong": 1.0, "no_think": 0.0, "repetitive": 0.0},
    "accuracy_reward": {"right": 1.0, "wrong": 0.0, "no_think": 1.0, "repetitive": 0.0},
    "reasoning_accuracy_reward": {"right": 1.0, "wrong": 0.0, "no_think": 0.0, "repetitive": 0.0},
    "get_cosine_scaled_reward": {"right": "+", "wrong": "--", "no_think": "+", "repetitive": "--"},
    "get_repetition_penalty_reward": {"right": "-", "wrong": "-", "no_think": 0.0, "repetitive": "--"},
    # 32, 27, 15, 25 tokens with the end token (TRL counts it too)
    "get_soft_overlong_punishment": {"right": -1.0, "wrong": "--", "no_think": 0.0, "repetitive": -0.5},
}


def trl_public_functions():
    return sorted(n for n in dir(trl_rewards) if not n.startswith("_") and callable(getattr(trl_rewards, n))
                  and not isinstance(getattr(trl_rewards, n), type(trl_rewards)))


def test_every_trl_reward_is_tested():
    assert trl_public_functions() == sorted(REWARDS), "a TRL reward function is not covered here: add it to REWARDS"


def episode(reward, text, tokenizer=TOKENIZER, **env_kwargs):
    """Step the env through `text` (then the end token); the final reward, info and the stepped ids."""
    task = Task.from_examples("half", train=[PROBLEM])
    env = textgym.TextGenEnv(task=task, tokenizer=tokenizer, max_new_tokens=64, reward=reward, **env_kwargs)
    env.reset(seed=0)
    ids = env.tokenizer.encode(text)
    for token in ids + [env.tokenizer.eos_token_id]:
        _, r, terminated, truncated, info = env.step(token)
    assert terminated and not truncated
    return r, info, ids


@pytest.mark.parametrize("name", sorted(REWARDS))
def test_trl_reward_through_an_env_episode(name):
    fn = REWARDS[name]()
    reward = from_trl(fn, tokenizer=TOKENIZER)
    assert reward.conversational  # SmolLM2 has a chat template, so the env uses it by default
    for kind, text in COMPLETIONS.items():
        got, info, ids = episode(reward, text)
        assert "reward_error" not in info, info["reward_error"]
        assert info["completion"] == text
        # TRL's own call, as GRPOTrainer makes it for a conversational dataset, with the sampled ids
        # (GRPOTrainer keeps the first end token in completion_ids; so does the env)
        direct = fn(prompts=[[{"role": "user", "content": PROBLEM.prompt}]],
                    completions=[[{"role": "assistant", "content": text}]],
                    solution=[PROBLEM.answer], completion_ids=[ids + [textgym.as_tokenizer(TOKENIZER).eos_token_id]])[0]
        assert got == (0.0 if direct is None else direct), kind
        assert info["reward_components"] == {"none": float(direct is None)}
        expected = EXPECTED_SIGNS[name][kind]
        if expected == "+":
            assert got > 0, kind
        elif expected == "-":
            assert -0.5 < got < 0, kind
        elif expected == "--":
            assert got < -0.5, kind
        else:
            assert got == expected, kind


def test_math_reward_in_an_isolated_process():
    got, info, _ = episode(from_trl(trl_rewards.accuracy_reward), COMPLETIONS["right"], reward_isolation="process")
    assert got == 1.0 and "reward_error" not in info


def test_unparseable_solution_is_counted_as_none():
    result = score(from_trl(trl_rewards.accuracy_reward), COMPLETIONS["right"], Example("q", "no math here"))
    assert (result.reward, result.components) == (0.0, {"none": 1.0})


def test_conversational_auto():
    seen = []

    def plain(prompts, completions, answer, **kwargs):
        seen.append((prompts, completions))
        return [float(completions[0].strip() == answer[0])]

    assert from_trl(trl_rewards.think_format_reward).conversational is True  # TRL's own: messages only
    assert from_trl(plain).conversational is False  # any other function, without a tokenizer: strings
    assert from_trl(plain, tokenizer="char").conversational is False  # no chat template
    assert from_trl(plain, tokenizer=TOKENIZER).conversational is True
    got, _, _ = episode(from_trl(plain, tokenizer="char"), "3/4", tokenizer="char", chat_template=False)
    assert got == 0.0 and seen[-1] == (["What is 1/2 + 1/4?"], ["3/4"])  # plain strings; reference is \frac{3}{4}
    chat = from_trl(plain, conversational=True)
    with pytest.raises(AttributeError):  # `plain` wants strings, and was told it gets messages
        chat("x", PROBLEM)
    assert seen[-1] == ([[{"role": "user", "content": PROBLEM.prompt}]], [[{"role": "assistant", "content": "x"}]])
    # TRL's functions take messages only: told otherwise, they fail loudly (score turns it into an error)
    assert "raised TypeError" in score(from_trl(trl_rewards.think_format_reward, conversational=False), "x", PROBLEM).error
    with pytest.raises(ValueError, match="conversational must be True, False or 'auto'"):
        from_trl(plain, conversational="yes")


def test_columns_and_answer_names():
    seen = {}

    def spy(prompts, completions, **columns):
        seen.update(columns)
        return [1.0]

    ex = Example("q", "7", {"level": 3, "solution": "the long worked solution", "completions": "clash"})
    assert from_trl(spy)("7", ex) == (1.0, {"none": 0.0})
    assert seen == {"level": [3], "solution": ["7"], "answer": ["7"]}  # the answer wins; ours are never overridden
    seen.clear()
    from_trl(spy, answer_columns="gold")("7", ex)
    assert seen == {"level": [3], "solution": ["the long worked solution"], "gold": ["7"]}


def test_completion_ids_need_a_tokenizer():
    with pytest.raises(ValueError, match="needs completion_ids; pass tokenizer="):
        from_trl(trl_rewards.get_soft_overlong_punishment(max_completion_len=20, soft_punish_cache=10))
    with pytest.raises(ValueError, match="needs completion_ids"):
        from_trl(trl_rewards.get_cosine_scaled_reward(max_len=32))
    penalty = from_trl(trl_rewards.get_repetition_penalty_reward(ngram_size=2), tokenizer="char")
    assert penalty("abababab", PROBLEM)[0] < 0 and penalty("abcdefgh", PROBLEM)[0] == 0.0


def test_batch_size_mismatch_is_an_error():
    assert "returned 2 values for 1 completion" in score(from_trl(lambda prompts, completions, **kw: [1.0, 1.0]), "7", PROBLEM).error
