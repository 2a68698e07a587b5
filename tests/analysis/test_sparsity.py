"""Non-zero fractions (Table 6) against loops."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from core import analysis
from core.errors import InputError


def acts(seed: int) -> np.ndarray:
    x = np.maximum(np.random.default_rng(seed).normal(size=(30, 5, 3, 3)), 0)
    x[3] = 0.0                                          # an all-zero sample
    return x


def test_nonzero_fraction_matches_loop():
    x = acts(0)
    want = [sum(v != 0 for v in x[i].ravel()) / x[i].size for i in range(len(x))]
    got = analysis.nonzero_fraction(x)
    assert got.dtype == np.float64 and np.allclose(got, want, atol=0) and got[3] == 0.0
    assert np.array_equal(got, analysis.nonzero_fraction(torch.from_numpy(x)))
    assert np.array_equal(analysis.nonzero_fraction(x[:, :, 0, 0]),
                          (x[:, :, 0, 0] != 0).mean(1))


def test_summary_and_class_means():
    x = acts(1)
    frac = analysis.nonzero_fraction(x)
    s = analysis.sparsity_summary(x)
    assert s == pytest.approx({"mean": frac.mean(), "std": frac.std()})
    y = np.arange(30) % 4
    y[y == 3] = 0                                       # class 3 empty
    got = analysis.class_nonzero_fraction(x, y, 4)
    assert np.allclose(got[:3], [frac[y == c].mean() for c in range(3)])
    assert np.isnan(got[3])
    multi = np.stack([y == 0, y != 0], 1)
    assert np.allclose(analysis.class_nonzero_fraction(x, multi),
                       [frac[y == 0].mean(), frac[y != 0].mean()])


def test_bad_input():
    with pytest.raises(InputError):
        analysis.nonzero_fraction(np.zeros(4))
    with pytest.raises(InputError):
        analysis.nonzero_fraction(np.array([[np.nan, 1.0]]))


def test_sparsity_is_meaningful_only_for_rectified_responses():
    """Known answers: ReLU outputs (zeros where a unit did not fire) are meaningful; a GELU output or a
    normalised residual stream (negative values) is not, whatever its count of exact zeros."""
    from core.analysis import sparsity_meaningful

    x = torch.randn(20, 8, 4, 4)
    assert sparsity_meaningful(torch.relu(x)) and sparsity_meaningful(np.zeros((3, 5)))
    assert not sparsity_meaningful(torch.nn.functional.gelu(x))
    assert not sparsity_meaningful(np.where(np.arange(10) == 3, -1e-3, 0.0)[None])
    assert sparsity_meaningful(np.empty((0, 4)))
