"""The benchmark's cheap pieces at tiny sizes: structure, JSON, references (no timing asserts)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from core import analysis, bench

TINY = bench.BenchSizes(extraction_images=20, extraction_repeats=1, batch_size=8, alexnet_images=6,
                        alexnet_batch_size=4, alexnet_repeats=2, aue_images=100,
                        aue_filters=3, aue_side=13, aue_classes=4, aue_thresholds=10,
                        aue_reference_filters=2, ap_items=60, ap_filters=5, ap_classes=3,
                        pages=False, probe=False, demo_build=False, detection=False)


def test_run_tiny_structure_and_json(tmp_cache):
    r = bench.run(quick=True, sizes=TINY)
    json.loads(json.dumps(r))                                      # JSON-ready
    assert r["device"] and r["code_version"] and r["machine"]["cpu_count"] >= 1
    e = r["extraction"]
    assert e["reason"] is None and e["model_only_img_s"] > 0 and e["pipeline_img_s"] > 0
    assert e["ratio"] == pytest.approx(e["pipeline_img_s"] / e["model_only_img_s"], rel=1e-2)  # one pair
    a = r["extraction_alexnet"]
    assert a["reason"] is None and a["images"] == 6 and len(a["runs"]["ratio"]) == 2
    pairs = [p / m for p, m in zip(a["runs"]["pipeline_img_s"], a["runs"]["model_only_img_s"])]
    assert a["ratio"] == pytest.approx(float(np.median(pairs)), rel=1e-2)    # median of the pairs
    for key, tol in (("aue", 1e-6), ("ap", 1e-9)):
        sec = r[key]
        assert sec["reason"] is None, sec["reason"]
        assert sec["max_abs_diff"] <= tol
        assert sec["reference_s"] > 0 and sec["fast_s"] > 0 and sec["speedup"] > 0
    assert r["aue"]["shape"] == [100, 3, 13, 13] and r["aue"]["dtype"] == "float16"
    assert "scaled" in r["aue"]["note"]                            # reference on 2 of 3 filters
    for key in ("pages_warm_ms", "probe_ms", "cka_demo_s", "detection_s", "demo_build_s", "demo_rerun_s",
                "peak_rss_mb"):
        assert r[key] is None and r["reasons"][key]
    assert r["reasons"]["demo_build_s"] == "skipped in --quick"
    assert set(r["targets"]) == set(bench.TARGETS)
    assert r["targets"]["aue_max_abs_diff"]["pass"] is True
    assert r["targets"]["probe_ms"]["pass"] is None
    table = bench.format_table(r)
    assert "extraction_ratio" in table and "aue_speedup" in table and "ap_speedup" in table


def test_failing_section_reports_reason_and_others_run(tmp_cache, monkeypatch):
    def boom(*_a, **_k):
        raise RuntimeError("no forward today")

    monkeypatch.setattr(bench.quick, "bench_extraction", boom)  # run() looks it up in its module
    r = bench.run(quick=True, sizes=TINY)
    assert r["extraction"]["ratio"] is None and "no forward today" in r["extraction"]["reason"]
    assert r["targets"]["extraction_ratio"]["pass"] is None
    assert r["aue"]["reason"] is None and r["ap"]["reason"] is None
    assert "n/a" in bench.format_table(r)


def test_references_agree_with_analysis():
    sizes = bench.BenchSizes(aue_images=30, aue_filters=3, aue_side=4, aue_classes=3, aue_thresholds=12)
    x, y = bench.aue_data(sizes)
    assert np.abs(bench.aue_reference(x, y, 3, 12) - analysis.aue(x, y, 3, 12)).max() <= 1e-12
    assert np.array_equal(bench.aue_reference(x, y, 3, 12, filters=[2]), bench.aue_reference(x, y, 3, 12)[2:])
    rng = np.random.default_rng(0)
    s = np.round(rng.random((40, 4)), 1)
    lab = rng.integers(0, 3, 40)
    assert np.abs(bench.ap_reference(s, lab, 3) - analysis.class_filter_ap(s, lab, 3)).max() <= 1e-12


def test_app_metrics_without_demo_give_reasons(tmp_cache):
    reasons: dict = {}
    assert bench._metric(bench.probe_ms, reasons, "probe_ms") is None
    assert reasons["probe_ms"]                                     # demo not built / no pages
    assert bench._metric(bench.cka_demo_s, reasons, "cka_demo_s") is None and reasons["cka_demo_s"]
