"""Per-layer linear classifiers on layers too large to hold: least-squares SVMs from accumulated products.

Reproduces: the linear-classifier mAP behind Tables 1-4 (one layer's features, train -> test),
as :func:`core.analysis.svm_ranking.linear_map` with ``SVMConfig(method="lssvm")``, the ablations of
Tables 7-8, and the filter ranking of Fig. 4 / Table 5, reading the features as row blocks that are
never held together. A least-squares SVM (ridge regression on +-1 targets) needs only ``Z^T Z``,
``Z^T Y`` and the column sums of the standardised rows ``Z``, which add up block by block.

Three passes over the data (each reads every block once, so time grows linearly with the rows and
memory not at all): (0) the training columns' mean and variance; (1) the products of the
standardised training rows, separately for the rows that fit the validation classifiers and the
rows that score them; (2) the validation rows' scores, which choose the regulariser per class as
:func:`linear_map` does, and the test rows' scores under every regulariser. Several problems on one
stream (an ablation study: four transforms of the same rows) share passes 0 and 2, and pass 1 as far
as their products fit together, so a study reads the layer ``2 + (number of product groups)`` times.

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
from core.analysis.svm_ranking import (PAPER_K, FilterRankingResult, LinearMapResult, SVMConfig, _ap,
                                       _num_classes, _val_split, paper_k_values)
from core.errors import InputError

#: A layer's rows as a restartable stream: each call yields its row blocks ``[n_b, ...]`` in row
#: order (float16/32/64 arrays or tensors; conv maps are flattened per row).
RowSource = Callable[[], Iterable[Any]]


def sketch_dim(budget_bytes: int) -> int:
    """The widest layer whose products fit ``budget_bytes``: three ``K x K`` float64 matrices (the fit
    and validation products, and the working copy a solve factorises in place) take at most 3/8 of it
    (the row blocks, a 128th of the budget each, and their working copies take far less than the rest).
    4,096 at 1 GiB: AlexNet's fc layers stay exact.

    Reproduces: nothing in the paper (its SVMs ran on a large machine); the width beyond which
    :func:`linear_map_streamed` count-sketches a layer.
    """
    return max(64, math.isqrt(max(0, int(budget_bytes)) // 64))


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

    def apply(self, z: torch.Tensor, in_place: bool = False) -> torch.Tensor:
        """``[n, D]`` -> ``[n, dim]``; ``in_place``: ``z`` may be overwritten (no full-width copy)."""
        signed = z.mul_(self.signs.to(z.dtype)) if in_place else z * self.signs.to(z.dtype)
        return torch.zeros(z.shape[0], self.dim, dtype=z.dtype).index_add_(1, self.buckets, signed)


#: A per-block feature transform ``(global start row, block [n_b, ...] float32) -> [n_b, D]``
#: (the ablations of Sec. 5); the identity flattens.
Transform = Callable[[int, torch.Tensor], torch.Tensor]


def _flat(start: int, x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1)


def _flat64(start: int, x: torch.Tensor) -> torch.Tensor:
    """Flattened float64 rows: pooled layers are narrow, so their classifiers standardise in float64."""
    return x.reshape(x.shape[0], -1).to(torch.float64)


def _rows(source: RowSource, n: int, name: str, check: bool = False) -> Iterator[tuple[int, torch.Tensor]]:
    """``(start, block float32)`` over one pass of ``source``, checking it yields ``n`` rows (float32
    holds a float16 store exactly); ``check``: also refuse NaN and inf (the first pass of a study does,
    the later ones read the same rows)."""
    start = 0
    for block in source():
        t = as_torch(block, name=name).to(torch.float32)
        if check and not torch.isfinite(t).all():
            raise InputError(f"{name} contains NaN or inf values (block at row {start}); clean or drop them first")
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

    @property
    def dim(self) -> int:
        """Columns the classifier sees."""
        return self.sketch.dim if self.sketch is not None else self.mean.numel()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised (and sketched) rows, in ``x``'s dtype; one full-width working copy, changed in place."""
        z = x - self.mean.to(x.dtype)
        z.div_(self.std.to(x.dtype))
        return z if self.sketch is None else self.sketch.apply(z, in_place=True)


