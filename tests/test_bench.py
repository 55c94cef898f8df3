"""`textgym bench`: same seeds give the same table; the command writes its table, CSV, JSON and PNG; a
reinforce: agent samples as its run did."""

import csv
import json
import subprocess
import sys

import pytest

from agents import bench


def _rows(path):
    with open(path) as f:
        return [{k: v for k, v in row.items() if k != "tokens_per_s"} for row in csv.DictReader(f)]


def test_same_seed_same_table(tmp_path):
    common = ["--agents", "random,lm:tiny,lm-greedy:tiny", "--tasks", "copy", "--episodes", "6", "--num-envs", "4",
              "--task-kwargs", '{"length": 2, "alphabet": "abc"}', "--no-progress"]  # fmt: skip
    assert bench.main(common + ["--seed", "1", "--out", str(tmp_path / "a")]) == 0
    assert bench.main(common + ["--seed", "1", "--out", str(tmp_path / "b")]) == 0
    assert bench.main(common + ["--seed", "2", "--out", str(tmp_path / "c")]) == 0
    a, b, c = (_rows(tmp_path / d / "bench.csv") for d in "abc")
    assert a == b
    assert [r["agent"] for r in a] == ["random", "lm:tiny", "lm-greedy:tiny"]
    assert all(r["episodes"] == "6" for r in a)
    assert a != c  # another seed draws other prompts and samples
    for d in "ab":
        assert (tmp_path / d / "bench.png").stat().st_size > 0
    result = json.loads((tmp_path / "a" / "bench.json").read_text())
    assert len(result["results"]) == 3 and result["config"]["seed"] == 1


@pytest.mark.parametrize("agent", ["sb3-ppo", "sb3-a2c"])
def test_sb3_agents_skip_tasks_they_do_not_apply_to(tmp_path, capsys, agent):
    args = ["--agents", agent, "--tasks", "copy", "--episodes", "2", "--out", str(tmp_path), "--no-progress"]
    assert bench.main(args) == 0
    out = capsys.readouterr().out
    assert f"skipped {agent} on copy" in out and "toy configurations" in out
    assert json.loads((tmp_path / "bench.json").read_text())["skipped"][0]["task"] == "copy"


def test_sb3_ppo_learns_to_sort_held_out_strings(tmp_path):
    """PPO trained by the bench on the train split sorts the test split's strings, which it never saw."""
    args = ["--agents", "random,sb3-ppo", "--tasks", "sort", "--task-kwargs", '{"length": 3, "alphabet": "abc"}',
            "--max-new-tokens", "3", "--sb3-timesteps", "10000", "--split", "test", "--episodes", "16",
            "--out", str(tmp_path), "--no-progress"]  # fmt: skip
    assert bench.main(args) == 0
    rows = {r["agent"]: r for r in _rows(tmp_path / "bench.csv")}
    assert float(rows["sb3-ppo"]["accuracy"]) >= 0.9
    assert float(rows["random"]["accuracy"]) < 0.3


def test_cli_subprocess(tmp_path):
    out = tmp_path / "bench"
    cmd = [sys.executable, "-m", "textgym.cli", "bench", "--agents", "random", "--tasks", "copy", "--episodes", "8",
           "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "| random" in proc.stdout and "reward ± 95% CI" in proc.stdout
    for name in ("bench.csv", "bench.json", "bench.png"):
        assert (out / name).stat().st_size > 0
    rows = _rows(out / "bench.csv")
    assert rows[0]["agent"] == "random" and rows[0]["task"] == "copy" and rows[0]["episodes"] == "8"


def test_reinforce_agent_from_a_train_run_directory(tmp_path, capsys):
    """reinforce:<run dir> loads the checkpoint the run's `latest` names (runs write checkpoint-NNNNNN)."""
    from agents.train import main as train

    run = tmp_path / "run"
    assert train(["--model", "tiny", "--task", "copy", "--task-kwargs", '{"length": 2, "alphabet": "ab"}',
                  "--max-new-tokens", "3", "--prompts", "1", "--group-size", "2", "--eval-episodes", "2", "--temperature", "0.9",
                  "--iterations", "1", "--no-progress-bar", "--threads", "1", "--out", str(run)]) == 0  # fmt: skip
    assert not (run / "checkpoint").exists() and (run / "latest").exists()
    checkpoint = run / (run / "latest").read_text().strip()
    common = ["--tasks", "copy", "--task-kwargs", '{"length": 2, "alphabet": "ab"}', "--episodes", "4", "--no-progress"]
    agents = f"reinforce:{run},reinforce:{checkpoint}"
    assert bench.main(["--agents", agents, *common, "--out", str(tmp_path / "bench")]) == 0
    by_agent = {r["agent"]: r for r in _rows(tmp_path / "bench" / "bench.csv")}
    assert by_agent[f"reinforce:{run}"] == {**by_agent[f"reinforce:{checkpoint}"], "agent": f"reinforce:{run}"}
    # The run's own budget and sampling, as `textgym eval` of the run takes them (bench once sampled at 1.0).
    rows = json.loads((tmp_path / "bench" / "bench.json").read_text())["results"]
    assert {(r["max_new_tokens"], r["temperature"]) for r in rows} == {(3, 0.9)}
    with pytest.raises(SystemExit, match="not a textgym train run directory nor a checkpoint"):
        bench.main(["--agents", f"reinforce:{tmp_path}", *common, "--out", str(tmp_path / "bench2")])
