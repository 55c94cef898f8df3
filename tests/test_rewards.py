"""Reward functions, extraction, the registry, `score`'s failure handling, adapters."""

import math
import os
import sys
import threading
import types
import time

import numpy as np
import pytest

from textgym.rewards import (
    RewardResult, combine, contains, exact_match, from_trl, get_reward, list_rewards, math_equal,
    math_equiv, numeric_match, partial_credit, r1_format, r1_zero, regex,
    register_reward, score,
)
from textgym.rewards import boxed_math, gsm8k
from textgym.rewards.extract import answer_tag, boxed, first_line, gsm8k_answer, last_number, parse_number
from textgym.tasks import Example

EX7 = Example("What is 3 + 4?", "7", {"a": 3, "b": 4})


# -- extraction -------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("<think>hm</think> <answer> 42 </answer>", "42"),
    ("<answer>1</answer> then <answer>2</answer>", "2"),
    ("<answer>multi\nline</answer>", "multi\nline"),
    ("<answer>unclosed", None),
    ("no tags", None),
])
def test_answer_tag(text, expected):
    assert answer_tag(text) == expected


@pytest.mark.parametrize("text, expected", [
    (r"so \boxed{5}", "5"),
    (r"\boxed{1} and \boxed{\frac{1}{2}}", r"\frac{1}{2}"),
    (r"\boxed{\frac{\sqrt{3}}{2}}.", r"\frac{\sqrt{3}}{2}"),  # nested braces
    (r"$\boxed{\{1, 2\}}$", r"\{1, 2\}"),  # escaped braces are braces too, and balanced
    (r"\fbox{7}", "7"),
    (r"so $\boxed 5$.", "5"),  # MATH sometimes writes it without braces
    (r"\boxed{unclosed", None),
    (r"\boxed", None),
    ("nothing", None),
])
def test_boxed(text, expected):
    assert boxed(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("Natalia sold 48/2 = 24 clips in May.\n#### 72", "72"),
    ("#### 1,018", "1018"),
    ("#### -3", "-3"),
    ("#### $5.50.", "5.50"),
    ("a #### 1 then #### 2\nextra", "2"),  # the last marker counts, its line only
    ("#### seven", "seven"),
    ("####", None),
    ("The answer is 72", None),
])
def test_gsm8k_answer(text, expected):
    assert gsm8k_answer(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("3 + 4 = 7.", "7"),
    ("It costs 1,000 dollars", "1,000"),
    ("x = -7", "-7"),
    ("12-7", "7"),  # a binary minus is not a sign
    (" 7.0 ", "7.0"),
    ("no digits here", None),
    ("", None),
])
def test_last_number(text, expected):
    assert last_number(text) == expected


@pytest.mark.parametrize("text, expected", [("\n\n  abc  \ndef", "abc"), ("   \n ", None), ("x", "x")])
def test_first_line(text, expected):
    assert first_line(text) == expected


@pytest.mark.parametrize("text, value", [("1,000", 1000), (" 7.0", 7), ("7.", 7), ("+3", 3), ("-2.50", -2.5)])
def test_parse_number_forgives_formatting(text, value):
    assert parse_number(text) == value


@pytest.mark.parametrize("text", ["abc", "", "1e5", "nan", "inf", "1" * 500, None, "1,2", "12,34", "1,0000"])
def test_parse_number_refuses(text):
    assert parse_number(text) is None


# -- built-in rewards -------------------------------------------------------------------------------

def test_exact_match():
    assert exact_match(" 7 \n", EX7) == 1.0
    assert exact_match("7.", EX7) == 0.0
    assert exact_match("<think>x</think> <answer>7</answer>", EX7) == 1.0


@pytest.mark.parametrize("completion, expected", [
    ("The answer is 7", 1.0), ("7.", 1.0), (" 7.0", 1.0), ("3 + 4 = 7.", 1.0), ("8", 0.0),
    ("7 or maybe 8", 0.0), (r"\boxed{7} is it, not 9", 1.0), ("<answer>7</answer> 9", 1.0), ("", 0.0),
])
def test_numeric_match(completion, expected):
    assert numeric_match(completion, EX7) == expected


def test_numeric_match_thousands():
    assert numeric_match("that is 1,000", Example("q", "1000")) == 1.0


def test_contains_and_regex():
    assert contains("... 7 ...", EX7) == 1.0 and contains("six", EX7) == 0.0
    bare = regex(r"^\s*{answer}\s*$")
    assert bare(" 7\n", EX7) == 1.0 and bare("77", EX7) == 0.0
    assert regex("hello")("say hello", EX7) == 1.0
    assert regex("{answer}")("1+2", Example("q", "1+2")) == 1.0  # the answer is escaped


