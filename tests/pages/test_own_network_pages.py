"""Your own network in the app (#29): a py: model file and a timm ViT on an ImageFolder task render every
analysis page with no exception and no error box, at a default layer and at a nested module path."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import plotly_figures
from core import service
from core.service import catalog

pytestmark = pytest.mark.usefixtures("demo_env")

NET = '''
from torch import nn


def build():
    body = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU())
    net = nn.Sequential()
    net.add_module("body", body)
    net.add_module("pool", nn.AdaptiveAvgPool2d(1))
    net.add_module("flat", nn.Flatten())
    net.add_module("head", nn.Linear(8, 3))
    return net, {"input_size": 32, "layers": ["body.1", "body.3"]}
'''

PAGES = ("pages/overview.py", "pages/selectivity.py", "pages/precision-recall.py", "pages/filters-needed.py",
         "pages/overlap.py", "pages/ablations.py", "pages/probe.py")


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    rng = np.random.default_rng(1)
    for split, n in (("train", 8), ("test", 6)):
        for c, channel in (("red", 0), ("green", 1), ("blue", 2)):
            d = root / "pets" / split / c
            d.mkdir(parents=True)
            for i in range(n):
                im = rng.integers(0, 110, (36, 40, 3), dtype=np.uint8)
                im[..., channel] += 140
                Image.fromarray(im).save(d / f"{i}.png")
    (root / "netfile.py").write_text(NET)
    saved = (dict(catalog._MODELS), dict(catalog._TASKS))
    task = service.register_imagefolder(str(root / "pets")).id
    models = [service.register_model(f"py:{root / 'netfile.py'}:build"), service.register_model("timm:test_vit")]
    yield models, task
    catalog._MODELS.clear(), catalog._MODELS.update(saved[0])
    catalog._TASKS.clear(), catalog._TASKS.update(saved[1])


def _page(page: str, model: str, task: str, layer: str):
    from streamlit.testing.v1 import AppTest

    from conftest import APP

    at = AppTest.from_file(str(APP), default_timeout=180)
    at.session_state["sel_model"], at.session_state["sel_task"] = model, task
    at.session_state["sel_layer"] = layer
    at.run()
    at.switch_page(page).run()
    assert not at.exception, (page, [e.value for e in at.exception])
    assert not at.error, (page, [e.value for e in at.error])
    task_box = next(s for s in at.sidebar.selectbox if s.label == "Task / data")
    model_box = next(s for s in at.sidebar.selectbox if s.label == "Model")
    assert (model_box.value, task_box.value) == (model, task), page  # the page runs on them, not the demo
    return at


@pytest.mark.parametrize("page", PAGES)
def test_py_model_renders_every_analysis_page(own, page):
    (py_model, _), task = own
    at = _page(page, py_model, task, "body.3")
    if page == "pages/overview.py":
        return
    assert plotly_figures(at), page
    if page == "pages/ablations.py":  # picks its own layers: no sidebar layer there
        return
    layer_box = next(s for s in at.sidebar.selectbox if s.label == "Layer")
    assert layer_box.value == "body.3" and "body.2 (module)" in layer_box.options  # any layer, defaults first
    assert layer_box.options[:2] == ["body.1", "body.3"]


@pytest.mark.parametrize("page", PAGES)
def test_vit_renders_at_a_block_and_sparsity_says_not_meaningful(own, page):
    (_, vit), task = own
    at = _page(page, vit, task, "blocks.1")
    assert plotly_figures(at) or page == "pages/overview.py", page
    if page == "pages/ablations.py":
        assert any("Not meaningful for blocks.0" in str(c.value) for c in at.caption)


def test_own_model_and_data_open_without_building_the_demo(own, tmp_path, monkeypatch):
    """Started with FILTERSCOPE_MODELS and FILTERSCOPE_IMAGEFOLDER on an empty cache, the app opens on the
    user's model and task at once: no demo build (it waits for a demo model, a demo task or the button);
    Training dynamics says what it needs instead of computing the demo's snapshots on the user's task."""
    (py_model, _), task = own
    monkeypatch.setenv("FILTERSCOPE_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("FILTERSCOPE_DEMO", "tiny")
    assert not service.demo_is_built()
    from streamlit.testing.v1 import AppTest

    from conftest import APP

    at = AppTest.from_file(str(APP), default_timeout=180)
    at.run()
    assert not at.exception and not at.error, [e.value for e in list(at.exception) + list(at.error)]
    assert not any("Building the embedded demo" in str(s.label) for s in at.get("expandable"))
    assert next(s for s in at.sidebar.selectbox if s.label == "Model").value == py_model
    assert next(s for s in at.sidebar.selectbox if s.label == "Task / data").value == task
    assert any(b.label == "Build the embedded demo" for b in at.sidebar.button)
    at.switch_page("pages/training.py").run()
    assert not at.exception and any("checkpoints of a training run" in str(i.value) for i in at.info)
    assert not service.demo_is_built() and not (tmp_path / "empty-cache" / "demo").exists()


def test_findings_of_an_own_model_never_fall_back_to_the_demo_networks(own):
    """Without a compare model the rows that need a pretrained counterpart say how to give one; rows that
    need the demo's other networks say only the demo has them (before: demo:pretrained was used, a network
    trained on other data, and demo:scratch's numbers were read at the user's layers)."""
    (py_model, _), task = own
    assert service.pretrained_counterpart(py_model) is None
    assert service.pretrained_counterpart("demo:finetuned") == "demo:pretrained"
    rows = {r["id"]: r for r in service.findings(py_model, None, task)}
    assert rows["selectivity_depth"]["holds"] is None and "compare model" in rows["selectivity_depth"]["why"]
    assert rows["pretrain_beats_scratch"]["holds"] is None and "only the embedded demo" in \
        rows["pretrain_beats_scratch"]["why"]
    assert rows["binarize_cheap"]["holds"] is not None  # measured on the user's own model and task
    with_pre = {r["id"]: r for r in service.findings(py_model, py_model, task)}
    assert with_pre["selectivity_depth"]["holds"] is not None  # a counterpart given: measured


@pytest.fixture(scope="module")
def run_series(own, tmp_path_factory):
    """A checkpoint series of three files of the py: model, named so that name order is not step order."""
    import torch

    from core.data.models import get_model

    (py_model, _), _task = own
    folder = tmp_path_factory.mktemp("run")
    for seed, step in ((0, 5), (1, 40), (2, 300)):
        torch.manual_seed(seed)
        net = get_model(py_model).net
        for p in net.parameters():
            p.data.normal_(0, 0.3)
        torch.save(net.state_dict(), folder / f"ckpt-{step}.pth")
    return folder


def test_checkpoint_series_by_glob_or_folder(own, run_series):
    import hashlib

    from core.data.models import get_model

    (py_model, _), task = own
    glob_id, folder_id = f"{py_model}@{run_series}/ckpt-*.pth", f"{py_model}@{run_series}"
    run = service.checkpoint_series(glob_id)
    assert [s for s, _ in run] == [5, 40, 300] and run == service.checkpoint_series(folder_id)
    assert run[1][1] == f"{py_model}@{run_series / 'ckpt-40.pth'}"
    lm = get_model(glob_id)  # the series as a model: its last checkpoint
    assert lm.spec.weights.sha256 == hashlib.sha256((run_series / "ckpt-300.pth").read_bytes()).hexdigest()
    assert lm.spec.extra["series_steps"] == [5, 40, 300]
    assert service.pretrained_counterpart(glob_id) == run[0][1]
    table = service.snapshot_table(task, ["body.1", "body.3"], series=glob_id)
    assert list(table.index) == [5, 40, 300] and table.index.name == "checkpoint step"
    for step, member in run:  # each row is that checkpoint's own per-layer mAP
        assert table.loc[step, "body.3"] == pytest.approx(100 * service.layer_map(member, task, "body.3")["map"])
    assert service.checkpoint_series(py_model) == [] and service.checkpoint_series("demo:finetuned") == []


def test_checkpoint_series_errors(own, tmp_path):
    from core.data.models import get_model
    from core.errors import InputError

    (py_model, _), _task = own
    with pytest.raises(InputError, match="names no weights file"):
        get_model(f"{py_model}@{tmp_path}/ckpt-*.pth")
    (tmp_path / "final.pth").write_bytes(b"x")
    with pytest.raises(InputError, match="no step number in final.pth"):
        get_model(f"{py_model}@{tmp_path}")
    (tmp_path / "final.pth").unlink()
    (tmp_path / "a-7.pth").write_bytes(b"x"), (tmp_path / "b-7.pth").write_bytes(b"x")
    with pytest.raises(InputError, match="several files have step 7"):
        get_model(f"{py_model}@{tmp_path}/*.pth")


def test_training_page_on_a_checkpoint_series(own, run_series):
    (py_model, _), task = own
    series = service.register_model(f"{py_model}@{run_series}/ckpt-*.pth")
    at = _page("pages/training.py", series, task, "body.3")
    snap = next(d for d in at.dataframe if list(d.value.index) == [5, 40, 300])
    assert list(snap.value.columns) == ["body.1", "body.3"]
    assert any("one run's checkpoints do not hold them" in str(i.value) for i in at.info)
    assert len(plotly_figures(at)) >= 2  # Table 3 curves and the first layer's filters (Fig. 2)


def test_torchvision_model_at_a_nested_module(own):
    """The third kind: a torchvision classifier at a module path that is not one of its defaults."""
    _, task = own
    model = service.register_model("tv:resnet18")
    at = _page("pages/selectivity.py", model, task, "layer3.1")
    assert plotly_figures(at)
    assert next(s for s in at.sidebar.selectbox if s.label == "Layer").value == "layer3.1"
