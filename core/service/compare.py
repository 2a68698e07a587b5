"""What changed between two networks: layer-by-layer similarity (CKA) and unit-by-unit change (#31).

:func:`cka_layers` compares every layer of one network with every layer of another on the same
items (the task's test split): linear CKA (Kornblith et al. 2019) on all items when the layers'
Grams fit the memory budget, else minibatch CKA over the stored row blocks (Nguyen et al. 2021).
:func:`snapshot_cka` asks Table 3 / Fig. 2's question of representations: each pretraining snapshot's
layers against the final network's. :func:`unit_change` gives, for every unit of a layer, what the
paper measures per layer (AuE, best single-filter AP, sparsity) before and after, how its pooled
responses correlate, and how far its filter's weights moved; units of networks that do not share
identities are matched one to one by their responses first (Li et al. 2016).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from core import analysis
from core.config import memory_budget
from core.errors import DataMissingError, InputError
from core.service.analyses import _blocks, _reporter, _rows_source, filter_ap, selectivity
from core.hashing import code_version
from core.service.catalog import (checkpoint_series, demo_variants, layers_of, load_model, model_info, model_label,
                                  task)
from core.service.feature_store import features, pooled
from core.service.provenance import Provenance, _cached
from core.store.extraction import LayerFeatures, Progress

#: CKA's treatment of conv maps: ``flatten`` (C*H*W values, Kornblith's and Nguyen's choice), or one
#: value per channel, its spatial ``mean`` or ``max``.
POOLS = ("flatten", "mean", "max")
#: Two layers of one shape share unit identities (one network fine-tuned from the other, snapshots of one
#: run) when their filters' median relative change ``‖Δw‖/‖w‖`` is below this (independent random
#: filters are ~1.4 apart); layers without comparable weights, when the median correlation of unit i
#: with unit i is at least the second. Otherwise units are matched by their responses.
SHARED_IDENTITY_WEIGHT_CHANGE = 0.5
SHARED_IDENTITY_CORRELATION = 0.5
#: Matched pairs whose response correlation is below this are called weak on the page.
WEAK_MATCH = 0.5


def _prov_pair(model_a: str, model_b: str, dataset: str, layer: str, params: dict) -> Provenance:
    """Provenance of a comparison: both models in full (``model["a"]``, ``model["b"]``), both weights'
    hashes in the stamp."""
    a, b = model_info(model_a), model_info(model_b)
    sha = "/".join((m.get("weights_sha256") or "none")[:12] for m in (a, b))
    return Provenance({"name": f"{a.get('name')} vs {b.get('name')}", "id": f"{model_a} vs {model_b}",
                       "weights_sha256": sha, "a": a, "b": b}, dataset, layer, dict(params), code_version(),
                      time.strftime("%Y-%m-%d %H:%M"))


def _pool_arg(pool: str) -> str | None:
    if pool not in POOLS:
        raise InputError(f"unknown pooling {pool!r} for CKA; use one of {', '.join(POOLS)}")
    return None if pool == "flatten" else pool


@dataclass(frozen=True)
class CKARequest:
    model_a: str
    model_b: str
    task: str
    pool: str = "flatten"
    debiased: bool = False
    layers_a: tuple[str, ...] = ()
    layers_b: tuple[str, ...] = ()


@dataclass
class CKAResult:
    """Linear CKA ``matrix[i, j]`` between layer ``layers_a[i]`` of A and ``layers_b[j]`` of B."""

    matrix: np.ndarray
    layers_a: tuple[str, ...]
    layers_b: tuple[str, ...]
    pool: str
    estimator: str          # "biased (all items)", "debiased (all items)" or "minibatch debiased, B items"
    items: int
    provenance: Provenance

    def diagonal(self) -> pd.DataFrame:
        """Layers both networks have, with their CKA and how much each moved (``1 - CKA``)."""
        rows = [{"layer": l, "cka": float(self.matrix[i, self.layers_b.index(l)]),
                 "moved": 1.0 - float(self.matrix[i, self.layers_b.index(l)])}
                for i, l in enumerate(self.layers_a) if l in self.layers_b]
        return pd.DataFrame(rows, columns=["layer", "cka", "moved"])


def _held_bytes(feats: Sequence[LayerFeatures]) -> int:
    """What full-data CKA holds: per layer a float64 Gram ``N x N`` or centred features ``N x P``
    (whichever is smaller; every layer a Gram up to ``GRAM_ALL_ITEMS`` items), plus the largest layer's
    float64 copy while it is prepared."""
    n = feats[0].shape[0]
    widths = [int(np.prod(f.shape[1:])) for f in feats]
    kept = n * len(widths) if n <= analysis.GRAM_ALL_ITEMS else sum(min(n, p) for p in widths)
    return 8 * n * (kept + max(widths))


def _minibatch_size(feats: Sequence[LayerFeatures], n: int) -> int:
    """Items per minibatch: one batch of every layer in float64 and its Grams within half the budget."""
    per_item = 8 * sum(int(np.prod(f.shape[1:])) for f in feats)
    b = int(memory_budget() // 2 // max(1, per_item + 8 * len(feats) * 256))
    return int(min(n, max(16, min(b, 4096))))


def cka_layers(model_a: str, model_b: str, task_id: str, *, pool: str = "flatten", debiased: bool = False,
               layers_a: Sequence[str] | None = None, layers_b: Sequence[str] | None = None,
               progress: Progress | None = None) -> CKAResult:
    """Linear CKA between every layer of ``model_a`` and every layer of ``model_b`` on the task's test
    split (any two networks, of any architectures, as they saw the same items).

    All items when the layers' Grams fit ``FILTERSCOPE_MEMORY_GB`` (the biased estimator of Kornblith
    et al. 2019, or with ``debiased`` the unbiased HSIC of Song et al. 2012); else minibatch CKA over
    the stored row blocks (Nguyen et al. 2021: debiased HSIC averaged over equal batches, the last
    partial batch dropped), which the result's ``estimator`` says.
    """
    p = _pool_arg(pool)
    t = task(task_id)
    la, lb = tuple(layers_a or layers_of(model_a)), tuple(layers_b or layers_of(model_b))
    fa = [features(model_a, t.test, l, progress=progress) for l in la]
    fb = [features(model_b, t.test, l, progress=progress) for l in lb]
    n = fa[0].shape[0]
    req = CKARequest(model_a, model_b, task_id, pool, bool(debiased), la, lb)

    def compute() -> CKAResult:
        if _held_bytes(fa + fb) <= memory_budget():
            xs = [np.asarray(f.array()) for f in fa]
            ys = xs if (model_a, la) == (model_b, lb) else [np.asarray(f.array()) for f in fb]
            m = analysis.cka_matrix(xs, ys, debiased=debiased, pool=p)
            how = f"{'debiased' if debiased else 'biased'} (all {n} items)"
        else:
            b = _minibatch_size(fa + fb, n)
            report = _reporter(progress, "CKA", f"{la[0]} ")       # the first layer's reads stand for all
            xs = [_rows_source(f, report if i == 0 else None)() for i, f in enumerate(fa)]
            ys = [_rows_source(f)() for f in fb]
            m = analysis.minibatch_cka_matrix(xs, ys, b, pool=p)
            how = f"minibatch debiased, {b} items a batch, {n // b} batches"
        return CKAResult(m, la, lb, pool, how, n,
                         _prov_pair(model_a, model_b, t.test, "all layers", {"pool": pool, "estimator": how}))

    return _cached(req, [f.fingerprint for f in fa + fb], compute, progress)


def snapshot_models(series: str | None = None) -> tuple[list[int], list[str], str]:
    """``(steps, model ids, final model id)`` of a run: the embedded demo's pretraining snapshots (final:
    the pretrained network), or the checkpoints of a checkpoint-series model id (final: its last)."""
    if series:
        run = checkpoint_series(series)
        if not run:
            raise InputError(f"{series} is not a checkpoint series: name a folder or a glob of one run's "
                             "checkpoints after the @ (e.g. timm:resnet50@runs/exp3/ckpt-*.pth)")
        return [s for s, _ in run], [m for _, m in run], run[-1][1]
    snaps = demo_variants()["snapshots"]
    if not snaps:
        raise DataMissingError("no pretraining snapshots: they exist for the embedded demo only, or name a "
                               "checkpoint series")
    return [int(m.rsplit("-", 1)[1]) for m in snaps], list(snaps), "demo:pretrained"


def snapshot_cka(task_id: str, *, series: str | None = None, pool: str = "flatten",
                 progress: Progress | None = None) -> pd.DataFrame:
    """Each snapshot's layers against the same layers of the final network (CKA of layer ``l`` of
    the snapshot with layer ``l`` at the end of the run): DataFrame indexed by step, one column per
    layer. Table 3 / Fig. 2's question (which layers settle first?) asked of representations."""
    steps, models, final = snapshot_models(series)
    layers = layers_of(final)
    rows = []
    for i, m in enumerate(models):
        if progress:
            progress(i, len(models), f"snapshot {i + 1} of {len(models)} (step {steps[i]}) against the final network")
        r = cka_layers(m, final, task_id, pool=pool, layers_a=layers, layers_b=layers)
        rows.append([float(r.matrix[j, j]) for j in range(len(layers))])
    if progress:
        progress(len(models), len(models), "snapshot CKA done")
    return pd.DataFrame(rows, index=pd.Index(steps, name="step"), columns=layers)


