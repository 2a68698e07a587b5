"""Detections: one test image with its top R-CNN detections per class and scores, beside the ground truth."""
import pandas as pd
import streamlit as st

from core import service
from core.present import figures
from ui.common import computing, guard, preset, show_figure, show_table, sidebar

preset(layer="fc7")
sel = sidebar(compare=False, task_kinds=("det",), default_task="demo-det")
pres = st.session_state.get("presentation", False)
st.title("Detections")
st.markdown(
    "A sanity view of the **PASCAL-DET** pipeline (R-CNN without bounding-box regression, as in the paper): "
    "region proposals → warped crops (16 px context) → the chosen layer's features → one linear SVM per class "
    "(hard-negative mining) → class-wise NMS at IoU 0.3. Pick a test image to see its top detections per class "
    "(solid, with SVM scores) next to its ground-truth boxes (dotted). AP: VOC 2007 (11-point)."
)

with guard("the detections"):
    task = service.task(sel.task)
    conv = sel.layer.startswith("conv")
    options = ["original", "binarize"] + (["sp-shuffle", "sp-max"] if conv else [])
    c1, c2, c3 = st.columns([2, 1, 1])
    ablation = c1.selectbox("Feature ablation (Tables 7-8)", options, key=f"det_ablation_{conv}",
                            help="Applied to every region's features before the SVMs; sp-* need a conv layer.")
    per_class = c2.number_input("Detections per class", 1, 10, 2, key="det_per_class")
    min_score = c3.number_input("Minimum SVM score", -5.0, 5.0, -1.0, step=0.25, key="det_min_score",
                                help="-1 is the SVM margin (R-CNN's hard-negative threshold).")
    # the progress box appears only when something is computed (proposals, region features, SVMs)
    res = computing(f"Training and evaluating detectors on {sel.layer} ({ablation})…", service.detection_map,
                    sel.model, sel.task, sel.layer, ablation)
    n = service.detection_images(sel.task)
    image = int(st.number_input(f"Test image (0-{n - 1})", 0, n - 1, 0, key="det_image"))
    view = service.detections(sel.model, sel.task, image, sel.layer, ablation, per_class=int(per_class),
                              min_score=float(min_score))
    left, right = st.columns([3, 2])
    with left:
        fig = figures.detections_figure(view["image"], view["detections"], view["ground_truth"],
                                        title=f"Test image {image}: top detections")
        figures.apply_style(fig, title=None, caption=f"PASCAL-DET analogue · {task.title} · {sel.layer} · {ablation}",
                            stamp=view["provenance"].stamp(), presentation=pres)
        show_figure(fig, "detections", provenance=view["provenance"], paper_ref="PASCAL-DET")
    with right:
        st.metric("Detection mAP (VOC 2007)", f"{100 * res['map']:.1f}%")
        rows = [{"class": d["class_name"], "score": round(d["score"], 3),
                 "box (x1, y1, x2, y2)": ", ".join(f"{v:.0f}" for v in d["box"])} for d in view["detections"]]
        st.caption("Detections on this image")
        show_table(pd.DataFrame(rows, columns=["class", "score", "box (x1, y1, x2, y2)"]), "detections_table",
                   provenance=view["provenance"], caption=f"Detections on test image {image}", hide_index=True,
                   width="stretch")
        gt = [{"class": g["class_name"], "difficult": g["difficult"],
               "box (x1, y1, x2, y2)": ", ".join(f"{v:.0f}" for v in g["box"])} for g in view["ground_truth"]]
        st.caption("Ground truth")
        show_table(pd.DataFrame(gt, columns=["class", "difficult", "box (x1, y1, x2, y2)"]), "ground_truth_table",
                   provenance=view["provenance"], caption=f"Ground truth of test image {image}", hide_index=True,
                   width="stretch")
    fig = figures.detection_ap_figure(res["ap"], res["class_names"])
    figures.apply_style(fig, title=None, caption=f"PASCAL-DET analogue · {task.title} · {sel.layer} · {ablation}",
                        stamp=res["provenance"].stamp(), presentation=pres)
    ap_table = pd.DataFrame({"class": res["class_names"], "AP (%)": [100 * v for v in res["ap"]]})
    show_figure(fig, "detection_ap", provenance=res["provenance"], paper_ref="Tables 1, 8 (PASCAL-DET)",
                table=ap_table, table_caption="Per-class detection AP (VOC 2007, 11-point)")
    s = res["stats"]
    st.caption(f"{s['train_images']} training images ({s['train_regions']} regions), {s['test_images']} test images "
               f"({s['test_regions']} regions), feature dimension {s['feature_dim']}; computed in "
               f"{s['seconds']['total']:.0f} s.")
