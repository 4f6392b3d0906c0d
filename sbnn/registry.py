"""One name → entry table for each open set of the project: estimators, data sets, neuron models and
simulation backends.  Adding one is one new module plus one ``register`` call (docs/extending.md)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries of one kind by name, in registration order (the built-in ones first).

    ``kind`` names the entries in messages (``"data set"``); ``unknown`` formats the error for a name that
    is not registered, from ``name`` (the name asked for, ``repr``-ed) and ``names`` (the registered ones,
    comma-separated) — each registry keeps the wording its users know.  ``check`` validates an entry before
    it is registered (raise ``TypeError``/``ValueError``).
    """

    def __init__(self, kind: str, *, unknown: str | None = None,
                 check: Callable[[str, T], None] | None = None) -> None:
        self.kind = kind
        self._unknown = unknown or f"unknown {kind} {{name}}; choose one of {{names}}"
        self._check = check
        self._entries: dict[str, T] = {}
        self._built_in: frozenset[str] = frozenset()

    def register(self, name: str, entry: T, *, replace: bool = False) -> T:
        """Make ``entry`` known as ``name``; returns it.  A name already taken is refused unless ``replace``."""
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"a{'n' if self.kind[0] in 'aeiou' else ''} {self.kind}'s name must be an "
                             f"identifier, got {name!r}")
        if name in self._entries and not replace:
            raise ValueError(f"{self.kind} {name!r} is registered already")
        if self._check is not None:
            self._check(name, entry)
        self._entries[name] = entry
        return entry

    def seal_built_ins(self) -> None:
        """Mark every entry registered so far as built in: :meth:`unregister` refuses them."""
        self._built_in = frozenset(self._entries)

    def unregister(self, name: str) -> None:
        """Forget a registered entry (the built-in ones stay)."""
        if name in self._built_in:
            raise ValueError(f"{self.kind} {name!r} is built in")
        self._entries.pop(name, None)

    def get(self, name: str) -> T:
        """The entry called ``name``; ``ValueError`` in the registry's own words when there is none."""
        entry = self._entries.get(name) if isinstance(name, str) else None
        if entry is None:
            raise ValueError(self._unknown.format(name=repr(name), names=", ".join(self._entries),
                                                  names_tuple=tuple(self._entries)))
        return entry

    def names(self) -> tuple[str, ...]:
        """The registered names, the built-in ones first."""
        return tuple(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(tuple(self._entries.items()))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __getitem__(self, name: str) -> T:
        return self._entries[name]
