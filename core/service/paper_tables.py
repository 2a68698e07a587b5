"""The paper's tables measured here: each task's own measure, Tables 1-4, 7 and 8 beside the paper's numbers.

:func:`task_metric` and :func:`task_ablation` measure a model on any task by its kind
(detection mAP, scene accuracy or linear mAP); :func:`paper_table` lays them out as the
paper's Tables 1, 2, 4, 7, 8 with the paper's figures in a reference column;
:func:`snapshot_table` (Table 3) and :func:`finetune_from_table` (Table 4) read the demo's
pretraining snapshots.
"""
from __future__ import annotations

from typing import Sequence

from core.demo import build as demo
from core.errors import DataMissingError, InputError
from core.store.extraction import Progress
from core.service.analyses import ablation, layer_map
from core.service.catalog import TaskSpec, checkpoint_series, demo_variants, layers_of, task, tasks
from core.service.detection_tasks import detection_map
from core.service.scene_tasks import scene_accuracy


def snapshot_table(task_id: str, layers: Sequence[str] | None = None, progress: Progress | None = None,
                   series: str | None = None):
    """Table 3: per-layer mAP (%) of each pretraining snapshot, no fine-tuning.

    The snapshots are the embedded demo's, or with ``series`` the checkpoints of that checkpoint-series
    model id (:func:`checkpoint_series`), indexed by their step. DataFrame indexed by iteration, one
    column per layer. ``progress`` counts the (snapshot, layer) pairs done and left.
    """
    import pandas as pd

    if series:
        run = checkpoint_series(series)
        if not run:
            raise InputError(f"{series} is not a checkpoint series: name a folder or a glob of one run's "
                             "checkpoints after the @ (e.g. timm:resnet50@runs/exp3/ckpt-*.pth)")
        its, snaps, index = [s for s, _ in run], [m for _, m in run], "checkpoint step"
    else:
        snaps = demo_variants()["snapshots"]
        if not snaps:
            raise DataMissingError("no pretraining snapshots: they exist for the embedded demo only")
        its, index = [int(m.rsplit("-", 1)[1]) for m in snaps], "pretraining iteration"
    layers = list(layers or layers_of(snaps[0]))
    rows, total = [], len(snaps) * len(layers)
    for i, (it, m) in enumerate(zip(its, snaps)):
        row = []
        for j, l in enumerate(layers):
            if progress:
                progress(i * len(layers) + j, total, f"snapshot {i + 1} of {len(snaps)} (step {it}): {l} mAP")
            row.append(100 * layer_map(m, task_id, l, progress)["map"])
        rows.append(row)
    if progress:
        progress(total, total, "snapshot table done")
    return pd.DataFrame(rows, index=pd.Index(its, name=index), columns=layers)


def finetune_from_table(task_id: str, layer: str = "fc7", progress: Progress | None = None):
    """Table 4: mAP (%) after fine-tuning from different pretraining snapshots (fixed ft length)."""
    import pandas as pd

    man = demo.manifest()
    final = int(man["config"]["pretrain"]["iterations"])
    ids = demo_variants()["ft_from"]
    its = [int(m.rsplit("-", 1)[1]) if "from" in m else final for m in ids]
    vals = [100 * layer_map(m, task_id, layer, progress)["map"] for m in ids]
    return pd.DataFrame({"pretraining iterations before fine-tuning": its, f"{layer} mAP (%)": vals,
                         "model": ids}).sort_values("pretraining iterations before fine-tuning")


def task_ablation(model_id: str, task_id: str, layer: str, seeds: Sequence[int] = (0, 1, 2),
                  progress: Progress | None = None) -> dict:
    """Tables 7-8 on any task: :func:`ablation` (linear classifiers), or for a detection task the
    detection mAP of each ablation (Table 8; one train/test split, so no ± and no CI).

    Same shape as :func:`ablation`: ``summary`` rows with ``ablation`` and ``mean`` (fraction).
    """
    t = task(task_id)
    if t.kind != "det":
        return ablation(model_id, task_id, layer, seeds=seeds, progress=progress)
    names = ["original", "binarize"] + (["sp-shuffle", "sp-max"] if layer.startswith("conv") else [])
    runs = {a: detection_map(model_id, task_id, layer, a, progress) for a in names}
    return {"summary": [{"ablation": a, "mean": r["map"], "std": float("nan")} for a, r in runs.items()], "runs": [],
            "provenance": runs["original"]["provenance"]}


