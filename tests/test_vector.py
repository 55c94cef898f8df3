"""TextGenVectorEnv: step for step the same as SyncVectorEnv, plus group resets."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode, SyncVectorEnv

import textgym  # noqa: F401  (registers TextGen-v0)
from textgym import TextGenEnv, TextGenVectorEnv

from helpers import assert_same

KW = dict(task="addition", tokenizer="char", max_new_tokens=12, task_kwargs={"prompt_style": "r1_zero", "digits": 2})


def scripted_actions(rng, envs, n):
    """Random tokens mixed with end tokens and the stop string, so every way of ending happens."""
    stop = envs.tokenizer.encode("</answer>") if hasattr(envs, "tokenizer") else None
    plans = [[] for _ in range(n)]

    def next_actions():
        out = np.empty(n, dtype=np.int64)
        for i in range(n):
            if not plans[i]:
                u = rng.random()
                if u < 0.05:
                    plans[i] = [0]
                elif u < 0.15:
                    plans[i] = list(stop)
                else:
                    plans[i] = [int(rng.integers(1, envs.single_action_space.n))]
            out[i] = plans[i].pop(0)
        return out

    return next_actions


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
def test_matches_sync_vector_env_step_for_step(mode):
    n = 4
    ours = TextGenVectorEnv(num_envs=n, autoreset_mode=mode, **KW)
    sync = SyncVectorEnv([lambda: TextGenEnv(**KW) for _ in range(n)], autoreset_mode=mode)
    o1, i1 = ours.reset(seed=7)
    o2, i2 = sync.reset(seed=7)
    assert_same(o1, o2, "reset obs")
    assert_same(i1, i2, "reset info")
    act = scripted_actions(np.random.default_rng(0), ours, n)
    endings = set()
    for t in range(300):
        a = act()
        r1 = ours.step(a)
        r2 = sync.step(a)
        for name, x, y in zip(["obs", "reward", "terminated", "truncated", "info"], r1, r2):
            assert_same(x, y, f"step {t} {name}")
        if "ended_by" in r1[4]:
            endings |= set(r1[4]["ended_by"][r1[4]["_ended_by"]])
        elif "final_info" in r1[4]:
            fi = r1[4]["final_info"]
            endings |= set(fi["ended_by"][fi["_ended_by"]])
    assert endings == {"eos", "stop", "budget"}, endings


def test_make_vec_entry_point_and_spaces():
    envs = gym.make_vec("TextGen-v0", num_envs=6, vectorization_mode="vector_entry_point", group_size=3, **KW)
    assert isinstance(envs.unwrapped, TextGenVectorEnv)
    obs, info = envs.reset(seed=0)
    assert envs.observation_space.contains(obs)
    assert envs.action_space.shape == (6,)


def test_group_resets_share_examples_across_autoresets():
    n, g = 8, 4
    envs = TextGenVectorEnv(num_envs=n, group_size=g, **KW)
    obs, info = envs.reset(seed=1)
    idx = info["index"]
    assert (idx[:4] == idx[0]).all() and (idx[4:] == idx[4]).all() and idx[0] != idx[4]
    # Run many episodes with random lengths: the k-th episode of every slot in a group is the same.
    rng = np.random.default_rng(0)
    seen = [[] for _ in range(n)]
    for i in range(n):
        seen[i].append(int(idx[i]))
    for _ in range(200):
        obs, r, term, trunc, info = envs.step(rng.integers(0, envs.single_action_space.n, size=n))
        # NEXT_STEP: slots that finished last step now show their new episode's example.
        new = envs._episode
        for i in range(n):
            if len(seen[i]) <= new[i]:
                seen[i].append(int(info["index"][i]))
    for group in (range(0, 4), range(4, 8)):
        k = min(len(seen[i]) for i in group)
        assert k >= 3
        for i in group:
            assert seen[i][:k] == seen[group[0]][:k]


def test_reset_gives_every_group_a_fresh_shared_example():
    envs = TextGenVectorEnv(num_envs=4, group_size=2, **KW)
    _, a = envs.reset(seed=0)
    _, b = envs.reset()
    assert a["index"][0] == a["index"][1] and b["index"][0] == b["index"][1]
    assert (a["index"] != b["index"]).any()


def test_disabled_autoreset_finished_slot_ignores_actions_until_reset_mask():
    envs = TextGenVectorEnv(num_envs=2, autoreset_mode=AutoresetMode.DISABLED, **KW)
    envs.reset(seed=0)
    _, reward, terminated, truncated, info = envs.step(np.array([0, 5]))  # slot 0 writes the end token
    assert terminated.tolist() == [True, False] and info["_completion"].tolist() == [True, False]
    before = envs.step(np.array([5, 5]))[0]
    obs, reward, terminated, truncated, info = envs.step(np.array([7, 5]))
    # slot 0 keeps its final state: no token appended, nothing paid or scored again, no new episode
    np.testing.assert_array_equal(obs["input_ids"][0], before["input_ids"][0])
    assert reward[0] == 0.0 and not terminated[0] and not truncated[0] and "completion" not in info
    assert obs["seq_len"][1, 0] == obs["prompt_len"][1, 0] + 3
    obs, info = envs.reset(options={"reset_mask": np.array([True, False])})
    assert obs["seq_len"][0, 0] == obs["prompt_len"][0, 0]
    assert obs["seq_len"][1, 0] == obs["prompt_len"][1, 0] + 3
    envs.step(np.array([5, 5]))


def test_bad_vector_input():
    with pytest.raises(ValueError, match="multiple of group_size"):
        TextGenVectorEnv(num_envs=6, group_size=4, **KW)
    with pytest.raises(ValueError, match="group_size"):
        TextGenVectorEnv(num_envs=4, group_size=0, **KW)
    envs = TextGenVectorEnv(num_envs=2, **KW)
    with pytest.raises(RuntimeError, match="reset"):
        envs.step(np.array([1, 1]))
    envs.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        envs.step(np.array([1, 1, 1]))
    with pytest.raises(ValueError, match="slot 1"):
        envs.step(np.array([1, 10_000]))
    with pytest.raises(TypeError, match="integer"):
        envs.step(np.array([1.0, 2.0]))


def test_action_masks_batch():
    envs = TextGenVectorEnv(num_envs=3, task="bandit", tokenizer="char", max_new_tokens=2)
    envs.reset(seed=0)
    masks = envs.action_masks()
    assert masks.shape == (3, envs.vocab_size) and masks.dtype == bool
    assert (masks == TextGenEnv(task="bandit", tokenizer="char", max_new_tokens=2).action_masks()).all()


def test_reset_with_one_example_index_per_slot():
    envs = TextGenVectorEnv(num_envs=4, task="comparison", tokenizer="char", max_new_tokens=4)
    _, info = envs.reset(seed=0, options={"index": np.array([5, 6, 7, 8])})
    assert info["index"].tolist() == [5, 6, 7, 8]
    assert [e.prompt for e in envs.examples] == [envs.task.example("train", i).prompt for i in (5, 6, 7, 8)]
    groups = TextGenVectorEnv(num_envs=4, group_size=2, task="comparison", tokenizer="char", max_new_tokens=4)
    _, info = groups.reset(seed=0, options={"index": np.array([3, 3, 9, 9])})
    assert info["index"].tolist() == [3, 3, 9, 9]
    with pytest.raises(ValueError, match="4 slots"):
        envs.reset(options={"index": np.arange(3)})
