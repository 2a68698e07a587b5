"""Plotly figures for every view of Agrawal, Girshick & Malik (ECCV 2014).

Pure functions: plain arrays / lists / DataFrames in, a ``plotly.graph_objects.Figure``
out. No streamlit, no file IO; pages unpack the service results and call these.

Conventions
-----------
- Every ``*_figure`` function returns a figure already passed through
  :func:`apply_style` with a default title and a caption naming the paper figure or
  table it reproduces. Pages call :func:`apply_style` again to add the data-specific
  caption, the provenance stamp and presentation mode; it is idempotent.
- ``fig.layout.meta`` is a dict: ``reproduces`` (e.g. ``"Fig. 1"``), ``presentation``,
  ``caption``, ``stamp``, ``base_height``; :func:`ap_heatmap_figure` adds
  ``filter_order``, :func:`leaderboard_figure` and :func:`overlap_figure` add
  ``class_order``.
- Hover carries ids through ``customdata`` + ``hovertemplate`` (filter ids as
  ``filter #<id>``); colours are Okabe-Ito (:data:`PALETTE`), heatmaps Viridis/Cividis.
- APs are fractions in [0, 1]; mAP and sparsity are percent, as the paper's tables.
"""
from __future__ import annotations

import math
import textwrap
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import plotly.colors
import plotly.graph_objects as go

from core import config
from core.errors import InputError

# --------------------------------------------------------------------------- style
#: Okabe-Ito colour-blind-safe palette, in its canonical order.
PALETTE: tuple[str, ...] = ("#E69F00", "#56B4E9", "#009E73", "#F0E442",
                            "#0072B2", "#D55E00", "#CC79A7", "#000000")
ORANGE, SKY, GREEN, YELLOW, BLUE, VERMILLION, PURPLE, BLACK = PALETTE
#: Trace colour order: strong colours first, yellow (faint on white/projectors) last.
COLORWAY: tuple[str, ...] = (BLUE, VERMILLION, GREEN, PURPLE, ORANGE, SKY, BLACK, YELLOW)
#: One fixed colour per paper layer, used by every per-layer figure.
LAYER_COLORS: dict[str, str] = {"conv1": ORANGE, "conv2": SKY, "conv3": GREEN, "conv4": PURPLE,
                                "conv5": BLUE, "fc6": VERMILLION, "fc7": BLACK}
#: Line dash per training regime (Fig. 1: dash-dot before, solid after fine-tuning).
VARIANT_DASH: dict[str, str] = {"pretrained": "dashdot", "fine-tuned": "solid"}
GROUP_COLORS: dict[str, str] = {"fine-tuned": VERMILLION, "pretrained": BLUE, "random": BLACK}
SEQUENTIAL, SEQUENTIAL_ALT = "Viridis", "Cividis"
GREY = "#888888"
TABLE_HEADER_PX = 40
FONT_FAMILY = "Arial, Helvetica, sans-serif"
FONT_SIZE = {False: 16, True: 22}
LINE_SCALE = 1.8  # presentation multiplies line widths and marker sizes by this
PAPER = "Agrawal, Girshick & Malik, ECCV 2014"
_MARKERS = ("circle", "square", "diamond", "triangle-up", "x", "cross", "star", "triangle-down")


#: Past the palette's 8 colours a series keeps cycling the colours and takes another dash, so no two
#: series share both colour and dash: cycle c >= 1 of base dash ``d`` draws ``_ALT_DASH[d][c - 1]``
#: (unique across bases; plotly's named dashes, then dash-length lists).
_ALT_DASH: dict[str, tuple[str, ...]] = {
    "solid": ("longdash", "8px,3px,2px,3px,2px,3px", "20px,4px"),
    "dash": ("longdashdot", "12px,4px,4px,4px", "16px,6px,2px,6px"),
    "dashdot": ("6px,2px,1px,2px,1px,2px", "14px,3px,3px,3px,3px,3px", "18px,3px,1px,3px"),
    "dot": ("3px,6px", "1px,4px,8px,4px", "2px,2px,10px,2px"),
}


def series_dash(base: str, index: int) -> str:
    """The dash of the ``index``-th series of one group drawn with ``base`` (solid, dash, dashdot, dot):
    ``base`` for the first 8 (the palette's length), another dash for each further cycle of colours."""
    cycle = index // len(COLORWAY)
    if cycle == 0:
        return base
    alts = _ALT_DASH.get(base, _ALT_DASH["dot"])
    return alts[(cycle - 1) % len(alts)]


def _paper_layer(layer: str) -> str | None:
    key = str(layer).lower().replace("-", "").replace("_", "")
    return key if key in LAYER_COLORS else None


def layer_color(layer: str, index: int = 0) -> str:
    """The fixed colour of a layer (``conv1``..``fc7``, also ``conv-5``); others cycle by ``index``."""
    key = _paper_layer(layer)
    return LAYER_COLORS[key] if key else COLORWAY[index % len(COLORWAY)]


def _meta(fig: go.Figure) -> dict:
    meta = fig.layout.meta
    return dict(meta) if isinstance(meta, dict) else {}


#: Set to "1" to validate every property set on a figure (the test suite does, so a wrong
#: property name fails there). Served figures skip plotly's validation: it is ~40% of the
#: time to build and style one (most of a warm page), and the figure JSON is the same
#: (``tests/present/test_figures.py`` compares both ways).
VALIDATE_ENV = "FILTERSCOPE_VALIDATE_FIGURES"


def _new_figure(reproduces: str, base_height: int = 480, **meta: Any) -> go.Figure:
    fig = go.Figure(_validate=config.validate_figures())
    fig.layout.meta = {"reproduces": reproduces, "base_height": base_height, "presentation": False, **meta}
    return fig


def _scale_lines(fig: go.Figure, factor: float) -> None:
    """Multiply line widths, marker sizes and error-bar thickness (presentation mode)."""
    for tr in fig.data:
        if tr.type == "scatter":
            w = 2.0 if tr.line.width is None else tr.line.width
            tr.line.width = w * factor
            if tr.marker.size is not None and np.isscalar(tr.marker.size):
                tr.marker.size = tr.marker.size * factor
        if tr.type in ("bar", "scatter") and tr.error_y.array is not None:
            tr.error_y.thickness = (tr.error_y.thickness or 2.0) * factor


def _wrap(text: str, width: int) -> list[str]:
    return [line for part in text.split("\n") for line in (textwrap.wrap(part, width) or [""])]


def _xtick_px(fig: go.Figure, size: int) -> float:
    """Estimated height of the bottom x tick labels (rotated category names are tall)."""
    angle = fig.layout.xaxis.tickangle
    if fig.layout.xaxis.visible is False or fig.layout.xaxis.side == "top":
        return 0.0
    if angle in (None, "auto", 0):
        return 1.5 * size
    labels = [str(v) for tr in fig.data if tr.x is not None and tr.type in ("bar", "heatmap", "scatter")
              for v in tr.x if isinstance(v, str)] + list(fig.layout.xaxis.ticktext or ())
    longest = max((len(s) for s in labels), default=4)
    return 0.5 * (size - 2) * longest * abs(math.sin(math.radians(float(angle)))) + 1.5 * size


def _footer(fig: go.Figure, caption: str, stamp: str, size: int) -> int:
    """Place caption and stamp below the axis titles; return the bottom margin needed."""
    ours = ("fs-caption", "fs-stamp")
    parts = [(name, text, fsize, color) for name, text, fsize, color in
             (("fs-caption", caption, size - 2, "#333333"), ("fs-stamp", stamp, max(11, size - 6), GREY)) if text]
    current = fig.layout.annotations
    tail = current[len(current) - len(parts):] if parts else ()
    # Restyling (the page's second call): update the caption and stamp in place when they are
    # the last annotations, as re-adding them would leave them; re-validating every annotation
    # of a grid of subplots is slow.
    in_place = (bool(parts) and [a.name for a in tail] == [p[0] for p in parts]
                and sum(a.name in ours for a in current) == len(parts))
    if not in_place:
        fig.layout.annotations = [a for a in current if a.name not in ours]
    has_title = bool(fig.layout.xaxis.title.text) and fig.layout.xaxis.visible is not False
    y = _xtick_px(fig, size) + (1.8 * size if has_title else 0) + 12
    for i, (name, text, fsize, color) in enumerate(parts):
        lines = _wrap(text, int(680 / (0.47 * fsize)))  # fits a ~750 px wide figure
        if in_place:
            tail[i].update(text="<br>".join(lines), yshift=-y, font=dict(size=fsize, color=color))
        else:
            fig.add_annotation(name=name, text="<br>".join(lines), xref="paper", yref="paper", x=0, y=0,
                               xanchor="left", yanchor="top", yshift=-y, align="left", showarrow=False,
                               font=dict(size=fsize, color=color))
        y += 1.3 * fsize * len(lines) + 6
    return int(y + 8)


