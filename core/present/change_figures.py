"""Figures of the What changed page: layer x layer CKA, how much each layer moved, every unit before vs
after, and snapshots against the final network (#31). House style of :mod:`.figures`."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import plotly.graph_objects as go

from core.errors import InputError
from core.present.figures import (GREY, PALETTE, SEQUENTIAL, _arr, _new_figure, apply_style, layer_color,
                                  layer_lines)

KORNBLITH = "Kornblith et al., ICML 2019"
POOLING = {"flatten": "conv maps flattened (C·H·W values)", "mean": "conv maps spatially mean-pooled",
           "max": "conv maps spatially max-pooled"}


def _pool_text(pool: str) -> str:
    if pool not in POOLING:
        raise InputError(f"unknown pooling {pool!r}; use one of {', '.join(POOLING)}")
    return POOLING[pool]


def cka_heatmap_figure(matrix: Any, layers_a: Sequence[str], layers_b: Sequence[str], *, label_a: str,
                       label_b: str, pool: str, estimator: str) -> go.Figure:
    """Linear CKA between every layer of network A (rows) and of network B (columns), 0 to 1."""
    m = _arr(matrix, "matrix", 2).astype(float)
    if m.shape != (len(layers_a), len(layers_b)):
        raise InputError(f"matrix is {m.shape} but there are {len(layers_a)} x {len(layers_b)} layers")
    fig = _new_figure(f"linear CKA ({KORNBLITH})", base_height=max(420, 40 * len(layers_a) + 160), grid=False)
    fig.add_heatmap(z=m, x=list(layers_b), y=list(layers_a), colorscale=SEQUENTIAL, zmin=0, zmax=1,
                    text=np.vectorize(lambda v: f"{v:.2f}")(m), texttemplate="%{text}",
                    colorbar=dict(title=dict(text="linear CKA", side="right")),
                    hovertemplate=f"{label_a} %{{y}} vs {label_b} %{{x}}<br>CKA %{{z:.3f}}<extra></extra>")
    fig.update_xaxes(title_text=f"{label_b} (after)", showgrid=False)
    fig.update_yaxes(title_text=f"{label_a} (before)", autorange="reversed", showgrid=False)
    return apply_style(fig, title=f"Layer similarity: {label_a} vs {label_b}",
                       caption=f"Linear CKA ({KORNBLITH}) of every layer pair on the same test items; "
                               f"{_pool_text(pool)}; {estimator}. 1 = the same representation up to rotation "
                               "and scale.")


def layer_change_figure(layers: Sequence[str], moved: Any, delta_aue: Any | None = None) -> go.Figure:
    """How much each layer moved: ``1 - CKA`` of the layer with itself across the two networks, beside
    Fig. 1's change of mean AuE for the same layers (after - before; negative: more selective)."""
    from plotly.subplots import make_subplots

    mv = _arr(moved, "moved", 1).astype(float)
    cols = 2 if delta_aue is not None else 1
    fig = make_subplots(rows=1, cols=cols, horizontal_spacing=0.14,
                        subplot_titles=("representation: 1 − CKA", "selectivity: Δ mean AuE (bits)")[:cols])
    fig.layout.meta = {"reproduces": "Fig. 1 (Δ mean AuE) and linear CKA", "base_height": 420,
                       "presentation": False}
    colours = [layer_color(str(l), i) for i, l in enumerate(layers)]
    fig.add_bar(x=list(layers), y=mv, marker_color=colours, name="1 − CKA", showlegend=False,
                hovertemplate="%{x}: 1 − CKA %{y:.3f}<extra></extra>", row=1, col=1)
    fig.update_yaxes(title_text="1 − CKA (0: unchanged)", range=[0, max(0.05, float(np.nanmax(mv)) * 1.15)],
                     row=1, col=1)
    if delta_aue is not None:
        d = _arr(delta_aue, "delta_aue", 1).astype(float)
        fig.add_bar(x=list(layers), y=d, marker_color=colours, name="Δ mean AuE", showlegend=False,
                    hovertemplate="%{x}: Δ mean AuE %{y:+.3f} bits<extra></extra>", row=1, col=2)
        fig.update_yaxes(title_text="after − before (bits)", zeroline=True, zerolinecolor=GREY, row=1, col=2)
    return apply_style(fig, title="How much each layer moved",
                       caption="Left: 1 − linear CKA of each layer with the same layer of the other network. "
                               "Right: the change of the layer's mean AuE (Fig. 1's measure; negative = more "
                               "class-selective after).")


