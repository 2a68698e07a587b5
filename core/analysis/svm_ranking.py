"""Linear-SVM analyses: filter ranking by |w|, nested filter subsets, per-layer mAP.

Reproduces: Sec. 4.1 (grandmother-cell candidates), Sec. 4.2, Fig. 4, Table 5
(number of filters needed), and the linear-classifier mAP of Tables 1-4 and 7.
"""
from __future__ import annotations

import dataclasses
import logging
import warnings
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from core.analysis._common import (as_numpy, as_torch, check_finite, cpu_generator,
                                   positives_matrix)
from core.analysis.precision_recall import _column_ap
from core.errors import InputError

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

#: The subset sizes of Sec. 4.2, footnote 3.
PAPER_K: tuple[int, ...] = (1, 2, 3, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 80, 100, 128, 256)


@dataclasses.dataclass(frozen=True)
class SVMConfig:
    """How the per-class linear SVMs are trained (its hash can key a cache).

    ``c_grid``: candidate regularisation constants, ascending (ties pick the first);
    ``val_fraction``: share of the training set held out to choose C;
    ``seed``: seeds the validation split and LinearSVC; ``max_iter``: solver cap.
    ``method``: ``"svm"`` (hinge-loss ``LinearSVC``, the paper's) or ``"lssvm"``
    (least-squares SVM = ridge regression on +-1 targets, solved in closed form in the
    dual; used by :func:`linear_map` only). With ``"lssvm"`` the regularisation grid is
    ``ridge_grid`` times the mean squared norm of the (standardised) training rows.
    """

    c_grid: tuple[float, ...] = (0.01, 0.1, 1.0)
    val_fraction: float = 0.25
    seed: int = 0
    max_iter: int = 2000
    method: str = "svm"
    ridge_grid: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0)


@dataclasses.dataclass(frozen=True, eq=False)
class _Problem:
    """Standardised train/test matrices and per-class positives (numpy)."""

    x_tr: np.ndarray
    p_tr: np.ndarray
    x_te: np.ndarray
    p_te: np.ndarray
    fit_idx: np.ndarray
    val_idx: np.ndarray


