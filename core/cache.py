"""Disk cache of analysis results (diskcache), keyed by request hash + feature fingerprints.

Values are pickled together with a SHA-256 of the pickle; an entry whose checksum or
unpickling fails is dropped with a warning and recomputed. A damaged cache database
is moved aside and a fresh one opened, so the app never crashes on a bad cache.
Two callers asking for the same missing key compute it once (a cross-process lock
per key); the second waits and reads the first's result.
"""
from __future__ import annotations

import hashlib
import logging
import pickle
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import diskcache

from core.config import cache_root, stable_hash

log = logging.getLogger(__name__)
T = TypeVar("T")
DEFAULT_SIZE_LIMIT = 8 * 2**30


class ResultCache:
    """Analysis-result cache with hit/miss counters (``hits``, ``misses``, ``dropped``)."""

    def __init__(self, directory: str | Path | None = None, size_limit: int = DEFAULT_SIZE_LIMIT):
        self.directory = Path(directory) if directory else cache_root() / "results"
        self.size_limit = int(size_limit)
        self.hits = self.misses = self.dropped = 0
        self._local = threading.Lock()
        self._cache = self._open()

    def _open(self) -> diskcache.Cache:
        try:
            cache = diskcache.Cache(str(self.directory), size_limit=self.size_limit, cull_limit=2)
            cache.stats(enable=False)  # touches the database: fails here if it is damaged
            return cache
        except (sqlite3.DatabaseError, OSError) as exc:
            aside = self.directory.with_name(f"{self.directory.name}.corrupt-{int(time.time())}")
            log.warning("result cache at %s is damaged (%s); moved to %s and starting afresh",
                        self.directory, exc, aside)
            self.directory.rename(aside)
            return diskcache.Cache(str(self.directory), size_limit=self.size_limit, cull_limit=2)

    @staticmethod
    def key(request: Any, fingerprints: Sequence[str] = ()) -> str:
        """Stable key of a frozen request dataclass plus the fingerprints of its inputs."""
        return f"{type(request).__name__}-{stable_hash(request, list(fingerprints), length=32)}"

    def _read(self, key: str) -> tuple[bool, Any]:
        try:
            raw = self._cache.get(key, default=None, retry=True)
        except (sqlite3.DatabaseError, OSError, pickle.UnpicklingError, EOFError) as exc:
            log.warning("cache entry %s unreadable (%s); recomputing", key, exc)
            self._drop(key)
            return False, None
        if raw is None:
            return False, None
        try:
            digest, blob = raw
            if hashlib.sha256(blob).hexdigest() != digest:
                raise ValueError("checksum mismatch")
            return True, pickle.loads(blob)
        except Exception as exc:  # noqa: BLE001 - any damage means: drop and recompute
            log.warning("cache entry %s is corrupt (%s); dropping it and recomputing", key, exc)
            self._drop(key)
            return False, None

    def _drop(self, key: str) -> None:
        self.dropped += 1
        try:
            self._cache.delete(key, retry=True)
        except (sqlite3.DatabaseError, OSError):
            pass

    def get(self, key: str) -> tuple[bool, Any]:
        """``(found, value)`` without computing."""
        return self._read(key)

    def put(self, key: str, value: Any) -> None:
        blob = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        self._cache.set(key, (hashlib.sha256(blob).hexdigest(), blob), retry=True)

    def get_or_compute(self, request: Any, fingerprints: Sequence[str], compute: Callable[[], T]) -> T:
        """Return the cached value for ``(request, fingerprints)`` or compute, store and return it."""
        key = self.key(request, fingerprints)
        found, value = self._read(key)
        if found:
            with self._local:
                self.hits += 1
            return value
        with diskcache.Lock(self._cache, f"lock:{key}", expire=3600):
            found, value = self._read(key)  # another caller may have finished meanwhile
            if found:
                with self._local:
                    self.hits += 1
                return value
            with self._local:
                self.misses += 1
            value = compute()
            self.put(key, value)
            return value

    def contains(self, request: Any, fingerprints: Sequence[str]) -> bool:
        return self.key(request, fingerprints) in self._cache

    def volume(self) -> int:
        """Bytes on disk."""
        return int(self._cache.volume())

    def clear(self) -> None:
        self._cache.clear(retry=True)

    def close(self) -> None:
        self._cache.close()


_DEFAULT: dict[Path, ResultCache] = {}
_DEFAULT_LOCK = threading.Lock()


def default_cache() -> ResultCache:
    """One shared ResultCache per cache directory in this process."""
    directory = cache_root() / "results"
    with _DEFAULT_LOCK:
        if directory not in _DEFAULT:
            import os

            limit = int(float(os.environ.get("FILTERSCOPE_CACHE_GB", DEFAULT_SIZE_LIMIT / 2**30)) * 2**30)
            _DEFAULT[directory] = ResultCache(directory, size_limit=limit)
        return _DEFAULT[directory]