@pytest.mark.parametrize("completion, fmt", [
    (" reasoning </think> <answer> 7 </answer>", 1.0),  # the prompt ended inside "<think>"
    ("<think>r</think>\n<answer>7</answer>\n", 1.0),
    ("<think>r</think> <answer>7", 0.0),  # never closed
    ("<answer>7</answer>", 0.0),  # no thinking
    ("r </think> <answer>7</answer> trailing text", 0.0),
    ("just 7", 0.0),
])
def test_r1_format(completion, fmt):
    assert r1_format(completion, EX7) == fmt


def test_r1_zero_components():
    assert r1_zero(" 3+4 </think> <answer>7</answer>", EX7) == (1.0, {"format": 1.0, "answer": 1.0})
    assert r1_zero(" 3+4 </think> <answer>8</answer>", EX7) == (0.0, {"format": 1.0, "answer": 0.0})
    # a right answer in the wrong format is logged but not paid
    assert r1_zero("<answer>7</answer>", EX7) == (0.0, {"format": 0.0, "answer": 1.0})


@pytest.mark.parametrize("pred, ref, equal", [
    ("0.5", r"\frac{1}{2}", True), ("1/2", "0.5", True), (r"\frac{2}{4}", "1/2", True),
    ("2x+1", "1 + 2*x", True), (r"2\sqrt{2}", "sqrt(8)", True), ("x = 5", "5", True),
    ("1,000", "1000", True), (r"\pi", "pi", True), ("3", "4", False), ("x+1", "x+2", False),
    ("hello", "world", False), (None, "1", False),
])
def test_math_equal(pred, ref, equal):
    assert math_equal(pred, ref) is equal


@pytest.mark.parametrize("evil", [
    "9**9**9**9", "2**99999999", "(" * 5000 + "1" + ")" * 5000, "1" * 100000,
    "__import__('os').system('echo hi')", "().__class__.__bases__[0]", "x" * 300 + "+1",
])
def test_math_equal_is_safe_and_bounded(evil):
    """Hostile answers are not equal, run no code, and return within the module's guarantee (a hang
    would not); the bound is the documented one, not a speed target (typical calls take ms)."""
    from textgym.rewards.math_equiv import HARD_LIMIT_SECONDS

    start = time.perf_counter()
    assert math_equal(evil, "1") is False
    assert time.perf_counter() - start < HARD_LIMIT_SECONDS


def test_math_equiv_reward():
    half = Example("q", r"\frac{1}{2}")
    assert math_equiv(r"so \boxed{0.5}", half) == 1.0
    assert math_equiv(r"t </think> <answer>\boxed{1/2}</answer>", half) == 1.0
    assert math_equiv("the answer is 7", EX7) == 1.0
    assert math_equiv("no answer", EX7) == 0.0


GSM8K_SOLUTION = "She has 1,000 - 982 = 18 apples left.\n#### 18"


@pytest.mark.parametrize("completion, reference, expected", [
    ("18 - 0 = 18.\n#### 18", GSM8K_SOLUTION, 1.0),
    ("#### 18.0", "18", 1.0),
    ("So the answer is 18 apples.", GSM8K_SOLUTION, 1.0),  # no marker: the last number
    ("#### 18 wait, no: 19", GSM8K_SOLUTION, 1.0),  # the marker wins over later numbers
    ("<think>t</think> <answer>1,018</answer>", "1018", 1.0),
    ("#### 17", GSM8K_SOLUTION, 0.0),
    ("I don't know", GSM8K_SOLUTION, 0.0),
    ("#### 1,2", "12", 0.0),
])
def test_gsm8k_reward(completion, reference, expected):
    assert gsm8k(completion, Example("q", reference)) == expected
    assert "gsm8k" in list_rewards()


MATH_SOLUTION = r"Completing the square, $x = \frac{-1 \pm \sqrt{5}}{2}$, so the sum is $\boxed{\frac{1}{2}}$."


@pytest.mark.parametrize("completion, reference, expected", [
    (r"The sum is \boxed{0.5}.", MATH_SOLUTION, 1.0),
    (r"\boxed{\dfrac{2}{4}}", r"\frac{1}{2}", 1.0),
    (r"t </think> <answer>\boxed{\frac{1}{2}}</answer>", MATH_SOLUTION, 1.0),
    (r"\boxed{\frac{\sqrt{2}}{2}}", r"\frac{1}{\sqrt{2}}", 1.0),
    ("The sum is 1/2.", MATH_SOLUTION, 0.0),  # MATH grading needs the box
    (r"\boxed{\frac{1}{3}}", MATH_SOLUTION, 0.0),
    (r"\boxed{\frac{1}{2}", MATH_SOLUTION, 0.0),  # unclosed
])
def test_boxed_math_reward(completion, reference, expected):
    assert boxed_math(completion, Example("q", reference)) == expected
    assert "boxed_math" in list_rewards()