def _features(x: Any, pool: bool, name: str, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    t = as_torch(x, name=name)
    if t.ndim == 4:
        t = t.amax(dim=(2, 3)) if pool else t.reshape(t.shape[0], -1)
    if t.ndim != 2 or t.shape[0] == 0:
        raise InputError(f"{name} must be [N, F] or [N, C, H, W] with N >= 1, "
                         f"got shape {tuple(t.shape)}")
    check_finite(t, name)
    return t.to(dtype)


def _num_classes(train_y: Any, test_y: Any, num_classes: int | None) -> int | None:
    if num_classes is not None:
        return num_classes
    tr, te = as_torch(train_y), as_torch(test_y)
    if tr.ndim == 2:
        return tr.shape[1]
    return int(max(int(tr.max()), int(te.max()))) + 1


def _val_split(p_tr: np.ndarray, single_label: np.ndarray | None,
               cfg: SVMConfig) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split
    idx = np.arange(p_tr.shape[0])
    try:
        fit, val = train_test_split(idx, test_size=cfg.val_fraction, random_state=cfg.seed,
                                    stratify=single_label)
    except ValueError:  # a class too small to stratify: plain random split
        fit, val = train_test_split(idx, test_size=cfg.val_fraction, random_state=cfg.seed)
    return np.sort(fit), np.sort(val)


def _prepare(train_x: Any, train_y: Any, test_x: Any, test_y: Any,
             num_classes: int | None, pool: bool, cfg: SVMConfig,
             dtype: torch.dtype = torch.float64) -> _Problem:
    """Validated, standardised (training statistics) features in ``dtype``, positives
    matrices and the validation split."""
    xtr, xte = _features(train_x, pool, "train_x", dtype), _features(test_x, pool, "test_x", dtype)
    if xtr.shape[1] != xte.shape[1]:
        raise InputError(f"train_x has {xtr.shape[1]} features but test_x {xte.shape[1]}")
    c = _num_classes(train_y, test_y, num_classes)
    ptr = as_numpy(positives_matrix(train_y, xtr.shape[0], c, xtr.device))
    pte = as_numpy(positives_matrix(test_y, xte.shape[0], c, xte.device))
    var, mean = torch.var_mean(xtr, 0, correction=0)
    std = torch.where(var > 0, var.sqrt(), 1.0)
    xtr, xte = as_numpy((xtr - mean) / std), as_numpy((xte - mean) / std)
    single = ptr.argmax(1) if bool((ptr.sum(1) == 1).all()) else None
    fit, val = _val_split(ptr, single, cfg)
    return _Problem(xtr, ptr, xte, pte, fit, val)


def _fit_scores(x: np.ndarray, y: np.ndarray, x_eval: np.ndarray, c: float,
                cfg: SVMConfig) -> tuple[np.ndarray, np.ndarray]:
    """Train one LinearSVC; return (its weights, decision values on ``x_eval``)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVC
    if y.all() or not y.any():
        raise InputError("a class has only positive or only negative training samples; "
                         "every class needs both to train its linear SVM")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        svm = LinearSVC(C=c, dual="auto", max_iter=cfg.max_iter, random_state=cfg.seed)
        svm.fit(x, y)
    return svm.coef_[0].astype(np.float64), svm.decision_function(x_eval)


def _ap(scores: np.ndarray, pos: np.ndarray) -> float:
    """sklearn-identical AP (0 without positives, no warning)."""
    s = torch.as_tensor(scores, dtype=torch.float64)[:, None]
    return float(_column_ap(s, torch.as_tensor(pos)[:, None, None])[0, 0])


def _choose_c(prob: _Problem, cls: int, cols: np.ndarray, cfg: SVMConfig) -> float:
    """The C of ``cfg.c_grid`` with the best validation AP (first on ties); the middle
    of the grid when the fit part lacks positives or negatives of this class."""
    y_fit, y_val = prob.p_tr[prob.fit_idx, cls], prob.p_tr[prob.val_idx, cls]
    if y_fit.all() or not y_fit.any() or not y_val.any():
        log.info("class %d: too few positives to validate C; using the grid middle", cls)
        return float(cfg.c_grid[len(cfg.c_grid) // 2])
    x_fit = prob.x_tr[np.ix_(prob.fit_idx, cols)]
    x_val = prob.x_tr[np.ix_(prob.val_idx, cols)]
    aps = [_ap(_fit_scores(x_fit, y_fit, x_val, c, cfg)[1], y_val) for c in cfg.c_grid]
    return float(cfg.c_grid[int(np.argmax(aps))])


def paper_k_values(num_filters: int, k_values: Sequence[int] = PAPER_K) -> np.ndarray:
    """``k_values`` clipped to ``num_filters``, sorted, unique, always ending with it.

    Reproduces: Sec. 4.2, footnote 3 (k in {1, 2, 3, 5, ..., 128, 256}).
    """
    ks = sorted({int(k) for k in k_values if 1 <= int(k) <= num_filters} | {num_filters})
    return np.asarray(ks, dtype=np.int64)


@dataclasses.dataclass(frozen=True, eq=False)  # holds arrays: compare fields
class LinearMapResult:
    """Per-class AP of one-vs-rest linear SVMs on a test set (fractions, not percent)."""

    ap: np.ndarray            # [C]
    c_values: np.ndarray      # [C] C chosen on the validation split
    test_scores: np.ndarray   # [N_test, C] decision values

    @property
    def map(self) -> float:
        """Mean AP over classes."""
        return float(np.mean(self.ap))


def linear_map(train_x: Any, train_y: Any, test_x: Any, test_y: Any, *,
               num_classes: int | None = None,
               config: SVMConfig = SVMConfig()) -> LinearMapResult:
    """Mean AP of per-class linear SVMs trained on a feature matrix.

    Reproduces: the linear-classifier evaluation behind Tables 1-4 and 7 (mAP of a
    layer's features on PASCAL-CLS-like data).

    Parameters
    ----------
    train_x, test_x : ``[N, D]`` or ``[N, C, H, W]`` (flattened)
    train_y, test_y : ``[N]`` ints (one-vs-rest) or ``[N, C]`` bool (multi-label)
    num_classes : int, optional (inferred from the labels)
    config : SVMConfig

    Returns
    -------
    LinearMapResult

    Notes
    -----
    Deviations: features are standardised with training statistics; C is chosen per
    class on a held-out part of the training set and the SVM is refit on all of it;
    single-label data is scored by mAP (the paper reports accuracy for SUN-CLS).
    """
    if config.method not in ("svm", "lssvm"):
        raise InputError(f"SVMConfig.method must be 'svm' or 'lssvm', got {config.method!r}")
    prob = _prepare(train_x, train_y, test_x, test_y, num_classes, False, config,
                    torch.float32 if config.method == "lssvm" else torch.float64)
    if config.method == "lssvm":
        return _linear_map_lssvm(prob, config)
    cols = np.arange(prob.x_tr.shape[1])
    c_values, aps, scores = [], [], []
    for cls in range(prob.p_tr.shape[1]):
        c = _choose_c(prob, cls, cols, config)
        s = _fit_scores(prob.x_tr, prob.p_tr[:, cls], prob.x_te, c, config)[1]
        c_values.append(c)
        aps.append(_ap(s, prob.p_te[:, cls]))
        scores.append(s)
    return LinearMapResult(np.asarray(aps), np.asarray(c_values), np.stack(scores, 1))


def ridge_dual_scores(x_fit: np.ndarray, y_fit: np.ndarray, x_eval: np.ndarray,
                      lambdas: Sequence[float]) -> np.ndarray:
    """Decision values of ridge regressions on +-1 targets, all classes and lambdas at once.

    Minimises ``||Xw + b - y||^2 + lambda ||w||^2`` (intercept unpenalised) per class in
    closed form, one Cholesky solve per lambda serving every class: in the dual,
    ``alpha = (K + lambda I)^-1 y`` with the centred Gram matrix ``K = X X^T``, when the
    layer is at least as wide as there are rows (conv maps flattened: ``O(N^2 D + N^3)``
    however wide, hundreds of times faster than hinge-loss solvers there), else in the
    primal, ``w = (X^T X + lambda I)^-1 X^T y`` (``O(N D^2 + D^3)``, fc layers).

    Returns ``[len(lambdas), N_eval, C]``.
    """
    x = torch.as_tensor(x_fit, dtype=torch.float64)
    xe = torch.as_tensor(x_eval, dtype=torch.float64)
    if x.shape[1] >= x.shape[0]:
        return _ridge_gram_scores(x @ x.T, xe @ x.T, y_fit, lambdas)
    y = torch.as_tensor(y_fit, dtype=torch.float64) * 2 - 1
    mu, ym = x.mean(0), y.mean(0)
    x, xe = x - mu, xe - mu
    return as_numpy(_solve(x.T @ x, x.T @ (y - ym), xe, ym, lambdas))


def _solve(gram: torch.Tensor, rhs: torch.Tensor, left: torch.Tensor, ym: torch.Tensor,
           lambdas: Sequence[float]) -> torch.Tensor:
    """``left @ (gram + lambda I)^-1 rhs + ym`` for every lambda: ``[L, N_eval, C]``."""
    eye = torch.eye(gram.shape[0], dtype=gram.dtype)
    return torch.stack([left @ torch.cholesky_solve(rhs, torch.linalg.cholesky(gram + lam * eye)) + ym
                        for lam in lambdas])


def _ridge_gram_scores(gram: Any, cross: Any, y_fit: Any, lambdas: Sequence[float]) -> np.ndarray:
    """:func:`ridge_dual_scores` from *uncentred* inner products: ``gram`` = ``X X^T`` of the fit
    rows, ``cross`` = ``X_eval X^T``. Centring on the fit rows' mean is done on the products
    (``(a - m)·(b - m) = a·b - a·m - m·b + m·m``), so one Gram matrix of a training set serves
    a fit on any subset of its rows (the validation split) without new products."""
    g = torch.as_tensor(gram, dtype=torch.float64)
    h = torch.as_tensor(cross, dtype=torch.float64)
    y = torch.as_tensor(y_fit, dtype=torch.float64) * 2 - 1
    a, ym = g.mean(1), y.mean(0)          # a_i = x_i . m
    b = a.mean()                          # m . m
    k = g - a[:, None] - a[None, :] + b
    kc = h - h.mean(1)[:, None] - a[None, :] + b
    return as_numpy(_solve(k, y - ym, kc, ym, lambdas))


def _linear_map_lssvm(prob: _Problem, cfg: SVMConfig) -> "LinearMapResult":
    """:func:`linear_map` with least-squares SVMs; lambda per class chosen on validation AP.

    On wide layers the inner products of the training rows (and of test with training rows)
    are computed once and serve both the validation fit and the final one. Deviation: those
    products are summed in float32 (4x faster than float64 here; the features are centred
    and standardised first, in float32, and come from a float16 store), the solves run in
    float64."""
    scale = float((prob.x_tr ** 2).sum(dtype=np.float64)) / len(prob.x_tr) or 1.0
    lambdas = [r * scale for r in cfg.ridge_grid]
    fit, vidx = prob.fit_idx, prob.val_idx
    if prob.x_tr.shape[1] >= prob.x_tr.shape[0]:
        x = torch.as_tensor(prob.x_tr, dtype=torch.float32)
        g = (x @ x.T).double()
        c = (torch.as_tensor(prob.x_te, dtype=torch.float32) @ x.T).double()
        fi, vi = torch.as_tensor(fit), torch.as_tensor(vidx)
        val = _ridge_gram_scores(g[fi][:, fi], g[vi][:, fi], prob.p_tr[fit], lambdas)
        full = _ridge_gram_scores(g, c, prob.p_tr, lambdas)
    else:
        val = ridge_dual_scores(prob.x_tr[fit], prob.p_tr[fit], prob.x_tr[vidx], lambdas)
        full = ridge_dual_scores(prob.x_tr, prob.p_tr, prob.x_te, lambdas)
    n_cls = prob.p_tr.shape[1]
    best = []
    for cl in range(n_cls):
        y_val = prob.p_tr[vidx, cl]
        aps = [_ap(val[i, :, cl], y_val) for i in range(len(lambdas))]
        best.append(int(np.argmax(aps)) if y_val.any() else len(lambdas) // 2)
    scores = np.stack([full[best[cl], :, cl] for cl in range(n_cls)], 1)
    aps = np.asarray([_ap(scores[:, cl], prob.p_te[:, cl]) for cl in range(n_cls)])
    return LinearMapResult(aps, np.asarray([1.0 / lambdas[b] for b in best]), scores)


@dataclasses.dataclass(frozen=True, eq=False)  # holds arrays: compare fields
class FilterRankingResult:
    """Outcome of :func:`svm_filter_ranking` (APs are fractions)."""

    k_values: np.ndarray   # [K] subset sizes, ascending, last = number of filters
    ap_by_k: np.ndarray    # [C, K] test AP of an SVM on the top-k filters
    full_ap: np.ndarray    # [C] test AP with all filters (== ap_by_k[:, -1])
    ranking: np.ndarray    # [C, F] filters by descending |w|
    weights: np.ndarray    # [C, F] w of the all-filter SVM (standardised features)
    c_values: np.ndarray   # [C] chosen C

    def fraction_of_full(self) -> np.ndarray:
        """``ap_by_k / full_ap`` (Fig. 4's y-axis)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.ap_by_k / self.full_ap[:, None]

    def filters_needed(self, level: float) -> np.ndarray:
        """Table 5 for this result: see :func:`filters_needed`."""
        return filters_needed(self.k_values, self.ap_by_k, self.full_ap, level)


def _subset_curve(prob: _Problem, cls: int, order: np.ndarray, ks: np.ndarray,
                  c: float, cfg: SVMConfig) -> np.ndarray:
    """Test AP of SVMs on the nested subsets ``order[:k]`` for every ``k`` in ``ks``."""
    out = []
    for k in ks:
        cols = np.sort(order[:k])
        s = _fit_scores(prob.x_tr[:, cols], prob.p_tr[:, cls], prob.x_te[:, cols], c, cfg)[1]
        out.append(_ap(s, prob.p_te[:, cls]))
    return np.asarray(out)


def svm_filter_ranking(train_x: Any, train_y: Any, test_x: Any, test_y: Any, *,
                       num_classes: int | None = None, k_values: Sequence[int] = PAPER_K,
                       config: SVMConfig = SVMConfig()) -> FilterRankingResult:
    """Rank filters per class by ``|w|`` of a linear SVM; AP of nested top-k subsets.

    Reproduces: Sec. 4.2, Fig. 4 and Table 5 (via :func:`filters_needed`).

    Parameters
    ----------
    train_x, test_x : ``[N, F]`` or ``[N, F, H, W]`` (spatially max-pooled first, as
        in Sec. 4)
    train_y, test_y : ``[N]`` ints (one-vs-rest) or ``[N, C]`` bool (multi-label)
    num_classes : int, optional
    k_values : subset sizes, clipped to ``F`` and completed with ``F``
    config : SVMConfig

    Returns
    -------
    FilterRankingResult

    Notes
    -----
    Deviations: features are standardised (so |w| compares filters on one scale); C is
    chosen per class by validation with all filters and reused for every subset; ties
    in |w| go to the lower filter index.
    """
    prob = _prepare(train_x, train_y, test_x, test_y, num_classes, True, config)
    f = prob.x_tr.shape[1]
    ks, allcols = paper_k_values(f, k_values), np.arange(f)
    weights, rankings, curves, cs = [], [], [], []
    for cls in range(prob.p_tr.shape[1]):
        c = _choose_c(prob, cls, allcols, config)
        w = _fit_scores(prob.x_tr, prob.p_tr[:, cls], prob.x_te[:1], c, config)[0]
        order = np.argsort(-np.abs(w), kind="stable")
        curves.append(_subset_curve(prob, cls, order, ks, c, config))
        weights.append(w)
        rankings.append(order)
        cs.append(c)
    ap_by_k = np.stack(curves)
    return FilterRankingResult(ks, ap_by_k, ap_by_k[:, -1].copy(), np.stack(rankings),
                               np.stack(weights), np.asarray(cs))


def subset_ap(train_x: Any, train_y: Any, test_x: Any, test_y: Any, ranking: Any, *,
              k_values: Sequence[int] = PAPER_K, num_classes: int | None = None,
              config: SVMConfig = SVMConfig()) -> np.ndarray:
    """Test AP of SVMs on nested top-k subsets of any given per-class filter ranking.

    Reproduces: the Sec. 4.2 protocol for baseline rankings (e.g. by single-filter AP,
    Sec. 4.1, from :func:`single_ap_ranking`, or random, :func:`random_subset_ap`).

    Parameters
    ----------
    ranking : ``[C, F]`` int, filters by decreasing importance per class
    other parameters : as in :func:`svm_filter_ranking`

    Returns
    -------
    numpy.ndarray, float64, ``[C, K]`` with ``K = len(paper_k_values(F, k_values))``
    """
    prob = _prepare(train_x, train_y, test_x, test_y, num_classes, True, config)
    rank = np.asarray(as_numpy(as_torch(ranking, name="ranking")), dtype=np.int64)
    f = prob.x_tr.shape[1]
    if rank.shape != (prob.p_tr.shape[1], f):
        raise InputError(f"ranking must have shape [{prob.p_tr.shape[1]}, {f}], got {rank.shape}")
    ks, allcols = paper_k_values(f, k_values), np.arange(f)
    return np.stack([_subset_curve(prob, cls, rank[cls], ks,
                                   _choose_c(prob, cls, allcols, config), config)
                     for cls in range(rank.shape[0])])


def single_ap_ranking(train_x: Any, train_y: Any, num_classes: int | None = None) -> np.ndarray:
    """Per-class filter ranking by single-filter AP on the training set.

    Reproduces: Sec. 4.1 (filters sorted by AP; ``ranking[:, :5]`` are the top five
    filters of Fig. 3).

    Returns
    -------
    numpy.ndarray, int64, ``[C, F]`` (ties to the lower filter index)
    """
    from core.analysis.precision_recall import class_filter_ap
    x = _features(train_x, True, "train_x")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ap = class_filter_ap(x, train_y, num_classes)
    return np.argsort(-ap, axis=1, kind="stable")


def random_subset_ap(train_x: Any, train_y: Any, test_x: Any, test_y: Any, *,
                     k_values: Sequence[int] = PAPER_K, seeds: Sequence[int] = (0, 1, 2),
                     num_classes: int | None = None,
                     config: SVMConfig = SVMConfig()) -> np.ndarray:
    """Mean over seeds of :func:`subset_ap` with random filter orders (chance baseline).

    Reproduces: a chance reference for Fig. 4 (not in the paper).

    Returns
    -------
    numpy.ndarray, float64, ``[C, K]``
    """
    f = _features(train_x, True, "train_x").shape[1]
    c = _num_classes(train_y, test_y, num_classes)
    runs = []
    for seed in seeds:
        g = cpu_generator(seed)
        rank = torch.stack([torch.randperm(f, generator=g) for _ in range(c)])
        runs.append(subset_ap(train_x, train_y, test_x, test_y, rank, k_values=k_values,
                              num_classes=c, config=config))
    return np.mean(runs, axis=0)


def filters_needed(k_values: Any, ap_by_k: Any, full_ap: Any, level: float) -> np.ndarray:
    """Smallest subset size whose AP reaches ``level`` times the full AP, per class.

    Reproduces: Table 5 (``level`` 0.5 and 0.9).

    Parameters
    ----------
    k_values : ``[K]`` strictly increasing subset sizes
    ap_by_k : ``[C, K]``
    full_ap : ``[C]``
    level : float > 0

    Returns
    -------
    numpy.ndarray, int64, ``[C]``
        The first ``k`` with ``ap_by_k >= level * full_ap``; the last ``k`` when none does.
    """
    ks = np.asarray(as_numpy(as_torch(k_values, name="k_values")), dtype=np.int64)
    ap = np.asarray(as_numpy(as_torch(ap_by_k, name="ap_by_k")), dtype=np.float64)
    full = np.asarray(as_numpy(as_torch(full_ap, name="full_ap")), dtype=np.float64)
    if ks.ndim != 1 or ks.size == 0 or np.any(np.diff(ks) <= 0):
        raise InputError("k_values must be a non-empty, strictly increasing 1-D sequence")
    if ap.ndim != 2 or ap.shape[1] != ks.size or full.shape != (ap.shape[0],):
        raise InputError(f"ap_by_k must be [C, {ks.size}] and full_ap [C]; got "
                         f"{ap.shape} and {full.shape}")
    if not np.isfinite(level) or level <= 0:
        raise InputError(f"level must be a positive fraction such as 0.5 or 0.9, got {level!r}")
    reached = ap >= level * full[:, None]
    first = np.where(reached.any(1), reached.argmax(1), ks.size - 1)
    return ks[first]


def grandmother_cells(single_filter_ap: Any, full_ap: Any,
                      ratio: float = 0.8) -> "pd.DataFrame":
    """Filters whose single-filter AP comes close to the full-layer SVM AP.

    Reproduces: Sec. 4.1 (grandmother-cell-like filters: high precision and recall).

    Parameters
    ----------
    single_filter_ap : ``[C, F]`` (from :func:`class_filter_ap`)
    full_ap : ``[C]`` (e.g. ``FilterRankingResult.full_ap``)
    ratio : float, the minimal ``ap / full_ap``

    Returns
    -------
    pandas.DataFrame
        Columns ``class, filter, ap, full_ap, ratio``; sorted by class, then ratio
        descending (filter index ascending on ties). Classes with ``full_ap <= 0`` have
        no candidates.
    """
    import pandas as pd
    ap = np.asarray(as_numpy(as_torch(single_filter_ap, name="single_filter_ap")), np.float64)
    full = np.asarray(as_numpy(as_torch(full_ap, name="full_ap")), np.float64)
    if ap.ndim != 2 or full.shape != (ap.shape[0],):
        raise InputError(f"single_filter_ap must be [C, F] and full_ap [C]; got "
                         f"{ap.shape} and {full.shape}")
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(full[:, None] > 0, ap / full[:, None], -np.inf)
    cls, fil = np.nonzero(r >= ratio)
    df = pd.DataFrame({"class": cls, "filter": fil, "ap": ap[cls, fil],
                       "full_ap": full[cls], "ratio": r[cls, fil]})
    df = df.sort_values(["class", "ratio", "filter"], ascending=[True, False, True])
    return df.reset_index(drop=True)


__all__ = ["PAPER_K", "SVMConfig", "LinearMapResult", "ridge_dual_scores", "FilterRankingResult", "paper_k_values",
           "linear_map", "svm_filter_ranking", "subset_ap", "single_ap_ranking",
           "random_subset_ap", "filters_needed", "grandmother_cells"]
