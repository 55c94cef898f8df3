"""TextGenEnv: the Gymnasium contract, episode rules, and clear errors for bad input."""

import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest

import textgym
from textgym import Example, Task, TextGenEnv

CHAR_TASKS = [t for t in textgym.list_tasks() if t != "bandit"]


def make(**kw):
    kw.setdefault("task", "addition")
    kw.setdefault("tokenizer", "char")
    kw.setdefault("max_new_tokens", 8)
    return gym.make("TextGen-v0", **kw)


def text_actions(env, text):
    return env.unwrapped.tokenizer.encode(text)


def test_make_and_module_prefix_without_import():
    env = make()
    assert isinstance(env.unwrapped, TextGenEnv)
    code = "import gymnasium as gym; e = gym.make('textgym:TextGen-v0'); print(type(e.unwrapped).__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "TextGenEnv"


def test_registration_is_idempotent_and_spec_is_json():
    import importlib

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        importlib.reload(textgym)
    spec = gym.spec("TextGen-v0")
    assert spec.vector_entry_point == "textgym.vector:TextGenVectorEnv"
    assert '"task": "comparison"' in spec.to_json()  # EnvConfig's default


@pytest.mark.parametrize("task", CHAR_TASKS)
def test_gymnasium_and_sb3_checkers_pass_without_warnings(task):
    from gymnasium.utils.env_checker import check_env as gym_check
    from stable_baselines3.common.env_checker import check_env as sb3_check

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gym_check(TextGenEnv(task=task, tokenizer="char", max_new_tokens=6), skip_render_check=True)
        sb3_check(TextGenEnv(task=task, tokenizer="char", max_new_tokens=6), warn=True)


def test_bandit_checker_with_two_step_budget():
    from gymnasium.utils.env_checker import check_env as gym_check

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gym_check(TextGenEnv(task="bandit", tokenizer="char", max_new_tokens=2), skip_render_check=True)


def test_observation_types_and_fresh_arrays():
    env = make()
    obs, info = env.reset(seed=3)
    assert env.observation_space.contains(obs)
    n = int(obs["seq_len"][0])
    assert obs["prompt_len"][0] == n and obs["attention_mask"].sum() == n
    assert (obs["input_ids"][n:] == env.unwrapped.vocab_size).all()
    obs2, reward, terminated, truncated, info2 = env.step(5)
    assert type(reward) is float and type(terminated) is bool and type(truncated) is bool
    assert obs2["input_ids"][n] == 5 and obs2["seq_len"][0] == n + 1
    assert obs["seq_len"][0] == n, "an earlier observation must not change"
    assert obs2["input_ids"] is not obs["input_ids"]


def test_same_seed_same_prompt_and_different_seed_differs():
    env = make()
    a = env.reset(seed=1)[0]["input_ids"]
    b = env.reset(seed=1)[0]["input_ids"]
    prompts = {tuple(env.reset(seed=s)[0]["input_ids"]) for s in range(20)}
    assert (a == b).all() and len(prompts) > 1


def test_correct_answer_scores_one_and_info_at_end():
    env = make(max_new_tokens=8)
    env.reset(seed=0)
    answer = env.unwrapped.example.answer
    for i, a in enumerate(text_actions(env, answer) + [0]):
        obs, reward, terminated, truncated, info = env.step(a)
    assert terminated and not truncated and reward == 1.0
    assert info["ended_by"] == "eos" and info["answer"] == answer
    assert info["completion"] == answer and info["episode_length"] == len(answer) + 1
    assert isinstance(info["reward_components"], dict)


def test_truncation_at_budget_scores_the_last_step():
    env = make(max_new_tokens=3)
    env.reset(seed=0)
    answer = env.unwrapped.example.answer
    padded = (answer + "   ")[:3]
    flags = [env.step(a)[2:4] for a in text_actions(env, padded)[:2]]
    assert flags == [(False, False), (False, False)]
    obs, reward, terminated, truncated, info = env.step(text_actions(env, padded)[2])
    assert truncated and not terminated and info["ended_by"] == "budget"
    assert reward == env.unwrapped.task.reward(padded, env.unwrapped.example) or isinstance(reward, float)


def test_budget_is_terminal_option():
    env = make(max_new_tokens=2, budget_is_terminal=True)
    env.reset(seed=0)
    env.step(5)
    _, _, terminated, truncated, info = env.step(5)
    assert terminated and not truncated and info["ended_by"] == "budget"


def test_multi_token_stop_string_terminates():
    env = make(task_kwargs={"prompt_style": "r1_zero"}, max_new_tokens=64)
    env.reset(seed=0)
    ex = env.unwrapped.example
    text = f" thinking </think> <answer>{ex.answer}</answer>"
    for a in text_actions(env, text):
        obs, reward, terminated, truncated, info = env.step(a)
        if terminated or truncated:
            break
    assert terminated and info["ended_by"] == "stop" and reward == 1.0
    assert info["completion"].endswith("</answer>")


def test_reward_that_raises_scores_zero_and_says_why():
    def broken(completion, example):
        raise ZeroDivisionError("boom")

    env = make(reward=broken, max_new_tokens=2)
    env.reset(seed=0)
    env.step(5)
    _, reward, _, _, info = env.step(5)
    assert reward == 0.0 and "ZeroDivisionError" in info["reward_error"]


