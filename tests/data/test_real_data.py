"""Real models and data in the app: registration from Python, from FILTERSCOPE_* variables and from the
sidebar, with clear errors for bad ids, files and folders."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import app_test
from core import service
from core.errors import InputError
from core.service import catalog
from test_datasets import voc_root  # noqa: F401  (the VOC-shaped fixture)


@pytest.fixture(autouse=True)
def _isolated_registry():
    """Registrations are process-wide: restore them after each test."""
    saved = (dict(catalog._MODELS), dict(catalog._TASKS), dict(catalog._ENV_STATE))
    yield
    catalog._MODELS.clear(), catalog._MODELS.update(saved[0])
    catalog._TASKS.clear(), catalog._TASKS.update(saved[1])
    catalog._ENV_STATE.clear(), catalog._ENV_STATE.update(saved[2])


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A small torchvision classifier's state dict (random init, 10 classes) on disk."""
    import torchvision

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "squeeze.pth"
    torch.save(torchvision.models.squeezenet1_1(num_classes=10).state_dict(), path)
    return path


def test_register_model_lists_it_with_its_provenance(weights):
    mid = f"tv:squeezenet1_1@{weights}"
    assert service.register_model(mid) == mid
    title = service.models()[mid]
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert "squeeze.pth" in title and digest[:12] in title and "user file" in title
    info = service.model_info(mid)
    assert info["weights_sha256"] == digest and info["num_classes"] == 10


def test_register_model_rejects_bad_ids_and_files(tmp_path, weights):
    with pytest.raises(InputError, match="unknown torchvision"):
        service.register_model("tv:not_a_net")
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="garbage.pth"):
        service.register_model(f"tv:squeezenet1_1@{bad}")
    with pytest.raises(InputError, match="do not fit this architecture"):
        service.register_model(f"tv:resnet18@{weights}")
    assert not any("garbage" in m or "resnet18" in m for m in service.models())


def test_register_voc_adds_cls_detgt_and_detection_tasks(voc_root):  # noqa: F811
    ids = [t.id for t in service.register_voc(str(voc_root))]
    assert ids == ["voc07-cls", "voc07-det-gt", "voc07-det"]
    tasks = service.tasks()
    cls, gt = tasks["voc07-cls"], tasks["voc07-det-gt"]
    assert (cls.kind, gt.kind, tasks["voc07-det"].kind) == ("cls", "det-gt", "det")
    # the fixture's trainval holds images 000001-000003, test holds 000004 (two non-difficult boxes)
    assert len(service.load_set(cls.train)) == 3 and len(service.load_set(cls.test)) == 1
    assert len(service.load_set(gt.test)) == 2
    assert service.load_set(gt.test).num_classes == 20


def test_register_voc_names_a_missing_folder(tmp_path):
    with pytest.raises((InputError, FileNotFoundError), match="VOC"):
        service.register_voc(str(tmp_path / "nowhere"))


def _folder_tree(root, splits=("train", "test")):
    rng = np.random.default_rng(0)
    for split in splits:
        for cls in ("cat", "dog"):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(d / f"{i}.png")


def test_register_imagefolder(tmp_path):
    _folder_tree(tmp_path / "pets")
    t = service.register_imagefolder(str(tmp_path / "pets"))
    assert service.tasks()[t.id] == t
    assert service.load_set(t.test).class_names == ("cat", "dog") and len(service.load_set(t.train)) == 6
    _folder_tree(tmp_path / "half", splits=("train",))
    with pytest.raises(InputError, match="test"):
        service.register_imagefolder(str(tmp_path / "half"))


def test_environment_registers_and_reports_problems(weights, tmp_path):
    _folder_tree(tmp_path / "pets")
    env = {"FILTERSCOPE_MODELS": f"tv:squeezenet1_1@{weights}, tv:nope",
           "FILTERSCOPE_IMAGEFOLDER": str(tmp_path / "pets"), "FILTERSCOPE_VOC": str(tmp_path / "no-voc")}
    errors = service.configure_from_env(env)
    assert f"tv:squeezenet1_1@{weights}" in catalog._MODELS
    assert "imagefolder-pets" in catalog._TASKS
    assert len(errors) == 2
    assert any("tv:nope" in e and "unknown torchvision" in e for e in errors)
    assert any(e.startswith("FILTERSCOPE_VOC=") for e in errors)
    assert service.configure_from_env(env) == errors  # same settings: not redone


@pytest.mark.usefixtures("demo_env")
def test_sidebar_adds_a_model(weights):
    at = app_test("pages/overview.py")
    assert not at.exception
    at.sidebar.text_input(key="add_model_id").input(f"tv:squeezenet1_1@{weights}").run()
    at.sidebar.button(key="add_model_btn").click().run()
    assert not at.exception, [e.value for e in at.exception]
    model_box = next(s for s in at.sidebar.selectbox if s.label == "Model")
    assert any("squeeze.pth" in o for o in model_box.options)
    assert any("Added model" in str(m.value) for m in at.sidebar.success)
    at.sidebar.text_input(key="add_model_id").input("tv:not_a_net").run()
    at.sidebar.button(key="add_model_btn").click().run()
    assert any("unknown torchvision" in str(m.value) for m in at.sidebar.error)
    assert not at.exception
