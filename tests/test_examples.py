"""The examples run: the bandit (its baseline lowers the gradient variance) and the benchmarks' smoke modes.

The scripts start together in subprocesses (each pays the torch import once), then each test
waits for its own. No timing is asserted: the benchmarks only have to run."""

import csv
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}  # this checkout's packages
SMOKE = ["--model", "tiny", "--smoke", "--threads", "1"]
HAVE_TRL = importlib.util.find_spec("trl") is not None
HAVE_TOOL_EXTRAS = all(importlib.util.find_spec(p) is not None for p in ("mcp", "openenv"))  # the mcp and openenv extras
TINY_TRAINING = ["--model", "tiny", "--task", "sort", "--task-kwargs", '{"length": 3, "alphabet": "ab"}',
                 "--max-new-tokens", "4", "--threads", "1"]  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    png = tmp_path_factory.mktemp("bandit") / "bandit.png"
    curves = tmp_path_factory.mktemp("sample_efficiency")
    commands = {
        "bandit": ["examples/bandit.py", "--updates", "5", "--estimates", "50", "--out", str(png)],
        "rollout": ["examples/benchmarks/rollout_throughput.py", *SMOKE, "--out", str(png.with_name("rollout.json"))],
        "overhead": ["examples/benchmarks/env_overhead.py", *SMOKE],
        "multiturn": ["examples/benchmarks/multiturn_throughput.py", *SMOKE],
        "baselines": ["examples/benchmarks/baselines.py", "--model", "tiny", "--seeds", "0", "1", "--iterations", "1",
                      "--batches", "3", "--eval-episodes", "8", "--baselines", "none", "group", "value", "--threads", "1",
                      "--out", str(png.with_name("baselines.jsonl"))],
    }
    if HAVE_TOOL_EXTRAS:
        commands["tool_roundtrip"] = ["examples/benchmarks/tool_roundtrip.py", "--smoke"]
    if HAVE_TRL:  # the TRL comparisons (TRL is a bench-only extra)
        commands["sample_efficiency"] = [
            "examples/benchmarks/sample_efficiency.py", *TINY_TRAINING, "--agents", "reinforce", "reinforce-std", "reinforce-linear", "trl",
            "--updates", "3", "--eval-every", "2", "--eval-episodes", "8", "--out", str(curves),
        ]  # fmt: skip
        commands["train_throughput"] = ["examples/benchmarks/train_throughput.py", *TINY_TRAINING, "--updates", "2"]
    procs = {k: subprocess.Popen([sys.executable, *c], cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k, c in commands.items()}
    yield {k: (p, curves if k == "sample_efficiency" else png) for k, p in procs.items()}
    for p in procs.values():
        p.kill()


def output(runs, name):
    proc, png = runs[name]
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    return stdout, png


def test_bandit_baseline_lowers_gradient_variance(runs):
    stdout, png = output(runs, "bandit")
    assert png.exists() and png.stat().st_size > 0
    without, with_ = (float(v) for v in re.findall(r"tr Cov\[g\] = ([0-9.eE+-]+)", stdout))
    assert with_ < without


def test_rollout_throughput_smoke(runs):
    stdout, png = output(runs, "rollout")
    assert "| a/b |" in stdout
    (row,) = json.loads(png.with_name("rollout.json").read_text())["rows"]
    assert set(row["ratio"]) == {"a/a'", "a/b", "a/c", "a/d"}, "the static step's loop against the HF forward's, side by side"
    assert all(len(rates) == 1 and rates[0] > 0 for rates in row["tokens_per_s"].values())


def test_multiturn_throughput_smoke(runs):
    row = output(runs, "multiturn")[0].strip().splitlines()[-1]
    batch, replies, prefill, recompute, ratio = (float(v) for v in row.strip("| ").split(" | "))
    assert replies > 0, "the smoke run must exercise the environment's replies"
    assert prefill > 0 and recompute > 0 and ratio > 0


def test_tool_roundtrip_smoke(runs):
    pytest.importorskip("mcp")
    pytest.importorskip("openenv")
    rows = {line.split("  ")[0]: line for line in output(runs, "tool_roundtrip")[0].splitlines()}
    assert {"in-process", "MCP (stdio)", "OpenEnv (WebSocket)"} <= set(rows), rows


def test_env_overhead_smoke(runs):
    assert "env share" in output(runs, "overhead")[0]


@pytest.mark.skipif(not HAVE_TRL, reason="TRL (the bench extra) is not installed")
def test_sample_efficiency_scores_every_trainer_with_one_evaluator(runs):
    stdout, out = output(runs, "sample_efficiency")
    with open(out / "curves.csv") as f:
        rows = list(csv.DictReader(f))
    agents = ["reinforce", "reinforce-std", "reinforce-linear", "trl"]
    for agent in agents:
        mine = [r for r in rows if r["agent"] == agent]
        assert [int(r["update"]) for r in mine] == [0, 1, 2, 3]
        assert [int(r["samples"]) for r in mine] == [0, 16, 32, 48]  # 2 prompts x 8 samples per update
        assert [bool(r["val_reward"]) for r in mine] == [True, False, True, True]  # every 2 updates and the last
        assert all(r["train_reward"] for r in mine[1:])
    # Same starting weights + the same evaluator (prompts and seed) = the same first point for all.
    first = {r["agent"]: (r["val_reward"], r["val_length"]) for r in rows if r["update"] == "0"}
    assert len(set(first.values())) == 1, first
    assert (out / "curves.png").stat().st_size > 0 and "validation reward" in stdout
    # Everything reused (e.g. curves.json merged from two out dirs, no csv): nothing trains, all files written.
    (out / "curves.csv").unlink()
    cmd = ["examples/benchmarks/sample_efficiency.py", *TINY_TRAINING, "--agents", "reinforce", "trl", "--updates", "3",
           "--eval-every", "2", "--eval-episodes", "8", "--out", str(out)]  # fmt: skip
    again = subprocess.run([sys.executable, *cmd], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("reusing the finished run") == 2 and "s per update (sampling" not in again.stdout
    with open(out / "curves.csv") as f:
        assert list(csv.DictReader(f)) == rows


@pytest.mark.skipif(not HAVE_TRL, reason="TRL (the bench extra) is not installed")
def test_train_throughput_smoke(runs):
    assert "ratio REINFORCE / TRL GRPOTrainer" in output(runs, "train_throughput")[0]


def test_baselines_benchmark_runs_and_resumes(runs):
    stdout, png = output(runs, "baselines")
    rows = [line for line in stdout.splitlines() if line.startswith("| ")]
    assert any(r.startswith("| leave_one_out |") for r in rows), "the variance table has every grouped baseline"
    assert sum(r.startswith(("| none |", "| group |", "| value |")) for r in rows) >= 3
    again = subprocess.run([sys.executable, "examples/benchmarks/baselines.py", "--model", "tiny", "--seeds", "0", "1",
                            "--iterations", "1", "--eval-episodes", "8", "--baselines", "none", "--skip-variance",
                            "--out", str(png.with_name("baselines.jsonl"))],
                           cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert again.returncode == 0, again.stderr[-2000:]
    assert [r for r in stdout.splitlines() if r.startswith("| none |")][-1] in again.stdout, "finished runs are reused"
    # another toy in the same file is measured, not answered with the first toy's rows
    other = subprocess.run([sys.executable, "examples/benchmarks/baselines.py", "--model", "tiny", "--preset", "tiny-sort",
                            "--seeds", "0", "--iterations", "1", "--eval-episodes", "8", "--baselines", "none", "--skip-variance",
                            "--out", str(png.with_name("baselines.jsonl"))],
                           cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert other.returncode == 0, other.stderr[-2000:]
    learned = [json.loads(line) for line in png.with_name("baselines.jsonl").read_text().splitlines()]
    learned = [(r["preset"], r["baseline"], r["seed"]) for r in learned if r["kind"] == "learning"]
    assert ("tiny-sort", "none", 0) in learned and ("tiny", "none", 0) in learned and len(learned) == len(set(learned))
