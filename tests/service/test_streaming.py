"""Every per-layer analysis of the service under a tiny memory budget (FILTERSCOPE_MEMORY_GB forcing
many row blocks and no whole-layer copy) against the same analysis held in memory (#30)."""
from __future__ import annotations

import numpy as np
import pytest

from core import analysis
from core.service import analyses
from core.store.extraction import LayerFeatures

FT, TASK = "demo:finetuned", "demo-detgt"
# budgets far below the layers' working copies (12 bytes a value): conv2 (228 x 64 x 8 x 8 on the test
# split) in blocks of 16 rows, conv5 (331 x 64 x 4 x 4 on the train split) in blocks of 16 rows, fc7
# (228 x 256) in blocks of 4 rows
BUDGET = {"conv2": 4 * 2**20, "conv5": 2**20, "fc7": 64 * 2**10}


@pytest.fixture
def uncached(monkeypatch):
    """Compute every request afresh (in memory first, then streamed, on the same stored features)."""
    monkeypatch.setattr(analyses, "_cached", lambda request, fingerprints, compute, progress=None: compute())


def _streamed(monkeypatch, fn, *args, **kw):
    """``fn(*args)`` under a tiny budget (``BUDGET`` of the layer in ``args``, else the smallest),
    with every whole-layer read refused."""
    def refuse(self):
        raise AssertionError(f"{self.path.name}: a whole-layer read under a tiny budget")
    budget = next((BUDGET[a] for a in args if a in BUDGET), min(BUDGET.values()))
    with monkeypatch.context() as m:
        m.setenv("FILTERSCOPE_MEMORY_GB", str(budget / 2**30))
        m.setattr(LayerFeatures, "array", refuse)
        m.setattr(analysis, "sketch_dim", lambda budget: 10**9)   # exact classifiers, to compare
        return fn(*args, **kw)


@pytest.mark.usefixtures("demo_env", "uncached")
def test_streamed_analyses_equal_in_memory(monkeypatch):
    for layer in ("conv2", "fc7"):
        ref, got = analyses.selectivity(FT, TASK, layer), _streamed(monkeypatch, analyses.selectivity, FT, TASK, layer)
        np.testing.assert_array_equal(got.aue, ref.aue)
        np.testing.assert_array_equal(got.baseline_mean_aue, ref.baseline_mean_aue)
        for fn, args in ((analyses.entropy_curve, (FT, TASK, layer, 3)),
                         (analyses.top_activations, (FT, TASK, layer, 5))):
            ref, got = fn(*args), _streamed(monkeypatch, fn, *args)
            for k, v in ref.items():
                if isinstance(v, np.ndarray):
                    np.testing.assert_allclose(got[k], v, rtol=1e-6, err_msg=f"{fn.__name__} {k}")
    # the classifiers on a conv layer wider than its training set: held in memory in the dual form,
    # streamed in the primal (fc layers: tests/analysis/test_streamed_svm.py)
    ref, got = analyses.layer_map(FT, TASK, "conv5"), _streamed(monkeypatch, analyses.layer_map, FT, TASK, "conv5")
    np.testing.assert_allclose(got["ap"], ref["ap"], atol=1e-6)
    ref = analyses.ablation(FT, TASK, "conv5", seeds=(0,))
    got = _streamed(monkeypatch, analyses.ablation, FT, TASK, "conv5", seeds=(0,))
    assert [a["ablation"] for a in got["runs"]] == ["original", "binarize", "sp-shuffle", "sp-max"]
    for a, b in zip(got["runs"], ref["runs"]):
        assert (a["ablation"], a["map"]) == (b["ablation"], pytest.approx(b["map"], abs=1e-6))
    ref, got = analyses.sparsity(FT, TASK), _streamed(monkeypatch, analyses.sparsity, FT, TASK)
    for a, b in zip(got["table"], ref["table"]):
        assert a["mean"] == pytest.approx(b["mean"], abs=1e-9) and a["std"] == pytest.approx(b["std"], abs=1e-9)


