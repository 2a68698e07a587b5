"""Analyses that reduce over feature shards, without loading a whole layer at once.

Reproduces: the same measures as :mod:`.selectivity` (Appendix, Fig. 1),
:mod:`.precision_recall` (Sec. 4.1), :mod:`.sparsity` (Table 6) and the per-item
ablations of :mod:`.ablation` (Sec. 5), on layers stored as shards (the Ray backend,
:mod:`core.store.ray_backend`) or on any sequence of row blocks. Results are those of the
single-array functions on the concatenation: bit for bit for entropy curves, AuE and
AP (the same integer counts and the same float operations in the same order), and to
rounding (<= 1e-12) for the additive sparsity moments.

Shards are given as a stored layer (anything with ``.shards()``, e.g.
:class:`core.store.extraction.LayerFeatures`), a sequence of arrays (consecutive row blocks)
or of ``(start, array)`` pairs. The per-shard part runs through the map step the caller
passes as ``map_shards``: by default :func:`map_local` (in this process, one shard at a
time); :func:`core.store.ray_backend.map_shards_ray` runs one Ray task per shard. The small
per-shard results are merged here. This module knows nothing of Ray.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch

from core.analysis._common import (DEFAULT_CHUNK_ELEMENTS, int_labels,
                                   plan_chunks, positives_matrix)
from core.analysis.precision_recall import _NO_POSITIVES
from core.analysis.selectivity import _entropy, _thresholds, _trapezoid, label_permutation
from core.errors import InputError


class StoredShard(NamedTuple):
    """A shard on disk: its ``.npy`` file and the byte order of its maps (``NCHW``, or ``NHWC``
    for a channels-last store, read as the logical ``[n, C, H, W]`` view); ``rows`` is a
    ``(start, stop)`` range of the file's rows to read (all of them when None)."""

    path: str
    layout: str = "NCHW"
    rows: tuple[int, int] | None = None


#: A shard as the per-shard functions receive it: a stored shard or ``.npy`` path
#: (memory-mapped when opened) or an array.
ShardData = StoredShard | str | np.ndarray


# --------------------------------------------------------------------------- shard sources
def shard_specs(shards: Any) -> list[tuple[int, ShardData]]:
    """Normalise ``shards`` to ``[(start, path or array)]`` and check they tile ``[0, N)``.

    Stored shards are kept as :class:`StoredShard` (file path and layout; nothing is read here).
    """
    if hasattr(shards, "manifest") and hasattr(shards, "shards"):
        man = shards.manifest
        layout = man.get("layout", "NCHW")
        if "shards" in man:
            specs = [(int(s["start"]), StoredShard(str(shards.path.parent / s["file"]), s.get("layout", layout)))
                     for s in man["shards"]]
        else:
            specs = [(0, StoredShard(str(shards.path), layout))]
    elif hasattr(shards, "shards"):
        specs = list(shards.shards())
    else:
        specs, start = [], 0
        for item in shards:
            if isinstance(item, tuple) and not isinstance(item, StoredShard):
                start, item = int(item[0]), item[1]
            specs.append((start, item))
            start += _stored_rows(item)[0] if isinstance(item, StoredShard) else len(item)
    if not specs:
        raise InputError("no shards given; pass a stored layer or a list of row blocks")
    return specs


def load_shard(data: ShardData) -> np.ndarray:
    """A shard's rows: a stored shard or ``.npy`` path memory-mapped (as ``[n, C, H, W]``), or the array itself."""
    if isinstance(data, str):
        data = StoredShard(data)
    if isinstance(data, StoredShard):
        rows = np.load(data.path, mmap_mode="r")
        if data.rows is not None:
            rows = rows[data.rows[0]:data.rows[1]]
        return rows.transpose(0, 3, 1, 2) if data.layout == "NHWC" else rows
    return np.asarray(data)


def _stored_rows(data: StoredShard) -> tuple[int, int]:
    """Rows in a stored shard's file and the bytes of one row (read from the ``.npy`` header only)."""
    arr = np.load(data.path, mmap_mode="r")
    lo, hi = data.rows if data.rows is not None else (0, len(arr))
    return hi - lo, int(arr[:1].nbytes)


