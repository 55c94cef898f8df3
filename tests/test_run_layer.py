"""The run layer under `textgym train`, `eval` and `bench` (agents.runs): one resolver, one run directory.

- a model samples and spends tokens alike in every command: its preset (SmolLM2: T = 0.7, 24 new
  tokens), where bench used T = 1.0 and 32 tokens;
- the budget is the flag, else a run's recorded one, else the task's recommendation, else the
  preset's, else the default: a GSM8K-shaped file recommends one that fits its worked solutions;
- a data file from the command line can be one split whole (`--task-kwargs '{"split": "test"}'`);
- a run directory's files never make textgym import code: a recorded task or reward that is a
  module path is refused unless the command line gives it.
"""

import json

import pytest
import torch

from agents import bench, evaluation, train
from agents.runs import PRESETS, RunDir, RunError
from helpers import ECHO_TASK_MODULE
from textgym.tasks import budget_for, make_task

torch.set_num_threads(1)

QUICK = ["--prompts", "1", "--group-size", "2", "--eval-episodes", "2", "--no-progress-bar", "--threads", "1"]


def resolved(command, flags, model=None):
    return command.resolve(flags, model=model)[0]


def gsm8k_file(path, rows=10):
    """GSM8K-shaped rows: a question, and a worked solution ending in "#### <answer>"."""
    lines = []
    for i in range(rows):
        steps = "\n".join(f"Step {j}: {i} + {j} = <<{i}+{j}={i + j}>>{i + j}" for j in range(i % 4 + 1))
        lines.append(json.dumps({"question": f"What is {i} plus {i % 4}?", "answer": f"{steps}\n#### {i + i % 4}"}))
    path.write_text("\n".join(lines) + "\n")
    return path


GSM8K = {"prompt_field": "question", "answer_extract": "gsm8k", "reward": "gsm8k"}


# -- one sampling default per model ----------------------------------------------------------------


@pytest.mark.parametrize("model", ["smollm2-135m-instruct", "tiny"])
def test_every_command_samples_a_model_as_its_preset_says(model):
    keys = ("temperature", "top_k", "top_p", "max_new_tokens")
    flags = {"task": "copy", "task_kwargs": {"length": 2}}
    runs = [resolved(train.command(), {**flags, "model": model}), resolved(evaluation.command(), {**flags, "model": model}),
            resolved(bench.command(), flags, model=model)]  # fmt: skip
    values = [{k: r[k] for k in keys} for r in runs]
    assert values[0] == values[1] == values[2]
    expected = {"temperature": 1.0, "max_new_tokens": 16, **{k: v for k, v in PRESETS[model].items() if k in keys}}
    assert {k: values[0][k] for k in expected} == expected
    if model == "smollm2-135m-instruct":
        assert (values[2]["temperature"], values[2]["max_new_tokens"]) == (0.7, 24)  # bench once sampled at 1.0, 32 tokens


def test_bench_rows_say_the_budget_and_sampling_they_ran_with(tmp_path):
    common = ["--agents", "random,lm:tiny", "--tasks", "copy", "--task-kwargs", '{"length": 2, "alphabet": "abc"}',
              "--episodes", "4", "--num-envs", "4", "--no-progress"]  # fmt: skip
    assert bench.main([*common, "--out", str(tmp_path / "a")]) == 0
    rows = {r["agent"]: r for r in json.loads((tmp_path / "a" / "bench.json").read_text())["results"]}
    assert rows["lm:tiny"]["max_new_tokens"] == PRESETS["tiny"]["max_new_tokens"] and rows["lm:tiny"]["temperature"] == 1.0
    assert rows["random"]["max_new_tokens"] == 3  # no model: the task's longest answer + 1 char tokens
    assert bench.main([*common, "--max-new-tokens", "2", "--temperature", "0.5", "--out", str(tmp_path / "b")]) == 0
    rows = {r["agent"]: r for r in json.loads((tmp_path / "b" / "bench.json").read_text())["results"]}
    assert rows["lm:tiny"]["max_new_tokens"] == rows["random"]["max_new_tokens"] == 2 and rows["lm:tiny"]["temperature"] == 0.5


