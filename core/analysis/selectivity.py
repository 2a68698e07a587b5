"""Class selectivity of filters: entropy curves, area under them (AuE), selectivity curves.

Reproduces: Appendix ("estimating a filter's discriminative capacity"), Sec. 3.2, Fig. 1.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
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


def _entropy(counts: torch.Tensor) -> torch.Tensor:
    """:func:`log2_entropy` of ``counts [..., C]``; in numpy for CPU tensors.

    On a 2-core machine shared with other processes, each torch op that splits over two
    threads (``log2`` does so from 2048 elements) waits ~10 ms for the second one; numpy
    runs in this thread. Both CPU paths use this function, so their curves are identical.
    """
    if counts.device.type != "cpu":
        return log2_entropy(counts)
    c = counts.numpy().astype(np.float64)
    p = c / np.maximum(c.sum(-1, keepdims=True), 1.0)
    terms = np.where(p > 0, p * np.log2(np.where(p > 0, p, 1.0)), 0.0)
    return torch.from_numpy(-terms.sum(-1))


# ------------------------------------------------------------------ float16 fast path
# Stored features are float16, so each sample is one of 65536 bit patterns. Per filter, a
# table maps every pattern to its bin (how many thresholds its float64 value reaches, and
# the label) and one gather + one bincount over the samples give the class counts: the
# same integers as the float64 path, hence identical curves. One filter at a time per
# thread (see FP16_THREADS), in reused buffers (fresh large arrays cost page faults on
# every call). Only numpy runs per filter: unlike torch ops it never starts OpenMP
# threads (on a busy 2-core machine each parallel torch op waits ~10 ms for its second
# thread, and each Python thread would start its own team).

#: Below this many samples per filter the general float64 path is cheaper than building
#: the per-filter tables.
FP16_MIN_SAMPLES = 1 << 14
#: Threads of the float16 path (``None``: ``torch.get_num_threads()``). On our 2-vCPU
#: machines a second thread gained 10-25% when idle but lost 30-40% while another
#: process held a core (bincount keeps the GIL); set 1 on a busy shared machine.
FP16_THREADS: int | None = None


@lru_cache(maxsize=1)
def _fp16_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tables over all 65536 float16 bit patterns ``u`` (read as uint16).

    Returns ``value[u]`` (float64), ``okey[u]`` (the pattern's place in value order:
    ``u + 0x8000`` for a clear sign bit, ``0xFFFF - u`` for a set one, so -0.0 and +0.0
    are neighbours with equal values) and ``value_by_okey`` (non-decreasing; NaN patterns
    become -inf/+inf at the ends, and are rejected before any lookup).
    """
    u = np.arange(1 << 16, dtype=np.int64)
    value = u.astype(np.uint16).view(np.float16).astype(np.float64)
    okey = np.where(u < 0x8000, u + 0x8000, 0xFFFF - u).astype(np.intp)
    by_okey = np.empty(1 << 16)
    by_okey[okey] = value
    nan = np.isnan(by_okey)
    by_okey[nan] = np.where(u[nan] < 0x8000, -np.inf, np.inf)
    for t in (value, okey, by_okey):
        t.setflags(write=False)
    return value, okey, by_okey


def _fp16_extremes(u: np.ndarray, umin: int, umax: int) -> tuple[int, int, int]:
    """Patterns ``(lo, hi, umax)`` of the minimum and maximum value among the uint16
    patterns ``u``, whose smallest and largest patterns are ``umin`` and ``umax``.

    Clear-sign patterns grow with the value, set-sign ones shrink with it, so integer
    extremes give the value extremes. Raises :class:`InputError` on NaN/inf patterns
    (exponent bits all set: 0x7C00-0x7FFF and 0xFC00-0xFFFF).
    """
    if umax < 0x8000:                  # no negative pattern: pattern order is value order
        lo, hi, bad = umin, umax, umax >= 0x7C00
    else:                              # umax is the negative of largest magnitude
        smax = int(u.view(np.int16).max())
        lo, hi = umax, (smax if smax >= 0 else umin)
        bad = umax >= 0xFC00 or smax >= 0x7C00
    if bad:
        raise InputError("responses contains NaN or inf values; clean or drop them first")
    return lo, hi, umax


