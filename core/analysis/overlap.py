"""Overlap between the sets of most important filters of different classes.

Reproduces: Sec. 4.2, Fig. 5 (overlap of the 50 most discriminative conv-5 filters).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from core.analysis._common import as_numpy, as_torch, check_finite, check_ndim
from core.errors import InputError


def _importance(importance: Any, k: int) -> torch.Tensor:
    imp = as_torch(importance, name="importance")
    check_ndim(imp, (2,), "importance", "[C, F] (one row of filter importances per class)")
    imp = imp.to(torch.float64)
    check_finite(imp, "importance")
    f = imp.shape[1]
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= f:
        raise InputError(f"k must be an int in [1, {f}] (the number of filters), got {k!r}")
    return imp


def _topk(imp: torch.Tensor, k: int) -> torch.Tensor:
    return torch.sort(imp, dim=1, descending=True, stable=True).indices[:, :k]


def topk_sets(importance: Any, k: int = 50) -> np.ndarray:
    """Indices of each class's ``k`` most important filters.

    Reproduces: Sec. 4.2 (the sets ``S_i`` of Fig. 5).

    Parameters
    ----------
    importance : array or tensor, ``[C, F]``
        E.g. ``|w|`` of per-class linear SVMs, or single-filter AP.
    k : int, default 50

    Returns
    -------
    numpy.ndarray, int64, ``[C, k]``
        Filter indices by descending importance; ties go to the lower filter index.
    """
    return as_numpy(_topk(_importance(importance, k), k))


def topk_overlap(importance: Any, k: int = 50) -> np.ndarray:
    """Fraction of top-``k`` filters shared by every pair of classes.

    Reproduces: Sec. 4.2, Fig. 5 (entry ``(i, j)`` is ``|S_i ∩ S_j| / k``).

    Parameters
    ----------
    importance : array or tensor, ``[C, F]``
    k : int, default 50

    Returns
    -------
    numpy.ndarray, float64, ``[C, C]``
        Symmetric, with ones on the diagonal. Sets as in :func:`topk_sets`.
    """
    imp = _importance(importance, k)
    member = torch.zeros_like(imp)
    member.scatter_(1, _topk(imp, k), 1.0)
    return as_numpy(member @ member.T / k)


def shared_filters(importance: Any, i: int, j: int, k: int = 50) -> np.ndarray:
    """The filters in both class ``i``'s and class ``j``'s top-``k`` sets.

    Reproduces: Sec. 4.2, Fig. 5 (the members behind one matrix entry).

    Returns
    -------
    numpy.ndarray, int64
        Sorted filter indices of ``S_i ∩ S_j``.
    """
    imp = _importance(importance, k)
    c = imp.shape[0]
    for name, v in (("i", i), ("j", j)):
        if not isinstance(v, (int, np.integer)) or not 0 <= v < c:
            raise InputError(f"class index {name} must be an int in [0, {c}), got {v!r}")
    sets = as_numpy(_topk(imp, k))
    return np.intersect1d(sets[i], sets[j]).astype(np.int64)


def overlap_chance(num_filters: int, k: int = 50) -> float:
    """Expected overlap ``|S_i ∩ S_j| / k`` of two independent random ``k``-subsets.

    Reproduces: Fig. 5 caption ("Chance is 0.195" for ``k = 50`` of 256 filters).

    Returns
    -------
    float
        ``k / num_filters`` (each of ``S_i``'s ``k`` members is in ``S_j`` with
        probability ``k / F``).
    """
    if not isinstance(num_filters, (int, np.integer)) or num_filters < 1:
        raise InputError(f"num_filters must be a positive int, got {num_filters!r}")
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= num_filters:
        raise InputError(f"k must be an int in [1, {num_filters}], got {k!r}")
    return float(k) / float(num_filters)


__all__ = ["topk_sets", "topk_overlap", "shared_filters", "overlap_chance"]
