"""AppTests of the Overview, Sparsity & ablations and Training dynamics pages (data held against the service)."""
from __future__ import annotations

import numpy as np

from conftest import app_test, plotly_figures


def _no_errors(at):
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def test_overview_renders_map_table_and_findings(demo_env):
    from core import service
    at = app_test("pages/overview.py")
    _no_errors(at)
    figs = plotly_figures(at)
    assert len(figs) == 1
    expected = service.layer_map_table(["demo:finetuned"], "demo-detgt")
    y = np.asarray(figs[0]["data"][0]["y"], dtype=float)
    np.testing.assert_allclose(y, expected.iloc[:, 0].round(1).to_numpy(), atol=1e-6)
    assert any("finding" in df.value.columns for df in at.dataframe)


def test_sparsity_and_ablation_follow_the_service(demo_env):
    from core import service
    at = app_test("pages/ablations.py")
    _no_errors(at)
    figs = plotly_figures(at)
    assert len(figs) == 2
    task = at.query_params["task"][0] if isinstance(at.query_params["task"], list) else at.query_params["task"]
    sp = service.sparsity("demo:finetuned", task)
    means = [r["mean"] for r in sp["table"]]
    ys = np.concatenate([np.asarray(t["y"], dtype=float) for t in figs[0]["data"] if t.get("y") is not None])
    for m in means:
        assert np.isclose(ys, m, atol=1e-6).any()
    # fewer splits -> a different ablation result (widget changes the output)
    before = at.get("plotly_chart")[1].proto.spec
    at.slider(key="abl_seeds").set_value(1).run()
    _no_errors(at)
    assert at.get("plotly_chart")[1].proto.spec != before


def test_training_dynamics_snapshots_and_regimes(demo_env):
    from core import service
    at = app_test("pages/training.py")
    _no_errors(at)
    figs = plotly_figures(at)
    assert len(figs) == 5  # Table 3, Fig. 2, Table 1, Table 2, the training loss curves
    curves = service.training_curves()
    losses = {t["name"]: np.asarray(t["y"], dtype=float) for t in figs[4]["data"]}
    assert set(losses) == set(curves) and curves  # every run of the demo build
    from core.demo import build as demo
    man = demo.manifest()
    total = {"pretrain": man["pretrain"]["iterations"], **{k: v["iterations"] for k, v in man["finetune"].items()}}
    for run, c in curves.items():
        np.testing.assert_allclose(losses[run], c["loss"], atol=1e-6)
        # the build keeps every max(1, n // 200)-th of the n steps' losses, from step 1
        assert len(c["iteration"]) == len(range(0, total[run], max(1, total[run] // 200)))
        assert c["iteration"][0] == 1 and c["iteration"][-1] <= total[run]
    task = at.query_params["task"][0] if isinstance(at.query_params["task"], list) else at.query_params["task"]
    snap = service.snapshot_table(task).round(1)
    conv1 = next(t for t in figs[0]["data"] if t.get("name") == "conv1")
    np.testing.assert_allclose(np.asarray(conv1["y"], dtype=float), snap["conv1"].to_numpy(), atol=1e-6)
    grid_before = at.get("plotly_chart")[1].proto.spec
    its = list(snap.index)
    at.select_slider(key="snap_it").set_value(its[0]).run()
    _no_errors(at)
    assert at.get("plotly_chart")[1].proto.spec != grid_before  # other snapshot -> other conv1 filters
    at.select_slider(key="snap_it").set_value(its[-1]).run()
    assert at.get("plotly_chart")[1].proto.spec == grid_before   # back: the same figure (kept or rebuilt)
    # the page keeps its figures between reruns (ui.common.memo_figure): presentation mode rebuilds them
    assert {f["layout"]["font"]["size"] for f in plotly_figures(at)} == {16}
    at.session_state["presentation"] = True
    at.run()
    _no_errors(at)
    assert {f["layout"]["font"]["size"] for f in plotly_figures(at)} == {22}


def test_warm_page_timer_refuses_a_choice_the_sidebar_ignores(demo_env):
    """bench/pages_warm.py with a model the app does not list stops, instead of timing the default model."""
    import importlib.util

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("pages_warm", ROOT / "bench" / "pages_warm.py")
    timer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(timer)
    out = timer.main(None, 1, {"model": "tv:not-registered"})
    assert "pages" not in out and "tv:not-registered" in out["error"] and "FILTERSCOPE_MODELS" in out["error"]
