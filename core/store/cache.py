"""Disk cache of analysis results (diskcache), keyed by request hash + feature fingerprints.

Values are pickled together with a SHA-256 of the pickle; an entry whose checksum or
unpickling fails is dropped with a warning and recomputed. A damaged cache database
is moved aside and a fresh one opened, so the app never crashes on a bad cache; a
folder that cannot be written is read as it is (new results kept in memory) with a
warning that says what to do.
Two callers asking for the same missing key compute it once (a cross-process lock
per key, ``flock`` on a file, released by the kernel if its holder dies); the second
waits and reads the first's result.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import pickle
import sqlite3
import tempfile
import threading
import time
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

import diskcache

from core import config
from core.config import cache_path, cache_root
from core.hashing import stable_hash

log = logging.getLogger(__name__)
T = TypeVar("T")
DEFAULT_SIZE_LIMIT = 8 * 2**30
DEFAULT_MEMO_BYTES = 256 * 2**20


class ResultCache:
    """Analysis-result cache with hit/miss counters (``hits``, ``misses``, ``dropped``).

    ``memo_bytes > 0`` (as in :func:`default_cache`) puts a bounded in-process memo of the
    verified pickles in front of the disk cache (least recently used out first): a warm
    read skips SQLite and the checksum, and still unpickles a fresh copy, so callers never
    share a mutable result. Keys include the fingerprints of the inputs, so a memoised
    value is never stale.
    """

    def __init__(self, directory: str | Path | None = None, size_limit: int = DEFAULT_SIZE_LIMIT,
                 memo_bytes: int = 0):
        self.directory = Path(directory) if directory else cache_root() / "results"
        self.size_limit = int(size_limit)
        self.memo_bytes = int(memo_bytes)
        self.hits = self.misses = self.dropped = 0
        self._local = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}
        self._memo: OrderedDict[str, bytes] = OrderedDict()
        self._memo_size = 0
        self.read_only = False
        self._cache = self._open()

    def _open(self) -> diskcache.Cache | _ReadOnlyStore:
        try:
            cache = diskcache.Cache(str(self.directory), size_limit=self.size_limit, cull_limit=2)
            cache.stats(enable=False)  # touches the database: fails here if it is damaged
            return cache
        except (sqlite3.DatabaseError, OSError) as exc:
            if (problem := _write_problem(self.directory)) is not None:
                log.warning("%s Until then the results already there are shown and new ones are computed "
                            "without being saved.", storage_problem(problem))
                self.read_only = True
                return _ReadOnlyStore(self.directory)
            aside = self.directory.with_name(f"{self.directory.name}.corrupt-{int(time.time())}")
            log.warning("result cache at %s is damaged (%s); moved to %s and starting afresh",
                        self.directory, exc, aside)
            self.directory.rename(aside)
            return diskcache.Cache(str(self.directory), size_limit=self.size_limit, cull_limit=2)

    @staticmethod
    def key(request: Any, fingerprints: Sequence[str] = ()) -> str:
        """Stable key of a frozen request dataclass plus the fingerprints of its inputs."""
        fps = tuple(fingerprints)
        try:
            return _memo_key(request, fps)  # warm pages ask for the same keys many times per run
        except TypeError:  # an unhashable request
            return _make_key(request, fps)

    def _memo_get(self, key: str) -> bytes | None:
        with self._local:
            blob = self._memo.get(key)
            if blob is not None:
                self._memo.move_to_end(key)
            return blob

    def _memo_put(self, key: str, blob: bytes) -> None:
        if len(blob) > self.memo_bytes // 4:  # a few huge values must not flush everything else
            return
        with self._local:
            old = self._memo.pop(key, None)
            self._memo_size += len(blob) - (len(old) if old is not None else 0)
            self._memo[key] = blob
            while self._memo_size > self.memo_bytes:
                self._memo_size -= len(self._memo.popitem(last=False)[1])

    def _memo_drop(self, key: str | None = None) -> None:
        with self._local:
            if key is None:
                self._memo.clear()
                self._memo_size = 0
            elif (old := self._memo.pop(key, None)) is not None:
                self._memo_size -= len(old)

    def _read(self, key: str) -> tuple[bool, Any]:
        blob = self._memo_get(key)
        if blob is not None:
            return True, pickle.loads(blob)
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
            value = pickle.loads(blob)
            self._memo_put(key, blob)
            return True, value
        except (ModuleNotFoundError, AttributeError) as exc:  # a class that has moved since it was written
            log.warning("cache entry %s was written by an older layout of the code (%s); recomputing it", key, exc)
            self._drop(key)
            return False, None
        except Exception as exc:  # noqa: BLE001 - any damage means: drop and recompute
            log.warning("cache entry %s is corrupt (%s); dropping it and recomputing", key, exc)
            self._drop(key)
            return False, None

    def _drop(self, key: str) -> None:
        self.dropped += 1
        self._memo_drop(key)
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
        self._memo_put(key, blob)

    def get_or_compute(self, request: Any, fingerprints: Sequence[str], compute: Callable[[], T],
                       on_miss: Callable[[], None] | None = None) -> T:
        """Return the cached value for ``(request, fingerprints)`` or compute, store and return it.

        ``on_miss`` is called once when the value is not cached, before waiting for another
        caller computing it or computing it here (e.g. to show progress only when needed).
        """
        key = self.key(request, fingerprints)
        found, value = self._read(key)
        if found:
            with self._local:
                self.hits += 1
            return value
        if on_miss is not None:
            on_miss()
        with self._key_lock(key):
            found, value = self._read(key)  # another caller may have finished meanwhile
            if found:
                with self._local:
                    self.hits += 1
                return value
            with self._local:
                self.misses += 1
            started = time.time()
            value = compute()
            self.put(key, value)
            _log_compute(key, started)
            return value

    @contextlib.contextmanager
    def _key_lock(self, key: str) -> Iterator[None]:
        """Exclusive lock of one key across threads and processes: ``flock`` on its own file
        (``<cache>/locks/<key>.lock``). The kernel releases it when the holder dies, so a
        process killed while computing never blocks the others (a lock stored in the cache
        would stay until it expires)."""
        if self.read_only:  # no lock files: this process is the only one that can compute and keep
            with self._local_key_lock(key):
                yield
            return
        folder = self.directory / "locks"
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"{key}.lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def _local_key_lock(self, key: str) -> Iterator[None]:
        with self._local:
            lock = self._key_locks.setdefault(key, threading.Lock())
        with lock:
            yield

    def contains(self, request: Any, fingerprints: Sequence[str]) -> bool:
        return self.key(request, fingerprints) in self._cache

    def volume(self) -> int:
        """Bytes on disk."""
        return int(self._cache.volume())

    def clear(self) -> None:
        self._memo_drop()
        self._cache.clear(retry=True)

    def close(self) -> None:
        self._cache.close()


def _write_problem(directory: Path) -> OSError | None:
    """Why nothing can be written in ``directory`` (created if missing), or None if it can."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
        if (db := directory / "cache.db").exists():
            with open(db, "r+b"):
                pass
    except OSError as exc:
        return OSError(exc.errno, exc.strerror, str(directory))
    return None