@pytest.mark.usefixtures("demo_env", "uncached")
def test_a_layer_wider_than_the_budget_is_sketched_and_says_so(monkeypatch):
    monkeypatch.setenv("FILTERSCOPE_MEMORY_GB", str(BUDGET["fc7"] / 2**30))
    res = analyses.layer_map(FT, TASK, "conv5")
    k = analysis.sketch_dim(BUDGET["fc7"])
    assert res["columns"].endswith(f"count-sketched to {k}")
    assert 0 <= res["map"] <= 1
    ab = analyses.ablation(FT, TASK, "fc7", seeds=(0,))
    assert ab["provenance"].params["count sketch"] == k


@pytest.mark.usefixtures("demo_env", "uncached")
def test_filters_needed_over_budget_ranks_by_streamed_least_squares(monkeypatch):
    """Fig. 4 when the pooled rows are too large for the hinge-loss solver: least-squares SVMs over row
    blocks, said in the provenance, equal to the analysis function on the pooled arrays (which
    tests/analysis/test_streamed_svm.py holds to the formulas); within the budget, the paper's SVMs."""
    from core.service import catalog
    from core.service.feature_store import pooled

    t = catalog.task(TASK)
    tr, te = catalog.load_set(t.train), catalog.load_set(t.test)
    for layer in ("conv5", "fc7"):
        hinge = analyses.filters_needed(FT, TASK, layer)
        assert hinge.provenance.params["classifier"].startswith("hinge-loss")
        got = _streamed(monkeypatch, analyses.filters_needed, FT, TASK, layer)
        assert got.provenance.params["classifier"].startswith("least-squares SVM")
        xtr, xte = pooled(FT, t.train, layer)[0], pooled(FT, t.test, layer)[0]
        ref = analysis.filter_ranking_streamed(analysis.array_source(xtr, 10**6), tr.labels,
                                               analysis.array_source(xte, 10**6), te.labels,
                                               num_classes=tr.num_classes, config=analyses.TABLE_CLASSIFIER)
        np.testing.assert_allclose(got.ranking.ap_by_k, ref.ap_by_k, atol=1e-6)
        np.testing.assert_allclose(got.ranking.weights, ref.weights, atol=1e-4)
        np.testing.assert_array_equal(got.k50, analysis.filters_needed(ref.k_values, ref.ap_by_k, ref.full_ap, 0.5))
        ov = _streamed(monkeypatch, analyses.overlap, FT, TASK, layer)
        np.testing.assert_allclose(ov.matrix, analysis.topk_overlap(np.abs(ref.weights), ov.k), atol=1e-12)


def _passes(calls: list, prefix: str) -> dict:
    """``{(label, pass): [block numbers]}`` of the progress messages starting ``prefix``, checking each
    message's counts against its ``(done, total)``."""
    import re

    out: dict = {}
    for done, total, msg in calls:
        if msg.startswith(prefix):
            m = re.fullmatch(re.escape(prefix) + r": (\w* ?)pass (\d+), block (\d+)/(\d+)", msg)
            assert m and (int(m[3]), int(m[4])) == (done, total), msg
            out.setdefault((m[1].strip(), int(m[2])), []).append((done, total))
    return out


