"""The one transition: both envs are cases of it, every finished episode is scored once, in one
hand-off per step, and each verifier call keeps its own timeout inside a batch."""

import os
import time

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode, SyncVectorEnv

import textgym
from textgym import Example, TextGenEnv, TextGenVectorEnv
from textgym.config import EnvConfig
from textgym.rewards.core import score_many
from textgym.transition import Transition, batch_infos

from helpers import assert_same

EX = Example("What is 3 + 4?", "7")


# -- score_many: one hand-off, a timeout per call -------------------------------------------------


def hang_on_spin(completion, example):
    while completion == "spin":
        pass
    return float(completion == example.answer)


def die_on_die(completion, example):
    if completion == "die":
        os._exit(3)
    return float(completion == example.answer)


def sleep_on_slow(completion, example):
    if completion == "slow":
        time.sleep(30)
    return float(completion == example.answer)


@pytest.mark.parametrize("isolation", ["thread", "process"])
def test_a_batch_keeps_a_timeout_per_call_and_scores_the_rest(isolation):
    fn = sleep_on_slow if isolation == "thread" else hang_on_spin
    hang = "slow" if isolation == "thread" else "spin"
    items = [("7", EX), (hang, EX), ("8", EX), ("7", EX)]
    start = time.perf_counter()
    results = score_many(fn, items, timeout=0.5, isolation=isolation)
    assert time.perf_counter() - start < 20.0, "the hung call (30 s or forever) is given up on after its own timeout"
    assert [r.reward for r in results] == [1.0, 0.0, 0.0, 1.0]
    assert [r.error is None for r in results] == [True, False, True, True]
    assert "timed out after 0.5 s" in results[1].error


def test_a_call_that_kills_the_worker_process_costs_only_its_own_reward():
    results = score_many(die_on_die, [("7", EX), ("die", EX), ("7", EX)], timeout=5, isolation="process")
    assert [r.reward for r in results] == [1.0, 0.0, 1.0]
    assert "killed its worker process (exit code 3)" in results[1].error


def test_score_many_inline_and_bad_names():
    assert [r.reward for r in score_many("exact_match", [("7", EX), ("8", EX)])] == [1.0, 0.0]
    assert all("unknown reward" in r.error for r in score_many("no_such_reward", [("7", EX)] * 2))
    assert score_many("exact_match", []) == []


# -- one verifier call per episode ----------------------------------------------------------------


def counting_reward():
    calls = []

    def reward(completion, example):
        calls.append(completion)
        return 0.0

    return reward, calls


@pytest.mark.parametrize("timeout", [None, 10.0])
def test_disabled_autoreset_scores_each_episode_exactly_once(timeout):
    reward, calls = counting_reward()
    envs = TextGenVectorEnv(num_envs=6, autoreset_mode="disabled", task="addition", tokenizer="char",
                            max_new_tokens=5, reward=reward, reward_timeout=timeout)  # fmt: skip
    envs.reset(seed=0)
    rng = np.random.default_rng(0)
    ended = np.zeros(6, dtype=bool)
    for _ in range(20):  # far more steps than any episode lasts: finished slots idle, unscored
        _, reward_, terminated, truncated, info = envs.step(rng.integers(0, 4, size=6))  # 0 is the end token
        assert not ((terminated | truncated) & ended).any(), "an episode's end is reported once"
        ended |= terminated | truncated
    assert ended.all() and len(calls) == 6


def test_the_batched_verifier_sees_every_slot_that_ended_on_a_step():
    seen = []

    def reward(completion, example):
        seen.append(completion)
        return float(completion == example.answer)

    envs = TextGenVectorEnv(num_envs=4, task="addition", tokenizer="char", max_new_tokens=2, reward=reward)
    envs.reset(seed=0)
    envs.step(np.array([5, 6, 7, 8]))
    _, _, _, truncated, info = envs.step(np.array([9, 10, 11, 12]))
    assert truncated.all() and len(seen) == 4
    assert info["completion"].tolist() == seen