# --------------------------------------------------------------------------- unit by unit
def filter_weights(model_id: str, layer: str, units: int) -> torch.Tensor | None:
    """The weights ``[units, fan_in]`` (float64) of the filters that make ``layer``'s units: the last
    module with a weight of ``units`` rows inside the layer's module, else the last one before it in
    the network (a pooling or activation layer takes its convolution's filters). None when there is
    none (e.g. a token layer of a transformer)."""
    lm = load_model(model_id)
    path = lm.spec.layers.get(layer, layer)
    mods = list(lm.net.named_modules())
    names = [n for n, _ in mods]
    if path not in names:
        return None
    at = names.index(path)
    inside = [m for n, m in mods[at:] if n == path or n.startswith(path + ".")]
    for m in [*reversed(inside), *(m for _, m in reversed(mods[:at]))]:
        w = getattr(m, "weight", None)
        if isinstance(w, torch.Tensor) and w.ndim >= 2 and w.shape[0] == units:
            return w.detach().to(torch.float64).reshape(units, -1)
    return None


def _unit_nonzero(f: LayerFeatures) -> np.ndarray:
    return analysis.unit_nonzero_fraction_sharded(_blocks(f))


@dataclass(frozen=True)
class UnitChangeRequest:
    model_a: str
    model_b: str
    task: str
    layer: str
    match: str = "auto"
    version: int = 2   # bumped when the table or the pairing rule changes


