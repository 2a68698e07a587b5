"""The per-layer analyses of the paper, each a cached request with provenance.

Selectivity and entropy curves (Appendix, Fig. 1), single-filter AP and PR curves
(Sec. 4.1, Fig. 3), top activations, SVM filter ranking and filters needed (Sec. 4.2,
Fig. 4, Table 5), top-k overlap (Fig. 5), sparsity (Table 6), ablations (Tables 7, 8) and
per-layer linear mAP (Tables 1-4). The numbers come from :mod:`core.analysis`.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from core import analysis
from core.analysis.sharded import load_shard, map_local
from core.config import memory_budget
from core.data.datasets import ImageSet
from core.errors import InputError
from core.store.extraction import LayerFeatures, Progress
from core.service.catalog import layers_of, load_set, model_label, task
from core.service.feature_store import features, pooled
from core.service.provenance import Provenance, _cached, _prov


#: Per-layer mAP tables (Tables 1-4, 7, 8) use least-squares SVMs solved in closed form:
#: hinge-loss LinearSVC on flattened conv maps (8k-60k dims) is 100x slower. Deviation
#: from the paper's hinge-loss SVMs; Fig. 4 / Table 5 keep LinearSVC as the paper.
TABLE_CLASSIFIER = analysis.SVMConfig(method="lssvm")


# ---- bounded memory: a layer is held whole only when its working copies fit the budget
#: Bytes per stored value an in-memory analysis holds at its peak: three float32 copies (the read, the
#: converted and the standardised one) for most; the classifiers add float64 copies of the train and
#: test rows (measured: 32 bytes a value for fc6's layer mAP at the benchmark's fraction 0.4, where 24
#: let it past the 2 GiB target), the ablations their ablated copies besides.
_HELD = {"reduce": 12, "classifier": 48, "ablation": 64}


def _fits(*feats: LayerFeatures, held: str = "reduce") -> bool:
    """True when the layers' in-memory working copies fit ``FILTERSCOPE_MEMORY_GB`` together."""
    return sum(int(np.prod(f.shape)) for f in feats) * _HELD[held] <= memory_budget()


#: A row block holds at most this share of the budget in stored float16 values, so that its float32 and
#: float64 working copies (a few at once) stay within a third of it. Measured on the fraction-0.4
#: benchmark (conv3 ablation, 1 GiB): a 64th (33 MB float32 copies) peaked at 1,663 MiB anonymous
#: memory, a 128th at 1,259 MiB in the same time (docs/scale.md).
_BLOCK_SHARE = 128