# -- partial resets: step for step what SyncVectorEnv does, in every mode --------------------------

KW = dict(task="addition", tokenizer="char", max_new_tokens=6, task_kwargs={"prompt_style": "r1_zero"})


@pytest.mark.parametrize("mode", list(AutoresetMode))
def test_partial_resets_match_sync_vector_env(mode):
    n = 5
    ours = TextGenVectorEnv(num_envs=n, autoreset_mode=mode, **KW)
    sync = SyncVectorEnv([lambda: TextGenEnv(**KW) for _ in range(n)], autoreset_mode=mode)
    assert_same(ours.reset(seed=3), sync.reset(seed=3), "reset")
    rng = np.random.default_rng(1)
    finished = np.zeros(n, dtype=bool)
    partial_resets = 0
    for t in range(150):
        if mode == AutoresetMode.DISABLED:
            # Gymnasium's DISABLED mode requires finished slots to be reset before the next step.
            mask = finished | (rng.random(n) < 0.05)
        else:
            mask = rng.random(n) < 0.08
        if mask.any():
            seed = int(rng.integers(100)) if rng.random() < 0.5 else None
            options = {"reset_mask": mask}
            if rng.random() < 0.3:
                options["index"] = int(rng.integers(0, 8))
            assert_same(ours.reset(seed=seed, options=dict(options)), sync.reset(seed=seed, options=dict(options)),
                        f"partial reset before step {t}")  # fmt: skip
            partial_resets += 1
        actions = np.where(rng.random(n) < 0.15, 0, rng.integers(1, ours.single_action_space.n, size=n))
        a, b = ours.step(actions), sync.step(actions)
        for name, x, y in zip(["obs", "reward", "terminated", "truncated", "info"], a, b):
            assert_same(x, y, f"step {t} {name}")
        finished = a[2] | a[3]
    assert partial_resets > 10


def test_changing_the_autoreset_mode_between_episodes():
    envs = TextGenVectorEnv(num_envs=3, task="addition", tokenizer="char", max_new_tokens=3)
    envs.reset(seed=0)
    envs.autoreset_mode = AutoresetMode.DISABLED
    assert envs.metadata["autoreset_mode"] == AutoresetMode.DISABLED
    for _ in range(3):
        envs.step(np.array([5, 5, 5]))
    envs.autoreset_mode = "next_step"
    obs, reward, terminated, truncated, _ = envs.step(np.array([5, 5, 5]))  # left finished: reset now
    assert (obs["seq_len"] == obs["prompt_len"]).all() and not (terminated | truncated).any()
    with pytest.raises(ValueError, match="autoreset_mode must be one of"):
        envs.autoreset_mode = "sometimes"


# -- the transition on its own, and the config it is built from ------------------------------------


def test_transition_works_from_its_own_constructor():
    core = Transition(EnvConfig(task="addition", tokenizer="char", max_new_tokens=4), num_slots=2)
    example = core.task.example("train", 0)
    core.start(0, example, 0)
    core.start(1, example, 0)
    ids = core.tokenizer.encode(example.answer)
    for k, token in enumerate(ids):
        outcome = core.step(np.array([token, 9]), active=np.array([True, k == 0]))
    assert outcome.terminated.tolist() == [False, False]
    outcome = core.step(np.array([0, 9]), active=np.array([True, True]))  # the end token; slot 1 keeps going
    assert outcome.terminated.tolist() == [True, False] and outcome.rewards[0] == 1.0
    assert outcome.finals[0]["completion"] == example.answer and outcome.finals[0]["ended_by"] == "eos"
    assert core.prompt_text(example).startswith("What is")
    assert [r.reward for r in core.score([example.answer, "x"], [example, example])] == [1.0, 0.0]


