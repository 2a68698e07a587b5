"""Overview: model and data with provenance, layer shapes, cache state, per-layer mAP, headline findings."""
import pandas as pd
import streamlit as st

from core import service
from core.present import figures
from core.present import report
from ui.common import computing, guard, model_title, show_figure, show_table, sidebar

sel = sidebar(layer=False, default_task="demo-detgt")
task = service.task(sel.task)
st.title("Filterscope")
st.markdown(
    "What did the filters of a CNN learn, and what changed when it was fine-tuned? Filterscope reproduces "
    "Agrawal, Girshick & Malik, *Analyzing the Performance of Multilayer Neural Networks for Object "
    "Recognition* (ECCV 2014) on any model and dataset. The pages on the left each reproduce one part of the paper."
)

with guard("the model summary"):
    left, right = st.columns(2)
    info = service.model_info(sel.model)
    with left:
        st.subheader(model_title(sel.model))
        st.markdown(
            f"- **Architecture:** `{info['arch']}` · {info['num_classes']} outputs · input {info['input_size']} px\n"
            f"- **Weights:** {info['weights_source']}"
            + (f" · `{info['weights_path']}`" if info.get("weights_path") else "")
            + f"\n- **SHA-256:** `{(info.get('weights_sha256') or 'none')[:16]}…`"
        )
        shapes = service.layer_shapes(sel.model)
        show_table(pd.DataFrame([{"layer": k, "shape (C×H×W)": " × ".join(map(str, v)),
                                  "filters": v[0]} for k, v in shapes.items()]), "overview_shapes",
                   hide_index=True, width="stretch", caption=f"Layer shapes of {sel.model}")
    with right:
        st.subheader(task.title)
        tr, te = service.load_set(task.train), service.load_set(task.test)
        st.markdown(
            f"- **Paper analogue:** {task.paper or '—'}\n"
            f"- **Train:** `{task.train}` · {len(tr)} items\n"
            f"- **Test:** `{task.test}` · {len(te)} items · fingerprint `{te.fingerprint[:12]}`\n"
            f"- **Classes ({te.num_classes}):** {', '.join(te.class_names)}"
        )
        show_table(pd.DataFrame(service.cache_status(sel.model, sel.task)), "overview_cache", hide_index=True,
                   width="stretch", caption=f"Extracted layers of {sel.model} on {task.title}")

st.header("Per-layer linear classifier mAP")
st.caption("Least-squares linear SVM per class on each layer's features, trained on the task's train split and "
           "scored on its test split (the evaluation behind the paper's Tables 1-4).")
with guard("the per-layer mAP table"):
    ids = sel.models
    df = computing("Computing per-layer mAP…", service.layer_map_table, ids, sel.task)
    df.columns = [service.model_label(m) for m in ids]
    fig = figures.layer_map_figure(df.round(1))
    figures.apply_style(fig, title=None, caption=f"Tables 1-4 analogue · {task.title}",
                        presentation=st.session_state.get("presentation", False))
    provs = [report.layer_map_provenance(m, task) for m in ids]
    show_figure(fig, "overview_map", provenance=provs, table=df.round(1), table_caption="Per-layer mAP (%)")
    show_table(df.round(1), "overview_map_table", provenance=provs, width="stretch",
               caption=f"Per-layer linear-classifier mAP (%), Tables 1-4 analogue · {task.title}")

st.header("The paper's headline findings, checked on this model")
if service.task(sel.task).kind in ("det-gt", "scene", "other"):
    pre = service.pretrained_counterpart(sel.model, sel.compare)
    with guard("the findings"):
        rows = computing("Checking findings…", service.findings, sel.model, pre, sel.task)
        summary = service.findings_summary(rows)
        versus = (f"Comparing {service.model_label(sel.model)} with {service.model_label(pre)}" if pre else
                  f"{service.model_label(sel.model)} alone (turn on the comparison in the sidebar to name its "
                  "pretrained network)")
        st.caption(f"{versus} on {task.title}. {summary}. "
                   "Each verdict follows the rule written in `core/analysis/findings.py`; "
                   "`python -m core findings --json F` prints the same table.")
        mark = {True: "✅ holds", False: "❌ does not hold", None: "➖ not measured"}
        table = report.findings_table(rows).assign(verdict=[mark[r["holds"]] for r in rows])
        show_table(table[["verdict", "finding", "this model", "why not", "paper"]], "overview_findings",
                   hide_index=True, width="stretch",
                   provenance=report.findings_provenances(report.ReportRequest(model=sel.model, compare=pre,
                                                                               task=sel.task), task),
                   caption=f"The paper's headline findings on {sel.model}" + (f" vs. {pre}" if pre else "")
                           + f" · {task.title} · {summary}")
else:
    st.info("Findings are checked on single-label tasks (DET-GT crops, scenes, ImageFolder); pick one in the "
            "sidebar.")
