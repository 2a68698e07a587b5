"""Detections page (AppTest) and the detection service on the tiny demo, with a light detection setting."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import app_test, plotly_figures
from core.tasks import rcnn as detection

LIGHT = detection.DetectionConfig(proposals="windows", max_proposals=40, max_train_images=40, max_test_images=6,
                                  mining_rounds=1)


@pytest.fixture
def light(demo_env, monkeypatch):
    from core import service

    monkeypatch.setattr(service.detection_tasks, "DEMO_DETECTION", LIGHT)  # read by detection_config
    return service


def _boxes(fig: dict) -> list[tuple[str, tuple[float, ...]]]:
    out = []
    for tr in fig["data"]:
        if tr.get("type") == "scatter":
            xs, ys = np.asarray(tr["x"], float), np.asarray(tr["y"], float)
            out.append((tr["name"], (xs.min(), ys.min(), xs.max(), ys.max())))
    return out


def test_detections_page_renders_and_follows_the_image(light):
    service = light
    at = app_test("pages/detections.py")
    assert not at.exception, at.exception
    figs = plotly_figures(at)
    assert figs, "no figure drawn"
    first = figs[0]
    assert first["data"][0]["type"] == "image"
    view = service.detections("demo:finetuned", "demo-det", 0, "fc7", per_class=2, min_score=-1.0)
    # ground truth of image 0, read straight from the demo's annotation file
    from core.demo import profiles as demo_profiles

    z = np.load(demo_profiles.demo_dir() / "data" / "target-test-annotations.npz")
    gt_boxes = z["boxes"][z["image_index"] == 0]
    drawn = _boxes(first)
    gt_drawn = [b for name, b in drawn if "ground truth" in name]
    assert sorted(gt_drawn) == sorted(tuple(float(v) for v in b) for b in gt_boxes)
    det_drawn = [name for name, _ in drawn if "ground truth" not in name]
    assert det_drawn == [f"{d['class_name']} {d['score']:.2f}" for d in view["detections"]]
    assert any("mAP" in m.label for m in at.metric)

    at.number_input(key="det_image").set_value(1).run()
    assert not at.exception, at.exception
    second = plotly_figures(at)[0]
    assert not np.array_equal(np.asarray(second["data"][0]["z"]), np.asarray(first["data"][0]["z"]))
    gt1 = z["boxes"][z["image_index"] == 1]
    assert sorted(b for n, b in _boxes(second) if "ground truth" in n) == sorted(tuple(float(v) for v in b) for b in gt1)


def test_detection_service_and_table_8(light):
    service = light
    r = service.detection_map("demo:finetuned", "demo-det", "fc7")
    assert 0 <= r["map"] <= 1 and r["stats"]["test_images"] == 6 and r["stats"]["train_images"] == 40
    assert r["provenance"].layer == "fc7" and "windows" in r["provenance"].stamp()
    assert service.is_detection_cached("demo:finetuned", "demo-det", "fc7")
    with pytest.raises(service.InputError, match="out of range"):
        service.detections("demo:finetuned", "demo-det", 6)
    with pytest.raises(service.InputError, match="detection"):
        service.detection_map("demo:finetuned", "demo-cls", "fc7")
    t8 = service.paper_table(8, "det")
    col = service.paper_column(service.task("demo-det"))
    assert list(t8["ablation"]) == ["original", "binarize", "sp-shuffle", "sp-max"]
    assert list(t8[col]) == ["47.6", "45.7", "—", "25.4"]
    assert "PASCAL-DET" in col
    vals = [float(v) for v in t8["measured (%)"]]
    assert all(0 <= v <= 100 for v in vals)
    assert vals[0] == pytest.approx(100 * service.detection_map("demo:finetuned", "demo-det", "conv5")["map"], abs=0.05)
    t1 = service.paper_table(1, "det")
    assert list(t1[col]) == ["40.7", "45.5", "54.1"]


def _app_with_task(page: str, task_id: str):
    from streamlit.testing.v1 import AppTest

    from conftest import APP

    at = AppTest.from_file(str(APP), default_timeout=600)
    at.query_params["task"] = task_id
    at.run()
    at.switch_page(page).run()
    return at


def test_ablation_page_on_the_detection_task_shows_table_8(light):
    service = light
    at = _app_with_task("pages/ablations.py", "demo-det")
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    tables = [df.value for df in at.dataframe]
    col = service.paper_column(service.task("demo-det"))
    ref = next(t for t in tables if col in t.columns)
    conv5 = ref[ref["layer"] == "conv5"].set_index("ablation")
    assert conv5.loc["original", col] == "47.6" and conv5.loc["sp-max", col] == "25.4"
    measured = 100 * service.detection_map("demo:finetuned", "demo-det", "conv5", "sp-max")["map"]
    assert float(conv5.loc["sp-max", "measured (%)"]) == pytest.approx(measured, abs=0.05)


def test_training_page_on_the_scene_task_shows_the_paper_tables(light):
    service = light
    at = _app_with_task("pages/training.py", "demo-scene")
    assert not at.exception, at.exception
    col = service.paper_column(service.task("demo-scene"))
    refs = [df.value for df in at.dataframe if col in df.value.columns]
    assert len(refs) == 3  # Tables 1, 2, 4
    assert list(refs[0][col]) == ["40.4 ± 0.2", "53.1 ± 0.2", "56.8 ± 0.2"]
    t1 = service.paper_table(1, "scene", "demo-scene")
    assert list(refs[0]["measured (%)"]) == list(t1["measured (%)"])
