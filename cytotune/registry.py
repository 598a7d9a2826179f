"""The one registry: named things (model families, explainers, synthetic tasks, cell finders,
bundle formats, image readers) registered by a decorator and looked up by name.

Each axis keeps its own small public functions (``register_family``, ``get_family``,
``list_models``, ...) on top of one :class:`Registry` instance, in timm's
``models/_registry.py`` style. Unknown names raise ValueError naming the close matches and the
registered names; registering a second, different object under a taken name raises ValueError.

Example:
    >>> FINDERS = Registry("finder")
    >>> @FINDERS.register("classical")
    ... class Classical: ...
    >>> FINDERS.get("clasical")
    ValueError: unknown finder 'clasical' (did you mean 'classical'?); registered: classical
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

T = TypeVar("T")

__all__ = ["Registry", "close_matches"]


def close_matches(name: str, options) -> str:
    """A ``" (did you mean 'x'?)"`` hint for ``name``, or an empty string."""
    hits = difflib.get_close_matches(str(name), list(options), n=3, cutoff=0.5)
    return f" (did you mean {', '.join(repr(h) for h in hits)}?)" if hits else ""


class Registry(Generic[T]):
    """Names -> objects of one kind.

    Args:
        kind: what the names are, for messages ("model family", "explainer").
        hint: appended to the unknown-name error, e.g. how to register one of your own.
        lazy: ``{name: module}`` of built-in entries whose module registers them when first
            asked for (kept lazy because it imports something heavy); listed like the others.
        identity: what makes two registrations of one name the same (registering it again
            then replaces the entry); default: the object itself.
        name_attr: the attribute :meth:`register` sets, on what it registers, to the name
            (``"name"``: a registered class knows its name as ``cls.name``); None sets none.
    """

    def __init__(
        self,
        kind: str,
        *,
        hint: str = "",
        lazy: Mapping[str, str] | None = None,
        identity: Callable[[T], object] | None = None,
        name_attr: str | None = None,
    ):
        self.kind = kind
        self.hint = hint
        self._lazy = dict(lazy or {})
        self._identity = identity or (lambda obj: obj)
        self._name_attr = name_attr
        self._entries: dict[str, T] = {}

    def add(self, name: str, obj: T) -> T:
        """Register ``obj`` as ``name`` (the same object again replaces it); returns ``obj``."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")
        old = self._entries.get(name)
        if old is not None and self._identity(old) is not self._identity(obj):
            raise ValueError(
                f"{self.kind} {name!r} is already registered by {self._identity(old)!r}; "
                "choose another name"
            )
        self._entries[name] = obj
        return obj

    def remove(self, name: str) -> None:
        """Unregister ``name`` (a plugin's entry, say); unknown names raise ValueError."""
        self.get(name)
        del self._entries[name]

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering the decorated class or function as ``name`` (and setting its
        ``name_attr`` to ``name`` once registered)."""

        def decorator(obj: T) -> T:
            self.add(name, obj)
            if self._name_attr is not None:
                setattr(obj, self._name_attr, name)
            return obj

        return decorator

    def get(self, name: str) -> T:
        """The object registered as ``name``; unknown names raise ValueError with close matches."""
        if name not in self._entries and name in self._lazy:
            importlib.import_module(self._lazy[name])
        if name not in self._entries:
            names = self.list()
            raise ValueError(
                f"unknown {self.kind} {name!r}{close_matches(name, names)}; registered: "
                f"{', '.join(names) or 'none'}{self.hint}"
            )
        return self._entries[name]

    def list(self, pattern: str = "*") -> list[str]:
        """Registered names matching a glob ``pattern`` (``"proto*"``), sorted."""
        names = set(self._entries) | set(self._lazy)
        return sorted(n for n in names if fnmatch.fnmatchcase(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def items(self):
        return self._entries.items()

    def values(self):
        return self._entries.values()

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.list()})"
