"""Probe: what each filter does with user-uploaded images, placed against the dataset.

For a model, a layer and a task (whose test split is the reference population) this
computes, per uploaded image: every filter's spatially max-pooled response (Sec. 4's
pooling), its spatial map, its percentile among the dataset's responses, the
strongest filters, the classes each filter signals (its best single-filter AP,
Sec. 4.1) and the model's own top predictions when its classifier matches a task.
Decoding of uploads lives in :mod:`core.data.imageio` (never crashes on bad files).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from core.service.analyses import filter_ap
from core.service.catalog import load_model, load_set, task
from core.service.feature_store import features, pooled
from core.store.cache import default_cache
from core.errors import InputError
from core.store.extraction import capture_layers
from core.data.imageio import decode_image, decode_many, image_fingerprint

__all__ = ["decode_image", "decode_many", "ProbeResult", "probe", "reference_stats", "filter_classes",
           "signalled_classes", "prepare", "sample_images", "dataset_views", "dataset_names", "predicts_task"]
Progress = Callable[[int, int, str], None]


@dataclass
class ProbeResult:
    """Responses of one image at one layer."""

    name: str
    image: np.ndarray  # uint8 [S, S, 3], the network's view (after resize/crop)
    responses: np.ndarray  # [F] spatial max (Sec. 4)
    maps: np.ndarray | None  # [F, H, W] for conv layers
    percentiles: np.ndarray  # [F] in [0, 100] among the reference set's pooled responses
    predictions: list[tuple[str, float]]
    fingerprint: str

    def strongest(self, k: int = 8, by: str = "percentile") -> np.ndarray:
        """Indices of the k strongest filters (by dataset percentile, ties by raw response)."""
        primary = self.percentiles if by == "percentile" else self.responses
        return np.lexsort((-self.responses, -primary))[:k]


@dataclass(frozen=True)
class ReferenceRequest:
    model: str
    task: str
    layer: str


def reference_stats(model_id: str, task_id: str, layer: str, progress: Progress | None = None) -> np.ndarray:
    """Sorted pooled responses ``[N, F]`` of the task's test split, for percentiles.

    Cached on disk under the features' fingerprint and memoised in the process, so a
    warm call costs a manifest read (the test set is pooled only on a cache miss).
    The features are extracted first when missing (``progress`` reports it).
    """
    t = task(task_id)
    fp = features(model_id, t.test, layer, progress=progress).fingerprint
    return _reference(model_id, task_id, layer, fp)


@lru_cache(maxsize=32)
def _reference(model_id: str, task_id: str, layer: str, fingerprint: str) -> np.ndarray:
    def compute() -> np.ndarray:
        x, _ = pooled(model_id, task(task_id).test, layer)
        return np.sort(x, axis=0).astype(np.float32)

    ref = default_cache().get_or_compute(ReferenceRequest(model_id, task_id, layer), [fingerprint], compute)
    ref.setflags(write=False)
    return ref


def percentiles(sorted_ref: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Percent of reference responses strictly below each value, plus half of the ties."""
    v = np.asarray(values, dtype=sorted_ref.dtype)[None, :]
    below = (sorted_ref < v).sum(0)
    upto = (sorted_ref <= v).sum(0)
    return 100.0 * (below + upto) / (2.0 * sorted_ref.shape[0])