def _house_template(size: int, grid: bool) -> str:
    """Name of the registered template ``simple_white`` + the house colours, title, hover,
    legend and axis styles at base font ``size`` (registered on first use).

    In the template rather than set on each figure: every ``update_layout`` /
    ``update_xaxes`` call costs milliseconds even unvalidated, and these were most of
    styling a figure (22 ms -> ~5 ms). Template axis styles apply to every subplot's axes,
    its annotation font to every annotation without a font size of its own.
    """
    import plotly.io as pio

    name = f"filterscope-{size}{'' if grid else '-nogrid'}"
    if name not in pio.templates:
        t = go.layout.Template(pio.templates["simple_white"])
        axis = dict(title=dict(font=dict(size=size)), tickfont=dict(size=size - 2),
                    **(dict(showgrid=True, gridcolor="#E6E6E6") if grid else {}))
        t.layout.update(colorway=list(COLORWAY), title=dict(x=0.01, xanchor="left", font=dict(size=round(size * 1.25))),
                        hoverlabel=dict(font=dict(size=size - 2)), legend=dict(font=dict(size=size - 2)),
                        annotationdefaults=dict(font=dict(size=size - 2)),  # tile titles, guide labels
                        xaxis=axis, yaxis=axis)
        pio.templates[name] = t
    return name


def _set_template(fig: go.Figure, name: str) -> None:
    """``fig.update_layout(template=name)`` without re-validating a registered template, as
    plotly does itself for its default template (plotly 7.1: validation costs ~25 ms per
    figure, most of a warm page's time; the figure JSON is the same)."""
    import plotly.io as pio

    layout = fig.layout
    saved, layout._validate = layout._validate, False
    try:
        layout.template = pio.templates[name]
    finally:
        layout._validate = saved


def apply_style(fig: go.Figure, *, title: str | None, caption: str | None = None, stamp: str | None = None,
                presentation: bool = False) -> go.Figure:
    """Give ``fig`` the house style, caption and provenance stamp (in place; returns it).

    Parameters
    ----------
    fig : Figure, from any ``*_figure`` function (or any figure).
    title : the figure title; ``None`` keeps the current one.
    caption : what it reproduces and on what data, e.g. ``"Reproduces Fig. 1 · demo
        target DET-GT test crops"``, shown below the plot; ``None`` keeps the current
        caption, ``""`` removes it.
    stamp : provenance line (``Provenance.stamp()``), small grey text at the bottom;
        ``None`` keeps, ``""`` removes.
    presentation : projector mode: base font 22 (else 16), lines and markers x1.8.

    Notes
    -----
    Idempotent: calling it again (e.g. to toggle ``presentation``) does not compound
    sizes. The bottom margin grows to fit tick labels, axis title, caption and stamp.
    """
    meta = _meta(fig)
    if bool(meta.get("presentation", False)) != presentation:
        _scale_lines(fig, LINE_SCALE if presentation else 1 / LINE_SCALE)
    meta["presentation"] = presentation
    meta["caption"] = meta.get("caption", "") if caption is None else caption
    meta["stamp"] = meta.get("stamp", "") if stamp is None else stamp
    size = FONT_SIZE[presentation]
    # Colours, title, hover, legend and axis styles come with the template (one per size):
    # styling again at the same size (the page's second call) leaves it as it is.
    styled = [size, bool(meta.get("grid", True))]
    if meta.get("styled") != styled:
        _set_template(fig, _house_template(size, styled[1]))
        meta["styled"] = styled
    title_text = fig.layout.title.text if title is None else title
    bottom = _footer(fig, meta["caption"], meta["stamp"], size)
    lines = 1 + (title_text or "").count("<br>")
    top = int(2.6 * size * lines)
    plot_h = max(int(meta.get("base_height", 480) * (1.2 if presentation else 1.0)), legend_height(fig, size))
    fig.update_layout(font=dict(family=FONT_FAMILY, size=size, color="#222222"), title_text=title_text,
                      margin=dict(t=top, b=bottom, l=int(4.5 * size), r=int(1.5 * size)),
                      height=plot_h + top + bottom)
    fig.layout.meta = meta
    return fig


def legend_height(fig: go.Figure, size: int) -> int:
    """Pixels the figure's vertical legend needs at font ``size``: about 1.5 lines per entry and half a line
    between legend groups (measured on plotly's static export). The plot area is made at least this tall,
    so a long legend (24 series of Fig. 4 in compare mode) is never cut off at the slide's bottom edge."""
    if fig.layout.showlegend is False or (fig.layout.legend.orientation or "v") == "h":
        return 0
    shown = [t for t in fig.data if t.type not in ("table", "heatmap", "image") and t.showlegend is not False
             and t.name]
    if len(shown) < 2 and fig.layout.showlegend is not True:
        return 0
    groups = len({t.legendgroup for t in shown if t.legendgroup})
    return int(size * (1.5 * len(shown) + 0.5 * groups + 1))


def _caption(reproduces: str, what: str) -> str:
    return f"Reproduces {reproduces} of {PAPER}. {what}"


def _arr(x: Any, name: str, ndim: int | None = None) -> np.ndarray:
    a = np.asarray(x)
    if ndim is not None and a.ndim != ndim:
        raise InputError(f"{name} must be {ndim}-D, got shape {a.shape}")
    return a


# --------------------------------------------------------------------------- Fig. 1
def selectivity_figure(curves: Sequence[dict], *, baseline: dict | None = None) -> go.Figure:
    """Class selectivity vs. fraction of filters. Reproduces Fig. 1.

    Parameters
    ----------
    curves : one dict per (layer, variant): ``label``, ``layer``, ``variant``
        (``"pretrained"`` dash-dot, ``"fine-tuned"`` solid, others dotted),
        ``fraction`` ``[F]`` and ``mean_aue`` ``[F]`` (bits). Optional ``aue`` ``[F]``
        (per-filter AuE) or ``filter_ids`` ``[F]`` (most selective first) put the id
        of the k-th most selective filter in the hover.
    baseline : optional shuffled-label band ``fraction``, ``lo``, ``hi``, ``label``.
    """
    fig = _new_figure("Fig. 1")
    if baseline is not None:
        fig.add_traces(_band(baseline))
    layer_index = {l: i for i, l in enumerate(dict.fromkeys(c.get("layer", "") for c in curves))}
    for i, c in enumerate(curves):
        layer = c.get("layer", "")
        li = layer_index[layer]  # paper layers have their own colours; others cycle colours, then dashes
        dash = series_dash(VARIANT_DASH.get(c.get("variant", ""), "dot"), 0 if _paper_layer(layer) else li)
        y = _arr(c["mean_aue"], "mean_aue", 1)
        x = _arr(c["fraction"], "fraction", 1)
        ids, aue = _selectivity_ids(c, len(y))
        custom = np.column_stack([np.arange(1, len(y) + 1), ids, aue])
        hover = "%{fullData.name}<br>fraction %{x:.3f} (k = %{customdata[0]:d} filters)<br>" \
                "mean AuE %{y:.3f} bits"
        if c.get("aue") is not None or c.get("filter_ids") is not None:
            hover += "<br>k-th most selective: filter #%{customdata[1]:d} (AuE %{customdata[2]:.3f} bits)"
        fig.add_scatter(x=x, y=y, mode="lines", name=c.get("label", f"curve {i}"), customdata=custom,
                        hovertemplate=hover + "<extra></extra>", legendgroup=c.get("layer"),
                        line=dict(color=layer_color(layer, li), width=2.5, dash=dash))
    fig.update_xaxes(title_text="fraction of filters, most selective first (k / F)", range=[0, 1])
    fig.update_yaxes(title_text="mean AuE of the k most selective filters (bits)")
    return apply_style(fig, title="Class selectivity by layer (lower = more selective)",
                       caption=_caption("Fig. 1", "Dash-dot: pretrained; solid: fine-tuned; grey band: "
                                                  "shuffled labels."))


def _selectivity_ids(c: dict, n: int) -> tuple[np.ndarray, np.ndarray]:
    if c.get("filter_ids") is not None:
        ids = _arr(c["filter_ids"], "filter_ids", 1)
        aue = _arr(c["aue"], "aue", 1)[ids] if c.get("aue") is not None else np.full(n, np.nan)
        return ids, aue
    if c.get("aue") is not None:
        aue = _arr(c["aue"], "aue", 1)
        ids = np.argsort(aue, kind="stable")
        return ids, aue[ids]
    return np.full(n, -1), np.full(n, np.nan)


