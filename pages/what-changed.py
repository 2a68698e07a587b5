"""What changed between two networks: layer x layer CKA, every unit before vs after, snapshots (#31)."""
import textwrap

import numpy as np
import pandas as pd
import streamlit as st

from core import service
from core.present import change_figures, figures
from ui.common import (clickable, computing, custom_value, guard, memo_figure, new_click, preset, show_figure,
                       show_table, sidebar)

preset(layer="fc7")
sel = sidebar(task_kinds=("det-gt", "scene", "other"), default_task="demo-detgt")  # single-label: AuE per unit
task = service.task(sel.task)
pres = st.session_state.get("presentation", False)
after = sel.model
before = sel.compare or service.pretrained_counterpart(after)
st.title("What changed")
st.markdown(
    "Two networks that saw the same test items, **before** and **after** (by default the network the sidebar's "
    "model was fine-tuned from, or the sidebar's compare model). **Layers:** linear CKA (Kornblith et al. 2019) "
    "of every layer pair, and how far each layer moved (1 − CKA) beside Fig. 1's change of mean AuE. "
    "**Units:** every unit's selectivity, best class and how far its weights moved, before vs after; click a "
    "unit for its top test crops, entropy curves and best classes side by side. **Snapshots:** each pretraining "
    "snapshot's layers against the final network (Table 3's question, asked of representations).")
if before is None:
    st.info(f"{service.model_label(after)} has no known starting point: turn on *Compare with a second model* in "
            "the sidebar and pick the network before.")
    st.stop()
la, lb = service.model_label(before), service.model_label(after)
pool = st.radio("Conv maps in CKA", service.POOLS, horizontal=True, key="wc_pool",
                format_func=lambda p: {"flatten": "flattened (C·H·W)", "mean": "spatial mean",
                                       "max": "spatial max"}[p])
tab_layers, tab_units, tab_snaps = st.tabs(["Layers (CKA)", "Units", "Snapshots"])

with tab_layers, guard("the layer similarity"):
    cka = computing("Linear CKA of every layer pair…", service.cka_layers, before, after, sel.task, pool=pool)
    st.caption(f"{la} → {lb} · {task.title} (test split, {cka.items} items) · {cka.estimator}")
    show_figure(memo_figure(("wc_cka", before, after, sel.task, pool, pres, cka.provenance.stamp()), lambda: (
        figures.apply_style(change_figures.cka_heatmap_figure(cka.matrix, cka.layers_a, cka.layers_b, label_a=la,
                                                              label_b=lb, pool=pool, estimator=cka.estimator),
                            title=None, stamp=cka.provenance.stamp(), presentation=pres))),
                "wc_cka", provenance=cka.provenance,
                table=pd.DataFrame(cka.matrix, index=cka.layers_a, columns=cka.layers_b),
                table_caption=f"Linear CKA, {la} (rows) vs {lb} (columns)")
    diag = cka.diagonal()
    if len(diag):
        sa = {l: service.selectivity(before, sel.task, l).aue.mean() for l in diag["layer"]}
        sb = {l: service.selectivity(after, sel.task, l).aue.mean() for l in diag["layer"]}
        diag["Δ mean AuE"] = [sb[l] - sa[l] for l in diag["layer"]]
        show_figure(memo_figure(("wc_moved", before, after, sel.task, pool, pres, diag.to_json()), lambda: (
            figures.apply_style(change_figures.layer_change_figure(list(diag["layer"]), diag["moved"],
                                                                   diag["Δ mean AuE"]),
                                title=None, stamp=cka.provenance.stamp(), presentation=pres))),
                    "wc_moved", provenance=cka.provenance, table=diag.round(4),
                    table_caption="How much each layer moved: 1 − CKA and Δ mean AuE")
        show_table(diag.round(4), "wc_moved_table", provenance=cka.provenance, hide_index=True, width="content",
                   caption=f"Each layer's CKA with itself, {la} → {lb}")
    else:
        st.info("The two networks share no layer name, so there is no diagonal: read the matrix.")

