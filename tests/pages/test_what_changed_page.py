"""AppTest of the What changed page (#31) on the tiny demo: it draws exactly what core.service returns
(the CKA matrix, every unit before vs after, the snapshots' CKA) and a click on a unit shows that unit."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import app_test, plotly_figures
from test_analysis_pages import _click, _ok

from core import service

PRE, FT, TASK = "demo:pretrained", "demo:finetuned", "demo-detgt"
pytestmark = pytest.mark.usefixtures("demo_env")


def _figure(at, title_part: str) -> tuple[int, dict]:
    figs = plotly_figures(at)
    return next((i, f) for i, f in enumerate(figs) if title_part in str(f["layout"].get("title", {}).get("text", "")))


def test_what_changed_page_draws_the_service_results_and_follows_a_click():
    at = app_test("pages/what-changed.py")
    _ok(at)
    cka = service.cka_layers(PRE, FT, TASK)
    _, heat = _figure(at, "Layer similarity")
    z = np.asarray([t for t in heat["data"] if t["type"] == "heatmap"][0]["z"], dtype=float)
    np.testing.assert_allclose(z, cka.matrix, atol=1e-12)
    _, moved = _figure(at, "How much each layer moved")
    np.testing.assert_allclose(np.asarray(moved["data"][0]["y"], dtype=float), 1 - np.diag(cka.matrix), atol=1e-12)

    layer = next(s for s in at.sidebar.selectbox if s.label == "Layer").value
    res = service.unit_change(PRE, FT, TASK, layer)
    k, scatter = _figure(at, "every unit's AuE")
    units = next(t for t in scatter["data"] if t.get("name") == "units")
    np.testing.assert_allclose(np.asarray(units["x"], dtype=float), res.table["AuE before"], atol=1e-12)
    np.testing.assert_allclose(np.asarray(units["y"], dtype=float), res.table["AuE after"], atol=1e-12)
    pick = 3
    at = _click(at, k, {"curve_number": 1, "point_index": pick, "x": float(res.table["AuE before"][pick]),
                        "y": float(res.table["AuE after"][pick]), "customdata": [pick, 0.0]})
    _ok(at)
    assert any(f"Unit #{pick} before" in str(s.value) for s in at.subheader)

    snap = service.snapshot_cka(TASK)
    _, lines = _figure(at, "When does each layer settle")
    conv1 = next(t for t in lines["data"] if t.get("name") == "conv1")
    np.testing.assert_allclose(np.asarray(conv1["y"], dtype=float), snap["conv1"].to_numpy(), atol=1e-12)
