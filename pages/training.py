"""Training dynamics: pretraining snapshots (Table 3, Fig. 2), regimes (Table 1), ft vs fc-ft (Table 2), Table 4."""
import hashlib

import streamlit as st

from core import service
from core.present import figures
from core.present import report
from ui.common import computing, guard, memo_figure, show_figure, show_table, sidebar

sel = sidebar(layer=False, compare=False, default_task="demo-cls")
task = service.task(sel.task)
pres = st.session_state.get("presentation", False)
st.title("Training dynamics")
st.markdown("How pretraining length, fine-tuning and training from scratch shape each layer "
            "(paper Sec. 3). mAP: per-class linear classifiers on each layer's features, train → test split.")
run = service.checkpoint_series(sel.model)
if not sel.model.startswith("demo:") and not run:
    st.info(f"Training dynamics needs the checkpoints of a training run (Table 3, Fig. 2): "
            f"{service.model_label(sel.model)} is one network. Name the run's checkpoints as a series in a model id, "
            "a folder or a glob after the @, ordered by the step number in their names: "
            "`timm:resnet50@runs/exp3/ckpt-*.pth` or `py:mynet.py:build@runs/exp3/` (sidebar's Your models and "
            "data box, or FILTERSCOPE_MODELS). Tables 1, 2 and 4 also need networks trained from scratch and "
            "fine-tuned in fc6-fc7 only: the embedded demo has them all (pick one of its models in the sidebar).")
    st.stop()
steps = dict(run)  # step -> the checkpoint's model id (a series of the user's own run)
groups = service.demo_variants() if not run else {}


def _style(fig, caption, stamp=None):
    figures.apply_style(fig, title=None, caption=f"{caption} · {task.title}", stamp=stamp, presentation=pres)
    return fig


st.header("Pretraining snapshots (Table 3, Fig. 2)" if not run else
          f"Checkpoints of {service.model_label(sel.model)} (Table 3, Fig. 2)")
with guard("the snapshot table"):
    snap = computing(f"Per-layer mAP of every {'checkpoint' if run else 'snapshot'}…", service.snapshot_table,
                     sel.task, series=sel.model if run else None).round(1)
    # figures are kept between reruns (memo_figure), keyed by the numbers they draw
    show_figure(memo_figure(("snapshots", sel.task, pres, snap.to_json()),
                            lambda: _style(figures.snapshot_figure(snap), "Reproduces Table 3")), "snapshots",
                table=snap, table_caption="Table 3: mAP (%) of pretraining snapshots")
    show_table(snap, "snapshots_table", width="stretch",
               caption=f"Table 3 analogue: per-layer mAP (%) of each pretraining snapshot · {task.title}")
    its = list(snap.index)
    it = st.select_slider("Checkpoint (step)" if run else "Snapshot (pretraining iteration)", options=its,
                          value=its[-1], key="snap_it")
    acc = None if run else service.demo_summary()["source_val_accuracy_by_snapshot"].get(str(it))
    c1, c2 = st.columns([3, 2])
    with c1:
        w = service.first_layer_weights(steps[it] if run else f"demo:snapshot-{it:05d}")
        fig = memo_figure(("conv1_grid", it, sel.task, pres, hashlib.sha256(w.tobytes()).hexdigest()),
                          lambda: _style(figures.filter_grid_figure(w, title=f"conv1 filters after {it} iterations"),
                                         "Reproduces Fig. 2"))
        show_figure(fig, "conv1_grid")
    with c2:
        if not run:
            st.metric("Source-task validation accuracy", f"{100 * acc:.1f}%" if acc is not None else "—")
        show_table(snap.loc[[it]].T.rename(columns={it: "mAP (%)"}), "snapshot_it_table", width="stretch",
                   caption=f"mAP (%) per layer after {it} pretraining iterations")

def _compare_table(header: str, ids: list[str], table: str, key: str) -> None:
    """Per-layer mAP of several models as a figure and a table."""
    st.header(header)
    with guard(f"the {table} analogue"):
        df = computing(f"Per-layer mAP for {table}…", service.layer_map_table, ids, sel.task).round(1)
        df.columns = [service.model_label(m) for m in ids]
        provs = [report.layer_map_provenance(m, task) for m in ids]
        fig = memo_figure((key, sel.task, pres, df.to_json()),
                          lambda: _style(figures.layer_map_figure(df), f"Reproduces {table}"))
        show_figure(fig, key, provenance=provs, table=df, table_caption=f"{table} analogue: per-layer mAP (%)")
        show_table(df, f"{key}_table", provenance=provs, width="stretch",
                   caption=f"{table} analogue: per-layer mAP (%) · {task.title}")


if run:
    st.info("Tables 1, 2 and 4 compare networks trained in different ways (from scratch, fine-tuned fully or in "
            "fc6-fc7 only, fine-tuned after shorter pretraining): one run's checkpoints do not hold them. The "
            "embedded demo has them: pick one of its models in the sidebar.")
    st.stop()
_compare_table("Scratch vs pretrained vs fine-tuned (Table 1)", groups["regimes"], "Table 1", "regimes")
_compare_table("Fine-tuning all layers vs fc6-fc7 only (Table 2)", groups["ft_vs_fc"], "Table 2", "ftfc")

st.header("Longer pretraining before fine-tuning (Table 4)")
with guard("the Table 4 analogue"):
    layer = st.selectbox("Layer", service.layers_of("demo:finetuned"), index=6, key="t4_layer")
    t4 = computing("Fine-tuned from each snapshot…", service.finetune_from_table, sel.task, layer)
    show_table(t4, "t4_table", hide_index=True, width="stretch",
               caption=f"Table 4 analogue: {layer} mAP (%) after fine-tuning from each snapshot")

if task.kind in ("det", "scene"):
    metric = "detection mAP (R-CNN, VOC 2007 AP)" if task.kind == "det" else "class-averaged accuracy, mean ± std over splits"
    st.header(f"Tables 1, 2, 4 on this task's own measure, beside the paper ({task.paper})")
    st.markdown(f"fc7 features; {metric}. The reference column is the paper's AlexNet (ImageNet → {task.paper}).")
    heavy = task.kind == "det"
    run_tables = st.toggle("Compute the detection tables (about 2 minutes per network on 2 CPU cores, then cached)",
                   key="td_paper_det") if heavy else True
    for n in (1, 2, 4) if run_tables else ():
        with guard(f"Table {n} beside the paper"):
            ref = computing(f"Table {n} on {task.title}…", service.paper_table, n, task.kind, sel.task)
            show_table(ref, f"paper_table_{n}", hide_index=True, width="stretch",
                       caption=f"Table {n}: measured on {task.title} beside the paper's AlexNet figures")

with st.expander("Training loss curves and the networks' own accuracy"):
    curves = service.training_curves()
    summary = service.demo_summary()  # the curves change only with a new build: its profile and time key them
    show_figure(memo_figure(("loss_curves", pres, summary["profile"], summary["built"]),
                            lambda: figures.apply_style(figures.training_curves_figure(curves), title=None,
                                                        presentation=pres)), "loss_curves")
    st.write({"source val accuracy (pretrained)": summary["source_val_accuracy"],
              "target DET-GT test accuracy": summary["finetune"],
                  "target DET-GT test mAP (own classifier)": summary["finetune_map"], "build seconds": summary["seconds"]})
