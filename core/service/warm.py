"""Warming the cache: the analyses every page asks for by default, computed ahead."""
from __future__ import annotations

from typing import Any, Callable, Sequence

from core.store.extraction import Progress
from core.service.analyses import ablation, filter_ap, filters_needed, layer_map, selectivity, sparsity
from core.service.catalog import demo_variants, layers_of, models, task, tasks
from core.service.compare import cka_layers, snapshot_cka, unit_change
from core.service.detection_tasks import detection_map
from core.service.feature_store import extract_all
from core.service.headline_findings import findings


def warm_plan(tasks_to_warm: Sequence[str] = ("demo-detgt", "demo-cls")) -> list[tuple[str, Callable[[], Any]]]:
    """The analyses every page asks for by default, as ``(label, call)`` steps, cheapest
    first: what :func:`warm_demo` computes so that each page opens warm.

    Features are extracted for the main demo models on every warmed task; the
    pretraining snapshots only on the image-level task (Table 3 is PASCAL-CLS).
    """
    groups = demo_variants()
    main_models = [m for m in ("demo:finetuned", "demo:pretrained") if m in models()]
    regimes = list(dict.fromkeys(main_models + groups["regimes"] + groups["ft_vs_fc"] + groups["ft_from"]))
    cls_task = "demo-cls" if "demo-cls" in tasks_to_warm else tasks_to_warm[0]
    steps: list[tuple[str, Callable[[], Any]]] = []
    for t in tasks_to_warm:
        spec = task(t)
        for m in regimes + (groups["snapshots"] if t == cls_task else []):
            for split in (spec.train, spec.test):
                steps.append((f"features {m} {split}",
                              lambda m=m, split=split: extract_all(m, split, layers_of(m))))
    for m in main_models:
        for l in layers_of(m):
            steps.append((f"selectivity {m} {l}", lambda m=m, l=l: selectivity(m, "demo-detgt", l)))
        steps.append((f"filter AP {m}", lambda m=m: filter_ap(m, "demo-detgt", "conv5")))
        steps.append((f"filters needed {m}", lambda m=m: filters_needed(m, "demo-detgt", "conv5")))
        for t in tasks_to_warm:
            steps.append((f"sparsity {m} {t}", lambda m=m, t=t: sparsity(m, t)))
    if main_models:
        ft = main_models[0]
        steps.append(("ablations conv5 (findings)", lambda: ablation(ft, "demo-detgt", "conv5", seeds=(0,))))
        for l in ("conv5", "fc7"):
            steps.append((f"ablations {l}", lambda l=l: ablation(ft, cls_task, l, seeds=(0, 1, 2))))
    for m in regimes + groups["snapshots"]:
        for l in layers_of(m):
            steps.append((f"layer mAP {m} {l} {cls_task}", lambda m=m, l=l: layer_map(m, cls_task, l)))
    for m in main_models:
        for t in tasks_to_warm:
            if t != cls_task:
                for l in layers_of(m):
                    steps.append((f"layer mAP {m} {l} {t}", lambda m=m, l=l, t=t: layer_map(m, t, l)))
    if main_models == ["demo:finetuned", "demo:pretrained"] and "demo-detgt" in tasks_to_warm:
        steps.append(("headline findings", lambda: findings(cls_task=cls_task)))
        # What changed: its defaults (the findings computed the flattened CKA matrix already)
        for l in ("fc7", "conv5"):
            steps.append((f"unit change {l}", lambda l=l: unit_change("demo:pretrained", "demo:finetuned",
                                                                      "demo-detgt", l)))
        if groups["snapshots"]:
            steps.append(("snapshot CKA", lambda: snapshot_cka("demo-detgt")))
        steps.append(("layer CKA (pooled)", lambda: [cka_layers("demo:pretrained", "demo:finetuned", "demo-detgt",
                                                                pool=p) for p in ("mean", "max")]))
    if "demo:finetuned" in models() and "demo-det" in tasks():
        steps.append(("detections fc7 (the Detections page)",
                      lambda: detection_map("demo:finetuned", "demo-det", "fc7", "original")))
    return steps


def warm_demo(progress: Progress | None = None, tasks_to_warm: Sequence[str] = ("demo-detgt", "demo-cls")) -> None:
    """Pre-compute the standard analyses of the demo (:func:`warm_plan`) so every page opens warm."""
    steps = warm_plan(tasks_to_warm)
    for i, (label, fn) in enumerate(steps):
        if progress:
            progress(i, len(steps), f"caching analyses: {label}")
        fn()
    if progress:
        progress(len(steps), len(steps), "caching analyses: done")