with tab_units, guard("the unit-by-unit change"):
    layers = [l for l in service.layers_of(after) if l in service.layers_of(before)]
    if sel.layer not in layers:
        st.info(f"{sel.layer} is not a layer of both networks; pick one of {', '.join(layers)} in the sidebar.")
        st.stop()
    res = computing(f"Every unit of {sel.layer}, before and after…", service.unit_change, before, after, sel.task,
                    sel.layer)
    t = res.table
    if res.matched:
        weak = int((t["match correlation"] < service.WEAK_MATCH).sum())
        st.warning(f"These networks do not share unit identities (their filters are not near each other; median "
                   f"correlation of unit i with unit i: {res.identity_correlation:.2f}), so units are matched one to "
                   "one by the correlation of their "
                   f"pooled responses. {weak} of {len(t)} matches are weak (r < {service.WEAK_MATCH}): read those "
                   "pairs as different units, not as one unit that changed.")
    else:
        st.caption(f"Unit i before is unit i after (median response correlation {res.identity_correlation:.2f}).")
    measure = st.radio("Scatter", ["AuE (bits)", "best single-filter AP"], horizontal=True, key="wc_measure")
    cols = ("AuE before", "AuE after") if measure.startswith("AuE") else ("best AP before", "best AP after")
    has_w = bool(np.isfinite(t["weight change"]).any())
    colour = t["weight change"] if has_w else t["match correlation"]
    cname = "‖Δw‖/‖w‖" if has_w else "match correlation"
    fig = memo_figure(("wc_units", before, after, sel.task, sel.layer, measure, pres, res.provenance.stamp()), lambda: (
        clickable(figures.apply_style(change_figures.unit_scatter_figure(
            t[cols[0]], t[cols[1]], colour, t["unit"], measure=measure, colour_name=cname, layer=sel.layer,
            matched=res.matched), title=None, stamp=res.provenance.stamp(), presentation=pres))))
    event = show_figure(fig, "wc_units", provenance=res.provenance, on_select="rerun", selection_mode="points")
    p = new_click(event, "wc_units")
    if p is not None and p.get("curve_number") == 1:
        st.session_state["wc_unit"] = int(custom_value(p, 0))

    st.subheader("The units that changed most")
    by = st.selectbox("Changed most by", list(service.MEASURES), key="wc_by")
    k = st.slider("How many", 5, 50, 15, step=5, key="wc_k")
    top = service.most_changed(res, by, k)
    shown = top[["unit", "unit after", "status", "match correlation", "AuE before", "AuE after", "best class before",
                 "best AP before", "best class after", "best AP after", "non-zero % before", "non-zero % after",
                 "weight change"]].round(4)
    picked = show_table(shown, "wc_top", provenance=res.provenance, hide_index=True, on_select="rerun",
                        selection_mode="single-row",
                        caption=f"{sel.layer}: the {k} units of {la} → {lb} that changed most by {by}")
    rows = picked.selection.rows if picked is not None else []
    if rows and st.session_state.get("_seen_wc_top") != (by, k, rows[0]):
        st.session_state["_seen_wc_top"] = (by, k, rows[0])
        st.session_state["wc_unit"] = int(shown["unit"].iloc[rows[0]])
    st.caption("Click a point above or select a row to see the unit before and after.")

    alive = top[top["status"] == ""]      # by default the top unit that fires before and after
    unit = int(st.session_state.get("wc_unit", int((alive if len(alive) else top)["unit"].iloc[0])))
    row = t.iloc[unit]
    partner = int(row["unit after"])
    st.subheader(f"Unit #{unit} before · #{partner} after" if partner >= 0 else f"Unit #{unit}: unmatched")
    if partner >= 0:
        data = service.load_set(task.test)
        left, right = st.columns(2)
        for col, model, u, label in ((left, before, unit, la), (right, after, partner, lb)):
            with col:
                ap = service.filter_ap(model, sel.task, sel.layer).ap[:, u]
                best = np.argsort(-ap, kind="stable")[:3]
                st.markdown(f"**{label}** · AuE {service.selectivity(model, sel.task, sel.layer).aue[u]:.3f} bits · "
                            "best classes " + ", ".join(f"{data.class_names[c]} (AP {ap[c]:.2f})" for c in best))
                ec = service.entropy_curve(model, sel.task, sel.layer, u)

                def entropy(ec=ec, u=u, label=label):
                    f = figures.entropy_curve_figure(ec["thresholds"], ec["entropy"], filter_id=u, layer=sel.layer,
                                                     threshold=float(ec["thresholds"][len(ec["thresholds"]) // 2]))
                    return figures.apply_style(f, title=f"Entropy curve · {label}", presentation=pres, caption=textwrap.fill(
                        f"Entropy curve behind Fig. 1 (Appendix); area = AuE · {task.title}", 70),
                        stamp=textwrap.fill(res.provenance.stamp(), 80))

                show_figure(memo_figure(("wc_entropy", model, sel.task, sel.layer, u, pres), entropy),
                            f"wc_entropy_{'a' if model == before else 'b'}", provenance=res.provenance)

                def grid(model=model, u=u, label=label):
                    ta = service.top_activations(model, sel.task, sel.layer, u, n=8)
                    images = [np.asarray(data.image(int(i)).convert("RGB")) for i in ta["indices"]]
                    titles = [f"{data.class_names[int(data.labels[i])]} · {s:.3g}"
                              for i, s in zip(ta["indices"], ta["scores"])]
                    maps = list(ta["maps"]) if ta["maps"] is not None else None
                    f = figures.image_grid_figure(images, titles=titles, heatmaps=maps, cols=4)
                    return figures.apply_style(f, title=f"Top test items · {label}", presentation=pres, caption=textwrap.fill(
                        "Titles: true class · max response; overlay: the unit's response map", 70),
                        stamp=textwrap.fill(res.provenance.stamp(), 80))

                show_figure(memo_figure(("wc_grid", model, sel.task, sel.layer, u, pres), grid),
                            f"wc_grid_{'a' if model == before else 'b'}", provenance=res.provenance)

with tab_snaps, guard("the snapshot CKA"):
    run = service.checkpoint_series(after)
    if not run and not after.startswith("demo:"):
        st.info("Snapshots need the checkpoints of one training run: name them as a series in a model id (a folder "
                "or a glob after the @, e.g. `timm:resnet50@runs/exp3/ckpt-*.pth`), or pick a demo network.")
    else:
        snap = computing("CKA of every snapshot with the final network…", service.snapshot_cka, sel.task,
                         series=after if run else None, pool=pool)
        show_figure(memo_figure(("wc_snaps", sel.task, after if run else "demo", pool, pres, snap.to_json()), lambda: (
            figures.apply_style(change_figures.snapshot_cka_figure(snap), title=None, presentation=pres))),
                    "wc_snaps", table=snap.round(4),
                    table_caption="Linear CKA of each snapshot's layer with the final network")
        show_table(snap.round(4), "wc_snaps_table", width="stretch",
                   caption=f"Linear CKA of each {'checkpoint' if run else 'pretraining snapshot'}'s layer with the "
                           f"final network · {task.title} · {pool}")
