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
