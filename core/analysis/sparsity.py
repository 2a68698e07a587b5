"""Sparsity of layer activations: the fraction of non-zero responses.

Reproduces: Table 6 (percentage of non-zeros in filter responses, mean ± std).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from core.analysis._common import as_numpy, as_torch, positives_matrix
from core.errors import InputError


def _per_sample(acts: Any) -> torch.Tensor:
    a = as_torch(acts, name="acts")
    if a.ndim < 2 or a.shape[0] == 0 or a[0].numel() == 0:
        raise InputError(f"acts must have shape [N, ...] with N >= 1 and at least one "
                         f"value per sample, got shape {tuple(a.shape)}")
    if a.is_floating_point() and bool(torch.isnan(a).any()):
        raise InputError("acts contains NaN values; NaN is neither zero nor non-zero")
    return (a.reshape(a.shape[0], -1) != 0).sum(1).to(torch.float64) / a[0].numel()


def nonzero_fraction(acts: Any) -> np.ndarray:
    """Fraction of non-zero entries of each sample's activations.

    Reproduces: Table 6 (per-image sparsity; the table reports it in percent).

    Parameters
    ----------
    acts : array or tensor, ``[N, ...]`` (e.g. ``[N, F]`` or ``[N, F, H, W]``)

    Returns
    -------
    numpy.ndarray, float64, ``[N]``
        Values in ``[0, 1]``.
    """
    return as_numpy(_per_sample(acts))


def sparsity_summary(acts: Any) -> dict[str, float]:
    """Mean and standard deviation over samples of :func:`nonzero_fraction`.

    Reproduces: Table 6 (one "mean ± std" cell).

    Returns
    -------
    dict
        ``{"mean": float, "std": float}`` as fractions (multiply by 100 for the
        table's percent). ``std`` is the population standard deviation (ddof=0);
        the paper does not say which it uses.
    """
    frac = _per_sample(acts)
    return {"mean": float(frac.mean()), "std": float(frac.std(correction=0))}


def sparsity_meaningful(acts: Any) -> bool:
    """True when a layer's non-zero fraction means something: its responses are rectified (none is
    negative), so an exact zero is a unit that did not fire, as after the paper's ReLUs.

    Reproduces: the premise of Table 6 (the paper's layers are all rectified).

    Deviation (not in the paper, whose layers are all rectified): GELU outputs and normalised
    residual streams (a transformer block's output, a BatchNorm before its ReLU) are almost never
    exactly zero, so their "non-zero %" would be ~100% whatever the units code: Table 6 and the
    findings say "not meaningful for this layer" instead of printing it.

    >>> sparsity_meaningful(np.array([[0.0, 2.0]])), sparsity_meaningful(np.array([[-0.1, 2.0]]))
    (True, False)
    """
    x = torch.as_tensor(np.asarray(acts) if not isinstance(acts, torch.Tensor) else acts)
    return bool(x.numel() == 0 or x.min() >= 0)


def class_nonzero_fraction(acts: Any, labels: Any, num_classes: int | None = None) -> np.ndarray:
    """Mean non-zero fraction of the samples of each class.

    Reproduces: a per-class breakdown of Table 6 (not in the paper).

    Parameters
    ----------
    acts : array or tensor, ``[N, ...]``
    labels : ``[N]`` ints in ``[0, num_classes)`` or ``[N, C]`` bool multi-label matrix
    num_classes : int, optional

    Returns
    -------
    numpy.ndarray, float64, ``[C]``
        NaN for a class without samples.
    """
    frac = _per_sample(acts)
    pos = positives_matrix(labels, frac.shape[0], num_classes, frac.device).to(torch.float64)
    count = pos.sum(0)
    mean = (pos * frac[:, None]).sum(0) / count.clamp_min(1.0)
    return as_numpy(torch.where(count > 0, mean, torch.nan))


def unit_nonzero_fraction(acts: Any) -> np.ndarray:
    """Fraction of each unit's responses that are non-zero, over every item and spatial position.

    Reproduces: Table 6's measure per unit instead of per image (not in the paper; the
    unit-by-unit comparison of two networks reports it before and after).

    Parameters
    ----------
    acts : array or tensor, ``[N, F]`` or ``[N, F, H, W]``

    Returns
    -------
    numpy.ndarray, float64, ``[F]``
    """
    a = as_torch(acts, name="acts")
    if a.ndim not in (2, 4) or a.shape[0] == 0:
        raise InputError(f"acts must be [N, F] or [N, F, H, W] with N >= 1, got shape {tuple(a.shape)}")
    if a.is_floating_point() and bool(torch.isnan(a).any()):
        raise InputError("acts contains NaN values; NaN is neither zero nor non-zero")
    axes = (0, 2, 3) if a.ndim == 4 else (0,)
    per = a.shape[0] * (a.shape[2] * a.shape[3] if a.ndim == 4 else 1)
    return as_numpy((a != 0).sum(dim=axes).to(torch.float64) / per)


__all__ = ["nonzero_fraction", "sparsity_summary", "class_nonzero_fraction", "unit_nonzero_fraction"]
