"""Stable-Baselines3 on TextGen envs: checkers, learn() smoke runs, and the VecEnv adapter."""

import numpy as np
import pytest
from gymnasium.vector import AutoresetMode
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.env_checker import check_env
from stable_baselines3.common.vec_env import DummyVecEnv, VecCheckNan

from agents.sb3 import AllowedActions, OneHotTokens, SB3VecEnv, TokenEmbedding, make_env, make_vec_env
from textgym import TextGenEnv, TextGenVectorEnv


TOY = dict(task="copy", task_kwargs={"length": 2, "alphabet": "abc"}, tokenizer="char", max_new_tokens=3)


@pytest.mark.parametrize("one_hot,allowed", [(True, False), (True, True), (False, False), (False, True)])
def test_wrapped_envs_pass_sb3_check_env(one_hot, allowed):
    env = make_env(one_hot=one_hot, allowed_actions=allowed, **TOY)
    check_env(env, warn=True)


def test_one_hot_space_is_sized_from_the_env():
    env = TextGenEnv(**TOY)
    wrapped = OneHotTokens(env)
    space = wrapped.observation_space["input_ids"]
    assert space.nvec.shape == (env.obs_len,) and (space.nvec == env.vocab_size + 1).all()
    obs, _ = wrapped.reset(seed=0)
    assert wrapped.observation_space.contains(obs)
    assert (wrapped.get_wrapper_attr("action_masks")() == env.action_masks()).all()


def test_allowed_actions_map_to_the_task_tokens():
    env = AllowedActions(TextGenEnv(**TOY))
    tok = env.unwrapped.tokenizer
    assert env.action_space.n == 4  # a, b, c and the end token
    assert sorted(tok.decode([t]) for t in env.tokens if t != tok.eos_token_id) == ["a", "b", "c"]
    env.reset(seed=0)
    a = int(np.flatnonzero(env.tokens == tok.encode("a")[0])[0])
    env.step(a)
    assert env.unwrapped.render().endswith("a")
    assert env.action_masks().all() and env.action_masks().shape == (4,)


def test_budget_is_terminal_means_no_truncation():
    env = make_env(allowed_actions=True, **TOY)  # budget_is_terminal defaults to True here
    env.reset(seed=0)
    done = [env.step(1) for _ in range(3)][-1]
    assert done[2] is True and done[3] is False and done[4]["ended_by"] == "budget"


@pytest.mark.parametrize("algo", [PPO, A2C])
def test_learn_smoke_single_env(algo):
    env = make_env(allowed_actions=True, **TOY)
    kwargs = dict(batch_size=16) if algo is PPO else {}
    model = algo("MultiInputPolicy", env, n_steps=16, seed=0, device="cpu", **kwargs)
    model.learn(total_timesteps=64)
    obs, _ = env.reset(seed=1)
    action, _ = model.predict(obs, deterministic=True)
    assert env.action_space.contains(int(action))


def test_learn_smoke_vec_adapter_with_embedding_extractor():
    env = VecCheckNan(make_vec_env(4, one_hot=False, **TOY), raise_exception=True)
    kwargs = dict(features_extractor_class=TokenEmbedding, features_extractor_kwargs=dict(embed_dim=8, features_dim=16))
    model = PPO("MultiInputPolicy", env, n_steps=8, batch_size=16, seed=0, device="cpu", policy_kwargs=kwargs)
    model.learn(total_timesteps=64)
    assert model.num_timesteps >= 64


def test_vec_adapter_requires_same_step():
    with pytest.raises(ValueError, match="same_step"):
        SB3VecEnv(TextGenVectorEnv(num_envs=2, **TOY))


@pytest.mark.parametrize("one_hot,budget_is_terminal", [(False, False), (True, True)])
def test_vec_adapter_matches_dummy_vec_env(one_hot, budget_is_terminal):
    """Same seeds, same actions: the adapter returns what DummyVecEnv of single envs returns."""
    n = 4
    kw = dict(TOY, budget_is_terminal=budget_is_terminal)
    venv = TextGenVectorEnv(num_envs=n, autoreset_mode=AutoresetMode.SAME_STEP, **kw)
    adapter = SB3VecEnv(venv, one_hot=one_hot)
    ours = VecCheckNan(adapter, raise_exception=True)  # SB3's own check of every step's arrays
    wrap = OneHotTokens if one_hot else (lambda e: e)
    ref = DummyVecEnv([lambda: wrap(TextGenEnv(**kw)) for _ in range(n)])
    ours.seed(3)
    ref.seed(3)
    a, b = ours.reset(), ref.reset()
    for key in b:
        np.testing.assert_array_equal(a[key], b[key])
    assert [i["index"] for i in adapter.reset_infos] == [i["index"] for i in ref.reset_infos]
    rng = np.random.default_rng(0)
    masks = np.stack(ours.env_method("action_masks"))
    assert masks.shape == (n, venv.vocab_size) and (masks == np.stack(ref.env_method("action_masks"))).all()
    allowed = np.flatnonzero(masks[0])
    finished = truncations = 0
    for _ in range(40):
        actions = rng.choice(allowed, size=n)
        oa, ra, da, ia = ours.step(actions)
        ob, rb, db, ib = ref.step(actions)
        for key in ob:
            np.testing.assert_array_equal(oa[key], ob[key])
        np.testing.assert_array_equal(ra, rb)
        assert ra.dtype == rb.dtype == np.float32
        np.testing.assert_array_equal(da, db)
        for i in range(n):
            assert ia[i]["TimeLimit.truncated"] == ib[i]["TimeLimit.truncated"]
            if db[i]:
                finished += 1
                truncations += ib[i]["TimeLimit.truncated"]
                for key in ("completion", "answer", "ended_by", "episode_length", "index", "prompt_len"):
                    assert ia[i][key] == ib[i][key], key
                for key, value in ib[i]["terminal_observation"].items():
                    np.testing.assert_array_equal(ia[i]["terminal_observation"][key], value)
                assert adapter.reset_infos[i]["index"] == ref.reset_infos[i]["index"]
    assert finished > 10
    assert (truncations > 0) == (not budget_is_terminal)


def test_maskable_ppo_through_action_masks():
    sb3_contrib = pytest.importorskip("sb3_contrib")
    from sb3_contrib.common.maskable.utils import get_action_masks, is_masking_supported

    env = make_vec_env(4, **TOY)
    assert is_masking_supported(env)
    masks = get_action_masks(env)
    assert masks.shape == (4, 97) and masks.sum(axis=1).tolist() == [4] * 4
    model = sb3_contrib.MaskablePPO("MultiInputPolicy", env, n_steps=8, batch_size=16, seed=0, device="cpu")
    model.learn(total_timesteps=64)
    single = make_env(**TOY)
    check_env(single)
    obs, _ = single.reset(seed=0)
    action, _ = model.predict(obs, action_masks=single.get_wrapper_attr("action_masks")(), deterministic=True)
    assert single.unwrapped.action_masks()[int(action)]