def _band(b: dict) -> list[go.Scatter]:
    x = _arr(b["fraction"], "baseline fraction", 1)
    hi = go.Scatter(x=x, y=_arr(b["hi"], "baseline hi", 1), mode="lines", line=dict(width=0, color=GREY),
                    showlegend=False, hoverinfo="skip", legendgroup="baseline")
    lo = go.Scatter(x=x, y=_arr(b["lo"], "baseline lo", 1), mode="lines", line=dict(width=0, color=GREY),
                    fill="tonexty", fillcolor="rgba(136,136,136,0.3)", legendgroup="baseline",
                    name=b.get("label", "shuffled labels"),
                    hovertemplate="shuffled labels<br>fraction %{x:.3f}<br>lower %{y:.3f} bits<extra></extra>")
    return [hi, lo]


def entropy_curve_figure(thresholds: Any, entropy: Any, *, filter_id: int, layer: str,
                         threshold: float | None = None) -> go.Figure:
    """Label entropy of the samples above a threshold; its area is the AuE.

    Reproduces the per-filter entropy curve behind Fig. 1 (Sec. 3.1 / Appendix).
    """
    x, y = _arr(thresholds, "thresholds", 1), _arr(entropy, "entropy", 1)
    if x.shape != y.shape:
        raise InputError(f"thresholds {x.shape} and entropy {y.shape} must match")
    fig = _new_figure("Fig. 1 (Appendix)", base_height=400)
    fig.add_scatter(x=x, y=y, mode="lines", name=f"{layer} filter #{filter_id}", fill="tozeroy",
                    fillcolor="rgba(0,114,178,0.15)", line=dict(color=BLUE, width=2.5),
                    customdata=np.full(len(x), int(filter_id)),
                    hovertemplate="filter #%{customdata:d}<br>threshold %{x:.3g}<br>"
                                  "entropy %{y:.3f} bits<extra></extra>")
    if threshold is not None:
        fig.add_vline(x=float(threshold), line=dict(color=VERMILLION, width=2, dash="dash"),
                      annotation_text=f"threshold {threshold:.3g}", annotation_position="top right")
    fig.update_xaxes(title_text="activation threshold (filter response units)")
    fig.update_yaxes(title_text="class-label entropy of samples ≥ threshold (bits)", rangemode="tozero")
    return apply_style(fig, title=f"Entropy curve · {layer} filter #{filter_id}",
                       caption=_caption("the entropy curve of Fig. 1 (Appendix)",
                                        "Shaded area = AuE; the dashed line marks the chosen threshold."))


def class_histogram_figure(counts: Any, class_names: Sequence[str], *, threshold: float,
                           filter_id: int | None = None) -> go.Figure:
    """Class counts of the samples whose response is ``>= threshold`` (one filter).

    Reproduces the class distributions whose entropy gives Fig. 1's curves.
    """
    y = _arr(counts, "counts", 1)
    names = [str(n) for n in class_names]
    if len(names) != len(y):
        raise InputError(f"{len(y)} counts but {len(names)} class names")
    fid = -1 if filter_id is None else int(filter_id)
    fig = _new_figure("Fig. 1 (Appendix)", base_height=400)
    fig.add_bar(x=names, y=y, marker_color=BLUE, name="samples ≥ threshold",
                customdata=np.column_stack([np.arange(len(y)), np.full(len(y), fid)]),
                hovertemplate="class %{x} (#%{customdata[0]:d})<br>filter #%{customdata[1]:d}<br>"
                              "%{y:d} samples ≥ threshold<extra></extra>")
    fig.update_xaxes(title_text="class", tickangle=-45 if max(map(len, names), default=0) * len(names) > 80 else 0)
    fig.update_yaxes(title_text=f"samples with response ≥ {threshold:.3g} (count)")
    who = f"filter #{filter_id}" if filter_id is not None else "one filter"
    return apply_style(fig, title=f"Classes above threshold {threshold:.3g} · {who}",
                       caption=_caption("Fig. 1 (Appendix)", "Class histogram whose entropy is plotted."))


# --------------------------------------------------------------------------- Fig. 3 and Sec. 4.1
def pr_figure(curves: Sequence[dict], *, random_precision: float, class_name: str) -> go.Figure:
    """Precision-recall curves of single filters for one class. Reproduces Fig. 3.

    Parameters
    ----------
    curves : dicts with ``label``, ``precision``, ``recall``, ``ap`` and ``group``
        (``"fine-tuned"`` vermillion, ``"pretrained"`` blue, others cycled); optional
        ``filter`` (id, shown on hover).
    random_precision : precision of a random filter (the class prevalence), dashed black.
    """
    fig = _new_figure("Fig. 3")
    for i, c in enumerate(curves):
        r, p = _arr(c["recall"], "recall", 1), _arr(c["precision"], "precision", 1)
        fid = int(c.get("filter", -1))
        group = c.get("group", "")
        fig.add_scatter(x=r, y=p, mode="lines", name=f"{c.get('label', f'filter #{fid}')} (AP {c['ap']:.2f})",
                        legendgroup=group, legendgrouptitle_text=group or None,
                        line=dict(color=GROUP_COLORS.get(group, COLORWAY[i % len(COLORWAY)]), width=2.5,
                                  dash="dash" if group == "random" else "solid"),
                        customdata=np.column_stack([np.full(len(r), fid), np.full(len(r), float(c["ap"]))]),
                        hovertemplate="filter #%{customdata[0]:d} · %{fullData.legendgroup}<br>recall %{x:.3f}"
                                      "<br>precision %{y:.3f}<br>AP %{customdata[1]:.3f}<extra></extra>")
    fig.add_scatter(x=[0, 1], y=[random_precision] * 2, mode="lines", legendgroup="random",
                    name=f"random filter (AP {random_precision:.2f})", line=dict(color=BLACK, width=2, dash="dash"),
                    hovertemplate="random filter: precision %{y:.3f} = class prevalence<extra></extra>")
    fig.update_xaxes(title_text="recall (fraction of positives)", range=[0, 1.01])
    fig.update_yaxes(title_text="precision (fraction)", range=[0, 1.02])
    return apply_style(fig, title=f"Single-filter precision-recall · {class_name}",
                       caption=_caption("Fig. 3", "Red: fine-tuned, blue: pretrained, dashed black: "
                                                  "random filter (class prevalence)."))


def _filter_order(ap: np.ndarray, sort: str) -> np.ndarray:
    if sort == "none":
        return np.arange(ap.shape[1])
    if sort == "by_filter_max":
        return np.argsort(-ap.max(0), kind="stable")
    if sort == "by_class_max":  # block diagonal: group filters by best class, best first
        return np.lexsort((-ap.max(0), ap.argmax(0)))
    raise InputError(f"sort must be 'none', 'by_class_max' or 'by_filter_max', got {sort!r}")


def ap_heatmap_figure(ap: Any, class_names: Sequence[str], *, sort: str = "none",
                      max_filters: int | None = None) -> go.Figure:
    """Classes x filters heatmap of single-filter AP (Sec. 4.1, the data of Fig. 3).

    Parameters
    ----------
    ap : ``[C, F]`` AP of each filter for each class (fractions).
    sort : ``"none"`` (filter id order), ``"by_filter_max"`` (filters by their best AP,
        descending) or ``"by_class_max"`` (filters grouped by best class in class
        order, best first within a group: a block-diagonal view).
    max_filters : keep only the first ``max_filters`` filters of that order.

    Returns
    -------
    Figure; the filter order used (ids of the columns, left to right) is
    ``fig.layout.meta["filter_order"]``. Hover shows class, filter id and AP.
    """
    a = _arr(ap, "ap", 2).astype(np.float64)
    names = [str(n) for n in class_names]
    if len(names) != a.shape[0]:
        raise InputError(f"ap has {a.shape[0]} classes but {len(names)} class names")
    order = _filter_order(a, sort)[: max_filters or None]
    fig = _new_figure("Fig. 3 (Sec. 4.1)", base_height=max(320, 26 * len(names)),
                      filter_order=[int(i) for i in order], grid=False)
    fig.add_heatmap(z=a[:, order], x=np.arange(len(order)), y=names, colorscale=SEQUENTIAL, zmin=0,
                    customdata=np.tile(order, (len(names), 1)),
                    colorbar=dict(title=dict(text="AP", side="right")),
                    hovertemplate="class %{y}<br>filter #%{customdata}<br>AP %{z:.3f}<extra></extra>")
    label = {"none": "filter id", "by_filter_max": "filters sorted by best AP over classes (rank)",
             "by_class_max": "filters grouped by best class (rank)"}[sort]
    fig.update_xaxes(title_text=label)
    fig.update_yaxes(title_text="class", autorange="reversed")
    return apply_style(fig, title="Single-filter AP per class",
                       caption=_caption("Sec. 4.1 / Fig. 3", "AP of each spatially max-pooled filter "
                                                             "used alone as a class detector."))


