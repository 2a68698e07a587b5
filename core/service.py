"""The engine's front door: catalog of models and tasks, and every analysis cached on disk.

Pages call only these functions (widgets -> service -> figures). Each analysis is a
frozen request dataclass; its result is cached in the disk cache under the request's
hash plus the fingerprints of the stored features it reads, so a result is
recomputed exactly when its inputs change. Every result carries provenance.

Identifiers
-----------
model ids:   ``demo:pretrained``, ``demo:finetuned``, ``demo:fc-finetuned``, ``demo:scratch``,
             ``demo:snapshot-00050``, ``tv:alexnet`` (torch hub cache or random),
             ``tv:alexnet@/path/weights.pth`` (a local state dict).
task ids:    ``demo-detgt`` (box crops, paper's PASCAL-DET-GT), ``demo-cls`` (whole images,
             multi-label, PASCAL-CLS), ``demo-scene`` (SUN-CLS analogue), and real data
             registered with :func:`register_task` (e.g. VOC 2007 from a local VOCdevkit).
"""
from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from core import analysis, demo, extraction
from core.cache import default_cache
from core.config import cache_root, code_version
from core.datasets import ImageSet, load_dataset
from core.errors import DataMissingError, InputError
from core.models import LoadedModel, build_torchvision

Progress = Callable[[int, int, str], None]
#: Per-layer mAP tables (Tables 1-4, 7, 8) use least-squares SVMs solved in closed form:
#: hinge-loss LinearSVC on flattened conv maps (8k-60k dims) is 100x slower. Deviation
#: from the paper's hinge-loss SVMs; Fig. 4 / Table 5 keep LinearSVC as the paper.
TABLE_CLASSIFIER = analysis.SVMConfig(method="lssvm")


# --------------------------------------------------------------------------- catalog
@dataclass(frozen=True)
class TaskSpec:
    """A train/test pair of image sets with one label space."""

    id: str
    title: str
    train: str
    test: str
    kind: str  # "det-gt" | "cls" | "scene" | "other"
    paper: str = ""


_TASKS: dict[str, TaskSpec] = {}
_LOCK = threading.RLock()


def register_task(task: TaskSpec) -> None:
    with _LOCK:
        _TASKS[task.id] = task


def _demo_built() -> bool:
    """:func:`demo.is_built`, remembered while the demo's manifest file is unchanged (it
    hashes the whole demo config, and pages ask many times per run)."""
    path = demo.demo_dir() / "manifest.json"
    try:
        info = path.stat()
    except OSError:
        return False
    return _demo_built_at(str(path), info.st_mtime_ns, info.st_size, info.st_ino)


@lru_cache(maxsize=8)
def _demo_built_at(path: str, mtime_ns: int, size: int, inode: int) -> bool:
    return demo.is_built()


def tasks() -> dict[str, TaskSpec]:
    """Every known task: the demo's (when built) plus registered real-data tasks."""
    configure_from_env()
    out = {t.id: t for t in demo.demo_tasks()} if _demo_built() else {}
    with _LOCK:
        out.update(_TASKS)
    return {k: TaskSpec(**v) if isinstance(v, dict) else v for k, v in out.items()}


def task(task_id: str) -> TaskSpec:
    all_tasks = tasks()
    if task_id not in all_tasks:
        if task_id.startswith("demo") and not _demo_built():
            raise DataMissingError("the embedded demo is not built yet: run `make run` or `python -m core demo`.")
        raise InputError(f"unknown task '{task_id}'; known: {', '.join(all_tasks) or 'none'}")
    return all_tasks[task_id]


def models() -> dict[str, str]:
    """Model id -> human title: the demo's first, then the registered real models
    (:func:`register_model`, ``$FILTERSCOPE_MODELS``)."""
    configure_from_env()
    out = demo.demo_models() if _demo_built() else {}
    with _LOCK:
        out.update(_MODELS)
    return out


#: Short names users type for a model: ``demo`` is the demo network every page opens on.
MODEL_ALIASES = {"demo": "demo:finetuned"}


def resolve_model(model_id: str) -> str:
    """The model id behind what a user typed (an alias of :data:`MODEL_ALIASES` or an id).

    Demo ids and aliases are checked against the built demo's networks; ``tv:`` ids are
    returned as they are (their weights are checked when loaded). Raises InputError
    listing the valid ids otherwise.
    """
    model_id = MODEL_ALIASES.get(model_id, model_id)
    if model_id.startswith("tv:"):
        return model_id
    known = models()
    if model_id not in known:
        listing = ", ".join([*(a for a, m in MODEL_ALIASES.items() if m in known), *known]) or "none (build the demo)"
        raise InputError(f"unknown model id '{model_id}'; valid ids: {listing}, or tv:<arch>[@<weights path>]")
    return model_id


@lru_cache(maxsize=32)
def load_model(model_id: str) -> LoadedModel:
    """Build a model from its id (cached per process)."""
    if model_id.startswith("demo:"):
        return demo.load_demo_model(model_id)
    if model_id.startswith("tv:"):
        arch, _, path = model_id[3:].partition("@")
        return build_torchvision(arch, weights=path or None)
    raise InputError(f"unknown model id '{model_id}'; use demo:<variant> or tv:<arch>[@<weights path>]")


@lru_cache(maxsize=64)
def load_set(dataset_id: str) -> ImageSet:
    return load_dataset(dataset_id)


def model_info(model_id: str) -> dict:
    lm = load_model(model_id)
    return {"id": model_id, **lm.spec.describe()}


# --------------------------------------------------------------------------- features
@dataclass(frozen=True)
class ComputeBackend:
    """Where missing features are extracted: ``local`` (default) or ``ray``.

    For Ray, ``address`` is a running cluster (``auto``, ``host:port``) or None for a
    local Ray on this machine's CPUs; ``num_actors`` defaults to one per GPU or CPU.
    """

    name: str = "local"
    address: str | None = None
    num_actors: int | None = None