# -- the budget ------------------------------------------------------------------------------------


def test_a_gsm8k_shaped_file_recommends_a_budget_that_fits_its_solutions(tmp_path):
    data = gsm8k_file(tmp_path / "gsm.jsonl")
    task = make_task(f"file:{data}", **GSM8K)
    longest = max(len(json.loads(line)["answer"]) for line in data.read_text().splitlines())
    assert task.recommended_max_new_tokens == budget_for(longest) >= longest / 2
    assert task.recommended_max_new_tokens % 32 == 0
    assert make_task(f"file:{data}", prompt_field="question").recommended_max_new_tokens is None  # no worked solutions
    assert make_task("addition").recommended_max_new_tokens is None


def test_the_budget_is_the_flag_else_the_run_else_the_tasks_else_the_presets(tmp_path):
    data = gsm8k_file(tmp_path / "gsm.jsonl")
    recommended = make_task(f"file:{data}", **GSM8K).recommended_max_new_tokens
    flags = {"task": f"file:{data}", "task_kwargs": GSM8K}
    for command in (train.command(), evaluation.command()):
        assert resolved(command, {**flags, "model": "tiny"})["max_new_tokens"] == recommended  # over the preset's 6
        assert resolved(command, {**flags, "model": "tiny", "max_new_tokens": 7})["max_new_tokens"] == 7
        assert resolved(command, {"model": "tiny", "task": "copy"})["max_new_tokens"] == 6  # no recommendation: the preset
        assert resolved(command, {"model": "./my-model", "task": "copy"})["max_new_tokens"] == 16  # nor a preset: the default
    assert resolved(bench.command(), flags, model="tiny")["max_new_tokens"] == recommended
    run = fake_run(tmp_path / "run", {"model": "tiny", "task": f"file:{data}", "task_kwargs": GSM8K, "max_new_tokens": 5})
    settings, source = evaluation.command().resolve({"model": str(run)})
    assert settings["max_new_tokens"] == 5 and "the run's settings" in source  # a run's budget is a choice made


def test_eval_of_a_gsm8k_shaped_test_file_evaluates_every_problem_with_a_budget_that_fits(tmp_path, capsys):
    data = gsm8k_file(tmp_path / "gsm8k_test.jsonl", rows=10)
    recommended = make_task(f"file:{data}", **GSM8K).recommended_max_new_tokens
    assert evaluation.main(["--model", "tiny", "--task", f"file:{data}", "--task-kwargs", json.dumps({**GSM8K, "split": "test"}),
                            "--samples", "1", "--no-greedy", "--threads", "1", "--no-progress-bar",
                            "--out", str(tmp_path / "eval")]) == 0  # fmt: skip
    assert f"the task's recommended budget ({recommended} new tokens)" in capsys.readouterr().out
    header, records = evaluation.read_samples(tmp_path / "eval" / "samples.jsonl")
    assert header["config"]["max_new_tokens"] == recommended
    assert sorted(r["problem"] for r in records) == list(range(10))  # the whole file, not its hashed 10%


# -- a data file as one split ----------------------------------------------------------------------


def test_a_data_file_is_one_split_whole_when_asked(tmp_path):
    data = gsm8k_file(tmp_path / "test.jsonl", rows=40)
    hashed = make_task(f"file:{data}", **GSM8K)
    assert 0 < hashed.num_examples("test") < 40  # divided 80/10/10 by hash
    whole = make_task(f"file:{data}", split="test", **GSM8K)
    assert [whole.num_examples(s) for s in ("train", "validation", "test")] == [0, 0, 40]
    with pytest.raises(ValueError, match=r"split 'train' of task 'test' is empty: .* no train rows were given "
                                         r"\(they are its test split\); use another split"):  # fmt: skip
        whole.example("train", 0)
    with pytest.raises(ValueError, match="split must be one of train, validation, test .* got 'dev'"):
        make_task(f"file:{data}", split="dev", **GSM8K)
    with pytest.raises(SystemExit, match="task 'test' has no examples in split 'validation'"):  # train validates on it
        train.main(["--model", "tiny", "--task", f"file:{data}", "--task-kwargs", json.dumps({**GSM8K, "split": "train"}),
                    "--iterations", "0", "--out", str(tmp_path / "run"), *QUICK])  # fmt: skip