#: Rows gathered before their products are taken: one rank-k update of at least this many rows
#: amortises a pass over the ``K x K`` totals over them.
_PRODUCT_ROWS = 1024


@dataclasses.dataclass
class _Sums:
    """``Z^T Z`` (upper triangle), ``Z^T Y`` and ``sum Z`` of a set of rows, and their count, in float64.
    Rows wait in ``pending`` until :data:`_PRODUCT_ROWS` of them have come; their products are then
    added to the totals in place (on the CPU by BLAS's symmetric rank-k update: half the
    multiplications of a matrix product)."""

    zz: torch.Tensor
    zy: torch.Tensor
    z: torch.Tensor
    n: int = 0
    pending: list = dataclasses.field(default_factory=list)

    @classmethod
    def zeros(cls, k: int, c: int) -> "_Sums":
        return cls(torch.zeros(k, k, dtype=torch.float64), torch.zeros(k, c, dtype=torch.float64),
                   torch.zeros(k, dtype=torch.float64))

    def add(self, z: torch.Tensor, y: torch.Tensor) -> None:
        """Add rows ``z`` with targets ``y`` (float64)."""
        if len(z):
            self.pending.append((z, y))
        if sum(len(p[0]) for p in self.pending) >= _PRODUCT_ROWS:
            self.flush()

    def flush(self) -> None:
        """Add the pending rows' products to the totals."""
        if not self.pending:
            return
        z = torch.cat([p[0] for p in self.pending]).to(torch.float64)
        y = torch.cat([p[1] for p in self.pending])
        self.pending = []
        if z.device.type == "cpu" and self.zz.is_contiguous():
            from scipy.linalg.blas import dsyrk

            # zz's transpose is a Fortran-order view of the same memory: its lower triangle is zz's upper
            out = dsyrk(1.0, z.numpy().T, beta=1.0, c=self.zz.numpy().T, trans=0, lower=1, overwrite_c=1)
            if not np.shares_memory(out, self.zz.numpy()):
                self.zz.copy_(torch.from_numpy(out.T))
        else:
            self.zz += torch.triu(z.T @ z)
        self.zy.addmm_(z.T, y)
        self.z += z.sum(0)
        self.n += z.shape[0]

    def merge(self, other: "_Sums") -> None:
        """Add another set of rows' sums to these."""
        self.flush()
        other.flush()
        self.zz += other.zz
        self.zy += other.zy
        self.z += other.z
        self.n += other.n

    def centre(self, y_mean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Centre the products on these rows' mean, in place (no ``K x K`` copy): ``(Zc^T Zc`` (its upper
        triangle), ``Zc^T (y - y_mean)``, the mean row``)``; :meth:`uncentre` undoes it."""
        self.flush()
        zbar = self.z / self.n
        self.zz.addr_(zbar, zbar, alpha=-self.n)
        return self.zz, self.zy - self.n * torch.outer(zbar, y_mean), zbar

    def uncentre(self, zbar: torch.Tensor) -> None:
        """Undo :meth:`centre` (to rounding)."""
        self.zz.addr_(zbar, zbar, alpha=self.n)


def _ridge(gram: torch.Tensor, rhs: torch.Tensor, lambdas: Sequence[float]) -> torch.Tensor:
    """Ridge weights ``[L, K, C]``: ``(gram + lambda I) w = rhs`` for every lambda, reading only the upper
    triangle of ``gram``; one ``K x K`` working copy (on the CPU factorised in place by LAPACK)."""
    a = torch.empty_like(gram)
    ws = []
    for lam in lambdas:
        a.copy_(gram)
        a.diagonal().add_(lam)
        if a.device.type == "cpu":
            from scipy.linalg import cho_factor, cho_solve

            # a's transpose is a Fortran-order view whose lower triangle is a's upper one
            factor = cho_factor(a.numpy().T, lower=True, overwrite_a=True, check_finite=False)
            ws.append(torch.from_numpy(cho_solve(factor, rhs.numpy(), check_finite=False)))
        else:
            ws.append(torch.cholesky_solve(rhs, torch.linalg.cholesky(a.T)))
    del a
    return torch.stack(ws)


@dataclasses.dataclass(eq=False)
class _Model:
    """Ridge classifiers for every lambda: score = ``(std(x) - zbar) @ w + y_mean``."""

    w: torch.Tensor        # [L, K, C]
    zbar: torch.Tensor     # [K]
    y_mean: torch.Tensor   # [C]

    def scores(self, z: torch.Tensor) -> torch.Tensor:
        """``[L, n, C]`` float64 for standardised rows ``z``."""
        return (z.to(torch.float64) - self.zbar) @ self.w + self.y_mean


#: Roles of a row in one problem.
_FIT, _VAL, _TEST = 1, 2, 3


@dataclasses.dataclass(eq=False)
class _Problem:
    """One least-squares SVM problem over the shared stream: fit on rows ``fit`` (global indices), the
    regulariser per class chosen by AP on rows ``val``, refit on both, scored on rows ``test``.
    Problems with the same ``key`` share their transform's output for every block."""

    key: Any
    transform: Transform
    fit: np.ndarray
    val: np.ndarray
    test: np.ndarray
    config: SVMConfig
    max_dim: int | None
    n: int
    std: _Standardiser | None = None
    lambdas: list[float] = dataclasses.field(default_factory=list)
    val_model: _Model | None = None
    model: _Model | None = None
    gram: tuple | None = None          # (Zc^T Zc upper, Zc^T yc, mean row) of the training rows, on request

    def __post_init__(self) -> None:
        self.role = np.zeros(self.n, dtype=np.int8)
        self.role[self.fit], self.role[self.val], self.role[self.test] = _FIT, _VAL, _TEST
        self.slot = np.zeros(self.n, dtype=np.int64)       # position of a row in its role's given order
        self.slot[self.val], self.slot[self.test] = np.arange(len(self.val)), np.arange(len(self.test))

    @property
    def train(self) -> np.ndarray:
        return (self.role == _FIT) | (self.role == _VAL)


