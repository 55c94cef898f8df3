"""The README's "Add a reward function" and "Add a task" the out-of-package way, followed word for word.

The snippets below are the README's text (`README_REWARD`, `README_TASK`): the test writes their
Python modules and pyproject.toml tables into a package in a temporary directory, installs it with
pip into a directory of its own (`--target`, so the machine's environment is untouched: the
README's `pip install .`), and runs the README's commands as they are, in a subprocess whose
PYTHONPATH holds that directory and this checkout. Then:
- `textgym rewards` and `textgym tasks` list the package's reward and task;
- `textgym train` trains the tiny model on the package's task with the package's reward;
- `textgym eval` of that run votes (maj@k) on the answers the reward's `extract` reads;
- the same module is taken by module path (`my_rewards:last_word_match`) without installing it.
"""

import csv
import json
import os
import re
import shlex
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

README_REWARD = '''
**From your own package.** Put the reward in a module of your package, registered with the answer
it reads (`extract`: what `textgym eval`'s maj@k votes on and the answer statistics count):

```python
# my_rewards.py
import re

import textgym


def last_word(completion):
    """The reply's last word, lowercased (None: it has none)."""
    words = re.findall(r"[a-z]+", completion.lower())
    return words[-1] if words else None


@textgym.register_reward("last_word_match", extract=last_word)
def last_word_match(completion, example):
    """1.0 when the reply's last word is the reference answer."""
    return float(last_word(completion) == example.answer.lower())
```

Every command takes it by module path, as `gym.make("module:Env-v0")` does (the module on the
`PYTHONPATH`): `textgym train --reward my_rewards:last_word_match`. Declared in your package's
`pyproject.toml`, it is found by name once the package is installed: `textgym rewards` lists it,
and `train`, `eval` and `bench` take `--reward last_word_match`:

```toml
[project.entry-points."textgym.rewards"]
last_word_match = "my_rewards:last_word_match"
```
'''

README_TASK = '''
**From your own package.** A `Task` subclass, a function that returns a Task, or a Task, in a
module of your package:

```python
# my_tasks.py
import itertools

from textgym import Example, Task


class Echo(Task):
    """Say the word back: "Say: cab" -> "cab"."""

    name = "echo"
    description = "say a word back"
    answer_chars = "abc"

    def __init__(self, length=3, **kwargs):
        super().__init__(**kwargs)
        self.length = self.max_answer_chars = length

    def all_problems(self):
        for letters in itertools.product(self.answer_chars, repeat=self.length):
            word = "".join(letters)
            yield Example(f"Say: {word}", word)
```

```toml
[project.entry-points."textgym.tasks"]
echo = "my_tasks:Echo"
```

`--task my_tasks:Echo` takes it by module path; installed, `--task echo` (with `--task-kwargs
'{"length": 4}'` for its arguments), and `textgym tasks` lists it. A name with a colon is a
registered task family first (`file:`, `hf:`, `reasoning_gym:`), else `module:attribute`. Both
together, trained and evaluated (the tiny model writes any character; the reward reads its last word):

```bash
pip install .
textgym train --model tiny --task echo --reward last_word_match --no-mask-actions --iterations 2 --out runs/echo
textgym eval --model runs/echo --samples 4 --k 1 4 --problems 3 --out runs/echo-eval
```
'''

PYPROJECT_HEAD = """[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"

[project]
name = "my-textgym-extras"
version = "0.1"

[tool.setuptools]
py-modules = ["my_rewards", "my_tasks"]
"""

BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.S)


def blocks(text, language):
    return [body for lang, body in BLOCK.findall(text) if lang == language]


