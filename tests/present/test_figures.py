"""core.present.figures: trace data equals the inputs, labels/hover/captions/palette, serialisable."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from core.present import figures as F
from core.errors import InputError

NAMES = ["aeroplane", "bicycle", "bird", "boat", "bottle"]
LAYERS = ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"]


def _y(trace) -> np.ndarray:
    return np.asarray(trace.y, dtype=float)


def _annotation(fig: go.Figure, name: str):
    found = [a for a in fig.layout.annotations if a.name == name]
    return found[0] if found else None


def _check_common(fig: go.Figure, *, axes: bool = True) -> None:
    """Checks every figure must pass: title, axis titles, caption, style, JSON."""
    assert isinstance(fig, go.Figure)
    assert fig.layout.title.text
    if axes:
        assert fig.layout.xaxis.title.text and fig.layout.yaxis.title.text
    cap = _annotation(fig, "fs-caption")
    assert cap is not None and "Reproduces" in cap.text
    assert fig.layout.font.size >= 14
    assert fig.layout.template.layout.plot_bgcolor in ("white", "#fff", "#ffffff", "rgb(255,255,255)")
    assert fig.layout.margin.b > 0 and fig.layout.height > fig.layout.margin.b + fig.layout.margin.t
    json.loads(fig.to_json())
    named = [t for t in fig.data if getattr(t, "showlegend", False) is not False and t.name]
    if len(named) > 1:
        assert fig.layout.showlegend is not False


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def _sel_curve(rng, layer: str, variant: str, n: int = 16) -> dict:
    aue = rng.uniform(1, 3, n)
    frac = np.arange(1, n + 1) / n
    mean = np.cumsum(np.sort(aue)) / np.arange(1, n + 1)
    return {"label": f"{layer} · {variant}", "layer": layer, "variant": variant, "fraction": frac,
            "mean_aue": mean, "aue": aue}


# --------------------------------------------------------------------------- style
def test_palette_is_okabe_ito_and_layer_colours_fixed():
    assert F.PALETTE == ("#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#000000")
    assert set(F.LAYER_COLORS.values()) <= set(F.PALETTE)
    assert len(set(F.LAYER_COLORS[l] for l in LAYERS)) == 7
    assert F.layer_color("conv-5") == F.LAYER_COLORS["conv5"]


def test_apply_style_caption_stamp_presentation_idempotent(rng):
    fig = F.selectivity_figure([_sel_curve(rng, "conv5", "fine-tuned")])
    w0, f0 = fig.data[0].line.width, fig.layout.font.size
    F.apply_style(fig, title="T", caption="Reproduces Fig. 1 · demo target DET-GT test crops", stamp="model m · x")
    assert _annotation(fig, "fs-caption").text.startswith("Reproduces Fig. 1 · demo")
    stamp = _annotation(fig, "fs-stamp")
    assert stamp.text == "model m · x" and stamp.font.size < fig.layout.font.size
    # stamp below caption, caption below the x axis title (both in pixels below the plot)
    assert stamp.yshift < _annotation(fig, "fs-caption").yshift < -fig.layout.font.size
    assert fig.layout.margin.b > -stamp.yshift
    F.apply_style(fig, title=None, presentation=True)
    assert fig.layout.font.size >= 22 and fig.layout.title.text == "T"
    assert fig.data[0].line.width > w0 and _annotation(fig, "fs-stamp").text == "model m · x"
    F.apply_style(fig, title=None, presentation=True)  # no compounding
    w1 = fig.data[0].line.width
    F.apply_style(fig, title=None, presentation=False)
    assert fig.layout.font.size == f0 and fig.data[0].line.width == pytest.approx(w0)
    assert w1 == pytest.approx(w0 * F.LINE_SCALE)
    F.apply_style(fig, title=None, stamp="")
    assert _annotation(fig, "fs-stamp") is None
    assert sum(a.name == "fs-caption" for a in fig.layout.annotations) == 1


def test_long_rotated_labels_push_caption_down():
    short = F.class_histogram_figure([1, 2], ["a", "b"], threshold=0.5)
    long = F.class_histogram_figure(np.arange(12), [f"a-very-long-class-name-{i}" for i in range(12)],
                                    threshold=0.5)
    assert _annotation(long, "fs-caption").yshift < _annotation(short, "fs-caption").yshift


# --------------------------------------------------------------------------- Fig. 1
def test_selectivity_figure(rng):
    curves = [_sel_curve(rng, l, v) for l in ("conv1", "fc7") for v in ("pretrained", "fine-tuned")]
    curves.append(_sel_curve(rng, "conv5", "scratch"))
    band = {"fraction": curves[0]["fraction"], "lo": np.full(16, 3.0), "hi": np.full(16, 3.2), "label": "shuffled"}
    fig = F.selectivity_figure(curves, baseline=band)
    _check_common(fig)
    lines = [t for t in fig.data if t.line.width]
    assert len(lines) == len(curves)
    for c, t in zip(curves, lines):
        np.testing.assert_array_equal(_y(t), c["mean_aue"])
        np.testing.assert_array_equal(np.asarray(t.x), c["fraction"])
        assert t.name == c["label"] and t.line.color == F.LAYER_COLORS[c["layer"]]
        assert "filter #%{customdata[1]" in t.hovertemplate
        ids = np.asarray(t.customdata)[:, 1].astype(int)
        np.testing.assert_array_equal(ids, np.argsort(c["aue"], kind="stable"))
    assert [t.line.dash for t in lines] == ["dashdot", "solid", "dashdot", "solid", "dot"]
    fills = [t for t in fig.data if t.fill == "tonexty"]
    assert len(fills) == 1 and fills[0].name == "shuffled"
    np.testing.assert_array_equal(_y(fills[0]), band["lo"])


def test_entropy_and_histogram():
    th = np.linspace(0, 1, 11)
    fig = F.entropy_curve_figure(th, 1 - th, filter_id=7, layer="conv5", threshold=0.3)
    _check_common(fig)
    np.testing.assert_array_equal(_y(fig.data[0]), 1 - th)
    assert "filter #%{customdata" in fig.data[0].hovertemplate and set(fig.data[0].customdata) == {7}
    assert any(s.type == "line" and s.x0 == 0.3 for s in fig.layout.shapes)
    counts = np.array([3, 0, 5, 1, 2])
    h = F.class_histogram_figure(counts, NAMES, threshold=0.3, filter_id=7)
    _check_common(h)
    np.testing.assert_array_equal(_y(h.data[0]), counts)
    assert list(h.data[0].x) == NAMES and "filter #%{customdata[1]" in h.data[0].hovertemplate
    with pytest.raises(InputError):
        F.class_histogram_figure(counts, NAMES[:2], threshold=0.3)


# --------------------------------------------------------------------------- Fig. 3, Sec. 4.1
def test_pr_figure_colours_and_ap_in_legend():
    r = np.linspace(0, 1, 6)
    curves = [{"label": "filter #3", "filter": 3, "precision": 1 - r / 2, "recall": r, "ap": 0.75,
               "group": "fine-tuned"},
              {"label": "filter #9", "filter": 9, "precision": 1 - r, "recall": r, "ap": 0.5, "group": "pretrained"}]
    fig = F.pr_figure(curves, random_precision=0.1, class_name="person")
    _check_common(fig)
    ft, pre, rand = fig.data
    np.testing.assert_array_equal(_y(ft), curves[0]["precision"])
    np.testing.assert_array_equal(np.asarray(pre.x), r)
    assert ft.line.color == "#D55E00" and pre.line.color == "#0072B2"
    assert "AP 0.75" in ft.name and "AP 0.10" in rand.name
    assert rand.line.dash == "dash" and rand.line.color == "#000000" and list(rand.y) == [0.1, 0.1]
    assert "filter #%{customdata[0]" in ft.hovertemplate and np.asarray(ft.customdata)[0, 0] == 3


@pytest.mark.parametrize("sort", ["none", "by_filter_max", "by_class_max"])
def test_ap_heatmap_order(rng, sort):
    ap = rng.uniform(0, 1, (5, 9))
    fig = F.ap_heatmap_figure(ap, NAMES, sort=sort, max_filters=6)
    _check_common(fig)
    order = np.asarray(fig.layout.meta["filter_order"])
    if sort == "none":
        expected = np.arange(6)
    elif sort == "by_filter_max":
        expected = np.array(sorted(range(9), key=lambda f: -ap[:, f].max()))[:6]
    else:
        expected = np.array(sorted(range(9), key=lambda f: (ap[:, f].argmax(), -ap[:, f].max())))[:6]
    np.testing.assert_array_equal(order, expected)
    np.testing.assert_array_equal(np.asarray(fig.data[0].z), ap[:, expected])
    np.testing.assert_array_equal(np.asarray(fig.data[0].customdata)[2], expected)
    assert "filter #%{customdata}" in fig.data[0].hovertemplate and fig.data[0].colorscale
    with pytest.raises(InputError):
        F.ap_heatmap_figure(ap, NAMES, sort="bogus")


def test_leaderboard_sorted_with_full_markers():
    best, fid, full = np.array([0.2, 0.9, 0.5, 0.1, 0.7]), np.array([4, 1, 8, 2, 0]), np.full(5, 0.95)
    fig = F.leaderboard_figure(best, fid, full, NAMES)
    _check_common(fig)
    bars, marks = fig.data
    order = np.argsort(-best)
    np.testing.assert_array_equal(np.asarray(bars.x, float), best[order])
    assert list(bars.y) == [NAMES[i] for i in order] and list(bars.text) == [f"#{fid[i]}" for i in order]
    np.testing.assert_array_equal(np.asarray(bars.customdata)[:, 0], fid[order])
    assert "filter #%{customdata[0]" in bars.hovertemplate
    np.testing.assert_array_equal(np.asarray(marks.x, float), full[order])
    assert len(F.leaderboard_figure(best, fid, None, NAMES).data) == 1


# --------------------------------------------------------------------------- Fig. 4, Fig. 5
def test_filters_needed_figure(rng):
    ks = np.array([1, 2, 4, 8])
    full = np.array([0.8, 0.5, 0.6, 0.4, 0.9])
    ap = full[:, None] * np.array([0.3, 0.55, 0.8, 1.0])
    k50, k90 = np.full(5, 2), np.full(5, 8)
    ranking = np.stack([rng.permutation(8) for _ in range(5)])
    fig = F.filters_needed_figure(ks, ap, full, NAMES, k50=k50, k90=k90, classes=[1, "boat"], label="ft",
                                  compare={"ap_by_k": ap * 0.5, "full_ap": full, "label": "pre"}, ranking=ranking)
    _check_common(fig)
    assert fig.layout.xaxis.type == "log"
    main = [t for t in fig.data if t.mode == "lines" and t.line.dash == "solid"]
    comp = [t for t in fig.data if t.mode == "lines" and t.line.dash == "dash"]
    assert [t.name for t in main] == ["bicycle · ft", "boat · ft"] and len(comp) == 2
    np.testing.assert_allclose(_y(main[0]), ap[1] / full[1])
    np.testing.assert_allclose(_y(comp[1]), 0.5 * ap[3] / full[3])
    assert main[0].customdata[0] == f"#{ranking[1, 0]}" and "top filters" in main[0].hovertemplate
    marks = [t for t in fig.data if t.mode == "markers"]
    assert list(marks[0].x) == [2, 8]
    np.testing.assert_allclose(np.asarray(marks[0].y, float), [ap[1, 1] / full[1], 1.0])
    assert sorted(s.y0 for s in fig.layout.shapes) == [0.5, 0.9]
    with pytest.raises(InputError, match="unknown classes"):
        F.filters_needed_figure(ks, ap, full, NAMES, k50=k50, k90=k90, classes=["zebra"])


def test_filters_needed_models_figure_is_the_figure_of_the_results(rng):
    """The page's and the report's Fig. 4 from per-model results: the second model dashed, named by ``label``."""
    from types import SimpleNamespace

    ks, full = np.array([1, 2, 4]), np.array([0.8, 0.5, 0.6, 0.4, 0.9])

    def result(scale: float):
        ranking = SimpleNamespace(k_values=ks, ap_by_k=full[:, None] * scale * np.array([0.4, 0.7, 1.0]),
                                  full_ap=full, ranking=np.stack([rng.permutation(4) for _ in range(5)]))
        return SimpleNamespace(ranking=ranking, k50=np.full(5, 2), k90=np.full(5, 4), class_names=tuple(NAMES))

    res = {"demo:finetuned": result(1.0), "demo:pretrained": result(0.5)}
    fig = F.filters_needed_models_figure(res, "demo:finetuned", "demo:pretrained", label=str.upper, classes=[0])
    ft, pre = res["demo:finetuned"].ranking, res["demo:pretrained"].ranking
    want = F.filters_needed_figure(ks, ft.ap_by_k, full, NAMES, k50=np.full(5, 2), k90=np.full(5, 4), classes=[0],
                                   compare={"ap_by_k": pre.ap_by_k, "full_ap": full, "k_values": ks,
                                            "label": "DEMO:PRETRAINED"}, ranking=ft.ranking, label="DEMO:FINETUNED")
    assert fig.to_json() == want.to_json()
    alone = F.filters_needed_models_figure(res, "demo:finetuned", None, label=str.upper)
    assert [t.name for t in alone.data if t.mode == "lines"] == NAMES    # one set: no model in the names


def test_overlap_figure_reorders_exactly(rng):
    m = rng.uniform(0, 1, (5, 5))
    order = np.array([3, 0, 4, 1, 2])
    sets = np.array([[0, 1, 2], [2, 3, 4], [0, 5, 6], [1, 2, 7], [8, 9, 0]])
    fig = F.overlap_figure(m, NAMES, order=order, chance=0.195, k=3, sets=sets)
    _check_common(fig)
    hm = fig.data[0]
    np.testing.assert_array_equal(np.asarray(hm.z), m[order][:, order])
    assert list(hm.x) == [NAMES[i] for i in order] == list(hm.y)
    assert list(fig.layout.meta["class_order"]) == list(order)
    assert "0.195" in fig.layout.title.text and any("chance 0.195" in t for t in hm.colorbar.ticktext)
    assert "fraction of shared top-3" in hm.colorbar.title.text
    # hover lists shared filter ids: classes 3 (row 0) and 0 (column 1) share filters 1 and 2
    assert np.asarray(hm.customdata)[0, 1, 1] == "#1, #2"
    assert np.asarray(F.overlap_figure(m, NAMES, chance=0.2, k=3).data[0].z).tolist() == m.tolist()


# --------------------------------------------------------------------------- Tables 1-8
def test_sparsity_figure():
    rows = [{"layer": l, "mean": 50.0 - i, "std": 1.0 + i, "variant": v}
            for v in ("pretrained", "fine-tuned") for i, l in enumerate(LAYERS)]
    fig = F.sparsity_figure(rows)
    _check_common(fig)
    assert fig.layout.barmode == "group" and [t.name for t in fig.data] == ["pretrained", "fine-tuned"]
    np.testing.assert_array_equal(_y(fig.data[1]), [50.0 - i for i in range(7)])
    np.testing.assert_array_equal(np.asarray(fig.data[0].error_y.array), [1.0 + i for i in range(7)])
    assert {t.marker.color for t in fig.data} <= set(F.PALETTE) and "%" in fig.layout.yaxis.title.text


def test_ablation_figure_ci_and_layers():
    names = ["original", "binarize", "sp-max"]
    rows = [{"ablation": a, "layer": l, "mean": 0.5 + 0.1 * i, "std": 0.01, "ci_low": 0.45 + 0.1 * i,
             "ci_high": 0.6 + 0.1 * i} for i, a in enumerate(names) for l in ("conv1", "conv5")]
    fig = F.ablation_figure(rows)
    _check_common(fig)
    assert [t.name for t in fig.data] == names and list(fig.data[0].x) == ["conv1", "conv5"]
    np.testing.assert_allclose(_y(fig.data[1]), [60.0, 60.0])
    np.testing.assert_allclose(np.asarray(fig.data[1].error_y.array), [10.0, 10.0])
    np.testing.assert_allclose(np.asarray(fig.data[1].error_y.arrayminus), [5.0, 5.0])
    flat = F.ablation_figure([{k: v for k, v in r.items() if k != "layer"} for r in rows[::2]], scale=1.0,
                             error="std")
    assert list(flat.data[0].x) == names and flat.layout.xaxis.title.text == "feature ablation"
    np.testing.assert_allclose(_y(flat.data[0]), [0.5, 0.6, 0.7])


def test_figures_from_the_service_results(rng):
    """The Display-style constructors draw what the service returned, keyed by legend name: the same
    traces as the row-level builders fed by hand from the same numbers."""
    from core.service.analyses import SelectivityResult

    sel = {}
    for v in ("pretrained", "fine-tuned"):
        for layer in ("conv1", "fc7"):
            c = _sel_curve(rng, layer, v)
            sel[(v, layer)] = SelectivityResult(c["aue"], c["fraction"], c["mean_aue"], rng.uniform(3, 4, (3, 16)),
                                                tuple(NAMES), None)
    base = sel[("fine-tuned", "fc7")]
    fig = F.selectivity_results_figure(sel, baseline=base, baseline_layer="fc7")
    lines = [t for t in fig.data if t.line.width]
    assert [t.name for t in lines] == ["conv1 · pretrained", "fc7 · pretrained", "conv1 · fine-tuned",
                                       "fc7 · fine-tuned"]
    assert [t.line.dash for t in lines] == ["dashdot", "dashdot", "solid", "solid"]
    for t, r in zip(lines, sel.values()):
        np.testing.assert_array_equal(_y(t), r.mean_aue)
    fills = [t for t in fig.data if t.fill == "tonexty"]
    assert fills[0].name == "shuffled labels (fc7)"
    np.testing.assert_array_equal(_y(fills[0]), base.baseline_mean_aue.min(0))
    no_band = SelectivityResult(base.aue, base.fraction, base.mean_aue, np.zeros((0, 16)), tuple(NAMES), None)
    assert not [t for t in F.selectivity_results_figure(sel, baseline=no_band).data if t.fill == "tonexty"]

    r = np.linspace(0, 1, 6)
    prs = {v: [{"filter": f, "precision": 1 - r / (f + 1), "recall": r, "ap": 0.5 + f / 100} for f in (3, 9)]
           for v in ("fine-tuned", "pretrained")}
    both = F.pr_results_figure(prs, random_precision=0.1, class_name="person")
    one = F.pr_results_figure({"fine-tuned": prs["fine-tuned"]}, random_precision=0.1, class_name="person")
    lines = [t for t in both.data if "#" in (t.name or "")]
    assert len(lines) == 4 and {t.line.color for t in lines[:2]} == {"#D55E00"}  # compare: a colour per model
    assert {t.line.color for t in lines[2:]} == {"#0072B2"}
    np.testing.assert_array_equal(_y(lines[3]), prs["pretrained"][1]["precision"])
    single = [t for t in one.data if "#" in (t.name or "")]
    assert len(single) == 2 and single[0].line.color != single[1].line.color  # one model: a colour per filter

    sparsity = {v: {"table": [{"layer": l, "mean": 40.0 + i + 5 * j, "std": 1.0} for i, l in enumerate(LAYERS)]}
                for j, v in enumerate(("pretrained", "fine-tuned"))}
    sparsity["fine-tuned"]["table"][-1].update(mean=float("nan"), std=float("nan"), meaningful=False)
    sp = F.sparsity_results_figure(sparsity)
    marks = [a for a in sp.layout.annotations if a.name == "fs-not-meaningful"]
    assert [a.x for a in marks] == ["fc7"] and "not meaningful" in _annotation(sp, "fs-caption").text.lower()
    assert [t.name for t in sp.data] == ["pretrained", "fine-tuned"]
    np.testing.assert_array_equal(_y(sp.data[1])[:6], [45.0 + i for i in range(6)])

    summary = lambda off: [{"ablation": a, "mean": off + 0.1 * i, "std": 0.0, "ci_low": off, "ci_high": off + 0.2}
                           for i, a in enumerate(("original", "binarize"))]  # noqa: E731
    abl = F.ablation_results_figure({("fine-tuned", "conv5"): {"summary": summary(0.5)},
                                     ("fine-tuned", "fc7"): {"summary": summary(0.6)}})
    assert [t.name for t in abl.data] == ["original · fine-tuned", "binarize · fine-tuned"]
    assert list(abl.data[1].x) == ["conv5", "fc7"]
    np.testing.assert_allclose(_y(abl.data[1]), [60.0, 70.0])


def test_layer_map_and_snapshot_figures():
    df = pd.DataFrame({"scratch": np.arange(7.0), "fine-tuned": np.arange(7.0) + 10},
                      index=pd.Index(LAYERS, name="layer"))
    fig = F.layer_map_figure(df)
    _check_common(fig)
    assert [t.name for t in fig.data] == ["scratch", "fine-tuned"] and list(fig.data[0].x) == LAYERS
    np.testing.assert_array_equal(_y(fig.data[1]), df["fine-tuned"].to_numpy())
    snap = pd.DataFrame({"conv1": [10.0, 20, 30], "fc7": [5.0, 15, 35]}, index=[50, 200, 700])
    s = F.snapshot_figure(snap)
    _check_common(s)
    assert s.layout.xaxis.type == "log" and s.data[1].line.color == F.LAYER_COLORS["fc7"]
    np.testing.assert_array_equal(_y(s.data[1]), [5.0, 15, 35])
    snap0 = snap.set_axis([0, 200, 700])
    assert F.snapshot_figure(snap0).layout.xaxis.type == "category"


# --------------------------------------------------------------------------- Fig. 2 and images
def test_filter_grid_tile_pixels(rng):
    w = rng.normal(size=(10, 3, 5, 5))
    w[4] = 2.0  # constant filter: mid grey, no division by zero
    fig = F.filter_grid_figure(w, title="conv1", cols=4, gap=1)
    _check_common(fig, axes=False)
    z = np.asarray(fig.data[0].z)
    assert z.shape == (1 + 3 * 6, 1 + 4 * 6, 3)
    f, (r, c) = 6, (1, 2)  # filter 6 -> tile row 1, col 2
    r0, c0 = 1 + r * 6, 1 + c * 6
    expected = (w[f] - w[f].min()) / (w[f].max() - w[f].min())  # independent min-max per filter
    np.testing.assert_array_equal(z[r0:r0 + 5, c0:c0 + 5], np.rint(expected * 255).transpose(1, 2, 0))
    assert z[0, 0].tolist() == [255, 255, 255] and np.all(z[1 + 6:1 + 11, 1:6] == 128)
    assert np.asarray(fig.data[0].hovertext)[r0 + 2, c0 + 2] == "filter #6"
    assert "%{hovertext}" in fig.data[0].hovertemplate


def test_image_grid_with_heatmap_overlay(rng):
    imgs = [np.zeros((8, 8, 3), np.uint8), np.full((6, 10, 3), 200, np.uint8), np.zeros((8, 8, 3), np.uint8)]
    maps = [np.zeros((2, 2)), None, np.array([[0.0, 2.0], [0.0, 0.0]])]
    fig = F.image_grid_figure(imgs, titles=["#1 · 3.0", "#2 · 2.0", "#3 · 1.0"], heatmaps=maps, cols=2)
    _check_common(fig, axes=False)
    assert len(fig.data) == 3 and {a.text for a in fig.layout.annotations} >= {"#1 · 3.0", "#2 · 2.0"}
    np.testing.assert_array_equal(np.asarray(fig.data[0].z), imgs[0])  # zero map: image unchanged
    np.testing.assert_array_equal(np.asarray(fig.data[1].z), imgs[1])  # no map
    z = np.asarray(fig.data[2].z)
    assert z[0, 7].sum() > 0 and z[7, 0].sum() == 0  # hot top-right corner, cold bottom-left
    up = F.upsample_bilinear(np.array([[0.0, 1.0], [2.0, 3.0]]), 4, 4)
    np.testing.assert_allclose(up[0], [0, 0.25, 0.75, 1.0])
    np.testing.assert_allclose(up[:, 0], [0, 0.5, 1.5, 2.0])


# --------------------------------------------------------------------------- served figures skip validation
def _figures_both_ways(monkeypatch, rng) -> list[tuple[str, go.Figure, go.Figure]]:
    curves = [_sel_curve(rng, "conv1", "pretrained"), _sel_curve(rng, "fc7", "fine-tuned")]
    df = pd.DataFrame({"scratch": np.arange(7.0), "fine-tuned": np.arange(7.0) + 10}, index=pd.Index(LAYERS))
    img, w = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), rng.normal(size=(4, 3, 3, 3))
    rows = [{"ablation": a, "layer": "conv5", "mean": 0.5, "std": 0.01, "ci_low": 0.45, "ci_high": 0.6}
            for a in ("original", "binarize")]
    builders = {
        "selectivity": lambda: F.selectivity_figure(curves),
        "layer_map": lambda: F.layer_map_figure(df),
        "snapshot": lambda: F.snapshot_figure(pd.DataFrame({"conv1": [10.0, 20]}, index=[50, 200])),
        "ablation": lambda: F.ablation_figure(rows),
        "image_grid": lambda: F.image_grid_figure([img, img], titles=["#1 · 2.0", "#2 · 1.0"],
                                                  heatmaps=[np.ones((2, 2)), None], cols=2),
        "filter_grid": lambda: F.filter_grid_figure(w, title="conv1"),
        "probe_bars": lambda: F.probe_bars_figure([3, 1], [90.0, 40.0], [2.0, 1.0], layer="conv5"),
        "training_curves": lambda: F.training_curves_figure({"pretrain": {"iteration": [1, 4], "loss": [2.0, 1.0]}}),
    }
    out = []
    for name, build in builders.items():
        figs = []
        for flag in ("1", "0"):
            monkeypatch.setenv(F.VALIDATE_ENV, flag)
            fig = build()
            F.apply_style(fig, title=None, caption="c", stamp="s", presentation=True)
            figs.append(fig)
        out.append((name, *figs))
    return out


def test_unvalidated_figures_give_the_same_json(monkeypatch, rng):
    """Served figures skip plotly's validation (speed); their JSON must be what validation gives."""
    for name, checked, served in _figures_both_ways(monkeypatch, rng):
        assert checked._validate and not served._validate, name
        assert json.loads(checked.to_json()) == json.loads(served.to_json()), name