def _blocks(source: RowSource, n: int, problems: Sequence[_Problem],
            check: bool = False) -> Iterator[tuple[int, Iterator[tuple[_Problem, torch.Tensor]]]]:
    """One read of the stream: per block, ``(start, (problem, its transformed block [n_b, D]) ...)``. Each
    transform is applied once per block however many problems share it, and one transformed block is
    alive at a time (the next is made when the consumer moves on)."""
    by_key: dict[Any, list[_Problem]] = {}
    for p in problems:
        by_key.setdefault(p.key, []).append(p)
    widths: dict[Any, int] = {}

    def each(start: int, x: torch.Tensor) -> Iterator[tuple[_Problem, torch.Tensor]]:
        for key, group in by_key.items():
            t = group[0].transform(start, x)
            if widths.setdefault(key, t.shape[1]) != t.shape[1]:
                raise InputError(f"rows: a block has {t.shape[1]} values per row, the first had {widths[key]}")
            for p in group:
                yield p, t
            del t

    for start, x in _rows(source, n, "rows", check):
        yield start, each(start, x)


def _column_stats(source: RowSource, n: int, problems: Sequence[_Problem]) -> None:
    """Pass 0, every problem at once: its training columns' mean and std, and its regularisers.
    Sums are taken about the first training row, so a constant column has exactly zero variance. The
    regulariser grid is ``ridge_grid`` times the mean squared norm of the standardised training rows,
    which is the number of non-constant columns (every standardised column has mean square 1)."""
    acc: dict[int, list] = {}
    for start, blocks in _blocks(source, n, problems, check=True):
        for p, x in blocks:
            x = x[torch.from_numpy(p.train[start:start + len(x)])]
            if not len(x):
                continue
            a = acc.get(id(p))
            if a is None:
                shift = x[0].clone()
                a = acc[id(p)] = [shift, torch.zeros_like(shift, dtype=torch.float64),
                                  torch.zeros_like(shift, dtype=torch.float64)]
            d = x - a[0]
            a[1] += d.sum(0, dtype=torch.float64)
            a[2] += d.square_().sum(0, dtype=torch.float64)
    for p in problems:
        shift, s1, s2 = acc[id(p)]
        m = s1 / int(p.train.sum())
        var = (s2 / int(p.train.sum()) - m * m).clamp_min(0.0)
        std = torch.where(var > 0, var.sqrt(), torch.ones_like(var))
        width = shift.numel()
        sketch = (CountSketch.draw(width, p.max_dim, p.config.seed)
                  if p.max_dim is not None and width > p.max_dim else None)
        p.std = _Standardiser(shift.to(torch.float64) + m, std, sketch)
        scale = float((var > 0).sum()) or 1.0
        p.lambdas = [q * scale for q in p.config.ridge_grid]