def task_metric(model_id: str, task_id: str, layer: str = "fc7", progress: Progress | None = None) -> dict:
    """The task's own measure in percent: detection mAP, scene accuracy (± std) or linear mAP."""
    t = task(task_id)
    if t.kind == "det":
        return {"value": 100 * detection_map(model_id, task_id, layer, progress=progress)["map"], "std": None,
                "metric": "detection mAP (VOC07)"}
    if t.kind == "scene":
        r = scene_accuracy(model_id, task_id, layer, progress=progress)
        return {"value": 100 * r["mean"], "std": 100 * r["std"], "metric": "mean class accuracy"}
    return {"value": 100 * layer_map(model_id, task_id, layer, progress)["map"], "std": None, "metric": "mAP"}


# ---- the paper's tables, measured per task, with the paper's numbers as a reference column
#: The paper's figures (AlexNet pretrained on ImageNet; Agrawal et al. 2014), keyed by table and task.
PAPER_TABLES: dict[int, dict[str, dict]] = {
    1: {"SUN-CLS": {"scratch": "40.4 ± 0.2", "pre-train": "53.1 ± 0.2", "fine-tune": "56.8 ± 0.2"},
        "PASCAL-DET": {"scratch": "40.7", "pre-train": "45.5", "fine-tune": "54.1"},
        "PASCAL-DET+DATA": {"scratch": "52.3", "pre-train": "45.5", "fine-tune": "59.2"}},
    2: {"SUN-CLS": {"ft": "56.8 ± 0.2", "fc-ft": "56.2 ± 0.1"},
        "PASCAL-DET": {"ft": "54.1", "fc-ft": "53.3"},
        "PASCAL-DET+DATA": {"ft": "59.2", "fc-ft": "56.0"}},
    4: {"SUN-CLS": {"50k": "53.0 ± 0.2", "105k": "54.6 ± 0.1", "205k": "56.3 ± 0.2", "305k": "56.6 ± 0.2"},
        "PASCAL-DET": {"50k": "50.2", "105k": "52.6", "205k": "55.3", "305k": "55.4"}},
    7: {"PASCAL-CLS": {
        "conv1": {"original": "25.1 ± 0.5", "binarize": "17.7 ± 0.2", "sp-shuffle": "15.1 ± 0.3", "sp-max": "25.4 ± 0.5"},
        "conv2": {"original": "45.3 ± 0.5", "binarize": "43.0 ± 0.6", "sp-shuffle": "32.9 ± 0.7", "sp-max": "40.1 ± 0.3"},
        "conv3": {"original": "50.7 ± 0.6", "binarize": "47.2 ± 0.6", "sp-shuffle": "41.0 ± 0.8", "sp-max": "54.1 ± 0.5"},
        "conv4": {"original": "54.5 ± 0.7", "binarize": "51.5 ± 0.7", "sp-shuffle": "45.2 ± 0.8", "sp-max": "57.0 ± 0.5"},
        "conv5": {"original": "65.6 ± 0.6", "binarize": "60.8 ± 0.7", "sp-shuffle": "59.5 ± 0.4", "sp-max": "62.5 ± 0.6"},
        "fc6": {"original": "71.7 ± 0.3", "binarize": "71.5 ± 0.4"},
        "fc7": {"original": "74.1 ± 0.3", "binarize": "73.7 ± 0.4"}}},
    8: {"PASCAL-DET": {"conv5": {"original": "47.6", "binarize": "45.7", "sp-max": "25.4"}}},
}
PAPER_TABLE_TASKS = {1: ("scene", "det"), 2: ("scene", "det"), 4: ("scene", "det"), 7: ("cls", "det-gt", "scene", "det"),
                     8: ("det",)}


def paper_column(t: TaskSpec) -> str:
    """Header of the reference column: whose numbers they are."""
    return f"paper: AlexNet, ImageNet → {t.paper or t.kind} (%)"


def _task_of_kind(task_kind: str, task_id: str | None) -> TaskSpec:
    if task_id:
        return task(task_id)
    found = [t for t in tasks().values() if t.kind == task_kind]
    if not found:
        raise DataMissingError(f"no {task_kind} task is available: build the demo or register one")
    return found[0]


