"""Multi-turn environments: the environment speaks too, and no sampled token is ever re-tokenized."""

import copy
import re
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode, SyncVectorEnv

import textgym
from textgym import Example, TextGenEnv, TextGenVectorEnv
from textgym.tasks import MessageEnvTask, MultiTurnTask, Reply, calculate

from helpers import assert_same

MULTI_TURN = ["calculator", "guess", "retry"]


def play(env, turns, eos=True):
    """Write each text as one turn (encoded, plus the end token); returns the last step's result."""
    tok = env.unwrapped.tokenizer
    out = None
    for text in turns:
        ids = tok.encode(text) + ([tok.eos_token_id] if eos else [])
        for token in ids:
            out = env.step(token)
            if out[2] or out[3]:
                return out
    return out


# -- the transition: s_{t+1} = s_t ‖ a_t ‖ o_t -------------------------------------------------------


def test_sampled_tokens_stay_and_replies_are_appended_after_them():
    env = TextGenEnv(task="guess", tokenizer="char", max_new_tokens=48)
    obs, _ = env.reset(seed=0)
    secret = env.example.answer
    prompt = obs["input_ids"][: obs["seq_len"][0]].tolist()
    history = list(prompt)
    wrong = "".join("1" if c != "1" else "2" for c in secret)
    for turn, text in enumerate([wrong, secret]):
        for token in env.unwrapped.tokenizer.encode(text) + [0]:
            before = obs
            obs, reward, terminated, truncated, info = env.step(token)
            n = int(obs["seq_len"][0])
            # every step extends the previous observation: prefix unchanged, the action next
            assert obs["input_ids"][: before["seq_len"][0]].tolist() == before["input_ids"][: before["seq_len"][0]].tolist()
            assert obs["input_ids"][before["seq_len"][0]] == token and obs["policy_mask"][before["seq_len"][0]] == 1
            history = obs["input_ids"][:n].tolist()
        if turn == 0:  # the feedback was appended, written by the environment
            assert not (terminated or truncated) and reward == 0.0
            feedback = env.unwrapped.core.text(0).split("\n")[-2]
            assert set(feedback) <= set("+-=") and len(feedback) == 3
            assert obs["policy_mask"][n - len(feedback) - 2 : n].sum() == 0
    assert terminated and reward == 1.0 and info["ended_by"] == "done" and info["turns"] == 2
    assert info["turn_rewards"] == [0.0, 1.0] and info["episode_length"] == 8
    assert history[: len(prompt)] == prompt
    roles = [span["role"] for span in info["conversation"]]
    assert roles == ["prompt", "assistant", "user", "assistant"]
    for span in info["conversation"][1::2]:
        assert (obs["policy_mask"][span["start"] : span["end"]] == 1).all()


def test_the_environment_never_re_encodes_what_the_policy_sampled():
    """A seam that re-tokenization changes: the policy wrote "he" + "llo", two tokens; the text
    "hello" is one token. Decoding the conversation and re-applying the chat template gives other
    ids than the ones sampled; the episode keeps the sampled ones."""
    tok = textgym.as_tokenizer("smollm2-135m-instruct")
    sampled = tok.encode("he") + tok.encode("llo")
    assert sampled != tok.encode("hello"), "the seam: two tokens vs one for the same text"
    env = TextGenEnv(task="retry", task_kwargs={"attempts": 2}, tokenizer=tok, max_new_tokens=48)
    obs, _ = env.reset(seed=0)
    p = int(obs["seq_len"][0])
    for token in sampled + [tok.eos_token_id]:
        obs, reward, terminated, truncated, info = env.step(token)
    assert not (terminated or truncated), "a wrong answer gets 'Wrong, try again.'"
    ids = obs["input_ids"][: obs["seq_len"][0]].tolist()
    assert ids[p : p + 3] == sampled + [tok.eos_token_id]
    messages = env.unwrapped.core.messages[0]
    assert messages[-2]["content"] == "hello" and messages[-1] == {"role": "user", "content": "Wrong, try again."}
    retokenized = tok.hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    retokenized = list(retokenized["input_ids"] if hasattr(retokenized, "keys") else retokenized)
    assert retokenized != ids, "re-applying the template re-tokenizes the seam"
    assert tok.decode(retokenized) == tok.decode(ids), "...for the very same text"