_BACKEND: contextvars.ContextVar[ComputeBackend] = contextvars.ContextVar("compute_backend",
                                                                          default=ComputeBackend())


@contextlib.contextmanager
def compute_backend(name: str = "local", address: str | None = None, num_actors: int | None = None):
    """Extract features needed inside the ``with`` block on this backend (this thread/context)."""
    token = _BACKEND.set(ComputeBackend(name, address or None, num_actors))
    try:
        yield
    finally:
        _BACKEND.reset(token)


def _extract(model_id: str, dataset_id: str, layers: Sequence[str], device: str, progress: Progress | None,
             backend: ComputeBackend | str | None) -> dict[str, extraction.LayerFeatures]:
    b = ComputeBackend(backend) if isinstance(backend, str) else (backend or _BACKEND.get())
    if b.name == "local":
        return extraction.extract(load_model(model_id), load_set(dataset_id), list(layers),
                                  device=device, progress=progress)
    if b.name == "ray":
        from core import distributed
        return distributed.extract_ray(load_model(model_id), load_set(dataset_id), list(layers), address=b.address,
                                       num_actors=b.num_actors, device=device, progress=progress)
    raise InputError(f"unknown compute backend '{b.name}'; use local or ray")


def features(model_id: str, dataset_id: str, layer: str, *, progress: Progress | None = None,
             device: str = "auto", backend: ComputeBackend | str | None = None) -> extraction.LayerFeatures:
    """Stored features of one layer (extracted on first use, on ``backend`` or the context's)."""
    lm, data = load_model(model_id), load_set(dataset_id)
    stored = _stored_features(lm, data, layer)
    if stored is not None:
        return stored
    with _extract_lock(model_id, dataset_id):
        return _extract(model_id, dataset_id, [layer], device, progress, backend)[layer]


_OPENED: dict[str, tuple[tuple, extraction.LayerFeatures]] = {}


def _file_signature(npy) -> tuple | None:
    try:
        a, b = npy.stat(), npy.with_suffix(".json").stat()
    except OSError:
        return None
    return a.st_mtime_ns, a.st_size, a.st_ino, b.st_mtime_ns, b.st_size, b.st_ino


def _features_dir(lm: LoadedModel, data: ImageSet):
    spec = lm.spec
    key = (str(cache_root()), spec.name, spec.arch, spec.weights.sha256, spec.input_size,
           tuple(spec.mean), tuple(spec.std), spec.resize, data.name, data.fingerprint)
    with _LOCK:
        found = _DIRS.get(key)
    if found is None:
        found = extraction.features_dir(lm, data)
        with _LOCK:
            _DIRS[key] = found
    return found


_DIRS: dict[tuple, Any] = {}


def _stored_features(lm: LoadedModel, data: ImageSet, layer: str) -> extraction.LayerFeatures | None:
    """:func:`extraction.load_features`, remembered per file while the files are unchanged
    (warm pages ask for the same layers many times; a re-extraction replaces the files)."""
    npy = _features_dir(lm, data) / f"{layer}.npy"
    sig = _file_signature(npy)
    with _LOCK:
        seen = _OPENED.get(str(npy))
    if sig is not None and seen is not None and seen[0] == sig:
        return seen[1]
    stored = extraction.load_features(lm, data, layer)
    if stored is not None and sig is not None:
        with _LOCK:
            if len(_OPENED) > 4096:
                _OPENED.clear()
            _OPENED[str(npy)] = (sig, stored)
    return stored


def extract_all(model_id: str, dataset_id: str, layers: Sequence[str], *, progress: Progress | None = None,
                device: str = "auto", backend: ComputeBackend | str | None = None,
                ) -> dict[str, extraction.LayerFeatures]:
    """Extract several layers in one pass (missing ones only) on ``backend`` (default: local)."""
    with _extract_lock(model_id, dataset_id):
        return _extract(model_id, dataset_id, layers, device, progress, backend)


def is_extracted(model_id: str, dataset_id: str, layer: str) -> bool:
    return _stored_features(load_model(model_id), load_set(dataset_id), layer) is not None


_EXTRACT_LOCKS: dict[tuple[str, str], threading.Lock] = {}


def _extract_lock(model_id: str, dataset_id: str) -> threading.Lock:
    with _LOCK:
        return _EXTRACT_LOCKS.setdefault((model_id, dataset_id), threading.Lock())


def pooled(model_id: str, dataset_id: str, layer: str, progress: Progress | None = None) -> tuple[np.ndarray, str]:
    """Spatially max-pooled features ``[N, F]`` float32 (Sec. 4) and their fingerprint."""
    f = features(model_id, dataset_id, layer, progress=progress)
    return _pooled(str(f.path), f.fingerprint).copy(), f.fingerprint


@lru_cache(maxsize=16)
def _pooled(path: str, fingerprint: str) -> np.ndarray:
    """Max-pooled features of one stored layer file (by path and fingerprint: a new extraction
    has a new fingerprint); callers get copies."""
    arr = np.load(path, mmap_mode="r")
    return analysis.spatial_max(arr).astype(np.float32) if arr.ndim == 4 else np.asarray(arr, dtype=np.float32)


def layers_of(model_id: str) -> list[str]:
    return list(load_model(model_id).spec.layers)


# --------------------------------------------------------------------------- results
@dataclass(frozen=True)
class Provenance:
    model: dict
    dataset: str
    layer: str
    params: dict
    code_version: str
    computed: str

    def stamp(self) -> str:
        """One line for figure captions and exports."""
        w = (self.model.get("weights_sha256") or "none")[:12]
        params = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return (f"model {self.model.get('name')} (weights {w}) · data {self.dataset} · layer {self.layer}"
                f"{' · ' + params if params else ''} · code {self.code_version} · {self.computed}")


