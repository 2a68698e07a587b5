"""SVM filter ranking (Sec. 4.2, Fig. 4, Table 5), layer mAP and GMC candidates."""
from __future__ import annotations

import numpy as np
import pytest

from core import analysis
from core.errors import InputError


def signal_data(n: int, seed: int, f: int = 16):
    """Only filters 3 and 7 carry class signal: class 0 -> filter 3, class 1 -> filter 7,
    class 2 -> neither."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = np.maximum(rng.normal(size=(n, f, 2, 2)), 0)
    x[:, 3] += 2.5 * (y == 0)[:, None, None]
    x[:, 7] += 2.5 * (y == 1)[:, None, None]
    return x, y


@pytest.fixture(scope="module")
def ranking():
    xtr, ytr = signal_data(240, 0)
    xte, yte = signal_data(160, 1)
    return analysis.svm_filter_ranking(xtr, ytr, xte, yte), (xtr, ytr, xte, yte)


def test_signal_filters_rank_top(ranking):
    res, _ = ranking
    assert res.ranking.shape == res.weights.shape == (3, 16)
    assert res.ranking[0, 0] == 3 and res.ranking[1, 0] == 7
    assert set(res.ranking[2, :2]) == {3, 7}
    assert res.k_values.tolist() == [1, 2, 3, 5, 10, 15, 16]
    assert np.array_equal(res.full_ap, res.ap_by_k[:, -1]) and np.all(res.full_ap > 0.9)
    needed = res.filters_needed(0.9)
    assert needed[0] <= 2 and needed[1] <= 2 and needed[2] <= 3
    assert np.all(res.filters_needed(0.5) <= needed)
    assert res.fraction_of_full().shape == (3, 7)


def test_subset_ap_reproduces_and_baselines(ranking):
    res, data = ranking
    again = analysis.subset_ap(*data, res.ranking)
    assert np.array_equal(again, res.ap_by_k)                     # deterministic
    by_ap = analysis.single_ap_ranking(data[0], data[1])
    assert by_ap[0, 0] == 3 and by_ap[1, 0] == 7
    rand = analysis.random_subset_ap(*data, k_values=(1, 2), seeds=(0, 1))
    assert rand.shape == (3, 3)
    assert np.all(rand[:2, 0] < res.ap_by_k[:2, 0])                # worse than ranked k=1


def test_paper_k_values():
    assert tuple(analysis.paper_k_values(256)) == analysis.PAPER_K
    assert analysis.paper_k_values(100)[-1] == 100
    assert analysis.paper_k_values(4).tolist() == [1, 2, 3, 4]
    assert analysis.paper_k_values(7, (5, 3, 3, 50)).tolist() == [3, 5, 7]


def ref_filters_needed(ks, ap, full, level):
    out = []
    for c in range(len(full)):
        hit = [k for k, a in zip(ks, ap[c]) if a >= level * full[c]]
        out.append(hit[0] if hit else ks[-1])
    return out


def test_filters_needed_edge_cases():
    ks = [1, 2, 5, 10]
    ap = np.array([[0.9, 0.9, 0.9, 1.0],     # reached at first k
                   [0.1, 0.2, 0.3, 0.4],     # never reaches 0.9 * 1.0 -> last k
                   [0.1, 0.45, 0.5, 0.5],    # exactly level * full counts as reached
                   [0.0, 0.0, 0.0, 0.0]])    # full AP 0 -> first k
    full = np.array([1.0, 1.0, 0.5, 0.0])
    for level in (0.5, 0.9):
        got = analysis.filters_needed(ks, ap, full, level)
        assert got.tolist() == ref_filters_needed(ks, ap, full, level)
    assert analysis.filters_needed(ks, ap, full, 0.9).tolist() == [1, 10, 2, 1]
    rng = np.random.default_rng(0)
    ap = rng.random((20, 4))
    full = rng.random(20)
    assert (analysis.filters_needed(ks, ap, full, 0.9).tolist()
            == ref_filters_needed(ks, ap, full, 0.9))


@pytest.mark.parametrize("args", [
    ([2, 1], np.zeros((1, 2)), np.ones(1), 0.5),
    ([1, 2], np.zeros((1, 3)), np.ones(1), 0.5),
    ([1, 2], np.zeros((2, 2)), np.ones(1), 0.5),
    ([1, 2], np.zeros((1, 2)), np.ones(1), 0.0),
])
def test_filters_needed_rejects_bad_input(args):
    with pytest.raises(InputError):
        analysis.filters_needed(*args)


def test_grandmother_cells():
    single = np.array([[0.9, 0.2, 0.85], [0.1, 0.1, 0.1]])
    df = analysis.grandmother_cells(single, np.array([1.0, 0.5]), ratio=0.8)
    assert list(df.columns) == ["class", "filter", "ap", "full_ap", "ratio"]
    assert df[["class", "filter"]].values.tolist() == [[0, 0], [0, 2]]
    assert df.ratio.tolist() == pytest.approx([0.9, 0.85])
    assert len(analysis.grandmother_cells(single, np.array([0.0, 0.0]))) == 0


def test_linear_map_single_and_multilabel():
    xtr, ytr = signal_data(150, 2, f=8)
    xte, yte = signal_data(100, 3, f=8)
    res = analysis.linear_map(xtr, ytr, xte, yte)
    assert res.ap.shape == (3,) and res.test_scores.shape == (100, 3)
    assert res.map > 0.8 and set(res.c_values) <= set(analysis.SVMConfig().c_grid)
    multi_tr = np.stack([ytr == 0, ytr == 1], 1)
    multi_te = np.stack([yte == 0, yte == 1], 1)
    res2 = analysis.linear_map(xtr[:, :, 0, 0], multi_tr, xte[:, :, 0, 0], multi_te)
    assert res2.ap.shape == (2,) and res2.map > 0.8


def test_class_without_training_positives_is_an_input_error():
    xtr, ytr = signal_data(60, 4, f=8)
    ytr[ytr == 2] = 0
    with pytest.raises(InputError, match="only positive or only negative"):
        analysis.linear_map(xtr, ytr, xtr, ytr, num_classes=3)


def test_ridge_dual_scores_match_sklearn_ridge():
    """The dual closed form equals scikit-learn's primal Ridge (independent solver), wide and tall."""
    from sklearn.linear_model import Ridge

    from core.analysis.svm_ranking import ridge_dual_scores
    rng = np.random.default_rng(3)
    for n, d in ((40, 300), (120, 15)):
        x = np.maximum(rng.normal(size=(n, d)), 0)
        y = rng.random((n, 3)) < 0.4
        xe = rng.normal(size=(9, d))
        got = ridge_dual_scores(x, y, xe, [0.5, 5.0])
        for i, lam in enumerate((0.5, 5.0)):
            ref = Ridge(alpha=lam, fit_intercept=True, solver="svd").fit(x, y * 2.0 - 1).predict(xe)
            np.testing.assert_allclose(got[i], ref, atol=1e-8)