def test_env_config_is_the_one_place_of_every_setting():
    doc = TextGenEnv.__doc__
    for f in EnvConfig.__dataclass_fields__:
        assert f"`{f}`" in doc, f"the env docstring lists {f}"
    env = TextGenEnv(EnvConfig(task="copy", max_new_tokens=3), max_new_tokens=5)  # keywords override
    assert env.config.task == "copy" and env.max_new_tokens == 5
    with pytest.raises(TypeError, match="unknown env setting.*max_tokens.*the settings are"):
        TextGenEnv(max_tokens=5)
    with pytest.raises(ValueError, match="reward_isolation must be one of 'thread', 'process'"):
        TextGenVectorEnv(num_envs=2, reward_isolation="sandbox")
    with pytest.raises(ValueError, match="max_new_tokens must be a positive integer"):
        gym.make("TextGen-v0", max_new_tokens=0)
    assert gym.make_vec("TextGen-v0", num_envs=2, vectorization_mode="vector_entry_point").unwrapped.config == EnvConfig()


def test_batch_infos_stacks_like_gymnasium():
    envs = SyncVectorEnv([lambda: TextGenEnv(**KW)] * 3)
    per_slot = {0: {"a": 1, "d": {"x": 0.5}}, 2: {"a": 3, "s": "text", "m": np.ones(2, np.int8), "d": {}}}
    expected = {}
    for slot, info in per_slot.items():
        expected = envs._add_info(expected, info, slot)
    assert_same(batch_infos(per_slot, 3), expected)


def test_rewards_that_ask_get_the_sampled_ids_not_a_re_encoding():
    from textgym.rewards import combine, from_trl

    tok = textgym.as_tokenizer("smollm2-135m-instruct")
    sampled = tok.encode("he") + tok.encode("llo")  # "hello" re-encodes to one token, not these two
    seen = {}

    def by_ids(completion, example, completion_ids=None):
        seen["ids"] = completion_ids
        return float(len(completion_ids))

    def trl_length(prompts, completions, completion_ids, **columns):
        seen["trl"] = completion_ids[0]
        return [float(len(completion_ids[0]))]

    reward = combine({"ids": by_ids, "trl": from_trl(trl_length, tokenizer=tok), "text": "exact_match"})
    env = TextGenEnv(task="addition", tokenizer=tok, max_new_tokens=4, reward=reward)
    env.reset(seed=0)
    for token in sampled + [tok.eos_token_id]:
        _, r, terminated, _, info = env.step(token)
    assert terminated and info["completion"] == "hello"
    assert seen["ids"] == seen["trl"] == sampled + [tok.eos_token_id]
    assert info["reward_components"]["ids"] == 3.0 and info["reward_components"]["trl"] == 3.0
    assert len(tok.encode("hello")) == 1


@pytest.mark.parametrize("tokenizer", ["char", "smollm2-135m-instruct"])
def test_cut_at_stop_ends_where_an_episode_would(tokenizer):
    """Ids sampled elsewhere, cut where a step would have ended the episode at a stop string (and the end
    token never counts as one, whatever its text)."""
    config = EnvConfig(task="addition", tokenizer=tokenizer, max_new_tokens=64, stop_strings=("</b>", "!!"))
    core = Transition(config)
    rng = np.random.default_rng(0)
    pieces = ["ab", "</", "b>", " x", "!", "</b", ">", "c", "!!", "<"]
    for _ in range(40):
        text = "".join(rng.choice(pieces, size=int(rng.integers(1, 12))))
        ids = core.tokenizer.encode(text)
        env = TextGenEnv(config=config)
        env.reset(seed=0)
        stopped = None  # how many tokens the episode took before a stop string ended it
        for k, token in enumerate(ids):
            *_, terminated, truncated, info = env.step(token)
            if terminated or truncated:
                assert info["ended_by"] == "stop"
                stopped = k + 1
                break
        assert core.cut_at_stop(ids) == ids[:stopped], text
        eos = core.eos_token_id
        assert core.cut_at_stop(ids + [eos]) == (ids + [eos] if stopped is None else ids[:stopped])