def _prov(model_id: str, dataset: str, layer: str, params: dict) -> Provenance:
    return Provenance(model_info(model_id), dataset, layer, dict(params), code_version(),
                      time.strftime("%Y-%m-%d %H:%M"))


def _cached(request: Any, fingerprints: Sequence[str], compute: Callable[[], Any],
            progress: Progress | None = None) -> Any:
    """The cached result of ``request`` on inputs ``fingerprints``, else ``compute()`` (once,
    across threads and processes). ``progress`` hears about it only when there is work to do."""
    on_miss = None
    if progress is not None:
        what = " ".join(str(v) for v in (type(request).__name__.removesuffix("Request").lower(),
                                         getattr(request, "model", ""), getattr(request, "layer", "")) if v)
        on_miss = lambda: progress(0, 1, f"computing {what}")  # noqa: E731
    return default_cache().get_or_compute(request, fingerprints, compute, on_miss=on_miss)


@dataclass(frozen=True)
class SelectivityRequest:
    model: str
    task: str
    layer: str
    num_thresholds: int = 100
    shuffles: int = 3


@dataclass
class SelectivityResult:
    """Fig. 1 / Appendix on the task's test split."""

    aue: np.ndarray  # [F]
    fraction: np.ndarray  # [F]
    mean_aue: np.ndarray  # [F]
    baseline_mean_aue: np.ndarray  # [S, F] selectivity curves of shuffled labels
    class_names: tuple[str, ...]
    provenance: Provenance


def _single_labels(data: ImageSet) -> np.ndarray:
    if data.multilabel:
        raise InputError(f"{data.name} is multi-label; selectivity needs one label per item "
                         "(use a DET-GT or scene task)")
    return np.asarray(data.labels)


def selectivity(model_id: str, task_id: str, layer: str, num_thresholds: int = 100, shuffles: int = 3,
                progress: Progress | None = None) -> SelectivityResult:
    t = task(task_id)
    f = features(model_id, t.test, layer, progress=progress)
    req = SelectivityRequest(model_id, task_id, layer, num_thresholds, shuffles)

    def compute() -> SelectivityResult:
        data = load_set(t.test)
        labels = _single_labels(data)
        arr = f.array()
        a = analysis.aue(arr, labels, data.num_classes, num_thresholds)
        frac, mean = analysis.selectivity_curve(a)
        base = analysis.shuffled_label_aue(arr, labels, data.num_classes, seeds=range(shuffles),
                                           num_thresholds=num_thresholds)
        base_curves = np.stack([analysis.selectivity_curve(b)[1] for b in base]) if len(base) else base
        return SelectivityResult(a, frac, mean, base_curves, data.class_names,
                                 _prov(model_id, t.test, layer, {"thresholds": num_thresholds}))

    return _cached(req, [f.fingerprint], compute, progress)


def entropy_curve(model_id: str, task_id: str, layer: str, filt: int, num_thresholds: int = 100) -> dict:
    """One filter's entropy curve, thresholds and class histograms (cheap: one filter)."""
    t = task(task_id)
    data = load_set(t.test)
    arr = np.asarray(features(model_id, t.test, layer).array()[:, filt], dtype=np.float64)
    labels = _single_labels(data)
    curve = analysis.entropy_curves(arr[:, None], labels, data.num_classes, num_thresholds)[0]
    samples = arr.reshape(len(arr), -1)
    thresholds = np.linspace(samples.min(), samples.max(), num_thresholds)
    lab = np.repeat(labels, samples.shape[1])
    flat = samples.ravel()
    hist = np.stack([np.bincount(lab[flat >= th], minlength=data.num_classes) for th in thresholds])
    return {"entropy": curve, "thresholds": thresholds, "histograms": hist, "class_names": data.class_names}


@dataclass(frozen=True)
class FilterAPRequest:
    model: str
    task: str
    layer: str
    shuffles: int = 3


@dataclass
class FilterAPResult:
    """Sec. 4.1: per-class single-filter AP on spatially max-pooled responses."""

    ap: np.ndarray  # [C, F]
    prevalence: np.ndarray  # [C] AP of a random filter (= positive rate)
    shuffled: np.ndarray  # [S, C, F]
    class_names: tuple[str, ...]
    provenance: Provenance

    def top_filters(self, c: int, k: int = 5) -> np.ndarray:
        return np.argsort(-self.ap[c], kind="stable")[:k]


def filter_ap(model_id: str, task_id: str, layer: str, shuffles: int = 3,
              progress: Progress | None = None) -> FilterAPResult:
    t = task(task_id)
    x, fp = pooled(model_id, t.test, layer, progress)
    req = FilterAPRequest(model_id, task_id, layer, shuffles)

    def compute() -> FilterAPResult:
        data = load_set(t.test)
        ap = analysis.class_filter_ap(x, data.labels, data.num_classes)
        prevalence = data.label_matrix().mean(0)
        sh = analysis.shuffled_label_ap(x, data.labels, data.num_classes, seeds=range(shuffles))
        return FilterAPResult(ap, prevalence, sh, data.class_names,
                              _prov(model_id, t.test, layer, {"pooling": "spatial max"}))

    return _cached(req, [fp], compute, progress)


def pr_curves(model_id: str, task_id: str, layer: str, cls: int, filters: Sequence[int]) -> list[dict]:
    """Precision-recall curves of chosen filters for one class (Fig. 3)."""
    t = task(task_id)
    x, _ = pooled(model_id, t.test, layer)
    pos = load_set(t.test).positives(cls)
    out = []
    for f in filters:
        p, r, _ = analysis.pr_curve(x[:, int(f)], pos)
        out.append({"filter": int(f), "precision": p, "recall": r,
                    "ap": float(analysis.filter_ap(x[:, [int(f)]], pos)[0])})
    return out