def _product_groups(problems: Sequence[_Problem]) -> list[list[_Problem]]:
    """Problems whose products one read can accumulate together: each holds two ``K x K`` float64
    matrices while reading and a solve one more; a group stays within the three of its widest
    allowed problem (``max_dim``, or its width when exact), the share :func:`sketch_dim` budgets."""
    cap = 3 * max(max(p.std.dim, p.max_dim or 0) for p in problems) ** 2
    groups: list[list[_Problem]] = []
    held = widest = 0
    for p in problems:
        k = p.std.dim
        if groups and held + 2 * k * k + max(widest, k) ** 2 <= cap:
            groups[-1].append(p)
            held, widest = held + 2 * k * k, max(widest, k)
        else:
            groups.append([p])
            held, widest = 2 * k * k, k
    return groups


def _fit(source: RowSource, n: int, problems: Sequence[_Problem], y: torch.Tensor, keep_gram: bool = False) -> None:
    """Pass 1, a group of problems per read: the products of the standardised training rows, separately
    for the rows that fit the validation classifiers and the rows that score them; then both classifiers
    (fit rows; fit + validation rows) for every regulariser."""
    for group in _product_groups(problems):
        sums = {id(p): (_Sums.zeros(p.std.dim, y.shape[1]), _Sums.zeros(p.std.dim, y.shape[1])) for p in group}
        for start, blocks in _blocks(source, n, group):
            for p, x in blocks:
                r = torch.from_numpy(p.role[start:start + len(x)])
                train = (r == _FIT) | (r == _VAL)
                if not train.any():
                    continue
                z, r, yb = p.std(x[train]), r[train], y[start:start + len(x)][train]   # one standardised copy
                for role, s in zip((_FIT, _VAL), sums[id(p)]):
                    m = r == role
                    if m.any():
                        s.add(z[m], yb[m])
        for p in group:
            fit_sums, val_sums = sums.pop(id(p))
            y_fit_mean = y[torch.from_numpy(p.fit)].mean(0)
            y_mean = y[torch.from_numpy(np.concatenate([p.fit, p.val]))].mean(0)
            gram, rhs, zbar = fit_sums.centre(y_fit_mean)
            p.val_model = _Model(_ridge(gram, rhs, p.lambdas), zbar, y_fit_mean)
            fit_sums.uncentre(zbar)
            del gram, rhs
            fit_sums.merge(val_sums)
            del val_sums
            gram, rhs, zbar = fit_sums.centre(y_mean)
            p.model = _Model(_ridge(gram, rhs, p.lambdas), zbar, y_mean)
            p.gram = (gram, rhs, zbar) if keep_gram else None
            del fit_sums, gram, rhs


