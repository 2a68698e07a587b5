"""What changed between two networks (core/service/compare.py, #31) on the tiny demo, held against
literal formulas written here (centred Grams and traces, Pearson correlations, weight norms) and the
service's own per-layer analyses that the other tests hold to the paper."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from core import service
from core.service import compare

PRE, FT, SCRATCH, TASK = "demo:pretrained", "demo:finetuned", "demo:scratch", "demo-detgt"
pytestmark = pytest.mark.usefixtures("demo_env")


def _literal_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al. 2019, Eq. 2-3: HSIC(K, L) = tr(K H L H) / (n-1)^2 with linear kernels."""
    x, y = x.reshape(len(x), -1).astype(np.float64), y.reshape(len(y), -1).astype(np.float64)
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    k, l = x @ x.T, y @ y.T
    hsic = lambda a, b: np.trace(a @ h @ b @ h) / (n - 1) ** 2  # noqa: E731
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def _test_features(model: str, layer: str) -> np.ndarray:
    return np.asarray(service.features(model, service.task(TASK).test, layer).array(), dtype=np.float64)


def test_cka_matrix_is_linear_cka_of_every_layer_pair():
    r = service.cka_layers(PRE, FT, TASK)
    layers = service.layers_of(FT)
    assert r.matrix.shape == (7, 7) and r.layers_a == tuple(layers) and r.estimator.startswith("biased")
    for i, j in ((0, 0), (4, 4), (6, 6), (1, 5)):
        assert r.matrix[i, j] == pytest.approx(_literal_cka(_test_features(PRE, layers[i]),
                                                            _test_features(FT, layers[j])), rel=1e-9)
    pooled = service.cka_layers(PRE, FT, TASK, pool="mean")
    x, y = _test_features(PRE, "conv3").mean(axis=(2, 3)), _test_features(FT, "conv3").mean(axis=(2, 3))
    assert pooled.matrix[2, 2] == pytest.approx(_literal_cka(x, y), rel=1e-9)
    d = r.diagonal()
    assert list(d["layer"]) == layers and np.allclose(d["moved"], 1 - np.diag(r.matrix))
    same = service.cka_layers(FT, FT, TASK)
    np.testing.assert_allclose(np.diag(same.matrix), 1.0, atol=1e-12)
    assert r.provenance.model["a"]["id"] == PRE and r.provenance.model["b"]["id"] == FT
    with pytest.raises(service.InputError, match="pooling"):
        service.cka_layers(PRE, FT, TASK, pool="median")


def test_cka_over_budget_streams_minibatches(monkeypatch):
    monkeypatch.setattr(compare, "_cached", lambda req, fps, compute, progress=None: compute())
    full = service.cka_layers(PRE, FT, TASK, debiased=True, layers_a=["conv5", "fc7"], layers_b=["conv5", "fc7"])
    monkeypatch.setenv("FILTERSCOPE_MEMORY_GB", str(2**20 / 2**30))                # 1 MiB: far below the Grams
    mb = service.cka_layers(PRE, FT, TASK, layers_a=["conv5", "fc7"], layers_b=["conv5", "fc7"])
    assert mb.estimator.startswith("minibatch debiased") and mb.matrix.shape == (2, 2)
    assert np.abs(mb.matrix - full.matrix).max() < 0.15       # an unbiased estimate of the same quantity


def test_unit_change_by_identity_against_the_per_layer_analyses():
    res = service.unit_change(PRE, FT, TASK, "conv5")
    t = res.table
    assert not res.matched and list(t["unit after"]) == list(range(len(t)))
    np.testing.assert_array_equal(t["AuE before"], service.selectivity(PRE, TASK, "conv5").aue)
    np.testing.assert_array_equal(t["AuE after"], service.selectivity(FT, TASK, "conv5").aue)
    ap = service.filter_ap(FT, TASK, "conv5")
    np.testing.assert_array_equal(t["best AP after"], ap.ap.max(0))
    assert list(t["best class after"]) == [ap.class_names[c] for c in ap.ap.argmax(0)]
    a, b = _test_features(PRE, "conv5"), _test_features(FT, "conv5")
    np.testing.assert_allclose(t["non-zero % after"], 100 * (b != 0).mean(axis=(0, 2, 3)), atol=1e-12)
    pa, pb = a.max(axis=(2, 3)), b.max(axis=(2, 3))
    for u in (0, 5, 17):
        r = np.corrcoef(pa[:, u], pb[:, u])[0, 1]
        if np.isfinite(r):
            assert t["match correlation"][u] == pytest.approx(r, abs=1e-9)
    wa = service.load_model(PRE).net.conv5[0].weight.detach().double().reshape(len(t), -1)
    wb = service.load_model(FT).net.conv5[0].weight.detach().double().reshape(len(t), -1)
    literal = ((wb - wa).norm(dim=1) / wa.norm(dim=1)).numpy()
    np.testing.assert_allclose(t["weight change"], literal, rtol=1e-12)
    top = service.most_changed(res, "‖Δw‖/‖w‖", 3)
    assert list(top["unit"]) == list(np.argsort(-literal, kind="stable")[:3])
    dead = t["status"].str.startswith("dead")
    assert (t.loc[t["non-zero % before"] == 0, "status"].str.startswith("dead")).all() and dead.sum() >= 0


