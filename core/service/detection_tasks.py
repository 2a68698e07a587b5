"""PASCAL-DET as a task: R-CNN detectors on region proposals, VOC 2007 AP (Tables 1, 2, 4, 8).

The demo's light detection setting and the real-data one (R-CNN's), the cached detection
result of a model on a task, its mAP, and one test image's detections for the Detections view.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from core.tasks import rcnn
from core.store import extraction
from core.store.cache import default_cache
from core.errors import InputError
from core.store.extraction import Progress
from core.service.catalog import _require_kind, load_detection, load_model, task
from core.service.provenance import _cached, _prov


#: The demo's detection setting: 126 windows per 64 px image, training on the first 200 train
#: images and evaluating on the first 400 test images, so one network and layer takes <= 2 min on
#: 2 CPU cores (deviation: the paper uses all of VOC 2007 trainval / test and selective search).
DEMO_DETECTION = rcnn.DetectionConfig(proposals="windows", max_train_images=200, max_test_images=400)
#: Real data (VOC): selective search "fast", 2000 proposals per image, every image, as R-CNN.
REAL_DETECTION = rcnn.DetectionConfig(proposals="selective-search", max_proposals=2000)


def detection_config(task_id: str, layer: str = "fc7", ablation: str = "original") -> rcnn.DetectionConfig:
    """The task's default detection setting with this layer and ablation."""
    t = task(task_id)
    base = DEMO_DETECTION if t.train.startswith("demo:") else REAL_DETECTION
    return replace(base, layer=layer, ablation=ablation)


@dataclass(frozen=True)
class DetectionRequest:
    model: str
    task: str
    config: rcnn.DetectionConfig


def detection_result(model_id: str, task_id: str, layer: str = "fc7", ablation: str = "original",
                     progress: Progress | None = None,
                     config: rcnn.DetectionConfig | None = None) -> dict:
    """PASCAL-DET: train R-CNN detectors on the task's train split, VOC 2007 AP on its test split.

    Cached under the request (model, task, :class:`~core.tasks.rcnn.DetectionConfig`) plus the
    model's weights and both splits' annotation fingerprints. Region features go through the
    feature store, so a second layer or ablation of the same proposals re-uses them.
    """
    t = task(task_id)
    _require_kind(t, ("det",), "detection")
    cfg = config or detection_config(task_id, layer, ablation)
    lm = load_model(model_id)
    tr, te = load_detection(t.train), load_detection(t.test)

    def compute() -> dict:
        r = rcnn.run_detection(lm, tr, te, cfg, progress=progress)
        params = {k: v for k, v in asdict_config(cfg).items() if k in ("proposals", "ablation", "max_train_images",
                                                                          "max_test_images", "mining_rounds")}
        return {"map": r.map, "ap": r.ap, "class_names": r.class_names, "result": r,
                "provenance": _prov(model_id, f"{t.train} -> {t.test}", cfg.layer, params)}

    fps = [extraction.model_key(lm), tr.fingerprint, te.fingerprint]
    return _cached(DetectionRequest(model_id, task_id, cfg), fps, compute)


def asdict_config(cfg: rcnn.DetectionConfig) -> dict:
    """A detection configuration as a plain dict (for provenance records and tables)."""
    from dataclasses import asdict

    return asdict(cfg)


def detection_map(model_id: str, task_id: str, layer: str = "fc7", ablation: str = "original",
                  progress: Progress | None = None) -> dict:
    """Detection mAP (fraction), per-class AP and provenance (Tables 1, 2, 4, 8)."""
    r = detection_result(model_id, task_id, layer, ablation, progress)
    return {"map": r["map"], "ap": r["ap"], "class_names": r["class_names"], "provenance": r["provenance"],
            "stats": r["result"].stats}


def is_detection_cached(model_id: str, task_id: str, layer: str = "fc7", ablation: str = "original") -> bool:
    """Whether :func:`detection_map` would answer from the cache (pages show progress otherwise)."""
    t = task(task_id)
    lm = load_model(model_id)
    tr, te = load_detection(t.train), load_detection(t.test)
    req = DetectionRequest(model_id, task_id, detection_config(task_id, layer, ablation))
    return default_cache().contains(req, [extraction.model_key(lm), tr.fingerprint, te.fingerprint])


def detection_images(task_id: str) -> int:
    """How many test images the task's detection evaluation covers."""
    t = task(task_id)
    n = len(load_detection(t.test).images)
    cap = detection_config(task_id).max_test_images
    return min(n, cap) if cap else n


def detections(model_id: str, task_id: str, image_index: int, layer: str = "fc7", ablation: str = "original",
               per_class: int = 3, min_score: float | None = -1.0, progress: Progress | None = None) -> dict:
    """One test image with its top detections per class and its ground-truth boxes (Detections view).

    ``min_score`` -1 keeps detections on or above the SVM margin (R-CNN's hard-negative threshold).
    """
    t = task(task_id)
    n = detection_images(task_id)
    if not 0 <= int(image_index) < n:
        raise InputError(f"image index {image_index} is out of range: the evaluation covers test images 0..{n - 1}")
    res = detection_result(model_id, task_id, layer, ablation, progress)
    te = load_detection(t.test)
    m = te.image_index == int(image_index)
    gt = [{"class": int(c), "class_name": te.class_names[int(c)], "box": tuple(float(v) for v in b),
           "difficult": bool(d)} for b, c, d in zip(te.boxes[m], te.labels[m], te.difficult[m])]
    return {"image": np.asarray(te.images.image(int(image_index))), "ground_truth": gt,
            "detections": rcnn.image_detections(res["result"], int(image_index), per_class, min_score),
            "class_names": te.class_names, "map": res["map"], "provenance": res["provenance"], "num_images": n}
