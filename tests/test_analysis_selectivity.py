"""Entropy curves, AuE and selectivity curves held against slow, obvious references."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from core import analysis
from core.analysis._common import DEFAULT_CHUNK_ELEMENTS, chunk_size, plan_chunks
from core.errors import InputError


# ---------------------------------------------------------------- slow references
def ref_entropy_curves(resp: np.ndarray, labels: np.ndarray, num_classes: int,
                       num_thresholds: int) -> np.ndarray:
    """Appendix, literally: per filter, concatenate the N*p^2 scores and labels, sweep
    linspace(min, max, T) thresholds, entropy (bits) of labels with score >= threshold."""
    n, f = resp.shape[:2]
    out = np.zeros((f, num_thresholds))
    for j in range(f):
        scores, labs = [], []
        for i in range(n):
            vec = np.asarray(resp[i, j], dtype=np.float64).reshape(-1)
            scores.extend(vec.tolist())
            labs.extend([int(labels[i])] * vec.size)
        scores = np.asarray(scores)
        thresholds = np.linspace(scores.min(), scores.max(), num_thresholds)
        for t, tau in enumerate(thresholds):
            hist = [0] * num_classes
            for s, lab in zip(scores, labs):
                if s >= tau:
                    hist[lab] += 1
            total = sum(hist)
            ent = 0.0
            for h in hist:
                if h > 0:
                    ent -= (h / total) * np.log2(h / total)
            out[j, t] = ent
    return out


def ref_aue(curves: np.ndarray) -> np.ndarray:
    t = curves.shape[1]
    return np.array([np.trapezoid(c, dx=1.0 / (t - 1)) for c in curves])


def relu_data(seed: int, n: int = 40, f: int = 6, hw: int = 3, num_classes: int = 4):
    """ReLU-like responses: many exact zeros, ties (rounded), a dead filter (index 1)."""
    rng = np.random.default_rng(seed)
    x = np.round(np.maximum(rng.normal(size=(n, f, hw, hw)), 0.0), 1)
    x[:, 1] = 0.0
    y = rng.integers(0, num_classes, n)
    return x, y


# ---------------------------------------------------------------- against references
@pytest.mark.parametrize("seed,num_thresholds", [(0, 100), (1, 7), (2, 2)])
def test_entropy_curves_match_reference_conv(seed, num_thresholds):
    x, y = relu_data(seed)
    got = analysis.entropy_curves(x, y, 4, num_thresholds)
    want = ref_entropy_curves(x, y, 4, num_thresholds)
    assert got.shape == (6, num_thresholds) and got.dtype == np.float64
    assert np.abs(got - want).max() <= 1e-6


def test_entropy_curves_match_reference_fc():
    x, y = relu_data(3, n=80, hw=1)
    got = analysis.entropy_curves(x[:, :, 0, 0], y, 4, 50)
    assert np.abs(got - ref_entropy_curves(x[:, :, 0, 0, None], y, 4, 50)).max() <= 1e-6


def test_thresholds_hitting_sample_values_exactly():
    # integer responses 0..3 with T=4 and T=100: thresholds land on sample values, and
    # samples equal to the maximum must count at the last threshold.
    rng = np.random.default_rng(4)
    x = rng.integers(0, 4, size=(50, 3, 2, 2)).astype(np.float64)
    x[:, 2] = np.round(x[:, 2] * 0.1, 1)
    y = rng.integers(0, 3, 50)
    for t in (4, 100, 31):
        got = analysis.entropy_curves(x, y, 3, t)
        assert np.abs(got - ref_entropy_curves(x, y, 3, t)).max() <= 1e-6
        # the last threshold (the max) keeps only samples equal to the max: never empty
        assert np.all(analysis.entropy_curves(x, y, 3, t)[:, -1] >= 0)


def test_aue_matches_reference():
    x, y = relu_data(5)
    got = analysis.aue(x, y, 4, 20)
    want = ref_aue(ref_entropy_curves(x, y, 4, 20))
    assert got.shape == (6,)
    assert np.abs(got - want).max() <= 1e-6


def test_chunked_equals_unchunked_and_float32():
    x, y = relu_data(6, n=30, f=9)
    full = analysis.entropy_curves(x, y, 4, 30)
    tiny = analysis.entropy_curves(x, y, 4, 30, chunk_elements=1)  # one filter per chunk
    assert np.array_equal(full, tiny)
    x32 = x.astype(np.float32)
    want = ref_entropy_curves(x32, y, 4, 30)  # reference compares float32 scores in float64
    assert np.abs(analysis.entropy_curves(x32, y, 4, 30) - want).max() <= 1e-6


def test_torch_input_same_as_numpy():
    x, y = relu_data(7)
    a = analysis.aue(x, y, 4)
    b = analysis.aue(torch.from_numpy(x), torch.from_numpy(y), 4)
    assert isinstance(b, np.ndarray) and np.array_equal(a, b)


# ---------------------------------------------------------------- known answers
def test_perfectly_selective_filter_and_uniform_classes():
    c, per = 4, 10
    y = np.repeat(np.arange(c), per)                 # uniform classes
    x = np.zeros((c * per, 2))
    x[y == 2, 0] = 1.0 + np.arange(per)              # fires only for class 2
    curves = analysis.entropy_curves(x, y, c, 10)
    assert curves[0, 0] == pytest.approx(np.log2(c))  # lowest threshold: all samples
    assert np.all(curves[0, 1:] == 0.0)               # above 0: only class 2
    assert np.allclose(curves[1], np.log2(c))         # dead filter: all thresholds = 0
    a = analysis.aue(x, y, c, 10)
    assert a[0] == pytest.approx(np.log2(c) / 2 / 9)
    assert a[1] == pytest.approx(np.log2(c))


def test_single_sample_per_class_is_low_entropy_at_top():
    y = np.arange(5)
    x = np.arange(5, dtype=np.float64)[:, None]
    curves = analysis.entropy_curves(x, y, 5, 5)      # thresholds 0, 1, 2, 3, 4
    want = [np.log2(5), np.log2(4), np.log2(3), 1.0, 0.0]
    assert np.allclose(curves[0], want)


# ---------------------------------------------------------------- selectivity curve
def test_selectivity_curve_matches_loop():
    rng = np.random.default_rng(8)
    vals = rng.random(17)
    frac, mean = analysis.selectivity_curve(vals)
    srt = sorted(vals.tolist())
    for k in range(1, 18):
        assert frac[k - 1] == pytest.approx(k / 17)
        assert mean[k - 1] == pytest.approx(sum(srt[:k]) / k, abs=1e-12)
    assert np.all(np.diff(mean) >= -1e-12)            # mean of sorted prefix is increasing


def test_shuffled_label_aue_is_chance_like_and_deterministic():
    c, per = 4, 25
    y = np.repeat(np.arange(c), per)
    x = np.zeros((c * per, 1))
    x[y == 0, 0] = np.linspace(1, 2, per)
    a = analysis.shuffled_label_aue(x, y, c, seeds=(0, 1))
    assert a.shape == (2, 1)
    assert np.array_equal(a, analysis.shuffled_label_aue(x, y, c, seeds=(0, 1)))
    assert np.all(a[:, 0] > analysis.aue(x, y, c)[0])


# ---------------------------------------------------------------- chunk planning (memory)
def test_chunk_plan_bounds_elements_per_chunk():
    n, hw, f = 5000, 13 * 13, 256                     # conv5-sized: 845k samples / filter
    per_filter = n * hw
    chunks = plan_chunks(f, per_filter)
    assert chunks[0].start == 0 and chunks[-1].stop == f
    assert all(a.stop == b.start for a, b in zip(chunks, chunks[1:]))
    sizes = [(s.stop - s.start) * per_filter for s in chunks]
    assert max(sizes) <= DEFAULT_CHUNK_ELEMENTS        # 4M elements: ~32 MiB per array
    assert chunk_size(per_filter) == 4
    # a single item larger than the budget still gets its own chunk
    assert chunk_size(10 * DEFAULT_CHUNK_ELEMENTS) == 1
    assert [(s.start, s.stop) for s in plan_chunks(5, 3, budget=7)] == [(0, 2), (2, 4), (4, 5)]


def test_entropy_curves_respects_chunk_budget(monkeypatch):
    import core.analysis.selectivity as sel
    seen = []
    real = sel._chunk_counts

    def spy(x, *args):
        seen.append(x.numel())
        return real(x, *args)

    monkeypatch.setattr(sel, "_chunk_counts", spy)
    x = np.maximum(np.random.default_rng(9).normal(size=(64, 20, 6, 6)), 0)
    y = np.random.default_rng(9).integers(0, 5, 64)
    analysis.aue(x, y, 5, chunk_elements=64 * 36 * 3)
    assert len(seen) == 7 and max(seen) <= 64 * 36 * 3


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("bad", [
    dict(labels=np.array([0, 1, 5])),                 # label >= num_classes
    dict(labels=np.array([0, 1])),                     # wrong length
    dict(labels=np.array([0.5, 1, 2])),                # not integers
    dict(num_thresholds=1),
    dict(responses=np.zeros((3,))),                    # 1-D
    dict(responses=np.array([[0.0], [np.nan], [1.0]])),
])
def test_entropy_curves_rejects_bad_input(bad):
    kw = dict(responses=np.zeros((3, 2)), labels=np.array([0, 1, 2]), num_classes=3,
              num_thresholds=10)
    kw.update(bad)
    with pytest.raises(InputError):
        analysis.entropy_curves(**kw)