def _score(source: RowSource, n: int, problems: Sequence[_Problem],
           c: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Pass 2, every problem at once: ``(validation scores, test scores)`` ``[L, n_rows, C]`` float64 per
    problem (rows in the order given), the validation rows by the fit-rows classifiers, the test rows by
    the final ones."""
    out = [(torch.zeros(len(p.lambdas), len(p.val), c, dtype=torch.float64),
            torch.zeros(len(p.lambdas), len(p.test), c, dtype=torch.float64)) for p in problems]
    dest_of = {id(p): o for p, o in zip(problems, out)}
    for start, blocks in _blocks(source, n, problems):
        for p, x in blocks:
            val_s, test_s = dest_of[id(p)]
            r = p.role[start:start + len(x)]
            for role, model, dest in ((_VAL, p.val_model, val_s), (_TEST, p.model, test_s)):
                m = r == role
                if m.any():
                    dest[:, torch.from_numpy(p.slot[start:start + len(x)][m])] = model.scores(
                        p.std(x[torch.from_numpy(m)]))
    return out


def _best_lambdas(val_scores: torch.Tensor, pos_val: np.ndarray) -> list[int]:
    """Per class, the regulariser with the best validation AP (first on ties; the middle of the grid
    when the validation rows have no positive), as :func:`linear_map` chooses."""
    n_l = val_scores.shape[0]
    best = []
    for cl in range(pos_val.shape[1]):
        y_val = pos_val[:, cl]
        aps = [_ap(val_scores[i, :, cl].numpy(), y_val) for i in range(n_l)]
        best.append(int(np.argmax(aps)) if y_val.any() else n_l // 2)
    return best


def _solve_problems(source: RowSource, n: int, problems: Sequence[_Problem], pos: np.ndarray) -> list[LinearMapResult]:
    """The three passes for every problem, sharing reads: per problem its test AP, ``1 / lambda`` and
    test scores (in ``test``'s order)."""
    y = torch.from_numpy(pos.astype(np.float64) * 2 - 1)
    _column_stats(source, n, problems)
    _fit(source, n, problems, y)
    results = []
    for p, (val_s, test_s) in zip(problems, _score(source, n, problems, pos.shape[1])):
        best = _best_lambdas(val_s, pos[p.val])
        s = torch.stack([test_s[best[cl], :, cl] for cl in range(pos.shape[1])], 1).numpy()
        aps = np.asarray([_ap(s[:, cl], pos[p.test, cl]) for cl in range(pos.shape[1])])
        results.append(LinearMapResult(aps, np.asarray([1.0 / p.lambdas[b] for b in best]), s))
    return results


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


def _labels(train_y: Any, test_y: Any, num_classes: int | None,
            config: SVMConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Positives ``[N, C]`` of the train and test rows, and the fit / validation split of the train rows
    (stratified when every row has one label), as :func:`linear_map` draws them."""
    c = _num_classes(train_y, test_y, num_classes)
    n_tr, n_te = len(as_torch(train_y)), len(as_torch(test_y))
    p_tr = positives_matrix(train_y, n_tr, c, torch.device("cpu")).numpy()
    p_te = positives_matrix(test_y, n_te, c, torch.device("cpu")).numpy()
    single = p_tr.argmax(1) if bool((p_tr.sum(1) == 1).all()) else None
    fit, val = _val_split(p_tr, single, config)
    return p_tr, p_te, fit, val


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
    p_tr, p_te, fit, val = _labels(train_y, test_y, num_classes, config)
    n_tr, n_te = len(p_tr), len(p_te)
    problem = _Problem("flat", _flat, fit, val, n_tr + np.arange(n_te), config, max_dim, n_tr + n_te)
    return _solve_problems(_chain(train, n_tr, test, n_te), n_tr + n_te, [problem],
                           np.concatenate([p_tr, p_te]))[0]


def filter_ranking_streamed(train: RowSource, train_y: Any, test: RowSource, test_y: Any, *,
                            num_classes: int | None = None, k_values: Sequence[int] = PAPER_K,
                            config: SVMConfig = SVMConfig(method="lssvm")) -> FilterRankingResult:
    """Fig. 4 / Table 5 from least-squares SVMs on pooled rows read block by block.

    Reproduces: Sec. 4.2 (filters ranked per class by ``|w|`` of a linear classifier on the standardised,
    spatially max-pooled features; AP of classifiers on the nested top-k subsets), as
    :func:`core.analysis.svm_ranking.svm_filter_ranking`, with a least-squares SVM in place of the
    hinge-loss one: the regulariser is chosen per class on a validation part of the training rows by AP
    (:func:`linear_map_streamed`'s grid), the all-filter classifier refit on every training row gives
    the ranking, and each top-k classifier is solved from the same products (the ``k x k`` block of the
    training Gram matrix, the regulariser reused, as the hinge version reuses C). Three passes over the
    training rows, one over the test rows, all in float64; memory ``O(F^2)``, never the rows.

    Deviation from the paper: squared loss on +-1 targets, not the hinge loss; the service uses this
    only when the pooled layer is too large for the hinge-loss solver in memory (fc layers at the
    paper's scale), and says so in the result's provenance.

    Parameters
    ----------
    train, test : RowSource
        Pooled rows ``[n_b, F]`` (spatial maxima, or a vector layer), restartable.
    train_y, test_y : ``[N]`` ints or ``[N, C]`` bool
    num_classes : int, optional
    k_values : subset sizes, clipped to ``F`` and completed with ``F``
    config : SVMConfig
        ``ridge_grid``, ``val_fraction`` and ``seed``.

    Returns
    -------
    FilterRankingResult
        ``c_values`` holds ``1 / lambda`` of the chosen regulariser.
    """
    p_tr, p_te, fit, val = _labels(train_y, test_y, num_classes, config)
    c, n_tr, n_te = p_tr.shape[1], len(p_tr), len(p_te)
    problem = _Problem("flat64", _flat64, fit, val, np.zeros(0, dtype=np.int64), config, None, n_tr)
    y = torch.from_numpy(p_tr.astype(np.float64) * 2 - 1)
    _column_stats(train, n_tr, [problem])
    _fit(train, n_tr, [problem], y, keep_gram=True)
    best = _best_lambdas(_score(train, n_tr, [problem], c)[0][0], p_tr[val])
    lam = torch.tensor([problem.lambdas[b] for b in best], dtype=torch.float64)
    weights = torch.stack([problem.model.w[best[cl], :, cl] for cl in range(c)])     # [C, F]
    f = weights.shape[1]
    ranking = np.stack([np.argsort(-np.abs(w), kind="stable") for w in weights.numpy()])
    ks = paper_k_values(f, k_values)
    gram, rhs, zbar = problem.gram       # centred on every training row (its upper triangle)
    problem.gram = None
    sub = torch.zeros(f, c, len(ks), dtype=torch.float64)    # every top-k classifier, zero off its subset
    for cl in range(c):
        for j, k in enumerate(ks):
            if k == f:
                sub[:, cl, j] = weights[cl]
                continue
            cols = torch.from_numpy(np.sort(ranking[cl, :k]))
            g = torch.triu(gram[cols][:, cols])         # ascending columns: the block's upper triangle
            g = g + torch.triu(g, 1).T + lam[cl] * torch.eye(len(cols), dtype=torch.float64)
            sub[cols, cl, j] = torch.linalg.solve(g, rhs[cols, cl])
    del gram, rhs
    scores = torch.zeros(n_te, c, len(ks), dtype=torch.float64)
    for start, x in _rows(test, n_te, "test rows", check=True):
        z = problem.std(_flat64(start, x)) - zbar
        scores[start:start + len(x)] = (z @ sub.reshape(f, -1)).reshape(len(x), c, len(ks))
    scores += problem.model.y_mean[None, :, None]
    ap_by_k = np.asarray([[_ap(scores[:, cl, j].numpy(), p_te[:, cl]) for j in range(len(ks))] for cl in range(c)])
    return FilterRankingResult(ks, ap_by_k, ap_by_k[:, -1].copy(), ranking, weights.numpy(), (1.0 / lam).numpy())


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
    for seed in seeds:   # one seed's ablations share every read; its sp-shuffle permutations live meanwhile
        tr_idx, te_idx = (resplit_indices(y_all, n_te, seed) if resplit
                          else (np.arange(n_tr), n_tr + np.arange(n_te)))
        cfg = dataclasses.replace(config, seed=int(seed))
        p_split = pos[tr_idx]
        single = p_split.argmax(1) if bool((p_split.sum(1) == 1).all()) else None
        fit_pos, val_pos = _val_split(p_split, single, cfg)
        problems = []
        for name in names:
            perms = None
            if name == "sp-shuffle":
                small = torch.int16 if hw <= torch.iinfo(torch.int16).max else torch.int32
                perms = torch.empty(n, hw, dtype=small)
                perms[torch.from_numpy(tr_idx)] = shuffle_permutations(len(tr_idx), hw, seed).to(small)
                perms[torch.from_numpy(te_idx)] = shuffle_permutations(len(te_idx), hw, seed + 1_000_003).to(small)
            problems.append(_Problem(name, _ablation_transform(name, perms), tr_idx[fit_pos], tr_idx[val_pos],
                                     te_idx, cfg, None if name == "sp-max" else max_dim, n))
        for name, res in zip(names, _solve_problems(source, n, problems, pos)):
            boot = bootstrap_map(res.test_scores, y_all[te_idx], res.ap.shape[0], n_bootstrap=n_bootstrap, seed=seed)
            runs.append({"ablation": name, "seed": int(seed), "map": res.map, "ap": res.ap, "boot": boot})
        del problems
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
           "filter_ranking_streamed", "array_source"]
