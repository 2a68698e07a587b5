"""The paper-scale benchmark (core/bench/paper_scale.py) at a tiny fraction: the synthetic VOC tree
(read by the real VOC loaders, counts scaling with the fraction, deterministic, cached), one run of a
few stages each in its own process (JSON structure, positive peak RSS, a failing stage recorded while
the run goes on) and the CLI's argument errors. No timing asserts; no network."""
from __future__ import annotations

import json

import numpy as np
import pytest


def _tree_bytes(root):
    voc = root / "VOCdevkit" / "VOC2007"
    return {str(p.relative_to(voc)): p.read_bytes() for p in sorted(voc.rglob("*")) if p.is_file()}


def test_paper_scale_tree_reads_as_voc_scales_and_is_deterministic(tmp_path):
    from core.bench import paper_scale
    from core.data.datasets import voc_classification, voc_det_gt
    from core.errors import InputError

    a = paper_scale.generate(tmp_path / "a", 0.004, seed=3)
    assert a["reused"] is False
    assert {s: d["images"] for s, d in a["splits"].items()} == {"trainval": 20, "test": 20}   # 5011, 4952 x 0.004
    for split in ("trainval", "test"):
        d = a["splits"][split]
        gt = voc_det_gt(tmp_path / "a", split)
        assert len(gt) == d["crops"] == d["boxes"] - d["difficult"] and d["difficult"] < d["boxes"] / 3
        assert 1.5 <= d["boxes"] / d["images"] <= 3.5 and set(gt.labels.tolist()) == set(range(20))  # every class
        assert len(voc_classification(tmp_path / "a", split)) == 20
        img = gt.image(0)
        assert img.size == (227, 227) and np.asarray(img).std() > 5                                 # not constant
    ids = (tmp_path / "a" / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main" / "test.txt").read_text().split()
    assert len(ids) == 20 and not set(ids) & set((tmp_path / "a" / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main" /
                                                  "trainval.txt").read_text().split())
    same = paper_scale.generate(tmp_path / "a", 0.004, seed=3)
    assert same["reused"] is True and same["splits"] == a["splits"]                                # cached
    paper_scale.generate(tmp_path / "b", 0.004, seed=3, workers=1)
    assert _tree_bytes(tmp_path / "a") == _tree_bytes(tmp_path / "b")                             # deterministic
    bigger = paper_scale.generate(tmp_path / "a", 0.008, seed=3)                                   # regenerated
    assert bigger["reused"] is False and bigger["splits"]["trainval"]["images"] == 40
    assert bigger["splits"]["test"]["boxes"] > a["splits"]["test"]["boxes"]
    assert paper_scale.split_sizes(1.0) == {"trainval": 5011, "test": 4952}
    assert paper_scale.split_sizes(0.4) == {"trainval": 2004, "test": 1981}
    for bad in (0, -0.1, 1.01, "x", float("nan")):
        with pytest.raises(InputError, match="fraction"):
            paper_scale.generate(tmp_path / "c", bad)
    man = tmp_path / "b" / "manifest.json"                                                        # interrupted
    man.write_text(json.dumps({**json.loads(man.read_text()), "complete": False}))
    assert paper_scale.generate(tmp_path / "b", 0.004, seed=3, workers=1)["reused"] is False
    assert _tree_bytes(tmp_path / "a") != _tree_bytes(tmp_path / "b")                             # 0.008 vs 0.004
    (tmp_path / "d" / "VOCdevkit").mkdir(parents=True)                                           # not ours
    with pytest.raises(InputError, match="did not write"):
        paper_scale.generate(tmp_path / "d", 0.004)
    assert (tmp_path / "d" / "VOCdevkit").is_dir()


def test_paper_scale_run_tiny_records_stages_and_failures(tmp_path, tmp_cache):
    from core.bench import paper_scale

    plan = paper_scale.stage_plan(("conv5", "fc7"), (), sparsity=True)           # 7 processes of ~5 s
    assert plan[2]["stage"] == "extraction_ratio"
    plan[2].update(crops=8, pairs=1)
    plan[2:2] = [{"stage": "top_activations", "layer": "conv5"},
                 {"stage": "selectivity", "layer": "conv9"}]                         # fails; the run goes on
    r = paper_scale.run(0.004, root=tmp_path / "ps", plan=plan)
    json.loads(json.dumps(r))
    assert r["fraction"] == 0.004 and r["model"] == "tv:alexnet" and r["device"] and r["code_version"]
    assert r["machine"]["cpu_count"] >= 1 and r["machine"]["load_avg_end"] is not None
    assert r["splits"]["test"]["images"] == 20 and r["splits"]["test"]["crops"] > 0
    names = [(s["name"], s["layer"]) for s in r["stages"]]
    assert names == [("extract:test", "all"), ("extract:trainval", "all"), ("top_activations", "conv5"),
                     ("selectivity", "conv9"), ("extraction_ratio", "all"), ("sparsity", "all"), ("cka", "all")]
    for s in r["stages"]:
        assert set(s) >= {"name", "layer", "wall_s", "peak_rss_mib", "ok", "error"}
        assert isinstance(s["peak_rss_mib"], float) and s["peak_rss_mib"] > 0 and s["process_s"] > 0
    bad = r["stages"][3]
    assert bad["ok"] is False and bad["wall_s"] is None and "conv9" in bad["error"]
    good = [s for s in r["stages"] if s is not bad]
    assert all(s["ok"] and s["error"] is None and s["wall_s"] >= 0 for s in good), good
    assert r["stages"][0]["info"]["items"] == r["splits"]["test"]["crops"]
    assert set(r["stages"][-2]["info"]["nonzero_pct"]) == {"conv5", "fc7"}
    assert r["stages"][-1]["info"]["layers"] == ["conv5", "fc7"] and r["stages"][-1]["info"]["estimator"]
    assert r["extraction_crops_per_s"]["test"] > 0 and r["extraction_crops_per_s"]["trainval"] > 0
    assert r["feature_store_bytes"] > 0 and r["failed_stages"] == 1
    assert r["analysis_s"] == pytest.approx(sum(s["wall_s"] for s in good[2:] if s["name"] != "extraction_ratio"),
                                            abs=0.02)
    ratio = r["stages"][4]["info"]
    assert ratio["images"] == 8 and ratio["ratio"] > 0 and ratio["model_only_img_s"] > 0
    assert r["targets"]["extraction_vs_bare_forward"]["value"] == ratio["ratio"]
    assert r["max_peak_rss_mib"] == max(s["peak_rss_mib"] for s in r["stages"])
    assert r["targets"]["max_peak_rss_mib"]["target"] == "<= 2048"
    assert not (tmp_path / "ps" / "run-cache").exists()                            # features removed after the run
    table = paper_scale.format_paper_table(r)
    assert "| conv5 |" in table and "top_activations" in table and "FAIL" in table and "conv9" in table
    twice = {**r, "fraction": 0.008, "analysis_s": 2 * r["analysis_s"]}          # the same run, as if at 2x
    text = paper_scale.format_scaling(paper_scale.scaling([r, twice]))
    assert text.count("| conv5 |") == 2 and "Scaling, fraction 0.004 -> 0.008 (data x2" in text
    assert "x2.0, target <= 2.08" in text and "(a run has failed stages)" in text and "n/a" in text
    summary = paper_scale.format_summary(paper_scale.scaling([r, twice])).splitlines()
    crops = r["splits"]["test"]["crops"] + r["splits"]["trainval"]["crops"]
    assert summary[0].endswith(f"| fraction 0.004 ({crops:,} crops) | fraction 0.008 ({crops:,} crops) |")
    extract = next(line for line in summary if line.startswith("| extraction"))
    wall = r["stages"][0]["wall_s"] + r["stages"][1]["wall_s"]
    peak = max(r["stages"][0]["peak_rss_mib"], r["stages"][1]["peak_rss_mib"])
    assert extract.count(f"| {wall:,.0f} s · {peak:,.0f} MiB") == 2
    assert any(line.startswith("| selectivity") and line.endswith("(1 failed) |")
               for line in summary)                                            # conv9's stage failed
    assert not any(line.startswith("| ablations") for line in summary)         # no such stage ran
    assert summary[-1].count(f"{r['max_peak_rss_mib']:,.0f} MiB") == 2


def test_paper_scale_cli_rejects_bad_arguments(capsys, tmp_cache):
    from core.__main__ import main

    for argv, needle in ((["--paper-scale", "--fraction", "0"], "outside (0, 1]"),
                         (["--paper-scale", "--fraction", "2"], "outside (0, 1]"),
                         (["--paper-scale", "--fraction", "lots"], "not a number"),
                         (["--fraction", "0.1"], "only with --paper-scale"),
                         (["--keep-cache"], "--keep-cache: only with --paper-scale"),
                         (["--paper-scale", "--quick"], "two different benchmarks"),
                         (["--paper-scale", "--fraction", "0.01", "--weights", "/no/such.pth"], "no such file")):
        assert main(["bench", *argv]) == 2
        assert needle in capsys.readouterr().err


def _run(fraction, crops, analysis_s, peak, failed=0):
    """The fields of a run record that the scaling reads."""
    return {"fraction": fraction, "splits": {"trainval": {"crops": crops[0]}, "test": {"crops": crops[1]}},
            "analysis_s": analysis_s, "analysis_process_s": analysis_s + 100.0, "failed_stages": failed,
            "max_peak_rss_mib": peak}


def test_scaling_holds_time_to_the_data_ratio_and_memory_to_the_target():
    from core.bench import paper_scale
    from core.errors import InputError

    big, small = _run(1.0, (12000, 11900), 2500.0, 1900.0), _run(0.4, (4800, 4760), 1000.0, 1800.0)
    r = paper_scale.scaling([big, small])                       # any order: smallest fraction first
    assert [x["fraction"] for x in r["runs"]] == [0.4, 1.0] and r["fractions"] == [0.4, 1.0]
    assert r["data_ratio"] == 2.5 and r["crops_ratio"] == round(23900 / 9560, 4)
    assert r["time_ratio"] == 2.5 and r["process_time_ratio"] == round(2600 / 1100, 4)
    assert r["targets"]["time_ratio"]["pass"] is True and "2.60" in r["targets"]["time_ratio"]["target"]
    assert r["targets"]["max_peak_rss_mib"] == {"value": 1900.0, "target": "<= 2048 at every fraction", "pass": True}
    slow = paper_scale.scaling([small, _run(1.0, (12000, 11900), 2601.0, 1900.0)])      # 2.601 > 1.04 x 2.5
    assert slow["targets"]["time_ratio"]["pass"] is False
    fat = paper_scale.scaling([small, _run(1.0, (12000, 11900), 2000.0, 2049.0)])
    assert fat["targets"]["max_peak_rss_mib"]["pass"] is False and fat["targets"]["time_ratio"]["pass"] is True
    broken = paper_scale.scaling([small, _run(1.0, (12000, 11900), 900.0, 1900.0, failed=2)])
    assert broken["complete"] is False and broken["targets"]["time_ratio"]["pass"] is None   # not a pass
    with pytest.raises(InputError, match="two different fractions"):
        paper_scale.scaling([small, small])


def test_paper_scale_cli_rejects_bad_fraction_lists(capsys, tmp_cache):
    from core.__main__ import main

    for argv, needle in ((["--paper-scale", "--fraction", "0.4,0.4"], "two different fractions"),
                         (["--paper-scale", "--fraction", "0.4,lots"], "not a number"),
                         (["--paper-scale", "--fraction", "0.4,3"], "outside (0, 1]")):
        assert main(["bench", *argv]) == 2
        assert needle in capsys.readouterr().err