@dataclass
class UnitChangeResult:
    """One row per unit of A's layer (``table``), with its counterpart in B and every measure before
    (A) and after (B); ``matched`` says whether units were paired by response (else by identity)."""

    table: pd.DataFrame
    matched: bool
    identity_correlation: float     # median correlation of unit i in A with unit i in B (NaN: shapes differ)
    class_names: tuple[str, ...]
    provenance: Provenance


MEASURES = {"|ΔAuE|": "d_aue", "|Δ best AP|": "d_best_ap", "|Δ non-zero %|": "d_nonzero",
            "1 - response correlation": "decorrelation", "‖Δw‖/‖w‖": "weight_change"}


def unit_change(model_a: str, model_b: str, task_id: str, layer: str, match: str = "auto",
                progress: Progress | None = None) -> UnitChangeResult:
    """Every unit of ``layer`` before (``model_a``) and after (``model_b``) on the task's test split.

    ``match``: ``identity`` pairs unit ``i`` with unit ``i`` (fine-tuned from the other network,
    snapshots of one run); ``correlation`` pairs units one to one by the correlation of their
    spatially max-pooled responses (:func:`core.analysis.match_units`; scratch vs fine-tuned, two
    architectures); ``auto`` uses identity when both layers have the same number of units and their
    filters stayed close (median ``‖Δw‖/‖w‖`` < 0.5; without comparable weights: median correlation of
    unit ``i`` with unit ``i`` >= 0.5), else matching.

    Per unit: AuE (Appendix), its best class and single-filter AP (Sec. 4.1), the fraction of non-zero
    responses (Table 6's measure per unit), the correlation of its pooled responses with its
    counterpart's, and with identities the relative change of its filter's weights ``‖Δw‖/‖w‖``.
    """
    if match not in ("auto", "identity", "correlation"):
        raise InputError(f"unknown unit matching {match!r}; use auto, identity or correlation")
    t = task(task_id)
    xa, fpa = pooled(model_a, t.test, layer, progress)
    xb, fpb = pooled(model_b, t.test, layer, progress)
    fa, fb = features(model_a, t.test, layer), features(model_b, t.test, layer)

    def compute() -> UnitChangeResult:
        same = xa.shape[1] == xb.shape[1]
        ident = float(np.median(analysis.unit_correlation(xa, xb))) if same else float("nan")
        if match == "identity" and not same:
            raise InputError(f"{layer} has {xa.shape[1]} units in {model_a} but {xb.shape[1]} in {model_b}: "
                             "they cannot be paired by identity; use match='correlation'")
        wa, wb = filter_weights(model_a, layer, xa.shape[1]), filter_weights(model_b, layer, xb.shape[1])
        comparable = wa is not None and wb is not None and wa.shape == wb.shape
        wchange = ((wb - wa).norm(dim=1) / wa.norm(dim=1).clamp_min(1e-12)).numpy() if comparable else None
        if match == "auto" and same:   # one network grew out of the other: its filters stayed near their start
            shared = (float(np.median(wchange)) < SHARED_IDENTITY_WEIGHT_CHANGE if wchange is not None
                      else ident >= SHARED_IDENTITY_CORRELATION)
        by_identity = match == "identity" or (match == "auto" and same and shared)
        if by_identity:
            index, corr = np.arange(xa.shape[1]), analysis.unit_correlation(xa, xb)
        else:
            index, corr = analysis.match_units(xa, xb)
        sa, sb = selectivity(model_a, task_id, layer), selectivity(model_b, task_id, layer)
        pa, pb = filter_ap(model_a, task_id, layer), filter_ap(model_b, task_id, layer)
        za, zb = _unit_nonzero(fa), _unit_nonzero(fb)
        ok = index >= 0
        j = np.where(ok, index, 0)

        def after(v: np.ndarray) -> np.ndarray:
            return np.where(ok, np.asarray(v, dtype=np.float64)[j], np.nan)

        best_a, best_b = pa.ap.argmax(0), pb.ap.argmax(0)
        if not by_identity or wchange is None:
            wchange = np.full(len(index), np.nan)
        names = pa.class_names
        table = pd.DataFrame({
            "unit": np.arange(len(index)), "unit after": index, "match correlation": corr,
            "AuE before": sa.aue, "AuE after": after(sb.aue),
            "best class before": [names[c] for c in best_a],
            "best AP before": pa.ap.max(0),
            "best class after": [names[best_b[k]] if o else "" for k, o in zip(j, ok)],
            "best AP after": after(pb.ap.max(0)),
            "non-zero % before": 100 * za, "non-zero % after": 100 * after(zb),
            "weight change": wchange,
        })
        zb_after = table["non-zero % after"].to_numpy()
        dead_a, dead_b = table["non-zero % before"].to_numpy() == 0, zb_after == 0
        table.insert(2, "status", np.select([~ok, dead_a & dead_b, dead_a, dead_b],
                                            ["unmatched", "dead in both", "dead before", "dead after"], ""))
        table["d_aue"] = (table["AuE after"] - table["AuE before"]).abs()
        table["d_best_ap"] = (table["best AP after"] - table["best AP before"]).abs()
        table["d_nonzero"] = (table["non-zero % after"] - table["non-zero % before"]).abs()
        table["decorrelation"] = 1.0 - table["match correlation"]
        table["weight_change"] = table["weight change"]
        how = "identity" if by_identity else "matched by response correlation (Hungarian)"
        return UnitChangeResult(table, not by_identity, ident, tuple(names),
                                _prov_pair(model_a, model_b, t.test, layer, {"units": how}))

    return _cached(UnitChangeRequest(model_a, model_b, task_id, layer, match),
                   [fpa, fpb, fa.fingerprint, fb.fingerprint], compute, progress)


