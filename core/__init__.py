"""Filterscope core engine: models, datasets, extraction, analyses, figures.

Never imports streamlit (tests/test_layout.py enforces it).
"""
from __future__ import annotations

__version__ = "0.1.0"
