"""Shared helpers of core.analysis: conversion, validation, the package's public API."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from core import analysis
from core.analysis._common import as_numpy, as_torch, check_finite, int_labels, positives_matrix
from core.errors import InputError

PUBLIC = ["entropy_curves", "aue", "selectivity_curve", "filter_ap", "class_filter_ap",
          "pr_curve", "topk_overlap", "topk_sets", "shared_filters", "overlap_chance",
          "nonzero_fraction", "sparsity_summary", "class_nonzero_fraction", "binarize",
          "spatial_max", "spatial_shuffle", "filters_needed", "svm_filter_ranking",
          "linear_map", "grandmother_cells", "ablation_study", "shuffled_label_aue",
          "shuffled_label_ap", "random_subset_ap", "single_ap_ranking", "PAPER_K"]


def test_public_api_is_reexported_and_documented():
    for name in PUBLIC:
        assert hasattr(analysis, name) and name in analysis.__all__
    for name in analysis.__all__:
        obj = getattr(analysis, name)
        if callable(obj) and not isinstance(obj, type):
            assert "Reproduces:" in (obj.__doc__ or ""), name
    assert "streamlit" not in sys.modules


def test_as_torch_keeps_memory_and_handles_readonly(tmp_path):
    arr = np.arange(6.0).reshape(2, 3)
    t = as_torch(arr)
    assert t.dtype == torch.float64 and t.data_ptr() == arr.__array_interface__["data"][0]
    mm = np.lib.format.open_memmap(tmp_path / "f.npy", mode="w+", dtype=np.float16,
                                   shape=(2, 3))
    mm[:] = 1.0
    ro = np.load(tmp_path / "f.npy", mmap_mode="r")
    assert as_torch(ro, dtype=torch.float64).sum().item() == 6.0
    assert isinstance(as_numpy(torch.ones(2)), np.ndarray)
    with pytest.raises(InputError):
        as_torch(np.array(["a", "b"]))


def test_label_helpers():
    assert positives_matrix(np.array([0, 2]), 2, 3, torch.device("cpu")).tolist() == [
        [True, False, False], [False, False, True]]
    assert int_labels(np.array([1.0, 0.0]), 2, 2, torch.device("cpu")).dtype == torch.int64
    with pytest.raises(InputError):
        int_labels(np.array([True, False]), 2, 2, torch.device("cpu"))
    with pytest.raises(InputError):
        positives_matrix(np.full((2, 2), 2), 2, None, torch.device("cpu"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_give_the_numpy_numbers():
    rng = np.random.default_rng(0)
    x = np.round(np.maximum(rng.normal(size=(40, 5, 3, 3)), 0), 1)
    y = rng.integers(0, 3, 40)
    xc, yc = torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda()
    assert np.array_equal(analysis.entropy_curves(xc, yc, 3), analysis.entropy_curves(x, y, 3))
    s = x.max((2, 3))
    assert np.abs(analysis.class_filter_ap(torch.from_numpy(s).cuda(), yc, 3)
                  - analysis.class_filter_ap(s, y, 3)).max() <= 1e-12
    assert np.array_equal(analysis.topk_sets(torch.from_numpy(s.T).cuda(), 10),
                          analysis.topk_sets(s.T, 10))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_check_finite_finds_one_bad_value_and_passes_sums_that_overflow(dtype):
    big = torch.full((64, 8), torch.finfo(dtype).max / 4, dtype=dtype)   # finite; the sum is inf
    check_finite(big, "x")
    check_finite(torch.arange(6, dtype=torch.int64), "x")                 # integers: nothing to check
    for bad in (float("nan"), float("inf"), -float("inf")):
        x = torch.zeros(50, 3, dtype=dtype)
        x[37, 1] = bad
        with pytest.raises(InputError, match="x contains NaN or inf"):
            check_finite(x, "x")