def _fmt(value: float, std: float | None) -> str:
    return f"{value:.1f}" if std is None else f"{value:.1f} ± {std:.1f}"


def _model_rows(n: int) -> list[tuple[str, str]]:
    g = demo_variants()
    if n == 1:
        names = {"demo:scratch": "scratch", "demo:pretrained": "pre-train", "demo:finetuned": "fine-tune"}
        return [(names[m], m) for m in g["regimes"]]
    if n == 2:
        names = {"demo:finetuned": "ft", "demo:fc-finetuned": "fc-ft"}
        return [(names[m], m) for m in g["ft_vs_fc"]]
    ids = g["ft_from"]
    final = int(demo.manifest()["config"]["pretrain"]["iterations"])
    its = {m: int(m.rsplit("-", 1)[1]) if "from" in m else final for m in ids}
    return [(f"{its[m]} iterations", m) for m in sorted(ids, key=its.get)]


def paper_table(n: int, task_kind: str, task_id: str | None = None, model_id: str = "demo:finetuned",
                layers: Sequence[str] | None = None, progress: Progress | None = None):
    """Table ``n`` (1, 2, 4, 7 or 8) measured on a task of ``task_kind``, beside the paper's numbers.

    Returns a DataFrame: ``setting`` (and ``model`` / ``layer``, ``ablation``), ``measured (%)``
    (the task's own metric, ``± std`` over splits where the protocol has them) and a reference
    column named by :func:`paper_column` ("—" where the paper reports nothing for this task).
    Tables 1, 2, 4 use fc7, as the paper; Table 4 aligns the demo's snapshots with the paper's
    50k ... 305k pretraining iterations by rank (shortest with shortest, final with final).
    """
    import pandas as pd

    if n not in PAPER_TABLE_TASKS:
        raise InputError(f"paper table {n} is not one of {sorted(PAPER_TABLE_TASKS)}")
    t = _task_of_kind(task_kind, task_id)
    if t.kind not in PAPER_TABLE_TASKS[n]:
        raise InputError(f"Table {n} is measured on {', '.join(PAPER_TABLE_TASKS[n])} tasks, not on '{t.id}' "
                         f"({t.kind}); pick another task")
    ref = PAPER_TABLES[n].get(t.paper, {})
    col = paper_column(t)
    if n in (1, 2, 4):
        rows = _model_rows(n)
        keys = list(ref) if n != 4 else list(PAPER_TABLES[4].get(t.paper, {}))
        out = []
        for i, (setting, m) in enumerate(rows):
            r = task_metric(m, t.id, "fc7", progress)
            if n == 4:
                k = keys[-1] if i == len(rows) - 1 and keys else (keys[i] if i < len(keys) else None)
                paper = f"{k}: {ref[k]}" if k else "—"
            else:
                paper = ref.get(setting, "—")
            out.append({"setting": setting, "model": m, "metric": r["metric"],
                        "measured (%)": _fmt(r["value"], r["std"]), col: paper})
        return pd.DataFrame(out)
    return _ablation_paper_table(n, t, model_id, layers, col, progress)


def _ablation_paper_table(n: int, t: TaskSpec, model_id: str, layers: Sequence[str] | None, col: str,
                          progress: Progress | None):
    import pandas as pd

    ref = PAPER_TABLES[n].get(t.paper, {})
    if t.kind == "det":
        layers = list(layers or ["conv5"] if n == 8 else layers or ["conv5", "fc7"])
        out = []
        for layer in layers:
            names = ["original", "binarize"] + (["sp-shuffle", "sp-max"] if layer.startswith("conv") else [])
            for a in names:
                v = 100 * detection_map(model_id, t.id, layer, a, progress)["map"]
                out.append({"layer": layer, "ablation": a, "measured (%)": _fmt(v, None),
                            col: ref.get(layer, {}).get(a, "—")})
        return pd.DataFrame(out)
    out = []
    for layer in layers or layers_of(model_id):
        res = ablation(model_id, t.id, layer, progress=progress)
        for r in res["summary"]:
            out.append({"layer": layer, "ablation": r["ablation"],
                        "measured (%)": _fmt(100 * r["mean"], 100 * r["std"]),
                        col: ref.get(layer, {}).get(r["ablation"], "—")})
    return pd.DataFrame(out)
