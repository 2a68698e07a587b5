"""SUN-CLS as a task: class-averaged scene accuracy over fixed partitions (Tables 1, 2, 4)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from core.analysis import scene_cls
from core.store.extraction import Progress
from core.service.catalog import TaskSpec, _require_kind, load_set, task
from core.service.feature_store import features
from core.service.provenance import _cached, _prov


@dataclass(frozen=True)
class SceneRequest:
    model: str
    task: str
    layer: str
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)


def _scene_partitions(t: TaskSpec, n: int) -> list[np.ndarray] | None:
    """SUN397's official partitions when the task's data has them, else None (seeded splits)."""
    from core.data.datasets import SUNImageSet, sun397_partitions

    data = load_set(t.train)
    if t.train == t.test and isinstance(data, SUNImageSet):
        parts = sun397_partitions(t.train.partition(":")[2], data)
        return parts or None
    return None


def scene_accuracy(model_id: str, task_id: str, layer: str = "fc7", seeds: Sequence[int] = range(5),
                   progress: Progress | None = None) -> dict:
    """SUN-CLS: class-averaged accuracy (fraction), mean ± std over fixed partitions.

    The task's train and test items are pooled and re-split 50/10/40 per seed (the paper's
    protocol), or SUN397's official Training_XX / Testing_XX lists are used when present.
    """
    t = task(task_id)
    _require_kind(t, ("scene",), "scene classification")
    sets = [t.train] if t.train == t.test else [t.train, t.test]
    feats = [features(model_id, s, layer, progress=progress) for s in sets]
    seeds = tuple(int(s) for s in seeds)

    def compute() -> dict:
        x = np.concatenate([np.asarray(f.array(), np.float32).reshape(len(f.array()), -1) for f in feats])
        y = np.concatenate([np.asarray(load_set(s).labels) for s in sets])
        parts = _scene_partitions(t, len(y))
        res = scene_cls.scene_classification(x, y, load_set(t.train).num_classes, seeds=seeds, partitions=parts)
        return {"mean": res.mean, "std": res.std, "accuracies": res.accuracies,
                "protocol": "official partitions" if parts else f"seeded 50/10/40 splits {list(seeds)}",
                "provenance": _prov(model_id, " + ".join(sets), layer, {"splits": len(res.accuracies)})}

    return _cached(SceneRequest(model_id, task_id, layer, seeds), [f.fingerprint for f in feats], compute)