def top_activations(model_id: str, task_id: str, layer: str, filt: int, n: int = 8) -> dict:
    """Indices of the test items that excite ``filt`` most, with their max response and spatial maps."""
    t = task(task_id)
    arr = features(model_id, t.test, layer).array()
    col = np.asarray(arr[:, filt], dtype=np.float32)
    score = col.reshape(len(col), -1).max(1)
    idx = np.argsort(-score, kind="stable")[:n]
    return {"indices": idx, "scores": score[idx], "maps": col[idx] if col.ndim == 3 else None}


# ---- filters needed (Sec. 4.2) and overlap (Fig. 5)
@dataclass(frozen=True)
class RankingRequest:
    model: str
    task: str
    layer: str


def svm_ranking(model_id: str, task_id: str, layer: str, progress: Progress | None = None):
    """Sec. 4.2 / Fig. 4 / Table 5: SVM-ranked filters and AP of nested top-k subsets."""
    t = task(task_id)
    xtr, fp_tr = pooled(model_id, t.train, layer, progress)
    xte, fp_te = pooled(model_id, t.test, layer, progress)

    def compute():
        tr, te = load_set(t.train), load_set(t.test)
        res = analysis.svm_filter_ranking(xtr, tr.labels, xte, te.labels, num_classes=tr.num_classes)
        return {"result": res, "class_names": tr.class_names,
                "provenance": _prov(model_id, f"{t.train} -> {t.test}", layer, {"pooling": "spatial max"})}

    return _cached(RankingRequest(model_id, task_id, layer), [fp_tr, fp_te], compute, progress)


@dataclass
class FiltersNeededResult:
    """Fig. 4 / Table 5 on one model and layer."""

    ranking: Any  # analysis.FilterRankingResult
    k50: np.ndarray  # [C]
    k90: np.ndarray  # [C]
    class_names: tuple[str, ...]
    provenance: Provenance


def filters_needed(model_id: str, task_id: str, layer: str, progress: Progress | None = None) -> FiltersNeededResult:
    r = svm_ranking(model_id, task_id, layer, progress)
    res = r["result"]
    return FiltersNeededResult(res, analysis.filters_needed(res.k_values, res.ap_by_k, res.full_ap, 0.5),
                               analysis.filters_needed(res.k_values, res.ap_by_k, res.full_ap, 0.9),
                               r["class_names"], r["provenance"])


@dataclass
class OverlapResult:
    """Fig. 5: top-k filter-set overlap between classes, |w|-ranked as in Sec. 4.2."""

    matrix: np.ndarray  # [C, C]
    order: np.ndarray  # class order from hierarchical clustering
    chance: float
    sets: np.ndarray  # [C, k]
    k: int
    class_names: tuple[str, ...]
    provenance: Provenance


def overlap(model_id: str, task_id: str, layer: str, k: int = 50, progress: Progress | None = None) -> OverlapResult:
    r = svm_ranking(model_id, task_id, layer, progress)
    importance = np.abs(r["result"].weights)
    k = int(min(k, importance.shape[1]))
    m = analysis.topk_overlap(importance, k)
    return OverlapResult(m, cluster_order(m), analysis.overlap_chance(importance.shape[1], k),
                         analysis.topk_sets(importance, k), k, r["class_names"], r["provenance"])


def shared_filters(model_id: str, task_id: str, layer: str, i: int, j: int, k: int = 50) -> np.ndarray:
    importance = np.abs(svm_ranking(model_id, task_id, layer)["result"].weights)
    return analysis.shared_filters(importance, i, j, int(min(k, importance.shape[1])))


def cluster_order(similarity: np.ndarray) -> np.ndarray:
    """Leaf order of average-linkage clustering on ``1 - similarity`` (for heatmaps)."""
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    if len(similarity) < 3:
        return np.arange(len(similarity))
    d = 1.0 - (similarity + similarity.T) / 2
    np.fill_diagonal(d, 0.0)
    return leaves_list(linkage(squareform(np.clip(d, 0, None), checks=False), "average"))


# ---- sparsity (Table 6) and ablations (Tables 7, 8)
@dataclass(frozen=True)
class SparsityRequest:
    model: str
    task: str
    layers: tuple[str, ...]


def sparsity(model_id: str, task_id: str, layers: Sequence[str] | None = None,
             progress: Progress | None = None) -> dict:
    """Table 6: % non-zeros per layer (mean ± std over items) and per class."""
    t = task(task_id)
    layers = tuple(layers or layers_of(model_id))
    feats = {l: features(model_id, t.test, l, progress=progress) for l in layers}

    def compute() -> dict:
        data = load_set(t.test)
        rows, per_class = [], {}
        for l, f in feats.items():
            s = analysis.sparsity_summary(f.array())
            rows.append({"layer": l, "mean": 100 * s["mean"], "std": 100 * s["std"]})
            per_class[l] = 100 * analysis.class_nonzero_fraction(f.array(), data.labels, data.num_classes)
        return {"table": rows, "per_class": per_class, "class_names": data.class_names,
                "provenance": _prov(model_id, t.test, ",".join(layers), {})}

    return _cached(SparsityRequest(model_id, task_id, layers), [f.fingerprint for f in feats.values()], compute,
                   progress)


@dataclass(frozen=True)
class AblationRequest:
    model: str
    task: str
    layer: str
    seeds: tuple[int, ...] = (0, 1, 2)
    classifier: analysis.SVMConfig = TABLE_CLASSIFIER