def test_partial_credit():
    ex = Example("Copy: abcd", "abcd")
    assert partial_credit("abcd", ex) == 1.0
    assert partial_credit("abcx", ex) == 0.75
    assert partial_credit("", ex) == 0.0
    assert partial_credit("z" * 5000, ex) == 0.0  # no quadratic work on runaway completions


# -- registry, combine, score -----------------------------------------------------------------------

def test_registry():
    assert {"exact_match", "numeric_match", "contains", "r1_format", "r1_zero", "math_equiv",
            "partial_credit"} <= set(list_rewards())
    assert get_reward("numeric_match") is numeric_match
    fn = lambda c, e: 1.0  # noqa: E731
    assert get_reward(fn) is fn
    with pytest.raises(ValueError, match="unknown reward 'nope'.*exact_match"):
        get_reward("nope")


def test_register_reward_idempotent_and_clash():
    @register_reward("test_shout")
    def shout(completion, example):
        return float(completion.isupper())

    assert register_reward("test_shout", shout) is shout  # same function: fine
    with pytest.raises(ValueError, match="already registered"):
        register_reward("test_shout", lambda c, e: 0.0)
    other = register_reward("test_shout", lambda c, e: 0.5, overwrite=True)
    assert get_reward("test_shout") is other


def test_combine_logs_every_part():
    fn = combine({"answer": "numeric_match", "format": "r1_format", "zero": r1_zero},
                 weights={"answer": 1.0, "format": 0.1, "zero": 0.0})
    total, parts = fn(" t </think> <answer>7</answer>", EX7)
    assert total == pytest.approx(1.1)
    assert parts == {"answer": 1.0, "format": 1.0, "zero": 1.0, "zero/format": 1.0, "zero/answer": 1.0}
    with pytest.raises(ValueError, match="unknown parts"):
        combine({"a": "exact_match"}, weights={"b": 1.0})


def test_score_ok():
    assert score("numeric_match", "7", EX7) == RewardResult(1.0, {}, None)
    assert score(r1_zero, "t </think> <answer>7</answer>", EX7, timeout=5).components == {"format": 1.0, "answer": 1.0}
    assert score(lambda c, e: np.float32(0.5), "", EX7).reward == 0.5


def boom(completion, example):
    return 1 / 0


@pytest.mark.parametrize("fn, message", [
    (boom, "reward 'boom' raised ZeroDivisionError"),
    (lambda c, e: float("nan"), "nan"),
    (lambda c, e: math.inf, "inf"),
    (lambda c, e: None, "NoneType"),
    (lambda c, e: "1.0", "str"),
    (lambda c, e: True, "bool"),
    (lambda c, e: (1.0, {"x": float("nan")}), "component 'x'"),
    (lambda c, e: (1.0, 2.0), "tuple"),
    ("no_such_reward", "unknown reward"),
])
def test_score_turns_failures_into_zero(fn, message):
    result = score(fn, "7", EX7)
    assert result.reward == 0.0 and result.components == {}
    assert message in result.error


def test_score_timeout_gives_up_waiting():
    release, finished = threading.Event(), []

    def slow(completion, example):
        release.wait(60)
        finished.append(True)
        return 1.0

    result = score(slow, "7", EX7, timeout=0.1)
    assert not finished, "score returned while the verifier was still running (no clock involved)"
    release.set()
    assert result.reward == 0.0 and "timed out after 0.1 s" in result.error
    assert score(boom, "7", EX7, timeout=1).error.startswith("reward 'boom' raised")
    assert score(lambda c, e: 1.0, "7", EX7, timeout=1).reward == 1.0  # a fresh worker after the hang


def test_score_with_timeout_reuses_one_worker_thread():
    score(lambda c, e: 1.0, "7", EX7, timeout=5)
    threads = threading.active_count()
    results = [score(lambda c, e: float(c == "7"), c, EX7, timeout=5).reward for c in ["7", "8"] * 50]
    assert results == [1.0, 0.0] * 50
    assert threading.active_count() == threads


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_score_with_timeout_works_in_a_forked_child():
    score(lambda c, e: 1.0, "7", EX7, timeout=5)  # the parent has a worker thread; the child does not
    pid = os.fork()
    if pid == 0:
        ok = score(lambda c, e: 1.0, "7", EX7, timeout=5).reward == 1.0
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0


# -- adapters ---------------------------------------------------------------------------------------

