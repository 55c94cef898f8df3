"""`Registry`: the one name → object table type behind `register_task` and `register_reward`, and
how names reach objects defined outside textgym.

A name is looked up in this order:
1. the objects registered in this process (`register_task`, `register_reward`, the built-ins);
2. the entry points installed packages declare in the registry's group (`textgym.tasks`,
   `textgym.rewards`): `[project.entry-points."textgym.rewards"] my_reward = "my_pkg.rewards:my_reward"`.
   They are listed with the registered names and loaded when first asked for by name;
3. (by the callers, for names with a colon) a module path, `package.module:attribute`, as
   `gym.make("module:Env-v0")` does: `load_attribute` imports the module and takes the attribute.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
from typing import Any, Callable, Generic, Iterator, TypeVar

__all__ = ["Registry", "same_function", "load_attribute", "is_module_path", "package_of"]

T = TypeVar("T")

# `package.module:attribute.path`: Python names separated by dots, one colon between module and attribute.
MODULE_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def same_function(a: Any, b: Any) -> bool:
    """Whether two callables are the same definition.

    Re-running a module (notebooks, `importlib.reload`) makes a new function object for the same
    definition; registering it again is a re-registration, not a clash. Lambdas never match.
    """
    if a is b:
        return True
    key = lambda f: (getattr(f, "__module__", None), getattr(f, "__qualname__", None))  # noqa: E731
    return key(a) == key(b) and key(a) != (None, None) and "<lambda>" not in str(key(a)[1])


def is_module_path(text: Any) -> bool:
    """Whether `text` has the form `package.module:attribute` (it says nothing of whether it imports)."""
    return isinstance(text, str) and MODULE_PATH.fullmatch(text) is not None


def load_attribute(path: str, what: str) -> Any:
    """The object `package.module:attribute` names: the module imported, the attribute taken.

    `what` names the object in errors ("task 'my_pkg.tasks:Sum'"). A module that is not there is a
    ModuleNotFoundError; one that fails while importing, or lacks the attribute, an ImportError
    (with its error, or the module's public names): each says which.
    """
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise ModuleNotFoundError(f"{what}: no module named {e.name!r} (is its package installed, or its "
                                      "directory on PYTHONPATH?)", name=e.name) from None  # fmt: skip
        raise ImportError(f"{what}: importing {module_name!r} failed: {type(e).__name__}: {e}") from e
    except Exception as e:  # the user's module raised while running: say so, with its error
        raise ImportError(f"{what}: importing {module_name!r} failed: {type(e).__name__}: {e}") from e
    obj: Any = module
    for depth, part in enumerate(attribute.split(".")):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            owner = ".".join([module_name, *attribute.split(".")[:depth]])
            names = sorted(n for n in dir(obj) if not n.startswith("_"))
            raise ImportError(f"{what}: {owner!r} has no attribute {part!r}; it has: {', '.join(names) or 'nothing public'}",
                              name=module_name) from None  # as `from module import name` says it
    return obj


class Registry(Generic[T]):
    """Callables registered under names, with errors that list what is there.

    Args:
        kind: what the entries are, for messages ("task", "reward").
        hint: appended to the "unknown name" error (where else names can come from).
        group: the entry-point group installed packages declare entries in ("textgym.tasks"); None: none.
        adapt: `adapt(obj, what) -> entry` turns an entry point's object into an entry, raising a
            TypeError that names `what` when it cannot be one (default: it must be callable).
    """

    def __init__(self, kind: str, hint: str = "", *, group: str | None = None,
                 adapt: Callable[[Any, str], T] | None = None):  # fmt: skip
        self.kind = kind
        self.hint = hint
        self.group = group
        self.adapt = adapt or self._callable
        self._entries: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None, *, overwrite: bool = False) -> Any:
        """Register `obj` under `name`; without `obj`, return a decorator that does.

        The same definition again is a no-op; a different one under a taken name raises
        ValueError unless `overwrite=True`.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")

        def add(entry: T) -> T:
            if not callable(entry):
                raise TypeError(f"{self.kind} {name!r} must be callable, got {type(entry).__name__}")
            old = self._entries.get(name)
            if old is not None and not overwrite and not same_function(old, entry):
                raise ValueError(
                    f"a different {self.kind} is already registered as {name!r}; pick another name or pass overwrite=True"
                )
            self._entries[name] = entry
            return entry

        return add if obj is None else add(obj)

    def get(self, name: str) -> T:
        """The entry called `name` (an installed package's entry point is loaded now); a ValueError
        listing the known names if there is none, an ImportError if its entry point fails to load."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            pass
        declared = self.entry_points().get(name) if isinstance(name, str) else None
        if declared is None:
            known = ", ".join(self.names())
            raise ValueError(f"unknown {self.kind} {name!r}; known {self.kind}s: {known}{self.hint}")
        return self._load(name, declared)

    def _load(self, name: str, entry_point: importlib.metadata.EntryPoint) -> T:
        package = package_of(entry_point)
        what = f"{self.kind} {name!r} (entry point {entry_point.value!r} of {f'package {package!r}' if package else 'an installed package'})"
        try:
            obj = load_attribute(entry_point.value, what) if is_module_path(entry_point.value) else entry_point.load()
        except ImportError:
            raise
        except Exception as e:
            raise ImportError(f"{what} failed to load: {type(e).__name__}: {e}") from e
        if name in self._entries:  # its module registered it while being imported
            return self._entries[name]
        entry = self.adapt(obj, what)
        self._entries[name] = entry
        return entry

    def _callable(self, obj: Any, what: str) -> T:
        if not callable(obj):
            raise TypeError(f"{what} is {type(obj).__name__}, not a callable")
        return obj

    def entry_points(self) -> dict[str, importlib.metadata.EntryPoint]:
        """The entry points installed packages declare in this registry's group and that are not
        registered yet, by name (the first found where two packages declare one name)."""
        if self.group is None:
            return {}
        found: dict[str, importlib.metadata.EntryPoint] = {}
        for entry_point in importlib.metadata.entry_points(group=self.group):
            if entry_point.name not in self._entries:
                found.setdefault(entry_point.name, entry_point)
        return found

    def load_entry_points(self) -> dict[str, str]:
        """Load every declared entry point; {name: why it failed} for those that did not (a broken
        package is reported, the others still load)."""
        failed = {}
        for name, entry_point in self.entry_points().items():
            try:
                self._load(name, entry_point)
            except (ImportError, TypeError) as e:
                failed[name] = str(e)
        return failed

    def name_of(self, obj: Any) -> str | None:
        """The name `obj` is registered under, or None."""
        return next((name for name, entry in self._entries.items() if entry is obj), None)

    def names_of(self, obj: Any) -> list[str]:
        """Every name `obj` is registered under, in the order they were registered."""
        return [name for name, entry in self._entries.items() if entry is obj]

    def names(self) -> list[str]:
        """The registered names and those installed packages declare (not loaded by listing)."""
        return sorted({*self._entries, *self.entry_points()})

    def registered(self, name: str) -> bool:
        """Whether `name` is registered in this process (declared entry points not loaded do not count)."""
        return name in self._entries

    def __contains__(self, name: object) -> bool:
        return name in self._entries or (isinstance(name, str) and name in self.entry_points())

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())


def package_of(entry_point: importlib.metadata.EntryPoint) -> str | None:
    """The name of the installed package that declares an entry point (None where unknown)."""
    dist = getattr(entry_point, "dist", None)
    return None if dist is None else dist.name