@pytest.mark.usefixtures("demo_env", "uncached")
def test_streamed_analyses_report_every_block_read(monkeypatch):
    """A cold streamed analysis shows progress (#30): each pass over a layer reports blocks 1..n of that
    layer's n row blocks, in order, and the numbers are those computed without a progress callback."""
    from core.service import catalog, compare
    from core.service.feature_store import features

    t = catalog.task(TASK)
    monkeypatch.setenv("FILTERSCOPE_MEMORY_GB", str(BUDGET["conv5"] / 2**30))
    blocks = {s: len(analyses._blocks(features(FT, getattr(t, s), "conv5"))) for s in ("train", "test")}
    assert min(blocks.values()) > 4                                   # many blocks, so many reports
    for fn, what, kw, reads in ((analyses.layer_map, "layer mAP conv5", {}, {"train": 3, "test": 1}),
                                (analyses.ablation, "ablation conv5", {"seeds": (0,)}, {"train": 3, "test": 1}),
                                (analyses.selectivity, "selectivity conv5", {}, {"": 2})):
        calls: list = []
        got = _streamed(monkeypatch, fn, FT, TASK, "conv5", progress=lambda *a: calls.append(a), **kw)
        ref = _streamed(monkeypatch, fn, FT, TASK, "conv5", **kw)
        passes = _passes(calls, f"streaming {what}")
        for label, least in reads.items():
            seen = sorted(k for lab, k in passes if lab == label)
            assert len(seen) >= least and seen == list(range(1, len(seen) + 1)), (what, label, seen)
        for (label, _), got_blocks in passes.items():
            n = blocks[label or "test"]
            assert got_blocks == [(i, n) for i in range(1, n + 1)], (what, label)
        if isinstance(got, dict):
            assert got.get("map") == ref.get("map") and got.get("summary") == ref.get("summary")
        else:
            np.testing.assert_array_equal(got.aue, ref.aue)
    calls = []
    _streamed(monkeypatch, analyses.sparsity, FT, TASK, ("conv5",), progress=lambda *a: calls.append(a))
    assert _passes(calls, "streaming sparsity") and all(lab == "conv5" for lab, _ in _passes(calls, "streaming sparsity"))
    monkeypatch.setattr(compare, "_cached", lambda request, fingerprints, compute, progress=None: compute())
    calls = []
    _streamed(monkeypatch, compare.cka_layers, FT, FT, TASK, layers_a=("conv5",), layers_b=("conv5",),
              progress=lambda *a: calls.append(a))
    assert list(_passes(calls, "streaming CKA")) == [("conv5", 1)]


@pytest.mark.usefixtures("demo_env")
def test_the_demo_layers_are_held_whole_at_the_default_budget(monkeypatch):
    """Streaming never changes the demo's numbers: at 1 GiB every demo layer fits even the ablations'
    in-memory working copies (the largest estimate), on both splits together."""
    from core.service import catalog
    from core.service.feature_store import features

    monkeypatch.delenv("FILTERSCOPE_MEMORY_GB", raising=False)
    t = catalog.task(TASK)
    for layer in catalog.layers_of(FT):
        assert analyses._fits(features(FT, t.train, layer), features(FT, t.test, layer), held="ablation"), layer


def test_memory_budget_setting(monkeypatch):
    from core.config import memory_budget
    from core.errors import InputError

    monkeypatch.delenv("FILTERSCOPE_MEMORY_GB", raising=False)
    assert memory_budget() == 2**30
    monkeypatch.setenv("FILTERSCOPE_MEMORY_GB", "0.5")
    assert memory_budget() == 2**29
    for bad in ("lots", "0", "-1", "nan", "inf"):
        monkeypatch.setenv("FILTERSCOPE_MEMORY_GB", bad)
        with pytest.raises(InputError, match="FILTERSCOPE_MEMORY_GB"):
            memory_budget()


def test_cli_progress_keeps_model_ids_whole_and_one_bar_per_pass(capsys):
    """The CLI's bars are keyed by the text before the first ": ": a model id's colon does not split it,
    and a streamed analysis's passes share one bar that shows the pass and block."""
    from core.__main__ import tqdm_progress

    with tqdm_progress() as cb:
        cb(1, 4, "extracting conv5 from tv:alexnet")
        cb(4, 4, "extracting conv5 from tv:alexnet")
        cb(1, 3, "streaming ablation conv3: train pass 1, block 1/3")
        cb(3, 3, "streaming ablation conv3: train pass 2, block 3/3")
    err = capsys.readouterr().err
    assert "extracting conv5 from tv:alexnet: 100%" in err           # the id whole in the bar's title
    assert "streaming ablation conv3: 100%" in err and "3/3 [" in err and "train pass 2, block 3/3]" in err