def leaderboard_figure(best_ap: Any, best_filter: Any, full_ap: Any | None, class_names: Sequence[str]) -> go.Figure:
    """Best single-filter AP per class vs. the all-filter SVM (grandmother-cell view).

    Reproduces Sec. 4.1's question behind Fig. 3 (are there grandmother cells?).
    Classes are sorted by best AP, best at the top; the order is
    ``fig.layout.meta["class_order"]`` (class indices).
    """
    best, fid = _arr(best_ap, "best_ap", 1).astype(float), _arr(best_filter, "best_filter", 1).astype(int)
    names = np.asarray([str(n) for n in class_names])
    if not (len(best) == len(fid) == len(names)):
        raise InputError("best_ap, best_filter and class_names must have one entry per class")
    full = None if full_ap is None else _arr(full_ap, "full_ap", 1).astype(float)
    order = np.argsort(-best, kind="stable")
    full_col = full[order] if full is not None else np.full(len(order), np.nan)
    fig = _new_figure("Fig. 3 (Sec. 4.1)", base_height=max(300, 30 * len(names)),
                      class_order=[int(i) for i in order])
    fig.add_bar(x=best[order], y=names[order], orientation="h", marker_color=BLUE, name="best single filter",
                text=[f"#{i}" for i in fid[order]], textposition="inside", insidetextanchor="end",
                customdata=np.column_stack([fid[order], full_col]),
                hovertemplate="%{y}<br>best filter #%{customdata[0]:d}<br>AP %{x:.3f}"
                              "<br>all filters (SVM) AP %{customdata[1]:.3f}<extra></extra>")
    if full is not None:
        fig.add_scatter(x=full[order], y=names[order], mode="markers", name="all filters (SVM)",
                        marker=dict(symbol="diamond", size=12, color=VERMILLION, line=dict(width=1, color=BLACK)),
                        hovertemplate="%{y}<br>all filters (SVM) AP %{x:.3f}<extra></extra>")
    fig.update_xaxes(title_text="average precision (0-1)", range=[0, 1.04])
    fig.update_yaxes(title_text="class", autorange="reversed")
    return apply_style(fig, title="Best single filter per class (grandmother cells?)",
                       caption=_caption("Sec. 4.1", "Bars: best single filter (id inside); diamonds: "
                                                    "SVM on all filters."))


# --------------------------------------------------------------------------- Fig. 4, Fig. 5
def filters_needed_figure(k_values: Any, ap_by_k: Any, full_ap: Any, class_names: Sequence[str], *,
                          k50: Any, k90: Any, classes: Sequence[int | str] | None = None,
                          compare: dict | None = None, label: str = "", ranking: Any | None = None) -> go.Figure:
    """Fraction of complete performance vs. number of filters. Reproduces Fig. 4.

    Parameters
    ----------
    k_values : ``[K]`` subset sizes; ap_by_k : ``[C, K]``; full_ap : ``[C]``.
    k50, k90 : ``[C]`` Table 5's filter counts, marked on each curve.
    classes : indices or names of the classes to draw (default all).
    compare : optional second set drawn dashed: ``ap_by_k``, ``full_ap``, ``label``
        (and ``k_values`` when they differ).
    label : name of the main set in the legend (e.g. ``"fine-tuned"``).
    ranking : optional ``[C, F]`` filter ids by importance: hover lists the top ones.
    """
    ks = _arr(k_values, "k_values", 1)
    names = [str(n) for n in class_names]
    idx = _class_indices(classes, names)
    fig = _new_figure("Fig. 4")
    frac = _ratio(ap_by_k, full_ap)
    _needed_traces(fig, ks, frac, names, idx, label, "solid", ranking)
    drawn = [frac[idx]]
    if compare is not None:
        cks = _arr(compare.get("k_values", ks), "compare k_values", 1)
        cfrac = _ratio(compare["ap_by_k"], compare["full_ap"])
        _needed_traces(fig, cks, cfrac, names, idx, compare.get("label", "compare"), "dash", None)
        drawn.append(cfrac[idx])
    _needed_markers(fig, ks, _ratio(ap_by_k, full_ap), names, idx, _arr(k50, "k50", 1), _arr(k90, "k90", 1))
    for level in (0.5, 0.9):
        fig.add_hline(y=level, line=dict(color=GREY, width=1.5, dash="dot"),
                      annotation_text=f"{level:.0%}", annotation_position="top left")
    fig.update_xaxes(title_text="number of filters k (log scale)", type="log", tickvals=ks,
                     ticktext=[str(int(k)) for k in ks])
    # subsets can beat the all-filter SVM (ratio > 1): widen the axis rather than clip those curves
    top = max([1.05] + [1.03 * float(np.nanmax(d)) for d in drawn if d.size and np.isfinite(d).any()])
    fig.update_yaxes(title_text="fraction of complete performance (AP_k / AP_all)", range=[0, top])
    return apply_style(fig, title="How many filters does a class need?",
                       caption=_caption("Fig. 4", "Top-k filters ranked by |SVM weight|; markers: "
                                                  "k for 50% (circle) and 90% (square), Table 5."))


def filters_needed_models_figure(results: dict[str, Any], model: str, compare: str | None = None, *,
                                 label: Callable[[str], str] = str,
                                 classes: Sequence[int | str] | None = None) -> go.Figure:
    """:func:`filters_needed_figure` of per-model results: ``model`` solid, ``compare`` dashed.

    Reproduces Fig. 4 (the page's and the report's figure).

    Parameters
    ----------
    results : model id -> :func:`core.service.filters_needed` result (``ranking``, ``k50``,
        ``k90``, ``class_names``), all on one task and layer.
    model, compare : model ids in ``results``; without ``compare`` one set is drawn, unnamed.
    label : legend name of a model id (used when comparing).
    classes : as in :func:`filters_needed_figure`.
    """
    main, r = results[model], results[model].ranking
    other = None
    if compare:
        rc = results[compare].ranking
        other = {"ap_by_k": rc.ap_by_k, "full_ap": rc.full_ap, "k_values": rc.k_values, "label": label(compare)}
    return filters_needed_figure(r.k_values, r.ap_by_k, r.full_ap, list(main.class_names), k50=main.k50,
                                 k90=main.k90, classes=classes, compare=other, ranking=r.ranking,
                                 label=label(model) if compare else "")


def _class_indices(classes: Sequence[int | str] | None, names: list[str]) -> list[int]:
    if classes is None:
        return list(range(len(names)))
    bad = [c for c in classes if (c not in names) if isinstance(c, str)]
    if bad:
        raise InputError(f"unknown classes {bad}; known: {', '.join(names)}")
    return [names.index(c) if isinstance(c, str) else int(c) for c in classes]


def _ratio(ap_by_k: Any, full_ap: Any) -> np.ndarray:
    a, f = _arr(ap_by_k, "ap_by_k", 2).astype(float), _arr(full_ap, "full_ap", 1).astype(float)
    if f.shape != (a.shape[0],):
        raise InputError(f"full_ap must be [{a.shape[0]}], got {f.shape}")
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(f[:, None] > 0, a / f[:, None], np.nan)


def _needed_traces(fig: go.Figure, ks: np.ndarray, frac: np.ndarray, names: list[str], idx: list[int],
                   label: str, dash: str, ranking: Any | None) -> None:
    rank = None if ranking is None else _arr(ranking, "ranking", 2)
    for j, c in enumerate(idx):
        tops = ["" if rank is None else ", ".join(f"#{i}" for i in rank[c, :min(k, 5)]) + ("…" if k > 5 else "")
                for k in ks]
        hover = "%{fullData.name}<br>k = %{x:d} filters<br>%{y:.1%} of complete AP"
        hover += "<br>top filters: %{customdata}" if rank is not None else ""
        fig.add_scatter(x=ks, y=frac[c], mode="lines", legendgroup=names[c], customdata=tops,
                        name=f"{names[c]} · {label}" if label else names[c],
                        line=dict(color=COLORWAY[j % len(COLORWAY)], width=2.5, dash=series_dash(dash, j)),
                        hovertemplate=hover + "<extra></extra>")


def _needed_markers(fig: go.Figure, ks: np.ndarray, frac: np.ndarray, names: list[str], idx: list[int],
                    k50: np.ndarray, k90: np.ndarray) -> None:
    for j, c in enumerate(idx):
        kk = np.asarray([k50[c], k90[c]])
        pos = np.clip(np.searchsorted(ks, kk), 0, len(ks) - 1)
        fig.add_scatter(x=kk, y=frac[c, pos], mode="markers", legendgroup=names[c], showlegend=False,
                        marker=dict(symbol=["circle", "square"], size=11, color=COLORWAY[j % len(COLORWAY)],
                                    line=dict(width=1.5, color="white")),
                        customdata=["50%", "90%"],
                        hovertemplate=f"{names[c]}<br>%{{customdata}} of complete AP reached at k = %{{x:d}}"
                                      "<extra></extra>")


