"""`textgym bench`: same seeds give the same table; the command writes its table, CSV, JSON and PNG."""

import csv
import json
import subprocess
import sys

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


def test_sb3_ppo_skips_tasks_it_does_not_apply_to(tmp_path, capsys):
    args = ["--agents", "sb3-ppo", "--tasks", "copy", "--episodes", "2", "--out", str(tmp_path), "--no-progress"]
    assert bench.main(args) == 0
    out = capsys.readouterr().out
    assert "skipped sb3-ppo on copy" in out and "toy configurations" in out
    assert json.loads((tmp_path / "bench.json").read_text())["skipped"][0]["task"] == "copy"


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