def _split_features(model_id: str, task_id: str, layer: str, progress: Progress | None):
    """The task and its train and test features of one layer (extracted on first use)."""
    t = task(task_id)
    return t, features(model_id, t.train, layer, progress=progress), features(model_id, t.test, layer, progress=progress)


def ablation(model_id: str, task_id: str, layer: str, seeds: Sequence[int] = (0, 1, 2),
             progress: Progress | None = None) -> dict:
    """Tables 7/8: linear-classifier mAP on original / binarize / sp-shuffle / sp-max features."""
    t, ftr, fte = _split_features(model_id, task_id, layer, progress)

    def compute() -> dict:
        tr, te = load_set(t.train), load_set(t.test)
        res = analysis.ablation_study(np.asarray(ftr.array(), np.float32), tr.labels,
                                      np.asarray(fte.array(), np.float32), te.labels,
                                      num_classes=tr.num_classes, seeds=tuple(seeds), config=TABLE_CLASSIFIER)
        return {"summary": list(res.summary), "runs": [{k: v for k, v in r.items() if k != "ap"} for r in res.runs],
                "provenance": _prov(model_id, f"{t.train} -> {t.test}", layer, {"seeds": list(seeds)})}

    return _cached(AblationRequest(model_id, task_id, layer, tuple(seeds)), [ftr.fingerprint, fte.fingerprint],
                   compute, progress)


# ---- per-layer linear mAP (Tables 1-4, Fig. 2)
@dataclass(frozen=True)
class LayerMapRequest:
    model: str
    task: str
    layer: str
    classifier: analysis.SVMConfig = TABLE_CLASSIFIER


def layer_map(model_id: str, task_id: str, layer: str, progress: Progress | None = None) -> dict:
    """mAP (fraction) of per-class linear SVMs on one layer's features, train -> test split."""
    t, ftr, fte = _split_features(model_id, task_id, layer, progress)

    def compute() -> dict:
        tr, te = load_set(t.train), load_set(t.test)
        res = analysis.linear_map(np.asarray(ftr.array(), np.float32), tr.labels,
                                  np.asarray(fte.array(), np.float32), te.labels, num_classes=tr.num_classes,
                                  config=TABLE_CLASSIFIER)
        return {"map": res.map, "ap": res.ap, "class_names": tr.class_names}

    return _cached(LayerMapRequest(model_id, task_id, layer), [ftr.fingerprint, fte.fingerprint], compute,
                   progress)


def layer_map_table(model_ids: Sequence[str], task_id: str, layers: Sequence[str] | None = None,
                    progress: Progress | None = None):
    """DataFrame: rows = layers, columns = models, values = mAP in percent (Tables 1-4)."""
    import pandas as pd

    layers = list(layers or layers_of(model_ids[0]))
    data = {m: [100 * layer_map(m, task_id, l, progress)["map"] for l in layers] for m in model_ids}
    return pd.DataFrame(data, index=pd.Index(layers, name="layer"))


def demo_variants() -> dict[str, list[str]]:
    """Model ids grouped for the training-dynamics comparisons."""
    ids = list(models())
    return {"regimes": [m for m in ("demo:scratch", "demo:pretrained", "demo:finetuned") if m in ids],
            "ft_vs_fc": [m for m in ("demo:finetuned", "demo:fc-finetuned") if m in ids],
            "snapshots": [m for m in ids if m.startswith("demo:snapshot-")],
            "ft_from": [m for m in ids if m.startswith("demo:finetuned-from-")] +
                       (["demo:finetuned"] if "demo:finetuned" in ids else [])}


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


def layer_shapes(model_id: str) -> dict[str, tuple[int, ...]]:
    """Output shape of each analysable layer (one dummy forward per model and process)."""
    return dict(_layer_shapes(model_id))


@lru_cache(maxsize=32)
def _layer_shapes(model_id: str) -> dict[str, tuple[int, ...]]:
    from core.models import layer_shapes as _shapes

    return _shapes(load_model(model_id))


def cache_status(model_id: str, task_id: str) -> list[dict]:
    """Which layers are extracted for the task's train/test splits."""
    t = task(task_id)
    return [{"layer": l, "train extracted": is_extracted(model_id, t.train, l),
             "test extracted": is_extracted(model_id, t.test, l)} for l in layers_of(model_id)]


