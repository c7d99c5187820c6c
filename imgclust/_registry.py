"""A small registry of named entries, shared by encoders and clusterers (as timm's model registry)."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import NotFoundError, UsageError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to entries; unknown names fail with the list of valid choices."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise UsageError(f"{self.kind} '{name}' is already registered")
        self._entries[name] = entry
        return entry

    def decorator(self, name: str) -> Callable[[T], T]:
        def wrap(entry: T) -> T:
            return self.register(name, entry)

        return wrap

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            close = fnmatch.filter(self._entries, f"*{name}*")
            hint = f"did you mean {', '.join(close)}?" if close else f"choose one of: {', '.join(self._entries)}"
            raise NotFoundError(f"unknown {self.kind} '{name}'", hint=hint) from None

    def names(self, pattern: str | None = None) -> list[str]:
        names = list(self._entries)
        return fnmatch.filter(names, pattern) if pattern else names

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def items(self):
        return self._entries.items()
