"""Per-layer linear classifiers on layers too large to hold: least-squares SVMs from accumulated products.

Reproduces: the linear-classifier mAP behind Tables 1-4 (one layer's features, train -> test),
as :func:`core.analysis.svm_ranking.linear_map` with ``SVMConfig(method="lssvm")``, reading the
features as row blocks that are never held together. A least-squares SVM (ridge regression on
+-1 targets) needs only ``Z^T Z``, ``Z^T Y`` and the column sums of the standardised rows ``Z``,
which add up block by block.

Three passes over the data (each reads every block once, so time grows linearly with the rows and
memory not at all): (0) the training columns' mean and variance; (1) the products of the
standardised training rows, separately for the rows that fit the validation classifiers and the
rows that score them; (2) the validation rows' scores, which choose the regulariser per class as
:func:`linear_map` does, and the test rows' scores under every regulariser.

Deviations from the in-memory function: the products are summed in float32 within a block and in
float64 across blocks, in the primal (``D x D``) form whatever the width; the in-memory function
uses the dual (``N x N``) form for layers wider than their training set (its products in float32
too), which gives the same classifiers up to rounding. A layer
wider than ``max_dim`` columns is first reduced to ``max_dim`` columns by a count sketch of its
standardised columns (Charikar et al. 2002; "feature hashing", Weinberger et al. 2009): each
column is added, with a random sign, to one of ``max_dim`` buckets, which keeps inner products in
expectation. Its classifiers then approximate the full-width ones; callers say so where they show
the result.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from core.analysis._common import as_numpy, as_torch, cpu_generator, positives_matrix
from core.analysis.ablation import (AblationResult, _summarise, ablation_transforms, bootstrap_map,
                                    resplit_indices, shuffle_permutations)
from core.analysis.svm_ranking import (LinearMapResult, SVMConfig, _ap, _num_classes,
                                       _val_split)
from core.errors import InputError

#: A layer's rows as a restartable stream: each call yields its row blocks ``[n_b, ...]`` in row
#: order (float16/32/64 arrays or tensors; conv maps are flattened per row).
RowSource = Callable[[], Iterable[Any]]


def sketch_dim(budget_bytes: int) -> int:
    """The widest layer whose products fit ``budget_bytes``: four ``K x K`` float64 matrices (the fit
    and validation products, the regularised copy and its Cholesky factor) take at most a third of it
    (the row blocks and their standardised copies take the rest).

    Reproduces: nothing in the paper (its SVMs ran on a large machine); the width beyond which
    :func:`linear_map_streamed` count-sketches a layer.
    """
    return max(64, math.isqrt(max(0, int(budget_bytes)) // 96))


@dataclasses.dataclass(frozen=True, eq=False)
class CountSketch:
    """A count sketch of ``D`` columns into ``dim`` buckets: column ``d`` adds ``signs[d] * x[:, d]``
    to bucket ``buckets[d]``. Linear, so ``sketch(a - b) = sketch(a) - sketch(b)``."""

    buckets: torch.Tensor   # [D] int64
    signs: torch.Tensor     # [D] float64, +-1
    dim: int

    @classmethod
    def draw(cls, num_columns: int, dim: int, seed: int = 0) -> "CountSketch":
        """Buckets and signs drawn from a CPU generator seeded with ``seed`` (device-independent)."""
        g = cpu_generator(seed)
        buckets = torch.randint(dim, (num_columns,), generator=g)
        signs = torch.randint(2, (num_columns,), generator=g).to(torch.float64) * 2 - 1
        return cls(buckets, signs, int(dim))

    def apply(self, z: torch.Tensor) -> torch.Tensor:
        """``[n, D]`` -> ``[n, dim]``."""
        out = torch.zeros(z.shape[0], self.dim, dtype=z.dtype)
        return out.index_add_(1, self.buckets, z * self.signs.to(z.dtype))


#: A per-block feature transform ``(global start row, block [n_b, ...] float32) -> [n_b, D]``
#: (the ablations of Sec. 5); the identity flattens.
Transform = Callable[[int, torch.Tensor], torch.Tensor]


def _flat(start: int, x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1)


def _rows(source: RowSource, n: int, name: str,
          transform: Transform = _flat) -> Iterator[tuple[int, torch.Tensor]]:
    """``(start, transformed block [n_b, D] float32)`` over one pass of ``source``, checking it yields ``n`` rows
    (float32 holds a float16 store exactly)."""
    start, width = 0, None
    for block in source():
        t = as_torch(block, name=name).to(torch.float32)
        if not torch.isfinite(t).all():
            raise InputError(f"{name} contains NaN or inf values (block at row {start}); clean or drop them first")
        t = transform(start, t)
        if width is not None and t.shape[1] != width:
            raise InputError(f"{name}: a block has {t.shape[1]} values per row, the first had {width}")
        width = t.shape[1]
        yield start, t
        start += t.shape[0]
    if start != n:
        raise InputError(f"{name} yielded {start} rows but its labels have {n}; give one label per row")


@dataclasses.dataclass
class _Standardiser:
    """Training columns' mean and std (population; 1 where a column is constant), then the sketch."""

    mean: torch.Tensor
    std: torch.Tensor
    sketch: CountSketch | None

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised rows, in ``x``'s dtype."""
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def reduce(self, z: torch.Tensor) -> torch.Tensor:
        """Standardised rows sketched to the classifier's columns (as they are when not sketched)."""
        return self.sketch.apply(z) if self.sketch is not None else z

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised (and sketched) float32 rows."""
        return self.reduce(self.standardise(x))


def _column_stats(rows: Iterator[tuple[int, torch.Tensor]], train: np.ndarray, max_dim: int | None,
                  seed: int) -> _Standardiser:
    """Pass 0 over the ``train`` rows (a bool mask over all rows). Sums are taken about the first
    training row, so a constant column has exactly zero variance."""
    shift = s1 = s2 = None
    n = int(train.sum())
    for start, x in rows:
        x = x[torch.from_numpy(train[start:start + len(x)])]
        if not len(x):
            continue
        if shift is None:
            shift = x[0].clone()
            s1, s2 = torch.zeros_like(shift, dtype=torch.float64), torch.zeros_like(shift, dtype=torch.float64)
        d = x - shift
        s1 += d.sum(0, dtype=torch.float64)
        s2 += (d * d).sum(0, dtype=torch.float64)
    m = s1 / n
    var = (s2 / n - m * m).clamp_min(0.0)
    std = torch.where(var > 0, var.sqrt(), torch.ones_like(var))
    width = shift.numel()
    sketch = CountSketch.draw(width, max_dim, seed) if max_dim is not None and width > max_dim else None
    return _Standardiser(shift.to(torch.float64) + m, std, sketch)


@dataclasses.dataclass
class _Sums:
    """``Z^T Z``, ``Z^T Y`` and ``sum Z`` of a set of rows, and their count."""

    zz: torch.Tensor
    zy: torch.Tensor
    z: torch.Tensor
    n: int = 0

    @classmethod
    def zeros(cls, k: int, c: int) -> "_Sums":
        return cls(torch.zeros(k, k, dtype=torch.float64), torch.zeros(k, c, dtype=torch.float64),
                   torch.zeros(k, dtype=torch.float64))

    def add(self, z: torch.Tensor, y: torch.Tensor) -> None:
        """Add rows ``z`` (float32: their products are summed in float32 within the block, in float64
        across blocks, as the in-memory function sums its Gram) with targets ``y``."""
        self.zz += torch.mm(z.T, z).to(torch.float64)
        self.zy.addmm_(z.T.to(torch.float64), y)
        self.z += z.sum(0, dtype=torch.float64)
        self.n += z.shape[0]


def _solve(sums: _Sums, y_mean: torch.Tensor, lambdas: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Ridge weights ``[L, K, C]`` for every lambda, centred on these rows' means (intercept unpenalised),
    and the rows' mean ``[K]``: ``(Zc^T Zc + lambda I) w = Zc^T (y - y_mean)``."""
    zbar = sums.z / sums.n
    gram = sums.zz - sums.n * torch.outer(zbar, zbar)
    rhs = sums.zy - sums.n * torch.outer(zbar, y_mean)
    eye = torch.eye(gram.shape[0], dtype=gram.dtype)
    ws = []
    for lam in lambdas:
        factor = torch.linalg.cholesky(gram + lam * eye)
        ws.append(torch.cholesky_solve(rhs, factor))
        del factor
    return torch.stack(ws), zbar