def test_unit_change_matches_units_of_unrelated_networks():
    res = service.unit_change(SCRATCH, FT, TASK, "fc7")          # trained separately: no shared identities
    t = res.table
    assert res.matched and res.identity_correlation < compare.SHARED_IDENTITY_CORRELATION
    idx = t["unit after"].to_numpy()
    assert sorted(idx) == list(range(len(idx)))                 # one to one (same width: a permutation)
    a, b = _test_features(SCRATCH, "fc7"), _test_features(FT, "fc7")
    for u in range(0, len(idx), 37):
        if a[:, u].std() > 0 and b[:, idx[u]].std() > 0:
            assert t["match correlation"][u] == pytest.approx(np.corrcoef(a[:, u], b[:, idx[u]])[0, 1], abs=1e-9)
    assert t["weight change"].isna().all()                      # weights of different units are not compared
    forced = service.unit_change(SCRATCH, FT, TASK, "fc7", match="identity")
    assert not forced.matched
    with pytest.raises(service.InputError, match="matching"):
        service.unit_change(PRE, FT, TASK, "fc7", match="nearest")


def test_filter_weights_of_a_pooling_layer_are_its_convolutions():
    w = service.filter_weights("tv:alexnet", "conv1", 64)        # features.2 is a max-pool after features.0
    conv = service.load_model("tv:alexnet").net.features[0].weight.detach().double().reshape(64, -1)
    torch.testing.assert_close(w, conv)
    assert service.filter_weights("tv:alexnet", "conv1", 65) is None


def test_snapshot_cka_rows_are_the_diagonal_against_the_pretrained_net():
    df = service.snapshot_cka(TASK)
    steps, models, final = service.snapshot_models()
    assert list(df.index) == steps and final == PRE and list(df.columns) == service.layers_of(PRE)
    r = service.cka_layers(models[0], PRE, TASK)
    np.testing.assert_allclose(df.iloc[0].to_numpy(), np.diag(r.matrix), atol=1e-12)


def test_compare_cli_prints_and_writes_the_diagonal_and_units(tmp_path, capsys):
    from core.__main__ import main

    out = tmp_path / "cmp.json"
    assert main(["compare", "--a", PRE, "--b", FT, "--task", TASK, "--layer", "conv5", "--top", "4",
                 "--json", str(out)]) == 0
    text = capsys.readouterr().out
    doc = json.loads(out.read_text())
    r = service.cka_layers(PRE, FT, TASK)
    assert [d["layer"] for d in doc["diagonal"]] == list(r.layers_a)
    np.testing.assert_allclose([d["cka"] for d in doc["diagonal"]], np.diag(r.matrix))
    assert doc["layer"] == "conv5" and len(doc["top_changed_units"]) == 4
    top = service.most_changed(service.unit_change(PRE, FT, TASK, "conv5"), "|ΔAuE|", 4)
    assert [u["unit"] for u in doc["top_changed_units"]] == list(top["unit"])
    assert "conv1" in text and "moved (1 - CKA)" in text and f"wrote {out}" in text
    assert doc["provenance"]["cka"]["model"]["a"]["id"] == PRE


def test_the_cka_finding_reads_the_diagonal():
    from core.analysis import findings as fnd

    rows = {r["id"]: r for r in service.findings()}
    row = rows["cka_moves_fc"]
    diag = service.cka_layers(PRE, FT, TASK).diagonal()
    expect = fnd.cka_moves_fc(dict(zip(diag["layer"], diag["cka"])), ("fc6", "fc7"), ("conv1", "conv2", "conv3"))
    assert row["holds"] is expect.holds and row["numbers"]["moved"] == pytest.approx(expect.numbers["moved"])
