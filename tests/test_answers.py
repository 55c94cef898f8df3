"""What a policy answers: extraction that travels with its reward and task, the prior, the lift, the
answers' diversity, and the collapse warning.

- a reward registered with `extract=` is read that way by maj@k and the answer statistics; without
  one (a copy of a built-in, `combine`, `from_trl`) the whole stripped completion is the answer;
  every built-in reward's extraction reads what the reward scores;
- the prior scores the commonest reference answer with the verifier on every problem: numbers
  equal by value, references the verifier reads (GSM8K solutions), partial credit, r1_zero's format;
  undefined without references and for multi-turn tasks;
- entropy, distinct answers and the lift interval by hand; `textgym eval` and the evaluations in
  training report them (tables, CSV, metrics.jsonl);
- the collapse warning fires once, on validation or after consecutive one-answer updates, and not
  when answers vary or when the problems share their answer.
"""

import json
import math

import numpy as np
import pytest

import textgym
from agents.answers import constant_answer_prior, evaluation_answers, update_answers
from agents.callbacks import AnswerCollapse, read_metrics
from agents.evaluation import EvalConfig, evaluate_policy, extract_answer, format_table, summarize_samples
from agents.statistics import answer_entropy, bootstrap_intervals, distinct_answers
from textgym.example import Example
from textgym.rewards import (
    boxed_math, combine, contains, exact_match, from_trl, get_extractor, gsm8k, math_equiv, numeric_match,
    partial_credit, r1_zero, register_reward,
)
from textgym.rewards.core import stripped
from textgym.tasks import Task, make_task


# -- extraction travels with its reward and its task ----------------------------------------------


def test_a_reward_registered_with_its_extraction_is_read_that_way():
    addition = make_task("addition")
    register_reward("test_numeric_copy", lambda c, e: numeric_match(c, e))
    assert extract_answer(addition, "The sum is 7.", reward="test_numeric_copy") == "The sum is 7."  # none: stripped text
    register_reward("test_numeric_copy", lambda c, e: numeric_match(c, e), extract="numeric_match", overwrite=True)
    assert extract_answer(addition, "The sum is 7.", reward="test_numeric_copy") == "7"  # the example votes 7

    @register_reward("test_first_word", extract=lambda text: (text.split() or [None])[0])
    def first_word(completion, example):
        return float(completion.split()[:1] == [example.answer])

    assert get_extractor("test_first_word")("Paris, France") == "Paris,"
    assert get_extractor(first_word) is get_extractor("test_first_word")  # by name or by function
    task = make_task("addition", reward="test_first_word")  # a task's reward= reads it too
    assert task.answer_of("12 or so") == "12" and extract_answer(task, "12 or so") == "12"
    listed = Task.from_examples("caps", test=[("Capital of France?", "Paris")], reward="test_first_word")
    assert listed.answer_of("Paris is it") == "Paris"
    r1 = Task.from_examples("caps", test=[("q", "Paris")], reward="test_first_word", prompt_style="r1_zero")
    assert r1.answer_of("hmm </think> <answer>Paris it is</answer>") == "Paris" and r1.answer_of("Paris") is None

    register_reward("test_first_word", lambda c, e: 0.0, overwrite=True)  # another function: not its extraction
    assert get_extractor("test_first_word") is stripped
    assert get_extractor(combine({"a": "numeric_match", "f": "r1_format"})) is stripped  # documented fallback
    assert get_extractor(from_trl(lambda completions, **kw: [1.0] * len(completions))) is stripped
    with pytest.raises(ValueError, match="extract= of reward 'test_bad' must be a function .* got 'no_such'"):
        register_reward("test_bad", lambda c, e: 0.0, extract="no_such")
    with pytest.raises(ValueError, match="unknown reward 'no_such_reward'"):
        get_extractor("no_such_reward")


@pytest.mark.parametrize("completion", ["The sum is 7.", "<answer> 12 </answer>", "so \\boxed{3} done", "work\n#### 1,010",
                                        "hm </think> <answer>x y</answer>", "  abc  ", "Yes", ""])  # fmt: skip
def test_every_built_in_extraction_reads_what_its_reward_scores(completion):
    """The answer a built-in reward's extraction reads, taken as the reference, earns full marks: the
    extraction and the reward agree on where the answer is."""
    for reward in (exact_match, partial_credit, contains, numeric_match, gsm8k, boxed_math, r1_zero):
        answer = get_extractor(reward)(completion)
        if answer is None:
            continue
        value = reward(completion, Example("q", answer))
        score = value[1]["answer"] if isinstance(value, tuple) else value
        assert score == 1.0, (reward.__name__, completion, answer)


