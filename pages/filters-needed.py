"""Sec. 4.2 / Fig. 4 / Table 5: how many filters does a class need?"""
import pandas as pd
import streamlit as st

from core import service
from core.present import figures
from ui.common import computing, guard, preset, show_figure, show_table, sidebar, widget_key

preset(layer="conv5")
sel = sidebar(default_task="demo-detgt")
task = service.task(sel.task)
pres = st.session_state.get("presentation", False)
st.title("How many filters does a class need? (Fig. 4, Table 5)")
st.markdown(
    "For each class, a linear SVM on all filters of the layer ranks the filters by the magnitude of their "
    "weight |w|; new SVMs are then trained on the top-k filters only, for growing k (Sec. 4.2). Each curve "
    "is the test AP with k filters as a fraction of the AP with all of them. A curve that rises after one or "
    "two filters is a class with grandmother-cell-like filters; most classes need tens of filters, i.e. the "
    "representation is a **distributed code**. Markers (and the table) give the k that reaches 50% (circle) "
    "and 90% (square) of the complete performance, as in Table 5; in compare mode the second model is dashed."
)

with guard("the filters-needed curves"):
    res = {m: computing(f"Ranking {sel.layer} filters with per-class SVMs · {service.model_label(m)}…",
                        service.filters_needed, m, sel.task, sel.layer) for m in sel.models}
    main = res[sel.model]
    names = list(main.class_names)
    chosen = st.multiselect("Classes", names, default=names, key=widget_key("fn_classes", names))
    if not chosen:
        st.info("Pick at least one class.")
    else:
        fig = figures.filters_needed_models_figure(res, sel.model, sel.compare, label=service.model_label, classes=chosen)
        figures.apply_style(fig, title=None, caption=f"Reproduces Fig. 4 · {sel.layer} · {task.title} "
                                                     "(train → test split)",
                            stamp=main.provenance.stamp(), presentation=pres)
        show_figure(fig, "fn_curves", provenance=[res[m].provenance for m in sel.models], theme=None)

    st.subheader("Filters needed for 50% / 90% of the complete performance (Table 5)")
    table = service.filters_needed_table(res)
    provs = [res[m].provenance for m in sel.models]
    show_table(table, "fn_table5", provenance=provs, width="stretch",
               caption=f"Table 5: {sel.layer} filters needed for 50% / 90% of the complete performance")
    ks = main.ranking.k_values
    st.caption(f"k out of {int(ks[-1])} {sel.layer} filters; subset sizes tried: "
               f"{', '.join(str(int(k)) for k in ks)}.")
    full = pd.DataFrame({service.model_label(m): res[m].ranking.full_ap for m in sel.models}, index=names).T
    st.markdown("**Complete performance** (test AP of the SVM on all filters, per class)")
    show_table(full.round(3), "fn_full_ap", provenance=provs, width="stretch",
               caption=f"Complete performance: test AP of the SVM on all {sel.layer} filters")
