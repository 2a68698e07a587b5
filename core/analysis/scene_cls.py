"""SUN-CLS protocol: fixed seeded train/val/test partitions and mean ± std of class-averaged accuracy.

Reproduces: SUN-CLS of Agrawal et al. 2014, Sec. 2 -- "we randomly split the dataset into three
parts (train, val, and test) using 50%, 10% and 40% of the data ... the distribution of classes
was uniform across all the three sets ... 1-of-397 classification accuracy averaged over all
classes ... mean ± standard deviation in accuracy over 5 runs", and Tables 1, 2, 4's SUN columns.

Deviation: the linear classifiers are one-vs-rest least-squares SVMs solved in closed form
(:func:`ridge_scores`, as the project's other layer tables),
not hinge-loss SVMs; the regularisation is chosen on the val part by accuracy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from core.analysis.svm_ranking import ridge_dual_scores
from core.errors import InputError

PAPER_FRACTIONS = (0.5, 0.1, 0.4)
RIDGE_GRID = (1e-3, 1e-2, 1e-1, 1.0)


def stratified_split(labels: Any, seed: int, fractions: Sequence[float] = PAPER_FRACTIONS) -> np.ndarray:
    """Assign every item to part 0, 1 or 2 (train / val / test), class by class.

    Each class's items are shuffled with ``numpy.random.default_rng(seed)`` and cut at the
    cumulative fractions (rounded down, test gets the rest), so every part has the same class
    distribution. Returns ``[N]`` int8.
    """
    y = np.asarray(labels).ravel()
    f = np.asarray(fractions, dtype=np.float64)
    if len(f) != 3 or (f < 0).any() or not np.isclose(f.sum(), 1.0):
        raise InputError(f"fractions must be three non-negative shares summing to 1, got {tuple(fractions)}")
    rng = np.random.default_rng(seed)
    part = np.full(len(y), 2, np.int8)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_tr, n_va = int(len(idx) * f[0]), int(len(idx) * f[1])
        part[idx[:n_tr]] = 0
        part[idx[n_tr:n_tr + n_va]] = 1
    return part


def mean_class_accuracy(pred: Any, labels: Any, num_classes: int) -> float:
    """Accuracy averaged over classes (SUN's standard metric); classes absent from ``labels`` skipped."""
    p, y = np.asarray(pred).ravel(), np.asarray(labels).ravel()
    accs = [float((p[y == c] == c).mean()) for c in range(num_classes) if (y == c).any()]
    if not accs:
        raise InputError("no labelled items to score")
    return float(np.mean(accs))


def ridge_scores(x_fit: np.ndarray, y_fit: np.ndarray, x_eval: np.ndarray,
                 lambdas: Sequence[float]) -> np.ndarray:
    """Ridge decision values on +-1 targets, ``[len(lambdas), N_eval, C]``.

    The dual solver of the layer tables when there are fewer items than dimensions; the same
    problem in the primal (``(X^T X + lambda I) w = X^T y``, centred, intercept unpenalised)
    otherwise, so 50k SUN images do not need a 50k x 50k Gram matrix.
    """
    import torch

    if len(x_fit) <= x_fit.shape[1]:
        return ridge_dual_scores(x_fit, y_fit, x_eval, lambdas)
    x = torch.as_tensor(x_fit, dtype=torch.float64)
    xe = torch.as_tensor(x_eval, dtype=torch.float64)
    y = torch.as_tensor(y_fit, dtype=torch.float64) * 2 - 1
    mu, ym = x.mean(0), y.mean(0)
    x, xe, yc = x - mu, xe - mu, y - ym
    cov, rhs = x.T @ x, x.T @ yc
    eye = torch.eye(cov.shape[0], dtype=cov.dtype)
    out = [xe @ torch.cholesky_solve(rhs, torch.linalg.cholesky(cov + lam * eye)) + ym for lam in lambdas]
    return torch.stack(out).numpy()


def _standardise(x_tr: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mu, sd = x_tr.mean(0), x_tr.std(0)
    sd[sd < 1e-6] = 1.0
    return [(a - mu) / sd for a in (x_tr, *others)]


def split_accuracy(x: np.ndarray, labels: np.ndarray, part: np.ndarray, num_classes: int) -> float:
    """Class-averaged test accuracy of one-vs-rest linear classifiers trained on part 0.

    The ridge constant is chosen from :data:`RIDGE_GRID` (times the mean squared norm of the
    standardised training rows) by val (part 1) accuracy; with an empty val part the middle one.
    """
    x = np.asarray(x, np.float32).reshape(len(x), -1)
    y = np.asarray(labels).ravel()
    tr, va, te = (np.flatnonzero(part == k) for k in range(3))
    if len(tr) == 0 or len(te) == 0:
        raise InputError("every split needs training and test items")
    xtr, xva, xte = _standardise(x[tr], x[va], x[te])
    onehot = np.eye(num_classes)[y[tr]]
    scale = float((xtr ** 2).sum(1).mean()) or 1.0
    lambdas = [r * scale for r in RIDGE_GRID]
    best = len(lambdas) // 2
    if len(va):
        val = ridge_scores(xtr, onehot, xva, lambdas)
        best = int(np.argmax([mean_class_accuracy(v.argmax(1), y[va], num_classes) for v in val]))
    scores = ridge_scores(xtr, onehot, xte, [lambdas[best]])[0]
    return mean_class_accuracy(scores.argmax(1), y[te], num_classes)


@dataclass
class SceneResult:
    """Accuracy per split, its mean and (population) std."""

    accuracies: np.ndarray
    mean: float
    std: float
    seeds: tuple[int, ...]


def scene_classification(x: Any, labels: Any, num_classes: int, seeds: Sequence[int] = range(5),
                         partitions: Sequence[np.ndarray] | None = None) -> SceneResult:
    """SUN-CLS evaluation over several fixed partitions: mean ± std of class-averaged accuracy.

    Parameters
    ----------
    x : ``[N, ...]`` features of every item (train and test pooled; flattened)
    labels : ``[N]`` int
    seeds : seeds of :func:`stratified_split` (the paper's 50/10/40 random splits)
    partitions : optional given partitions instead (``[N]`` with 0 train, 1 val, 2 test, -1 unused;
        e.g. SUN397's official Training_XX / Testing_XX lists)
    """
    y = np.asarray(labels).ravel()
    parts = list(partitions) if partitions is not None else [stratified_split(y, s) for s in seeds]
    if not parts:
        raise InputError("scene classification needs at least one split")
    accs = np.asarray([split_accuracy(x, y, np.asarray(p), num_classes) for p in parts])
    used = tuple(int(s) for s in seeds) if partitions is None else tuple(range(len(parts)))
    return SceneResult(accs, float(accs.mean()), float(accs.std()), used)
