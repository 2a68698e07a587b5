"""Frozen request dataclasses, their stable hash, and where the cache lives."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

from core import __version__

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def cache_path() -> Path:
    """The cache directory: ``$FILTERSCOPE_CACHE`` if set, else ``<repo>/cache`` (not created)."""
    env = os.environ.get("FILTERSCOPE_CACHE")
    return Path(env).expanduser() if env else PROJECT_ROOT / "cache"


def cache_root() -> Path:
    """:func:`cache_path`, created if missing."""
    root = cache_path()
    root.mkdir(parents=True, exist_ok=True)
    return root


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
    """Hex digest that is the same across processes and runs for equal inputs."""
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
