"""`textgym eval`: the metrics' math, what maj@k votes on, the batched plan, files, resume, bad input.

- pass@k is the unbiased estimator (checked against counting k-subsets, and against exact
  binomials where the naive formula would overflow); Wilson and bootstrap intervals;
- the extracted answer is the one the task's verifier reads (built-in extract, r1_zero tags,
  reasoning-gym's stripped text, a data file's reward, an env reward, a multi-turn last turn);
- every problem's samples run as groups of one vector env, P x n episodes in few rollouts;
- the same seed gives the same tables; a SIGKILLed evaluation resumed gives the table of an
  uninterrupted one; a file from another configuration is refused and left as it was;
- bad input (k > samples, unknown task or dataset, missing or malformed file) is a clear error.
"""

import csv
import importlib.util
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from agents import evaluation
from agents.checkpoints import resolve_checkpoint
from agents.evaluation import EvalConfig, evaluate_policy, extract_answer, read_samples
from agents.statistics import bootstrap_intervals, majority_vote, pass_at_k, wilson_interval
from textgym.config import EnvConfig
from textgym.tasks import make_task

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
HAVE_RG = importlib.util.find_spec("reasoning_gym") is not None
SORT = ["--model", "tiny", "--threads", "1", "--task", "sort", "--task-kwargs", '{"length": 4, "alphabet": "abc"}',
        "--reward", "partial_credit", "--no-progress-bar"]  # fmt: skip


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# -- the metrics ---------------------------------------------------------------------------------


def test_pass_at_k_is_the_fraction_of_k_subsets_with_a_correct_sample():
    for n in range(1, 8):
        for c in range(n + 1):
            outcomes = [True] * c + [False] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(outcomes, k))
                expected = sum(any(s) for s in subsets) / len(subsets)
                assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_is_stable_where_the_binomials_are_huge():
    for n, c, k in [(2000, 3, 1000), (1000, 1, 1), (1000, 999, 500), (5000, 10, 2500)]:
        exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
        assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-9)
    assert pass_at_k(10, 0, 5) == 0.0 and pass_at_k(10, 10, 1) == 1.0 and pass_at_k(10, 6, 5) == 1.0
    assert pass_at_k(8, 2, 1) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="1 <= k <= n"):
        pass_at_k(4, 1, 5)


def test_majority_vote_counts_numbers_by_value_ignores_missing_answers_and_breaks_ties_by_order():
    assert majority_vote(["7", "7.0", "8", None, None, None]) == (0, "7")
    assert majority_vote(["b", "a", "a ", "b"]) == (0, "b")  # a tie: the answer given first
    assert majority_vote(["x", "1,000", "1000"]) == (1, "1000")
    assert majority_vote([None, None]) == (None, None)
    assert majority_vote(["  two  words", "two words", "one"]) == (0, "two words")


def test_wilson_interval():
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson_interval(5, 10)
    assert (lo, hi) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_bootstrap_intervals_are_over_problems_seeded_and_paired():
    a = np.random.default_rng(0).random(40)
    values = {"a": a, "b": [0.5] * 40, "a_again": a}
    first = bootstrap_intervals(values, seed=3)
    assert first == bootstrap_intervals(values, seed=3) != bootstrap_intervals(values, seed=4)
    assert first["b"] == (0.5, 0.5)  # the same on every problem: no spread
    assert first["a"] == first["a_again"]  # every column from the same resampled problem sets
    lo, hi = first["a"]
    half = 1.96 * a.std(ddof=1) / np.sqrt(len(a))  # the normal interval, which the bootstrap approaches
    assert lo < a.mean() < hi and (hi - lo) == pytest.approx(2 * half, rel=0.2)
    with pytest.raises(ValueError, match="one value per problem"):
        bootstrap_intervals({"a": [1, 2], "b": [1]}, seed=0)


# -- what maj@k votes on -------------------------------------------------------------------------


