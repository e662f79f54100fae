"""One registry style for everything built by name (models, losses, optimisers, tasks), with one `suggest()`."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar

from segladder.errors import ConfigError

T = TypeVar("T")


def suggest(name: str, choices: Sequence[str], n: int = 3) -> str:
    """' Did you mean: a, b?' for the closest names (case-insensitive as a fallback), or '' when none is close."""
    choices = list(choices)
    close = difflib.get_close_matches(name, choices, n=n, cutoff=0.5)
    if not close:
        lowered = {c.lower(): c for c in choices}
        close = [lowered[c] for c in difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.5)]
    return f" Did you mean: {', '.join(close)}?" if close else ""


class Registry(Generic[T]):
    """Named entries of one kind, added with `@REGISTRY.register(name)`, looked up with `REGISTRY.get(name)`.

    Args:
        kind: what an entry is, for messages ("model", "loss", "optimiser", "task").
        error: the `ConfigError` subclass raised for an unknown name.
        where: where a user sees all names (appended to the unknown-name message).
    """

    def __init__(self, kind: str, error: type[ConfigError] = ConfigError, where: str = ""):
        self.kind, self.error, self.where = kind, error, where
        self._entries: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator: add the decorated object under `name` (default: its `__name__`)."""

        def decorator(obj: T) -> T:
            self.add(name or obj.__name__, obj)
            return obj

        return decorator

    def add(self, name: str, obj: T) -> T:
        """Add `obj` under `name`; a name registered twice is an error. Returns `obj`."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = obj
        return obj

    def get(self, name: str) -> T:
        """The entry `name`; an error naming the closest names when there is none."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            hint = suggest(str(name), self.names()) or f" Known: {', '.join(self.names())}."
            raise self.error(f"unknown {self.kind} {name!r}.{hint}{self.where}") from None

    def names(self) -> list[str]:
        """The registered names, in the order they were added."""
        return list(self._entries)

    def items(self) -> list[tuple[str, T]]:
        """The (name, entry) pairs, in the order they were added."""
        return list(self._entries.items())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __len__(self) -> int:
        return len(self._entries)