def test_ridge_from_uncentred_gram_blocks_matches_sklearn_on_a_subset():
    """The validation fit reuses the training set's uncentred Gram matrix: centring on the
    subset's mean is done on the products; held against scikit-learn's Ridge on that subset."""
    from sklearn.linear_model import Ridge

    from core.analysis.svm_ranking import _ridge_gram_scores
    rng = np.random.default_rng(5)
    x = np.maximum(rng.normal(size=(60, 400)), 0) + 3.0      # far from centred on purpose
    y = rng.random((60, 2)) < 0.5
    fit, ev = np.arange(0, 60, 3), np.arange(1, 60, 3)
    g = x @ x.T
    got = _ridge_gram_scores(g[np.ix_(fit, fit)], g[np.ix_(ev, fit)], y[fit], [0.3, 30.0])
    for i, lam in enumerate((0.3, 30.0)):
        ref = Ridge(alpha=lam, fit_intercept=True, solver="svd").fit(x[fit], y[fit] * 2.0 - 1).predict(x[ev])
        np.testing.assert_allclose(got[i], ref, atol=1e-7)


def test_linear_map_lssvm_wide_scores_match_sklearn_ridge_at_the_chosen_lambda():
    """Wide layers (D >= N) take float32 inner products: the test scores still equal
    scikit-learn's float64 Ridge on the standardised features, refit at each class's lambda."""
    from sklearn.linear_model import Ridge

    from core.analysis import SVMConfig, linear_map
    rng = np.random.default_rng(6)
    n, d = 90, 700
    y = rng.integers(0, 3, n + 40)
    x = np.maximum(rng.normal(size=(n + 40, d)), 0) * 5 + 2.0
    x[:, :30] += 4 * (y[:, None] == 1)
    res = linear_map(x[:n], y[:n], x[n:], y[n:], config=SVMConfig(method="lssvm"))
    mu, sd = x[:n].mean(0), x[:n].std(0)
    xtr, xte = (x[:n] - mu) / sd, (x[n:] - mu) / sd
    for cl in range(3):
        ref = Ridge(alpha=1 / res.c_values[cl], solver="svd").fit(xtr, (y[:n] == cl) * 2.0 - 1).predict(xte)
        np.testing.assert_allclose(res.test_scores[:, cl], ref, rtol=1e-4, atol=1e-5)


def test_linear_map_lssvm_finds_signal_and_validates():
    from core.analysis import SVMConfig, linear_map
    rng = np.random.default_rng(4)
    n, d = 300, 500
    y = rng.integers(0, 3, n)
    x = rng.normal(size=(n, d))
    x[:, 10] += 3 * (y == 0)
    x[:, 20] += 3 * (y == 1)
    x[:, 30] += 3 * (y == 2)
    res = linear_map(x[:200], y[:200], x[200:], y[200:], config=SVMConfig(method="lssvm"))
    svm = linear_map(x[:200], y[:200], x[200:], y[200:], config=SVMConfig(method="svm"))
    # chance mAP is ~1/3; the least-squares SVM should be as good as the hinge-loss one here
    assert res.ap.shape == (3,) and res.map > 0.7 and abs(res.map - svm.map) < 0.08
    with pytest.raises(InputError):
        linear_map(x[:200], y[:200], x[200:], y[200:], config=SVMConfig(method="bogus"))
