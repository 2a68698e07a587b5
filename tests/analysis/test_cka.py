"""Linear CKA, minibatch CKA and unit matching against slow references written from the papers.

References: Kornblith et al. 2019 (biased HSIC ``tr(K H L H) / (n-1)^2``), Song et al. 2012 /
Nguyen et al. 2021 (unbiased HSIC_1 with zeroed diagonals, minibatch CKA as the ratio of mean
HSIC_1), Li et al. 2016 (Pearson correlation + one-to-one matching, checked by brute force).
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from core import analysis
from core.analysis.cka import (MinibatchCKA, cka_matrix, linear_cka, match_units,
                               minibatch_cka_matrix, unit_correlation)
from core.errors import InputError

RTOL = 1e-10


# --------------------------------------------------------------------------- literal references
def ref_hsic(k: np.ndarray, l: np.ndarray) -> float:
    """Biased HSIC: tr(K H L H) / (n-1)^2 with H = I - 11^T / n."""
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return float(np.trace(k @ h @ l @ h)) / (n - 1) ** 2


def ref_hsic1(k: np.ndarray, l: np.ndarray) -> float:
    """Unbiased HSIC_1 of Song et al. 2012, with full matrices and zeroed diagonals."""
    n = k.shape[0]
    kt, lt = k.copy(), l.copy()
    np.fill_diagonal(kt, 0.0)
    np.fill_diagonal(lt, 0.0)
    one = np.ones(n)
    return float(np.trace(kt @ lt) + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
                 - 2.0 / (n - 2) * (one @ kt @ lt @ one)) / (n * (n - 3))


def ref_hsic1_loops(k: np.ndarray, l: np.ndarray) -> float:
    """The same estimator with explicit sums over indices (checks ref_hsic1 itself)."""
    n = k.shape[0]
    off = [(i, j) for i in range(n) for j in range(n) if i != j]
    t1 = sum(k[i, j] * l[i, j] for i, j in off)
    sk, sl = sum(k[i, j] for i, j in off), sum(l[i, j] for i, j in off)
    t3 = sum(k[i, q] * l[q, j] for i in range(n) for j in range(n) for q in range(n)
             if q != i and q != j)
    return (t1 + sk * sl / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * t3) / (n * (n - 3))


def ref_cka(x: np.ndarray, y: np.ndarray, debiased: bool = False) -> float:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    k, l = x @ x.T, y @ y.T
    h = ref_hsic1 if debiased else ref_hsic
    return h(k, l) / np.sqrt(h(k, k) * h(l, l))


def ref_minibatch_cka(xs: list[np.ndarray], ys: list[np.ndarray], batch: int) -> np.ndarray:
    """Nguyen et al. 2021: mean_b HSIC_1(K_i, L_j) / sqrt(mean_b HSIC_1(K_i,K_i) mean_b HSIC_1(L_j,L_j))."""
    nb = len(xs[0]) // batch
    grams = lambda layers, b: [(z[b * batch:(b + 1) * batch] @ z[b * batch:(b + 1) * batch].T) for z in layers]
    out = np.zeros((len(xs), len(ys)))
    for i in range(len(xs)):
        for j in range(len(ys)):
            hxy = np.mean([ref_hsic1(grams(xs, b)[i], grams(ys, b)[j]) for b in range(nb)])
            hxx = np.mean([ref_hsic1(grams(xs, b)[i], grams(xs, b)[i]) for b in range(nb)])
            hyy = np.mean([ref_hsic1(grams(ys, b)[j], grams(ys, b)[j]) for b in range(nb)])
            out[i, j] = hxy / np.sqrt(hxx * hyy)
    return out


def related(rng: np.random.Generator, n: int, p1: int, p2: int, noise: float = 1.0):
    """x [n, p1] and y [n, p2] sharing a linear part (CKA well away from 0 and 1), with an offset."""
    x = rng.normal(size=(n, p1)) + rng.normal(size=(1, p1))
    y = x @ rng.normal(size=(p1, p2)) / np.sqrt(p1) + noise * rng.normal(size=(n, p2)) + 2.0
    return x, y


SHAPES = [(20, 50, 30),   # P > N: Gram path for both
          (60, 5, 8),     # P < N: feature-space path for both
          (30, 10, 40)]   # one of each


def test_references_agree_with_each_other():
    rng = np.random.default_rng(0)
    x, y = related(rng, 7, 3, 4)
    k, l = x @ x.T, y @ y.T
    assert ref_hsic1(k, l) == pytest.approx(ref_hsic1_loops(k, l), rel=1e-12)


# --------------------------------------------------------------------------- linear_cka
@pytest.mark.parametrize("n,p1,p2", SHAPES)
@pytest.mark.parametrize("debiased", [False, True])
def test_linear_cka_matches_literal_formula(n, p1, p2, debiased):
    rng = np.random.default_rng(n + p1 + p2)
    x, y = related(rng, n, p1, p2)
    want = ref_cka(x, y, debiased)
    assert 0.2 < want < 0.99
    assert linear_cka(x, y, debiased=debiased) == pytest.approx(want, rel=RTOL)
    assert linear_cka(y, x, debiased=debiased) == pytest.approx(want, rel=RTOL)


@pytest.mark.parametrize("debiased", [False, True])
def test_torch_and_float16_inputs(debiased):
    rng = np.random.default_rng(1)
    x, y = related(rng, 25, 40, 6)
    got = linear_cka(torch.from_numpy(x), torch.from_numpy(y), debiased=debiased)
    assert got == pytest.approx(ref_cka(x, y, debiased), rel=RTOL)
    assert linear_cka(torch.from_numpy(x), y, debiased=debiased) == pytest.approx(got, rel=1e-12)
    x16, y16 = x.astype(np.float16), y.astype(np.float16)
    want16 = ref_cka(x16.astype(np.float64), y16.astype(np.float64), debiased)
    assert linear_cka(x16, y16, debiased=debiased) == pytest.approx(want16, rel=RTOL)
    assert linear_cka(torch.from_numpy(x16), torch.from_numpy(y16), debiased=debiased) == \
        pytest.approx(want16, rel=RTOL)
    assert abs(want16 - ref_cka(x, y, debiased)) > 1e-9   # the fp16 rounding is really seen


@pytest.mark.parametrize("n,p", [(20, 50), (60, 5)])
@pytest.mark.parametrize("debiased", [False, True])
def test_self_similarity_is_one(n, p, debiased):
    x = np.random.default_rng(2).normal(size=(n, p))
    assert abs(linear_cka(x, x, debiased=debiased) - 1.0) <= 1e-12
    assert abs(linear_cka(x, x.copy(), debiased=debiased) - 1.0) <= 1e-12


@pytest.mark.parametrize("n,p1,p2", SHAPES)
@pytest.mark.parametrize("debiased", [False, True])
def test_invariances(n, p1, p2, debiased):
    rng = np.random.default_rng(3)
    x, y = related(rng, n, p1, p2)
    base = linear_cka(x, y, debiased=debiased)
    q, _ = np.linalg.qr(rng.normal(size=(p1, p1)))
    q2, _ = np.linalg.qr(rng.normal(size=(p2, p2)))
    assert linear_cka(x @ q, y, debiased=debiased) == pytest.approx(base, rel=1e-10)
    assert linear_cka(x, y @ q2, debiased=debiased) == pytest.approx(base, rel=1e-10)
    assert linear_cka(3.7 * x, y, debiased=debiased) == pytest.approx(base, rel=1e-10)
    assert linear_cka(x, 0.01 * y, debiased=debiased) == pytest.approx(base, rel=1e-10)
    # not invariant to a non-isotropic scaling of the features (one feature stretched 30x)
    stretch = np.ones(p1)
    stretch[0] = 30.0
    assert abs(linear_cka(x * stretch, y, debiased=debiased) - base) > 0.1


@pytest.mark.parametrize("debiased", [False, True])
def test_conv_maps_pool_or_flatten(debiased):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(12, 3, 4, 5))
    y = x[:, :2].reshape(12, -1) @ rng.normal(size=(40, 7)) + rng.normal(size=(12, 7))
    assert linear_cka(x, y, debiased=debiased) == pytest.approx(
        ref_cka(x.reshape(12, -1), y, debiased), rel=RTOL)
    for pool, pooled in (("max", x.max(axis=(2, 3))), ("mean", x.mean(axis=(2, 3)))):
        assert linear_cka(x, y, debiased=debiased, pool=pool) == pytest.approx(
            ref_cka(pooled, y, debiased), rel=RTOL)
        # 2-D inputs are used as they are whatever pool says; a 4-D y is pooled too
        assert linear_cka(x, x, debiased=debiased, pool=pool) == pytest.approx(1.0, abs=1e-12)
    x16 = torch.from_numpy(x.astype(np.float16))
    assert linear_cka(x16, y, pool="mean", debiased=debiased) == pytest.approx(
        ref_cka(x.astype(np.float16).astype(np.float64).mean(axis=(2, 3)), y, debiased), rel=RTOL)


def test_unbiased_estimate_can_be_negative_and_is_never_nan():
    rng = np.random.default_rng(5)
    values = [linear_cka(rng.normal(size=(10, 3)), rng.normal(size=(10, 4)), debiased=True)
              for _ in range(40)]
    assert np.isfinite(values).all() and min(values) < 0 and max(values) <= 1
    biased = [linear_cka(rng.normal(size=(10, 3)), rng.normal(size=(10, 4))) for _ in range(10)]
    assert min(biased) > 0
    # a representation whose unbiased self-HSIC is exactly 0 (n=4): 0.0, not NaN or inf
    x = np.array([[3.0], [-1.0], [-1.0], [-1.0]])
    assert ref_hsic1(x @ x.T, x @ x.T) == pytest.approx(0.0, abs=1e-12)
    assert linear_cka(x, rng.normal(size=(4, 2)), debiased=True) == 0.0


# --------------------------------------------------------------------------- matrices and minibatches
def _layers(rng, n):
    base = rng.normal(size=(n, 6))
    return [base @ rng.normal(size=(6, p)) + 0.5 * rng.normal(size=(n, p)) for p in (4, 30, 9)]


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_matrix_matches_pairwise_references(debiased):
    rng = np.random.default_rng(6)
    xs, ys = _layers(rng, 16), _layers(rng, 16)[:2]
    got = cka_matrix(xs, ys, debiased=debiased)
    want = np.array([[ref_cka(a, b, debiased) for b in ys] for a in xs])
    assert got.shape == (3, 2)
    np.testing.assert_allclose(got, want, rtol=RTOL)
    same = cka_matrix(xs, xs, debiased=debiased)
    np.testing.assert_allclose(np.diag(same), 1.0, atol=1e-12)
    assert (same == same.T).all()
    np.testing.assert_allclose(same, [[ref_cka(a, b, debiased) for b in xs] for a in xs], rtol=RTOL)
    conv = [rng.normal(size=(16, 2, 3, 3)), rng.normal(size=(16, 5))]
    np.testing.assert_allclose(cka_matrix(conv, conv, pool="max")[0, 1],
                               ref_cka(conv[0].max(axis=(2, 3)), conv[1]), rtol=RTOL)


def test_one_minibatch_equals_full_debiased_cka():
    rng = np.random.default_rng(7)
    xs, ys = _layers(rng, 12), _layers(rng, 12)
    acc = MinibatchCKA(3, 3)
    acc.update(xs, ys)
    got = acc.result()
    for i in range(3):
        for j in range(3):
            assert got[i, j] == pytest.approx(linear_cka(xs[i], ys[j], debiased=True), rel=1e-12)
            assert got[i, j] == pytest.approx(ref_cka(xs[i], ys[j], True), rel=RTOL)


def test_several_minibatches_match_the_mean_of_hsic_formula():
    rng = np.random.default_rng(8)
    batch, nb = 8, 4
    xs = _layers(rng, batch * nb + 3)
    ys = [np.tanh(xs[1][:, :10]), rng.normal(size=(batch * nb + 3, 2, 2, 2))]
    ys_flat = [ys[0], ys[1].reshape(len(ys[1]), -1)]
    want = ref_minibatch_cka(xs, ys_flat, batch)
    acc = MinibatchCKA(3, 2)
    for b in range(nb):
        rows = slice(b * batch, (b + 1) * batch)
        acc.update([torch.from_numpy(x[rows]) for x in xs], [y[rows] for y in ys])
    assert acc.num_batches == nb and acc.batch_size == batch
    np.testing.assert_allclose(acc.result(), want, rtol=RTOL)
    # the same through the streaming helper: irregular blocks, the 3 tail rows dropped
    cuts = [0, 5, 6, 19, 35]
    xs_blocks = [[x[a:b] for a, b in zip(cuts, cuts[1:])] for x in xs]
    ys_blocks = [iter([ys[0]]), (ys[1][i:i + 3] for i in range(0, len(ys[1]), 3))]   # one-shot streams
    got = minibatch_cka_matrix(xs_blocks, ys_blocks, batch)
    assert got.shape == (3, 2)
    np.testing.assert_allclose(got, want, rtol=RTOL)
    changed_tail = [x.copy() for x in xs]
    for x in changed_tail:
        x[batch * nb:] = rng.normal(size=x[batch * nb:].shape)
    np.testing.assert_allclose(minibatch_cka_matrix([[x] for x in changed_tail], [[y] for y in ys], batch),
                               want, rtol=RTOL)
    # with itself: ones on the diagonal (each stream read once)
    mine = [[x[a:b] for a, b in zip(cuts, cuts[1:])] for x in xs]
    np.testing.assert_allclose(np.diag(minibatch_cka_matrix(mine, mine, batch)), 1.0, atol=1e-12)


def test_minibatch_needs_equal_batches():
    rng = np.random.default_rng(9)
    acc = MinibatchCKA(1, 1)
    acc.update([rng.normal(size=(8, 3))], [rng.normal(size=(8, 4))])
    with pytest.raises(InputError, match="7 items.*first batch has 8"):
        acc.update([rng.normal(size=(7, 3))], [rng.normal(size=(7, 4))])
    with pytest.raises(InputError, match=r"ys\[0\] of batch 1 has 9 items"):
        acc.update([rng.normal(size=(8, 3))], [rng.normal(size=(9, 4))])
    assert acc.num_batches == 1                           # unchanged by the rejected batches
    with pytest.raises(InputError, match="list of 1 arrays"):
        acc.update([rng.normal(size=(8, 3))] * 2, [rng.normal(size=(8, 4))])
    with pytest.raises(InputError, match="at least 4 items"):
        MinibatchCKA(1, 1).update([rng.normal(size=(3, 3))], [rng.normal(size=(3, 3))])
    with pytest.raises(InputError, match="no batch"):
        MinibatchCKA(2, 2).result()
    with pytest.raises(InputError, match="positive int"):
        MinibatchCKA(0, 2)
    x = rng.normal(size=(20, 3))
    with pytest.raises(InputError, match="fewer items"):
        minibatch_cka_matrix([[x]], [[x]], 32)
    with pytest.raises(InputError, match="same items"):
        minibatch_cka_matrix([[x]], [[x[:12]]], 8)
    with pytest.raises(InputError, match="same items"):
        minibatch_cka_matrix([[x]], [[x[:19]]], 8)       # same batches, different tails
    with pytest.raises(InputError, match="batch_size"):
        minibatch_cka_matrix([[x]], [[x]], 3)


# --------------------------------------------------------------------------- unit matching
def _brute_force(c: np.ndarray) -> tuple[float, np.ndarray]:
    """Best total correlation over every one-to-one assignment of the smaller side."""
    f1, f2 = c.shape
    best, best_index = -np.inf, None
    if f1 <= f2:
        for cols in itertools.permutations(range(f2), f1):
            total = c[np.arange(f1), cols].sum()
            if total > best:
                best, best_index = total, np.array(cols)
    else:
        for rows in itertools.permutations(range(f1), f2):
            total = c[list(rows), np.arange(f2)].sum()
            if total > best:
                best, best_index = total, np.full(f1, -1)
                best_index[list(rows)] = np.arange(f2)
    return best, best_index


def test_match_units_recovers_a_hidden_permutation():
    rng = np.random.default_rng(10)
    a = rng.normal(size=(200, 30))
    perm = rng.permutation(30)
    b = a[:, perm] + 0.05 * rng.normal(size=(200, 30))    # b[:, j] is a noisy a[:, perm[j]]
    index, corr = match_units(a, b)
    assert index.dtype == np.int64 and corr.dtype == np.float64
    np.testing.assert_array_equal(index, np.argsort(perm))
    assert corr.min() > 0.99
    np.testing.assert_allclose(corr, [np.corrcoef(a[:, i], b[:, index[i]])[0, 1] for i in range(30)],
                               atol=1e-12)


@pytest.mark.parametrize("f1,f2", [(5, 5), (4, 6), (6, 4)])
def test_match_units_agrees_with_brute_force(f1, f2):
    rng = np.random.default_rng(11 + f1)
    hidden = rng.normal(size=(50, 3))
    a = hidden @ rng.normal(size=(3, f1)) + rng.normal(size=(50, f1))
    b = hidden @ rng.normal(size=(3, f2)) + rng.normal(size=(50, f2))
    c = np.corrcoef(a.T, b.T)[:f1, f1:]
    best, best_index = _brute_force(c)
    index, corr = match_units(torch.from_numpy(a), b)
    np.testing.assert_array_equal(index, best_index)
    matched = index >= 0
    assert c[np.flatnonzero(matched), index[matched]].sum() == pytest.approx(best, rel=1e-12)
    assert (~matched).sum() == max(0, f1 - f2) and np.isnan(corr[~matched]).all()
    np.testing.assert_allclose(corr[matched], c[np.flatnonzero(matched), index[matched]], atol=1e-12)
    assert len(set(index[matched].tolist())) == matched.sum()


def test_unit_correlation_and_constant_units():
    rng = np.random.default_rng(12)
    a = rng.normal(size=(40, 5))
    b = 0.5 * a + rng.normal(size=(40, 5))
    b[:, 3] = 0.1                                          # a dead unit
    got = unit_correlation(a, b)
    want = [np.corrcoef(a[:, i], b[:, i])[0, 1] for i in (0, 1, 2, 4)]
    np.testing.assert_allclose(got[[0, 1, 2, 4]], want, atol=1e-12)
    assert got[3] == 0.0
    assert unit_correlation(a, 2 * a + 1) == pytest.approx(np.ones(5), abs=1e-12)
    index, corr = match_units(b, a)
    assert np.isfinite(corr).all() and corr[3] == 0.0
    with pytest.raises(InputError, match="same units"):
        unit_correlation(a, b[:, :4])


# --------------------------------------------------------------------------- bad input
def test_bad_input_is_rejected_with_a_clear_message():
    rng = np.random.default_rng(13)
    x, y = rng.normal(size=(10, 3)), rng.normal(size=(10, 4))
    with pytest.raises(InputError, match="x has 10 rows, y has 9"):
        linear_cka(x, y[:9])
    bad = x.copy()
    bad[2, 1] = np.nan
    with pytest.raises(InputError, match="x contains NaN"):
        linear_cka(bad, y)
    with pytest.raises(InputError, match="y contains NaN or inf"):
        linear_cka(x, np.where(y > 1, np.inf, y))
    with pytest.raises(InputError, match=r"\[N, P\].*\[N, C, H, W\]"):
        linear_cka(x[:, 0], y)
    with pytest.raises(InputError, match=r"got shape \(10, 3, 2\)"):
        linear_cka(rng.normal(size=(10, 3, 2)), y)
    with pytest.raises(InputError, match="at least 4 items"):
        linear_cka(x[:3], y[:3], debiased=True)
    assert np.isfinite(linear_cka(x[:3], y[:3]))
    with pytest.raises(InputError, match="x has no variance across items"):
        linear_cka(np.full((10, 3), 0.1), y)
    with pytest.raises(InputError, match="pool"):
        linear_cka(x, y, pool="sum")
    with pytest.raises(InputError, match=r"xs\[1\] has 9 rows"):
        cka_matrix([x, y[:9]], [y])
    with pytest.raises(InputError, match=r"ys\[0\] has no variance"):
        cka_matrix([x], [np.ones((10, 2))])
    with pytest.raises(InputError, match="non-empty list"):
        cka_matrix(x, [y])
    with pytest.raises(InputError, match="a has 10 rows, b has 9"):
        match_units(x, y[:9])
    with pytest.raises(InputError, match=r"pool conv maps"):
        match_units(rng.normal(size=(10, 3, 2, 2)), y)
    with pytest.raises(InputError, match="b contains NaN"):
        unit_correlation(x, bad)


def test_public_names_are_reexported():
    for name in ("linear_cka", "cka_matrix", "MinibatchCKA", "minibatch_cka_matrix", "match_units",
                 "unit_correlation"):
        assert name in analysis.__all__ and getattr(analysis, name) is not None
        assert "Reproduces:" in (getattr(analysis, name).__doc__ or "")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_give_the_cpu_numbers():
    rng = np.random.default_rng(14)
    x, y = related(rng, 30, 40, 6)
    for debiased in (False, True):
        got = linear_cka(torch.from_numpy(x).cuda().half(), torch.from_numpy(y).cuda(), debiased=debiased)
        assert got == pytest.approx(linear_cka(x.astype(np.float16), y, debiased=debiased), rel=1e-10)
    xs = [torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda()]
    np.testing.assert_allclose(cka_matrix(xs, xs), cka_matrix([x, y], [x, y]), rtol=1e-10)
    index, _ = match_units(xs[0], torch.from_numpy(x[:, ::-1].copy()).cuda())
    np.testing.assert_array_equal(index, np.arange(40)[::-1])
