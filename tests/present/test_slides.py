"""Lab-meeting slides that show everything (#32): every row of a long table and every legend entry inside a
1920x1080 slide, colour bars beside their heatmaps, no two series of a standard figure drawn alike, and no
Deploy button in the app's toolbar. The slide checks read the rendered PNG's pixels."""
from __future__ import annotations

import io
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.present import export
from core.present import figures as F
from core.present import report

ROOT = Path(__file__).resolve().parents[2]
needs_browser = pytest.mark.skipif(export.find_browser() is None,
                                   reason="no Chromium for kaleido: make chromium / apt-get install chromium")


def _slide(fig, title: str = "t") -> np.ndarray:
    from PIL import Image

    item = report.ReportItem.from_figure(fig, key="k", stamp="stamp", caption="", title=title, paper_ref="")
    return np.asarray(Image.open(io.BytesIO(report.slide_png(item))).convert("RGB")).astype(int)


def _runs(line: np.ndarray, colour: tuple[int, int, int], tol: int = 6) -> int:
    """Runs of pixels of ``colour`` along a line of pixels ``[n, 3]``."""
    hit = (np.abs(line - np.asarray(colour)).max(1) <= tol).astype(int)
    return int(np.sum(np.diff(np.concatenate([[0], hit])) == 1))


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))


LONG = ("a finding whose wording is long enough to wrap over several lines of its column of the table, "
        "as the paper's do")


@needs_browser
def test_every_row_of_the_findings_table_is_on_its_slide():
    """Ten findings whose cells wrap to 4-6 lines, alternating verdicts: the verdict column shows ten
    coloured cells (the table used to be cut after nine rows, under a title counting ten)."""
    rows = [{"id": f"f{i}", "title": f"{LONG} ({i})", "paper": LONG, "measured": LONG,
             "holds": bool(i % 2), "why": "" if i % 2 else LONG} for i in range(10)]
    img = _slide(F.findings_figure(rows))
    column = img[:, int(img.shape[1] * 0.93)]  # a vertical line through the verdict column
    green, red = _rgb(F.FINDING_MARKS[True][1]), _rgb(F.FINDING_MARKS[False][1])
    assert (_runs(column, green), _runs(column, red)) == (5, 5)


@needs_browser
def test_a_long_legend_stays_on_the_slide():
    """Fig. 4 in compare mode with 12 classes: 24 legend entries. The last entry's line sample is drawn:
    its colour appears in the legend column at the bottom of the legend, above the caption."""
    k = np.array([1, 2, 5, 10, 20, 64])
    rng = np.random.default_rng(0)
    names = [f"class {i}" for i in range(12)]
    ap = rng.uniform(0.1, 1, (12, len(k)))
    fig = F.filters_needed_figure(k, ap, ap[:, -1], names, k50=np.full(12, 2), k90=np.full(12, 5),
                                  compare={"ap_by_k": ap * 0.9, "full_ap": ap[:, -1], "k_values": k,
                                           "label": "pretrained"}, label="fine-tuned")
    shown = [t for t in fig.data if t.showlegend is not False and t.name]
    assert len(shown) == 24
    img = _slide(fig)
    legend = img[:, int(img.shape[1] * 0.885):int(img.shape[1] * 0.905)]  # the legend's line samples
    last = _rgb(shown[-1].line.color)  # class 11 · pretrained
    rows = np.where((np.abs(legend - np.asarray(last)).max(2) <= 6).any(1))[0]
    assert len(rows) and rows.max() < img.shape[0] * 0.9  # drawn, and not in the stamp's band at the bottom
    top_entry = _rgb(shown[0].line.color)
    first = np.where((np.abs(legend - np.asarray(top_entry)).max(2) <= 6).any(1))[0]
    assert first.min() < rows.max()