def test_the_extracted_answer_is_what_the_tasks_verifier_reads(tmp_path):
    addition = make_task("addition")
    assert extract_answer(addition, "3 + 4 = 7. So the answer is 7") == "7"
    r1 = make_task("addition", prompt_style="r1_zero")
    assert extract_answer(r1, "so 9 </think> <answer> 7 </answer>") == "7"
    assert extract_answer(r1, "the answer is 7") is None  # no tags: the verifier reads nothing
    assert extract_answer(make_task("copy"), "  abc\nmore") == "abc"  # the default extract: the first line
    data = tmp_path / "gsm.jsonl"
    data.write_text("".join(json.dumps({"question": f"q{i}", "answer": f"work\n#### {i}"}) + "\n" for i in range(30)))
    gsm = make_task(f"file:{data}", prompt_field="question", answer_field="answer", answer_extract="gsm8k", reward="gsm8k")
    assert extract_answer(gsm, "so 12 - 2\n#### 1,010") == "1010"
    assert extract_answer(addition, "The answer is \\boxed{12}, not 7", reward="boxed_math") == "12"  # the env's reward
    assert extract_answer(addition, "  anything  ", reward=lambda c, e: 1.0) == "anything"  # unknown reward: stripped
    guess = make_task("guess")
    info = {"conversation": [{"role": "assistant", "text": "1234"}, {"role": "user", "text": "no"},
                             {"role": "assistant", "text": "4321"}]}  # fmt: skip
    assert extract_answer(guess, "1234\nno\n4321", info=info) == extract_answer(guess, "4321")


def test_the_extracted_answer_follows_the_numeric_rewards_order():
    # maj@k votes on what the reward pays for: a box before later numbers, nothing for an unfinished reply
    addition = make_task("addition")
    text = r"\boxed{18} dollars a day, i.e. 126 per week"
    for reward in ("numeric_match", "gsm8k", "math_equiv"):
        assert extract_answer(addition, text, reward=reward) == "18"
        assert extract_answer(addition, "so the total is 9 + ", reward=reward) is None
    assert extract_answer(addition, r"\boxed{7} since 3 + 4") == "7"  # the task's own extract reads the same way


@pytest.mark.skipif(not HAVE_RG, reason="needs reasoning-gym (pip install 'textgym[reasoning]')")
def test_reasoning_gym_tasks_vote_on_the_stripped_completion():
    task = make_task("reasoning_gym:chain_sum", size=20)
    assert extract_answer(task, "  12 \n") == "12"
    assert extract_answer(task, "The sum is 12") == "The sum is 12"


# -- evaluation in process -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    from agents import LMPolicy

    return LMPolicy.from_pretrained("tiny", seed=0)


def test_problems_run_as_groups_of_samples_in_few_batched_rollouts(tiny, monkeypatch):
    from agents import rollouts
    from textgym.vector import TextGenVectorEnv

    calls, resets = [], []
    original, reset = rollouts.collect_episodes, TextGenVectorEnv.reset

    def counting(policy, envs, seed=None, greedy=False, options=None):
        calls.append((envs.num_envs, envs.group_size, greedy))
        return original(policy, envs, seed=seed, greedy=greedy, options=options)

    def counting_reset(self, *, seed=None, options=None):
        resets.append(self.num_envs)
        return reset(self, seed=seed, options=options)

    monkeypatch.setattr(rollouts, "collect_episodes", counting)
    monkeypatch.setattr(TextGenVectorEnv, "reset", counting_reset)
    env = EnvConfig(max_new_tokens=6, reward="partial_credit")
    config = EvalConfig(problems=10, samples=4, batch_size=16, progress_bar=False)
    result = evaluate_policy(tiny, "sort", config, env, task_kwargs={"sort": {"length": 5, "alphabet": "abc"}})
    # 10 problems x 4 samples = 40 episodes in 16-slot batches of 4-sample groups: 3 rollouts; greedy: 1.
    assert calls == [(16, 4, False), (16, 4, False), (8, 4, False), (10, 1, True)]
    assert resets == [16, 16, 8, 10]  # one reset per rollout pins every group's problem (a per-slot `index`)
    task = make_task("sort", length=5, alphabet="abc")
    samples = [r for r in result.samples if r["mode"] == "sample"]
    assert sorted((r["problem"], r["sample"]) for r in samples) == [(p, s) for p in range(10) for s in range(4)]
    for r in result.samples:  # every slot ran the problem it was given
        example = task.example("test", r["problem"])
        assert r["reference"] == example.answer and example.prompt in r["prompt"]
        assert r["tokens"] == len(r["completion_ids"]) >= 1
        assert {"completion", "extracted", "reward", "reward_components", "correct", "seed", "batch_s"} <= set(r)
    (row,) = result.tasks
    assert row["problems"] == 10 and row["samples"] == 4
    by_problem = {r["problem"]: r for r in result.problems}
    for p, r in by_problem.items():
        own = [s for s in samples if s["problem"] == p]
        assert r["correct"] == sum(s["correct"] for s in own)
        assert r["mean@4"] == pytest.approx(np.mean([s["reward"] for s in own]))
        assert r["pass@4"] == pass_at_k(4, r["correct"], 4)
    assert row["mean@4"] == pytest.approx(np.mean([r["mean@4"] for r in result.problems]))
    assert row["mean@4_lo"] <= row["mean@4"] <= row["mean@4_hi"]


