"""`Registry`: the one name → object table type behind `register_task` and `register_reward`."""

from __future__ import annotations

from typing import Any, Callable, Generic, Iterator, TypeVar

__all__ = ["Registry", "same_function"]

T = TypeVar("T")


def same_function(a: Any, b: Any) -> bool:
    """Whether two callables are the same definition.

    Re-running a module (notebooks, `importlib.reload`) makes a new function object for the same
    definition; registering it again is a re-registration, not a clash. Lambdas never match.
    """
    if a is b:
        return True
    key = lambda f: (getattr(f, "__module__", None), getattr(f, "__qualname__", None))  # noqa: E731
    return key(a) == key(b) and key(a) != (None, None) and "<lambda>" not in str(key(a)[1])


class Registry(Generic[T]):
    """Callables registered under names, with errors that list what is there.

    Args:
        kind: what the entries are, for messages ("task", "reward").
        hint: appended to the "unknown name" error (where else names can come from).
    """

    def __init__(self, kind: str, hint: str = ""):
        self.kind = kind
        self.hint = hint
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
        """The entry called `name`; a ValueError listing the known names if there is none."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            known = ", ".join(self.names())
            raise ValueError(f"unknown {self.kind} {name!r}; known {self.kind}s: {known}{self.hint}") from None

    def name_of(self, obj: Any) -> str | None:
        """The name `obj` is registered under, or None."""
        return next((name for name, entry in self._entries.items() if entry is obj), None)

    def names_of(self, obj: Any) -> list[str]:
        """Every name `obj` is registered under, in the order they were registered."""
        return [name for name, entry in self._entries.items() if entry is obj]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
