"""Named registries whose built-in entries register themselves when their module is
imported: backends (``--format``) and frontends (``--method``) use one each.

The modules that define dexport's own entries are imported on the first lookup, not
when the registry is created, so importing a package stays cheap and free of cycles.
"""
from __future__ import annotations

import importlib
from typing import Generic, TypeVar

from dexport.ir.errors import DexportError

T = TypeVar("T")


class Registry(Generic[T]):
    """``unknown`` formats the error for a missing name (with ``{name}``); ``error`` is
    the DexportError subclass raised."""

    def __init__(self, builtin_modules: tuple[str, ...], *, unknown: str,
                 error: type[DexportError] = DexportError):
        self.builtin_modules = builtin_modules
        self.unknown, self.error = unknown, error
        self._entries: dict[str, T] = {}
        self._builtins_loaded = False

    def load_builtins(self) -> None:
        if not self._builtins_loaded:
            self._builtins_loaded = True
            for module in self.builtin_modules:
                importlib.import_module(module)

    def register(self, name: str, entry: T) -> T:
        """Registering a name again replaces it."""
        if not name:
            raise self.error(f"{type(entry).__name__} has no name", hint="set the class attribute 'name'")
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def names(self) -> list[str]:
        self.load_builtins()
        return sorted(self._entries)

    def entries(self) -> list[T]:
        return [self._entries[n] for n in self.names()]

    def builtins(self) -> list[T]:
        """The entries dexport ships (not ones registered by users or tests)."""
        return [e for e in self.entries() if type(e).__module__ in self.builtin_modules]

    def get(self, name: str) -> T:
        self.load_builtins()
        entry = self._entries.get(name)
        if entry is None:
            raise self.error(self.unknown.format(name=name), hint=f"use one of: {', '.join(self.names())}")
        return entry


__all__ = ["Registry"]