def test_math_equiv_extraction_reads_what_it_scores():
    for completion in ("x = \\boxed{\\frac{1}{2}}", "<answer>0.5</answer>"):
        answer = get_extractor(math_equiv)(completion)
        assert math_equiv(completion, Example("q", answer)) == 1.0


def test_a_user_reward_with_extract_is_what_maj_at_k_votes_on():
    policy = textgym_tiny()

    @register_reward("test_first_char", extract=lambda text: text.strip()[:1] or None)
    def first_char(completion, example):
        return float(completion.strip()[:1] == example.answer[:1])

    env = textgym.EnvConfig(max_new_tokens=4, reward="test_first_char")
    config = EvalConfig(problems=4, samples=4, k=(1, 4), greedy=False, progress_bar=False)
    result = evaluate_policy(policy, "copy", config, env, task_kwargs={"copy": {"length": 3, "alphabet": "abc"}})
    for r in result.samples:
        assert r["extracted"] == (r["completion"].strip()[:1] or None)
    for row in result.problems:
        own = [r["extracted"] for r in result.samples if r["problem"] == row["problem"]]
        counts = {a: own.count(a) for a in own if a}
        assert row["maj@4_answer"] is None or counts[row["maj@4_answer"]] == max(counts.values())
        assert row["distinct_answers"] == len(counts)


# -- the prior --------------------------------------------------------------------------------------


def core_of(task, reward=None):
    return textgym.TextGenVectorEnv(num_envs=1, task=task, tokenizer="char", max_new_tokens=4, split="test",
                                    reward=reward).core  # fmt: skip


def listed(answers, reward="exact_match", **kwargs):
    return Task.from_examples("t", test=[(f"question {i}", a) for i, a in enumerate(answers)], reward=reward, **kwargs)


def per_problem(task, score):
    """{problem index: score(its reference)} over the task's test split (indices follow a seeded shuffle)."""
    return {i: float(score(task.example("test", i).answer)) for i in range(task.num_examples("test"))}


def test_the_prior_is_the_score_of_the_commonest_reference_answer_on_every_problem():
    task = listed(["Yes", "Yes", "No", "Yes"])
    prior = constant_answer_prior(core_of(task), range(4))
    assert prior.answer == "Yes" and prior.completion == "Yes"
    assert prior.success == per_problem(task, lambda ref: ref == "Yes") == prior.reward and prior.errors == 0
    assert sum(prior.success.values()) == 3
    # r1_zero: the answer is written in the format, so the format check passes
    task = listed(["Yes", "No", "Yes"], prompt_style="r1_zero")
    r1 = constant_answer_prior(core_of(task), range(3))
    assert r1.completion == "</think> <answer>Yes</answer>" and r1.success == per_problem(task, lambda ref: ref == "Yes")


def test_numbers_are_one_answer_by_value_and_the_verifier_decides_what_it_solves():
    task = listed(["7", "7.0", "8", "7.00"], reward="numeric_match")
    prior = constant_answer_prior(core_of(task), range(4))
    assert prior.answer in ("7", "7.0", "7.00")
    assert prior.success == per_problem(task, lambda ref: ref != "8")  # 3 of 4 (counting strings: 1 of 4)
    # scored, not counted: 0.5 is the commonest (2 of 4) but the verifier also accepts it for \frac{1}{2}
    task = listed(["0.5", "\\boxed{\\frac{1}{2}}", "3", "0.50"], reward="math_equiv")
    prior = constant_answer_prior(core_of(task), range(4))
    assert prior.answer in ("0.5", "0.50") and prior.success == per_problem(task, lambda ref: ref != "3")
    # a reference the verifier reads: GSM8K solutions count by their final number
    task = listed(["a\n#### 5", "b\n#### 5", "c\n#### 6"], reward="gsm8k")
    prior = constant_answer_prior(core_of(task), range(3))
    assert prior.answer == "5" and prior.success == per_problem(task, lambda ref: ref.endswith("5"))


def test_a_partial_credit_verifier_pays_the_prior_its_reward_but_success_needs_full_marks():
    task = listed(["abc", "abc", "abd", "xyz"], reward="partial_credit")
    prior = constant_answer_prior(core_of(task), range(4))
    assert prior.answer == "abc"
    assert prior.success == per_problem(task, lambda ref: ref == "abc")
    assert prior.reward == pytest.approx(per_problem(task, lambda ref: {"abc": 1.0, "abd": 2 / 3, "xyz": 0.0}[ref]))
    assert sum(prior.reward.values()) / 4 == pytest.approx((2 + 2 / 3) / 4)


