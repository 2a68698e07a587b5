"""Identity of requests and of the code: canonical JSON, a stable hash, the code version.

Every cache key, data fingerprint and provenance record is built from these, so equal
inputs give equal keys in every process and on every run.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

from core import __version__
from core.config import PROJECT_ROOT


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        d = {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        d["__type__"] = type(obj).__name__
        return d
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float):
        return repr(obj)
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    raise TypeError(f"cannot hash value of type {type(obj).__name__}: {obj!r}")


def to_json(obj: Any) -> str:
    """Canonical JSON of a (nested) dataclass / dict / list of plain values."""
    return json.dumps(_jsonable(obj), sort_keys=True, separators=(",", ":"))


def stable_hash(*parts: Any, length: int = 16) -> str:
    """Hex digest that is the same across processes and runs for equal inputs.

    >>> stable_hash({"b": 1, "a": 2}) == stable_hash({"a": 2, "b": 1})
    True
    """
    h = hashlib.sha256()
    for p in parts:
        h.update(to_json(p).encode())
        h.update(b"\x00")
    return h.hexdigest()[:length]


@lru_cache(maxsize=1)
def code_version() -> str:
    """Package version plus the git commit (with '+dirty' for local changes) when known."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT_ROOT,
                             capture_output=True, text=True, timeout=5)
        if rev.returncode == 0:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                   cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5)
            suffix = "+dirty" if dirty.stdout.strip() else ""
            return f"{__version__}@{rev.stdout.strip()}{suffix}"
    except (OSError, subprocess.SubprocessError):
        pass
    return __version__