class _ReadOnlyStore:
    """What :class:`ResultCache` uses in place of ``diskcache.Cache`` over a results folder
    that cannot be written (read-only mount, immutable, no permission): the entries already
    there are read through SQLite opened immutable and decoded by diskcache's own ``Disk``;
    new entries live in this process only."""

    def __init__(self, directory: Path):
        self._disk = diskcache.Disk(str(directory))
        db = directory / "cache.db"
        self._con = (sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro&immutable=1", uri=True,
                                     check_same_thread=False) if db.exists() else None)
        self._new: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _row(self, columns: str, key: str) -> tuple | None:
        if self._con is None:
            return None
        db_key, raw = self._disk.put(key)
        with self._lock:
            return self._con.execute(f"SELECT {columns} FROM Cache WHERE key = ? AND raw = ?",
                                     (db_key, raw)).fetchone()

    def get(self, key: str, default: Any = None, retry: bool = False) -> Any:
        if key in self._new:
            return self._new[key]
        row = self._row("mode, filename, value", key)
        return default if row is None else self._disk.fetch(*row, read=False)

    def set(self, key: str, value: Any, retry: bool = False) -> None:
        self._new[key] = value

    def delete(self, key: str, retry: bool = False) -> None:
        self._new.pop(key, None)

    def __contains__(self, key: str) -> bool:  # without reading the value
        return key in self._new or self._row("1", key) is not None

    def volume(self) -> int:
        return 0

    def clear(self, retry: bool = False) -> None:
        self._new.clear()

    def close(self) -> None:
        if self._con is not None:
            self._con.close()


def _make_key(request: Any, fingerprints: tuple[str, ...]) -> str:
    return f"{type(request).__name__}-{stable_hash(request, list(fingerprints), length=32)}"


@lru_cache(maxsize=4096)
def _memo_key(request: Any, fingerprints: tuple[str, ...]) -> str:
    return _make_key(request, fingerprints)


COMPUTE_LOG_ENV = "FILTERSCOPE_COMPUTE_LOG"


def _log_compute(key: str, started: float) -> None:
    """Append one JSON line per computed (not cached) result to the file named by
    ``$FILTERSCOPE_COMPUTE_LOG``, when set: an audit of what was computed, by which
    process and thread, and when. The tests count computations across processes with it."""
    path = config.compute_log()
    if path is None:
        return
    line = json.dumps({"key": key, "pid": os.getpid(), "thread": threading.get_ident(),
                       "start": round(started, 4), "end": round(time.time(), 4)}) + "\n"
    try:
        with open(path, "a", encoding="utf-8") as fh:  # one short append: whole lines across processes
            fh.write(line)
    except OSError as exc:
        log.warning("cannot append to the compute log %s: %s", path, exc)


_DEFAULT: dict[Path, ResultCache] = {}
_DEFAULT_LOCK = threading.Lock()


def default_cache() -> ResultCache:
    """One shared ResultCache per cache directory in this process."""
    directory = cache_root() / "results"
    with _DEFAULT_LOCK:
        if directory not in _DEFAULT:
            _DEFAULT[directory] = ResultCache(directory, size_limit=config.cache_size_limit(),
                                              memo_bytes=DEFAULT_MEMO_BYTES)
        return _DEFAULT[directory]


def storage_problem(exc: OSError) -> str:
    """What an OS error while reading or writing files means for the user, and what to do.

    Errors on the cache folder (``FILTERSCOPE_CACHE``: not writable, full, removed) say so
    and how to fix it; others name the file and the reason.
    """
    root = cache_path()
    where = Path(os.fsdecode(exc.filename)) if exc.filename else None
    reason = exc.strerror or str(exc)
    if where is None or root not in (where, *where.parents):
        return f"{where or 'a file'}: {reason}. Check that it exists and can be read and written, then reload."
    what = {errno.EACCES: "cannot be written", errno.EPERM: "cannot be written", errno.EROFS: "is read-only",
            errno.ENOSPC: "is full", errno.EDQUOT: "is over its quota",
            errno.ENOENT: "has gone away"}.get(exc.errno, "cannot be used")
    return (f"The cache folder {root} {what} ({reason}: {where}). Make it writable (or free space), or restart "
            f"the app with FILTERSCOPE_CACHE set to a writable folder; what is computed so far stays usable.")

