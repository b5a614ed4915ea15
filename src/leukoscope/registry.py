"""``Registry``: the one way leukoscope keeps a set of named things (models, feature kinds, layouts,
bundle families, predict engines, explanations).

An entry registers itself where it is defined, with the ``@registry.register(name)`` decorator.
An entry whose module is heavy to import (torch, onnxruntime, ray) is also declared up front,
name -> module, so that listing the names (``--help``, an error naming the choices) imports
nothing, and the module is imported the first time the entry is asked for. A declared entry must
be registered by the module that declares it: a typo in either place fails at import, and every
registry's test checks that each declared name loads.

This module is the bottom layer: it imports nothing of leukoscope but its errors.
"""

from __future__ import annotations

import fnmatch
import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar, cast

from leukoscope.errors import ConfigError

T = TypeVar("T")
E = TypeVar("E")


class Registry(Generic[T]):
    """Names -> entries of one kind; ``what`` names the kind in messages (``"feature kind"``)."""

    def __init__(self, what: str, declared: Mapping[str, str] | None = None):
        self.what = what
        self._declared = dict(declared or {})
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[E], E]:
        """Decorator registering a class or function under ``name`` (returned as it is)."""

        def wrap(entry: E) -> E:
            self.add(name, cast(T, entry), getattr(entry, "__module__", None))
            return entry

        return wrap

    def add(self, name: str, entry: T, module: str | None = None) -> None:
        """Register ``entry`` (defined in ``module``); a declared name must come from its module."""
        if name in self._entries and self._entries[name] is not entry:
            raise ValueError(f"{self.what} {name!r} is registered twice")
        where = self._declared.get(name)
        if where is not None and module != where:
            raise ValueError(f"{self.what} {name!r} is declared in {where}, registered in {module}")
        self._entries[name] = entry

    def names(self, pattern: str = "*") -> list[str]:
        """Every name matching the glob ``pattern``, declared ones first; imports nothing."""
        return [n for n in dict.fromkeys([*self._declared, *self._entries]) if fnmatch.fnmatch(n, pattern)]

    def module(self, name: str) -> str | None:
        """Where a declared entry lives (None: not declared)."""
        return self._declared.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._declared or name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __getitem__(self, name: str) -> T:
        """The entry, its module imported on first use; a ``ConfigError`` naming the choices."""
        if name not in self._entries and name in self._declared:
            importlib.import_module(self._declared[name])
            if name not in self._entries:
                raise RuntimeError(f"{self._declared[name]} declares {self.what} {name!r} but does not "
                                   "register it")
        if name not in self._entries:
            raise ConfigError(f"unknown {self.what} {name!r}; choose from: {', '.join(self.names())}")
        return self._entries[name]

    def get(self, name: str, default: T | None = None) -> T | None:
        """The entry, or ``default`` when there is none by that name."""
        if name not in self:
            return default
        return self[name]

    def items(self) -> list[tuple[str, T]]:
        """Every entry, in ``names()`` order (imports every declaring module)."""
        return [(n, self[n]) for n in self.names()]

    def values(self) -> list[T]:
        return [entry for _, entry in self.items()]
