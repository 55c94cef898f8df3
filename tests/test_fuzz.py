"""Fuzzing: whatever a policy writes, no exception escapes `env.step`, observations stay in their
space and rewards are finite floats — for every built-in task and a member of each task family.

Hypothesis writes the policy's tokens: random token ids (the end token among them), and text with
the tags tasks read — `<calc>…</calc>` holding near-arithmetic (`0**-1`, `1e999`, `9//0`) or any
characters, `<answer>…</answer>`, `<think>…</think>` — encoded with the char tokenizer and, for the
multi-turn tasks, with SmolLM2's. Bounded to about a minute on two cores (`max_examples` below).
"""

import json
import math
import string

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import textgym
from textgym import TextGenEnv, TextGenVectorEnv

CHARS = string.printable.replace("\t", "").replace("\r", "").replace("\x0b", "").replace("\x0c", "")  # the char alphabet
MAX_NEW_TOKENS = 40


def fuzz(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


MULTI_TURN = [name for name in textgym.list_tasks() if textgym.make_task(name).multi_turn]
SINGLE_TURN = [name for name in textgym.list_tasks() if name not in MULTI_TURN]
FAMILIES = ["file:jsonl", "file:csv-r1", "hf:local", "reasoning_gym:chain_sum"]

# Operands and operators where arithmetic breaks: zero, negative powers, overflow, huge literals.
formula = st.tuples(
    st.sampled_from(["0", "0.0", "(1-1)", "-1", "-2", "2", "0.5", "1e999", "9" * 70]),
    st.sampled_from(["**", "/", "//", "%", "*", "-"]),
    st.sampled_from(["0", "0.0", "-1", "-2", "-0.5", "2", "65", "(2**64)"]),
).map("".join)
near_arithmetic = st.lists(
    st.sampled_from([*"0123456789", "**", "-", "+", "*", "/", "//", "%", "(", ")", ".", "e", " ", "j"]), max_size=16
).map("".join)
any_text = st.text(alphabet=CHARS, max_size=24)
inside = st.one_of(formula, formula, near_arithmetic, any_text)
# Turns known to have broken textgym, always tried first (Hypothesis then explores around them).
HOSTILE_TURNS = ["<calc>0**-1</calc>", "<calc>" * 12, "<answer>" + "9" * 30 + "</answer>", "<calc>1e999</calc>"]
tagged_text = st.one_of(
    inside.map(lambda t: f"<calc>{t}</calc>"),
    inside.map(lambda t: f"<answer>{t}</answer>"),
    st.tuples(any_text, inside).map(lambda p: f"<think>{p[0]}</think> <answer>{p[1]}</answer>"),
    st.just("<calc>" * 20),
    any_text,
)


def token_streams(tokenizer):
    """Lists of token ids a policy might write: random ids, end tokens and encoded tagged text."""
    eos = tokenizer.eos_token_id
    chunk = st.one_of(
        st.lists(st.integers(0, tokenizer.vocab_size - 1), min_size=1, max_size=6),
        st.just([eos]),
        tagged_text.map(lambda text: tokenizer.encode(text) + [eos]),
        tagged_text.map(tokenizer.encode),
    )
    return st.lists(chunk, min_size=1, max_size=6).map(lambda chunks: [t for c in chunks for t in c] or [eos])


CHAR = textgym.as_tokenizer("char")
CHAR_STREAMS = token_streams(CHAR)
HOSTILE_STREAMS = [CHAR.encode(turn) + [CHAR.eos_token_id] for turn in HOSTILE_TURNS]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A small data file in each format the families read (written once)."""
    root = tmp_path_factory.mktemp("fuzz_data")
    rows = [{"prompt": f"What is {i} + {i % 7}?", "answer": str(i + i % 7)} for i in range(40)]
    (root / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "rows.csv").write_text("prompt,answer\n" + "".join(f"{r['prompt']},{r['answer']}\n" for r in rows))
    return root


def task_spec(name, root):
    """(task, task_kwargs) of a fuzzed name; a family member whose optional extra is missing skips."""
    if name == "file:jsonl":
        return f"file:{root / 'rows.jsonl'}", {}
    if name == "file:csv-r1":
        return f"file:{root / 'rows.csv'}", {"prompt_style": "r1_zero", "reward": "numeric_match"}
    if name == "hf:local":
        datasets = pytest.importorskip("datasets")
        if not (root / "saved").exists():
            rows = [json.loads(line) for line in (root / "rows.jsonl").read_text().splitlines()]
            datasets.Dataset.from_list(rows).save_to_disk(str(root / "saved"))
        return f"hf:{root / 'saved'}", {}
    if name.startswith("reasoning_gym:"):
        pytest.importorskip("reasoning_gym")
        return name, {"size": 40}
    return name, {} if name in MULTI_TURN else {"prompt_style": "r1_zero"}


_ENVS: dict = {}


def envs_for(root, name, tokenizer="char"):
    """(single env, vector env of 3 slots) for a fuzzed task, built once."""
    key = (name, tokenizer)
    if key not in _ENVS:
        task, kwargs = task_spec(name, root)
        settings_ = dict(task=task, task_kwargs=kwargs, tokenizer=tokenizer, max_new_tokens=MAX_NEW_TOKENS)
        _ENVS[key] = TextGenEnv(**settings_), TextGenVectorEnv(num_envs=3, **settings_)
    return _ENVS[key]


def run_episode(env, seed, stream, built_in):
    """Step one episode with `stream` (cycled) as the policy's tokens, checking every step."""
    obs, _ = env.reset(seed=seed)
    assert env.observation_space.contains(obs)
    for t in range(MAX_NEW_TOKENS):
        obs, reward, terminated, truncated, info = env.step(stream[t % len(stream)])
        assert env.observation_space.contains(obs)
        assert type(reward) is float and math.isfinite(reward)
        assert type(terminated) is bool and type(truncated) is bool
        if terminated or truncated:
            break
    assert terminated or truncated, "the token budget ends every episode"
    assert isinstance(info["completion"], str) and isinstance(info["reward_components"], dict)
    if built_in:  # textgym's own verifiers and replies never fail, whatever the policy wrote
        assert "reward_error" not in info and "reply_error" not in info, info


def run_vector(envs, seed, streams):
    """Step the vector env for two token budgets (autoresets included), checking every step."""
    obs, _ = envs.reset(seed=seed)
    assert envs.observation_space.contains(obs)
    for t in range(2 * MAX_NEW_TOKENS):
        actions = np.array([s[t % len(s)] for s in streams], dtype=np.int64)
        obs, rewards, terminated, truncated, infos = envs.step(actions)
        assert envs.observation_space.contains(obs)
        assert rewards.dtype == np.float64 and np.isfinite(rewards).all()
        assert terminated.dtype == bool and truncated.dtype == bool


@pytest.mark.parametrize("name", SINGLE_TURN + MULTI_TURN + FAMILIES)
def test_any_tokens_through_the_single_env(data_dir, name):
    env, _ = envs_for(data_dir, name)

    @fuzz(25)
    @given(seed=st.integers(0, 2**31 - 1), stream=CHAR_STREAMS)
    @example(seed=0, stream=HOSTILE_STREAMS[0] + HOSTILE_STREAMS[1])
    @example(seed=1, stream=HOSTILE_STREAMS[2] + HOSTILE_STREAMS[3])
    def check(seed, stream):
        run_episode(env, seed, stream, built_in=name in textgym.list_tasks())

    check()


@pytest.mark.parametrize("name", SINGLE_TURN + MULTI_TURN + FAMILIES)
def test_any_tokens_through_the_vector_env(data_dir, name):
    _, envs = envs_for(data_dir, name)

    @fuzz(8)
    @given(seed=st.integers(0, 2**31 - 1), streams=st.lists(CHAR_STREAMS, min_size=3, max_size=3))
    @example(seed=0, streams=HOSTILE_STREAMS[:3])
    def check(seed, streams):
        run_vector(envs, seed, streams)

    check()


@pytest.mark.parametrize("name", MULTI_TURN)
def test_any_tokens_through_multi_turn_tasks_with_a_chat_template(data_dir, name):
    env, _ = envs_for(data_dir, name, tokenizer="smollm2-135m-instruct")

    tok = env.tokenizer

    @fuzz(12)
    @given(seed=st.integers(0, 2**31 - 1), stream=token_streams(tok))
    @example(seed=0, stream=[t for turn in HOSTILE_TURNS for t in tok.encode(turn) + [tok.eos_token_id]])
    def check(seed, stream):
        run_episode(env, seed, stream, built_in=True)

    check()