def textgym_command(line):
    """A README command line as argv: `textgym ...` runs this checkout's CLI."""
    words = shlex.split(line)
    assert words[0] == "textgym", line
    return [sys.executable, "-m", "textgym.cli", *words[1:]]


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """The README's package written and pip-installed into site/; returns (root, the PYTHONPATH env)."""
    root = tmp_path_factory.mktemp("readme-extensions")
    source = root / "my-textgym-extras"
    source.mkdir()
    for text in (README_REWARD, README_TASK):
        for body in blocks(text, "python"):
            first = body.splitlines()[0]
            assert first.startswith("# ") and first.endswith(".py"), first
            (source / first[2:]).write_text(body)
    tables = [body for text in (README_REWARD, README_TASK) for body in blocks(text, "toml")]
    (source / "pyproject.toml").write_text(PYPROJECT_HEAD + "\n" + "\n".join(tables))
    (install,) = [line for line in blocks(README_TASK, "bash")[0].splitlines() if line.startswith("pip ")]
    assert install == "pip install ."
    site = root / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                           "--target", str(site), "."], cwd=source, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
    return root, env


def run(argv, cwd, env, timeout=600):
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{argv}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_the_installed_package_is_listed_trained_on_and_evaluated_by_its_own_answers(package):
    root, env = package
    assert "last_word_match: 1.0 when the reply's last word is the reference answer. [from my-textgym-extras]" in \
        run([sys.executable, "-m", "textgym.cli", "rewards"], root, env)  # fmt: skip
    assert "echo: say a word back [from my-textgym-extras]" in run([sys.executable, "-m", "textgym.cli", "tasks"], root, env)

    commands = [line for line in blocks(README_TASK, "bash")[0].splitlines() if line.startswith("textgym ")]
    assert [c.split()[1] for c in commands] == ["train", "eval"]
    trained = run(textgym_command(commands[0]) + ["--threads", "1", "--no-progress-bar"], root, env)
    assert "task echo: 8 prompts x 8 samples per update, updates 0 -> 2" in trained
    config = json.loads((root / "runs" / "echo" / "config.json").read_text())
    assert config["task"] == "echo" and config["reward"] == "last_word_match"
    evaluated = run(textgym_command(commands[1]) + ["--threads", "1", "--no-progress-bar"], root, env)
    assert "| echo" in evaluated and "maj@4" in evaluated

    def last_word(completion):  # the README's, read here without importing (and registering) the module
        words = re.findall(r"[a-z]+", completion.lower())
        return words[-1] if words else None

    records = [json.loads(line) for line in (root / "runs" / "echo-eval" / "samples.jsonl").read_text().splitlines()[1:]]
    assert records and all(r["extracted"] == last_word(r["completion"]) for r in records)  # the reward's reading
    assert any(r["extracted"] != (r["completion"].strip() or None) for r in records), "no sample tells the readings apart"
    with open(root / "runs" / "echo-eval" / "problems.csv", newline="") as f:
        problems = list(csv.DictReader(f))
    for row in problems:  # maj@4 is the commonest of those answers (first given on a tie), scored by the reward
        samples = sorted((r for r in records if r["mode"] == "sample" and r["problem"] == int(row["problem"])),
                         key=lambda r: r["sample"])  # fmt: skip
        answers = [r["extracted"] for r in samples if r["extracted"] is not None]
        if not answers:
            assert row["maj@4_answer"] == "" and float(row["maj@4"]) == 0.0
            continue
        top = max(Counter(answers).values())
        winner = next(a for a in answers if answers.count(a) == top)
        assert row["maj@4_answer"] == winner
        assert float(row["maj@4"]) == float(winner == row["reference"].lower())


def test_a_module_on_the_path_is_taken_by_module_path_without_installing(package, tmp_path):
    root, _ = package
    modules = tmp_path / "modules"  # the two modules alone: no package metadata, so no entry points
    modules.mkdir()
    for name in ("my_rewards.py", "my_tasks.py"):
        (modules / name).write_text((root / "my-textgym-extras" / name).read_text())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(modules), str(REPO)])}
    out = run([sys.executable, "-m", "textgym.cli", "train", "--model", "tiny", "--task", "my_tasks:Echo",
               "--reward", "my_rewards:last_word_match", "--iterations", "1", "--prompts", "2", "--group-size", "2",
               "--eval-episodes", "4", "--threads", "1", "--no-progress-bar", "--out", str(tmp_path / "run")], tmp_path, env)  # fmt: skip
    assert "task my_tasks:Echo" in out
    assert json.loads((tmp_path / "run" / "config.json").read_text())["reward"] == "my_rewards:last_word_match"
