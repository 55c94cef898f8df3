"""The `textgym` command: `textgym train`, `textgym eval`, `textgym bench`, `textgym tasks`, `textgym rewards`,
`textgym serve`.

`tasks`, `rewards` and `serve` need only textgym (`serve`: and its `openenv` extra); `train`, `eval`
and `bench` live in agents/ (torch) and are imported only when asked for, so `textgym tasks` stays fast.

The import name `agents` is also the OpenAI Agents SDK's (`pip install openai-agents`): with both
installed one shadows or overwrites the other. Before importing agents the command checks, without
running it, that the package found is textgym's (`agents_problem`), and says what to do if not.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import signal
import sys
from pathlib import Path
from typing import Any

AGENTS_MARKER = "__textgym__ = True"  # a line of textgym's agents/__init__.py; other `agents` packages lack it


def _tasks(args: argparse.Namespace) -> int:
    import textgym
    from textgym.tasks.base import TASKS

    if args.reasoning_gym:
        return _reasoning_gym_tasks()
    installed = {name: _origin(ep) for name, ep in TASKS.entry_points().items()}  # before listing loads them
    for name in textgym.list_tasks():
        origin = f" [{installed[name]}]" if name in installed else ""
        try:
            task = textgym.make_task(name)
            split = next(s for s in task.SPLITS if task.num_examples(s) != 0)
            ex = task.example(split, 0)
        except Exception as e:  # an installed package's task that does not load or build: said, the others listed
            print(f"{name}{origin}: error: {e}")
            continue
        size = task.num_examples("train")
        print(f"{name}:" + "".join(f" {part}" for part in (task.description, origin.strip()) if part))
        print(f"    train examples: {'unbounded' if size is None else size}; max answer chars: {task.max_answer_chars}")
        print(f"    prompt: {task.format_prompt(ex)!r}")
        print(f"    answer: {ex.answer!r}")
    from textgym.tasks import list_task_families

    print("task families: " + ", ".join(f"{f}:<name>" for f in list_task_families())
          + " (`textgym tasks --reasoning-gym` lists reasoning-gym's datasets); any 'package.module:name' (a Task "
          "subclass, a function returning a Task, or a Task); installed packages add tasks under the entry-point "
          "group textgym.tasks")  # fmt: skip
    return 0


def _reasoning_gym_tasks() -> int:
    """One line per reasoning-gym dataset: its `make_task` name, what it generates, its options."""
    from textgym.tasks import reasoning_gym_config_fields, reasoning_gym_datasets

    try:
        names = reasoning_gym_datasets()
    except ImportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    import reasoning_gym

    for name in names:
        dataset, config = reasoning_gym.factory.DATASETS[name]
        doc = (dataset.__doc__ or config.__doc__ or "").strip().splitlines()
        options = [f for f in reasoning_gym_config_fields(name) if f not in ("size", "seed")]
        print(f"reasoning_gym:{name}: {doc[0].strip() if doc else ''}")
        print(f"    options: {', '.join(options) if options else '(none)'}")
    print(f"{len(names)} datasets; make_task('reasoning_gym:<name>', size=..., seed=..., level=..., **options)")
    return 0


def _rewards(args: argparse.Namespace) -> int:
    import textgym
    from textgym.rewards.core import REWARDS

    installed = {name: _origin(ep) for name, ep in REWARDS.entry_points().items()}  # before listing loads them
    for name in textgym.list_rewards():
        origin = f" [{installed[name]}]" if name in installed else ""
        try:
            fn = textgym.get_reward(name)
        except (ImportError, TypeError) as e:  # an installed package's reward that does not load: said, the others listed
            print(f"{name}{origin}: error: {e}")
            continue
        doc = (fn.__doc__ or "").strip().splitlines()
        print(f"{name}:" + "".join(f" {part}" for part in (doc[0] if doc else "", origin.strip()) if part))
    print("any 'package.module:function' is a reward too; installed packages add rewards under the entry-point group "
          "textgym.rewards")  # fmt: skip
    return 0


def _origin(entry_point: Any) -> str:
    from textgym.registry import package_of

    package = package_of(entry_point)
    return f"from {package}" if package else "installed"


def agents_problem(init_file: str | None = None) -> str | None:
    """Why the `agents` package Python would import is not textgym's, or None when it is.

    Looks at files only, so a foreign package's code never runs: its `__init__.py` must carry
    textgym's marker, and no sub-package of the other SDK may shadow one of textgym's modules
    (`agents/models/` beside `agents/models.py`, left by installing both into one environment).
    """
    if init_file is None:
        loaded = sys.modules.get("agents")
        if loaded is not None:
            init_file = getattr(loaded, "__file__", None)
        else:
            try:
                spec = importlib.util.find_spec("agents")
            except (ImportError, ValueError):
                spec = None
            if spec is None:
                return "the package `agents` (textgym's agents: training, evaluation) is not installed: reinstall textgym"
            init_file = spec.origin
    init = Path(init_file) if init_file else None
    where = init.parent if init is not None and init.name == "__init__.py" else init
    fix = ("The OpenAI Agents SDK (`pip install openai-agents`) also installs a top-level package `agents`, and with "
           "both installed one shadows or overwrites the other. Use textgym in a virtual environment of its own "
           "(python -m venv .venv), or `pip uninstall openai-agents` and reinstall textgym (pip install "
           "--force-reinstall --no-deps textgym)")  # fmt: skip
    try:
        ours = init is not None and init.name == "__init__.py" and AGENTS_MARKER in init.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        ours = False
    if not ours:
        return f"the package `agents` that Python finds ({where}) is not textgym's. {fix}"
    shadowed = sorted(m.stem for m in where.glob("*.py") if (where / m.stem / "__init__.py").exists())
    if shadowed:
        names = ", ".join(f"agents/{name}/" for name in shadowed)
        return f"textgym's package `agents` ({where}) has another package's {names} over its own modules. {fix}"
    return None


def _require_agents() -> None:
    problem = agents_problem()
    if problem is not None:
        raise SystemExit(f"error: {problem}")
def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object such as '{{\"digits\": 2}}', got {text!r}")
    return value


def _serve(args: argparse.Namespace) -> int:
    """Serve a task as an OpenEnv environment until Ctrl-C (or SIGTERM)."""
    try:
        from textgym.openenv.server import serve_task

        server = serve_task(args.task, host=args.host, port=args.port, split=args.split, max_sessions=args.max_sessions,
                            reward_timeout=args.reward_timeout, task_kwargs=args.task_kwargs)  # fmt: skip
    except (ImportError, ValueError, TypeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, lambda *_: server.stop())  # `kill` stops it as cleanly as Ctrl-C
    print(f"serving task {args.task!r} ({args.split}) as an OpenEnv environment at {server.url} "
          f"(sessions: ws://{server.host}:{server.port}/ws); Ctrl-C stops it", flush=True)  # fmt: skip
    try:
        while server.thread.is_alive():
            server.thread.join(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="textgym", description="Token-level text generation as Gymnasium RL.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train an LM with REINFORCE (default: SmolLM2-135M-Instruct on addition)")
    first = (argv if argv is not None else sys.argv[1:])[:1]
    if first in (["train"], ["eval"], ["bench"]):
        _require_agents()  # before anything imports it
    from_agents = first == ["train"]
    if from_agents:
        from agents.train import add_arguments

        add_arguments(p)
    pt = sub.add_parser("tasks", help="list the built-in tasks with a sample prompt and answer")
    pt.add_argument("--reasoning-gym", action="store_true", help="list reasoning-gym's datasets instead (needs reasoning-gym)")
    pe = sub.add_parser("eval", help="pass@k, maj@k, mean@k and greedy accuracy of a model (see `textgym eval --help`)")
    if first == ["eval"]:
        from agents.evaluation import add_arguments as add_eval_arguments

        add_eval_arguments(pe)
    sub.add_parser("rewards", help="list the registered reward functions")
    pb = sub.add_parser("bench", help="benchmark agents on tasks (see `textgym bench --help`)")
    if first == ["bench"]:
        from agents.bench import add_arguments as add_bench_arguments

        add_bench_arguments(pb)

    ps = sub.add_parser("serve", help="serve a task as an OpenEnv environment server (needs textgym[openenv])")
    ps.add_argument("--task", default="calculator", help="a task name from `textgym tasks` (default: calculator)")
    ps.add_argument("--task-kwargs", type=_json_object, default={}, metavar="JSON",
                    help='the task\'s arguments, e.g. \'{"digits": 2}\'')
    ps.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: 127.0.0.1, this machine only)")
    ps.add_argument("--port", type=int, default=8000, help="the port (default: 8000; 0: any free one)")
    ps.add_argument("--split", default="train", choices=["train", "validation", "test"],
                    help="the episodes' split unless a reset names one (default: train)")
    ps.add_argument("--max-sessions", type=int, default=64, help="WebSocket sessions (episodes) at once (default: 64)")
    ps.add_argument("--reward-timeout", type=float, default=10.0, help="seconds the verifier or a reply may take (default: 10)")

    args = parser.parse_args(argv)
    if args.command == "tasks":
        return _tasks(args)
    if args.command == "serve":
        return _serve(args)
    if args.command == "rewards":
        return _rewards(args)
    if args.command == "train":
        from agents.train import run

        return run(args)
    if args.command == "eval":
        from agents.evaluation import run as run_eval

        return run_eval(args)
    from agents.bench import run as run_bench

    return run_bench(args)


if __name__ == "__main__":
    sys.exit(main())
