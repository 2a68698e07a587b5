"""Fig. 1: class selectivity (sorted AuE) of every layer, and one filter up close (Sec. 3.2, Appendix)."""
import textwrap

import numpy as np
import pandas as pd
import streamlit as st

from core import service
from core.present import figures
from ui.common import (clickable, computing, custom_value, guard, memo_figure, new_click, preset,
                       select_and_rerun, show_figure, show_table, sidebar, widget_key)

preset(layer="conv5")
sel = sidebar(task_kinds=("det-gt", "scene", "other"), default_task="demo-detgt")  # single-label tasks
task = service.task(sel.task)
pres = st.session_state.get("presentation", False)
st.title("Class selectivity of filters (Fig. 1)")
st.markdown(
    "For one filter, threshold its responses (every spatial position of every test item, each carrying the "
    "item's class) and take the class-label entropy of the responses above the threshold; sweeping the "
    "threshold traces the *entropy curve*, and its area (**AuE**, bits) is low for a class-selective filter "
    "(paper Appendix). Fig. 1 sorts a layer's filters from most to least selective and plots the mean AuE of "
    "the first k against k / F: **lower curves = more selective layers**. Dash-dot: pretrained, solid: "
    "fine-tuned (compare mode). The grey band is the sidebar layer's curve with shuffled labels (min-max over "
    "shuffles): what no selectivity looks like. **Click a point** on a curve, or pick a filter below, to see "
    "its entropy curve, class histogram and top-activating test items."
)


def _all_curves(models, layers, task_id, progress):
    return {(m, l): service.selectivity(m, task_id, l, progress=progress) for m in models for l in layers}


layers = service.layers_of(sel.model)
shown = st.multiselect("Layers", layers, default=layers, key=widget_key("selv_layers", layers))
results: dict = {}
with guard("the selectivity curves"):
    pairs_layers = list(dict.fromkeys(shown + [sel.layer]))
    results = computing("Computing selectivity curves…", _all_curves, sel.models, pairs_layers, sel.task)
    keys = [(m, l) for m in sel.models for l in shown]
    base = results[(sel.model, sel.layer)]

    def fig1():
        fig = figures.selectivity_results_figure({(service.model_label(m), l): results[(m, l)] for m, l in keys},
                                                 baseline=base, baseline_layer=sel.layer)
        figures.apply_style(fig, title=None, caption=f"Reproduces Fig. 1 · {task.title} (test split)",
                            stamp=base.provenance.stamp(), presentation=pres)
        return clickable(fig)

    # each result's provenance stamp names its model, weights, data, layer and when it was computed
    fig = memo_figure(("selv_fig1", sel.task, sel.layer, pres, tuple(keys), base.provenance.stamp(),
                       tuple(results[k].provenance.stamp() for k in keys)), fig1)
    provs = [results[(m, sel.layer)].provenance for m in sel.models]
    event = show_figure(fig, "selv_fig1", provenance=provs, on_select="rerun", selection_mode="points", theme=None)
    keys = [None] * (len(fig.data) - len(keys)) + keys  # the band's traces come first
    p = new_click(event, "selv_fig1")
    if p is not None and 0 <= p.get("curve_number", -1) < len(keys) and keys[p["curve_number"]]:
        m, l = keys[p["curve_number"]]
        st.session_state["selv_model"] = m
        st.session_state[f"selv_filter_{m}_{l}"] = int(custom_value(p, 1))
        if l != sel.layer:
            select_and_rerun(layer=l)