def test_the_prior_is_undefined_without_reference_answers_and_for_multi_turn_tasks():
    assert constant_answer_prior(core_of(listed(["", "  ", ""])), range(3)) is None
    guess = textgym.TextGenVectorEnv(num_envs=1, task="guess", tokenizer="char", max_new_tokens=8, split="test")
    assert constant_answer_prior(guess.core, range(2)) is None


# -- diversity and lift by hand ----------------------------------------------------------------------


def test_answer_entropy_and_distinct_answers_by_hand():
    assert distinct_answers(["7", "7.0", " 8", None]) == 2  # 7 and 8; no answer is not an answer
    assert answer_entropy(["7", "7.0", "8", None]) == pytest.approx(-(2 / 3) * math.log2(2 / 3) - (1 / 3) * math.log2(1 / 3))
    assert answer_entropy(["a", "b", "c", "d"]) == pytest.approx(2.0)
    assert answer_entropy(["Yes"] * 5) == 0.0 == answer_entropy([None, None]) == answer_entropy([])


def records_of(table):
    """Sample records of task "t" from {problem: [(answer, correct), ...]}."""
    return [{"task": "t", "mode": "sample", "problem": p, "sample": s, "extracted": a, "correct": bool(c),
             "reward": float(c), "tokens": 2, "ended_by": "eos", "reference": "Yes"}
            for p, samples in table.items() for s, (a, c) in enumerate(samples)]  # fmt: skip


def test_the_lift_is_pass_at_1_minus_the_prior_per_problem_with_a_bootstrap_interval():
    from agents.answers import Prior

    records = records_of({0: [("Yes", 1), ("Yes", 1)], 1: [("Yes", 0), ("No", 1)]})
    prior = Prior("Yes", "Yes", success={0: 1.0, 1: 0.0}, reward={0: 1.0, 1: 0.0})
    config = EvalConfig(samples=2, k=(1,), greedy=False, seed=0)
    (task,), problems = summarize_samples(records, config, ["t"], {"t": prior})
    assert [r["lift"] for r in problems] == [0.0, 0.5]  # (1 - 1), (1/2 - 0)
    assert [r["prior"] for r in problems] == [1.0, 0.0] and task["prior"] == 0.5 and task["prior_answer"] == "Yes"
    # two problems resampled: the mean lift is 0, 0.25 or 0.5 with chances 1/4, 1/2, 1/4: the 95% interval is [0, 0.5]
    assert task["lift"] == 0.25 and (task["lift_lo"], task["lift_hi"]) == (0.0, 0.5)
    assert (task["lift_lo"], task["lift_hi"]) == bootstrap_intervals({"lift": [0.0, 0.5]}, seed=0)["lift"]
    assert task["distinct_answers"] == 2 and task["distinct_answers_per_problem"] == 1.5
    assert task["answer_entropy"] == pytest.approx(-(3 / 4) * math.log2(3 / 4) - (1 / 4) * math.log2(1 / 4))
    assert task["answer_entropy_per_problem"] == 0.5  # 0 bits and 1 bit
    table = format_table([task], config)
    assert "prior (answer)" in table and "0.500 (Yes)" in table and "+0.250 [+0.00, +0.50]" in table
    assert "2 / 1.5" in table and "0.81 / 0.50" in table
    (untold,), _ = summarize_samples(records, config, ["t"])  # no prior: none reported
    assert untold["prior"] is None and untold["lift"] is None and "| —" in format_table([untold], config)


def test_a_constant_lift_has_a_zero_width_interval():
    from agents.answers import Prior

    records = records_of({p: [("Yes", 1), ("Yes", 1)] for p in range(5)})
    prior = Prior("Yes", "Yes", success=dict.fromkeys(range(5), 1.0), reward=dict.fromkeys(range(5), 1.0))
    (task,), _ = summarize_samples(records, EvalConfig(samples=2, k=(1,), greedy=False), ["t"], {"t": prior})
    assert (task["lift"], task["lift_lo"], task["lift_hi"]) == (0.0, 0.0, 0.0)
    assert task["distinct_answers"] == 1 and task["answer_entropy"] == 0.0


# -- in `textgym eval` and in training --------------------------------------------------------------


def textgym_tiny():
    from agents import LMPolicy

    return LMPolicy.from_pretrained("tiny", seed=0)


