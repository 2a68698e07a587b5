"""Class selectivity of filters: entropy curves, area under them (AuE), selectivity curves.

Reproduces: Appendix ("estimating a filter's discriminative capacity"), Sec. 3.2, Fig. 1.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from core.analysis._common import (DEFAULT_CHUNK_ELEMENTS, as_numpy, as_torch, check_finite,
                                   check_ndim, cpu_generator, int_labels, log2_entropy,
                                   plan_chunks)
from core.errors import InputError


def _thresholds(lo: torch.Tensor, hi: torch.Tensor, num: int) -> torch.Tensor:
    """Per-row ``numpy.linspace(lo, hi, num)`` in float64, bit-for-bit.

    numpy computes ``start + arange(num) * step`` (``arange/div * delta`` when the step
    is 0) and sets the last entry to ``stop`` exactly; we do the same operations.
    """
    delta = (hi - lo)[:, None]
    step = delta / (num - 1)
    ar = torch.arange(num, dtype=torch.float64, device=lo.device)[None, :]
    y = torch.where(step == 0, ar / (num - 1) * delta, ar * step) + lo[:, None]
    y[:, -1] = hi
    return y


def _chunk_counts(x: torch.Tensor, lab: torch.Tensor, num_classes: int,
                  num_thresholds: int) -> torch.Tensor:
    """Class counts ``[Fc, T, C]`` of samples ``>= threshold_t`` for a chunk ``x [Fc, M]``."""
    fc = x.shape[0]
    thr = _thresholds(x.amin(1), x.amax(1), num_thresholds)
    # searchsorted = number of thresholds <= x: a sample counts at every t below it.
    bins = torch.searchsorted(thr, x, right=True).mul_(num_classes).add_(lab[None, :])
    bins.add_(torch.arange(fc, device=x.device)[:, None] * ((num_thresholds + 1) * num_classes))
    hist = torch.bincount(bins.reshape(-1), minlength=fc * (num_thresholds + 1) * num_classes)
    hist = hist.reshape(fc, num_thresholds + 1, num_classes)[:, 1:]
    return hist.flip(1).cumsum(1).flip(1)


def _as_samples(responses: Any) -> torch.Tensor:
    r = as_torch(responses, name="responses")
    check_ndim(r, (2, 4), "responses", "[N, F] or [N, F, H, W]")
    if r.shape[0] == 0 or r.shape[1] == 0:
        raise InputError(f"responses must hold at least one sample and one filter, "
                         f"got shape {tuple(r.shape)}")
    return r


def entropy_curves(responses: Any, labels: Any, num_classes: int,
                   num_thresholds: int = 100, *,
                   chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> np.ndarray:
    """Class-label entropy of each filter's responses above a sweep of thresholds.

    Reproduces: Appendix, Fig. 1 (the *entropy curve* of a filter).

    Parameters
    ----------
    responses : array or tensor, ``[N, F]`` or ``[N, F, H, W]``
        Filter responses. For conv maps every spatial element is one sample that carries
        its image's label, so filter ``f`` has ``N*H*W`` samples (the paper's ``Np^2``).
    labels : array or tensor, ``[N]`` ints in ``[0, num_classes)``
    num_classes : int
    num_thresholds : int, default 100
        ``T``; thresholds of filter ``f`` are ``linspace(min_f, max_f, T)`` over its own
        samples (computed like ``numpy.linspace`` in float64; comparisons in float64).
    chunk_elements : int
        Memory budget: at most about this many samples are processed at once.

    Returns
    -------
    numpy.ndarray, float64, ``[F, T]``
        Entry ``[f, t]`` is the entropy in bits of the class histogram of the samples
        with score ``>= threshold_t`` (0 for an empty histogram).

    Notes
    -----
    Deviation: the paper does not state the number or placement of thresholds; we use
    ``T`` evenly spaced thresholds between each filter's minimum and maximum response.
    """
    r = _as_samples(responses)
    if not isinstance(num_thresholds, (int, np.integer)) or num_thresholds < 2:
        raise InputError(f"num_thresholds must be an int >= 2, got {num_thresholds!r}")
    n, f = r.shape[:2]
    hw = int(np.prod(r.shape[2:])) if r.ndim == 4 else 1
    lab = int_labels(labels, n, num_classes, r.device).repeat_interleave(hw)
    out = torch.empty(f, num_thresholds, dtype=torch.float64, device=r.device)
    for sl in plan_chunks(f, n * hw, chunk_elements):
        x = r[:, sl].transpose(0, 1).reshape(sl.stop - sl.start, n * hw)
        x = x.to(torch.float64).contiguous()
        check_finite(x, "responses")
        out[sl] = log2_entropy(_chunk_counts(x, lab, num_classes, num_thresholds))
    return as_numpy(out)


def _trapezoid(curves: np.ndarray) -> np.ndarray:
    t = curves.shape[-1]
    return (curves[..., :-1] + curves[..., 1:]).sum(-1) / (2.0 * (t - 1))


def aue(responses: Any, labels: Any, num_classes: int, num_thresholds: int = 100, *,
        chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> np.ndarray:
    """Area under each filter's entropy curve (AuE); lower means more class selective.

    Reproduces: Appendix (AuE), used to sort filters in Sec. 3.2 / Fig. 1.

    Parameters
    ----------
    responses, labels, num_classes, num_thresholds, chunk_elements
        As in :func:`entropy_curves`.

    Returns
    -------
    numpy.ndarray, float64, ``[F]``
        Trapezoidal area with the threshold axis normalised to ``[0, 1]``
        (spacing ``1/(T-1)``), so values lie in ``[0, log2(num_classes)]``.

    Notes
    -----
    Deviation: the paper does not say how the threshold axis is scaled; normalising it
    to ``[0, 1]`` makes AuE comparable across filters with different response ranges.
    """
    curves = entropy_curves(responses, labels, num_classes, num_thresholds,
                            chunk_elements=chunk_elements)
    return _trapezoid(curves)


def selectivity_curve(aue_values: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean AuE of the ``k`` most selective filters, sweeping ``k`` down the sorted list.

    Reproduces: Sec. 3.2, Fig. 1 (class selectivity vs. fraction of filters).

    Parameters
    ----------
    aue_values : array or tensor, ``[F]``

    Returns
    -------
    fraction : numpy.ndarray, float64, ``[F]``
        ``fraction[k-1] = k / F``.
    mean_aue : numpy.ndarray, float64, ``[F]``
        ``mean_aue[k-1]`` is the mean of the ``k`` smallest AuE values.
    """
    a = as_torch(aue_values, name="aue_values", dtype=torch.float64)
    check_ndim(a, (1,), "aue_values", "[F]")
    if a.numel() == 0:
        raise InputError("aue_values is empty; compute aue() for at least one filter")
    check_finite(a, "aue_values")
    k = torch.arange(1, a.numel() + 1, dtype=torch.float64, device=a.device)
    mean = torch.sort(a).values.cumsum(0) / k
    return as_numpy(k / a.numel()), as_numpy(mean)


def shuffled_label_aue(responses: Any, labels: Any, num_classes: int,
                       seeds: Sequence[int] = (0, 1, 2), num_thresholds: int = 100) -> np.ndarray:
    """AuE after randomly permuting the image labels: what chance selectivity looks like.

    Reproduces: no figure of the paper; a chance baseline for Appendix / Fig. 1.

    Parameters
    ----------
    responses, labels, num_classes, num_thresholds
        As in :func:`aue`. Labels are permuted across images (a conv map's spatial
        samples keep sharing their image's new label).
    seeds : sequence of int
        One permutation per seed (``torch.randperm`` with a CPU generator).

    Returns
    -------
    numpy.ndarray, float64, ``[len(seeds), F]``
    """
    r = _as_samples(responses)
    lab = int_labels(labels, r.shape[0], num_classes, r.device)
    rows = []
    for s in seeds:
        perm = torch.randperm(lab.numel(), generator=cpu_generator(s)).to(lab.device)
        rows.append(aue(r, lab[perm], num_classes, num_thresholds))
    return np.stack(rows) if rows else np.zeros((0, r.shape[1]))


__all__ = ["entropy_curves", "aue", "selectivity_curve", "shuffled_label_aue"]