st.header(f"Inspect a filter of {sel.layer}")
with guard("the filter view"):
    if st.session_state.get("selv_model") not in sel.models:
        st.session_state["selv_model"] = sel.model
    model = st.radio("Model", sel.models, format_func=service.model_label, horizontal=True, key="selv_model") \
        if sel.compare else sel.model
    res = results.get((model, sel.layer)) or service.selectivity(model, sel.task, sel.layer)
    order = np.argsort(res.aue, kind="stable")
    rank = {int(f): i + 1 for i, f in enumerate(order)}
    fkey = f"selv_filter_{model}_{sel.layer}"  # one widget per model and layer: its labels depend on them

    st.subheader(f"The 10 most selective {sel.layer} filters · {service.model_label(model)}")
    top = pd.DataFrame({"rank": np.arange(1, 11)[:len(order)], "filter": order[:10],
                        "AuE (bits)": res.aue[order[:10]].round(3)})
    picked = show_table(top, "selv_top", provenance=res.provenance, hide_index=True, on_select="rerun",
                        selection_mode="single-row", width="content",
                        caption=f"The 10 most selective {sel.layer} filters (AuE, Fig. 1)")
    rows = picked.selection.rows if picked is not None else []
    if not rows:
        st.session_state.pop("_seen_selv_top", None)
    elif st.session_state.get("_seen_selv_top") != (model, sel.layer, rows[0]):
        st.session_state["_seen_selv_top"] = (model, sel.layer, rows[0])
        st.session_state[fkey] = int(order[rows[0]])
    st.caption("Select a row to inspect that filter.")

    options = [int(f) for f in order]
    if st.session_state.get(fkey) not in options:
        st.session_state[fkey] = options[0]
    left, right = st.columns(2)
    filt = left.selectbox("Filter (most selective first)", options, key=fkey,
                          format_func=lambda f: f"#{f} · AuE {res.aue[f]:.3f} bits · rank {rank[f]} of {len(order)}")
    ec = service.entropy_curve(model, sel.task, sel.layer, filt)
    thr = ec["thresholds"]
    if st.session_state.get("selv_thr", -1) not in range(len(thr)):
        st.session_state["selv_thr"] = len(thr) // 2
    ti = right.slider("Activation threshold (steps from the lowest to the highest response)",
                      0, len(thr) - 1, key="selv_thr")
    right.caption(f"threshold = **{thr[ti]:.4g}** · responses at or above it: {int(ec['histograms'][ti].sum())}")
    caption = f"{task.title} (test split) · {service.model_label(model)}"
    narrow = {"stamp": textwrap.fill(res.provenance.stamp(), 95), "presentation": pres}  # half-width charts
    seen = (sel.task, sel.layer, model, filt, pres, res.provenance.stamp())  # what every figure below shows

    def entropy_figure():
        fig = figures.entropy_curve_figure(thr, ec["entropy"], filter_id=filt, layer=sel.layer, threshold=thr[ti])
        return figures.apply_style(fig, title=None, caption=textwrap.fill(
            f"Entropy curve behind Fig. 1 (Appendix); shaded area = AuE · {caption}", 70), **narrow)

    def histogram_figure():
        fig = figures.class_histogram_figure(ec["histograms"][ti], ec["class_names"], threshold=thr[ti],
                                             filter_id=filt)
        return figures.apply_style(fig, title=None, caption=textwrap.fill(
            f"Classes of the responses ≥ the threshold (their entropy is the curve) · {caption}", 70), **narrow)

    c1, c2 = st.columns(2)
    with c1:
        show_figure(memo_figure(("selv_entropy", ti, *seen), entropy_figure), "selv_entropy",
                    provenance=res.provenance, theme=None)
    with c2:
        show_figure(memo_figure(("selv_hist", ti, *seen), histogram_figure), "selv_hist",
                    provenance=res.provenance, theme=None)

    n = st.slider("Top-activating test items", 4, 16, 8, step=4, key="selv_n")

    def top_items_figure():
        ta = service.top_activations(model, sel.task, sel.layer, filt, n=n)
        data = service.load_set(task.test)
        images = [np.asarray(data.image(int(i)).convert("RGB")) for i in ta["indices"]]
        titles = [f"{data.class_names[int(data.labels[i])]} · {s:.3g}" for i, s in zip(ta["indices"], ta["scores"])]
        maps = list(ta["maps"]) if ta["maps"] is not None else None
        fig = figures.image_grid_figure(images, titles=titles, heatmaps=maps, cols=4)
        return figures.apply_style(fig, title=f"Top-activating test items · {sel.layer} filter #{filt}",
                                   caption="Titles: true class · max response. "
                                           + ("Overlay: the filter's response map. " if maps is not None else "")
                                           + caption, stamp=res.provenance.stamp(), presentation=pres)

    show_figure(memo_figure(("selv_top_images", n, *seen), top_items_figure), "selv_top_images",
                provenance=res.provenance, theme=None)
