"""A tiny name -> object registry, shared by backbones, heads, optimizers, schedulers and losses.

Why: every user-facing choice in `params.yaml` is a name; one mechanism gives every one of them
the same duplicate check and the same "unknown name, valid names are ..." error.
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind (e.g. ``"head"``), added with the :meth:`register` decorator."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator adding ``obj`` under ``name``; a second entry with the same name is an error."""

        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered; pick another name.")
            self._entries[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        """Return the entry called ``name``, or raise a `KeyError` listing the valid names."""
        if name not in self._entries:
            raise KeyError(f"unknown {self.kind} {name!r}; valid {self.kind} names: {self.names()}")
        return self._entries[name]

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