def _lssvm_streamed(source: RowSource, n: int, transform: Transform, pos: np.ndarray, fit: np.ndarray,
                    val: np.ndarray, test: np.ndarray, config: SVMConfig,
                    max_dim: int | None) -> LinearMapResult:
    """Least-squares SVMs on the rows of one stream: fit on rows ``fit`` (global indices), the
    regulariser per class chosen by AP on rows ``val``, refit on both, scored on rows ``test``
    (returned in ``test``'s order). ``pos`` ``[n, C]`` bool: every row's positives."""
    c = pos.shape[1]
    role = np.zeros(n, dtype=np.int8)
    role[fit], role[val], role[test] = 1, 2, 3
    y = torch.from_numpy(pos.astype(np.float64) * 2 - 1)
    std = _column_stats(_rows(source, n, "rows", transform), (role == 1) | (role == 2), max_dim, config.seed)
    k = std.sketch.dim if std.sketch is not None else std.mean.numel()
    fit_sums, val_sums = _Sums.zeros(k, c), _Sums.zeros(k, c)
    sq = 0.0
    for start, x in _rows(source, n, "rows", transform):
        r = torch.from_numpy(role[start:start + len(x)])
        train = (r == 1) | (r == 2)
        if not train.any():
            continue
        z0 = std.standardise(x[train])
        sq += float((z0 * z0).sum(dtype=torch.float64))
        z = std.reduce(z0)
        del z0
        yb, rb = y[start:start + len(x)][train], r[train]
        fit_sums.add(z[rb == 1], yb[rb == 1])
        val_sums.add(z[rb == 2], yb[rb == 2])
    lambdas = [q * (sq / (len(fit) + len(val)) or 1.0) for q in config.ridge_grid]

    # the validation classifiers (fit rows) and the final ones (fit + validation rows), every lambda
    y_fit_mean, y_mean = y[torch.from_numpy(fit)].mean(0), y[torch.from_numpy(np.concatenate([fit, val]))].mean(0)
    w_val, zbar_val = _solve(fit_sums, y_fit_mean, lambdas)
    for a, b in ((fit_sums.zz, val_sums.zz), (fit_sums.zy, val_sums.zy), (fit_sums.z, val_sums.z)):
        a += b
    fit_sums.n += val_sums.n
    del val_sums
    w_all, zbar = _solve(fit_sums, y_mean, lambdas)
    del fit_sums
    # one pass scores the validation rows with the first and the test rows with the second
    out = torch.zeros(len(lambdas), n, c, dtype=torch.float64)
    for start, x in _rows(source, n, "rows", transform):
        r = role[start:start + len(x)]
        for wanted, w, zb, ym in ((2, w_val, zbar_val, y_fit_mean), (3, w_all, zbar, y_mean)):
            m = torch.from_numpy(r == wanted)
            if m.any():
                idx = torch.nonzero(m).squeeze(1) + start
                out[:, idx, :] = (std(x[m]).to(torch.float64) - zb) @ w + ym
    val_scores = out[:, torch.from_numpy(val)]
    best = []
    for cl in range(c):
        y_val = pos[val, cl]
        aps = [_ap(val_scores[i, :, cl].numpy(), y_val) for i in range(len(lambdas))]
        best.append(int(np.argmax(aps)) if y_val.any() else len(lambdas) // 2)
    test_scores = out[:, torch.from_numpy(test)]
    s = torch.stack([test_scores[best[cl], :, cl] for cl in range(c)], 1).numpy()
    aps = np.asarray([_ap(s[:, cl], pos[test, cl]) for cl in range(c)])
    return LinearMapResult(aps, np.asarray([1.0 / lambdas[b] for b in best]), s)


def _chain(train: RowSource, n_train: int, test: RowSource, n_test: int) -> RowSource:
    """The training rows, then the test rows, as one stream (each part's row count checked)."""
    def part(source: RowSource, n: int, name: str) -> Iterator[Any]:
        seen = 0
        for block in source():
            seen += len(block)
            yield block
        if seen != n:
            raise InputError(f"{name} yielded {seen} rows but its labels have {n}; give one label per row")
    return lambda: itertools.chain(part(train, n_train, "train rows"), part(test, n_test, "test rows"))


def linear_map_streamed(train: RowSource, train_y: Any, test: RowSource, test_y: Any, *,
                        num_classes: int | None = None, config: SVMConfig = SVMConfig(method="lssvm"),
                        max_dim: int | None = None) -> LinearMapResult:
    """Mean AP of per-class least-squares SVMs, reading train and test rows block by block.

    Reproduces: the linear-classifier evaluation of Tables 1-4, as :func:`linear_map` with
    ``method="lssvm"`` (standardised features, one-vs-rest ridge on +-1 targets, the regulariser
    chosen per class on a validation part of the training rows by AP, then refit on all of them).

    Parameters
    ----------
    train, test : RowSource
        Restartable streams of row blocks (each call yields the blocks again, in row order).
    train_y, test_y : ``[N]`` ints or ``[N, C]`` bool
    num_classes : int, optional
    config : SVMConfig
        ``ridge_grid``, ``val_fraction`` and ``seed`` as in :func:`linear_map`.
    max_dim : int, optional
        Wider layers are count-sketched to this many columns first (see the module's notes);
        None: exact at any width (``D x D`` products).

    Returns
    -------
    LinearMapResult
        As :func:`linear_map`'s: per-class test AP, ``1 / lambda`` chosen, test scores ``[N_test, C]``.
    """
    if max_dim is not None and max_dim < 1:
        raise InputError(f"max_dim must be >= 1 or None, got {max_dim}")
    c = _num_classes(train_y, test_y, num_classes)
    n_tr, n_te = len(as_torch(train_y)), len(as_torch(test_y))
    p_tr = positives_matrix(train_y, n_tr, c, torch.device("cpu")).numpy()
    p_te = positives_matrix(test_y, n_te, c, torch.device("cpu")).numpy()
    single = p_tr.argmax(1) if bool((p_tr.sum(1) == 1).all()) else None
    fit, val = _val_split(p_tr, single, config)
    return _lssvm_streamed(_chain(train, n_tr, test, n_te), n_tr + n_te, _flat, np.concatenate([p_tr, p_te]), fit, val,
                           n_tr + np.arange(n_te), config, max_dim)


def _ablation_transform(name: str, perms: torch.Tensor | None) -> Transform:
    """The per-block form of :func:`core.analysis.ablation.ablation_transforms` ``[name]``; ``perms``
    ``[N, H*W]``: the spatial permutation of every row (sp-shuffle)."""
    if name == "original":
        return _flat
    if name == "binarize":
        return lambda start, x: (x > 0).to(x.dtype).reshape(len(x), -1)
    if name == "sp-max":
        return lambda start, x: x.amax(dim=(2, 3))

    def shuffle(start: int, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        p = perms[start:start + n].to(torch.int64)
        return torch.gather(x.reshape(n, c, h * w), 2, p[:, None, :].expand(n, c, h * w)).reshape(n, -1)
    return shuffle


def ablation_study_streamed(train: RowSource, train_y: Any, test: RowSource, test_y: Any, *,
                            num_classes: int | None = None, seeds: Sequence[int] = (0, 1, 2),
                            resplit: bool = True, n_bootstrap: int = 500,
                            config: SVMConfig = SVMConfig(method="lssvm"),
                            max_dim: int | None = None) -> AblationResult:
    """Tables 7-8 (original / binarize / sp-shuffle / sp-max) reading the features block by block.

    Reproduces: Sec. 5, Table 7 and Table 8's conv-5 row, as
    :func:`core.analysis.ablation.ablation_study` with ``SVMConfig(method="lssvm")``: the same
    re-splits of the pooled rows, the same sp-shuffle permutations, validation splits and bootstrap
    resamples, so the same numbers up to rounding. Each ablation is applied to a block as it is read
    (never to the whole layer), the classifiers come from accumulated products
    (:func:`linear_map_streamed`; wider layers count-sketched to ``max_dim`` columns, sp-max never:
    it has one column per channel), and the bootstrap resamples the test scores, not the features.

    Parameters
    ----------
    train, test : RowSource
        Row blocks ``[n_b, C, H, W]`` (conv maps: all four ablations) or ``[n_b, F]`` (original and
        binarize).
    train_y, test_y, num_classes, seeds, resplit, n_bootstrap, config
        As in :func:`ablation_study`.
    max_dim : int, optional
        As in :func:`linear_map_streamed`.

    Returns
    -------
    AblationResult
    """
    first = as_torch(next(iter(train())), name="train rows").shape     # conv maps or vectors, and H x W
    names = list(ablation_transforms(len(first)))
    hw = int(first[2] * first[3]) if len(first) == 4 else None
    c = _num_classes(train_y, test_y, num_classes)
    y_all = np.concatenate([as_numpy(as_torch(train_y)), as_numpy(as_torch(test_y))])
    n_tr, n = len(as_torch(train_y)), len(y_all)
    n_te = n - n_tr
    pos = positives_matrix(y_all, n, c, torch.device("cpu")).numpy()
    source = _chain(train, n_tr, test, n_te)
    runs: list[dict] = []
    for seed in seeds:
        tr_idx, te_idx = (resplit_indices(y_all, n_te, seed) if resplit
                          else (np.arange(n_tr), n_tr + np.arange(n_te)))
        cfg = dataclasses.replace(config, seed=int(seed))
        p_split = pos[tr_idx]
        single = p_split.argmax(1) if bool((p_split.sum(1) == 1).all()) else None
        fit_pos, val_pos = _val_split(p_split, single, cfg)
        for name in names:
            perms = None
            if name == "sp-shuffle":
                perms = torch.empty(n, hw, dtype=torch.int32)
                perms[torch.from_numpy(tr_idx)] = shuffle_permutations(len(tr_idx), hw, seed).to(torch.int32)
                perms[torch.from_numpy(te_idx)] = shuffle_permutations(len(te_idx), hw, seed + 1_000_003).to(torch.int32)
            res = _lssvm_streamed(source, n, _ablation_transform(name, perms), pos, tr_idx[fit_pos],
                                  tr_idx[val_pos], te_idx, cfg, None if name == "sp-max" else max_dim)
            boot = bootstrap_map(res.test_scores, y_all[te_idx], res.ap.shape[0], n_bootstrap=n_bootstrap, seed=seed)
            runs.append({"ablation": name, "seed": int(seed), "map": res.map, "ap": res.ap, "boot": boot})
    summary = tuple(_summarise(name, [r["map"] for r in runs if r["ablation"] == name],
                               [r["boot"] for r in runs if r["ablation"] == name]) for name in names)
    return AblationResult(tuple({k: v for k, v in r.items() if k != "boot"} for r in runs), summary)


def array_source(x: Any, rows_per_block: int) -> RowSource:
    """A :data:`RowSource` over an in-memory array (or memmap), ``rows_per_block`` rows at a time.

    Reproduces: nothing in the paper; feeds an array to :func:`linear_map_streamed` and
    :func:`ablation_study_streamed`.
    """
    if rows_per_block < 1:
        raise InputError(f"rows_per_block must be >= 1, got {rows_per_block}")
    return lambda: (x[i:i + rows_per_block] for i in range(0, len(x), rows_per_block))


__all__ = ["RowSource", "CountSketch", "sketch_dim", "linear_map_streamed", "ablation_study_streamed",
           "array_source"]