def test_from_trl():
    seen = {}

    def trl_style(prompts, completions, answer, a, **kwargs):
        seen.update(prompts=prompts, a=a)
        return [1.0 if c.strip() == ans else 0.0 for c, ans in zip(completions, answer)]

    fn = from_trl(trl_style)
    assert fn("7", EX7) == (1.0, {"none": 0.0})
    assert seen == {"prompts": ["What is 3 + 4?"], "a": [3]}
    assert from_trl(lambda prompts, completions, **kw: [None])("7", EX7) == (0.0, {"none": 1.0})
    assert score(from_trl(lambda prompts, completions, **kw: [None, None]), "7", EX7).error


# -- process isolation ------------------------------------------------------------------------------
# Module-level, so they pickle into the worker process.

def spin_forever(completion, example):
    while True:
        pass


def die_hard(completion, example):
    os._exit(7)


def report_pid(completion, example):
    return float(os.getpid()), {"ok": float(completion == example.answer)}


def pid_or_spin(completion, example):
    while completion == "spin":
        pass
    return float(os.getpid())


def test_process_isolation_scores_like_inline():
    for completion in ("7", "8", "<answer>7</answer>"):
        for fn in ("exact_match", "numeric_match", r1_zero, boom):
            inline = score(fn, completion, EX7)
            isolated = score(fn, completion, EX7, timeout=5, isolation="process")
            assert (isolated.reward, isolated.components, isolated.error) == (inline.reward, inline.components, inline.error)
    result = score(report_pid, "7", EX7, isolation="process")
    assert result.reward != os.getpid() and result.components == {"ok": 1.0}  # it ran elsewhere


def test_process_isolation_kills_a_hung_verifier_and_recovers():
    worker_pid = int(score(pid_or_spin, "7", EX7, timeout=5, isolation="process").reward)
    start = time.perf_counter()
    result = score(pid_or_spin, "spin", EX7, timeout=0.3, isolation="process")
    assert time.perf_counter() - start < 20.0  # it spins forever: any bound shows it was given up on
    assert result.reward == 0.0 and "timed out after 0.3 s" in result.error
    with pytest.raises(ProcessLookupError):  # the spinning worker is gone, not burning a core
        os.kill(worker_pid, 0)
    assert score(pid_or_spin, "7", EX7, timeout=5, isolation="process").reward not in (0.0, worker_pid)


def test_process_isolation_survives_a_verifier_that_kills_its_process():
    result = score(die_hard, "7", EX7, timeout=5, isolation="process")
    assert result.reward == 0.0 and "exit code 7" in result.error
    assert score("exact_match", "7", EX7, timeout=5, isolation="process").reward == 1.0


def test_process_isolation_runs_closures_and_keeps_one_worker_per_reward():
    from textgym.rewards import core

    offset = 0.25
    closure = lambda c, e: float(c == e.answer) + offset  # noqa: E731  (forked workers need no pickling)
    assert score(closure, "7", EX7, timeout=5, isolation="process").reward == 1.25
    pids = {int(score(report_pid, "7", EX7, isolation="process").reward) for _ in range(5)}
    assert len(pids) == 1  # reused
    for k in range(core.MAX_REWARD_PROCESSES + 2):  # more reward functions than workers kept
        assert score(lambda c, e, k=k: float(k), "7", EX7, isolation="process").reward == k
    assert len(core._process_workers) <= core.MAX_REWARD_PROCESSES
    assert "unknown isolation" in score("exact_match", "7", EX7, isolation="nope").error


def test_process_isolation_explains_unpicklable_examples():
    ex = Example("q", "7", {"lock": threading.Lock()})
    result = score("exact_match", "7", ex, timeout=5, isolation="process")
    assert result.reward == 0.0 and "picklable" in result.error


def test_env_reward_isolation_argument():
    import textgym

    def run(**kw):
        env = textgym.TextGenEnv(task="copy", task_kwargs={"length": 2, "alphabet": "ab"}, max_new_tokens=3, **kw)
        env.reset(seed=0)
        answer = env.tokenizer.encode(env.example.answer) + [env.tokenizer.eos_token_id]
        return [env.step(a)[1:] for a in answer][-1]

    reward, terminated, _, info = run(reward_isolation="process")
    assert terminated and reward == 1.0 and "reward_error" not in info
    reward, _, _, info = run(reward=spin_forever, reward_isolation="process", reward_timeout=0.3)
    assert reward == 0.0 and "timed out" in info["reward_error"]
    assert run(reward=lambda c, e: 0.5, reward_isolation="process")[0] == 0.5
    with pytest.raises(ValueError, match="reward_isolation must be one of"):
        run(reward_isolation="subprocess")
    with pytest.raises(ValueError, match="reward_timeout must be a positive"):
        run(reward_timeout=0)


def nested_score(completion, example):
    # A verifier that itself calls score() with a timeout, inside its worker process.
    return score("exact_match", completion, example, timeout=5).reward


def test_process_isolated_reward_can_call_score_itself():
    assert score(nested_score, "7", EX7, timeout=5, isolation="process").reward == 1.0
