"""Shared helpers of the analysis package: array conversion, validation, chunk planning.

Every public analysis function accepts numpy arrays or torch tensors (on any device),
computes in torch on the input's device and returns numpy.
"""
from __future__ import annotations

import warnings
from typing import Any, Union

import numpy as np
import torch

from core.errors import InputError

ArrayLike = Union[np.ndarray, torch.Tensor]

#: Default budget (number of elements of the largest intermediate tensor) per chunk.
#: 2**22 elements of float64/int64 is 32 MiB; a chunk holds a handful of such tensors.
DEFAULT_CHUNK_ELEMENTS = 2**22


def device_of(*arrays: Any) -> torch.device:
    """The device of the first torch tensor among ``arrays``, else CPU."""
    for a in arrays:
        if isinstance(a, torch.Tensor):
            return a.device
    return torch.device("cpu")


def as_torch(x: Any, *, device: torch.device | None = None,
             dtype: torch.dtype | None = None, name: str = "input") -> torch.Tensor:
    """Convert ``x`` (numpy array, memmap, tensor, list) to a torch tensor without copying
    when possible. Tensors stay on their device unless ``device`` is given."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        arr = np.asarray(x)
        if arr.dtype == object or arr.dtype.kind in "USV":
            raise InputError(f"{name} must be numeric, got dtype {arr.dtype}")
        if arr.dtype.kind == "b":
            arr = arr.astype(np.bool_, copy=False)
        with warnings.catch_warnings():  # read-only memmaps: we never write into them
            warnings.simplefilter("ignore", UserWarning)
            t = torch.as_tensor(arr)
    if device is not None or dtype is not None:
        t = t.to(device=device if device is not None else t.device,
                 dtype=dtype if dtype is not None else t.dtype)
    return t


def as_numpy(t: torch.Tensor | np.ndarray) -> np.ndarray:
    """A numpy copy/view of a tensor (moved to CPU)."""
    if isinstance(t, np.ndarray):
        return t
    return t.detach().cpu().numpy()


def check_finite(t: torch.Tensor, name: str) -> None:
    """Raise :class:`InputError` if a floating tensor holds NaN or inf.

    A finite sum proves every element finite (NaN and inf propagate through it) at a
    fraction of an element-wise mask's cost; only a non-finite sum (a bad value, or an
    overflow of huge finite ones) pays for the element-wise check."""
    if not t.is_floating_point() or bool(torch.isfinite(t.sum())):
        return
    if not bool(torch.isfinite(t).all()):
        raise InputError(f"{name} contains NaN or inf values; clean or drop them first")


def check_ndim(t: torch.Tensor, allowed: tuple[int, ...], name: str, shape_hint: str) -> None:
    """Raise :class:`InputError` unless ``t.ndim`` is one of ``allowed``."""
    if t.ndim not in allowed:
        raise InputError(f"{name} must have shape {shape_hint}, got shape {tuple(t.shape)}")


def int_labels(labels: Any, n: int, num_classes: int, device: torch.device,
               name: str = "labels") -> torch.Tensor:
    """Validate integer class labels ``[n]`` in ``[0, num_classes)``; return int64 tensor."""
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise InputError(f"num_classes must be a positive int, got {num_classes!r}")
    t = as_torch(labels, device=device, name=name)
    if t.ndim != 1 or t.shape[0] != n:
        raise InputError(f"{name} must have shape [{n}] (one label per sample), "
                         f"got shape {tuple(t.shape)}")
    if t.is_floating_point():
        if not bool((t == t.round()).all()):
            raise InputError(f"{name} must hold integer class indices, got non-integer values")
    elif t.dtype == torch.bool:
        raise InputError(f"{name} must hold integer class indices, got a bool vector")
    t = t.to(torch.int64)
    if n and (int(t.min()) < 0 or int(t.max()) >= num_classes):
        raise InputError(f"{name} must lie in [0, {num_classes}); got values in "
                         f"[{int(t.min())}, {int(t.max())}]")
    return t


def positives_matrix(labels: Any, n: int, num_classes: int | None,
                     device: torch.device) -> torch.Tensor:
    """Per-class positives ``[n, C]`` bool from int labels ``[n]`` or a bool matrix ``[n, C]``."""
    t = as_torch(labels, device=device, name="labels")
    if t.ndim == 2:
        if t.shape[0] != n:
            raise InputError(f"multi-label matrix must have {n} rows, got shape {tuple(t.shape)}")
        if num_classes is not None and t.shape[1] != num_classes:
            raise InputError(f"multi-label matrix has {t.shape[1]} columns but "
                             f"num_classes={num_classes}")
        if t.dtype != torch.bool and not bool(((t == 0) | (t == 1)).all()):
            raise InputError("multi-label matrix must be bool or hold only 0/1")
        return t.to(torch.bool)
    if num_classes is None:
        num_classes = int(t.max()) + 1 if t.numel() else 1
    lab = int_labels(t, n, num_classes, device)
    return lab[:, None] == torch.arange(num_classes, device=device)[None, :]


def chunk_size(elements_per_item: int, budget: int = DEFAULT_CHUNK_ELEMENTS) -> int:
    """How many items (e.g. filters) fit in one chunk so that a chunk's largest
    intermediate tensor holds at most ``budget`` elements (always at least 1 item)."""
    if elements_per_item < 1:
        return 1 << 30
    return max(1, budget // elements_per_item)


def plan_chunks(num_items: int, elements_per_item: int,
                budget: int = DEFAULT_CHUNK_ELEMENTS) -> list[slice]:
    """Split ``range(num_items)`` into consecutive slices of :func:`chunk_size` items."""
    step = chunk_size(elements_per_item, budget)
    return [slice(i, min(i + step, num_items)) for i in range(0, num_items, step)]


def cpu_generator(seed: int) -> torch.Generator:
    """A CPU torch generator seeded with ``seed`` (device-independent randomness)."""
    if not isinstance(seed, (int, np.integer)):
        raise InputError(f"seed must be an int, got {seed!r}")
    g = torch.Generator(device="cpu")
    g.manual_seed(int(seed))
    return g


def log2_entropy(counts: torch.Tensor) -> torch.Tensor:
    """Entropy in bits of histograms along the last axis (0 for empty histograms)."""
    counts = counts.to(torch.float64)
    total = counts.sum(-1, keepdim=True)
    p = counts / total.clamp_min(1.0)
    terms = torch.where(p > 0, p * torch.log2(torch.where(p > 0, p, 1.0)), 0.0)
    return -terms.sum(-1)


__all__ = ["ArrayLike", "DEFAULT_CHUNK_ELEMENTS", "as_numpy", "as_torch", "check_finite",
           "check_ndim", "chunk_size", "cpu_generator", "device_of", "int_labels",
           "log2_entropy", "plan_chunks", "positives_matrix"]