@needs_browser
def test_the_colour_bar_sits_beside_its_heatmap():
    """Fig. 5 on a 16:9 slide: between the heatmap's right edge and the colour bar there is a gap of a few
    pixels, not a third of the slide (the square-cell constraint shrank the heatmap and left the bar behind)."""
    rng = np.random.default_rng(1)
    m = rng.uniform(0, 1, (12, 12))
    img = _slide(F.overlap_figure((m + m.T) / 2, [f"c{i}" for i in range(12)], chance=0.2, k=10))
    row = img[int(img.shape[0] * 0.3)]
    ink = np.where(np.abs(row - 255).max(1) > 40)[0]  # columns that are not white
    cut = np.diff(ink) > 3
    runs = list(zip(np.concatenate([[ink[0]], ink[1:][cut]]), np.concatenate([ink[:-1][cut], [ink[-1]]])))
    heat = max(range(len(runs)), key=lambda i: runs[i][1] - runs[i][0])  # the heatmap: the widest run
    assert runs[heat][1] - runs[heat][0] > img.shape[1] * 0.5  # it fills the plot's width
    gap = runs[heat + 1][0] - runs[heat][1]  # to the colour bar, the next run
    assert gap < img.shape[1] * 0.04, f"a {gap} px gap between heatmap and colour bar"


def _line_styles(fig) -> list[tuple[str, str]]:
    return [(t.line.color, t.line.dash or "solid") for t in fig.data
            if t.type == "scatter" and "lines" in (t.mode or "lines") and t.showlegend is not False and t.name]


def test_no_two_series_share_colour_and_dash():
    """Past the palette's 8 colours a series changes its dash: 12 classes in two models (Fig. 4), 12
    transformer blocks before and after fine-tuning (Fig. 1), 12 layers' snapshot curves (Table 3), 10
    models' per-layer mAP and 10 training runs."""
    rng = np.random.default_rng(2)
    k = np.array([1, 2, 5, 10])
    ap = rng.uniform(0.1, 1, (12, 4))
    figs = {"needed": F.filters_needed_figure(k, ap, ap[:, -1], [f"c{i}" for i in range(12)], k50=np.full(12, 2),
                                              k90=np.full(12, 5), compare={"ap_by_k": ap, "full_ap": ap[:, -1],
                                                                           "k_values": k, "label": "pre"},
                                              label="ft")}
    frac = np.arange(1, 9) / 8
    figs["selectivity"] = F.selectivity_figure(
        [{"label": f"blocks.{b} · {v}", "layer": f"blocks.{b}", "variant": v, "fraction": frac, "mean_aue": frac}
         for b in range(12) for v in ("pretrained", "fine-tuned")])
    layers = [f"stages.{i}" for i in range(12)]
    figs["snapshots"] = F.snapshot_figure(pd.DataFrame(rng.uniform(0, 1, (3, 12)), index=[10, 100, 1000],
                                                       columns=layers))
    figs["layer_map"] = F.layer_map_figure(pd.DataFrame(rng.uniform(0, 1, (4, 10)),
                                                        index=pd.Index(["a", "b", "c", "d"], name="layer"),
                                                        columns=[f"m{i}" for i in range(10)]))
    figs["training"] = F.training_curves_figure({f"run{i}": {"iteration": [1, 2], "loss": [1.0, 0.5]}
                                                 for i in range(10)})
    for name, fig in figs.items():
        styles = _line_styles(fig)
        assert len(styles) >= 10, name
        assert len(set(styles)) == len(styles), f"{name}: series drawn alike"


def test_the_paper_layers_keep_their_colours():
    """The second channel never touches the paper's seven layers: conv1-fc7 keep their fixed colours."""
    frac = np.arange(1, 5) / 4
    fig = F.selectivity_figure([{"label": l, "layer": l, "variant": "fine-tuned", "fraction": frac,
                                 "mean_aue": frac} for l in F.LAYER_COLORS])
    assert [t.line.color for t in fig.data] == list(F.LAYER_COLORS.values())
    assert {t.line.dash for t in fig.data} == {"solid"}


def test_the_toolbar_has_no_deploy_button():
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["client"]["toolbarMode"] == "viewer"  # "minimal" also hides the running indicator