def test_validation_is_on_in_the_tests():
    with pytest.raises(ValueError):
        F.layer_map_figure(pd.DataFrame({"a": [1.0]}, index=["conv1"])).update_layout(not_a_property=1)


def test_training_curves_figure():
    fig = F.training_curves_figure({"pretrain": {"iteration": [1, 4, 7], "loss": [2.0, 1.5, 1.0]},
                                    "scratch": {"iteration": [1, 2], "loss": [2.5, 2.4]}})
    _check_common(fig)
    assert [t.name for t in fig.data] == ["pretrain", "scratch"]
    np.testing.assert_array_equal(np.asarray(fig.data[0].x), [1, 4, 7])
    np.testing.assert_array_equal(_y(fig.data[1]), [2.5, 2.4])


def test_filters_needed_table_is_table_5_of_the_results():
    """Table 5 as the page and the report show it: one (model, 50% | 90%) row per model, in order,
    holding that model's k50 / k90 per class."""
    from types import SimpleNamespace

    from core import service

    res = {"demo:finetuned": SimpleNamespace(k50=np.array([1, 2, 3, 4, 5]), k90=np.array([6, 7, 8, 9, 10]),
                                             class_names=tuple(NAMES)),
           "demo:snapshot-00200": SimpleNamespace(k50=np.array([5, 4, 3, 2, 1]), k90=np.array([9, 9, 9, 9, 9]),
                                                  class_names=tuple(NAMES))}
    table = service.filters_needed_table(res)
    assert list(table.columns) == NAMES and table.index.names == ["model", "perf."]
    assert list(table.index) == [("fine-tuned", "50%"), ("fine-tuned", "90%"),
                                 ("snapshot 00200", "50%"), ("snapshot 00200", "90%")]
    assert table.to_numpy().tolist() == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10], [5, 4, 3, 2, 1], [9] * 5]
