"""`textgym train` is generated from the configs: flags, defaults, presets, and resume overrides.

- every setting of RunConfig, RunManagementConfig, EnvConfig (but the three train fixes itself),
  REINFORCEConfig and SamplingConfig is a flag, with the config's help and default; presets are shown in --help;
- the defaults are the main job's (SmolLM2, addition, 2 x 8, group baseline, ...); a preset applies
  to its model name exactly (a local `tiny-gpt2/` is not the toy model); flags override a preset;
- `--resume DIR` takes overrides, records what changed in resumes.jsonl (config.json stays the
  original), replays earlier resumes' changes, and refuses to change what the checkpoint decides;
  a resume that changes the task samples the new task's allowed tokens (`mask_actions`);
- `--out DIR` never destroys a run already there (it names --resume; --overwrite deletes it on
  purpose) nor writes into a directory of other files; the default run directory's name is the
  task spec made safe (no path separators, bounded length).
"""

import argparse
import dataclasses
import json
import re
import shutil

import pytest
import torch

from agents.models import load_model, save_model
from agents.callbacks import RunManagementConfig
from agents.reinforce import REINFORCEConfig
from agents import train as T
from agents.checkpoints import latest_checkpoint
from agents.reinforce import REINFORCE
from agents.train import ENV_EXCLUDED, PRESETS, RunConfig, SamplingConfig, add_arguments, main, resolve_settings, run_name
from textgym.config import EnvConfig

torch.set_num_threads(2)

QUICK = ["--eval-episodes", "4", "--prompts", "1", "--group-size", "2", "--no-progress-bar", "--threads", "2"]


def parser():
    p = argparse.ArgumentParser(prog="textgym train")
    add_arguments(p)
    return p


def test_every_setting_is_a_flag_with_the_configs_help_and_default():
    p = parser()
    flags = {a.dest: a for a in p._actions if a.dest != "help"}
    for cls in (RunConfig, RunManagementConfig, EnvConfig, REINFORCEConfig, SamplingConfig):
        for f in dataclasses.fields(cls):
            if not f.metadata.get("cli", True) or f.name in ENV_EXCLUDED:
                assert f.name not in flags or f.name == "seed", f.name
                continue
            assert f.name in flags, f"--{f.name} is missing"
            assert f.metadata["help"].replace("%", "%%") in flags[f.name].help, f.name
    assert "(default: 'auto')" in flags["amp"].help and flags["amp"].choices == ["auto", "bf16", "off"]
    assert "[tiny: 0.001]" in flags["lr"].help and "[smollm2-135m-instruct: 0.7]" in flags["temperature"].help
    text = p.format_help()
    assert "presets (flags override them):" in text and "tiny: task=\"copy\"" in text


def test_the_defaults_are_the_main_jobs():
    s = resolve_settings({})
    main_job = dict(model="smollm2-135m-instruct", preset="smollm2-135m-instruct", task="comparison", prompts=2, group_size=8,
                    iterations=50, baseline="group", lr=2e-5, amp="auto", max_new_tokens=24, temperature=0.7, eval_every=5,
                    eval_episodes=256, save_every=10, lr_schedule="constant", mask_actions=False)  # fmt: skip
    assert {k: s[k] for k in main_job} == main_job


def test_presets_apply_to_their_model_exactly_and_flags_override_them():
    tiny = resolve_settings({"model": "tiny"})
    assert {k: tiny[k] for k in PRESETS["tiny"]} == PRESETS["tiny"] and tiny["preset"] == "tiny"
    other = resolve_settings({"model": "tiny-gpt2"})  # a local directory whose name starts with "tiny"
    assert other["preset"] is None and other["task"] == "comparison" and other["lr"] == REINFORCEConfig.lr
    assert resolve_settings({"model": "tiny", "lr": 0.01})["lr"] == 0.01
    # --task replaces the preset's task, and with it the settings that belong to that task.
    copy = resolve_settings({"model": "tiny", "task": "copy"})
    assert copy["task_kwargs"] == {} and copy["reward"] is None and copy["lr"] == PRESETS["tiny"]["lr"]
    assert resolve_settings({"model": "./my-model", "preset": "tiny"})["task"] == "copy"
    assert resolve_settings({"model": "tiny", "preset": "tiny-sort"})["task"] == "sort"