# -- run directories never import code -------------------------------------------------------------


def fake_run(path, config):
    """A run directory whose `latest` names a checkpoint (agent.pt unreadable: nothing here loads it)."""
    (path / "checkpoint-000001").mkdir(parents=True)
    (path / "checkpoint-000001" / "agent.pt").write_bytes(b"not a checkpoint")
    (path / "latest").write_text("checkpoint-000001")
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_a_crafted_run_directory_cannot_make_textgym_import_code(tmp_path):
    marker = tmp_path / "ran"
    crafted = {"model": "tiny", "task": "os:system", "task_kwargs": {"command": f"touch {marker}"}, "iterations": 1}
    run = fake_run(tmp_path / "run", crafted)
    with pytest.raises(SystemExit, match=r"names 'os:system' as its task, code from a module.*--task 'os:system'"):
        evaluation.main(["--model", str(run), "--out", str(tmp_path / "eval")])
    with pytest.raises(SystemExit, match="names 'os:system' as its task, code from a module"):
        train.main(["--resume", str(run)])
    with pytest.raises(RunError, match="names 'os:system' as its task"):
        evaluation.command().resolve({"model": str(run)})
    assert bench.command().resolve({"task": "copy"}, model=str(run))[0]["task"] == "copy"  # bench names its tasks
    retry = {**crafted, "task": "retry", "task_kwargs": {"task": "os:system"}}  # code inside the task's arguments
    (run / "config.json").write_text(json.dumps(retry))
    with pytest.raises(RunError, match="names 'os:system' as its task"):
        evaluation.command().resolve({"model": str(run)})
    (run / "config.json").write_text(json.dumps({**crafted, "task": "copy", "task_kwargs": {}, "reward": "os:system"}))
    with pytest.raises(RunError, match="names 'os:system' as its reward"):
        evaluation.command().resolve({"model": str(run)})
    assert not marker.exists()
    # Given on the command line, or replaced by a task of its own: the user's choice, not the file's.
    settings, _ = evaluation.command().resolve({"model": str(run), "task": "copy"})
    assert settings["task"] == "copy" and settings["reward"] is None
    assert evaluation.command().resolve({"model": str(run), "reward": "os:system"})[0]["reward"] == "os:system"



def test_a_run_on_a_module_task_resumes_when_the_command_line_names_it_again(tmp_path, monkeypatch, capsys):
    (tmp_path / "echo_for_resume.py").write_text(ECHO_TASK_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "run"
    common = ["--model", "tiny", "--task", "echo_for_resume:Echo", "--task-kwargs", '{"length": 3}', "--max-new-tokens", "3"]
    assert train.main([*common, "--iterations", "1", "--out", str(out), *QUICK]) == 0
    with pytest.raises(SystemExit, match="textgym does not import code that a run directory's files name; if you trust "
                                         "it, give it on the command line: --task 'echo_for_resume:Echo'"):  # fmt: skip
        train.main(["--resume", str(out), "--iterations", "2", *QUICK])
    assert train.main(["--resume", str(out), "--task", "echo_for_resume:Echo", "--iterations", "2", *QUICK]) == 0
    assert not (out / "resumes.jsonl").exists() or "task" not in (out / "resumes.jsonl").read_text()  # not a change
    assert RunDir(out).settings()["task"] == "echo_for_resume:Echo"