def test_chat_template_bridge_closes_the_turn_and_opens_the_next():
    env = TextGenEnv(task="calculator", tokenizer="smollm2-135m-instruct", max_new_tokens=80)
    env.reset(seed=0)
    a, b = env.unwrapped.example.metadata["a"], env.unwrapped.example.metadata["b"]
    play(env, [f"<calc>{a}*{b}</calc>"], eos=False)  # the stop string ends the turn, no end token
    text = env.unwrapped.core.text(0)
    assert text.endswith(f"<calc>{a}*{b}</calc><|im_end|>\n<|im_start|>tool\n{a * b}<|im_end|>\n<|im_start|>assistant\n")
    _, reward, terminated, _, info = play(env, [f"So it is {a * b}."])
    assert terminated and reward == 1.0 and info["reward_components"] == {"answer": 1.0, "calls": 1.0}
    env.unwrapped.core.check_conversation(0)  # the whole episode is what the template gives


class _DropsEarlierReasoning:
    """A chat template that is not prefix-preserving: earlier assistant turns lose their <think> part."""

    TEMPLATE = (
        "{% for m in messages %}{% set c = m['content'] %}"
        "{% if m['role'] == 'assistant' and not loop.last %}{% set c = c.split('</think>')[-1] %}{% endif %}"
        "{{ '<|im_start|>' + m['role'] + '\\n' + c + '<|im_end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )


def test_a_template_that_is_not_prefix_preserving_is_refused_with_the_differing_tokens():
    tok = copy.deepcopy(textgym.as_tokenizer("smollm2-135m-instruct"))
    tok.hf.chat_template = _DropsEarlierReasoning.TEMPLATE
    with pytest.raises(ValueError, match=r"not prefix-preserving.*from token \d+ the episode has \[.*\] .*chat_template=False"):
        TextGenEnv(task="retry", tokenizer=tok, max_new_tokens=48)
    env = TextGenEnv(task="retry", tokenizer=tok, max_new_tokens=48, check_chat_template="off")  # at your own risk
    env.reset(seed=0)
    plain = TextGenEnv(task="retry", tokenizer=tok, max_new_tokens=48, chat_template=False)
    plain.reset(seed=0)


def test_every_episode_is_checked_with_check_chat_template_always():
    env = TextGenEnv(task="retry", task_kwargs={"attempts": 2}, tokenizer="smollm2-135m-instruct", max_new_tokens=48,
                     check_chat_template="always")  # fmt: skip
    env.reset(seed=1)
    _, _, terminated, truncated, info = play(env, ["no", "still no"])
    assert truncated and info["ended_by"] == "turns" and info["turns"] == 2


def test_plain_text_mode_appends_replies_with_a_separator():
    env = TextGenEnv(task="retry", tokenizer="char", max_new_tokens=24)
    env.reset(seed=0)
    play(env, ["x"])
    assert env.unwrapped.core.text(0).endswith("x<eos>\nWrong, try again.\n")


# -- budgets, turn limits and bad replies ----------------------------------------------------------


class Scripted(MultiTurnTask):
    """A test task whose replies come from a list; it never ends by itself."""

    name = "scripted"
    max_turns = 3

    def __init__(self, replies, **kw):
        super().__init__(**kw)
        self.replies = replies

    def all_problems(self):
        return [Example(f"Say something #{i}.", "x") for i in range(20)]

    def reply(self, text, example, state):
        state.setdefault("n", 0)
        state["n"] += 1
        return self.replies[min(state["n"], len(self.replies)) - 1]


def test_a_task_that_never_ends_stops_at_the_turn_limit():
    task = Scripted([Reply("go on", reward=0.25)])
    env = TextGenEnv(task=task, tokenizer="char", max_new_tokens=60)
    env.reset(seed=0)
    _, reward, terminated, truncated, info = play(env, ["a", "b", "c"])
    assert truncated and not terminated and info["ended_by"] == "turns" and info["turns"] == 3
    assert info["turn_rewards"] == [0.25, 0.25, 0.25] and reward == 0.25
    env = TextGenEnv(task=task, tokenizer="char", max_new_tokens=60, max_turns=1, budget_is_terminal=True)
    env.reset(seed=0)
    _, _, terminated, truncated, info = play(env, ["a"])
    assert terminated and not truncated and info["ended_by"] == "turns"


def test_a_reply_longer_than_the_remaining_budget_ends_the_episode():
    task = Scripted([Reply("x" * 30)])
    env = TextGenEnv(task=task, tokenizer="char", max_new_tokens=20)
    env.reset(seed=0)
    _, _, terminated, truncated, info = play(env, ["a"])
    assert truncated and info["ended_by"] == "budget" and info["turns"] == 1
    assert "x" not in env.unwrapped.core.text(0).split("#0.")[-1], "a reply that does not fit is not appended"


def test_the_turn_token_budget_ends_a_turn_not_the_episode():
    env = TextGenEnv(task=Scripted([Reply("ok")]), tokenizer="char", max_new_tokens=40, max_turn_tokens=3)
    env.reset(seed=0)
    for token in env.unwrapped.tokenizer.encode("abc"):
        obs, reward, terminated, truncated, info = env.step(token)
    assert not (terminated or truncated) and env.unwrapped.core.text(0).endswith("abc\nok\n")


@pytest.mark.parametrize(
    "reply, error",
    [
        ("not a Reply", "must return a textgym Reply"),
        (Reply(text=42), "reply text of type int"),
        (Reply("hi", reward=float("nan")), "reward of nan"),
        (Reply("hi", role="system"), "a message is"),
    ],
)
def test_bad_replies_are_clear_errors(reply, error):
    # A bad reply ends its episode (reward 0, the reason in `reply_error`), like a bad verifier value.
    env = TextGenEnv(task=Scripted([reply]), tokenizer="char", max_new_tokens=20)
    env.reset(seed=0)
    _, reward, terminated, truncated, info = play(env, ["a"])
    assert terminated and not truncated and reward == 0.0 and info["ended_by"] == "reply_error"
    assert re.search(error, info["reply_error"]) and "task 'scripted': reply()" in info["reply_error"]


def test_multi_turn_settings_are_checked():
    with pytest.raises(ValueError, match="multi-turn.*reward=None"):
        TextGenEnv(task="guess", tokenizer="char", reward="exact_match")
    with pytest.raises(ValueError, match="no chat template"):
        TextGenEnv(task="guess", tokenizer="char", chat_template=True)
    with pytest.raises(ValueError, match="max_turns must be a positive integer"):
        TextGenEnv(task="guess", tokenizer="char", max_turns=0)
    with pytest.raises(ValueError, match="retry wraps a single-turn task"):
        textgym.make_task("retry", task="guess")


# -- the built-in tasks -----------------------------------------------------------------------------


@pytest.mark.parametrize("task", MULTI_TURN)
def test_checkers_pass_on_every_multi_turn_task(task):
    from gymnasium.utils.env_checker import check_env as gym_check
    from stable_baselines3.common.env_checker import check_env as sb3_check

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gym_check(TextGenEnv(task=task, tokenizer="char", max_new_tokens=24), skip_render_check=True)
        sb3_check(TextGenEnv(task=task, tokenizer="char", max_new_tokens=24), warn=True)


def test_calculator_tool_is_exact_and_refuses_code():
    assert calculate("123*45") == "5535" and calculate("(2+3)**2 - 7/2") == "21.5" and calculate("-7 // 2") == "-4"
    for bad in ("__import__('os')", "9**9**9", "1/0", "x+1", "2**0.5", "1" * 200):
        with pytest.raises(ValueError):
            calculate(bad)
    task = textgym.make_task("calculator")
    ex = task.example("train", 0)
    state = task.start(ex)
    assert task.reply("<calc>10**40 * 10**40</calc>", ex, state).text == "error: number too large"
    assert task.reply("<calc>2**200</calc>", ex, state).text == "error: exponents must be whole numbers up to 64"
    assert task.reply(f"It is {ex.answer}", ex, state).reward == 1.0
    bare = textgym.make_task("calculator", tool=False)  # the baseline: same problems, no calculator
    assert [bare.example("validation", i) for i in range(20)] == [task.example("validation", i) for i in range(20)]
    assert bare.max_turns == 1 and bare.stop_strings == () and "calculator" not in bare.format_prompt(ex)
    assert bare.reply(f"<calc>{ex.metadata['a']}*{ex.metadata['b']}</calc>", ex, bare.start(ex)).done
    assert task.system_prompt and "<calc>12*34</calc>" in task.system_prompt and bare.system_prompt is None


def test_calculator_call_credit_pays_the_first_right_call_once():
    task = textgym.make_task("calculator", call_credit=0.1)
    ex = task.example("train", 0)
    state = task.start(ex)
    assert task.reply("<calc>x*2</calc>", ex, state).reward == 0.0  # an error earns nothing
    assert task.reply("<calc>95.5</calc>", ex, state).reward == 0.0  # nor a call that is not a * b
    call = f"<calc>{ex.metadata['a']}*{ex.metadata['b']}</calc>"
    assert task.reply(call, ex, state).reward == 0.1
    assert task.reply(call, ex, state).reward == 0.0  # once per episode: calls cannot be farmed
    final = task.reply(f"It is {ex.answer}.", ex, state)
    assert final.reward == 1.0 and final.components == {"answer": 1.0, "calls": 4.0}
    assert textgym.make_task("calculator").reply(call, ex, {"calls": 0, "credited": 0}).reward == 0.0  # default: none
    with pytest.raises(ValueError, match="call_credit"):
        textgym.make_task("calculator", call_credit=1.0)


def test_guess_feedback_and_retry_decay():
    task = textgym.make_task("guess", length=2, digits="123")
    ex = Example("", "31", {"secret": "31"})
    state = task.start(ex)
    assert task.reply("22", ex, state).text == "+-" and task.reply("7", ex, state).text == "invalid"
    assert task.reply("31", ex, state).reward == 1.0 and state["guesses"] == 3
    words = textgym.make_task("guess", length=2, digits="123", feedback="words")
    assert words.reply("21", ex, words.start(ex)).text == "higher right"
    retry = textgym.make_task("retry", task="addition", attempts=3, decay=0.5)
    ex = retry.example("train", 0)
    state = retry.start(ex)
    assert retry.reply("no idea", ex, state).text == "Wrong, try again."
    assert retry.reply(f"It is {ex.answer}", ex, state).reward == 0.5


def test_held_out_codes_never_appear_in_training():
    task = textgym.make_task("guess")
    train = {task.example("train", i).answer for i in range(task.num_examples("train"))}
    held_out = {task.example("validation", i).answer for i in range(task.num_examples("validation"))}
    assert held_out and not train & held_out and len(train) + 2 * len(held_out) >= 60


# -- vector env: slots in different turns, replies of different lengths ----------------------------


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
def test_multi_turn_vector_env_matches_sync_vector_env(mode):
    kw = dict(task="guess", tokenizer="char", max_new_tokens=30, task_kwargs={"length": 2, "digits": "123"})
    n = 4
    ours = TextGenVectorEnv(num_envs=n, autoreset_mode=mode, **kw)
    sync = SyncVectorEnv([lambda: TextGenEnv(**kw) for _ in range(n)], autoreset_mode=mode)
    assert_same(ours.reset(seed=5), sync.reset(seed=5), "reset")
    rng = np.random.default_rng(0)
    digits = ours.tokenizer.encode("123")
    turns_seen = set()
    for t in range(300):
        actions = np.where(rng.random(n) < 0.3, 0, rng.choice(digits, size=n))
        a, b = ours.step(actions), sync.step(actions)
        for name, x, y in zip(["obs", "reward", "terminated", "truncated", "info"], a, b):
            assert_same(x, y, f"step {t} {name}")
        turns_seen.update(ours.core.turns.tolist())
    assert {0, 1, 2} <= turns_seen, "slots were in different turns at once"


def test_group_resets_in_a_multi_turn_vector_env():
    envs = TextGenVectorEnv(num_envs=6, group_size=3, task="guess", tokenizer="char", max_new_tokens=30)
    _, info = envs.reset(seed=0)
    assert len(set(info["index"][:3])) == 1 and len(set(info["index"][3:])) == 1
    assert [e.answer for e in envs.examples[:3]] == [envs.examples[0].answer] * 3


# -- bring your own message-level environment --------------------------------------------------------


class TwentyQuestions:
    """A message-level environment as TextArena/GEM-style libraries write them: strings in and out."""

    def reset(self, seed=None):
        self.secret = ["cat", "dog", "owl"][(seed or 0) % 3]
        self.asked = 0
        return [{"role": "system", "content": "Guess the animal."}, {"role": "user", "content": "I am thinking of an animal."}]

    def step(self, text):
        self.asked += 1
        if self.secret in text.lower():
            return [], 1.0, True
        return [{"role": "user", "content": f"No. Hint: it has {len(self.secret)} letters."}], -0.1, False


def test_a_message_level_environment_becomes_a_token_level_env():
    task = MessageEnvTask("twenty_questions", TwentyQuestions, size=30, max_turns=4)
    env = TextGenEnv(task=task, tokenizer="smollm2-135m-instruct", max_new_tokens=60)
    obs, _ = env.reset(seed=0)
    text = env.unwrapped.core.text(0)
    assert "<|im_start|>system\nGuess the animal.<|im_end|>" in text and text.endswith("<|im_start|>assistant\n")
    secret = env.unwrapped.core.states[0]["env"].secret
    _, reward, terminated, truncated, _ = play(env, ["Is it a horse?"])
    assert reward == -0.1 and not (terminated or truncated)
    assert env.unwrapped.core.text(0).endswith("letters.<|im_end|>\n<|im_start|>assistant\n")
    _, reward, terminated, _, info = play(env, [f"A {secret}!"])
    assert terminated and reward == 1.0 and info["turn_rewards"] == [-0.1, 1.0]
    vec = TextGenVectorEnv(num_envs=4, group_size=2, task=task, tokenizer="char", max_new_tokens=80)
    vec.reset(seed=0)
    secrets = [vec.core.states[i]["env"].secret for i in range(4)]
    assert secrets[0] == secrets[1] and secrets[2] == secrets[3]


def test_message_env_errors_are_clear():
    class Broken(TwentyQuestions):
        def step(self, text):
            return "just a string"

    env = TextGenEnv(task=MessageEnvTask("broken", Broken, size=3), tokenizer="char", max_new_tokens=30)
    env.reset(seed=0)
    _, reward, terminated, _, info = play(env, ["x"])
    assert terminated and reward == 0.0 and re.search(r"step\(\) must return \(messages, reward, done\)", info["reply_error"])
    with pytest.raises(TypeError, match="make_env must be a callable"):
        MessageEnvTask("nope", 3)
