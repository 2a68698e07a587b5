"""Single-filter AP and PR curves held against scikit-learn (which defines the measure)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, precision_recall_curve

from core import analysis
from core.errors import InputError


def ref_ap(positives: np.ndarray, scores: np.ndarray) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)   # no-positive columns
        return float(average_precision_score(positives, scores))


def relu_scores(seed: int, n: int = 120, f: int = 8, num_classes: int = 5):
    """Max-pooled-like scores: exact zeros, many ties (rounded), a dead filter (index 2)."""
    rng = np.random.default_rng(seed)
    x = np.round(np.maximum(rng.normal(size=(n, f)), 0.0), 1)
    x[:, 2] = 0.0
    x[:, 5] = np.round(x[:, 5])                        # heavy ties
    y = rng.integers(0, num_classes, n)
    return x, y


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_filter_ap_equals_sklearn(seed):
    x, y = relu_scores(seed)
    pos = y == 1
    got = analysis.filter_ap(x, pos)
    want = np.array([ref_ap(pos, x[:, f]) for f in range(x.shape[1])])
    assert got.dtype == np.float64
    assert np.abs(got - want).max() <= 1e-9


def test_class_filter_ap_equals_sklearn_int_and_multilabel():
    x, y = relu_scores(3, num_classes=4)
    got = analysis.class_filter_ap(x, y, 4)
    want = np.array([[ref_ap(y == c, x[:, f]) for f in range(x.shape[1])] for c in range(4)])
    assert got.shape == (4, x.shape[1])
    assert np.abs(got - want).max() <= 1e-9
    rng = np.random.default_rng(3)
    multi = rng.random((x.shape[0], 3)) < 0.3
    got = analysis.class_filter_ap(torch.from_numpy(x), torch.from_numpy(multi))
    want = np.array([[ref_ap(multi[:, c], x[:, f]) for f in range(x.shape[1])]
                     for c in range(3)])
    assert np.abs(got - want).max() <= 1e-9


def test_chunking_and_torch_input_do_not_change_numbers():
    x, y = relu_scores(4)
    a = analysis.class_filter_ap(x, y, 5)
    b = analysis.class_filter_ap(x, y, 5, chunk_elements=1)
    c = analysis.class_filter_ap(torch.from_numpy(x).float(), torch.from_numpy(y), 5)
    d = analysis.class_filter_ap(x.astype(np.float32), y, 5)
    assert np.abs(a - b).max() <= 1e-12               # only summation order differs
    assert np.abs(c - d).max() <= 1e-12
    assert np.abs(a - c).max() <= 1e-6                 # float32 rounding changes ties


def test_no_positives_follows_sklearn():
    x, _ = relu_scores(5)
    pos = np.zeros(x.shape[0], bool)
    with pytest.warns(UserWarning, match="No positive class"):
        got = analysis.filter_ap(x, pos)
    with pytest.warns(UserWarning, match="No positive class"):
        want = average_precision_score(pos, x[:, 0])
    assert want == 0.0 and np.all(got == 0.0)
    y = np.zeros(x.shape[0], int)                      # class 1 of 2 never occurs
    with pytest.warns(UserWarning, match="1 of 2 classes"):
        ap = analysis.class_filter_ap(x, y, 2)
    assert np.all(ap[1] == 0.0) and np.all(ap[0] == 1.0)


def test_known_answers():
    s = np.array([[3.0], [2.0], [1.0], [0.0]])
    assert analysis.filter_ap(s, np.array([1, 1, 0, 0]))[0] == 1.0   # perfect ranking
    assert analysis.filter_ap(s, np.array([0, 0, 1, 1]))[0] == pytest.approx(
        (1 / 3 + 2 / 4) / 2)
    tied = np.ones((4, 1))                                           # one tie group
    assert analysis.filter_ap(tied, np.array([1, 0, 0, 0]))[0] == 0.25


@pytest.mark.parametrize("seed", [0, 6])
def test_pr_curve_equals_sklearn(seed):
    x, y = relu_scores(seed)
    for f in (0, 2, 5):
        got = analysis.pr_curve(x[:, f], y == 0)
        want = precision_recall_curve(y == 0, x[:, f])
        for g, w in zip(got, want):
            assert g.shape == w.shape
            assert np.abs(g - w).max() <= 1e-12


def test_pr_curve_without_positives_warns_like_sklearn():
    s = np.array([0.0, 1.0, 1.0, 2.0])
    with pytest.warns(UserWarning, match="No positive class"):
        got = analysis.pr_curve(torch.from_numpy(s), np.zeros(4, bool))
    with pytest.warns(UserWarning):
        want = precision_recall_curve(np.zeros(4, bool), s)
    for g, w in zip(got, want):
        assert np.array_equal(g, w)


def test_shuffled_label_ap_shape_and_determinism():
    x, y = relu_scores(7)
    a = analysis.shuffled_label_ap(x, y, 5, seeds=(0, 1))
    assert a.shape == (2, 5, x.shape[1])
    assert np.array_equal(a, analysis.shuffled_label_ap(x, y, 5, seeds=(0, 1)))
    assert not np.array_equal(a[0], a[1])
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0)).numpy()
    assert np.array_equal(a[0], analysis.class_filter_ap(x, y[perm], 5))


@pytest.mark.parametrize("call", [
    lambda: analysis.filter_ap(np.zeros((4, 2)), np.zeros(3, bool)),
    lambda: analysis.filter_ap(np.zeros((4, 2, 2, 2)), np.zeros(4, bool)),
    lambda: analysis.filter_ap(np.full((2, 1), np.nan), np.ones(2, bool)),
    lambda: analysis.filter_ap(np.zeros((2, 1)), np.array([0, 2])),
    lambda: analysis.class_filter_ap(np.zeros((3, 2)), np.array([0, 1, 3]), 3),
    lambda: analysis.class_filter_ap(np.zeros((3, 2)), np.zeros((3, 2)), 4),
    lambda: analysis.pr_curve(np.zeros((3, 2)), np.zeros(3, bool)),
])
def test_bad_input_raises_input_error(call):
    with pytest.raises(InputError):
        call()
