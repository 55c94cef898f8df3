"""The examples run: the bandit (its baseline lowers the gradient variance) and the benchmarks' smoke modes.

The three scripts start together in subprocesses (each pays the torch import once), then each test
waits for its own. No timing is asserted: the benchmarks only have to run."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SMOKE = ["--model", "tiny", "--smoke", "--threads", "1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    png = tmp_path_factory.mktemp("bandit") / "bandit.png"
    commands = {
        "bandit": ["examples/bandit.py", "--updates", "5", "--estimates", "50", "--out", str(png)],
        "rollout": ["examples/benchmarks/rollout_throughput.py", *SMOKE],
        "overhead": ["examples/benchmarks/env_overhead.py", *SMOKE],
    }
    procs = {k: subprocess.Popen([sys.executable, *c], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k, c in commands.items()}
    yield {k: (p, png) for k, p in procs.items()}
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
    assert "| a/b |" in output(runs, "rollout")[0]


def test_env_overhead_smoke(runs):
    assert "env share" in output(runs, "overhead")[0]
