"""Reward functions ("verifiers"): `fn(completion, example) -> float | (float, {component: float})`.

    from textgym.rewards import register_reward, score

    @register_reward("short")
    def short(completion, example):
        return float(len(completion) <= 10)

    score("short", "hello", example)            # RewardResult(reward=1.0, components={}, error=None)

`extract` pulls answers out of completions; `builtin` holds the registered rewards; `answers` the
answer each of them reads (`extract_answer`, `vote_key`); `core` the registry (a reward with its
answer extraction), `score` (the env's only way to call a reward) and `combine`; `adapters` TRL's
reward functions. (reasoning-gym's datasets are tasks: `textgym.tasks.reasoning_gym`.)
"""

from textgym.rewards import extract
from textgym.rewards.adapters import from_trl
from textgym.rewards.builtin import (
    boxed_math,
    contains,
    edit_distance,
    exact_match,
    gsm8k,
    is_r1_format,
    math_equiv,
    numeric_match,
    partial_credit,
    r1_format,
    r1_zero,
    r1_zero_reward,
    regex,
)
from textgym.rewards.answers import extract_answer, vote_key
from textgym.rewards.core import (
    RewardFn,
    RewardResult,
    combine,
    get_extractor,
    get_reward,
    list_rewards,
    register_reward,
    reward_name,
    score,
)
from textgym.rewards.math_equiv import math_equal

__all__ = [
    "RewardFn", "RewardResult", "register_reward", "list_rewards", "get_reward", "reward_name",
    "score", "combine", "extract", "exact_match", "numeric_match", "contains", "regex", "r1_format",
    "r1_zero", "r1_zero_reward", "is_r1_format", "math_equiv", "math_equal", "gsm8k", "boxed_math", "partial_credit",
    "edit_distance", "from_trl", "get_extractor", "extract_answer", "vote_key",
]