def test_maj_at_k_is_right_when_the_most_common_answer_is(tiny):
    records = []
    for p, answers, correct in [(0, ["7", "7", "8", "9"], [1, 1, 0, 0]), (1, ["8", "7", "8", None], [0, 1, 0, 0]),
                                (2, [None] * 4, [0] * 4)]:  # fmt: skip
        for s, (a, c) in enumerate(zip(answers, correct)):
            records.append({"task": "t", "mode": "sample", "problem": p, "sample": s, "extracted": a, "correct": bool(c),
                            "reward": float(c), "tokens": 3, "ended_by": "eos"})  # fmt: skip
    config = EvalConfig(samples=4, k=(1, 2, 4), greedy=False)
    (task,), problems = evaluation.summarize_samples(records, config, ["t"])
    assert [r["maj@4"] for r in problems] == [1.0, 0.0, 0.0]
    assert [r["maj@2"] for r in problems] == [1.0, 0.0, 0.0]  # the first 2 samples: (7, 7) and (8, 7) -> 8 first
    assert [r["pass@1"] for r in problems] == [0.5, 0.25, 0.0]
    assert task["pass@4"] == pytest.approx((1 + 1 + 0) / 3)


def test_greedy_only_and_no_files(tiny):
    config = EvalConfig(samples=0, problems=3, progress_bar=False)
    state = tiny.generator.get_state()
    result = evaluate_policy(tiny, "copy", config, EnvConfig(max_new_tokens=4), task_kwargs={"copy": {"length": 2}})
    assert torch.equal(tiny.generator.get_state(), state)  # the policy's own sampling stream is left as it was
    assert [r["mode"] for r in result.samples] == ["greedy"] * 3
    assert set(result.tasks[0]) >= {"greedy", "greedy_lo", "greedy_hi"} and "pass@1" not in result.tasks[0]
    assert result.paths == {}


@pytest.mark.skipif(not HAVE_RG, reason="needs reasoning-gym (pip install 'textgym[reasoning]')")
def test_reasoning_gym_multi_turn_and_file_tasks_in_one_evaluation(tiny, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"q": f"say {w}", "a": w, "level": i}) + "\n" for i, w in enumerate("abcdefghijklmnopqrst")))
    config = EvalConfig(problems=2, samples=2, split="train", progress_bar=False)
    tasks = ["reasoning_gym:chain_sum", "guess", f"file:{data}"]
    kwargs = {"reasoning_gym:chain_sum": {"size": 30}, f"file:{data}": {"prompt_field": "q", "answer_field": "a"}}
    result = evaluate_policy(tiny, tasks, config, EnvConfig(max_new_tokens=8), task_kwargs=kwargs, out=tmp_path / "eval")
    assert [r["task"] for r in result.tasks] == tasks
    multi = [r for r in result.samples if r["task"] == "guess"]
    assert multi and all("turns" in r and "conversation" in r and "turn_rewards" in r for r in multi)
    assert rows(tmp_path / "eval" / "tasks.csv")[1]["task"] == "guess"
    header, records = read_samples(tmp_path / "eval" / "samples.jsonl")
    assert header["config"]["tasks"] == tasks and header["config"]["task_kwargs"][tasks[0]] == {"size": 30}
    assert len(records) == 3 * 2 * (2 + 1)


