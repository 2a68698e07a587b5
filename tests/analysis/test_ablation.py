"""Magnitude / location ablations (Sec. 5, Fig. 6) and the Tables 7-8 runner."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from core import analysis
from core.errors import InputError


def conv(seed: int, n: int = 6, c: int = 4, h: int = 3, w: int = 5) -> np.ndarray:
    return np.maximum(np.random.default_rng(seed).normal(size=(n, c, h, w)), 0)


def test_binarize():
    x = np.array([[-1.0, 0.0, 0.5, 3.0]])
    assert np.array_equal(analysis.binarize(x), [[0.0, 0.0, 1.0, 1.0]])
    assert analysis.binarize(x.astype(np.float32)).dtype == np.float32
    assert analysis.binarize(np.array([0, 2, -3])).dtype == np.float32
    assert np.array_equal(analysis.binarize(torch.from_numpy(x)), analysis.binarize(x))


def test_spatial_max_matches_loop():
    x = conv(0)
    want = np.array([[max(x[i, j].ravel()) for j in range(x.shape[1])] for i in range(len(x))])
    assert np.array_equal(analysis.spatial_max(x), want)
    assert np.array_equal(analysis.spatial_max(torch.from_numpy(x)), want)
    with pytest.raises(InputError):
        analysis.spatial_max(x[:, :, 0])


def test_spatial_shuffle_is_a_per_image_permutation_of_columns():
    x = np.random.default_rng(1).normal(size=(5, 4, 3, 3))   # all values distinct
    out = analysis.spatial_shuffle(x, seed=3)
    assert out.shape == x.shape and out.dtype == x.dtype
    perms = []
    for n in range(len(x)):
        cols_in = x[n].reshape(4, 9).T                       # [HW, C] columns
        cols_out = out[n].reshape(4, 9).T
        perm = []
        for col in cols_out:                                 # each column moves whole
            match = [p for p in range(9) if np.array_equal(cols_in[p], col)]
            assert len(match) == 1
            perm.append(match[0])
        assert sorted(perm) == list(range(9))
        perms.append(perm)
        for ch in range(4):                                  # values per channel kept
            assert np.array_equal(np.sort(out[n, ch].ravel()), np.sort(x[n, ch].ravel()))
    assert len({tuple(p) for p in perms}) > 1                # images differ


def test_spatial_shuffle_documented_permutation():
    x = conv(5)
    n, c, h, w = x.shape
    g = torch.Generator().manual_seed(11)
    want = np.empty_like(x)
    for i in range(n):
        perm = torch.randperm(h * w, generator=g).numpy()
        for ch in range(c):
            want[i, ch] = x[i, ch].reshape(-1)[perm].reshape(h, w)
    assert np.array_equal(analysis.spatial_shuffle(x, seed=11), want)


def test_spatial_shuffle_seeds_and_torch_input():
    x = conv(2)
    a = analysis.spatial_shuffle(x, seed=0)
    assert np.array_equal(a, analysis.spatial_shuffle(torch.from_numpy(x), seed=0))
    assert not np.array_equal(a, analysis.spatial_shuffle(x, seed=1))
    if torch.cuda.is_available():
        assert np.array_equal(a, analysis.spatial_shuffle(torch.from_numpy(x).cuda(), seed=0))


def test_bootstrap_map():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, 60)
    perfect = np.eye(3)[y] + 0.0
    b = analysis.bootstrap_map(perfect, y, 3, n_bootstrap=50, seed=1)
    assert b.shape == (50,) and np.all(b == 1.0)
    noisy = perfect + rng.normal(size=(60, 3))
    b = analysis.bootstrap_map(noisy, y, 3, n_bootstrap=200, seed=1)
    assert np.array_equal(b, analysis.bootstrap_map(noisy, y, 3, n_bootstrap=200, seed=1))
    full = analysis.class_filter_ap(noisy, y, 3).diagonal().mean()
    assert np.all((b >= 0) & (b <= 1)) and abs(np.median(b) - full) < 0.1


def test_weighted_bootstrap_ap_equals_sklearn_on_the_resampled_arrays():
    """A resample given as copy counts scores like scikit-learn's AP on the repeated arrays,
    ties between different images and between copies included."""
    from sklearn.metrics import average_precision_score

    from core.analysis.ablation import _weighted_ap
    rng = np.random.default_rng(8)
    n = 40
    scores = np.round(rng.normal(size=n), 1)          # many ties on purpose
    pos = rng.random(n) < 0.3
    counts = rng.integers(0, 4, size=(n, 25))
    counts[:, 0] = 0
    counts[~pos, 0] = 1                                # one resample without positives
    ap, present = _weighted_ap(torch.from_numpy(scores), torch.from_numpy(pos),
                               torch.from_numpy(counts.astype(np.float64)))
    for b in range(counts.shape[1]):
        s_b, y_b = np.repeat(scores, counts[:, b]), np.repeat(pos, counts[:, b])
        if y_b.any():
            assert present[b] == 1.0
            assert ap[b].item() == pytest.approx(average_precision_score(y_b, s_b), abs=1e-12)
        else:
            assert present[b] == 0.0 and ap[b].item() == 0.0


def _toy(n: int, seed: int):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = np.maximum(rng.normal(size=(n, 3, 2, 2)), 0)
    x[:, 0, 0, 0] += 1.5 * y                                  # class signal at one location
    return x, y


def test_ablation_study_conv_and_fc():
    xtr, ytr = _toy(50, 0)
    xte, yte = _toy(30, 1)
    res = analysis.ablation_study(xtr, ytr, xte, yte, seeds=(0, 1), n_bootstrap=50)
    df = res.to_frame()
    assert list(df.index) == ["original", "binarize", "sp-shuffle", "sp-max"]
    assert {"mean", "std", "ci_low", "ci_high", "n_runs"} <= set(df.columns)
    assert (df.n_runs == 2).all() and (df.ci_low <= df.ci_high).all()
    assert df.loc["original", "mean"] > 0.6
    assert len(res.runs) == 8 and len(res.runs_frame()) == 8
    fc = analysis.ablation_study(xtr[:, :, 0, 0], ytr, xte[:, :, 0, 0], yte, seeds=(0,),
                                 resplit=False, n_bootstrap=20)
    assert list(fc.to_frame().index) == ["original", "binarize"]
    assert fc.to_frame().loc["original", "std"] == 0.0
    with pytest.raises(InputError):
        analysis.ablation_study(xtr, ytr, xte[:, :2], yte, seeds=(0,))