def test_eval_reports_the_prior_lift_and_diversity_in_its_tables_and_files(tmp_path):
    policy = textgym_tiny()
    config = EvalConfig(problems=6, samples=2, greedy=False, progress_bar=False)
    env = textgym.EnvConfig(max_new_tokens=3, reward="partial_credit")
    result = evaluate_policy(policy, "copy", config, env, task_kwargs={"copy": {"length": 2, "alphabet": "ab"}},
                             out=tmp_path)  # fmt: skip
    (row,) = result.tasks
    task = make_task("copy", length=2, alphabet="ab")
    references = [task.example("test", p).answer for p in range(row["problems"])]
    commonest = max(references, key=references.count)
    assert row["prior"] == pytest.approx(references.count(commonest) / len(references))
    assert row["lift"] == pytest.approx(row["pass@1"] - row["prior"])
    assert row["lift_lo"] <= row["lift"] <= row["lift_hi"]
    assert {"distinct_answers", "distinct_answers_per_problem", "answer_entropy", "answer_entropy_per_problem"} <= set(row)
    summary = json.loads((tmp_path / "summary.json").read_text())["tasks"][0]
    assert summary["prior"] == row["prior"] and summary["prior_answer"] == row["prior_answer"]
    header = (tmp_path / "tasks.csv").read_text().splitlines()[0].split(",")
    assert {"prior", "prior_answer", "lift", "lift_lo", "lift_hi", "answer_entropy"} <= set(header)
    assert "lift" in result.table() and "answer entropy all / problem" in result.table()


def test_validation_in_training_reports_prior_lift_and_answers_and_scores_the_prior_once(tmp_path, monkeypatch):
    from agents import answers as A
    from agents.policy import LMPolicy
    from agents.reinforce import REINFORCE

    calls = []
    original = A.constant_answer_prior
    monkeypatch.setattr(A, "constant_answer_prior", lambda *a: calls.append(1) or original(*a))
    task = dict(task="copy", task_kwargs={"length": 3, "alphabet": "abc"}, reward="partial_credit", max_new_tokens=4)
    policy = LMPolicy.from_pretrained("tiny", seed=0)
    envs = textgym.TextGenVectorEnv(num_envs=8, group_size=4, tokenizer=policy.tokenizer, **task)
    policy.restrict_actions(envs.action_masks()[0])
    val = textgym.TextGenVectorEnv(num_envs=4, split="validation", tokenizer=policy.tokenizer, **task)
    REINFORCE(policy, lr=3e-3, seed=0).learn(envs, iterations=2, eval_env=val, eval_every=1, eval_episodes=6,
                                             log_dir=tmp_path, progress_bar=False)  # fmt: skip
    rows = read_metrics(tmp_path)
    assert len(calls) == 1  # three evaluations of the same problems, one prior
    for r in rows:
        assert r["val_prior"] is not None and r["val_prior_answer"]
        assert r["val_lift_lo"] <= r["val_lift"] <= r["val_lift_hi"]
        assert r["val_distinct_answers"] >= 1 and r["val_answer_entropy"] >= 0.0 and "val_answer_entropy_per_problem" in r
        assert "collapse" not in r  # a random tiny policy gives many answers
    for r in rows[1:]:
        assert r["train_distinct_answers"] >= 1 and r["train_answer_entropy"] >= 0.0 and r["train_distinct_references"] >= 1


def test_update_and_evaluation_answers_of_hand_made_episodes():
    task = listed(["Yes", "No", "Yes"])
    env = textgym.TextGenVectorEnv(num_envs=1, task=task, tokenizer="char", max_new_tokens=4, split="test")
    yes = next(i for i in range(3) if task.example("test", i).answer == "Yes")
    no = next(i for i in range(3) if task.example("test", i).answer == "No")

    class Ep:  # what the statistics read of an episode
        def __init__(self, index, completion, correct):
            self.info = {"index": index, "completion": completion, "answer": task.example("test", index).answer}
            self.success = correct

    # groups of 2: (Yes, Yes) agree, (Yes, No) differ: entropy 0 and 1 bit
    episodes = [Ep(yes, "Yes", 1), Ep(yes, "Yes", 1), Ep(no, "Yes", 0), Ep(no, "No", 1)]
    assert update_answers(episodes, env, group_size=2) == {"answer_entropy": 0.5, "distinct_answers": 2,
                                                           "distinct_references": 2, "top_answer": "Yes"}  # fmt: skip
    out = evaluation_answers(episodes, env)
    assert out["prior"] == 0.5 and out["prior_answer"] == "Yes"  # problems 0 and 1: "Yes" solves one
    assert out["lift"] == pytest.approx(((1 - 1) + (0.5 - 0)) / 2)
    assert out["distinct_answers_per_problem"] == 1.5 and out["distinct_references"] == 2


