"""Benchmarks: ``python -m core bench``.

- :mod:`.quick` — every fast path timed side by side with its slow reference
  (``python -m core bench [--quick] [--json PATH]``); its names are re-exported here.
- :mod:`.paper_scale` — the paper's analyses on a PASCAL VOC 2007-sized synthetic tree,
  each stage in its own process with its wall time and peak RSS
  (``python -m core bench --paper-scale [--fraction F] [--weights FILE] [--json PATH] [--root DIR]``).
"""
from __future__ import annotations

from core.bench import quick
from core.bench.quick import (FULL, QUICK, TARGETS, BenchSizes, _metric, ap_reference, aue_data, aue_reference,
                              bench_ap, bench_aue, bench_extraction, bench_extraction_alexnet, demo_build,
                              cka_demo_s, detection_s, format_table, machine_info, pages_warm_ms, probe_ms, run)

__all__ = ["quick", "BenchSizes", "FULL", "QUICK", "TARGETS", "aue_reference", "ap_reference", "aue_data", "run",
           "format_table", "machine_info", "bench_extraction", "bench_extraction_alexnet", "bench_aue", "bench_ap",
           "pages_warm_ms", "probe_ms", "cka_demo_s", "detection_s", "demo_build", "_metric"]