def overlap_figure(matrix: Any, class_names: Sequence[str], *, order: Any | None = None, chance: float,
                   k: int, sets: Any | None = None) -> go.Figure:
    """Top-k filter-set overlap between classes. Reproduces Fig. 5.

    Parameters
    ----------
    matrix : ``[C, C]`` fraction of top-``k`` filters shared by classes i and j.
    order : class order (e.g. ``OverlapResult.order``), applied to rows and columns;
        stored in ``fig.layout.meta["class_order"]``.
    chance : expected overlap of random sets (title and a colour-bar tick).
    sets : optional ``[C, k]`` top-k filter ids per class: hover lists the shared ones.
    """
    m = _arr(matrix, "matrix", 2).astype(float)
    o = np.arange(len(m)) if order is None else _arr(order, "order", 1).astype(int)
    names = [str(class_names[i]) for i in o]
    z = m[np.ix_(o, o)]
    shared = _shared_ids(sets, o) if sets is not None else np.full(z.shape, "")
    fig = _new_figure("Fig. 5", base_height=max(420, 24 * len(o)), class_order=[int(i) for i in o], grid=False)
    ticks = sorted({0.0, round(float(chance), 3), 0.5, 1.0})
    fig.add_heatmap(z=z, x=names, y=names, colorscale=SEQUENTIAL_ALT, zmin=0, zmax=1,
                    customdata=np.dstack([np.rint(z * k).astype(int).astype(str), shared]),
                    colorbar=dict(title=dict(text=f"fraction of shared top-{k} filters", side="right"),
                                  tickvals=ticks, ticktext=[f"chance {t:.3f}" if t == round(float(chance), 3)
                                                            else f"{t:g}" for t in ticks]),
                    hovertemplate="%{y} ∩ %{x}<br>shared %{z:.2f} (%{customdata[0]} of " + str(k) +
                                  " filters)" + ("<br>filters %{customdata[1]}" if sets is not None else "") +
                                  "<extra></extra>")
    angle = -45 if max(map(len, names), default=0) * len(names) > 60 else 0
    # no square-cell constraint: it shrank the heatmap inside a wide slide and left its colour bar a third of
    # the slide away; the cells take the plot area's aspect and the colour bar stays beside them
    fig.update_xaxes(title_text="class j (clustered order)", tickangle=angle, showgrid=False)
    fig.update_yaxes(title_text="class i (clustered order)", autorange="reversed", showgrid=False)
    return apply_style(fig, title=f"Top-{k} filter overlap between classes (chance {chance:.3f})",
                       caption=_caption("Fig. 5", f"Entry (i, j) = fraction of class i's top-{k} |SVM weight| "
                                                  f"filters shared with class j; chance = {chance:.3f}."))


def _shared_ids(sets: Any, o: np.ndarray, limit: int = 8) -> np.ndarray:
    s = _arr(sets, "sets", 2)[o]
    out = np.empty((len(o), len(o)), dtype=object)
    for i in range(len(o)):
        for j in range(len(o)):
            ids = np.intersect1d(s[i], s[j])
            out[i, j] = ", ".join(f"#{v}" for v in ids[:limit]) + ("…" if len(ids) > limit else "")
    return out.astype(str)


