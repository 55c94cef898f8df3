"""Tasks and rewards from outside textgym: module paths ('package.module:name') and installed packages'
entry points (groups textgym.tasks, textgym.rewards).

- a module path names a Task subclass, a function returning a Task, or a Task, for a task; a
  function for a reward; a registered family comes first ("file:", "hf:", "reasoning_gym:");
- a missing module, a module that fails to import, a missing attribute, an object of the wrong
  kind: each a one-line error that says which (the commands print it and exit before a model loads);
- an installed package's entry points are listed by `textgym tasks` / `textgym rewards` and found
  by name; a broken one is reported in the listing, not fatal, and is a clear error when asked for.
The installed package is created and pip-installed by the test, into a directory of its own.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agents import bench, evaluation
from helpers import ECHO_TASK_MODULE
from textgym.rewards import get_extractor, get_reward, list_rewards
from textgym.tasks import Task, make_task, register_task_family
from textgym.tasks.base import FAMILIES

REPO = Path(__file__).resolve().parents[1]

MODULE = ECHO_TASK_MODULE + '''
def echo_of_three(seed=0):
    return Echo(length=3, seed=seed)

ECHO = Echo(length=4)
NOT_A_TASK = 42

def first_letter_match(completion, example):
    """1.0 when the reply starts with the answer's first letter."""
    return float(completion[:1] == example.answer[:1])
'''


@pytest.fixture
def module(tmp_path, monkeypatch):
    """A module of the user's on the path (a fresh name per test: nothing is cached between tests)."""
    name = f"user_tasks_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(MODULE)
    (tmp_path / f"broken_{name}.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_a_module_path_names_a_task_class_a_factory_or_a_task(module):
    assert make_task(f"{module}:Echo").num_examples("train") == 2  # 4 problems: 2/1/1 (at least one held out each)
    assert make_task(f"{module}:Echo", length=3, seed=5).length == 3
    assert make_task(f"{module}:echo_of_three").length == 3
    task = make_task(f"{module}:ECHO", seed=2)
    assert isinstance(task, Task) and task.length == 4 and task.seed == 2
    with pytest.raises(TypeError, match=f"task '{module}:echo_of_three' has no argument.*'sed'.*did you mean 'seed'"):
        make_task(f"{module}:echo_of_three", sed=3)
    with pytest.raises(TypeError, match=f"task '{module}:Echo': .*unexpected keyword argument 'lenght'"):
        make_task(f"{module}:Echo", lenght=3)  # through its **kwargs to Task.__init__
    with pytest.raises(TypeError, match=f"task '{module}:NOT_A_TASK' is int, not a Task, a Task subclass or a function"):
        make_task(f"{module}:NOT_A_TASK")
    with pytest.raises(ImportError, match=f"task '{module}:Ech': '{module}' has no attribute 'Ech'; it has: .*Echo"):
        make_task(f"{module}:Ech")
    with pytest.raises(ImportError, match=f"importing 'broken_{module}' failed: RuntimeError: boom at import"):
        make_task(f"broken_{module}:Echo")
    with pytest.raises(ValueError, match="unknown task family 'no_such_pkg_xyz' in 'no_such_pkg_xyz:Echo'; task families: "
                                         ".*file.*nor is it a module path: .*no module named 'no_such_pkg_xyz'"):  # fmt: skip
        make_task("no_such_pkg_xyz:Echo")
    with pytest.raises(ValueError, match="unknown task family 'a b'"):
        make_task("a b:c")


def test_a_registered_family_comes_before_a_module_of_the_same_name(module):
    register_task_family(module, lambda member, **kwargs: make_task("copy", length=len(member)))
    try:
        assert make_task(f"{module}:Echo").name == "copy"  # the family's, not the module's Echo
    finally:
        FAMILIES._entries.pop(module)
    assert make_task(f"{module}:Echo").name == "echo"


def test_a_module_path_names_a_reward(module):
    fn = get_reward(f"{module}:first_letter_match")
    assert fn.__name__ == "first_letter_match" and f"{module}:first_letter_match" not in list_rewards()
    assert get_extractor(f"{module}:first_letter_match")("  ab ") == "ab"  # registered without one: the stripped text
    with pytest.raises(TypeError, match=f"reward '{module}:NOT_A_TASK' is int, not a function"):
        get_reward(f"{module}:NOT_A_TASK")
    with pytest.raises(ModuleNotFoundError, match="reward 'no_such_pkg_xyz:fn': no module named 'no_such_pkg_xyz'"):
        get_reward("no_such_pkg_xyz:fn")
    with pytest.raises(ValueError, match="unknown reward 'nope'; known rewards: .*or a module path"):
        get_reward("nope")


def test_the_commands_take_module_paths_and_refuse_bad_ones_before_loading_a_model(module, tmp_path):
    common = ["--tasks", f"{module}:Echo", "--task-kwargs", '{"length": 3}', "--episodes", "4", "--no-progress"]
    assert bench.main(["--agents", "random,lm:tiny", *common, "--reward", f"{module}:first_letter_match",
                       "--out", str(tmp_path / "bench")]) == 0  # fmt: skip
    rows = json.loads((tmp_path / "bench" / "bench.json").read_text())["results"]
    assert [r["task"] for r in rows] == [f"{module}:Echo"] * 2 and rows[0]["max_new_tokens"] == 4
    with pytest.raises(SystemExit, match="error: reward 'no_such_pkg_xyz:fn': no module named"):
        bench.main(["--agents", "lm:no-such-model", *common, "--reward", "no_such_pkg_xyz:fn", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="error: reward 'no_such_pkg_xyz:fn': no module named"):
        evaluation.main(["--model", "no-such-model", "--task", f"{module}:Echo", "--reward", "no_such_pkg_xyz:fn"])
    with pytest.raises(SystemExit, match=f"error: task '{module}:Ech': '{module}' has no attribute 'Ech'"):
        bench.main(["--agents", "random", "--tasks", f"{module}:Ech", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match=f"error: task '{module}:Ech': '{module}' has no attribute 'Ech'"):
        evaluation.main(["--model", "no-such-model", "--task", f"{module}:Ech"])


PACKAGE = '''
import textgym
from textgym import Example, Task


