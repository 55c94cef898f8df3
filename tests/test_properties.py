"""Property-based tests: any action sequence keeps the env inside its spaces, lengths consistent
and pays exactly one final reward; the vector env agrees with the single env on every slot."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from textgym import TextGenEnv, TextGenVectorEnv

ENV = TextGenEnv(task="addition", tokenizer="char", max_new_tokens=10, task_kwargs={"prompt_style": "r1_zero"})
VOCAB = ENV.vocab_size
STOP = ENV.tokenizer.encode("</answer>")

# Token streams biased towards the interesting cases: end tokens and the multi-token stop string.
token = st.one_of(st.integers(1, VOCAB - 1), st.just(0))
chunk = st.one_of(token.map(lambda t: [t]), st.just(STOP))
actions = st.lists(chunk, min_size=1, max_size=12).map(lambda chunks: [t for c in chunks for t in c])


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), acts=actions)
def test_any_action_sequence_keeps_the_invariants(seed, acts):
    obs, _ = ENV.reset(seed=seed)
    prompt_len = int(obs["prompt_len"][0])
    final_rewards, nonzero_before_end = 0, 0
    for t, a in enumerate(acts):
        obs, reward, terminated, truncated, info = ENV.step(a)
        assert ENV.observation_space.contains(obs)
        n = int(obs["seq_len"][0])
        assert n == prompt_len + t + 1 and int(obs["attention_mask"].sum()) == n
        assert (obs["input_ids"][n:] == VOCAB).all() and (obs["input_ids"][:n] < VOCAB).all()
        assert obs["input_ids"][n - 1] == a
        assert isinstance(reward, float) and np.isfinite(reward)
        if terminated or truncated:
            assert not (terminated and truncated)
            assert "completion" in info and "reward_components" in info
            final_rewards += 1
            assert t + 1 <= ENV.max_new_tokens
            break
        nonzero_before_end += reward != 0.0
    else:
        assert len(acts) < ENV.max_new_tokens
    assert nonzero_before_end == 0 and final_rewards <= 1


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**20), acts=st.lists(st.lists(token, min_size=3, max_size=3), min_size=1, max_size=25))
def test_vector_slots_equal_independent_single_envs(seed, acts):
    kw = dict(task="reverse", tokenizer="char", max_new_tokens=4, task_kwargs={"length": 3})
    envs = TextGenVectorEnv(num_envs=3, **kw)
    singles = [TextGenEnv(**kw) for _ in range(3)]
    obs, _ = envs.reset(seed=seed)
    single_obs = [e.reset(seed=seed + i)[0] for i, e in enumerate(singles)]
    done = [False] * 3
    for step in acts:
        obs, rewards, term, trunc, _ = envs.step(np.array(step))
        for i, e in enumerate(singles):
            if done[i]:
                single_obs[i], _ = e.reset()
                done[i], r, te, tr = False, 0.0, False, False
            else:
                single_obs[i], r, te, tr, _ = e.step(step[i])
                done[i] = te or tr
            assert rewards[i] == r and term[i] == te and trunc[i] == tr
            np.testing.assert_array_equal(obs["input_ids"][i], single_obs[i]["input_ids"])