def row_blocks(shards: Any, max_bytes: int) -> list[tuple[int, ShardData]]:
    """``shards`` (as :func:`shard_specs` takes them) cut into consecutive row blocks of at most
    ``max_bytes`` each (at least one row per block), for reducers that must not hold a layer at once.

    Stored shards become :class:`StoredShard` row ranges (nothing is read but the headers); arrays
    become views. Every reducer of this module accepts the result in place of ``shards``: a block is
    memory-mapped when the reducer reaches it and unmapped after, so a pass over a stored layer keeps
    about one block resident.

    Reproduces: nothing in the paper; lets every reducer here run at the paper's scale in bounded memory.
    """
    if max_bytes < 1:
        raise InputError(f"max_bytes must be >= 1, got {max_bytes}")
    out: list[tuple[int, ShardData]] = []
    for start, data in shard_specs(shards):
        if isinstance(data, str):
            data = StoredShard(data)
        if isinstance(data, StoredShard):
            n, row_bytes = _stored_rows(data)
            first = data.rows[0] if data.rows is not None else 0
        else:
            data = np.asarray(data)
            n, row_bytes = len(data), int(data[:1].nbytes)
        step = max(1, int(max_bytes) // max(1, row_bytes))
        for lo in range(0, n, step):
            hi = min(n, lo + step)
            part = (data._replace(rows=(first + lo, first + hi)) if isinstance(data, StoredShard)
                    else data[lo:hi])
            out.append((start + lo, part))
    return out


def _check_tiling(starts: Sequence[int], lengths: Sequence[int]) -> int:
    stop = 0
    for s, n in zip(starts, lengths):
        if s != stop:
            raise InputError(f"shards must be consecutive row blocks from row 0; a shard starts "
                             f"at row {s} where row {stop} was expected")
        stop += n
    return stop


#: The map step of every reducer here: ``map_shards(fn, specs, *args)`` returns
#: ``[fn(start, rows, *args) for start, data in specs]`` in order, where ``specs`` come
#: from :func:`shard_specs` and ``rows`` is ``load_shard(data)``. ``fn`` is a module-level
#: function of this module, so a map step may ship it to other processes by reference.
MapShards = Callable[..., list[Any]]


def map_local(fn: Callable[..., Any], specs: Sequence[tuple[int, ShardData]], *args: Any) -> list[Any]:
    """The default map step: each shard in this process, one at a time."""
    return [fn(start, load_shard(data), *args) for start, data in specs]


# --------------------------------------------------------------------------- selectivity
def _shard_minmax(start: int, x: np.ndarray) -> tuple[int, int, np.ndarray, np.ndarray]:
    """Pass 1: ``(start, rows, min[F], max[F])`` in float64 (exact for float16 input)."""
    if x.ndim not in (2, 4) or len(x) == 0 or x.shape[1] == 0:
        raise InputError(f"each shard must be [n, F] or [n, F, H, W] with n, F >= 1, "
                         f"got shape {tuple(x.shape)}")
    axes = (0, 2, 3) if x.ndim == 4 else (0,)
    lo, hi = x.min(axis=axes).astype(np.float64), x.max(axis=axes).astype(np.float64)
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
        raise InputError(f"responses contains NaN or inf values (shard at row {start}); "
                         "clean or drop them first")
    return start, len(x), lo, hi


def _shard_counts(start: int, x: np.ndarray, labels: np.ndarray, num_classes: int,
                  thresholds: np.ndarray) -> np.ndarray:
    """Pass 2: class counts ``[F, T, C]`` int64 of this shard's samples ``>= threshold_t``.

    The operations of :func:`core.analysis.selectivity._chunk_counts`, with the global
    thresholds instead of the chunk's own.
    """
    n, f = x.shape[:2]
    hw = int(np.prod(x.shape[2:])) if x.ndim == 4 else 1
    t = thresholds.shape[1]
    lab = torch.from_numpy(np.asarray(labels[start:start + n], dtype=np.int64)).repeat_interleave(hw)
    out = np.empty((f, t, num_classes), dtype=np.int64)
    for sl in plan_chunks(f, n * hw, DEFAULT_CHUNK_ELEMENTS):
        fc = sl.stop - sl.start
        xs = torch.from_numpy(np.asarray(x[:, sl], dtype=np.float64))
        xs = xs.transpose(0, 1).reshape(fc, n * hw).contiguous()
        thr = torch.from_numpy(np.ascontiguousarray(thresholds[sl]))
        bins = torch.searchsorted(thr, xs, right=True).mul_(num_classes).add_(lab[None, :])
        bins.add_(torch.arange(fc)[:, None] * ((t + 1) * num_classes))
        hist = torch.bincount(bins.reshape(-1), minlength=fc * (t + 1) * num_classes)
        hist = hist.reshape(fc, t + 1, num_classes)[:, 1:]
        out[sl] = hist.flip(1).cumsum(1).flip(1).numpy()
    return out


def entropy_curves_sharded(shards: Any, labels: Any, num_classes: int, num_thresholds: int = 100,
                           *, map_shards: MapShards = map_local) -> np.ndarray:
    """Entropy curves of a layer stored in shards; equal to :func:`entropy_curves` on the whole.

    Reproduces: Appendix, Fig. 1, as :func:`core.analysis.selectivity.entropy_curves`.

    Two passes over the shards: (1) each filter's global minimum and maximum, from
    which the thresholds ``linspace(min_f, max_f, T)`` are built exactly as the local
    function builds them (float64); (2) per shard, the class histogram of the samples
    ``>= threshold_t``, summed over shards (integer counts, so the sum is exact).

    Parameters
    ----------
    shards : stored layer, sequence of arrays or of ``(start, array)``
        Row blocks ``[n_s, F]`` or ``[n_s, F, H, W]`` of the ``[N, ...]`` responses.
    labels : ``[N]`` ints in ``[0, num_classes)``
    num_classes, num_thresholds
        As in :func:`entropy_curves`.
    map_shards : MapShards
        The per-shard map step (default :func:`map_local`; one Ray task per shard with
        :func:`core.store.ray_backend.map_shards_ray`).

    Returns
    -------
    numpy.ndarray, float64, ``[F, T]``
    """
    specs, lab, thr = _shard_thresholds(shards, labels, num_classes, num_thresholds, map_shards)
    return _entropy(torch.from_numpy(_summed_counts(specs, lab, int(num_classes), thr, map_shards))).numpy()


#: Shards whose ``[F, T, C]`` counts are mapped and summed at a time: the running sum, not every shard's
#: counts, is held (integer sums: the same result in any grouping).
COUNT_GROUP = 8


def _summed_counts(specs: list, lab: np.ndarray, num_classes: int, thr: np.ndarray,
                   map_shards: MapShards) -> np.ndarray:
    """Pass 2 summed over the shards, :data:`COUNT_GROUP` shards at a time (memory flat in their number)."""
    total = None
    for i in range(0, len(specs), COUNT_GROUP):
        part = np.sum(map_shards(_shard_counts, specs[i:i + COUNT_GROUP], lab, num_classes, thr), axis=0)
        total = part if total is None else total + part
    return total


def _shard_thresholds(shards: Any, labels: Any, num_classes: int, num_thresholds: int,
                      map_shards: MapShards) -> tuple[list, np.ndarray, np.ndarray]:
    """Pass 1 of :func:`entropy_curves_sharded`: the shards, validated labels ``[N]`` and the
    thresholds ``[F, T]`` from every filter's global minimum and maximum."""
    if not isinstance(num_thresholds, (int, np.integer)) or num_thresholds < 2:
        raise InputError(f"num_thresholds must be an int >= 2, got {num_thresholds!r}")
    specs = shard_specs(shards)
    ext = map_shards(_shard_minmax, specs)
    n = _check_tiling([e[0] for e in ext], [e[1] for e in ext])
    lab = int_labels(labels, n, num_classes, torch.device("cpu")).numpy()
    lo = np.min(np.stack([e[2] for e in ext]), axis=0)
    hi = np.max(np.stack([e[3] for e in ext]), axis=0)
    return specs, lab, _thresholds(torch.from_numpy(lo), torch.from_numpy(hi), int(num_thresholds)).numpy()


def aue_sharded(shards: Any, labels: Any, num_classes: int, num_thresholds: int = 100, *,
                map_shards: MapShards = map_local) -> np.ndarray:
    """AuE ``[F]`` from :func:`entropy_curves_sharded`; equal to :func:`aue` on the whole.

    Reproduces: Appendix (AuE), as :func:`core.analysis.selectivity.aue`.
    """
    return _trapezoid(entropy_curves_sharded(shards, labels, num_classes, num_thresholds,
                                             map_shards=map_shards))


def shuffled_label_aue_sharded(shards: Any, labels: Any, num_classes: int, seeds: Sequence[int] = (0, 1, 2),
                               num_thresholds: int = 100, *, map_shards: MapShards = map_local) -> np.ndarray:
    """AuE ``[len(seeds), F]`` after permuting the labels; equal to :func:`shuffled_label_aue` on the whole.

    Reproduces: the chance baseline of Appendix / Fig. 1, as
    :func:`core.analysis.selectivity.shuffled_label_aue` (the same permutation per seed). The
    thresholds depend on the responses only, so pass 1 runs once; pass 2 once per seed.
    """
    specs, lab, thr = _shard_thresholds(shards, labels, num_classes, num_thresholds, map_shards)
    rows = []
    for s in seeds:
        perm = label_permutation(len(lab), s).numpy()
        counts = _summed_counts(specs, lab[perm], int(num_classes), thr, map_shards)
        rows.append(_trapezoid(_entropy(torch.from_numpy(counts)).numpy()))
    return np.stack(rows) if rows else np.zeros((0, thr.shape[0]))


# --------------------------------------------------------------------------- average precision
def _shard_sorted(start: int, x: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """Scores of one shard sorted descending per filter: ``(start, values [F, n], rows [F, n])``.

    Conv maps ``[n, F, H, W]`` are spatially max-pooled first (Sec. 4), as the service does.
    """
    if x.ndim == 4:
        x = x.max(axis=(2, 3))
    if x.ndim != 2 or len(x) == 0:
        raise InputError(f"each shard must be [n, F] scores or [n, F, H, W] maps, got {tuple(x.shape)}")
    s = np.asarray(x, dtype=np.float64).T                       # [F, n]
    if not np.isfinite(s).all():
        raise InputError(f"scores contains NaN or inf values (shard at row {start}); "
                         "clean or drop them first")
    order = np.argsort(-s, axis=1, kind="stable")
    return start, np.take_along_axis(s, order, axis=1), order + start


def _merge_sorted(parts: list[tuple[int, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-shard descending runs per filter (a stable sort of runs is a k-way merge)."""
    vals = np.concatenate([p[1] for p in parts], axis=1)
    rows = np.concatenate([p[2] for p in parts], axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(vals, order, axis=1), np.take_along_axis(rows, order, axis=1)


def _group_ends_desc(vals: np.ndarray) -> np.ndarray:
    """Per position of rows sorted descending, the index of the last element of its tie group."""
    n = vals.shape[1]
    is_end = np.ones(vals.shape, dtype=bool)
    is_end[:, :-1] = vals[:, :-1] != vals[:, 1:]
    ends = np.where(is_end, np.arange(n), n)
    return np.minimum.accumulate(ends[:, ::-1], axis=1)[:, ::-1]


def _ap_from_sorted(vals: np.ndarray, rows: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """AP ``[C, F]`` from merged descending scores, as scikit-learn (ties are one threshold).

    Per positive ``i``: precision at its score's threshold = positives with score
    ``>= s_i`` over items with score ``>= s_i``; summed over positives in ascending score
    order and divided by their number: the operations of ``_shared_positives_ap``.
    """
    f, n = vals.shape
    ends = _group_ends_desc(vals)
    out = np.zeros((pos.shape[1], f))
    for c in range(pos.shape[1]):
        y = pos[rows, c]                                          # [F, N] in score order
        p = int(pos[:, c].sum())
        if not p:
            continue
        tp = np.cumsum(y, axis=1)
        precision = np.take_along_axis(tp, ends, axis=1) / (ends + 1)
        terms = np.ascontiguousarray(precision[y].reshape(f, p)[:, ::-1])
        out[c] = terms.sum(1) / p
    return out


def class_filter_ap_sharded(shards: Any, labels: Any, num_classes: int | None = None, *,
                            map_shards: MapShards = map_local) -> np.ndarray:
    """Single-filter AP per class ``[C, F]``; equal to :func:`class_filter_ap` on the whole.

    Reproduces: Sec. 4.1, as :func:`core.analysis.precision_recall.class_filter_ap`
    (scores of conv maps are their spatial maximum, Sec. 4).

    Each shard's scores are sorted per filter (in the map step, one call per shard);
    the sorted runs are merged here and AP is read off the merged order, with tied
    scores forming one threshold as in scikit-learn. Only the pooled scores ``[N, F]``
    are held at once, never the feature maps.

    Parameters
    ----------
    shards : stored layer, sequence of arrays or of ``(start, array)``
    labels : ``[N]`` ints or ``[N, C]`` bool multi-label matrix
    num_classes : int, optional
    map_shards : MapShards
        As in :func:`entropy_curves_sharded`.

    Returns
    -------
    numpy.ndarray, float64, ``[C, F]`` (0.0 with a ``UserWarning`` for a class without positives)
    """
    parts = map_shards(_shard_sorted, shard_specs(shards))
    n = _check_tiling([p[0] for p in parts], [p[1].shape[1] for p in parts])
    pos = positives_matrix(labels, n, num_classes, torch.device("cpu")).numpy()
    missing = int((~pos.any(0)).sum())
    if missing:
        warnings.warn(_NO_POSITIVES.format(what=f"{missing} of {pos.shape[1]} classes"), UserWarning,
                      stacklevel=2)
    return _ap_from_sorted(*_merge_sorted(parts), pos)


# --------------------------------------------------------------------------- sparsity
def sparsity_meaningful_sharded(shards: Any, *, map_shards: MapShards = map_local) -> bool:
    """True when no response is negative; equal to :func:`sparsity_meaningful` on the whole.

    Reproduces: the premise of Table 6, as :func:`core.analysis.sparsity.sparsity_meaningful`.
    """
    return bool(min(float(e[2].min()) for e in map_shards(_shard_minmax, shard_specs(shards))) >= 0)


def _shard_fraction(start: int, x: np.ndarray) -> tuple[int, np.ndarray]:
    """``(start, non-zero fraction per item [n])``, as :func:`nonzero_fraction`."""
    if x.ndim < 2 or len(x) == 0 or x[0].size == 0:
        raise InputError(f"each shard must be [n, ...] with n >= 1 and values per item, got {tuple(x.shape)}")
    flat = np.asarray(x).reshape(len(x), -1)
    if flat.dtype.kind == "f" and np.isnan(flat).any():
        raise InputError("acts contains NaN values; NaN is neither zero nor non-zero")
    return start, (flat != 0).sum(1).astype(np.float64) / flat.shape[1]


def nonzero_fraction_sharded(shards: Any, *, map_shards: MapShards = map_local) -> np.ndarray:
    """Per-item non-zero fraction ``[N]``: per shard, concatenated (equal to :func:`nonzero_fraction`).

    Reproduces: Table 6 (per-image sparsity).
    """
    parts = map_shards(_shard_fraction, shard_specs(shards))
    _check_tiling([p[0] for p in parts], [len(p[1]) for p in parts])
    return np.concatenate([p[1] for p in parts])


def _moments(frac: np.ndarray) -> tuple[int, float, float]:
    m = float(frac.mean())
    return len(frac), m, float(((frac - m) ** 2).sum())


def _merge_moments(a: tuple[int, float, float], b: tuple[int, float, float]) -> tuple[int, float, float]:
    """Chan et al.'s pairwise update of (count, mean, sum of squared deviations)."""
    n = a[0] + b[0]
    d = b[1] - a[1]
    return n, a[1] + d * b[0] / n, a[2] + b[2] + d * d * a[0] * b[0] / n


def _shard_unit_counts(start: int, x: np.ndarray) -> tuple[int, int, np.ndarray]:
    """``(start, rows, non-zero count per unit [F])`` of one shard."""
    if x.ndim not in (2, 4) or len(x) == 0:
        raise InputError(f"each shard must be [n, F] or [n, F, H, W] with n >= 1, got {tuple(x.shape)}")
    a = np.asarray(x)
    if a.dtype.kind == "f" and np.isnan(a).any():
        raise InputError("acts contains NaN values; NaN is neither zero nor non-zero")
    return start, len(a), np.count_nonzero(a, axis=(0, 2, 3) if a.ndim == 4 else 0).astype(np.int64)


def unit_nonzero_fraction_sharded(shards: Any, *, map_shards: MapShards = map_local) -> np.ndarray:
    """Fraction of each unit's responses that are non-zero ``[F]``; equal to
    :func:`core.analysis.sparsity.unit_nonzero_fraction` on the whole (integer counts: exactly).

    Reproduces: Table 6's measure per unit (not in the paper).
    """
    specs = shard_specs(shards)
    parts = map_shards(_shard_unit_counts, specs)
    n = _check_tiling([p[0] for p in parts], [p[1] for p in parts])
    x0 = load_shard(specs[0][1])
    per = n * (x0.shape[2] * x0.shape[3] if x0.ndim == 4 else 1)
    return np.sum([p[2] for p in parts], axis=0) / per


def sparsity_summary_sharded(shards: Any, *, map_shards: MapShards = map_local) -> dict[str, float]:
    """Mean and population std of the per-item non-zero fraction from additive per-shard moments.

    Reproduces: Table 6, as :func:`core.analysis.sparsity.sparsity_summary` (equal to
    rounding, <= 1e-12: the moments are summed in another order).
    """
    parts = map_shards(_shard_fraction, shard_specs(shards))
    _check_tiling([p[0] for p in parts], [len(p[1]) for p in parts])
    total = _moments(parts[0][1])
    for p in parts[1:]:
        total = _merge_moments(total, _moments(p[1]))
    return {"mean": total[1], "std": float(np.sqrt(max(total[2], 0.0) / total[0]))}


def class_nonzero_fraction_sharded(shards: Any, labels: Any, num_classes: int | None = None, *,
                                   map_shards: MapShards = map_local) -> np.ndarray:
    """Mean non-zero fraction per class ``[C]`` (NaN without samples) from additive per-shard sums.

    Reproduces: as :func:`core.analysis.sparsity.class_nonzero_fraction` (equal to rounding).
    """
    parts = map_shards(_shard_fraction, shard_specs(shards))
    n = _check_tiling([p[0] for p in parts], [len(p[1]) for p in parts])
    pos = positives_matrix(labels, n, num_classes, torch.device("cpu")).numpy()
    sums = sum((pos[s:s + len(fr)] * fr[:, None]).sum(0) for s, fr in parts)
    count = pos.sum(0).astype(np.float64)
    return np.where(count > 0, sums / np.maximum(count, 1.0), np.nan)


# --------------------------------------------------------------------------- ablations
def ablate_block(start: int, x: np.ndarray, name: str, perms: np.ndarray | None) -> np.ndarray:
    """One block's ablated features ``[n, D]`` (as :func:`ablation_transforms`): rows ``start ..`` of a
    layer whose sp-shuffle permutations are ``perms`` (one row per item, :func:`shuffle_permutations`).

    Reproduces: Sec. 5 (binarize, sp-max, sp-shuffle), a block of rows at a time.
    """
    from core.analysis.ablation import binarize, spatial_max

    if name == "original":
        return np.asarray(x).reshape(len(x), -1)
    if name == "binarize":
        return binarize(np.asarray(x)).reshape(len(x), -1)
    if x.ndim != 4:
        raise InputError(f"{name} needs conv maps [n, C, H, W], got {x.ndim}-D features")
    if name == "sp-max":
        return spatial_max(np.asarray(x))
    n, c, h, w = x.shape
    p = perms[start:start + n]
    flat = np.asarray(x).reshape(n, c, h * w)
    return np.take_along_axis(flat, np.broadcast_to(p[:, None, :], flat.shape), axis=2).reshape(n, -1)


def ablation_features_sharded(shards: Any, name: str, seed: int = 0, *,
                              map_shards: MapShards = map_local) -> np.ndarray:
    """The ablated feature matrix ``[N, D]`` of Table 7, built shard by shard.

    Reproduces: Sec. 5 (binarize, sp-max, sp-shuffle), equal to
    ``ablation_transforms(ndim)[name](whole, seed)``. Binarize and sp-max are per item, so
    they map over shards; sp-shuffle draws every item's permutation in item order from
    one generator seeded with ``seed`` (as :func:`spatial_shuffle`) and hands each shard
    its rows. The classifier of the ablation study then trains on the result (pooled
    features are small; training is not sharded).
    """
    names = ("original", "binarize", "sp-shuffle", "sp-max")
    if name not in names:
        raise InputError(f"unknown ablation {name!r}; use one of {', '.join(names)}")
    specs = shard_specs(shards)
    perms = None
    if name == "sp-shuffle":
        first = load_shard(specs[0][1])
        n = sum(len(load_shard(d)) for _, d in specs)
        if first.ndim != 4:
            raise InputError(f"sp-shuffle needs conv maps [N, C, H, W], got {first.ndim}-D features")
        from core.analysis.ablation import shuffle_permutations

        perms = shuffle_permutations(n, first.shape[2] * first.shape[3], seed).numpy()
    parts = map_shards(ablate_block, specs, name, perms)
    return np.concatenate(parts)


__all__ = ["row_blocks", "entropy_curves_sharded", "aue_sharded", "shuffled_label_aue_sharded",
           "class_filter_ap_sharded", "sparsity_meaningful_sharded", "nonzero_fraction_sharded", "sparsity_summary_sharded",
           "class_nonzero_fraction_sharded", "unit_nonzero_fraction_sharded", "ablation_features_sharded", "ablate_block"]