@textgym.register_reward("shouted", extract=lambda text: text.strip().upper() or None)
def shouted(completion, example):
    """1.0 when the reply, uppercased, is the answer uppercased."""
    return float(completion.strip().upper() == example.answer.upper())


def unregistered(completion, example):
    """Registered by the entry point's name only."""
    return 0.5


def pairs(**kwargs):
    """A task from examples."""
    return Task.from_examples("pairs", train=[("a", "A"), ("b", "B")], validation=[("c", "C")], test=[("d", "D")],
                              **kwargs)
'''

PYPROJECT = '''
[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"

[project]
name = "textgym-test-plugins"
version = "0.1"

[tool.setuptools]
py-modules = ["textgym_test_plugins"]

[project.entry-points."textgym.tasks"]
pairs = "textgym_test_plugins:pairs"
broken_task = "textgym_test_plugins_missing:Nothing"

[project.entry-points."textgym.rewards"]
shouted = "textgym_test_plugins:shouted"
shouted_too = "textgym_test_plugins:unregistered"
not_callable = "textgym_test_plugins:Example.__doc__"
broken_reward = "textgym_test_plugins_missing:fn"
'''


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A package with good and broken entry points, pip-installed into a directory of its own."""
    root = tmp_path_factory.mktemp("plugins")
    (root / "src").mkdir()
    (root / "src" / "textgym_test_plugins.py").write_text(PACKAGE)
    (root / "src" / "pyproject.toml").write_text(PYPROJECT)
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                           "--target", str(root / "site"), "."], cwd=root / "src", capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "site"), str(REPO)])}


def python(code, env):
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


def test_installed_entry_points_are_listed_and_a_broken_one_is_reported_not_fatal(installed):
    rewards = python("from textgym.cli import main; main(['rewards'])", installed)
    assert rewards.returncode == 0, rewards.stderr
    lines = {line.split()[0].rstrip(":"): line for line in rewards.stdout.splitlines()}
    assert lines["shouted"] == "shouted: 1.0 when the reply, uppercased, is the answer uppercased. [from textgym-test-plugins]"
    assert "broken_reward [from textgym-test-plugins]: error: reward 'broken_reward' (entry point " \
           "'textgym_test_plugins_missing:fn' of package 'textgym-test-plugins'): no module named" in lines["broken_reward"]  # fmt: skip
    assert "is str, not a callable" in lines["not_callable"] and "exact_match" in lines
    tasks = python("from textgym.cli import main; main(['tasks'])", installed)
    assert tasks.returncode == 0, tasks.stderr
    assert "pairs: [from textgym-test-plugins]" in tasks.stdout.splitlines()  # its description is empty
    assert "broken_task [from textgym-test-plugins]: error: task 'broken_task'" in tasks.stdout
    assert "addition: " in tasks.stdout  # the built-ins still listed


def test_installed_tasks_and_rewards_are_found_by_name(installed):
    code = """
import textgym
from textgym.rewards import get_extractor
task = textgym.make_task("pairs", reward="shouted")
print(task.num_examples("train"), task.reward("a", task.example("test", 0)))
print(get_extractor("shouted")(" d "), get_extractor("shouted_too")(" d "))  # its registered reading; none: stripped
print(textgym.get_reward("shouted_too")("x", None))
try:
    textgym.get_reward("broken_reward")
except ImportError as e:
    print("ImportError:", e)
"""
    proc = python(code, installed)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[:3] == ["2 0.0", "D d", "0.5"]
    assert "ImportError: reward 'broken_reward' (entry point 'textgym_test_plugins_missing:fn'" in proc.stdout


def test_an_installed_task_and_reward_by_name_in_eval(installed, tmp_path, monkeypatch):
    cmd = [sys.executable, "-m", "textgym.cli", "eval", "--model", "tiny", "--task", "pairs", "--reward", "shouted",
           "--split", "train", "--samples", "2", "--no-greedy", "--threads", "1", "--no-progress-bar",
           "--out", str(tmp_path / "eval")]  # fmt: skip
    proc = subprocess.run(cmd, env=installed, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "| pairs" in proc.stdout
    records = [json.loads(line) for line in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()[1:]]
    assert all(r["extracted"] == (r["completion"].strip().upper() or None) for r in records)  # the reward's reading
    # A broken entry point asked for by name: one line, before a model loads (here in process: nothing loads, so
    # nothing is registered).
    monkeypatch.syspath_prepend(installed["PYTHONPATH"].split(os.pathsep)[0])
    with pytest.raises(SystemExit, match=r"error: reward 'broken_reward' \(entry point 'textgym_test_plugins_missing:fn' "
                                         r"of package 'textgym-test-plugins'\): no module named"):  # fmt: skip
        evaluation.main(["--model", "no-such-model", "--task", "copy", "--reward", "broken_reward"])