def unit_scatter_figure(before: Any, after: Any, colour: Any, units: Any, *, measure: str, colour_name: str,
                        layer: str, matched: bool) -> go.Figure:
    """Every unit's ``measure`` before (x) vs after (y), coloured by ``colour`` (e.g. how far its weights
    moved); ``units`` ride along as custom data for clicks. Points off the diagonal changed."""
    x, y = _arr(before, "before", 1).astype(float), _arr(after, "after", 1).astype(float)
    c, u = _arr(colour, "colour", 1).astype(float), _arr(units, "units", 1).astype(int)
    if not len(x) == len(y) == len(c) == len(u):
        raise InputError("before, after, colour and units must have one value per unit")
    fig = _new_figure("unit-by-unit change (Fig. 1 / Sec. 4.1 per unit)", base_height=520)
    ok = np.isfinite(x) & np.isfinite(y)
    lo = float(min(np.nanmin(x[ok]), np.nanmin(y[ok]))) if ok.any() else 0.0
    hi = float(max(np.nanmax(x[ok]), np.nanmax(y[ok]))) if ok.any() else 1.0
    fig.add_scatter(x=[lo, hi], y=[lo, hi], mode="lines", line=dict(color=GREY, dash="dot", width=1.5),
                    name="unchanged", hoverinfo="skip", showlegend=False)
    has_c = bool(np.isfinite(c).any())
    fig.add_scatter(x=x, y=y, mode="markers", name="units", showlegend=False, customdata=np.stack([u, c], 1),
                    marker=dict(size=9, color=np.where(np.isfinite(c), c, np.nan) if has_c else PALETTE[1],
                                colorscale=SEQUENTIAL, showscale=has_c, line=dict(width=0.5, color="white"),
                                colorbar=dict(title=dict(text=colour_name, side="right")) if has_c else None),
                    hovertemplate="unit #%{customdata[0]}<br>before %{x:.3f}<br>after %{y:.3f}"
                                  + (f"<br>{colour_name} %{{customdata[1]:.4f}}" if has_c else "") + "<extra></extra>")
    fig.update_xaxes(title_text=f"{measure} before")
    fig.update_yaxes(title_text=f"{measure} after")
    pairing = "units matched one to one by response correlation" if matched else "unit i before = unit i after"
    return apply_style(fig, title=f"{layer}: every unit's {measure}, before vs after",
                       caption=f"One point per unit ({pairing}); off the dotted diagonal = changed. Colour: "
                               f"{colour_name if has_c else 'not available (no shared weights)'}.")


def snapshot_cka_figure(df: Any) -> go.Figure:
    """CKA of each snapshot's layer with the same layer of the final network, one line per layer, against
    the snapshot's step: Table 3 / Fig. 2's question (which layers settle first?) asked of representations."""
    fig = _new_figure("Table 3 / Fig. 2 with linear CKA")
    layer_lines(fig, df, str(df.index.name or "step"), "step %{x:,d}: CKA with the final %{y:.3f}")
    fig.update_yaxes(title_text="linear CKA with the final network", range=[0, 1.05])
    return apply_style(fig, title="When does each layer settle?",
                       caption="Linear CKA of each snapshot's layer with the same layer at the end of the run, on "
                               "the task's test items: a layer at 1 no longer changes (up to rotation and scale).")


__all__ = ["cka_heatmap_figure", "layer_change_figure", "unit_scatter_figure", "snapshot_cka_figure"]
