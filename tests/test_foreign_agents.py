"""Another package named `agents` (the OpenAI Agents SDK's, `pip install openai-agents`) is found
before textgym's, or was installed over it: `textgym train/eval/bench` and `import agents` say so in
one line, with what to do, and never run the other package's code."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run(code_or_args, path_first, cwd):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(path_first), str(REPO)])}
    args = ["-c", code_or_args] if isinstance(code_or_args, str) else code_or_args
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, env=env, cwd=cwd)


def foreign_init(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').close()  # the other SDK's __init__: must never run here\nclass Agent: ...\n"


@pytest.mark.parametrize("command", ["train", "eval", "bench"])
def test_a_foreign_agents_package_first_on_the_path_is_named_not_run(tmp_path, command):
    site = tmp_path / "site"
    (site / "agents").mkdir(parents=True)
    marker = tmp_path / "foreign-agents-ran"
    (site / "agents" / "__init__.py").write_text(foreign_init(marker))
    result = run(["-m", "textgym.cli", command, "--help"], site, tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.startswith(f"error: the package `agents` that Python finds ({site / 'agents'}) is not textgym's.")
    assert "openai-agents" in result.stderr and "virtual environment" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not marker.exists(), "the foreign package's code ran"
    # What needs only textgym still works.
    assert run(["-m", "textgym.cli", "rewards"], site, tmp_path).returncode == 0


def test_the_other_sdk_installed_over_textgyms_agents_is_named(tmp_path):
    """pip installs both into one site-packages: the later one's __init__.py wins, and the SDK's
    sub-package agents/models/ shadows textgym's agents/models.py whichever came last."""
    site = tmp_path / "site"
    shutil.copytree(REPO / "agents", site / "agents", ignore=shutil.ignore_patterns("__pycache__"))
    (site / "agents" / "models").mkdir()
    (site / "agents" / "models" / "__init__.py").write_text("")
    # textgym installed last: its own __init__ runs and finds the SDK's sub-package over its module.
    result = run("import agents", site, tmp_path)
    assert result.returncode == 1 and f"has another package's agents/models/ over its own modules" in result.stderr
    assert "ImportError: textgym's package `agents`" in result.stderr
    result = run(["-m", "textgym.cli", "train", "--help"], site, tmp_path)
    assert result.returncode == 1 and result.stderr.startswith("error: textgym's package `agents`"), result.stderr
    # The SDK installed last: its __init__.py replaced textgym's.
    marker = tmp_path / "foreign-agents-ran"
    (site / "agents" / "__init__.py").write_text(foreign_init(marker))
    result = run(["-m", "textgym.cli", "train", "--help"], site, tmp_path)
    assert result.returncode == 1 and "is not textgym's" in result.stderr and not marker.exists()


def test_textgyms_own_agents_passes_the_check():
    from textgym.cli import agents_problem

    assert agents_problem() is None
