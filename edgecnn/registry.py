"""One registry primitive, shared by the model zoo, the ONNX op lowerings and the TFLite
builtin records."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from edgecnn.errors import EdgecnnError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> entry table (functions or records) that refuses duplicates and lists
    itself in errors."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator: register a function under `name` (default: its own name)."""

        def decorator(fn: T) -> T:
            return self.add(name or fn.__name__, fn)

        return decorator

    def add(self, name: str, entry: T) -> T:
        """Register `entry` under `name`; a second entry of the same name is an error."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries))
            raise EdgecnnError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)
