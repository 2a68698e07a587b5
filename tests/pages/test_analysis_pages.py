"""AppTest of the analysis pages: Fig. 1 (selectivity), Fig. 3 (precision-recall), Fig. 4 / Table 5
(filters needed) and Fig. 5 (overlap), on the tiny demo.

Each page must render without an exception, draw the expected charts, plot exactly what
core.service returns, and react to its widgets (including chart clicks, simulated by
sending the selection state Streamlit's frontend would send).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import app_test, plotly_figures

MODEL, PRE, TASK = "demo:finetuned", "demo:pretrained", "demo-detgt"

pytestmark = pytest.mark.usefixtures("demo_env")


# --------------------------------------------------------------------------- helpers
def _ok(at) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _by_name(fig: dict) -> dict[str, dict]:
    return {t.get("name"): t for t in fig["data"] if t.get("name")}


def _sidebar_select(at, label: str):
    return next(s for s in at.sidebar.selectbox if s.label == label)


def _main(at, kind: str, label: str):
    """The main-area widget of that kind and label (keys of option-dependent widgets carry a hash)."""
    return next(w for w in getattr(at.main, kind) if w.label == label)


def _click(at, chart: int, point: dict):
    """Rerun as if the user clicked ``point`` on the ``chart``-th plotly chart (on_select="rerun")."""
    ws = at._tree.get_widget_states()  # the widgets' values, as AppTest.run() sends them
    w = ws.widgets.add()
    w.id = at.get("plotly_chart")[chart].proto.id
    w.string_value = json.dumps({"selection": {"points": [point], "point_indices": [point.get("point_index", 0)],
                                               "box": [], "lasso": []}})
    return at._run(ws)


def _texts(at) -> str:
    return " ".join(str(m.value) for m in list(at.markdown) + list(at.header) + list(at.subheader)
                    + list(at.caption))


# --------------------------------------------------------------------------- Fig. 1
def test_selectivity_page_plots_the_service_results():
    from core import service

    at = app_test("pages/selectivity.py")
    _ok(at)
    figs = plotly_figures(at)
    assert len(figs) == 4  # Fig. 1, entropy curve, class histogram, top-activating items
    fig1, entropy, hist, grid = figs
    traces = _by_name(fig1)
    for layer in service.layers_of(MODEL):
        res = service.selectivity(MODEL, TASK, layer)
        t = traces[f"{layer} · fine-tuned"]
        np.testing.assert_allclose(t["y"], res.mean_aue)
        np.testing.assert_allclose(t["x"], res.fraction)
    base = service.selectivity(MODEL, TASK, "conv5").baseline_mean_aue  # the sidebar layer: conv5 by default
    np.testing.assert_allclose(traces["shuffled labels (conv5)"]["y"], base.min(0))
    np.testing.assert_allclose(fig1["data"][0]["y"], base.max(0))

    res = service.selectivity(MODEL, TASK, "conv5")
    order = np.argsort(res.aue, kind="stable")
    table = at.dataframe[0].value
    np.testing.assert_array_equal(table["filter"], order[:10])
    ec = service.entropy_curve(MODEL, TASK, "conv5", int(order[0]))
    np.testing.assert_allclose(entropy["data"][0]["y"], ec["entropy"])
    np.testing.assert_allclose(hist["data"][0]["y"], ec["histograms"][len(ec["thresholds"]) // 2])
    top = service.top_activations(MODEL, TASK, "conv5", int(order[0]), n=8)
    assert [t["type"] for t in grid["data"]] == ["image"] * 8
    assert f"#{order[0]}" in grid["layout"]["title"]["text"] and len(top["indices"]) == 8


def test_selectivity_widgets_and_clicks_change_the_view():
    from core import service

    at = app_test("pages/selectivity.py")
    res = service.selectivity(MODEL, TASK, "conv5")
    order = np.argsort(res.aue, kind="stable")
    f = int(order[5])
    at.selectbox(key=f"selv_filter_{MODEL}_conv5").set_value(f).run()
    _ok(at)
    ec = service.entropy_curve(MODEL, TASK, "conv5", f)
    hists = []
    for step in (10, 70):
        at.slider(key="selv_thr").set_value(step).run()
        hist = plotly_figures(at)[2]
        assert f"#{f}" in hist["layout"]["title"]["text"]
        np.testing.assert_allclose(hist["data"][0]["y"], ec["histograms"][step])
        hists.append(np.asarray(hist["data"][0]["y"]))
    assert hists[0].sum() > hists[1].sum()  # a higher threshold keeps fewer responses

    at.slider(key="selv_n").set_value(4).run()
    assert len(plotly_figures(at)[3]["data"]) == 4
    _main(at, "multiselect", "Layers").set_value(["conv1", "fc7"]).run()
    _ok(at)
    names = set(_by_name(plotly_figures(at)[0]))
    assert {"conv1 · fine-tuned", "fc7 · fine-tuned"} <= names and "conv5 · fine-tuned" not in names

    # a click on the 4th point of the fc7 curve inspects the 4th most selective fc7 filter
    fc7 = service.selectivity(MODEL, TASK, "fc7")
    fid = int(np.argsort(fc7.aue, kind="stable")[3])
    fig1 = plotly_figures(at)[0]
    curve = next(i for i, t in enumerate(fig1["data"]) if t.get("name") == "fc7 · fine-tuned")
    _click(at, 0, {"curve_number": curve, "point_number": 3, "point_index": 3, "x": float(fc7.fraction[3]),
                   "y": float(fc7.mean_aue[3]), "customdata": [4, fid, float(fc7.aue[fid])]})
    _ok(at)
    assert _sidebar_select(at, "Layer").value == "fc7"
    assert at.selectbox(key=f"selv_filter_{MODEL}_fc7").value == fid
    assert f"fc7 filter #{fid}" in plotly_figures(at)[1]["layout"]["title"]["text"]
    # the page keeps its figures between reruns (ui.common.memo_figure): presentation mode rebuilds them
    assert {f["layout"]["font"]["size"] for f in plotly_figures(at)} == {16}
    at.session_state["presentation"] = True
    at.run()
    _ok(at)
    assert {f["layout"]["font"]["size"] for f in plotly_figures(at)} == {22}


def test_selectivity_compare_mode_overlays_the_pretrained_net():
    from core import service

    at = app_test("pages/selectivity.py")
    at.toggle(key="w_compare_on").set_value(True).run()
    _ok(at)
    traces = _by_name(plotly_figures(at)[0])
    for layer in ("conv1", "fc7"):
        pre = traces[f"{layer} · pretrained"]
        np.testing.assert_allclose(pre["y"], service.selectivity(PRE, TASK, layer).mean_aue)
        assert pre["line"]["dash"] == "dashdot" and traces[f"{layer} · fine-tuned"]["line"]["dash"] == "solid"


# --------------------------------------------------------------------------- Fig. 3
def test_precision_recall_page():
    from core import analysis, service

    at = app_test("pages/precision-recall.py")
    _ok(at)
    assert _sidebar_select(at, "Layer").value == "conv5"  # Sec. 4's layer by default
    figs = plotly_figures(at)
    assert len(figs) == 3  # PR curves, leaderboard, AP heatmap
    ap = service.filter_ap(MODEL, TASK, "conv5")
    full = service.filters_needed(MODEL, TASK, "conv5").ranking.full_ap

    def check_pr(fig, c):
        curves = service.pr_curves(MODEL, TASK, "conv5", c, ap.top_filters(c, 5))
        lines = [t for t in fig["data"] if not t["name"].startswith("random")]
        assert [t["name"] for t in lines] == [f"#{p['filter']} (AP {p['ap']:.2f})" for p in curves]
        for t, p in zip(lines, curves):
            np.testing.assert_allclose(t["x"], p["recall"])
            np.testing.assert_allclose(t["y"], p["precision"])
        rnd = next(t for t in fig["data"] if t["name"].startswith("random"))
        np.testing.assert_allclose(rnd["y"], [ap.prevalence[c]] * 2)
        return [t["name"] for t in lines]

    first = check_pr(figs[0], 0)
    bars, diamonds = figs[1]["data"]
    order = np.argsort(-ap.ap.max(1), kind="stable")
    np.testing.assert_allclose(bars["x"], ap.ap.max(1)[order])
    np.testing.assert_allclose(diamonds["x"], full[order])

    _sidebar_select(at, "Class").set_value("3").run()  # another class: other curves
    _ok(at)
    assert check_pr(plotly_figures(at)[0], 3) != first

    for ratio in (0.5, 0.9):
        at.slider(key="pr_gmc_ratio").set_value(ratio).run()
        expected = analysis.grandmother_cells(ap.ap, full, ratio=ratio)
        shown = len(at.dataframe[0].value) if len(at.dataframe) else 0
        assert shown == len(expected)

    orders = []
    for sort in ("by_filter_max", "none"):
        at.selectbox(key="pr_heat_sort").set_value(sort).run()
        orders.append(plotly_figures(at)[2]["layout"]["meta"]["filter_order"])
    assert orders[1] == list(range(ap.ap.shape[1])) and orders[0] != orders[1]


# --------------------------------------------------------------------------- Fig. 4 / Table 5
def test_filters_needed_page():
    from core import service

    at = app_test("pages/filters-needed.py")
    _ok(at)
    figs = plotly_figures(at)
    assert len(figs) == 1
    res = service.filters_needed(MODEL, TASK, "conv5")
    r = res.ranking
    lines = [t for t in figs[0]["data"] if t.get("mode") == "lines"]
    assert [t["name"] for t in lines] == list(res.class_names)
    for c, t in enumerate(lines):
        np.testing.assert_allclose(t["y"], r.ap_by_k[c] / r.full_ap[c])
    table = at.dataframe[0].value
    np.testing.assert_array_equal(table.loc[("fine-tuned", "50%")].to_numpy(), res.k50)
    np.testing.assert_array_equal(table.loc[("fine-tuned", "90%")].to_numpy(), res.k90)
    np.testing.assert_allclose(at.dataframe[1].value.loc["fine-tuned"].to_numpy(), r.full_ap.round(3))

    _main(at, "multiselect", "Classes").set_value(list(res.class_names[:2])).run()
    assert len([t for t in plotly_figures(at)[0]["data"] if t.get("mode") == "lines"]) == 2
    at.toggle(key="w_compare_on").set_value(True).run()
    _ok(at)
    lines = [t for t in plotly_figures(at)[0]["data"] if t.get("mode") == "lines"]
    assert [t["line"]["dash"] for t in lines] == ["solid"] * 2 + ["dash"] * 2
    pre = service.filters_needed(PRE, TASK, "conv5")
    np.testing.assert_allclose(lines[2]["y"], pre.ranking.ap_by_k[0] / pre.ranking.full_ap[0])
    assert len(at.dataframe[0].value) == 4  # (model, 50% / 90%) rows

    # another task brings its own classes, all drawn again (no stale choice from the last task)
    _sidebar_select(at, "Task / data").set_value("demo-scene").run()
    _ok(at)
    scene = service.filters_needed(MODEL, "demo-scene", "conv5").class_names
    lines = [t for t in plotly_figures(at)[0]["data"] if t.get("mode") == "lines"]
    assert [t["name"] for t in lines[:len(scene)]] == [f"{c} · fine-tuned" for c in scene]


# --------------------------------------------------------------------------- Fig. 5
def test_overlap_page():
    from core import service

    at = app_test("pages/overlap.py")
    _ok(at)
    figs = plotly_figures(at)
    assert len(figs) == 1
    k0 = at.slider(key="ov_k").value
    width = service.filters_needed(MODEL, TASK, "conv5").ranking.ranking.shape[1]
    assert at.slider(key="ov_k").max == width

    def matrix_of(fig, k):
        ov = service.overlap(MODEL, TASK, "conv5", k)
        heat = next(t for t in fig["data"] if t["type"] == "heatmap")
        np.testing.assert_allclose(heat["z"], ov.matrix[np.ix_(ov.order, ov.order)])
        assert f"chance {ov.chance:.3f}" in fig["layout"]["title"]["text"]
        return np.asarray(heat["z"])

    z0 = matrix_of(figs[0], k0)
    at.slider(key="ov_k").set_value(k0 + 10).run()
    _ok(at)
    z1 = matrix_of(plotly_figures(at)[0], k0 + 10)
    assert not np.allclose(z0, z1)

    def shared_rows(i, j, k):
        return list(service.shared_filters(MODEL, TASK, "conv5", i, j, k))

    names = list(service.overlap(MODEL, TASK, "conv5", k0 + 10).class_names)
    _main(at, "selectbox", "Class i").set_value(0).run()
    _main(at, "selectbox", "Class j").set_value(1).run()
    assert sorted(at.dataframe[0].value["filter"]) == shared_rows(0, 1, k0 + 10)

    # a click on cell (row = class 2, column = class 5) lists the filters those two share
    _click(at, 0, {"curve_number": 1, "point_number": 0, "point_index": 0, "x": names[5], "y": names[2]})
    _ok(at)
    assert (_main(at, "selectbox", "Class i").value, _main(at, "selectbox", "Class j").value) == (2, 5)
    expected = shared_rows(2, 5, k0 + 10)
    assert sorted(at.dataframe[0].value["filter"]) == expected if expected else not len(at.dataframe)
    assert f"{len(expected)} of {k0 + 10}" in _texts(at)
