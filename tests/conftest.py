"""Shared fixtures. Every test runs with its own cache directory (FILTERSCOPE_CACHE)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture()
def tmp_cache(tmp_path, monkeypatch) -> Path:
    """A private cache root for one test."""
    root = tmp_path / "cache"
    monkeypatch.setenv("FILTERSCOPE_CACHE", str(root))
    return root


@pytest.fixture()
def tiny_images() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (37, 64, 64, 3), dtype=np.uint8), rng.integers(0, 3, 37)
