"""Row blocks of a stored layer (core/analysis/sharded.row_blocks) and the reducers over them, held
against the in-memory functions on the whole array (bit for bit where the reducers promise it)."""
from __future__ import annotations

import numpy as np
import pytest

from core import analysis
from core.analysis.sharded import StoredShard, load_shard, row_blocks
from core.errors import InputError


@pytest.fixture
def stored(tmp_path):
    rng = np.random.default_rng(0)
    x = np.maximum(rng.normal(size=(53, 6, 4, 5)), 0).astype(np.float16)
    x[:, 2] += 0.5                     # a filter that is never zero
    labels = rng.integers(0, 4, len(x))
    path = tmp_path / "conv.npy"
    np.save(path, x.transpose(0, 2, 3, 1))          # channels-last store, as extraction writes conv maps
    return x, labels, StoredShard(str(path), "NHWC")


def test_blocks_tile_the_rows_within_the_byte_limit(stored):
    x, _, shard = stored
    row = x[0].nbytes
    blocks = row_blocks([(0, shard)], 5 * row + 7)
    assert [s for s, _ in blocks] == list(range(0, 53, 5))
    parts = [load_shard(d) for _, d in blocks]
    assert all(p.nbytes <= 5 * row + 7 for p in parts)
    np.testing.assert_array_equal(np.concatenate(parts), x)
    assert len(row_blocks([(0, shard)], 1)) == 53                 # at least one row per block
    arrays = row_blocks([x[:20], x[20:]], 3 * row)                # arrays: views, starts continue
    assert [s for s, _ in arrays] == [0, 3, 6, 9, 12, 15, 18, 20, 23, 26, 29, 32, 35, 38, 41, 44, 47, 50]
    with pytest.raises(InputError, match="max_bytes"):
        row_blocks([x], 0)


def test_reducers_over_blocks_equal_the_whole_array(stored):
    x, labels, shard = stored
    blocks = row_blocks([(0, shard)], 4 * x[0].nbytes)
    np.testing.assert_array_equal(analysis.aue_sharded(blocks, labels, 4, 20), analysis.aue(x, labels, 4, 20))
    np.testing.assert_array_equal(analysis.shuffled_label_aue_sharded(blocks, labels, 4, (0, 5), 20),
                                  analysis.shuffled_label_aue(x, labels, 4, (0, 5), 20))
    assert analysis.sparsity_meaningful_sharded(blocks) is True
    assert analysis.sparsity_meaningful_sharded([x - np.float16(0.01)]) is False
    summary, ref = analysis.sparsity_summary_sharded(blocks), analysis.sparsity_summary(x)
    assert summary["mean"] == pytest.approx(ref["mean"], abs=1e-12)
    assert summary["std"] == pytest.approx(ref["std"], abs=1e-12)
    np.testing.assert_allclose(analysis.class_nonzero_fraction_sharded(blocks, labels, 4),
                               analysis.class_nonzero_fraction(x, labels, 4), atol=1e-12)


def test_unit_nonzero_fraction_counts_every_response(stored):
    x, _, shard = stored
    n, f, h, w = x.shape
    literal = np.array([sum(float(x[i, u, a, b]) != 0 for i in range(n) for a in range(h) for b in range(w))
                        / (n * h * w) for u in range(f)])
    np.testing.assert_allclose(analysis.unit_nonzero_fraction(x), literal, atol=1e-15)
    assert analysis.unit_nonzero_fraction(x)[2] == 1.0                          # the filter that never is zero
    blocks = row_blocks([(0, shard)], 3 * x[0].nbytes)
    np.testing.assert_array_equal(analysis.unit_nonzero_fraction_sharded(blocks), analysis.unit_nonzero_fraction(x))
    fc = x.max(axis=(2, 3))
    np.testing.assert_array_equal(analysis.unit_nonzero_fraction_sharded([fc[:7], fc[7:]]),
                                  (fc != 0).mean(0))
    with pytest.raises(InputError, match="NaN"):
        analysis.unit_nonzero_fraction(np.full((2, 3), np.nan))
