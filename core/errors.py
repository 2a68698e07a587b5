"""The project's own exceptions: every message says what is wrong and what to do."""
from __future__ import annotations


class FilterscopeError(Exception):
    """Base class of every error Filterscope raises on purpose."""


class InputError(FilterscopeError, ValueError):
    """A file, upload, path, configuration or argument given by the user is unusable.

    The message names the offending input and says how to fix it.
    """


class DataMissingError(FilterscopeError, FileNotFoundError):
    """Data or results that a request needs are not there yet (e.g. demo not built,
    features not extracted). The message says which command or button produces them."""


class CacheCorruptError(FilterscopeError):
    """A cache entry or stored feature file is damaged; callers drop it and recompute."""