# -- the command: files, seeds, resume -------------------------------------------------------------


def test_same_seed_same_tables_other_seed_other_samples(tmp_path, capsys):
    common = [*SORT, "--samples", "4", "--problems", "6", "--batch-size", "8"]
    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        assert evaluation.main([*common, "--seed", seed, "--out", str(tmp_path / name)]) == 0
    printed = capsys.readouterr().out
    assert "pass@1" in printed and "maj@4" in printed and "| sort" in printed and "bootstrap over problems" in printed
    for table in ("tasks.csv", "problems.csv"):
        assert rows(tmp_path / "a" / table) == rows(tmp_path / "b" / table)
    completions = lambda d: [r["completion"] for r in read_samples(tmp_path / d / "samples.jsonl")[1]]  # noqa: E731
    assert completions("a") == completions("b") != completions("c")
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["config"]["seed"] == 1 and summary["tasks"][0]["task"] == "sort"


SLOW_EVAL = """
import sys, time
import textgym
from textgym.rewards.builtin import partial_credit

@textgym.register_reward("slow_partial_credit")
def slow_partial_credit(completion, example):
    time.sleep(0.02)
    return partial_credit(completion, example)

from agents.evaluation import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_killed_evaluation_resumes_to_the_table_of_an_uninterrupted_one(tmp_path):
    args = ["--model", "tiny", "--threads", "1", "--task", "sort", "--task-kwargs", '{"length": 5, "alphabet": "abc"}',
            "--reward", "slow_partial_credit", "--samples", "4", "--problems", "12", "--batch-size", "4", "--no-progress-bar"]  # fmt: skip
    script = tmp_path / "slow_eval.py"
    script.write_text(SLOW_EVAL)
    total = 12 * 4 + 12
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(script), *args, "--out", str(killed)], cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    samples = killed / "samples.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if samples.exists() and samples.read_bytes().count(b"\n") >= 1 + 8:  # the config line and two batches
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    written = samples.read_bytes().count(b"\n") - 1
    assert 8 <= written < total, f"the evaluation was not killed midway ({written} of {total} samples written)"
    with open(samples, "ab") as f:
        f.write(b'{"task": "sort", "mode": "sam')  # as if killed in the middle of a line

    before = [r for r in read_samples(samples)[1]]
    resumed = subprocess.run([sys.executable, str(script), *args, "--out", str(killed), "--resume"], cwd=REPO, env=ENV,
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    whole = subprocess.run([sys.executable, str(script), *args, "--out", str(tmp_path / "whole")], cwd=REPO, env=ENV,
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert whole.returncode == 0, whole.stderr[-3000:]
    after = read_samples(samples)[1]
    assert after[: len(before)] == before  # nothing written before the kill was lost or rewritten
    assert len(after) == total and len({evaluation._sample_key(r) for r in after}) == total
    for table in ("tasks.csv", "problems.csv"):
        assert rows(killed / table) == rows(tmp_path / "whole" / table)
    table = lambda out: out[out.index("| task"):out.index("\n\n")]  # noqa: E731
    assert table(resumed.stdout) == table(whole.stdout)


def test_a_file_from_another_configuration_is_refused_and_left_alone(tmp_path):
    out = tmp_path / "eval"
    common = [*SORT, "--samples", "2", "--problems", "2", "--out", str(out)]
    assert evaluation.main(common) == 0
    samples = out / "samples.jsonl"
    before = samples.read_bytes()
    with pytest.raises(SystemExit, match="already holds an evaluation; pass --resume"):
        evaluation.main(common)
    with pytest.raises(SystemExit, match=r"another configuration(.|\n)*seed: 0 in the file, 5 now(.|\n)*temperature: 1.0 in the file, 0.5 now"):
        evaluation.main([*common, "--resume", "--seed", "5", "--temperature", "0.5"])
    with pytest.raises(SystemExit, match="samples: 2 in the file, 3 now"):
        evaluation.main([*common[:-4], "--samples", "3", "--problems", "2", "--out", str(out), "--resume"])
    with pytest.raises(SystemExit, match=r"tasks: \[\"sort\"\] in the file, \[\"copy\"\] now"):
        evaluation.main(["--model", "tiny", "--task", "copy", "--samples", "2", "--problems", "2", "--out", str(out),
                         "--resume", "--no-progress-bar"])  # fmt: skip
    assert samples.read_bytes() == before
    assert evaluation.main([*common, "--resume"]) == 0  # the same settings: nothing to do, nothing lost
    assert samples.read_bytes() == before


def test_a_file_written_before_a_setting_existed_resumes_while_that_setting_is_at_its_default(tmp_path):
    out = tmp_path / "eval"
    common = [*SORT, "--samples", "2", "--problems", "2", "--out", str(out), "--resume"]
    assert evaluation.main(common) == 0
    samples = out / "samples.jsonl"
    lines = samples.read_text().splitlines()
    header = json.loads(lines[0])
    del header["config"]["prompt_overflow"]  # as a file written before textgym had that setting
    samples.write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    assert evaluation.main(common) == 0  # at its default: the samples were drawn as it says
    with pytest.raises(SystemExit, match='prompt_overflow: null in the file, "truncate" now'):
        evaluation.main([*common, "--prompt-overflow", "truncate"])


def test_a_damaged_line_in_the_middle_is_an_error_that_names_it(tmp_path):
    out = tmp_path / "eval"
    common = [*SORT, "--samples", "2", "--problems", "2", "--out", str(out)]
    assert evaluation.main(common) == 0
    lines = (out / "samples.jsonl").read_text().splitlines(keepends=True)
    lines[2] = lines[2][:20] + "\n"
    (out / "samples.jsonl").write_text("".join(lines))
    with pytest.raises(SystemExit, match="line 3 is not valid JSON"):
        evaluation.main([*common, "--resume"])


@pytest.mark.parametrize("args, match", [
    (["--samples", "4", "--k", "1", "8"], "k=8 is larger than the 4 samples per problem"),
    (["--samples", "0", "--no-greedy"], "evaluate nothing"),
    (["--k", "0"], "positive integers"),
    (["--task", "no_such_task"], "unknown task 'no_such_task'; known tasks: addition"),
    (["--task", "file:/nonexistent/data.jsonl"], "/nonexistent/data.jsonl"),
    (["--task", "addition", "--task-kwargs", '{"digits": 7}', "--split", "test"], "unbounded"),
    (["--model", "no-such-model-dir/"], "no-such-model-dir"),
])  # fmt: skip
def test_bad_input_is_a_clear_error(tmp_path, args, match):
    base = ["--model", "tiny", "--task", "copy", "--no-progress-bar", "--out", str(tmp_path / "eval")]
    with pytest.raises(SystemExit, match=match):
        evaluation.main([*base, *args])
    assert not (tmp_path / "eval" / "samples.jsonl").exists()


@pytest.mark.skipif(importlib.util.find_spec("datasets") is None, reason="needs datasets (pip install 'textgym[data]')")
def test_a_hub_dataset_from_a_local_directory(tmp_path, capsys):
    import datasets

    rows_ = [{"question": f"Copy: {w}", "answer": f"so\n#### {i}"} for i, w in enumerate("abcdefghijklmnopqrstuvwxyz")]
    datasets.Dataset.from_list(rows_).save_to_disk(str(tmp_path / "saved"))
    kwargs = {"prompt_field": "question", "answer_field": "answer", "answer_extract": "gsm8k", "reward": "gsm8k"}
    assert evaluation.main(["--model", "tiny", "--task", f"hf:{tmp_path / 'saved'}", "--task-kwargs", json.dumps(kwargs),
                            "--split", "train", "--problems", "3", "--samples", "2", "--max-new-tokens", "4",
                            "--out", str(tmp_path / "eval"), "--no-progress-bar"]) == 0  # fmt: skip
    (row,) = rows(tmp_path / "eval" / "tasks.csv")
    assert row["task"] == f"hf:{tmp_path / 'saved'}" and row["problems"] == "3"
    records = read_samples(tmp_path / "eval" / "samples.jsonl")[1]
    assert all(r["reference"].isdigit() for r in records)  # the answer field through answer_extract


def test_a_malformed_data_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "answer": "b"}\n{"prompt": oops}\n')
    with pytest.raises(SystemExit, match="line 2 is not valid JSON"):
        evaluation.main(["--model", "tiny", "--task", f"file:{bad}", "--out", str(tmp_path / "eval")])
    good = tmp_path / "good.jsonl"
    good.write_text('{"question": "a", "answer": "b"}\n')
    with pytest.raises(SystemExit, match="question"):
        evaluation.main(["--model", "tiny", "--task", f"file:{good}", "--out", str(tmp_path / "eval")])


@pytest.mark.skipif(not HAVE_RG, reason="needs reasoning-gym (pip install 'textgym[reasoning]')")
def test_an_unknown_reasoning_gym_dataset_lists_the_known_ones(tmp_path):
    with pytest.raises(SystemExit, match="unknown reasoning-gym dataset 'chain_summ'.*chain_sum"):
        evaluation.main(["--model", "tiny", "--task", "reasoning_gym:chain_summ", "--out", str(tmp_path / "eval")])


# -- models: a `textgym train` run -----------------------------------------------------------------


def test_a_train_run_is_evaluated_from_its_latest_checkpoint(tmp_path, capsys, monkeypatch):
    from agents.train import main as train

    run = tmp_path / "run"
    common = ["--model", "tiny", "--task", "copy", "--task-kwargs", '{"length": 2, "alphabet": "ab"}', "--max-new-tokens", "3",
              "--prompts", "1", "--group-size", "2", "--eval-episodes", "2", "--no-progress-bar", "--threads", "1"]  # fmt: skip
    with pytest.raises(FileNotFoundError, match="a textgym train run without a finished checkpoint"):
        run.mkdir()
        (run / "metrics.jsonl").write_text("")
        resolve_checkpoint(run)
    (run / "metrics.jsonl").unlink()
    assert train([*common, "--iterations", "2", "--seed", "3", "--temperature", "0.9", "--out", str(run)]) == 0
    latest = run / (run / "latest").read_text().strip()
    assert latest.name.startswith("checkpoint-") and resolve_checkpoint(run) == latest
    assert resolve_checkpoint(latest) == latest and resolve_checkpoint("tiny") is None
    monkeypatch.chdir(tmp_path)
    assert evaluation.main(["--model", str(run), "--samples", "2", "--split", "train", "--no-progress-bar"]) == 0
    printed = capsys.readouterr().out
    assert "the run's settings" in printed and "| copy" in printed  # the run's task, budget and sampling
    (out,) = (tmp_path / "runs").glob("eval-*")  # not the run's directory: only its env and sampling carry over
    header, records = read_samples(out / "samples.jsonl")
    assert header["config"]["checkpoint"] == str(latest.resolve()) and header["config"]["iteration"] == 2
    assert header["config"]["seed"] == 0 and header["config"]["temperature"] == 0.9
    assert header["config"]["max_new_tokens"] == 3 and header["config"]["task_kwargs"]["copy"] == {"length": 2, "alphabet": "ab"}
    assert records and all(r["tokens"] <= 3 for r in records)


def test_tasks_lists_reasoning_gym_datasets_without_torch():
    code = ("import sys; from textgym.cli import main; main(['tasks', '--reasoning-gym']); "
            "assert 'torch' not in sys.modules, 'textgym tasks imported torch'")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    if not HAVE_RG:
        assert "pip install" in proc.stderr
        return
    assert proc.returncode == 0, proc.stderr
    assert "reasoning_gym:chain_sum:" in proc.stdout and "options: min_terms" in proc.stdout


def test_cli_subprocess(tmp_path):
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "textgym.cli", "eval", *SORT, "--samples", "2", "--problems", "3", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "| sort" in proc.stdout
    for name in ("samples.jsonl", "summary.json", "tasks.csv", "problems.csv"):
        assert (out / name).stat().st_size > 0


@pytest.mark.skipif(not HAVE_RG, reason="needs reasoning-gym (pip install 'textgym[reasoning]')")
def test_the_reasoning_gym_table_script_runs_end_to_end_and_resumes(tmp_path):
    """Base evaluation, training, trained evaluation, table; a second run finds everything done."""
    script = [sys.executable, "examples/benchmarks/reasoning_gym_table.py", "table", "--model", "tiny", "--datasets",
              "leg_counting", "--size", "200", "--problems", "2", "--samples", "2", "--iterations", "1",
              "--max-new-tokens", "4", "--threads", "1", "--out", str(tmp_path), "--train-args", "--prompts", "1",
              "--group-size", "2", "--eval-episodes", "2"]  # fmt: skip
    first = subprocess.run(script, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "$ textgym eval --model tiny --task reasoning_gym:leg_counting" in first.stdout
    assert "$ textgym train --model tiny --task reasoning_gym:leg_counting" in first.stdout
    (row,) = [line for line in first.stdout.splitlines() if line.startswith("| leg_counting |")]
    assert row.endswith("| 1 |") and row.count("[") == 5  # four pass@k cells and the lift
    prior = json.loads((tmp_path / "leg_counting" / "base" / "summary.json").read_text())["tasks"][0]
    assert prior["prior"] is not None and f"| {prior['prior']:.3f} ({prior['prior_answer']}) |" in row  # the harness's prior
    assert (tmp_path / "leg_counting" / "trained-1" / "summary.json").exists()
    again = subprocess.run(script, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "$ textgym train" not in again.stdout  # trained already: not again
    assert row in again.stdout.splitlines()


def test_the_reasoning_gym_table_shows_the_prior_and_lift_textgym_eval_computed():
    """The "one answer for all" column is the harness's prior (scored by the verifier), with its answer;
    a task without one shows a dash."""
    spec = importlib.util.spec_from_file_location("rg_table", REPO / "examples/benchmarks/reasoning_gym_table.py")
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    assert not hasattr(table, "constant_answer_rate")  # no second way to count it
    row = {"prior": 0.75, "prior_answer": "Yes", "lift": -0.125, "lift_lo": -0.25, "lift_hi": 0.0}
    assert table.prior_cell(row) == "0.750 (Yes)" and table.lift_cell(row) == "-0.125 [-0.25, +0.00]"
    assert table.prior_cell({"prior": None}) == table.lift_cell(None) == "—"


@pytest.mark.skipif(not HAVE_RG, reason="needs reasoning-gym (pip install 'textgym[reasoning]')")
def test_the_reasoning_gym_table_passes_its_reward_to_every_command(tmp_path):
    """--reward numeric_match scores base evaluation, training and trained evaluation alike."""
    spec = importlib.util.spec_from_file_location("rg_table", REPO / "examples/benchmarks/reasoning_gym_table.py")
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    from argparse import Namespace

    args = Namespace(size=200, level=0, system_prompt=None, stop_strings=None, max_new_tokens=8, chat_template="auto",
                     temperature=0.7, threads=1, reward=None, problems=2, batch_size=4, seed=0)  # fmt: skip
    assert "--reward" not in table.common_env(args, "leg_counting")
    args.reward = "numeric_match"
    env = table.common_env(args, "leg_counting")
    assert env[env.index("--reward") + 1] == "numeric_match"
    command = table.eval_command(args, "leg_counting", "tiny", tmp_path, 2, [1, 2])
    assert command[command.index("--reward") + 1] == "numeric_match"
