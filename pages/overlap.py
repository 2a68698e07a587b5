"""Fig. 5: overlap of the top-k |SVM weight| filters between classes."""
import numpy as np
import pandas as pd
import streamlit as st

from core import service
from core.present import figures
from ui.common import (clickable, computing, guard, new_click, preset, show_figure, show_table, sidebar,
                       widget_key)

preset(layer="conv5")
sel = sidebar(default_task="demo-detgt")
task = service.task(sel.task)
pres = st.session_state.get("presentation", False)
st.title("Do classes share filters? (Fig. 5)")
st.markdown(
    "For each class i, take the k filters with the largest |w| in its all-filter linear SVM (the set S_i of "
    "Sec. 4.2). Entry (i, j) of the matrix is |S_i ∩ S_j| / k: 1 on the diagonal, and the *chance* level "
    "k / F for random sets. Classes are ordered by hierarchical clustering of the matrix, so classes that "
    "share filters sit together. Mostly dark off-diagonal entries mean each class uses its own subset of "
    "filters (a distributed code); related classes share more. **Click a cell**, or pick two classes below, "
    "to list the filters they share."
)

with guard("the overlap matrix"):
    ranked = {m: computing(f"Ranking {sel.layer} filters with per-class SVMs · {service.model_label(m)}…",
                           service.filters_needed, m, sel.task, sel.layer) for m in sel.models}
    width = int(ranked[sel.model].ranking.ranking.shape[1])
    if st.session_state.get("ov_k", 0) not in range(1, width + 1):
        # the paper's 50 of 256 conv5 filters; narrower layers keep its fraction (chance ≈ 0.195)
        st.session_state["ov_k"] = 50 if width >= 256 else max(1, round(width * 50 / 256))
    k = st.slider(f"k: top filters per class (of {width})", 1, width, key="ov_k",
                  help="Default: 50 as in the paper (50 of 256 conv5 filters); for layers narrower than 256 the "
                       "same fraction, so that chance stays near the paper's 0.195.")
    ov = {m: service.overlap(m, sel.task, sel.layer, k) for m in sel.models}
    main = ov[sel.model]
    names = list(main.class_names)
    ikey, jkey = widget_key("ov_i", names), widget_key("ov_j", names)  # fresh widgets when the classes change
    events = {}
    for m in sel.models:  # one above the other: side by side, each matrix would be too small to read
        o = ov[m]
        fig = figures.overlap_figure(o.matrix, o.class_names, order=main.order, chance=o.chance, k=o.k,
                                     sets=o.sets)
        figures.apply_style(fig, title=f"Top-{o.k} filter overlap · {service.model_label(m)} (chance {o.chance:.3f})"
                            if sel.compare else None,
                            caption=f"Reproduces Fig. 5 · {sel.layer} · {task.title} (SVMs trained on the train split)"
                                    + (f" · class order of {service.model_label(sel.model)}" if sel.compare else ""),
                            stamp=o.provenance.stamp(), presentation=pres)
        events[m] = show_figure(clickable(fig), f"ov_matrix_{'main' if m == sel.model else 'compare'}",
                                provenance=o.provenance, on_select="rerun", selection_mode="points", theme=None)
    for m in sel.models:
        p = new_click(events[m], f"ov_{m}")
        if p is not None and p.get("x") in names and p.get("y") in names:
            st.session_state[ikey], st.session_state[jkey] = names.index(p["y"]), names.index(p["x"])
            st.session_state["ov_model"] = m

    st.header("Filters shared by two classes")
    order = [int(i) for i in main.order]  # default pair: the first two classes of the clustered order
    for key, default in ((ikey, order[0]), (jkey, order[min(1, len(order) - 1)])):
        if st.session_state.get(key) not in range(len(names)):
            st.session_state[key] = default
    if st.session_state.get("ov_model") not in sel.models:
        st.session_state["ov_model"] = sel.model
    c1, c2, c3 = st.columns([2, 2, 3])
    classes = list(range(len(names)))  # fixed options: the clustered order changes with k
    i = c1.selectbox("Class i", classes, format_func=lambda c: names[c], key=ikey)
    j = c2.selectbox("Class j", classes, format_func=lambda c: names[c], key=jkey)
    model = c3.radio("Model", sel.models, format_func=service.model_label, horizontal=True, key="ov_model") \
        if sel.compare else sel.model
    shared = service.shared_filters(model, sel.task, sel.layer, i, j, k)
    r = ranked[model].ranking
    rank_i = {int(f): n + 1 for n, f in enumerate(r.ranking[i])}
    rank_j = {int(f): n + 1 for n, f in enumerate(r.ranking[j])}
    o = ov[model]
    st.markdown(f"**{len(shared)} of {k}** top-{k} filters shared by *{names[i]}* and *{names[j]}* "
                f"({len(shared) / k:.0%}; chance {o.chance:.0%}) · {service.model_label(model)} {sel.layer}")
    if len(shared):
        df = pd.DataFrame({"filter": shared,
                           f"rank (i: {names[i]})": [rank_i[int(f)] for f in shared],
                           f"|w| (i: {names[i]})": np.abs(r.weights[i, shared]).round(3),
                           f"rank (j: {names[j]})": [rank_j[int(f)] for f in shared],
                           f"|w| (j: {names[j]})": np.abs(r.weights[j, shared]).round(3)})
        show_table(df.sort_values(df.columns[1]), "ov_shared", provenance=o.provenance, hide_index=True,
                   width="stretch", caption=f"Top-{k} filters shared by {names[i]} and {names[j]} (Fig. 5)")
        st.caption("Rank: position of the filter when the class's filters are sorted by |w| (1 = most important).")
