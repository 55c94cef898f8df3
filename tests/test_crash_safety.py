"""A training run killed with SIGKILL resumes from its last checkpoint with no corrupted file and
no lost or duplicated metrics; Ctrl-C and SIGTERM (what torchrun, SLURM and Kubernetes send before a
kill) save at an iteration boundary and exit with 130 / 143, also when the process was started with
SIGINT ignored (as a shell starts background jobs); resumed runs replay the uninterrupted one."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


ARGS = [
    "--model", "tiny", "--task", "copy", "--task-kwargs", '{"length": 2, "alphabet": "abc"}',
    "--prompts", "2", "--group-size", "4", "--max-new-tokens", "4", "--lr", "0.003",
    "--eval-every", "1000", "--eval-episodes", "8", "--save-every", "3", "--threads", "1", "--no-progress-bar",
]  # fmt: skip


REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}  # this checkout


def ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # what `cmd &` in a non-interactive shell does


def default_sigint() -> None:
    # What a terminal gives a foreground command. Set explicitly: the child would otherwise inherit
    # whatever pytest (or its xdist worker) was started with, e.g. SIGINT ignored in a background job.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def train(out: Path, *extra: str, wait: bool = True, sigint_ignored: bool = False) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "textgym.cli", "train", *ARGS, "--out", str(out), *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV,
                            preexec_fn=ignore_sigint if sigint_ignored else default_sigint)  # fmt: skip
    if wait:
        output, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, output
    return proc


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def wait_for_iteration(out: Path, proc: subprocess.Popen, iteration: int) -> None:
    deadline = time.time() + 300
    while time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        path = out / "metrics.jsonl"
        if path.exists():
            lines = path.read_text().splitlines()
            if lines and lines[-1].strip() and json.loads(lines[-1]).get("iteration", 0) >= iteration:
                return
        time.sleep(0.05)
    raise TimeoutError(f"training did not reach iteration {iteration}")


def deterministic(rows: list[dict]) -> list[tuple]:
    return [(r["iteration"], r.get("train_reward"), r.get("grad_norm"), r.get("sample_completion")) for r in rows]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 12-iteration run, in this process (it needs no process of its own to be killed)."""
    from textgym.cli import main

    out = tmp_path_factory.mktemp("reference") / "run"
    assert main(["train", *ARGS, "--out", str(out), "--iterations", "12"]) == 0
    return out


def test_sigkill_then_resume_loses_and_duplicates_nothing(tmp_path, reference):

    killed = tmp_path / "killed"
    proc = train(killed, "--iterations", "12", wait=False)
    wait_for_iteration(killed, proc, 7)  # past the checkpoint at 6, before the one at 9
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    latest = (killed / "latest").read_text().strip()
    assert latest.startswith("checkpoint-") and (killed / latest / "agent.pt").exists()

    train(killed, "--resume", str(killed))
    rows = metrics(killed)
    assert [r["iteration"] for r in rows] == list(range(13)), "each iteration logged exactly once"
    assert deterministic(rows) == deterministic(metrics(reference)), "the resumed run replays the uninterrupted one"
    assert (killed / "latest").read_text().strip() == "checkpoint-000012"
    assert not [p for p in killed.iterdir() if ".tmp" in p.name]


@pytest.mark.parametrize("sigint_ignored", [False, True], ids=["foreground", "background-job"])
def test_ctrl_c_saves_and_exits_cleanly(tmp_path, sigint_ignored):
    out = tmp_path / "run"
    proc = train(out, "--iterations", "500", wait=False, sigint_ignored=sigint_ignored)
    wait_for_iteration(out, proc, 2)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, output
    assert "textgym train --resume" in output
    last = metrics(out)[-1]["iteration"]
    assert (out / "latest").read_text().strip() == f"checkpoint-{last:06d}"


def test_sigterm_saves_then_resume_equals_an_uninterrupted_run(tmp_path, reference):
    out = tmp_path / "run"
    proc = train(out, "--iterations", "12", wait=False)
    wait_for_iteration(out, proc, 4)  # past the checkpoint at 3, before the one at 6
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 143, output
    assert "SIGTERM" in output and "checkpoint saved" in output
    stopped = metrics(out)[-1]["iteration"]
    assert stopped < 12 and (out / "latest").read_text().strip() == f"checkpoint-{stopped:06d}"

    train(out, "--resume", str(out))
    rows = metrics(out)
    assert [r["iteration"] for r in rows] == list(range(13))
    assert deterministic(rows) == deterministic(metrics(reference))