def test_a_model_named_like_tiny_is_loaded_as_itself(tmp_path, capsys):
    model, tokenizer = load_model("tiny", seed=3)
    save_model(model, tokenizer, tmp_path / "tiny-gpt2")
    out = tmp_path / "run"
    assert main(["--model", str(tmp_path / "tiny-gpt2"), "--iterations", "1", "--max-new-tokens", "4", "--out", str(out), *QUICK]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["preset"] is None and config["task"] == "comparison" and config["mask_actions"] is False


def test_resume_takes_overrides_and_records_them(tmp_path, capsys):
    out = tmp_path / "run"
    common = ["--model", "tiny", "--task", "copy", "--task-kwargs", '{"length": 2, "alphabet": "ab"}', "--max-new-tokens", "3", *QUICK]
    assert main([*common, "--iterations", "2", "--out", str(out)]) == 0
    original = (out / "config.json").read_text()
    # The same flags again change nothing; --iterations and --lr do.
    assert main([*common, "--resume", str(out), "--iterations", "3", "--lr", "5e-4"]) == 0
    assert main(["--resume", str(out), "--iterations", "4", "--no-progress-bar"]) == 0
    assert (out / "config.json").read_text() == original
    resumes = [json.loads(line) for line in (out / "resumes.jsonl").read_text().splitlines()]
    assert [(r["iteration"], r["overrides"]) for r in resumes] == [(2, {"iterations": 3, "lr": 5e-4}), (3, {"iterations": 4})]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["iteration"], r.get("lr")) for r in rows] == [(0, None), (1, 1e-3), (2, 1e-3), (3, 5e-4), (4, 5e-4)]
    assert "resuming" in capsys.readouterr().out

    for bad, match in ((["--model", "smollm2-135m-instruct"], "--model cannot change on --resume"),
                       (["--out", str(tmp_path / "elsewhere")], "drop --out"),
                       (["--mask-actions"], None)):  # fmt: skip
        if match is None:  # the run was made with mask_actions=True (the tiny preset): unchanged, accepted
            assert main(["--resume", str(out), *bad, "--no-progress-bar"]) == 0
            continue
        with pytest.raises(SystemExit, match=match):
            main(["--resume", str(out), *bad])
    with pytest.raises(SystemExit, match="no checkpoint to resume from"):
        main(["--resume", str(tmp_path / "nothing")])


@pytest.mark.parametrize(
    "args, match",
    [
        (["--iterations", "-1"], "iterations must be an integer >= 0"),
        (["--report-to", "mlflow"], "report_to takes tensorboard, wandb, trackio"),
        (["--eval-every", "0"], "eval_every must be an integer >= 1"),
        (["--epochs", "0"], "epochs must be an integer >= 1"),
    ],
)
def test_bad_flags_fail_with_a_clear_message(args, match):
    with pytest.raises(SystemExit, match=match):
        main(["--model", "tiny", *args])


COPY_AB = ["--model", "tiny", "--task", "copy", "--task-kwargs", '{"length": 2, "alphabet": "ab"}', "--max-new-tokens", "3", *QUICK]


