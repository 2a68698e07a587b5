"""Top-k filter sets and their overlap (Fig. 5) against set-based loops."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from core import analysis
from core.errors import InputError


def ref_topk(imp: np.ndarray, k: int) -> list[list[int]]:
    """Descending importance, ties to the lower filter index."""
    return [sorted(range(len(row)), key=lambda f: (-row[f], f))[:k] for row in imp]


def ref_overlap(imp: np.ndarray, k: int) -> np.ndarray:
    sets = [set(s) for s in ref_topk(imp, k)]
    return np.array([[len(a & b) / k for b in sets] for a in sets])


def tied_importance(seed: int, c: int = 6, f: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.round(rng.random((c, f)), 1)             # many ties


@pytest.mark.parametrize("k", [1, 5, 13, 40])
def test_topk_sets_and_overlap_match_reference(k):
    imp = tied_importance(k)
    assert analysis.topk_sets(imp, k).tolist() == ref_topk(imp, k)
    got = analysis.topk_overlap(imp, k)
    assert got.dtype == np.float64 and got.shape == (6, 6)
    assert np.array_equal(got, ref_overlap(imp, k))
    assert np.all(np.diag(got) == 1.0) and np.array_equal(got, got.T)


def test_tie_breaking_toward_lower_index():
    imp = np.array([[1.0, 5.0, 5.0, 0.0, 5.0]])
    assert analysis.topk_sets(imp, 2).tolist() == [[1, 2]]
    assert analysis.topk_sets(np.zeros((1, 4)), 3).tolist() == [[0, 1, 2]]


def test_shared_filters_and_torch_input():
    imp = tied_importance(9)
    sets = ref_topk(imp, 10)
    got = analysis.shared_filters(torch.from_numpy(imp), 1, 4, 10)
    assert got.tolist() == sorted(set(sets[1]) & set(sets[4]))
    assert len(got) == round(analysis.topk_overlap(imp, 10)[1, 4] * 10)


def test_overlap_chance():
    assert analysis.overlap_chance(256, 50) == pytest.approx(50 / 256)
    assert round(analysis.overlap_chance(256, 50), 3) == 0.195   # Fig. 5 caption
    rng = np.random.default_rng(0)
    ov = analysis.topk_overlap(rng.random((60, 256)), 50)
    off = ov[~np.eye(60, dtype=bool)]
    assert off.mean() == pytest.approx(50 / 256, abs=0.01)


@pytest.mark.parametrize("call", [
    lambda: analysis.topk_overlap(np.zeros((2, 5)), 6),
    lambda: analysis.topk_overlap(np.zeros((2, 5)), 0),
    lambda: analysis.topk_sets(np.zeros(5), 2),
    lambda: analysis.topk_sets(np.array([[np.nan, 1.0]]), 1),
    lambda: analysis.shared_filters(np.zeros((2, 5)), 0, 2, 2),
    lambda: analysis.overlap_chance(10, 11),
])
def test_bad_input(call):
    with pytest.raises(InputError):
        call()