def _blocks(f: LayerFeatures) -> list:
    """The layer's row blocks for the streaming reducers (:data:`_BLOCK_SHARE`)."""
    return analysis.row_blocks(f, max(1, memory_budget() // _BLOCK_SHARE))


#: ``report(pass, block, blocks)``: a block of a streamed layer was read (:func:`_reporter`).
Report = Callable[[int, int, int], None]


def _reporter(progress: Progress | None, what: str, label: str = "") -> Report | None:
    """Progress of a streamed analysis, block by block: ``"streaming <what>: <label>pass k, block i/n"``,
    one bar per pass over the layer (the app's status box, the CLI's bar); None without a callback."""
    if progress is None:
        return None
    return lambda k, i, n: progress(i, n, f"streaming {what}: {label}pass {k}, block {i}/{n}")


def _rows_source(f: LayerFeatures, report: Report | None = None) -> analysis.RowSource:
    """The layer as a restartable stream of row blocks (:data:`core.analysis.RowSource`), each block
    read told to ``report``."""
    blocks = _blocks(f)
    if report is None:
        return lambda: (load_shard(d) for _, d in blocks)
    passes = itertools.count(1)

    def read():
        k = None  # numbered once its first block is done: a look at the first block alone is no pass
        for i, (_, d) in enumerate(blocks, 1):
            yield load_shard(d)
            k = k or next(passes)
            report(k, i, len(blocks))

    return read


def _split_sources(ftr: LayerFeatures, fte: LayerFeatures, progress: Progress | None, what: str,
                   source: Callable[..., analysis.RowSource] = _rows_source
                   ) -> tuple[analysis.RowSource, analysis.RowSource]:
    """The train and test layers as row streams, each reporting its reads as ``what``'s train / test passes."""
    return (source(ftr, _reporter(progress, what, "train ")), source(fte, _reporter(progress, what, "test ")))


def _reporting_map(report: Report | None, blocks: list) -> Callable[..., list]:
    """A ``map_shards`` for the shard reducers over ``blocks`` (:func:`_blocks`; mapped by
    :func:`core.analysis.sharded.map_local`, in this process) that tells ``report`` of every block done.
    The reducers map a pass in groups of blocks, so a pass is counted where the layer's first block is."""
    if report is None:
        return map_local
    index = {start: i for i, (start, _) in enumerate(blocks, 1)}
    k = 0

    def run(fn: Callable[..., Any], specs: Sequence, *args: Any) -> list:
        nonlocal k
        out = []
        for spec in specs:
            i = index[spec[0]]
            k += i == 1
            out += map_local(fn, [spec], *args)
            report(k, i, len(blocks))
        return out

    return run


def _streaming_plan(ftr: LayerFeatures, fte: LayerFeatures, held: str) -> tuple[bool, int | None]:
    """``(whole, sketch)`` for a classifier on a train/test layer pair: held whole when both fit the
    budget, else streamed; ``sketch`` is the column count a streamed layer wider than the budget's
    ``D x D`` products allows is count-sketched to (:func:`core.analysis.sketch_dim`), else None."""
    if _fits(ftr, fte, held=held):
        return True, None
    k = analysis.sketch_dim(memory_budget())
    return False, (k if int(np.prod(ftr.shape[1:])) > k else None)


def _sketch_key(sketch: int | None) -> list[str]:
    """Part of a classifier result's cache key: a sketched result of another budget is not reused."""
    return [] if sketch is None else [f"count sketch {sketch}"]


def _column(f: LayerFeatures, filt: int) -> np.ndarray:
    """One filter's responses ``[N, ...]`` float64, read block by block (never the whole layer)."""
    if not 0 <= filt < f.shape[1]:
        raise InputError(f"filter {filt} does not exist: the layer has filters 0..{f.shape[1] - 1}")
    return np.concatenate([np.asarray(load_shard(d)[:, filt], dtype=np.float64) for _, d in _blocks(f)])


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
    """Class selectivity of every filter of ``layer`` on the task's test split (Appendix, Fig. 1):
    entropy curves, AuE per filter, and the shuffled-label baseline (``shuffles`` label permutations)."""
    t = task(task_id)
    f = features(model_id, t.test, layer, progress=progress)
    req = SelectivityRequest(model_id, task_id, layer, num_thresholds, shuffles)

    def compute() -> SelectivityResult:
        data = load_set(t.test)
        labels = _single_labels(data)
        if _fits(f):
            arr = f.array()
            a = analysis.aue(arr, labels, data.num_classes, num_thresholds)
            base = analysis.shuffled_label_aue(arr, labels, data.num_classes, seeds=range(shuffles),
                                               num_thresholds=num_thresholds)
        else:
            blocks = _blocks(f)
            mapper = _reporting_map(_reporter(progress, f"selectivity {layer}"), blocks)
            a = analysis.aue_sharded(blocks, labels, data.num_classes, num_thresholds, map_shards=mapper)
            base = analysis.shuffled_label_aue_sharded(blocks, labels, data.num_classes, range(shuffles),
                                                       num_thresholds, map_shards=mapper)
        frac, mean = analysis.selectivity_curve(a)
        base_curves = np.stack([analysis.selectivity_curve(b)[1] for b in base]) if len(base) else base
        return SelectivityResult(a, frac, mean, base_curves, data.class_names,
                                 _prov(model_id, t.test, layer, {"thresholds": num_thresholds}))

    return _cached(req, [f.fingerprint], compute, progress)


def entropy_curve(model_id: str, task_id: str, layer: str, filt: int, num_thresholds: int = 100) -> dict:
    """One filter's entropy curve, thresholds and class histograms (cheap: one filter)."""
    t = task(task_id)
    data = load_set(t.test)
    arr = _column(features(model_id, t.test, layer), int(filt))
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
    """Single-filter AP of every filter for every class (Sec. 4.1): spatially max-pooled responses on
    the test split as scores, with the shuffled-label baseline (``shuffles`` permutations)."""
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
    f = features(model_id, t.test, layer)
    col = _column(f, int(filt)).astype(np.float32)
    score = col.reshape(len(col), -1).max(1)
    idx = np.argsort(-score, kind="stable")[:n]
    return {"indices": idx, "scores": score[idx], "maps": col[idx] if col.ndim == 3 else None}


# ---- filters needed (Sec. 4.2) and overlap (Fig. 5)
@dataclass(frozen=True)
class RankingRequest:
    model: str
    task: str
    layer: str
    classifier: str = "svm"   # "svm": the paper's hinge loss; "lssvm, streamed": over the budget


#: The paper's hinge-loss ranking holds the pooled train and test rows several times over: float64
#: copies, standardised copies and liblinear's own copy (16 bytes a value); bytes per pooled value.
_HINGE_HELD = 64


def _pooled_rows(f: LayerFeatures, report: Report | None = None) -> analysis.RowSource:
    """A layer's spatially max-pooled rows as a stream: the maxima stored beside a conv map (``[N, C]``,
    small, read at once) or a vector layer's own row blocks (each told to ``report``)."""
    if len(f.shape) == 2:
        return _rows_source(f, report)
    maxima = f.maxima()
    return analysis.array_source(maxima, max(1, memory_budget() // _BLOCK_SHARE // max(1, maxima[:1].nbytes)))


def svm_ranking(model_id: str, task_id: str, layer: str, progress: Progress | None = None):
    """Sec. 4.2 / Fig. 4 / Table 5: SVM-ranked filters and AP of nested top-k subsets.

    The paper's hinge-loss SVMs when the pooled train and test rows fit ``FILTERSCOPE_MEMORY_GB`` in
    the solver's copies; else least-squares SVMs from products accumulated over row blocks
    (:func:`core.analysis.filter_ranking_streamed`), said in the provenance's ``classifier``."""
    t = task(task_id)
    ftr = features(model_id, t.train, layer, progress=progress)
    fte = features(model_id, t.test, layer, progress=progress)
    hinge = (ftr.shape[0] + fte.shape[0]) * ftr.shape[1] * _HINGE_HELD <= memory_budget()
    classifier = "svm" if hinge else "lssvm, streamed"

    def compute():
        tr, te = load_set(t.train), load_set(t.test)
        if hinge:
            xtr, xte = pooled(model_id, t.train, layer, progress)[0], pooled(model_id, t.test, layer, progress)[0]
            res = analysis.svm_filter_ranking(xtr, tr.labels, xte, te.labels, num_classes=tr.num_classes)
            how = "hinge-loss linear SVM (LinearSVC), C by validation AP"
        else:
            src_tr, src_te = _split_sources(ftr, fte, progress, f"ranking {layer}", _pooled_rows)
            res = analysis.filter_ranking_streamed(src_tr, tr.labels, src_te, te.labels, num_classes=tr.num_classes,
                                                   config=TABLE_CLASSIFIER)
            how = ("least-squares SVM from products accumulated over row blocks, 1/lambda by validation AP "
                   "(the pooled rows exceed FILTERSCOPE_MEMORY_GB for the paper's hinge-loss solver)")
        return {"result": res, "class_names": tr.class_names,
                "provenance": _prov(model_id, f"{t.train} -> {t.test}", layer,
                                    {"pooling": "spatial max", "classifier": how})}

    return _cached(RankingRequest(model_id, task_id, layer, classifier), [ftr.fingerprint, fte.fingerprint],
                   compute, progress)


@dataclass
class FiltersNeededResult:
    """Fig. 4 / Table 5 on one model and layer."""

    ranking: Any  # analysis.FilterRankingResult
    k50: np.ndarray  # [C]
    k90: np.ndarray  # [C]
    class_names: tuple[str, ...]
    provenance: Provenance


def filters_needed(model_id: str, task_id: str, layer: str, progress: Progress | None = None) -> FiltersNeededResult:
    """Filters needed per class (Sec. 4.2, Fig. 4, Table 5): the SVM ranking's AP of the top-k filters
    against the all-filter SVM, and the smallest k reaching half of it."""
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
    """Top-``k`` filter-set overlap between every pair of classes (Fig. 5), from the SVMs' |weights|."""
    r = svm_ranking(model_id, task_id, layer, progress)
    importance = np.abs(r["result"].weights)
    k = int(min(k, importance.shape[1]))
    m = analysis.topk_overlap(importance, k)
    return OverlapResult(m, cluster_order(m), analysis.overlap_chance(importance.shape[1], k),
                         analysis.topk_sets(importance, k), k, r["class_names"], r["provenance"])


def shared_filters(model_id: str, task_id: str, layer: str, i: int, j: int, k: int = 50) -> np.ndarray:
    """The filters in both class ``i``'s and class ``j``'s top-``k`` sets (one cell of Fig. 5)."""
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
    version: int = 2  # 2: rows say whether the layer's non-zero fraction is meaningful


def sparsity(model_id: str, task_id: str, layers: Sequence[str] | None = None,
             progress: Progress | None = None) -> dict:
    """Table 6: % non-zeros per layer (mean ± std over items) and per class.

    A layer whose responses are not rectified (some negative: GELU, a normalised residual stream) gets
    ``meaningful=False`` and NaN for its percentages (:func:`core.analysis.sparsity_meaningful`).
    """
    t = task(task_id)
    layers = tuple(layers or layers_of(model_id))
    feats = {l: features(model_id, t.test, l, progress=progress) for l in layers}

    def compute() -> dict:
        data = load_set(t.test)
        rows, per_class = [], {}
        for l, f in feats.items():
            whole = _fits(f)
            x = f.array() if whole else _blocks(f)
            mapper = None if whole else _reporting_map(_reporter(progress, "sparsity", f"{l} "), x)
            if analysis.sparsity_meaningful(x) if whole else analysis.sparsity_meaningful_sharded(x, map_shards=mapper):
                s = analysis.sparsity_summary(x) if whole else analysis.sparsity_summary_sharded(x, map_shards=mapper)
                rows.append({"layer": l, "mean": 100 * s["mean"], "std": 100 * s["std"], "meaningful": True})
                per_class[l] = 100 * (analysis.class_nonzero_fraction(x, data.labels, data.num_classes) if whole
                                      else analysis.class_nonzero_fraction_sharded(x, data.labels, data.num_classes,
                                                                                   map_shards=mapper))
            else:
                rows.append({"layer": l, "mean": float("nan"), "std": float("nan"), "meaningful": False})
                per_class[l] = np.full(data.num_classes, np.nan)
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
    whole, sketch = _streaming_plan(ftr, fte, "ablation")

    def compute() -> dict:
        tr, te = load_set(t.train), load_set(t.test)
        if whole:
            res = analysis.ablation_study(np.asarray(ftr.array(), np.float32), tr.labels,
                                          np.asarray(fte.array(), np.float32), te.labels,
                                          num_classes=tr.num_classes, seeds=tuple(seeds), config=TABLE_CLASSIFIER)
        else:
            src_tr, src_te = _split_sources(ftr, fte, progress, f"ablation {layer}")
            res = analysis.ablation_study_streamed(src_tr, tr.labels, src_te, te.labels, num_classes=tr.num_classes,
                                                   seeds=tuple(seeds), config=TABLE_CLASSIFIER, max_dim=sketch)
        params = {"seeds": list(seeds), **({"count sketch": sketch} if sketch else {})}
        return {"summary": list(res.summary), "runs": [{k: v for k, v in r.items() if k != "ap"} for r in res.runs],
                "provenance": _prov(model_id, f"{t.train} -> {t.test}", layer, params)}

    return _cached(AblationRequest(model_id, task_id, layer, tuple(seeds)),
                   [ftr.fingerprint, fte.fingerprint, *_sketch_key(sketch)], compute, progress)


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
    whole, sketch = _streaming_plan(ftr, fte, "classifier")
    width = int(np.prod(ftr.shape[1:]))

    def compute() -> dict:
        tr, te = load_set(t.train), load_set(t.test)
        if whole:
            res = analysis.linear_map(np.asarray(ftr.array(), np.float32), tr.labels,
                                      np.asarray(fte.array(), np.float32), te.labels, num_classes=tr.num_classes,
                                      config=TABLE_CLASSIFIER)
        else:
            src_tr, src_te = _split_sources(ftr, fte, progress, f"layer mAP {layer}")
            res = analysis.linear_map_streamed(src_tr, tr.labels, src_te, te.labels, num_classes=tr.num_classes,
                                               config=TABLE_CLASSIFIER, max_dim=sketch)
        return {"map": res.map, "ap": res.ap, "class_names": tr.class_names,
                "columns": width if sketch is None else f"{width} count-sketched to {sketch}"}

    return _cached(LayerMapRequest(model_id, task_id, layer), [ftr.fingerprint, fte.fingerprint, *_sketch_key(sketch)],
                   compute, progress)


def grandmother_cells(model_id: str, task_id: str, layer: str, ratio: float = 0.8) -> pd.DataFrame:
    """Grandmother-cell candidates (Sec. 4.1): filters whose single-filter AP for a class reaches
    ``ratio`` of that class's all-filter SVM AP, best first; ``class`` holds the class's name.

    Both inputs are the cached :func:`filter_ap` and :func:`filters_needed` results of the test split.
    """
    res = filter_ap(model_id, task_id, layer)
    full = filters_needed(model_id, task_id, layer).ranking.full_ap
    gmc = analysis.grandmother_cells(res.ap, full, ratio=ratio)
    return gmc.assign(**{"class": [res.class_names[i] for i in gmc["class"]]}) if len(gmc) else gmc


def filters_needed_table(results: dict[str, FiltersNeededResult]):
    """Table 5: DataFrame with rows ``(model label, "50%" | "90%")`` (models in ``results``'
    order) and one column per class: the number of filters a class needs for that fraction
    of its complete AP (:func:`filters_needed`)."""
    import pandas as pd

    rows = {(model_label(m), level): [int(v) for v in getattr(r, attr)] for m, r in results.items()
            for level, attr in (("50%", "k50"), ("90%", "k90"))}
    names = list(next(iter(results.values())).class_names)
    table = pd.DataFrame.from_dict(rows, orient="index", columns=names)
    table.index = pd.MultiIndex.from_tuples(table.index, names=["model", "perf."])
    return table


def layer_map_table(model_ids: Sequence[str], task_id: str, layers: Sequence[str] | None = None,
                    progress: Progress | None = None):
    """DataFrame: rows = layers, columns = models, values = mAP in percent (Tables 1-4)."""
    import pandas as pd

    layers = list(layers or layers_of(model_ids[0]))
    data = {m: [100 * layer_map(m, task_id, l, progress)["map"] for l in layers] for m in model_ids}
    return pd.DataFrame(data, index=pd.Index(layers, name="layer"))