def test_custom_reward_by_name():
    @textgym.register_reward("test_env_len_reward")
    def length_reward(completion, example):
        return len(completion) / 10

    env = make(reward="test_env_len_reward", max_new_tokens=4)
    env.reset(seed=0)
    for _ in range(4):
        out = env.step(5)
    assert out[1] == pytest.approx(0.4)


def test_reset_options_pick_examples():
    env = make()
    obs_a, info = env.reset(options={"index": 3})
    assert info["index"] == 3
    ex = Example(prompt="What is 1 + 1?", answer="2")
    env.reset(options={"example": ex})
    assert env.unwrapped.example is ex


def test_action_masks_follow_allowed_chars():
    env = TextGenEnv(task="bandit", tokenizer="char", max_new_tokens=2, action_mask_in_info=True)
    _, info = env.reset(seed=0)
    mask = env.action_masks()
    allowed = env.task.allowed_chars
    assert mask.dtype == bool and mask.shape == (env.vocab_size,)
    assert mask.sum() == len(set(allowed)) + 1  # the allowed chars and the end token
    assert (info["action_mask"] == mask).all()


def test_render_modes():
    env = TextGenEnv(render_mode="ansi")
    env.reset(seed=0)
    assert isinstance(env.render(), str)
    frame = TextGenEnv(render_mode="rgb_array")
    frame.reset(seed=0)
    img = frame.render()
    assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8


# -- bad input -----------------------------------------------------------------------------------


def test_bad_actions_are_clear_errors():
    env = TextGenEnv()
    with pytest.raises(RuntimeError, match="reset"):
        env.step(1)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="outside the action space"):
        env.step(env.vocab_size)
    with pytest.raises(ValueError, match="outside the action space"):
        env.step(-1)
    with pytest.raises(TypeError, match="integer token id"):
        env.step(1.5)
    with pytest.raises(TypeError, match="integer token id"):
        env.step(True)
    with pytest.raises(ValueError, match="single token id"):
        env.step(np.array([1, 2]))
    env.step(np.int64(3))
    env.step(np.array(3))


def test_step_after_episode_end_is_an_error():
    env = TextGenEnv(max_new_tokens=2)
    env.reset(seed=0)
    env.step(0)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(1)


def test_unknown_names_list_the_known_ones():
    with pytest.raises(ValueError, match="addition"):
        TextGenEnv(task="no_such_task")
    with pytest.raises(ValueError, match="exact"):
        TextGenEnv(reward="no_such_reward")
    with pytest.raises(ValueError, match="split"):
        TextGenEnv(split="dev")
    with pytest.raises(ValueError, match="max_new_tokens"):
        TextGenEnv(max_new_tokens=0)


def test_prompt_longer_than_observation_is_a_clear_error():
    too_long = r"the prompt of (train|validation|test) example \d+ \(.*\) is \d+ tokens, more than max_prompt_tokens=4; pass max_prompt_tokens="
    with pytest.raises(ValueError, match=too_long):  # a task with a known list of problems: when the env is made
        TextGenEnv(max_prompt_tokens=4)
    env = TextGenEnv(task="copy", max_prompt_tokens=4)  # generated problems: at the reset that draws one
    with pytest.raises(ValueError, match=too_long.replace("(train|validation|test)", "train")):
        env.reset(seed=0)


def test_empty_split_is_a_clear_error():
    task = Task.from_examples(
        "test_env_tiny_task",
        train=[Example("say a", "a")],
        validation=[],
        test=[],
        reward="exact_match",
    )
    TextGenEnv(task=task, split="train")
    with pytest.raises(ValueError, match="validation"):
        TextGenEnv(task=task, split="validation")


@pytest.mark.default_model
def test_checkers_pass_with_the_default_model_tokenizer():
    from gymnasium.utils.env_checker import check_env as gym_check
    from stable_baselines3.common.env_checker import check_env as sb3_check

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        env = TextGenEnv(task="addition", tokenizer="smollm2-135m-instruct", max_new_tokens=6)
        gym_check(env, skip_render_check=True)
        sb3_check(TextGenEnv(task="addition", tokenizer="smollm2-135m-instruct", max_new_tokens=6), warn=True)
    obs, _ = env.reset(seed=0)
    prompt = env.tokenizer.decode(obs["input_ids"][: int(obs["seq_len"][0])].tolist())
    assert prompt.startswith("<|im_start|>") and prompt.endswith("<|im_start|>assistant\n")
    raw = TextGenEnv(task="addition", tokenizer="smollm2-135m-instruct", chat_template=False)
    obs, _ = raw.reset(seed=0)
    assert "<|im_start|>" not in raw.tokenizer.decode(obs["input_ids"][: int(obs["seq_len"][0])].tolist())
    # The end token ends the episode.
    env.reset(seed=0)
    assert env.step(env.tokenizer.eos_token_id)[2] is True


def test_same_seed_same_examples_in_another_process():
    code = (
        "import textgym, json; e = textgym.TextGenVectorEnv(num_envs=4, group_size=2, task='countdown');"
        "print(json.dumps([e.reset(seed=s)[1]['index'].tolist() for s in (0, 1)] + "
        "[e.examples[0].prompt]))"
    )
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**__import__("os").environ, "PYTHONHASHSEED": str(h)}).stdout
            for h in (1, 2)]  # fmt: skip
    assert runs[0] == runs[1] and runs[0].strip()