# -- the collapse warning ------------------------------------------------------------------------------


class _Agent:
    iteration = 0


def feed(rows):
    watch = AnswerCollapse(updates=3)
    watch.on_training_start(_Agent(), dict(rows[0]))
    seen = []
    for row in rows[1:]:
        row = dict(row)
        watch.on_iteration_end(row)
        seen.append(row)
    return watch, seen


def train_row(i, answers, references):
    return {"iteration": i, "train_distinct_answers": answers, "train_distinct_references": references,
            "train_top_answer": "Yes"}  # fmt: skip


def test_collapse_fires_once_after_consecutive_one_answer_updates(capsys):
    rows = [{"iteration": 0}, train_row(1, 1, 2), train_row(2, 1, 1), train_row(3, 1, 3), train_row(4, 1, 2),
            train_row(5, 1, 2), train_row(6, 1, 2)]  # fmt: skip
    watch, seen = feed(rows)
    # update 2's prompts share one answer: it neither counts nor breaks the run; update 4 is the third
    assert [("collapse" in r) for r in seen] == [False, False, False, True, False, False]
    assert "collapse at iteration 4" in seen[3]["collapse"] and "'Yes'" in seen[3]["collapse"]
    assert capsys.readouterr().err.count("warning: collapse") == 1


def test_varied_answers_break_the_run_and_one_right_answer_is_not_a_collapse(capsys):
    rows = [{"iteration": 0}, train_row(1, 1, 2), train_row(2, 1, 2), train_row(3, 2, 2), train_row(4, 1, 2),
            train_row(5, 1, 2), train_row(6, 0, 2), train_row(7, 1, 1), train_row(8, 1, 1), train_row(9, 1, 1)]  # fmt: skip
    _, seen = feed(rows)
    assert not any("collapse" in r for r in seen)  # runs of 2, broken by 2 answers and by no answer; then one prompt
    assert "collapse" not in capsys.readouterr().err


def test_validation_that_answers_differing_problems_alike_is_a_collapse_at_once(capsys):
    start = {"iteration": 0, "val_distinct_answers": 1, "val_distinct_references": 3, "val_top_answer": "No",
             "val_prior": 0.5, "val_lift": -0.5}  # fmt: skip
    watch = AnswerCollapse()
    watch.on_training_start(_Agent(), start)
    assert "every validation sample answers 'No'" in start["collapse"] and "lift -0.500" in start["collapse"]
    again = {k: v for k, v in start.items() if k != "collapse"} | {"iteration": 5}
    watch.on_iteration_end(again)
    assert "collapse" not in again  # once
    assert capsys.readouterr().err.count("warning: collapse") == 1
    fine = {"iteration": 0, "val_distinct_answers": 1, "val_distinct_references": 1}  # one problem, or one answer for all
    AnswerCollapse().on_training_start(_Agent(), fine)
    assert "collapse" not in fine


def test_a_policy_that_gives_one_answer_is_reported_once_in_the_terminal_and_the_metrics(tmp_path, capsys):
    from agents.policy import LMPolicy
    from agents.reinforce import REINFORCE

    task = dict(task="copy", task_kwargs={"length": 3, "alphabet": "abc"}, reward="partial_credit", max_new_tokens=3)
    policy = LMPolicy.from_pretrained("tiny", seed=0)
    envs = textgym.TextGenVectorEnv(num_envs=8, group_size=2, tokenizer=policy.tokenizer, **task)
    only_a = np.zeros(policy.vocab_size, dtype=bool)
    only_a[policy.tokenizer.encode("a")[0]] = True
    policy.restrict_actions(only_a)  # every completion is "aaa"
    REINFORCE(policy, lr=3e-3, seed=0).learn(envs, iterations=4, log_dir=tmp_path, progress_bar=False)
    rows = read_metrics(tmp_path)
    assert all(r["train_distinct_answers"] == 1 and r["train_answer_entropy"] == 0.0 for r in rows)
    assert [("collapse" in r) for r in rows] == [False, False, True, False]  # the third update of one answer
    assert "'aaa'" in rows[2]["collapse"]
    assert capsys.readouterr().err.count("warning: collapse at iteration 3") == 1