def _network_view(img: Image.Image, lm) -> tuple[torch.Tensor, np.ndarray]:
    x = lm.spec.transform()(img.convert("RGB"))
    mean = torch.tensor(lm.spec.mean).view(3, 1, 1)
    std = torch.tensor(lm.spec.std).view(3, 1, 1)
    view = ((x * std + mean).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    return x, view


def _predictions(logits: torch.Tensor, class_names: Sequence[str], k: int = 5) -> list[tuple[str, float]]:
    if not class_names or logits.numel() != len(class_names):
        return []
    p = torch.softmax(logits.float(), 0)
    top = torch.topk(p, min(k, len(class_names)))
    return [(class_names[i], float(v)) for v, i in zip(top.values.tolist(), top.indices.tolist())]


@torch.inference_mode()
def probe(model_id: str, task_id: str, layer: str, images: Sequence[tuple[str, Image.Image]]) -> list[ProbeResult]:
    """Probe decoded images; one forward pass for the batch."""
    if not images:
        return []
    lm = load_model(model_id)
    ref = reference_stats(model_id, task_id, layer)
    views = [_network_view(img, lm) for _, img in images]
    x = torch.stack([v[0] for v in views])
    net = lm.net.to("cpu").eval()
    with capture_layers(lm, [layer], torch.float32) as outs:
        logits = net(x)
    acts = outs[layer].numpy()
    if acts.shape[1] != ref.shape[1]:
        raise InputError(f"layer {layer} has {acts.shape[1]} filters but the reference has {ref.shape[1]}")
    results = []
    for i, (name, img) in enumerate(images):
        a = acts[i]
        resp = a.reshape(a.shape[0], -1).max(1) if a.ndim == 3 else a
        results.append(ProbeResult(name, views[i][1], resp, a if a.ndim == 3 else None, percentiles(ref, resp),
                                   _predictions(logits[i], lm.spec.class_names), image_fingerprint(img)))
    return results


def filter_classes(model_id: str, task_id: str, layer: str, filt: int, k: int = 3) -> list[tuple[str, float]]:
    """The classes a filter signals best: its top single-filter APs (Sec. 4.1)."""
    return signalled_classes(model_id, task_id, layer, [filt], k)[int(filt)]


def signalled_classes(model_id: str, task_id: str, layer: str, filters: Sequence[int],
                      k: int = 3) -> dict[int, list[tuple[str, float]]]:
    """:func:`filter_classes` for several filters at once (one read of the AP table)."""
    res = filter_ap(model_id, task_id, layer)
    out = {}
    for f in filters:
        col = res.ap[:, int(f)]
        out[int(f)] = [(res.class_names[c], float(col[c])) for c in np.argsort(-col, kind="stable")[:k]]
    return out


def prepare(model_ids: Sequence[str], task_id: str, layer: str, progress: Progress | None = None) -> None:
    """Warm what a probe page needs: the reference statistics and the single-filter APs.

    Extracts the test split's features first when they are missing (the slow part,
    reported through ``progress``); afterwards probing is a forward pass.
    """
    for m in model_ids:
        reference_stats(m, task_id, layer, progress=progress)
        filter_ap(m, task_id, layer, progress=progress)


def _item_name(data, i: int) -> str:
    lab = data.labels[i]
    names = [data.class_names[c] for c in np.flatnonzero(lab)] if data.multilabel else [data.class_names[int(lab)]]
    return f"test #{i} ({', '.join(names[:2]) or 'no label'})"


def sample_images(task_id: str, n: int = 4) -> list[tuple[str, Image.Image]]:
    """A few images of the task's test split, spread over it, to probe without uploading.

    Named ``"test #<index> (<class>)"``; deterministic for a task.
    """
    data = load_set(task(task_id).test)
    idx = np.unique(np.linspace(0, len(data) - 1, min(n, len(data))).round().astype(int))
    return [(_item_name(data, int(i)), data.image(int(i)).convert("RGB")) for i in idx]


def dataset_views(model_id: str, task_id: str, indices: Sequence[int]) -> list[np.ndarray]:
    """The network's view (uint8 ``[S, S, 3]``) of test items, aligned with their activation maps."""
    lm = load_model(model_id)
    data = load_set(task(task_id).test)
    return [_network_view(data.image(int(i)), lm)[1] for i in indices]


def dataset_names(task_id: str, indices: Sequence[int]) -> list[str]:
    """``"test #<index> (<class>)"`` for test items of a task."""
    data = load_set(task(task_id).test)
    return [_item_name(data, int(i)) for i in indices]


def predicts_task(model_id: str, task_id: str) -> bool:
    """True when the model's classifier outputs exactly the task's classes (in order)."""
    names = load_model(model_id).spec.class_names
    return bool(names) and tuple(names) == tuple(load_set(task(task_id).test).class_names)