# --------------------------------------------------------------------------- Tables 6-8
def _grouped(rows: Sequence[dict], keys: Sequence[str]) -> dict[str, list[dict]]:
    """Rows grouped by the ``" · "``-joined values of ``keys`` they have, in first-seen order."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(" · ".join(str(r[k]) for k in keys if k in r), []).append(r)
    return groups


def sparsity_figure(rows: Sequence[dict]) -> go.Figure:
    """Percent non-zero responses per layer, one bar group per variant. Reproduces Table 6.

    ``rows``: dicts with ``layer``, ``mean`` and ``std`` (percent, over images) and
    optional ``variant`` (e.g. ``"pretrained"``, ``"fine-tuned"``) and ``meaningful``
    (False: the layer's responses are not rectified; it is marked "not meaningful", no bar).
    """
    fig = _new_figure("Table 6")
    moot = list(dict.fromkeys(r["layer"] for r in rows if r.get("meaningful", True) is False))
    for layer in moot:
        fig.add_annotation(x=layer, y=0, text="not<br>meaningful", showarrow=False, yanchor="bottom", yshift=4,
                           font=dict(color=GREY), name="fs-not-meaningful",
                           hovertext="responses are not rectified (some negative): exact zeros mean nothing")
    for i, (variant, rs) in enumerate(_grouped(rows, ("variant",)).items()):
        fig.add_bar(x=[r["layer"] for r in rs], y=[r["mean"] for r in rs], name=variant or "non-zero",
                    error_y=dict(type="data", array=[r.get("std", 0.0) for r in rs], thickness=2),
                    marker_color=GROUP_COLORS.get(variant, COLORWAY[i % len(COLORWAY)]),
                    customdata=[[variant, r.get("std", 0.0)] for r in rs],
                    hovertemplate="%{x} · %{customdata[0]}<br>%{y:.1f}% ± %{customdata[1]:.1f} non-zero"
                                  "<extra></extra>")
    fig.update_layout(barmode="group", showlegend=len(fig.data) > 1)
    fig.update_xaxes(title_text="layer")
    fig.update_yaxes(title_text="non-zero responses (% of units, mean ± std)", rangemode="tozero",
                     **({"range": [0, 100]} if moot else {}))
    note = f" Not meaningful (not rectified): {', '.join(moot)}." if moot else ""
    return apply_style(fig, title="Sparsity of filter responses by layer",
                       caption=_caption("Table 6", "Error bars: standard deviation over images." + note))


def ablation_figure(rows: Sequence[dict], *, scale: float = 100.0, error: str = "ci") -> go.Figure:
    """Linear-classifier mAP under feature ablations. Reproduces Tables 7 and 8.

    Parameters
    ----------
    rows : dicts with ``ablation``, ``mean``, ``std``, ``ci_low``, ``ci_high`` and
        optional ``layer`` and ``variant``. With ``layer`` present, x = layer and one
        bar group per ablation (and variant); otherwise x = ablation, one group per variant.
    scale : multiplier to percent: 100 for fractions (the service's ablation summary),
        1 for values already in percent.
    error : ``"ci"`` (bootstrap 95% CI, asymmetric) or ``"std"`` (over runs).
    """
    by_layer = any("layer" in r for r in rows)
    fig = _new_figure("Tables 7-8")
    groups = _grouped(rows, ("ablation", "variant") if by_layer else ("variant",))
    for i, (name, rs) in enumerate(groups.items()):
        mean = np.array([r["mean"] for r in rs], float) * scale
        std = np.array([r.get("std", 0.0) for r in rs], float) * scale
        lo = np.array([r.get("ci_low", r["mean"]) for r in rs], float) * scale
        hi = np.array([r.get("ci_high", r["mean"]) for r in rs], float) * scale
        err = dict(type="data", array=hi - mean, arrayminus=mean - lo) if error == "ci" else \
            dict(type="data", array=std)
        fig.add_bar(x=[r["layer"] if by_layer else r["ablation"] for r in rs], y=mean, name=name or "mAP",
                    error_y=dict(err, thickness=2), marker_color=COLORWAY[i % len(COLORWAY)],
                    customdata=np.column_stack([std, lo, hi]),
                    hovertemplate="%{x} · %{fullData.name}<br>mAP %{y:.1f}% (std %{customdata[0]:.1f})"
                                  "<br>95% CI %{customdata[1]:.1f}–%{customdata[2]:.1f}<extra></extra>")
    fig.update_layout(barmode="group", showlegend=len(fig.data) > 1)
    fig.update_xaxes(title_text="layer" if by_layer else "feature ablation")
    fig.update_yaxes(title_text="mAP (%)", rangemode="tozero")
    bars = "95% bootstrap CI" if error == "ci" else "std over runs"
    return apply_style(fig, title="Feature ablations: spatial layout and magnitude",
                       caption=_caption("Tables 7-8", f"Linear classifier mAP; error bars: {bars}."))


# --------------------------------------------------------------------------- from the service's results
# As scikit-learn's ``Display.from_estimator``: the page and the report hand over what the service returned,
# keyed by the legend name of each model (``service.model_label``), and the figure reads the fields it draws.
def selectivity_results_figure(results: Mapping[tuple[str, str], Any], *, baseline: Any | None = None,
                               baseline_layer: str = "") -> go.Figure:
    """Fig. 1 from :func:`core.service.selectivity` results keyed ``(variant, layer)``, drawn in that
    order, with the shuffled-label band of the ``baseline`` result (of ``baseline_layer``) when it has one."""
    curves = [{"label": f"{layer} · {variant}", "layer": layer, "variant": variant, "fraction": r.fraction,
               "mean_aue": r.mean_aue, "aue": r.aue} for (variant, layer), r in results.items()]
    band = None
    if baseline is not None and len(baseline.baseline_mean_aue):
        band = {"fraction": baseline.fraction, "lo": baseline.baseline_mean_aue.min(0),
                "hi": baseline.baseline_mean_aue.max(0), "label": f"shuffled labels ({baseline_layer})"}
    return selectivity_figure(curves, baseline=band)


def pr_results_figure(curves: Mapping[str, Sequence[dict]], *, random_precision: float, class_name: str,
                      top: int = 5) -> go.Figure:
    """Fig. 3 from :func:`core.service.pr_curves` results keyed by variant (each a list of one filter's
    ``precision``, ``recall``, ``ap``, ``filter``): one colour per variant when there are several (the
    paper's red fine-tuned, blue pretrained), else one per filter."""
    several = len(curves) > 1
    rows = [{**pr, "label": f"#{pr['filter']}", "group": variant if several else f"{variant} · top {top} filters"}
            for variant, prs in curves.items() for pr in prs]
    return pr_figure(rows, random_precision=random_precision, class_name=class_name)


def sparsity_results_figure(results: Mapping[str, dict]) -> go.Figure:
    """Table 6 from :func:`core.service.sparsity` results keyed by variant."""
    return sparsity_figure([{**row, "variant": variant} for variant, r in results.items() for row in r["table"]])


def ablation_results_figure(results: Mapping[tuple[str, str], dict], **kw: Any) -> go.Figure:
    """Tables 7-8 from :func:`core.service.ablation` (or ``task_ablation``) results keyed ``(variant, layer)``;
    ``kw`` go to :func:`ablation_figure`."""
    return ablation_figure([{**row, "layer": layer, "variant": variant} for (variant, layer), r in results.items()
                            for row in r["summary"]], **kw)


# --------------------------------------------------------------------------- Tables 1-4, Fig. 2
def layer_map_figure(df: Any) -> go.Figure:
    """mAP per layer, one line per model. Reproduces Tables 1-4 (e.g. scratch vs.
    pretrained vs. fine-tuned).

    ``df``: index = layers (conv1..fc7), columns = model labels, values = mAP (%).
    """
    fig = _new_figure("Tables 1-4")
    layers = [str(l) for l in df.index]
    for i, col in enumerate(df.columns):
        fig.add_scatter(x=layers, y=df[col].to_numpy(float), mode="lines+markers", name=str(col),
                        line=dict(color=COLORWAY[i % len(COLORWAY)], width=2.5, dash=series_dash("solid", i)),
                        marker=dict(size=9, symbol=_MARKERS[i % len(_MARKERS)]),
                        hovertemplate="%{fullData.name}<br>%{x}: mAP %{y:.1f}%<extra></extra>")
    fig.update_xaxes(title_text="layer", type="category")
    fig.update_yaxes(title_text="mAP (%)")
    return apply_style(fig, title="Linear-classifier mAP by layer",
                       caption=_caption("Tables 1-4", "One linear SVM per class on each layer's features."))


#: Verdict cell of a finding: text and background (green / vermillion / grey, colour-blind safe).
FINDING_MARKS = {True: ("holds", "#d9f0e3"), False: ("does not hold", "#fbe0d4"), None: ("not measured", "#eeeeee")}


def findings_figure(rows: Sequence[dict]) -> go.Figure:
    """The paper's headline findings as a table: finding, paper, this model, verdict and why.

    ``rows``: dicts with ``title``, ``paper``, ``measured``, ``holds`` (True / False /
    None) and ``why`` (:func:`core.service.findings`). Reproduces the conclusions of
    Figs. 1, 3-4 and Tables 1-7 as one checkable summary.
    """
    held = sum(r["holds"] is True for r in rows)
    marks = [FINDING_MARKS[r["holds"]] for r in rows]
    cells = [[_wrap_html(r["title"], 34) for r in rows], [_wrap_html(r["paper"], 30) for r in rows],
             [_wrap_html(r["measured"], 38) for r in rows],
             [f"<b>{m[0]}</b>" + (f"<br>{_wrap_html(r['why'], 24)}" if r["why"] else "") for m, r in zip(marks, rows)]]
    lines = [max(col[i].count("<br>") + 1 for col in cells) for i in range(len(rows))]
    # every row as tall as its wrapped text (plotly grows a row to fit it; a table taller than its plot area
    # is cut at the bottom in static export): 26 px a line and 10 a row at base size, x1.2 in presentation
    fig = _new_figure("Figs. 1, 4; Tables 1-7", base_height=TABLE_HEADER_PX + sum(26 * n + 10 for n in lines),
                      grid=False)
    fig.add_table(header=dict(values=["<b>finding</b>", "<b>paper</b>", "<b>this model</b>", "<b>verdict</b>"],
                              align="left", fill_color="#f2f2f2"),
                  cells=dict(values=cells, align="left", height=30,
                             fill_color=[["white"] * len(rows)] * 3 + [[m[1] for m in marks]]),
                  columnwidth=[3.2, 2.8, 3.6, 2.4])
    return apply_style(fig, title=f"The paper's headline findings: {held} of {len(rows)} hold",
                       caption=_caption("the headline findings", "Each verdict follows the rule written in "
                                        "core/analysis/findings.py, computed on this model's numbers."))


def _wrap_html(text: str, width: int) -> str:
    return "<br>".join(_wrap(str(text), width))


def layer_lines(fig: go.Figure, df: Any, x_title: str, hover: str) -> None:
    """One line per layer (``df``'s columns, in their layer colours) against ``df``'s index (steps), on a
    log x axis when every step is positive, else categorical; ``hover`` follows the layer's name."""
    steps = np.asarray(df.index, dtype=float)
    for i, col in enumerate(df.columns):
        fig.add_scatter(x=steps, y=df[col].to_numpy(float), mode="lines+markers", name=str(col),
                        line=dict(color=layer_color(str(col), i), width=2.5,
                                  dash=series_dash("solid", 0 if _paper_layer(str(col)) else i)), marker=dict(size=9),
                        hovertemplate="%{fullData.name}<br>" + hover + "<extra></extra>")
    log = bool(len(steps)) and bool(np.all(steps > 0))
    fig.update_xaxes(title_text=x_title + (" (log scale)" if log else ""), type="log" if log else "category")


def snapshot_figure(df: Any) -> go.Figure:
    """mAP vs. pretraining iterations, one line per layer. Reproduces Table 3 (and the
    time axis of Fig. 2).

    ``df``: index = snapshot iterations (ints), columns = layers, values = mAP (%).
    The x axis is logarithmic when every iteration is positive, else categorical.
    """
    fig = _new_figure("Table 3 / Fig. 2")
    layer_lines(fig, df, "pretraining iterations", "%{x:,d} iterations: mAP %{y:.1f}%")
    fig.update_yaxes(title_text="mAP (%)")
    return apply_style(fig, title="Performance vs. pretraining time, by layer",
                       caption=_caption("Table 3", "Features of pretraining snapshots, no fine-tuning."))


def training_curves_figure(curves: dict[str, dict[str, Sequence[float]]]) -> go.Figure:
    """Training loss vs. iteration of each run (pretraining, fine-tuning, scratch...).

    Not a figure of the paper: the demo's own training record, beside Tables 1-4 to show
    that every run converged. ``curves``: ``{run: {"iteration": [...], "loss": [...]}}``.
    """
    fig = _new_figure("the demo's training runs", base_height=360)
    for i, (name, c) in enumerate(curves.items()):
        fig.add_scatter(x=np.asarray(c["iteration"]), y=np.asarray(c["loss"], float), mode="lines", name=str(name),
                        line=dict(color=COLORWAY[i % len(COLORWAY)], width=2, dash=series_dash("solid", i)),
                        hovertemplate="%{fullData.name}<br>iteration %{x:,d}: loss %{y:.3f}<extra></extra>")
    fig.update_xaxes(title_text="training iteration")
    fig.update_yaxes(title_text="training loss (cross-entropy)")
    return apply_style(fig, title="Training loss of the demo's runs",
                       caption="Reproduces the training runs behind Tables 1-4 (the demo build's own record, "
                               "not a figure of the paper): mini-batch loss, at most 200 points per run.")


def _normalise_filters(w: np.ndarray) -> np.ndarray:
    """Each filter min-max scaled to 0..255 independently, ``[F, k, k, 3]`` uint8."""
    if w.ndim != 4 or w.shape[1] not in (1, 3):
        raise InputError(f"weights must be [F, 3, k, k] (or [F, 1, k, k]), got {w.shape}")
    w = np.repeat(w, 3, axis=1) if w.shape[1] == 1 else w
    lo = w.min(axis=(1, 2, 3), keepdims=True)
    span = w.max(axis=(1, 2, 3), keepdims=True) - lo
    norm = np.where(span > 0, (w - lo) / np.where(span > 0, span, 1), 0.5)
    return np.rint(norm * 255).astype(np.uint8).transpose(0, 2, 3, 1)


def filter_grid_figure(weights: Any, *, title: str, cols: int = 8, gap: int = 1) -> go.Figure:
    """conv1 filters as RGB tiles, each min-max normalised independently. Reproduces Fig. 2.

    One tiled ``go.Image`` (white ``gap``-pixel borders); tile of filter ``f`` starts at
    row ``gap + (f // cols) * (k + gap)``, column ``gap + (f % cols) * (k + gap)``.
    Hover shows ``filter #f``.
    """
    tiles = _normalise_filters(np.asarray(weights, dtype=np.float64))
    n, k = tiles.shape[0], tiles.shape[1]
    cols = max(1, min(cols, n))
    rows = -(-n // cols)
    canvas = np.full((gap + rows * (k + gap), gap + cols * (k + gap), 3), 255, np.uint8)
    ids = np.full(canvas.shape[:2], "", dtype=object)
    for f in range(n):
        r0, c0 = gap + (f // cols) * (k + gap), gap + (f % cols) * (k + gap)
        canvas[r0:r0 + k, c0:c0 + k] = tiles[f]
        ids[r0:r0 + k, c0:c0 + k] = f"filter #{f}"
    fig = _new_figure("Fig. 2", base_height=int(np.clip(640 * canvas.shape[0] / canvas.shape[1], 240, 720)),
                      grid=False)
    fig.add_image(z=canvas, hovertext=ids.astype(str), name="filters",
                  hovertemplate="%{hovertext}<br>pixel (%{x}, %{y})<br>RGB %{z}<extra></extra>")
    fig.update_xaxes(visible=False, title_text=f"{n} filters, {k}×{k} px each, {cols} per row")
    fig.update_yaxes(visible=False, title_text="filters (row-major)")
    return apply_style(fig, title=title, caption=_caption("Fig. 2", "conv1 filters; each min-max normalised "
                                                                     "to RGB independently."))


# --------------------------------------------------------------------------- top activations
def _colormap(v: np.ndarray, scale: str = SEQUENTIAL) -> np.ndarray:
    """Map values in [0, 1] to RGB (float 0..255) with a plotly sequential colour scale."""
    colors = getattr(plotly.colors.sequential, scale)
    rgb = np.array([plotly.colors.hex_to_rgb(c) if c.startswith("#") else plotly.colors.unlabel_rgb(c)
                    for c in colors], dtype=float)
    pos = np.linspace(0, 1, len(rgb))
    return np.stack([np.interp(v, pos, rgb[:, ch]) for ch in range(3)], axis=-1)


def upsample_bilinear(m: Any, h: int, w: int) -> np.ndarray:
    """Bilinear resize of a 2-D map to ``[h, w]`` (pixel centres aligned, edges clamped)."""
    m = np.asarray(m, dtype=np.float64)
    def axis(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        p = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        i0 = np.floor(p).astype(int)
        return i0, np.minimum(i0 + 1, n_in - 1), p - i0
    y0, y1, wy = axis(h, m.shape[0])
    x0, x1, wx = axis(w, m.shape[1])
    top = m[y0][:, x0] * (1 - wx) + m[y0][:, x1] * wx
    bottom = m[y1][:, x0] * (1 - wx) + m[y1][:, x1] * wx
    return top * (1 - wy[:, None]) + bottom * wy[:, None]


def overlay_heatmap(image: np.ndarray, heat: Any, *, vmax: float, alpha: float = 0.6) -> np.ndarray:
    """Blend an activation map (upsampled, Viridis) over a uint8 RGB image.

    The blend weight is ``alpha * heat / vmax`` per pixel, so silent regions keep the image.
    """
    img = np.asarray(image, dtype=np.float64)
    v = np.clip(upsample_bilinear(heat, *img.shape[:2]) / (vmax if vmax > 0 else 1.0), 0, 1)
    a = alpha * v[..., None]
    return np.rint(img * (1 - a) + _colormap(v) * a).astype(np.uint8)


def image_grid_figure(images: Sequence[np.ndarray], *, titles: Sequence[str], heatmaps: Sequence[Any] | None = None,
                      cols: int = 4, alpha: float = 0.6, normalize: str = "shared",
                      tile_height: int = 240) -> go.Figure:
    """Top-activating images or crops of a filter, optionally with its activation map.

    Reproduces the "top regions" views used with Figs. 1 and 3 (paper Sec. 3-4).
    ``heatmaps`` (one small ``[h, w]`` map or ``None`` per image) are upsampled
    bilinearly and blended in Viridis, scaled by their common maximum so images stay
    comparable (``normalize="shared"``), or each by its own maximum
    (``normalize="each"``: maps of different filters, whose scales differ).
    ``titles`` should carry the filter id and score (e.g. ``"#12 · 4.31"``).
    ``tile_height`` is the height in pixels given to each row (lower it for narrow columns).
    """
    if len(titles) != len(images):
        raise InputError(f"{len(images)} images but {len(titles)} titles")
    if normalize not in ("shared", "each"):
        raise InputError(f"normalize must be 'shared' or 'each', got {normalize!r}")
    heat = list(heatmaps) if heatmaps is not None else [None] * len(images)
    if len(heat) != len(images):
        raise InputError(f"{len(images)} images but {len(heat)} heatmaps")
    shared = max((float(np.max(h)) for h in heat if h is not None), default=1.0)
    cols = max(1, min(cols, len(images)))
    rows = max(1, -(-len(images) // cols))
    # One pair of axes, each tile an Image trace placed at its cell's offset (x0, y0), its
    # title an annotation above it: subplots would give every tile its own axes, and
    # styling 8-16 of them was most of a warm page's time (probe page: 0.9 of 1.4 s).
    cell_w = max(int(np.shape(img)[1]) for img in images) if images else 1
    cell_h = max(int(np.shape(img)[0]) for img in images) if images else 1
    gap_x, title_h = max(2, round(0.06 * cell_w)), max(4, round(0.22 * cell_h))
    fig = _new_figure("Secs. 3-4", base_height=int(tile_height) * rows, grid=False)
    annotations = []
    for i, (img, h) in enumerate(zip(images, heat)):
        vmax = shared if normalize == "shared" or h is None else float(np.max(h))
        z = np.asarray(img, np.uint8) if h is None else overlay_heatmap(img, h, vmax=vmax, alpha=alpha)
        x0, y0 = (i % cols) * (cell_w + gap_x), (i // cols) * (cell_h + title_h) + title_h
        fig.add_trace(go.Image(z=z, x0=x0, y0=y0, name=str(titles[i]),
                               hovertemplate=f"{titles[i]}<br>RGB %{{z}}<extra></extra>"))
        annotations.append(dict(x=x0 + z.shape[1] / 2 - 0.5, y=y0 - 0.5, text=str(titles[i]), showarrow=False,
                                xref="x", yref="y", xanchor="center", yanchor="bottom"))
    width, height = cols * (cell_w + gap_x) - gap_x, rows * (cell_h + title_h)
    fig.update_layout(annotations=annotations)
    fig.update_xaxes(visible=False, range=[-0.5, width - 0.5], title_text="image x (pixels)")
    fig.update_yaxes(visible=False, range=[height - 0.5, -0.5], scaleanchor="x", constrain="domain",
                     title_text="image y (pixels)")
    return apply_style(fig, title="Top-activating images",
                       caption=_caption("the top-activation views of Secs. 3-4",
                                        "Overlay: the filter's spatial response (Viridis, shared scale)."))


# --------------------------------------------------------------------------- probe (uploaded images)
def _short_name(name: str, limit: int = 22) -> str:
    name = str(name)
    return name if len(name) <= limit else name[: limit - 1] + "…"


def probe_bars_figure(filter_ids: Any, percentiles: Any, responses: Any, *, layer: str,
                      classes: Sequence[str] | None = None, image_name: str = "") -> go.Figure:
    """An image's strongest filters: each one's response as a percentile of the dataset's.

    Reproduces the spatially max-pooled filter responses of Sec. 4, for one new image.

    Parameters
    ----------
    filter_ids : ``[K]`` filter ids, strongest first (drawn top to bottom).
    percentiles : ``[K]`` percent of the reference responses below (ties half), 0-100.
    responses : ``[K]`` raw responses (spatial max), shown as bar text and in the hover.
    classes : optional ``[K]`` text per filter (e.g. ``"car 0.61, bus 0.40"``), in the hover.

    Hover carries ``filter #<id>``; the dashed line marks the dataset median (50).
    """
    ids = _arr(filter_ids, "filter_ids", 1).astype(int)
    pct = _arr(percentiles, "percentiles", 1).astype(float)
    resp = _arr(responses, "responses", 1).astype(float)
    if not (len(ids) == len(pct) == len(resp)):
        raise InputError(f"filter_ids ({len(ids)}), percentiles ({len(pct)}) and responses ({len(resp)}) "
                         "must have one entry per filter")
    signals = [str(c) for c in classes] if classes is not None else [""] * len(ids)
    if len(signals) != len(ids):
        raise InputError(f"{len(ids)} filters but {len(signals)} class descriptions")
    labels = [f"#{i}" for i in ids]
    fig = _new_figure("Sec. 4", base_height=max(220, 34 * len(ids)))
    fig.add_bar(x=pct, y=labels, orientation="h", marker_color=BLUE, name="percentile",
                text=[f"{r:.3g}" for r in resp], textposition="inside", insidetextanchor="end",
                customdata=np.column_stack([ids, resp, np.asarray(signals, dtype=object)]),
                hovertemplate="filter #%{customdata[0]}<br>response %{customdata[1]:.4g}<br>"
                              "percentile %{x:.1f} of the dataset<br>signals %{customdata[2]}<extra></extra>")
    fig.add_vline(x=50, line=dict(color=GREY, width=1.5, dash="dash"),
                  annotation_text="dataset median", annotation_position="top")
    fig.update_xaxes(title_text="percentile among the test set's responses (0-100)", range=[0, 101])
    fig.update_yaxes(title_text=f"{layer} filter (strongest first)", autorange="reversed", type="category")
    who = f" · {_short_name(image_name, 40)}" if image_name else ""
    return apply_style(fig, title=f"Strongest {layer} filters{who}",
                       caption=_caption("Sec. 4's max-pooled filter responses, for a new image",
                                        "Bar: percentile among the test set's responses; text: raw response."))


def filter_response_figure(names: Sequence[str], series: Sequence[dict], *, filter_id: int,
                           layer: str) -> go.Figure:
    """One filter's response to every probed image, side by side (one bar group per image).

    Reproduces Sec. 4's max-pooled responses of a single filter, e.g. before vs.
    after fine-tuning (Sec. 3-4 compare the same filter ids in both nets).

    Parameters
    ----------
    names : ``[N]`` image names (x axis, shortened; full name in the hover).
    series : one dict per model: ``label`` (``"fine-tuned"`` vermillion,
        ``"pretrained"`` blue, others cycled), ``percentiles`` ``[N]`` (0-100) and
        ``responses`` ``[N]`` (raw, in the hover and as bar text).
    """
    full = [str(n) for n in names]
    short = _unique([_short_name(n) for n in full])
    fig = _new_figure("Sec. 4", base_height=400)
    for j, s in enumerate(series):
        pct = _arr(s["percentiles"], "percentiles", 1).astype(float)
        resp = _arr(s["responses"], "responses", 1).astype(float)
        if not (len(pct) == len(resp) == len(full)):
            raise InputError(f"series {s.get('label', j)!r}: {len(pct)} percentiles and {len(resp)} responses "
                             f"for {len(full)} images")
        label = str(s.get("label", f"model {j}"))
        fig.add_bar(x=short, y=pct, name=label, marker_color=GROUP_COLORS.get(label, COLORWAY[j % len(COLORWAY)]),
                    text=[f"{r:.3g}" for r in resp], textposition="outside",
                    customdata=np.column_stack([np.asarray(full, dtype=object), resp,
                                                np.full(len(full), int(filter_id))]),
                    hovertemplate="%{customdata[0]}<br>" + label + " · filter #%{customdata[2]}<br>"
                                  "response %{customdata[1]:.4g}<br>percentile %{y:.1f}<extra></extra>")
    fig.add_hline(y=50, line=dict(color=GREY, width=1.5, dash="dash"))
    long = sum(len(n) for n in short) > 70
    fig.update_layout(barmode="group", showlegend=len(series) > 1)
    fig.update_xaxes(title_text="image", type="category", tickangle=-30 if long else 0)
    fig.update_yaxes(title_text="percentile among the test set (0-100)", range=[0, 112])
    return apply_style(fig, title=f"{layer} filter #{int(filter_id)} on each image",
                       caption=_caption("Sec. 4's max-pooled response of one filter, for new images",
                                        "Bar: percentile among the test set's responses (dashed: median); "
                                        "text: raw response."))


def _unique(labels: list[str]) -> list[str]:
    """Make category labels distinct (plotly merges equal categories)."""
    seen: dict[str, int] = {}
    out = []
    for l in labels:
        n = seen.get(l, 0)
        seen[l] = n + 1
        out.append(l if n == 0 else f"{l} ({n + 1})")
    return out


# --------------------------------------------------------------------------- detection (PASCAL-DET, issue #11)
def _box_trace(box: Sequence[float], *, name: str, color: str, dash: str, hover: str, legendgroup: str,
               showlegend: bool) -> go.Scatter:
    x0, y0, x1, y1 = (float(v) for v in box)
    return go.Scatter(x=[x0, x1, x1, x0, x0], y=[y0, y0, y1, y1, y0], mode="lines", name=name,
                      line=dict(color=color, width=2.5, dash=dash), hovertemplate=hover + "<extra></extra>",
                      legendgroup=legendgroup, showlegend=showlegend)


def detections_figure(image: Any, detections: Sequence[dict], ground_truth: Sequence[dict] = (), *,
                      title: str = "Top detections") -> go.Figure:
    """An image with its detections (solid boxes, "class score" labels) and ground truth (dashed).

    Reproduces: a sanity view of the PASCAL-DET pipeline (R-CNN detections after class-wise NMS,
    Sec. 2; no bounding-box regression). ``detections``: dicts with ``class``, ``class_name``,
    ``score``, ``box`` (x1, y1, x2, y2 pixel edges); ``ground_truth``: ``class``, ``class_name``,
    ``box``, ``difficult``. One colour per class; one trace per box (named after it).
    """
    img = _arr(image, "image", 3)
    h, w = img.shape[:2]
    fig = _new_figure("PASCAL-DET", base_height=520)
    fig.add_trace(go.Image(z=img.astype(np.uint8), hoverinfo="skip", name="image"))
    seen: set[str] = set()
    for g in ground_truth:
        color = COLORWAY[int(g["class"]) % len(COLORWAY)]
        tag = f"{g['class_name']} (ground truth{', difficult' if g.get('difficult') else ''})"
        fig.add_trace(_box_trace(g["box"], name=tag, color=color, dash="dot", hover=tag,
                                 legendgroup="gt", showlegend="gt" not in seen))
        fig.data[-1].legendgrouptitle = dict(text="ground truth")
        seen.add("gt")
    for d in detections:
        color = COLORWAY[int(d["class"]) % len(COLORWAY)]
        tag = f"{d['class_name']} {d['score']:.2f}"
        fig.add_trace(_box_trace(d["box"], name=tag, color=color, dash="solid",
                                 hover=f"{d['class_name']}<br>SVM score {d['score']:.3f}",
                                 legendgroup=d["class_name"], showlegend=True))
        x0, y0 = float(d["box"][0]), float(d["box"][1])
        fig.add_annotation(x=max(0.0, x0), y=max(0.0, y0), text=tag, showarrow=False, xanchor="left",
                           yanchor="bottom", font=dict(color="white", size=11), bgcolor=color, opacity=0.9)
    fig.update_xaxes(range=[-0.5, w - 0.5], visible=False, title_text="x (pixels)")
    fig.update_yaxes(range=[h - 0.5, -0.5], visible=False, title_text="y (pixels)", scaleanchor="x")
    return apply_style(fig, title=title,
                       caption=_caption("PASCAL-DET (R-CNN, no box regression)",
                                        "Solid: detections after class-wise NMS (SVM score); dotted: ground truth."))


def detection_ap_figure(ap: Any, class_names: Sequence[str], *, series: str = "AP") -> go.Figure:
    """Per-class detection AP (VOC 2007, %) as bars, the mAP as a dashed line."""
    a = 100 * _arr(ap, "ap", 1).astype(float)
    if len(a) != len(class_names):
        raise InputError(f"{len(a)} AP values for {len(class_names)} classes")
    keep = np.isfinite(a)
    names = [str(n) for n, k in zip(class_names, keep) if k]
    fig = _new_figure("PASCAL-DET", base_height=420)
    fig.add_bar(x=names, y=a[keep], name=series, marker_color=BLUE,
                hovertemplate="%{x}: AP %{y:.1f}%<extra></extra>")
    if keep.any():
        fig.add_hline(y=float(a[keep].mean()), line=dict(color=GREY, dash="dash"),
                      annotation_text=f"mAP {a[keep].mean():.1f}", annotation_position="top right")
    fig.update_xaxes(title_text="class", type="category")
    fig.update_yaxes(title_text="AP (%, VOC 2007)", range=[0, 100])
    return apply_style(fig, title="Detection AP per class",
                       caption=_caption("PASCAL-DET (Tables 1, 2, 4, 8)", "Dashed: mAP over classes with ground truth."))
