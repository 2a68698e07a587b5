"""Stored features of a model on an image set: extracted on first use, on the local or the Ray backend.

:func:`features` and :func:`extract_all` extract what is missing (one lock per model and
image set), :func:`pooled` gives spatially max-pooled features (Sec. 4), and
:func:`compute_backend` picks where extraction runs for a ``with`` block.
"""
from __future__ import annotations

import contextlib
import contextvars
import json
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from core.store import extraction
from core.config import cache_root
from core.data.datasets import ImageSet
from core.errors import InputError
from core.store.extraction import Progress
from core.data.models import LoadedModel
from core.service.catalog import _LOCK, layers_of, load_model, load_set, task


@dataclass(frozen=True)
class ComputeBackend:
    """Where missing features are extracted: ``local`` (default) or ``ray``.

    For Ray, ``address`` is a running cluster (``auto``, ``host:port``) or None for a
    local Ray on this machine's CPUs; ``num_actors`` defaults to one per GPU or CPU.
    """

    name: str = "local"
    address: str | None = None
    num_actors: int | None = None


_BACKEND: contextvars.ContextVar[ComputeBackend] = contextvars.ContextVar("compute_backend",
                                                                          default=ComputeBackend())


@contextlib.contextmanager
def compute_backend(name: str = "local", address: str | None = None, num_actors: int | None = None):
    """Extract features needed inside the ``with`` block on this backend (this thread/context)."""
    token = _BACKEND.set(ComputeBackend(name, address or None, num_actors))
    try:
        yield
    finally:
        _BACKEND.reset(token)


def _extract(model_id: str, dataset_id: str, layers: Sequence[str], device: str, progress: Progress | None,
             backend: ComputeBackend | str | None) -> dict[str, extraction.LayerFeatures]:
    b = ComputeBackend(backend) if isinstance(backend, str) else (backend or _BACKEND.get())
    if b.name == "local":
        return extraction.extract(load_model(model_id), load_set(dataset_id), list(layers),
                                  device=device, progress=progress)
    if b.name == "ray":
        from core.store import ray_backend as distributed
        return distributed.extract_ray(load_model(model_id), load_set(dataset_id), list(layers), address=b.address,
                                       num_actors=b.num_actors, device=device, progress=progress)
    raise InputError(f"unknown compute backend '{b.name}'; use local or ray")


def features(model_id: str, dataset_id: str, layer: str, *, progress: Progress | None = None,
             device: str = "auto", backend: ComputeBackend | str | None = None) -> extraction.LayerFeatures:
    """Stored features of one layer (extracted on first use, on ``backend`` or the context's)."""
    lm, data = load_model(model_id), load_set(dataset_id)
    stored = _stored_features(lm, data, layer)
    if stored is not None:
        return stored
    with _extract_lock(model_id, dataset_id):
        return _extract(model_id, dataset_id, [layer], device, progress, backend)[layer]


_OPENED: dict[str, tuple[tuple, extraction.LayerFeatures]] = {}


def _file_signature(npy) -> tuple | None:
    try:
        a, b = npy.stat(), npy.with_suffix(".json").stat()
    except OSError:
        return None
    return a.st_mtime_ns, a.st_size, a.st_ino, b.st_mtime_ns, b.st_size, b.st_ino


def _features_dir(lm: LoadedModel, data: ImageSet):
    spec = lm.spec
    key = (str(cache_root()), spec.name, *spec.identity(), data.name, data.fingerprint)
    with _LOCK:
        found = _DIRS.get(key)
    if found is None:
        found = extraction.features_dir(lm, data)
        with _LOCK:
            _DIRS[key] = found
    return found


_DIRS: dict[tuple, Any] = {}


def _stored_features(lm: LoadedModel, data: ImageSet, layer: str) -> extraction.LayerFeatures | None:
    """:func:`extraction.load_features`, remembered per file while the files are unchanged
    (warm pages ask for the same layers many times; a re-extraction replaces the files)."""
    npy = _features_dir(lm, data) / f"{layer}.npy"
    sig = _file_signature(npy)
    with _LOCK:
        seen = _OPENED.get(str(npy))
    if sig is not None and seen is not None and seen[0] == sig:
        return seen[1]
    stored = extraction.load_features(lm, data, layer)
    if stored is not None and sig is not None:
        with _LOCK:
            if len(_OPENED) > 4096:
                _OPENED.clear()
            _OPENED[str(npy)] = (sig, stored)
    return stored


def extract_all(model_id: str, dataset_id: str, layers: Sequence[str], *, progress: Progress | None = None,
                device: str = "auto", backend: ComputeBackend | str | None = None,
                ) -> dict[str, extraction.LayerFeatures]:
    """Extract several layers in one pass (missing ones only) on ``backend`` (default: local)."""
    with _extract_lock(model_id, dataset_id):
        return _extract(model_id, dataset_id, layers, device, progress, backend)


def is_extracted(model_id: str, dataset_id: str, layer: str) -> bool:
    """True when the features of ``layer`` on ``dataset_id`` are stored and intact (nothing is computed)."""
    return _stored_features(load_model(model_id), load_set(dataset_id), layer) is not None


_EXTRACT_LOCKS: dict[tuple[str, str], threading.Lock] = {}


def _extract_lock(model_id: str, dataset_id: str) -> threading.Lock:
    with _LOCK:
        return _EXTRACT_LOCKS.setdefault((model_id, dataset_id), threading.Lock())


def pooled(model_id: str, dataset_id: str, layer: str, progress: Progress | None = None) -> tuple[np.ndarray, str]:
    """Spatially max-pooled features ``[N, F]`` float32 (Sec. 4) and their fingerprint."""
    f = features(model_id, dataset_id, layer, progress=progress)
    return _pooled(str(f.path), json.dumps(f.manifest, sort_keys=True)).copy(), f.fingerprint


@lru_cache(maxsize=16)
def _pooled(path: str, manifest: str) -> np.ndarray:
    """Max-pooled features of one stored layer (by path and manifest, whose fingerprint changes
    with every new extraction): the maxima stored beside the maps (format 2), or taken from the
    maps of an older store; callers get copies."""
    return np.asarray(extraction.LayerFeatures(Path(path), json.loads(manifest)).maxima(), dtype=np.float32)


def cache_status(model_id: str, task_id: str) -> list[dict]:
    """Which layers are extracted for the task's train/test splits."""
    t = task(task_id)
    return [{"layer": l, "train extracted": is_extracted(model_id, t.train, l),
             "test extracted": is_extracted(model_id, t.test, l)} for l in layers_of(model_id)]
