"""Layer mAP and ablations read in row blocks (core/analysis/streamed_svm.py) against the in-memory
functions of svm_ranking / ablation (which the other tests hold to scikit-learn and the paper), and the
count sketch against its definition."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from core.analysis.ablation import ablation_study
from core.analysis.streamed_svm import (CountSketch, ablation_study_streamed, array_source,
                                        linear_map_streamed, sketch_dim)
from core.analysis.svm_ranking import SVMConfig, linear_map
from core.errors import InputError

LSSVM = SVMConfig(method="lssvm")


def _data(n_tr: int, n_te: int, shape: tuple, classes: int, seed: int, multilabel: bool = False):
    rng = np.random.default_rng(seed)
    if multilabel:
        ytr, yte = rng.random((n_tr, classes)) < 0.35, rng.random((n_te, classes)) < 0.35
        ytr[:classes, :] = np.eye(classes, dtype=bool)    # every class has a positive
        yte[:classes, :] = np.eye(classes, dtype=bool)
        ctr, cte = ytr.argmax(1), yte.argmax(1)
    else:
        ytr, yte = rng.integers(0, classes, n_tr), rng.integers(0, classes, n_te)
        ctr, cte = ytr, yte
    mu = rng.normal(size=(classes, *shape))
    xtr = np.maximum(0.4 * mu[ctr] + rng.normal(size=(n_tr, *shape)), 0).astype(np.float16)
    xte = np.maximum(0.4 * mu[cte] + rng.normal(size=(n_te, *shape)), 0).astype(np.float16)
    return xtr, ytr, xte, yte


@pytest.mark.parametrize("n_tr,shape,multilabel", [
    (260, (30,), False),        # N > D: the in-memory function solves the primal
    (90, (8, 5, 5), False),     # N < D: it solves the dual (Gram of the rows); we always the primal
    (120, (40,), True),         # multi-label
])
def test_linear_map_streamed_equals_in_memory(n_tr, shape, multilabel):
    xtr, ytr, xte, yte = _data(n_tr, 70, shape, 4, 0, multilabel)
    xtr[:, 3] = 1.0          # a constant column: std 1, as in memory
    xte[:, 3] = 1.0
    ref = linear_map(xtr.astype(np.float32), ytr, xte.astype(np.float32), yte, num_classes=4, config=LSSVM)
    got = linear_map_streamed(array_source(xtr, 7), ytr, array_source(xte, 11), yte, num_classes=4, config=LSSVM)
    np.testing.assert_allclose(got.ap, ref.ap, atol=1e-9)
    np.testing.assert_allclose(got.c_values, ref.c_values, rtol=1e-5)
    np.testing.assert_allclose(got.test_scores, ref.test_scores, atol=1e-4)     # float32 products, as in memory


def test_one_block_or_many_give_the_same_classifiers():
    xtr, ytr, xte, yte = _data(150, 50, (20,), 3, 1)
    one = linear_map_streamed(array_source(xtr, 10**6), ytr, array_source(xte, 10**6), yte, config=LSSVM)
    many = linear_map_streamed(array_source(xtr, 1), ytr, array_source(xte, 3), yte, config=LSSVM)
    np.testing.assert_allclose(many.test_scores, one.test_scores, atol=1e-5)    # float32 within a block


@pytest.mark.parametrize("shape", [(5, 4, 4), (24,)])
def test_ablation_study_streamed_equals_in_memory(shape):
    xtr, ytr, xte, yte = _data(120, 60, shape, 3, 2)
    kw = dict(num_classes=3, seeds=(0, 1), n_bootstrap=40, config=LSSVM)
    ref = ablation_study(xtr.astype(np.float32), ytr, xte.astype(np.float32), yte, **kw)
    got = ablation_study_streamed(array_source(xtr, 9), ytr, array_source(xte, 13), yte, **kw)
    assert [r["ablation"] for r in got.runs] == [r["ablation"] for r in ref.runs]
    assert len(got.runs) == (8 if len(shape) == 3 else 4)
    for a, b in zip(got.runs, ref.runs):
        np.testing.assert_allclose(a["ap"], b["ap"], atol=1e-9, err_msg=f"{a['ablation']} seed {a['seed']}")
    for a, b in zip(got.summary, ref.summary):
        for k in ("mean", "std", "ci_low", "ci_high"):
            assert a[k] == pytest.approx(b[k], abs=1e-9), (a["ablation"], k)


def test_count_sketch_is_the_signed_bucket_matrix():
    d, k = 50, 7
    s = CountSketch.draw(d, k, seed=3)
    dense = torch.zeros(d, k, dtype=torch.float64)
    for col in range(d):                       # the definition: column d adds sign_d * x_d to bucket h(d)
        dense[col, int(s.buckets[col])] = float(s.signs[col])
    x = torch.randn(6, d, dtype=torch.float64)
    torch.testing.assert_close(s.apply(x), x @ dense)
    assert set(s.signs.tolist()) <= {-1.0, 1.0}


def test_count_sketch_keeps_inner_products_in_expectation():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=400), rng.normal(size=400)
    b = 0.6 * a + 0.8 * b
    x = torch.tensor(np.stack([a, b]))
    est = [float(torch.dot(*CountSketch.draw(400, 32, seed).apply(x))) for seed in range(400)]
    true = float(a @ b)
    se = np.std(est) / np.sqrt(len(est))
    assert abs(np.mean(est) - true) < 4 * se


def test_sketched_classifier_stays_close_on_separable_data():
    xtr, ytr, xte, yte = _data(300, 120, (400,), 3, 4)
    exact = linear_map_streamed(array_source(xtr, 64), ytr, array_source(xte, 64), yte, config=LSSVM)
    sketched = linear_map_streamed(array_source(xtr, 64), ytr, array_source(xte, 64), yte, config=LSSVM,
                                   max_dim=128)
    assert exact.map > 0.9
    assert sketched.map > exact.map - 0.1


def test_sketch_dim_keeps_three_products_inside_three_eighths_of_the_budget():
    for budget in (2**26, 2**30, 3 * 2**30):
        k = sketch_dim(budget)
        assert 3 * k * k * 8 <= budget * 3 / 8 < 3 * (k + 1) ** 2 * 8
    assert sketch_dim(2**30) == 4096     # AlexNet's fc layers are exact at the default budget


def test_product_groups_share_a_read_within_the_budgeted_products():
    from core.analysis.streamed_svm import _product_groups

    class P:   # only the widths matter
        def __init__(self, k, max_dim):
            self.std, self.max_dim = type("S", (), {"dim": k})(), max_dim
    wide, narrow = [P(100, 100) for _ in range(3)], [P(20, None) for _ in range(3)]
    groups = _product_groups(wide[:2] + narrow)
    # a 100-wide problem uses 2 + 1 of its three 100 x 100 products: alone; the 20-wide ones share a read
    assert [len(g) for g in groups] == [1, 1, 3]
    for g in groups:
        assert sum(2 * p.std.dim ** 2 for p in g) + max(p.std.dim for p in g) ** 2 <= 3 * 100 ** 2


def test_bad_streams_are_input_errors():
    xtr, ytr, xte, yte = _data(60, 30, (10,), 3, 5)
    with pytest.raises(InputError, match="yielded 59 rows but its labels have 60"):
        linear_map_streamed(array_source(xtr[:59], 8), ytr, array_source(xte, 8), yte, config=LSSVM)
    bad = xte.astype(np.float32)
    bad[4, 2] = np.nan
    with pytest.raises(InputError, match="NaN"):
        linear_map_streamed(array_source(xtr, 8), ytr, array_source(bad, 8), yte, config=LSSVM)
    with pytest.raises(InputError, match="max_dim"):
        linear_map_streamed(array_source(xtr, 8), ytr, array_source(xte, 8), yte, config=LSSVM, max_dim=0)


def _ridge_ranking_reference(xtr, ytr, xte, yte, classes, ks, cfg):
    """Sec. 4.2 with least-squares SVMs, written from the formulas in float64 numpy: standardise on the
    training rows, ridge with an unpenalised intercept (centred rows), lambda per class by validation AP
    on the given split, refit on every training row, rank by |w|, refit on each top-k subset."""
    from sklearn.metrics import average_precision_score

    from core.analysis.svm_ranking import _val_split

    ptr = ytr if ytr.ndim == 2 else np.eye(classes, dtype=bool)[ytr]
    pte = yte if yte.ndim == 2 else np.eye(classes, dtype=bool)[yte]
    xtr, xte = xtr.astype(np.float64), xte.astype(np.float64)
    mean, std = xtr.mean(0), xtr.std(0)
    std[std == 0] = 1.0
    ztr, zte = (xtr - mean) / std, (xte - mean) / std
    fit, val = _val_split(ptr, ytr if ytr.ndim == 1 else None, cfg)
    lambdas = [q * (ztr ** 2).sum() / len(ztr) for q in cfg.ridge_grid]

    def ridge(z, y, lam):
        zm, ym = z.mean(0), y.mean()
        w = np.linalg.solve((z - zm).T @ (z - zm) + lam * np.eye(z.shape[1]), (z - zm).T @ (y - ym))
        return w, ym - zm @ w

    out = {"ranking": [], "weights": [], "ap": [], "lam": []}
    for cl in range(classes):
        y = ptr[:, cl] * 2.0 - 1
        aps = []
        for lam in lambdas:
            w, b = ridge(ztr[fit], y[fit], lam)
            aps.append(average_precision_score(ptr[val, cl], ztr[val] @ w + b))
        lam = lambdas[int(np.argmax(aps))]
        w, _ = ridge(ztr, y, lam)
        order = np.argsort(-np.abs(w), kind="stable")
        row = []
        for k in ks:
            cols = np.sort(order[:k])
            wk, bk = ridge(ztr[:, cols], y, lam)
            row.append(average_precision_score(pte[:, cl], zte[:, cols] @ wk + bk))
        out["ranking"].append(order)
        out["weights"].append(w)
        out["ap"].append(row)
        out["lam"].append(lam)
    return {k: np.asarray(v) for k, v in out.items()}


@pytest.mark.parametrize("multilabel", [False, True])
def test_filter_ranking_streamed_equals_the_formulas(multilabel):
    from core.analysis.streamed_svm import filter_ranking_streamed

    xtr, ytr, xte, yte = _data(160, 90, (14,), 3, 5, multilabel)
    xtr[:, 2] = 0.0      # a dead filter: constant, std 1, weight 0
    ks = (1, 2, 3, 5, 10)
    got = filter_ranking_streamed(array_source(xtr, 13), ytr, array_source(xte, 8), yte, num_classes=3,
                                  k_values=ks, config=LSSVM)
    ref = _ridge_ranking_reference(xtr, ytr, xte, yte, 3, (1, 2, 3, 5, 10, 14), LSSVM)
    np.testing.assert_array_equal(got.k_values, [1, 2, 3, 5, 10, 14])
    np.testing.assert_allclose(got.weights, ref["weights"], atol=1e-10)
    np.testing.assert_array_equal(got.ranking[:, :10], ref["ranking"][:, :10])  # the dead filter ties last
    np.testing.assert_allclose(got.ap_by_k, ref["ap"], atol=1e-9)
    np.testing.assert_allclose(got.full_ap, ref["ap"][:, -1], atol=1e-9)
    np.testing.assert_allclose(got.c_values, 1 / ref["lam"], rtol=1e-6)


def test_filter_ranking_streamed_finds_the_informative_filters():
    """A known answer: only filters 4 and 9 carry class 1; they rank first for it."""
    from core.analysis.streamed_svm import filter_ranking_streamed

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 400)
    x = rng.random((400, 16)).astype(np.float32)
    x[:, 4] += 1.5 * y
    x[:, 9] -= 1.5 * y
    res = filter_ranking_streamed(array_source(x[:300], 64), y[:300], array_source(x[300:], 64), y[300:],
                                  num_classes=2, k_values=(1, 2, 16), config=LSSVM)
    assert set(res.ranking[1, :2]) == {4, 9}
    assert res.ap_by_k[1, 1] > 0.95 and res.ap_by_k[1, 1] >= res.ap_by_k[1, 0]
