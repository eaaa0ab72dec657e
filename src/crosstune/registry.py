"""A tiny name -> object registry, shared by tasks, modalities, backbones, heads, optimizers, schedulers,
losses, methods, scores and baselines.

Why: every user-facing choice in `params.yaml` is a name; one mechanism gives every one of them
the same duplicate check and the same "unknown name, valid names are ..." error.
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from crosstune.errors import ConfigError

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

    def get(self, name: str, key: str | None = None) -> T:
        """Return the entry called ``name``; an unknown one raises a `KeyError` listing the valid names, or,
        with ``key`` (the params key that chose it, e.g. ``finetune.optimizer``), a
        :class:`~crosstune.errors.ConfigError` naming that key too."""
        if name not in self._entries:
            if key is not None:
                self.check(name, key)
            raise KeyError(f"unknown {self.kind} {name!r}; valid {self.kind} names: {self.names()}")
        return self._entries[name]

    def check(self, name: str, key: str) -> None:
        """A :class:`~crosstune.errors.ConfigError` naming ``key`` unless ``name`` is registered."""
        if name not in self._entries:
            raise ConfigError(f"params.yaml: {key}: unknown {self.kind} {name!r}; valid {self.kind} names: "
                              f"{self.names()}")

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