def findings(finetuned: str = "demo:finetuned", pretrained: str = "demo:pretrained",
             task_id: str = "demo-detgt", cls_task: str | None = "demo-cls",
             progress: Progress | None = None) -> list[dict]:
    """The paper's ten headline findings checked on these models (:mod:`core.analysis.findings`).

    Measured on ``task_id`` (DET-GT by default) unless a rule says otherwise: mAP rising
    with depth is checked on ``cls_task`` too, and the layer-convergence rule reads Table 3
    (pretraining snapshots) on ``cls_task``. Rows that need the demo's other networks
    (scratch, fc-only, fine-tuned from a snapshot, snapshots) are measured when
    ``finetuned`` is a demo network; otherwise, or when a model or task is missing, a row
    says "not measured" and why. Uses cached analyses when present.

    Returns one dict per finding, in :data:`analysis.findings.FINDING_IDS` order, with
    ``id``, ``title``, ``paper``, ``measured``, ``holds`` (True / False / None), ``why``
    (one line where it does not hold) and ``numbers`` (what the rule read).
    """
    from core.analysis import findings as fnd

    layers = layers_of(finetuned)
    first, last = layers[0], layers[-1]
    fc = tuple(l for l in ("fc6", "fc7") if l in layers) or tuple(layers[-2:])
    conv = "conv5" if "conv5" in layers else layers[len(layers) // 2]
    variants = demo_variants() if finetuned.startswith("demo:") else {}
    ids = set(models())

    def fc7_map(m: str, t: str = task_id) -> float:
        return layer_map(m, t, last, progress)["map"]

    def need(*model_ids: str) -> None:
        missing = [m for m in model_ids if m not in ids]
        if missing:
            raise DataMissingError(f"needs {', '.join(missing)} (the embedded demo's networks)")

    def aue(m: str) -> dict[str, float]:
        return {l: float(selectivity(m, task_id, l, progress=progress).aue.mean()) for l in layers}

    def selectivity_rows() -> list:
        need(pretrained)
        a_ft, a_pre = aue(finetuned), aue(pretrained)
        return [fnd.selectivity_depth(a_ft, a_pre, first, last), fnd.finetune_moves_fc(a_ft, a_pre, fc)]

    def map_depth():
        need(pretrained)
        tasks_ = [t for t in dict.fromkeys([cls_task, task_id]) if t and t in tasks()]
        return fnd.map_rises_with_depth({t: {l: layer_map(pretrained, t, l, progress)["map"] for l in (first, last)}
                                         for t in tasks_}, first, last)

    def scratch():
        need("demo:scratch")
        return fnd.pretrain_beats_scratch(fc7_map(finetuned), fc7_map("demo:scratch"), last)

    def longer():
        earlier = [m for m in variants.get("ft_from", []) if "-from-" in m]
        if not earlier or finetuned != "demo:finetuned":
            raise DataMissingError("needs demo:finetuned and a demo net fine-tuned from a pretraining snapshot")
        earliest = min(earlier, key=lambda m: int(m.rsplit("-", 1)[1]))
        final_it = int(demo.manifest()["config"]["pretrain"]["iterations"])
        return fnd.longer_pretraining_helps(fc7_map(finetuned), fc7_map(earliest), int(earliest.rsplit("-", 1)[1]),
                                            final_it, last)

    def fc_only():
        need("demo:fc-finetuned")
        return fnd.full_ft_beats_fc_only(fc7_map(finetuned), fc7_map("demo:fc-finetuned"), last)

    def binarize():
        abl = {r["ablation"]: r["mean"]
               for r in ablation(finetuned, task_id, conv, seeds=(0,), progress=progress)["summary"]}
        return fnd.binarize_cheap(abl["original"], abl["binarize"], conv)

    def distributed():
        need_res = filters_needed(finetuned, task_id, conv, progress=progress)
        single = filter_ap(finetuned, task_id, conv, progress=progress).ap.max(1)
        return fnd.distributed_conv(need_res.k90, need_res.ranking.ranking.shape[1], single,
                                    need_res.ranking.full_ap, conv)

    def sparse():
        table = {r["layer"]: r["mean"] for r in sparsity(finetuned, task_id, progress=progress)["table"]}
        return fnd.sparsity_falls(table, first, conv, last)

    def converge():
        if not variants.get("snapshots") or not cls_task or cls_task not in tasks():
            raise DataMissingError("needs the demo's pretraining snapshots and its image-level task")
        table = snapshot_table(cls_task, [first, last], progress)
        return fnd.lower_layers_converge_first(list(table.index), {l: list(table[l] / 100) for l in (first, last)},
                                               first, last)

    steps: list[tuple[tuple[str, ...], Callable[[], Any]]] = [
        (("selectivity_depth", "finetune_moves_fc"), selectivity_rows), (("map_rises_with_depth",), map_depth),
        (("pretrain_beats_scratch",), scratch), (("longer_pretraining_helps",), longer),
        (("full_ft_beats_fc_only",), fc_only), (("binarize_cheap",), binarize),
        (("distributed_conv",), distributed), (("sparsity_falls",), sparse),
        (("lower_layers_converge_first",), converge)]
    rows = []
    for fids, measure in steps:
        try:
            got = measure()
            rows += got if isinstance(got, list) else [got]
        except DataMissingError as exc:
            rows += [fnd.not_measured(f, str(exc)) for f in fids]
    return [r.row() for r in rows]


def findings_provenance(finetuned: str, pretrained: str, task_id: str, cls_task: str | None) -> dict:
    """Where :func:`findings`' numbers come from: models with weights hashes, tasks, code version."""
    keep = ("id", "name", "arch", "weights_source", "weights_path", "weights_sha256")
    nets = {m: {k: v for k, v in model_info(m).items() if k in keep}
            for m in dict.fromkeys([finetuned, pretrained]) if m in models() or m.startswith("tv:")}
    return {"models": nets, "task": task_id, "cls_task": cls_task, "code_version": code_version(),
            "demo": {k: demo.manifest().get(k) for k in ("profile", "config_hash", "built")} if _demo_built() else None}


def findings_summary(rows: Sequence[dict]) -> str:
    """``"8 of 10 findings hold (1 not measured)"``."""
    held = sum(r["holds"] is True for r in rows)
    skipped = sum(r["holds"] is None for r in rows)
    return f"{held} of {len(rows)} findings hold" + (f" ({skipped} not measured)" if skipped else "")


def first_layer_weights(model_id: str) -> np.ndarray:
    """Weights of the first convolution ``[F, 3, k, k]`` (Fig. 2)."""
    import torch

    net = load_model(model_id).net
    conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    return conv.weight.detach().cpu().numpy().astype(np.float32)


def snapshot_table(task_id: str, layers: Sequence[str] | None = None, progress: Progress | None = None):
    """Table 3: per-layer mAP (%) of each pretraining snapshot, no fine-tuning.

    DataFrame indexed by pretraining iteration, one column per layer.
    """
    import pandas as pd

    snaps = demo_variants()["snapshots"]
    if not snaps:
        raise DataMissingError("no pretraining snapshots: they exist for the embedded demo only")
    layers = list(layers or layers_of(snaps[0]))
    its = [int(m.rsplit("-", 1)[1]) for m in snaps]
    rows = [[100 * layer_map(m, task_id, l, progress)["map"] for l in layers] for m in snaps]
    return pd.DataFrame(rows, index=pd.Index(its, name="pretraining iteration"), columns=layers)


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


def training_curves() -> dict[str, dict[str, list[float]]]:
    """Training loss of every demo run: ``{run: {"iteration": [...], "loss": [...]}}``.

    The build keeps every :func:`core.training.loss_curve_step`-th step's loss; the
    iteration of each kept value is rebuilt from the run's iteration count.
    """
    from core.training import loss_curve_step

    man = demo.manifest()
    iterations = {"pretrain": man.get("pretrain", {}).get("iterations"),
                  **{k: v.get("iterations") for k, v in man.get("finetune", {}).items()}}
    out = {}
    for run, loss in man.get("loss_curves", {}).items():
        step = loss_curve_step(int(iterations.get(run) or len(loss)))
        out[run] = {"iteration": [1 + i * step for i in range(len(loss))], "loss": [float(v) for v in loss]}
    return out


def demo_summary() -> dict:
    """Accuracy of the demo networks' own classifiers and build timings."""
    man = demo.manifest()
    return {"source_val_accuracy": man["pretrain"].get("source_val_accuracy"),
            "source_val_accuracy_by_snapshot": man["pretrain"].get("source_val_accuracy_by_snapshot", {}),
            "finetune": {k: v.get("target_detgt_test_accuracy") for k, v in man["finetune"].items()},
            "finetune_map": {k: v.get("target_detgt_test_map") for k, v in man["finetune"].items()},
            "seconds": man.get("seconds", {}), "profile": man["profile"], "built": man["built"]}


# =========================================================================== detection and scene tasks (issue #11)
# PASCAL-DET (R-CNN on region proposals) and SUN-CLS (scene classification over fixed splits) as
# first-class tasks, and the paper's Tables 1, 2, 4, 7, 8 per task with the paper's figures beside.
from dataclasses import replace as _replace  # noqa: E402

from core import detection as rcnn  # noqa: E402
from core.analysis import scene_cls  # noqa: E402

#: The demo's detection setting: 126 windows per 64 px image, training on the first 200 train
#: images and evaluating on the first 400 test images, so one network and layer takes <= 2 min on
#: 2 CPU cores (deviation: the paper uses all of VOC 2007 trainval / test and selective search).
DEMO_DETECTION = rcnn.DetectionConfig(proposals="windows", max_train_images=200, max_test_images=400)
#: Real data (VOC): selective search "fast", 2000 proposals per image, every image, as R-CNN.
REAL_DETECTION = rcnn.DetectionConfig(proposals="selective-search", max_proposals=2000)


@lru_cache(maxsize=16)
def load_detection(dataset_id: str) -> rcnn.DetectionData:
    """Whole images and every ground-truth box of a detection split (cached per process)."""
    return rcnn.load_detection_data(dataset_id)


def _require_kind(t: TaskSpec, kinds: tuple[str, ...], what: str) -> None:
    if t.kind not in kinds:
        raise InputError(f"{what} needs a {' or '.join(kinds)} task; '{t.id}' is a {t.kind} task "
                         f"({t.title}). Pick a {'detection' if 'det' in kinds else 'scene'} task in the sidebar.")


def detection_config(task_id: str, layer: str = "fc7", ablation: str = "original") -> rcnn.DetectionConfig:
    """The task's default detection setting with this layer and ablation."""
    t = task(task_id)
    base = DEMO_DETECTION if t.train.startswith("demo:") else REAL_DETECTION
    return _replace(base, layer=layer, ablation=ablation)


@dataclass(frozen=True)
class DetectionRequest:
    model: str
    task: str
    config: rcnn.DetectionConfig


def detection_result(model_id: str, task_id: str, layer: str = "fc7", ablation: str = "original",
                     progress: Progress | None = None,
                     config: rcnn.DetectionConfig | None = None) -> dict:
    """PASCAL-DET: train R-CNN detectors on the task's train split, VOC 2007 AP on its test split.

    Cached under the request (model, task, :class:`~core.detection.DetectionConfig`) plus the
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


# ---- SUN-CLS protocol
@dataclass(frozen=True)
class SceneRequest:
    model: str
    task: str
    layer: str
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)


def _scene_partitions(t: TaskSpec, n: int) -> list[np.ndarray] | None:
    """SUN397's official partitions when the task's data has them, else None (seeded splits)."""
    from core.datasets import SUNImageSet, sun397_partitions

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


def register_voc_detection(root: str, with_2012: bool = False) -> TaskSpec:
    """Register PASCAL-DET on a local VOCdevkit: train VOC 2007 trainval (+ VOC 2012 trainval with
    ``with_2012``, the paper's PASCAL-DET+DATA), test VOC 2007 test. Checks the folders now."""
    train = f"voc0712:{root}" if with_2012 else f"voc2007:{root}:trainval"
    load_detection(train), load_detection(f"voc2007:{root}:test")
    t = TaskSpec("voc07-det+data" if with_2012 else "voc07-det",
                 "VOC 2007 test · detection" + (" (trained on 07+12 trainval)" if with_2012 else ""),
                 train, f"voc2007:{root}:test", "det", "PASCAL-DET+DATA" if with_2012 else "PASCAL-DET")
    register_task(t)
    return t


def register_sun397(root: str) -> TaskSpec:
    """Register SUN-CLS on a local SUN397 copy (all images pooled; official partitions when present)."""
    load_set(f"sun397:{root}")
    t = TaskSpec("sun397", "SUN397 · scene classification", f"sun397:{root}", f"sun397:{root}", "scene", "SUN-CLS")
    register_task(t)
    return t


# =========================================================================== real models and data in the app
# The sidebar lists :func:`models` and :func:`tasks`: the demo's, plus what is registered here, from
# Python, from the sidebar's "Your models and data" box, or from environment variables read once:
#   FILTERSCOPE_MODELS="tv:alexnet@/data/alexnet.pth,tv:resnet18"   (comma-separated model ids)
#   FILTERSCOPE_VOC=/data          (a folder holding VOCdevkit/VOC2007: CLS, DET-GT and DET tasks)
#   FILTERSCOPE_VOC_2012=1         (also train detection on VOC 2012 trainval: PASCAL-DET+DATA)
#   FILTERSCOPE_SUN397=/data/sun   (SUN-CLS)
#   FILTERSCOPE_IMAGEFOLDER=/data/imgs   (ImageFolder trees <root>/train and <root>/test)
_MODELS: dict[str, str] = {}
_ENV_KEYS = ("FILTERSCOPE_MODELS", "FILTERSCOPE_VOC", "FILTERSCOPE_VOC_2012", "FILTERSCOPE_SUN397",
             "FILTERSCOPE_IMAGEFOLDER")
_ENV_STATE: dict[str, Any] = {"seen": None, "errors": []}


def register_model(model_id: str, title: str | None = None) -> str:
    """Make a model selectable on every page: ``tv:<arch>`` (torch hub cache or random init) or
    ``tv:<arch>@<local weights file>``. It is loaded now, so a bad id, a wrong architecture or a
    damaged file fails here with an :class:`InputError` naming the problem."""
    model_id = model_id.strip()
    lm = load_model(model_id)
    w = lm.spec.weights
    title = title or (f"{lm.spec.arch} · {w.source}" + (f" · {Path(w.path).name} ({w.short_hash})" if w.path else ""))
    with _LOCK:
        _MODELS[model_id] = title
    return model_id


def register_voc(root: str, with_2012: bool = False) -> list[TaskSpec]:
    """PASCAL VOC 2007 from a local VOCdevkit as three tasks: image classification (PASCAL-CLS,
    trainval -> test), ground-truth box crops (PASCAL-DET-GT) and R-CNN detection (PASCAL-DET;
    ``with_2012`` adds VOC 2012 trainval to its training set, the paper's DET+DATA)."""
    root = str(Path(root).expanduser())
    out = []
    for view, kind, paper, title in (("cls", "cls", "PASCAL-CLS", "classification (multi-label)"),
                                     ("det-gt", "det-gt", "PASCAL-DET-GT", "ground-truth box crops (DET-GT)")):
        t = TaskSpec(f"voc07-{view}", f"VOC 2007 test · {title}", f"voc2007:{root}:trainval:{view}",
                     f"voc2007:{root}:test:{view}", kind, paper)
        load_set(t.train), load_set(t.test)  # checks the folders and annotations now
        register_task(t)
        out.append(t)
    out.append(register_voc_detection(root, with_2012=with_2012))
    return out


def register_imagefolder(root: str) -> TaskSpec:
    """An ImageFolder tree with ``<root>/train/<class>/...`` and ``<root>/test/<class>/...`` as a
    single-label task (every analysis that needs one label per item works on it)."""
    base = Path(root).expanduser()
    missing = [s for s in ("train", "test") if not (base / s).is_dir()]
    if missing:
        raise InputError(f"ImageFolder task {base}: missing sub-folder(s) {', '.join(missing)}; expected "
                         f"{base}/train/<class>/<image> and {base}/test/<class>/<image>")
    t = TaskSpec(f"imagefolder-{base.name}", f"{base.name} · ImageFolder (train -> test)",
                 f"imagefolder:{base / 'train'}", f"imagefolder:{base / 'test'}", "other", "")
    tr, te = load_set(t.train), load_set(t.test)
    if tuple(tr.class_names) != tuple(te.class_names):
        raise InputError(f"ImageFolder task {base}: train and test have different class folders "
                         f"({len(tr.class_names)} vs {len(te.class_names)}); use the same classes in both")
    register_task(t)
    return t


def configure_from_env(environ: Any = None) -> list[str]:
    """Register the models and data named by the ``FILTERSCOPE_*`` variables (once per distinct
    setting). Never raises: each problem becomes a message in :func:`config_errors`."""
    import os

    env = os.environ if environ is None else environ
    seen = tuple(env.get(k, "") for k in _ENV_KEYS)
    with _LOCK:
        if _ENV_STATE["seen"] == seen:
            return list(_ENV_STATE["errors"])
        _ENV_STATE["seen"] = seen
    errors: list[str] = []
    models_s, voc, voc12, sun, folder = seen
    jobs: list[tuple[str, Callable[[], Any]]] = [
        (f"FILTERSCOPE_MODELS: {m}", lambda m=m: register_model(m)) for m in models_s.split(",") if m.strip()]
    if voc:
        jobs.append((f"FILTERSCOPE_VOC={voc}", lambda: register_voc(voc, with_2012=voc12 not in ("", "0", "no"))))
    if sun:
        jobs.append((f"FILTERSCOPE_SUN397={sun}", lambda: register_sun397(sun)))
    if folder:
        jobs.append((f"FILTERSCOPE_IMAGEFOLDER={folder}", lambda: register_imagefolder(folder)))
    for label, job in jobs:
        try:
            job()
        except (InputError, DataMissingError, OSError) as exc:
            errors.append(f"{label}: {exc}")
    with _LOCK:
        _ENV_STATE["errors"] = errors
    return errors


def config_errors() -> list[str]:
    """Problems found in the ``FILTERSCOPE_*`` settings (shown by the app's sidebar)."""
    configure_from_env()
    with _LOCK:
        return list(_ENV_STATE["errors"])
