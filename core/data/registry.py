"""One registry pattern for everything looked up by a prefix or a name.

As torchvision's ``register_model`` / ``get_model`` / ``list_models``: an entry is
registered once under a name (directly or as a decorator), looked up with
:meth:`Registry.get`, which raises an :class:`~core.errors.InputError` naming the
closest known names, and listed with :meth:`Registry.names`. Model kinds
(:data:`core.data.models.MODEL_KINDS`), dataset loaders
(:data:`core.data.datasets.DATASETS`) and detection-annotation loaders
(:data:`core.tasks.rcnn.DETECTION_LOADERS`) are registries; the embedded demo
registers its own entries in each (:mod:`core.demo.build`), so none of them imports it.
"""
from __future__ import annotations

import difflib
import threading
from typing import Callable, Generic, Iterator, TypeVar, overload

from core.errors import InputError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind.

    Parameters
    ----------
    kind : str
        What an entry is, for messages ("dataset prefix", "model kind"...).
    hint : str
        What a user can do when a name is unknown (examples of valid ids).

    >>> r = Registry("colour")
    >>> r.register("red", 1)
    1
    >>> r.get("red"), r.names()
    (1, ['red'])
    """

    def __init__(self, kind: str, hint: str = "") -> None:
        self.kind, self.hint = kind, hint
        self._entries: dict[str, T] = {}
        self._lock = threading.Lock()

    @overload
    def register(self, name: str, entry: None = None) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, entry: T) -> T: ...

    def register(self, name, entry=None):
        """Register ``entry`` under ``name`` (a later registration of the same name replaces it).

        Without ``entry``, returns a decorator that registers what it decorates.
        """
        if not name or ":" in name or "/" in name:
            raise InputError(f"{self.kind} {name!r} must be non-empty, without ':' or '/'")
        if entry is None:
            return lambda e: self.register(name, e)
        with self._lock:
            self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        """The entry registered under ``name``; InputError naming the closest names otherwise."""
        with self._lock:
            if name in self._entries:
                return self._entries[name]
            known = sorted(self._entries)
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise InputError(f"unknown {self.kind} {name!r}{hint} Known: {', '.join(known) or 'none'}."
                         + (f" {self.hint}" if self.hint else ""))

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        with self._lock:
            return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