def snapshot(directory):
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_out_never_destroys_a_run_and_overwrite_replaces_it_on_purpose(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*COPY_AB, "--iterations", "1", "--out", str(out)]) == 0
    before = snapshot(out)
    with pytest.raises(SystemExit, match=f"error: {out} already holds a textgym train run; continue it with --resume {out}, "
                                         "or pass --overwrite"):  # fmt: skip
        main([*COPY_AB, "--iterations", "2", "--seed", "1", "--out", str(out)])
    assert snapshot(out) == before, "a refused run changed the old one"
    with pytest.raises(SystemExit, match="--overwrite starts a new run in --out; it does not go with --resume"):
        main(["--resume", str(out), "--overwrite"])

    (out / "my-notes.txt").write_text("the old run's notes go with it")
    assert main([*COPY_AB, "--iterations", "1", "--seed", "1", "--out", str(out), "--overwrite"]) == 0
    assert "--overwrite: deleted the run that was in" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["seed"] == 1 and "overwrite" not in config and not (out / "my-notes.txt").exists()
    assert [json.loads(line)["iteration"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [0, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"], "the old run was moved aside and not deleted"

    # A run that stopped before its first checkpoint cannot be resumed: the message says --overwrite.
    (out / "latest").unlink()
    shutil.rmtree(next(out.glob("checkpoint-*")))
    with pytest.raises(SystemExit, match="which stopped before its first checkpoint: pass --overwrite"):
        main([*COPY_AB, "--out", str(out)])

    # A directory of other files is neither written into nor deleted, --overwrite or not.
    other = tmp_path / "project"
    other.mkdir()
    (other / "config.json").write_text('{"model_type": "llama"}')
    for extra in ([], ["--overwrite"]):
        with pytest.raises(SystemExit, match=f"--out {other} is not empty and holds no textgym run"):
            main([*COPY_AB, "--out", str(other), *extra])
    assert sorted(p.name for p in other.iterdir()) == ["config.json"]
    # An empty directory is a fine place for a new run.
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([*COPY_AB, "--iterations", "0", "--out", str(empty)]) == 0 and (empty / "config.json").exists()


def test_resume_with_another_task_samples_the_new_tasks_tokens(tmp_path, capsys):
    """mask_actions means "the task's allowed tokens": a resume that changes the task (a curriculum)
    gets the new task's, where the checkpoint's mask would forbid them (reward 0, silently)."""
    out = tmp_path / "run"
    assert main([*COPY_AB, "--iterations", "1", "--out", str(out)]) == 0
    tokenizer = REINFORCE.load(out).policy.tokenizer
    allowed = lambda: {tokenizer.decode([i]) for i in REINFORCE.load(out).policy.allowed_tokens.nonzero().flatten().tolist()}  # noqa: E731
    assert {"a", "b"} <= allowed() and not {"c", "d"} & allowed()
    assert main(["--resume", str(out), "--task-kwargs", '{"length": 2, "alphabet": "cd"}', "--iterations", "2", *QUICK]) == 0
    assert "the task's allowed tokens changed since the checkpoint" in capsys.readouterr().out
    assert {"c", "d"} <= allowed() and not {"a", "b"} & allowed()
    # The same task again: the restriction is unchanged, and nothing is said.
    assert main(["--resume", str(out), "--iterations", "3", *QUICK]) == 0
    assert "allowed tokens changed" not in capsys.readouterr().out and {"c", "d"} <= allowed()


SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@pytest.mark.parametrize(
    "task, expected",
    [
        ("copy", "copy"),
        ("reasoning_gym:basic_arithmetic", "reasoning_gym-basic_arithmetic"),
        ("hf:openai/gsm8k", "hf-openai-gsm8k"),
        ("file:/tmp/../my data/x:y/set.jsonl", "file-tmp-my-data-x-y-set.jsonl"),
        ("../../etc", "etc"),
        ("..", "run"),
        ("file:/" + "a" * 300 + "/gsm8k-train.jsonl", None),
    ],
)
def test_run_directory_names_are_safe_and_recognisable(task, expected):
    name = run_name(task)
    assert SAFE.fullmatch(name) and len(name) <= 60, name
    if expected is not None:
        assert name == expected
    else:
        assert name.startswith("file-") and name.endswith("-gsm8k-train.jsonl")


def test_the_default_run_directory_is_one_safe_name_under_runs(tmp_path, monkeypatch):
    data = tmp_path / "my data" / "x:y" / "tiny set.jsonl"
    data.parent.mkdir(parents=True)
    data.write_text("".join(json.dumps({"prompt": a + b + c, "answer": c + b + a}) + "\n" for a in "abcd" for b in "abcd" for c in "abcd"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(T.time, "strftime", lambda fmt, *a: "20260101-000000")
    args = ["--model", "tiny", "--task", f"file:{data}", "--max-new-tokens", "3", "--iterations", "0", *QUICK]
    assert main(args) == 0 and main(args) == 0  # the same second twice: two runs, not one
    names = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert names == [f"{run_name(f'file:{data}')}-20260101-000000", f"{run_name(f'file:{data}')}-20260101-000000-2"]
    assert all(SAFE.fullmatch(n) and "tiny-set.jsonl" in n for n in names)
    assert latest_checkpoint(tmp_path / "runs" / names[0]) is not None