def most_changed(result: UnitChangeResult, measure: str = "|ΔAuE|", k: int = 10) -> pd.DataFrame:
    """The ``k`` units that changed most by ``measure`` (a key of :data:`MEASURES`), largest first."""
    if measure not in MEASURES:
        raise InputError(f"unknown change measure {measure!r}; use one of {', '.join(MEASURES)}")
    col = MEASURES[measure]
    return result.table.sort_values(col, ascending=False, kind="stable", na_position="last").head(int(k))


def compare_summary(model_a: str, model_b: str, task_id: str, layer: str | None = None, pool: str = "flatten",
                    k: int = 10, progress: Progress | None = None) -> dict:
    """What ``python -m core compare`` prints and writes: the CKA diagonal (how much each layer moved)
    and the top ``k`` changed units of ``layer`` (default: the last layer both networks have) by |ΔAuE|."""
    cka = cka_layers(model_a, model_b, task_id, pool=pool, progress=progress)
    diag = cka.diagonal()
    if layer is None:
        if diag.empty:
            raise InputError(f"{model_label(model_a)} and {model_label(model_b)} share no layer name; pass --layer")
        layer = str(diag["layer"].iloc[-1])
    units = unit_change(model_a, model_b, task_id, layer, progress=progress)
    top = most_changed(units, "|ΔAuE|", k)
    cols = ["unit", "unit after", "match correlation", "AuE before", "AuE after", "best class before",
            "best class after", "best AP before", "best AP after", "weight change"]
    return {"model_a": model_a, "model_b": model_b, "task": task_id, "pool": pool, "estimator": cka.estimator,
            "layers_a": list(cka.layers_a), "layers_b": list(cka.layers_b), "cka": cka.matrix.tolist(),
            "diagonal": diag.to_dict("records"), "layer": layer, "units_matched": units.matched,
            "identity_correlation": units.identity_correlation,
            "top_changed_units": top[cols].to_dict("records"),
            "provenance": {"cka": cka.provenance.__dict__, "units": units.provenance.__dict__}}
