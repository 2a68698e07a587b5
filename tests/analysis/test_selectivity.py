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


# ---------------------------------------------------------------- float16 fast path
def fp16_data(seed: int, n: int = 40, hw: int = 3, num_classes: int = 4) -> tuple:
    """float16 responses with every awkward case, one per filter: ReLU ties and exact
    zeros, a dead filter, signed values, all-negative, -0.0 mixed with +0.0, only -0.0,
    a constant, subnormals, values near float16's maximum."""
    rng = np.random.default_rng(seed)
    g = lambda: rng.normal(size=(n, hw, hw))                      # noqa: E731
    cols = [np.round(np.maximum(g(), 0), 1), np.zeros((n, hw, hw)), g() * 3, -np.abs(g()) - 0.5,
            np.where(g() > 0, np.round(g(), 2), -0.0), np.full((n, hw, hw), -0.0),
            np.full((n, hw, hw), 2.5), g() * 1e-6, np.clip(np.round(g() * 3e4, -2), -65000, 65000)]
    x = np.stack(cols, axis=1).astype(np.float16)
    return x, rng.integers(0, num_classes, n)


@pytest.fixture()
def fp16_always(monkeypatch):
    """Route every float16 input through the fast path, however small."""
    import core.analysis.selectivity as sel
    monkeypatch.setattr(sel, "FP16_MIN_SAMPLES", 0)


@pytest.mark.parametrize("seed,num_thresholds", [(0, 100), (1, 7), (2, 2)])
def test_fp16_path_matches_float64_reference(fp16_always, seed, num_thresholds):
    x, y = fp16_data(seed)
    assert np.signbit(x[:, 5]).all() and (x[:, 4] == 0).any()
    got = analysis.entropy_curves(x, y, 4, num_thresholds)
    want = ref_entropy_curves(x, y, 4, num_thresholds)            # float64 comparisons
    assert np.abs(got - want).max() <= 1e-6
    a = analysis.aue(x, y, 4, num_thresholds)
    assert np.abs(a - ref_aue(want)).max() <= 1e-6


def test_fp16_path_is_taken_and_equals_float32_exactly(monkeypatch):
    import core.analysis.selectivity as sel
    calls = []
    real = sel._fp16_curves
    monkeypatch.setattr(sel, "_fp16_curves", lambda *a: calls.append(1) or real(*a))
    for seed, c, t in [(3, 12, 100), (4, 3, 10), (5, 20, 33), (6, 100, 100)]:  # last: int32 bins
        x, y = fp16_data(seed, n=220, hw=9, num_classes=c)         # 17820 samples per filter
        assert x.shape[0] * 81 >= sel.FP16_MIN_SAMPLES
        fast = analysis.entropy_curves(x, y, c, t)
        n_calls = len(calls)
        slow = analysis.entropy_curves(x.astype(np.float32), y, c, t)
        assert len(calls) == n_calls                              # float32: general path
        assert np.array_equal(fast, slow)
    assert len(calls) == 4


def test_fp16_inputs_torch_strided_memmap_and_threads(fp16_always, tmp_path, monkeypatch):
    x, y = fp16_data(7)
    want = analysis.entropy_curves(x.astype(np.float64), y, 4, 20)
    np.save(tmp_path / "x.npy", x)
    big = np.repeat(x, 2, axis=1)                                 # strided views below
    variants = [torch.from_numpy(x), torch.from_numpy(big)[:, ::2], big[:, ::2],
                np.load(tmp_path / "x.npy", mmap_mode="r")]
    for v in variants:
        assert np.array_equal(analysis.entropy_curves(v, y, 4, 20), want)
    import core.analysis.selectivity as sel
    monkeypatch.setattr(sel, "FP16_THREADS", 3)                   # the thread pool
    assert np.array_equal(analysis.entropy_curves(x, y, 4, 20), want)


def test_fp16_fc_layer_shape(fp16_always):
    x, y = fp16_data(8, n=60, hw=1)
    got = analysis.entropy_curves(x[:, :, 0, 0], y, 4, 15)
    assert np.array_equal(got, analysis.entropy_curves(x[:, :, 0, 0].astype(np.float32), y, 4, 15))


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_fp16_path_rejects_nan_and_inf(fp16_always, bad):
    x, y = fp16_data(9)
    x[3, 2, 1, 1] = bad
    with pytest.raises(InputError, match="NaN or inf"):
        analysis.aue(x, y, 4)
