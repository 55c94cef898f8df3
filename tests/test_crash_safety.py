"""A training run killed with SIGKILL resumes from its last checkpoint with no corrupted file and
no lost or duplicated metrics; Ctrl-C saves and exits cleanly; resumed runs replay exactly."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path


ARGS = [
    "--model", "tiny", "--task", "copy", "--task-kwargs", '{"length": 2, "alphabet": "abc"}',
    "--prompts", "2", "--group-size", "4", "--max-new-tokens", "4", "--lr", "0.003",
    "--eval-every", "1000", "--eval-episodes", "8", "--save-every", "3", "--threads", "1", "--no-progress",
]  # fmt: skip


def train(out: Path, *extra: str, wait: bool = True) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "textgym.cli", "train", *ARGS, "--out", str(out), *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
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


def test_sigkill_then_resume_loses_and_duplicates_nothing(tmp_path):
    reference = tmp_path / "reference"
    train(reference, "--iterations", "12")

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


def test_ctrl_c_saves_and_exits_cleanly(tmp_path):
    out = tmp_path / "run"
    proc = train(out, "--iterations", "500", wait=False)
    wait_for_iteration(out, proc, 2)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, output
    assert "textgym train --resume" in output
    last = metrics(out)[-1]["iteration"]
    assert (out / "latest").read_text().strip() == f"checkpoint-{last:06d}"
