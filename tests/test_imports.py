"""The layering rules, read from the source: no import cycle between textgym modules at any level
(inside functions and under TYPE_CHECKING too), and textgym never imports torch or agents (except
the CLI, lazily). Static, so a cycle hidden in a function that no test calls is still found."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("textgym", "agents")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imports_of(path: Path, modules: dict[str, Path]) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) for every import in the file, however deep.

    `from a.b import c` imports a.b.c when that is a module, else a.b. A package's parent
    packages, which Python also runs, are not counted: every submodule would otherwise import its
    package's __init__, which re-exports it.
    """
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    top_level = {id(node) for node in tree.body}
    for node in tree.body:  # `if TYPE_CHECKING:` / try-blocks at module level are still module level
        if isinstance(node, (ast.If, ast.Try)):
            top_level.update(id(n) for n in ast.walk(node))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in modules else module for alias in node.names]
        else:
            continue
        found += [(target, node.lineno, id(node) in top_level) for target in targets]
    return found


def graph() -> dict[str, set[str]]:
    modules = all_modules()
    edges = {}
    for name, path in modules.items():
        edges[name] = {target for target, _, _ in imports_of(path, modules) if target in modules and target != name}
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle_between_textgym_modules():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_finder_finds_cycles_at_any_depth(tmp_path):
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    # imports inside functions and under TYPE_CHECKING are read too
    src = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from textgym.tasks import base\n" \
          "def f():\n    from textgym.rewards import core\n    import textgym.env\n"
    (tmp_path / "mod.py").write_text(src)
    global ROOT
    old, ROOT = ROOT, tmp_path
    try:
        found = imports_of(tmp_path / "mod.py", {"textgym.tasks.base": None, "textgym.rewards.core": None})
    finally:
        ROOT = old
    assert [(t, top) for t, _, top in found] == [
        ("typing", True), ("textgym.tasks.base", True), ("textgym.rewards.core", False), ("textgym.env", False)]


def test_rewards_never_import_tasks():
    edges = graph()
    bad = [(m, t) for m, targets in edges.items() if m.startswith("textgym.rewards")
           for t in targets if t.startswith("textgym.tasks")]
    assert not bad, f"rewards must not import tasks (tasks import rewards): {bad}"


@pytest.mark.parametrize("name", sorted(n for n in all_modules() if n.startswith("textgym")))
def test_textgym_never_imports_torch_or_agents(name):
    modules = all_modules()
    for target, line, top in imports_of(modules[name], modules):
        root = target.split(".")[0]
        if root in ("torch", "agents"):
            assert name == "textgym.cli" and not top, (
                f"{name}:{line} imports {target}; textgym must not import torch or agents "
                "(only textgym.cli may, inside a function)")


# The optional extras' packages, and the only textgym modules that may import them: everything else
# in textgym works without the extra installed.
EXTRAS = {"mcp": ("textgym.tools.mcp",), "openenv": ("textgym.openenv.server",), "websockets": ("textgym.openenv.client",),
          "uvicorn": ("textgym.openenv.server",), "fastapi": (), "pydantic": ("textgym.openenv.server",)}  # fmt: skip


@pytest.mark.parametrize("name", sorted(n for n in all_modules() if n.startswith("textgym")))
def test_optional_extras_are_imported_only_where_needed(name):
    modules = all_modules()
    for target, line, _ in imports_of(modules[name], modules):
        allowed = EXTRAS.get(target.split(".")[0])
        assert allowed is None or name in allowed, (
            f"{name}:{line} imports {target}, an optional extra's package; only {allowed or 'no textgym module'} may")


def test_tools_never_import_tasks():
    edges = graph()
    bad = [(m, t) for m, targets in edges.items() if m.startswith("textgym.tools") for t in targets if t.startswith("textgym.tasks")]
    assert not bad, f"textgym.tools must not import tasks (the tool tasks import tools): {bad}"


COMMANDS = ("agents.train", "agents.evaluation", "agents.bench")  # siblings over the run layer (agents.runs)


def test_the_commands_import_the_run_layer_and_not_each_other():
    """`textgym train`, `eval` and `bench` share what they share through agents.runs, never through one
    another (at any level, inside functions too): no command is built on top of another."""
    modules = all_modules()
    for name in COMMANDS:
        targets = {target for target, _, _ in imports_of(modules[name], modules)}
        assert "agents.runs" in targets, f"{name} does not import the run layer (agents.runs)"
        others = sorted(t for t in targets if t in COMMANDS and t != name)
        assert not others, f"{name} imports {others}; the commands are siblings: move what they share to agents.runs"
    assert not any(t in COMMANDS for t, _, _ in imports_of(modules["agents.runs"], modules)), "agents.runs imports a command"
