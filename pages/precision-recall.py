"""Sec. 4.1 / Fig. 3: single filters as class detectors — are there grandmother cells?"""
import streamlit as st

from core import service
from core.present import figures
from ui.common import computing, guard, preset, show_figure, show_table, sidebar

preset(layer="conv5")
sel = sidebar(cls=True, default_task="demo-detgt")
task = service.task(sel.task)
pres = st.session_state.get("presentation", False)
st.title("Precision-recall of single filters (Fig. 3)")
st.markdown(
    "A *grandmother cell* for a class fires strongly on **all** its instances and on nothing else: used alone "
    "as a detector (its spatially max-pooled response is the score), it has high precision **and** high "
    "recall, i.e. a high AP (Sec. 4.1). The first chart shows the precision-recall curves of the 5 filters "
    "with the best AP for the sidebar class (red: fine-tuned, blue: pretrained in compare mode), against a "
    "random filter whose precision is the class prevalence (dashed). Curves that drop early, even at modest "
    "recall, mean no single filter captures the class. Below, the best filter of every class is set against "
    "an SVM on *all* filters of the layer: a bar close to its diamond is a grandmother-cell candidate."
)

aps: dict = {}
with guard("the precision-recall curves"):
    for m in sel.models:
        aps[m] = computing(f"Single-filter AP of {service.model_label(m)} {sel.layer}…", service.filter_ap, m, sel.task,
                           sel.layer)
    main = aps[sel.model]
    c, name = sel.cls, main.class_names[sel.cls]
    curves = {service.model_label(m): service.pr_curves(m, sel.task, sel.layer, c, aps[m].top_filters(c, 5))
              for m in sel.models}
    fn = computing(f"Per-class SVMs on all {sel.layer} filters…", service.filters_needed, sel.model, sel.task,
                   sel.layer)
    cols = st.columns(3)
    cols[0].metric(f"Best single filter · {name}", f"{main.ap[c].max():.3f}",
                   help=f"AP of filter #{main.top_filters(c, 1)[0]} ({service.model_label(sel.model)}) used alone")
    cols[1].metric(f"SVM on all {main.ap.shape[1]} filters", f"{fn.ranking.full_ap[c]:.3f}",
                   help="Test AP of a linear SVM trained on all filters of the layer (Sec. 4.2)")
    cols[2].metric("Random filter", f"{main.prevalence[c]:.3f}", help="AP of a random score = class prevalence")
    fig = figures.pr_results_figure(curves, random_precision=float(main.prevalence[c]), class_name=name)
    figures.apply_style(fig, title=None, caption=f"Reproduces Fig. 3 · {sel.layer} · {task.title} (test split)",
                        stamp=main.provenance.stamp(), presentation=pres)
    show_figure(fig, "pr_curves", provenance=[aps[m].provenance for m in sel.models], theme=None)

st.header("Grandmother cells? Best single filter per class")
with guard("the grandmother-cell view"):
    if st.session_state.get("pr_board_model") not in sel.models:
        st.session_state["pr_board_model"] = sel.model
    model = st.radio("Model", sel.models, format_func=service.model_label, horizontal=True, key="pr_board_model") \
        if sel.compare else sel.model
    res = aps[model]
    full = computing(f"Per-class SVMs on all {sel.layer} filters…", service.filters_needed, model, sel.task,
                     sel.layer).ranking.full_ap
    fig = figures.leaderboard_figure(res.ap.max(1), res.ap.argmax(1), full, res.class_names)
    figures.apply_style(fig, title=f"Best single filter per class vs. all filters · {service.model_label(model)}",
                        caption=f"Sec. 4.1 · {sel.layer} · {task.title} (test split)",
                        stamp=res.provenance.stamp(), presentation=pres)
    show_figure(fig, "pr_leaderboard", provenance=res.provenance, theme=None)

    ratio = st.slider("Candidate if single-filter AP ≥ this fraction of the all-filter SVM AP", 0.3, 1.0, 0.8,
                      step=0.05, key="pr_gmc_ratio")
    gmc = service.grandmother_cells(model, sel.task, sel.layer, ratio=ratio)
    if len(gmc):
        show_table(gmc.rename(columns={"ap": "filter AP", "full_ap": "all-filter SVM AP", "ratio": "ratio"})
                   .round(3), "pr_gmc", provenance=res.provenance, hide_index=True, width="stretch",
                   caption=f"Grandmother-cell candidates (single-filter AP ≥ {ratio:.0%} of the SVM's), Sec. 4.1")
        st.caption(f"{gmc['class'].nunique()} of {len(res.class_names)} classes have a candidate at "
                   f"{ratio:.0%}.")
    else:
        st.info(f"No filter reaches {ratio:.0%} of its class's all-filter SVM AP: every class relies on a "
                "distributed code at this level, as the paper finds for most PASCAL classes.")

st.header("Single-filter AP, every class × every filter")
with guard("the AP heatmap"):
    sorts = {"by_class_max": "grouped by best class (block diagonal)", "by_filter_max": "by best AP",
             "none": "by filter id"}
    sort = st.selectbox("Order filters", list(sorts), format_func=sorts.get, key="pr_heat_sort")
    fig = figures.ap_heatmap_figure(res.ap, res.class_names, sort=sort)
    figures.apply_style(fig, title=f"Single-filter AP per class · {service.model_label(model)} {sel.layer}",
                        caption=f"Sec. 4.1 / Fig. 3 data · {task.title} (test split)",
                        stamp=res.provenance.stamp(), presentation=pres)
    show_figure(fig, "pr_heatmap", provenance=res.provenance, theme=None)
