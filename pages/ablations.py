"""Sparsity (Table 6) and ablations of magnitude and location (Tables 7, 8)."""
import pandas as pd
import streamlit as st

from core import service
from core.present import figures
from ui.common import computing, guard, show_figure, show_table, sidebar

sel = sidebar(layer=False, default_task="demo-cls")  # every task: CLS, DET-GT, scenes, detection (Table 8)
task = service.task(sel.task)
pres = st.session_state.get("presentation", False)
st.title("Sparsity & ablations")
st.markdown(
    "**Table 6**: the percentage of non-zero responses per layer (mean ± std over test items). "
    "**Tables 7-8**: linear-classifier mAP when the features keep only *which* filters fired (binarize, "
    "x → 1[x > 0]), lose their spatial layout (sp-shuffle: one random permutation of locations per image, "
    "channel columns move together) or are collapsed to one value per filter (sp-max). Error bars: "
    "bootstrap 95% CI over test items; ± is the std over re-drawn train/test splits."
)

st.header("Sparsity per layer (Table 6)")
with guard("sparsity"):
    per_class = {service.model_label(m): computing(f"Sparsity of {service.model_label(m)}…", service.sparsity,
                                                   m, sel.task) for m in sel.models}
    fig = figures.sparsity_results_figure(per_class)
    provs = [r["provenance"] for r in per_class.values()]
    figures.apply_style(fig, title=None, caption=f"Reproduces Table 6 · {task.title} (test split)",
                        stamp=provs[-1].stamp(), presentation=pres)
    rows = [{**row, "variant": v} for v, r in per_class.items() for row in r["table"]]
    table = pd.DataFrame(rows).pivot(index="variant", columns="layer", values="mean")[service.layers_of(sel.model)]
    show_figure(fig, "sparsity", provenance=provs, table=table.round(1),
                table_caption="Table 6: non-zero responses (%)")
    show_table(table.round(1), "sparsity_table", provenance=provs, width="stretch",
               caption=f"Table 6: non-zero responses (%) · {task.title}")
    moot = sorted({r["layer"] for r in rows if not r.get("meaningful", True)})
    if moot:
        st.caption(f"Not meaningful for {', '.join(moot)}: their responses are not rectified (some are negative, "
                   "as GELU outputs and normalised residual streams), so exact zeros do not mark units that did "
                   "not fire; the table leaves them empty.")
    with st.expander("Per class (% non-zero)"):
        first = per_class[service.model_label(sel.model)]
        show_table(pd.DataFrame(first["per_class"], index=first["class_names"]).round(1), "sparsity_per_class",
                   provenance=first["provenance"], width="stretch", caption="Non-zero responses (%) per class")

st.header("Ablations (Tables 7, 8)")
layers = service.layers_of(sel.model)
chosen = st.multiselect("Layers", layers, default=[l for l in ("conv5", "fc7") if l in layers] or layers[-1:],
                        key="abl_layers")
seeds = st.slider("Re-drawn splits (error bars)", 1, 5, 3, key="abl_seeds")
with guard("the ablations"):
    results = {(service.model_label(m), layer): computing(
        f"Ablations of {service.model_label(m)} {layer} ({seeds} splits)…", service.task_ablation, m, sel.task,
        layer, seeds=tuple(range(seeds))) for m in sel.models for layer in chosen}
    rows = [{**r, "layer": layer, "variant": v} for (v, layer), res in results.items() for r in res["summary"]]
    if rows:
        res = list(results.values())[-1]  # its provenance stamps the figure and tables, as the last computed
        fig = figures.ablation_results_figure(results)
        figures.apply_style(fig, title=None, caption=f"Reproduces Tables 7-8 · {task.title}",
                            stamp=res["provenance"].stamp(), presentation=pres)
        show_figure(fig, "ablation", provenance=res["provenance"])
        df = pd.DataFrame(rows)
        df["mAP (%)"] = df.apply(lambda r: f"{100 * r['mean']:.1f}" + ("" if pd.isna(r.get("std")) else
                                                                       f" ± {100 * r['std']:.1f}"), axis=1)
        show_table(df.pivot_table(index=["variant", "layer"], columns="ablation", values="mAP (%)",
                                  aggfunc="first"), "ablation_table", provenance=res["provenance"], width="stretch",
                   caption=f"Tables 7-8: mAP (%) ± std over {seeds} re-drawn split(s) · {task.title}")
        n = 8 if task.kind == "det" else 7
        if task.kind in service.PAPER_TABLE_TASKS[n]:
            ref = computing(f"Table {n} beside the paper…", service.paper_table, n, task.kind, sel.task, sel.model,
                            chosen)
            show_table(ref, "ablation_paper", provenance=res["provenance"], hide_index=True, width="stretch",
                       caption=f"Table {n}: {sel.model} on {task.title} (measured) beside the paper's AlexNet "
                               "figures")
        else:
            st.caption(f"The paper has no Table {n} for a task like {task.title}: the measured table above "
                       "stands alone (the paper's figures are for PASCAL-CLS, PASCAL-DET-GT, SUN-CLS and "
                       "PASCAL-DET).")