class _Fp16Filter:
    """Reusable per-thread buffers and the per-filter computation."""

    #: Consecutive samples go to this many interleaved histograms (fewer stalls on one counter).
    LANES = 4

    def __init__(self, shape: tuple[int, ...], labels: np.ndarray, num_classes: int,
                 num_thresholds: int):
        self.num_classes, self.num_thresholds = num_classes, num_thresholds
        self.bins_total = self.LANES * (num_thresholds + 1) * num_classes
        self.bins = np.empty((shape[0], int(np.prod(shape[1:]))), dtype=np.intp)  # bincount's type
        self.patterns = np.empty_like(self.bins)   # take() would convert uint16 indices anyway
        lane = np.arange(self.bins.size).reshape(self.bins.shape) % self.LANES
        self.offsets = labels[:, None] + lane * ((num_thresholds + 1) * num_classes)
        self.bin_by_okey = np.zeros(1 << 16, dtype=np.intp)
        self.table = np.empty(1 << 16, dtype=np.intp)
        self.ramp = np.arange(num_thresholds, dtype=np.float64)
        self.levels = np.arange(num_thresholds + 1) * num_classes
        self.edges = np.empty(num_thresholds + 2, dtype=np.intp)

    def _bin_table(self, lo: int, hi: int, u_max: int) -> np.ndarray:
        """``table[u]`` = (number of thresholds <= value of pattern ``u``) * C, for the
        patterns up to ``u_max``; exact for the values in ``[value[lo], value[hi]]``."""
        value, okey, by_okey = _fp16_tables()
        a, b, t = value[lo], value[hi], self.num_thresholds
        step = (b - a) / (t - 1)                   # numpy.linspace's operations (_thresholds)
        thr = (self.ramp / (t - 1) * (b - a) if step == 0 else self.ramp * step) + a
        thr[-1] = b
        k = by_okey.searchsorted(thr, side="left")  # first value-ordered key >= each threshold
        ok_lo, ok_hi = int(okey[lo]), int(okey[hi])  # the keys that occur lie in between
        edges = self.edges                         # key ranges of 0, 1, ..., T thresholds
        edges[0], edges[-1] = ok_lo, ok_hi + 1
        np.minimum(np.maximum(k, ok_lo, out=edges[1:-1]), ok_hi + 1, out=edges[1:-1])
        steps = np.repeat(self.levels, edges[1:] - edges[:-1])
        table = self.table[:u_max + 1]             # by pattern: +0.0 up, then -0.0 down
        if u_max < 0x8000:                         # no sign bit: pattern = key - 0x8000
            table[lo:] = steps
            return table
        by_key = self.bin_by_okey                  # negatives present: via key order
        by_key[ok_lo:ok_hi + 1] = steps
        table[:0x8000] = by_key[0x8000:]
        table[0x8000:] = by_key[0x8000 - (u_max - 0x7FFF):0x8000][::-1]
        return table

    def counts(self, column: np.ndarray) -> np.ndarray:
        """Class counts ``[T, C]`` of samples ``>= threshold_t`` of one filter ``column [N, ...]``."""
        u = column.view(np.uint16).reshape(self.bins.shape)      # float16 bit patterns
        p = self.patterns
        np.copyto(p, u)
        table = self._bin_table(*_fp16_extremes(u, int(p.min()), int(p.max())))
        table.take(p, out=self.bins, mode="wrap")
        self.bins += self.offsets                                  # + label, + lane
        hist = np.bincount(self.bins.reshape(-1), minlength=self.bins_total)
        hist = hist.reshape(self.LANES, self.num_thresholds + 1, self.num_classes).sum(0)
        return hist[:0:-1].cumsum(0)[::-1]                         # samples >= threshold_t


def _fp16_curves(r: torch.Tensor, lab: torch.Tensor, num_classes: int,
                 num_thresholds: int) -> torch.Tensor:
    """Entropy curves ``[F, T]`` of CPU float16 responses (see the section comment)."""
    x = r.numpy()
    f = x.shape[1]
    local = threading.local()

    def one(j: int) -> np.ndarray:
        if not hasattr(local, "w"):
            local.w = _Fp16Filter(x[:, 0].shape, lab.numpy(), num_classes, num_thresholds)
        return local.w.counts(x[:, j])

    nw = max(1, min(FP16_THREADS or torch.get_num_threads(), f))
    if nw == 1:
        counts = np.stack([one(j) for j in range(f)])
    else:
        with ThreadPoolExecutor(nw) as pool:
            counts = np.stack(list(pool.map(one, range(f))))
    return _entropy(torch.from_numpy(counts))


def _use_fp16_path(r: torch.Tensor, samples_per_filter: int) -> bool:
    return (r.dtype == torch.float16 and r.device.type == "cpu"
            and samples_per_filter >= FP16_MIN_SAMPLES)


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

    float16 responses on the CPU (the feature store's format) with at least
    ``FP16_MIN_SAMPLES`` samples per filter take an exact fast path (a lookup table over
    the 65536 bit patterns, one filter at a time, so memory stays at a few arrays of one
    filter's samples); it gives the same numbers as the float64 path on the same values.
    """
    r = _as_samples(responses)
    if not isinstance(num_thresholds, (int, np.integer)) or num_thresholds < 2:
        raise InputError(f"num_thresholds must be an int >= 2, got {num_thresholds!r}")
    n, f = r.shape[:2]
    hw = int(np.prod(r.shape[2:])) if r.ndim == 4 else 1
    lab = int_labels(labels, n, num_classes, r.device)
    if _use_fp16_path(r, n * hw):
        return as_numpy(_fp16_curves(r, lab, num_classes, num_thresholds))
    lab = lab.repeat_interleave(hw)
    out = torch.empty(f, num_thresholds, dtype=torch.float64, device=r.device)
    for sl in plan_chunks(f, n * hw, chunk_elements):
        x = r[:, sl].transpose(0, 1).reshape(sl.stop - sl.start, n * hw)
        x = x.to(torch.float64).contiguous()
        check_finite(x, "responses")
        out[sl] = _entropy(_chunk_counts(x, lab, num_classes, num_thresholds))
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


def label_permutation(n: int, seed: int) -> torch.Tensor:
    """The permutation of ``n`` labels that seed ``seed`` draws for the shuffled-label baseline
    (``torch.randperm`` with a CPU generator; the same on every device and for sharded data)."""
    return torch.randperm(int(n), generator=cpu_generator(seed))


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
        perm = label_permutation(lab.numel(), s).to(lab.device)
        rows.append(aue(r, lab[perm], num_classes, num_thresholds))
    return np.stack(rows) if rows else np.zeros((0, r.shape[1]))


__all__ = ["entropy_curves", "aue", "selectivity_curve", "shuffled_label_aue", "label_permutation"]
