"""The Fashion-MNIST demo profile (issue #5): data step, mosaics, package install path, tiny build.

Every test runs on a fixture of IDX files written here (``$FILTERSCOPE_FASHION_MNIST`` points
the reader at it), so neither Debian's package nor the network is needed. Fixture items are
solid rectangles whose grey value encodes their Fashion-MNIST label (``40 + 20 * label``), so
the tests can tell from the pixels alone which item lies where.
"""
from __future__ import annotations

import gzip
import struct
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from core.data import datasets
from core.demo import build as demo
from core.demo import profiles as demo_profiles
from core.demo import mosaics
from core.errors import DataMissingError, InputError
from core.data.models import DemoNetConfig
from core.demo.training import TrainConfig

SIDE = 28
N_PER_CLASS = {"train": 30, "test": 15}


def _value(label: int) -> int:
    return 40 + 20 * int(label)


def _write_idx(path: Path, arr: np.ndarray) -> None:
    """IDX by hand (LeCun's format: 0, 0, type 0x08 = uint8, ndim, big-endian dims, data)."""
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    path.write_bytes(gzip.compress(header + arr.astype(np.uint8).tobytes()))


def _fixture_split(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.tile(np.arange(10), n_per_class)
    images = np.zeros((len(labels), SIDE, SIDE), np.uint8)
    for img, lab in zip(images, labels):
        w, h = rng.integers(12, 22, 2)
        x, y = rng.integers(0, SIDE - w + 1), rng.integers(0, SIDE - h + 1)
        img[y:y + h, x:x + w] = _value(lab)
    return images, labels


@pytest.fixture()
def fashion_root(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "fashion"
    root.mkdir()
    for seed, (split, stem) in enumerate((("train", "train"), ("test", "t10k"))):
        images, labels = _fixture_split(N_PER_CLASS[split], seed)
        _write_idx(root / f"{stem}-images-idx3-ubyte.gz", images)
        _write_idx(root / f"{stem}-labels-idx1-ubyte.gz", labels)
    monkeypatch.setenv(datasets.FASHION_MNIST_ENV, str(root))
    return root


# Mosaics on a plain black background with items pasted opaquely and boxes never overlapping:
# every non-zero pixel is an item pixel.
PLAIN = replace(mosaics.MosaicConfig(), background=(0.0, 0.0), texture_prob=0.0, max_overlap=0.0, edge=1.0)
TARGET_VALUES = [_value(datasets.FASHION_CLASSES.index(c)) for c in datasets.FASHION_TARGET_CLASSES]
SOURCE_VALUES = [_value(datasets.FASHION_CLASSES.index(c)) for c in datasets.FASHION_SOURCE_CLASSES]


def _target_pool(split: str = "train", seed: int = 0):
    x, y = datasets.read_fashion_mnist(split)
    return mosaics.fashion_pool(x, y, datasets.FASHION_TARGET_CLASSES, seed)


def _mode_nonzero(patch: np.ndarray) -> int:
    vals, counts = np.unique(patch[patch > 0], return_counts=True)
    return int(vals[counts.argmax()])


# --------------------------------------------------------------------------- reader and class split
def test_reader_follows_env_root(fashion_root):
    images, labels = _fixture_split(N_PER_CLASS["test"], 1)
    got_x, got_y = datasets.read_fashion_mnist("test")
    np.testing.assert_array_equal(got_x, images)
    np.testing.assert_array_equal(got_y, labels)
    assert datasets.fashion_mnist_root() == fashion_root


def test_source_target_classes_disjoint_and_as_documented():
    src, tgt = datasets.FASHION_SOURCE_CLASSES, datasets.FASHION_TARGET_CLASSES
    assert src == ("T-shirt/top", "Trouser", "Pullover", "Dress", "Sandal", "Bag")
    assert tgt == ("Coat", "Shirt", "Sneaker", "Ankle boot")
    assert not set(src) & set(tgt)
    assert sorted(src + tgt) == sorted(datasets.FASHION_CLASSES)
    names = demo_profiles.class_names(demo_profiles.PROFILES["fashion"])
    assert names["source"] == list(src) and names["target"] == list(tgt)
    assert demo_profiles.class_names(demo_profiles.PROFILES["full"])["target"] != list(tgt)


def test_pool_keeps_only_its_classes(fashion_root):
    items, labels = _target_pool()
    assert len(items) == 4 * N_PER_CLASS["train"]
    for img, lab in zip(items, labels):  # renumbered label -> the class whose value the item has
        assert _mode_nonzero(img) == TARGET_VALUES[lab]


# --------------------------------------------------------------------------- mosaics (known answers)
def test_mosaic_boxes_hold_exactly_the_pasted_items(fashion_root):
    items, labels = _target_pool()
    sc = mosaics.fashion_mosaics(items, labels, 40, seed=3, num_classes=4, size=64, config=PLAIN)
    assert sc.images.shape == (40, 64, 64, 3) and sc.images.dtype == np.uint8
    assert (sc.images == sc.images[..., :1]).all()  # grey replicated to RGB
    n_items = []
    for img, boxes, labs in zip(sc.images[..., 0], sc.boxes, sc.box_labels):
        inside = np.zeros(img.shape, bool)
        n_items.append(len(boxes))
        for (x0, y0, x1, y1), lab in zip(boxes.astype(int), labs):
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
            assert not inside[y0:y1, x0:x1].any()  # max_overlap=0: boxes are disjoint
            inside[y0:y1, x0:x1] = True
            patch = img[y0:y1, x0:x1]
            # tight: the box's first and last rows and columns each hold item pixels
            assert patch[0].any() and patch[-1].any() and patch[:, 0].any() and patch[:, -1].any()
            assert _mode_nonzero(patch) == TARGET_VALUES[lab]  # the label is the pasted item's
        assert not img[~inside].any()  # every item pixel lies inside a box
    assert 1 <= min(n_items) and max(n_items) <= 4 and len(set(n_items)) > 1
    want = np.zeros((40, 4), bool)
    for i, labs in enumerate(sc.box_labels):
        want[i, labs] = True
    np.testing.assert_array_equal(sc.image_labels, want)
    assert not any(d.any() for d in sc.difficult)  # nothing is occluded


def test_overlapping_items_stay_inside_the_union_of_boxes(fashion_root):
    items, labels = _target_pool()
    cfg = replace(PLAIN, max_overlap=0.6)
    sc = mosaics.fashion_mosaics(items, labels, 40, seed=4, num_classes=4, size=64, config=cfg)
    for img, boxes in zip(sc.images[..., 0], sc.boxes):
        inside = np.zeros(img.shape, bool)
        for x0, y0, x1, y1 in boxes.astype(int):
            inside[y0:y1, x0:x1] = True
        assert not img[~inside].any()


def test_textured_background_outside_boxes_is_background_only(fashion_root):
    items, labels = _target_pool()
    cfg = replace(mosaics.MosaicConfig(), background=(70.0, 70.0), texture_prob=0.0)
    sc = mosaics.fashion_mosaics(items, labels, 20, seed=5, num_classes=4, size=64, config=cfg)
    for img, boxes in zip(sc.images[..., 0], sc.boxes):
        inside = np.zeros(img.shape, bool)
        for x0, y0, x1, y1 in boxes.astype(int):
            inside[y0:y1, x0:x1] = True
        assert (img[~inside] == 70).all() and (img[inside] != 70).any()


def test_source_images_hold_their_item(fashion_root):
    x, y = datasets.read_fashion_mnist("train")
    items, labels = mosaics.fashion_pool(x, y, datasets.FASHION_SOURCE_CLASSES, 0)
    sc = mosaics.fashion_mosaics(items, labels, 50, seed=6, num_classes=6, size=64, config=PLAIN, source=True)
    for img, lab in zip(sc.images[..., 0], labels[:50]):
        assert _mode_nonzero(img) == SOURCE_VALUES[lab]
    with pytest.raises(InputError, match="pool"):
        mosaics.fashion_mosaics(items, labels, len(items) + 1, seed=6, num_classes=6, source=True)


def test_mosaics_are_deterministic_for_a_seed(fashion_root):
    items, labels = _target_pool()
    a = mosaics.fashion_mosaics(items, labels, 12, seed=7, num_classes=4)
    b = mosaics.fashion_mosaics(items, labels, 12, seed=7, num_classes=4)
    c = mosaics.fashion_mosaics(items, labels, 12, seed=8, num_classes=4)
    longer = mosaics.fashion_mosaics(items, labels, 20, seed=7, num_classes=4)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.images, longer.images[:12])
    assert all(np.array_equal(p, q) for p, q in zip(a.boxes, b.boxes))
    assert not np.array_equal(a.images, c.images)


# --------------------------------------------------------------------------- the data step
SMALL = dict(source_train=60, source_val=30, target_train=12, target_val=6, target_test=10,
             scene_train=8, scene_test=8)


def _files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def test_data_step_writes_the_scenes_file_set(fashion_root, tmp_path):
    cfg = replace(demo_profiles.PROFILES["fashion"], mosaics=PLAIN, **SMALL)
    demo._step_data(cfg, tmp_path / "fashion-build", None)
    # the procedural profile that pretrains in its own build (as fashion does) writes source-train too
    demo._step_data(replace(demo_profiles.PROFILES["full"], shipped_source=False, **SMALL), tmp_path / "scenes-build", None)
    d = tmp_path / "fashion-build" / "data"
    assert _files(d) == _files(tmp_path / "scenes-build" / "data")
    for split, n in (("train", 12), ("val", 6), ("test", 10)):
        images = np.load(d / f"target-{split}-images.npy")
        labels = np.load(d / f"target-{split}-labels.npy")
        assert images.shape == (n, 64, 64, 3) and images.dtype == np.uint8
        assert labels.shape == (n, 4) and labels.dtype == bool and labels.any(1).all()
        ann = np.load(d / f"target-{split}-annotations.npz")
        crops = np.load(d / f"target-{split}-detgt-images.npy")
        crop_labels = np.load(d / f"target-{split}-detgt-labels.npy")
        assert set(ann.files) == {"boxes", "labels", "difficult", "image_index"}
        assert len(crops) == len(crop_labels) == int((~ann["difficult"]).sum())
        assert crops.shape[1:] == (64, 64, 3) and set(crop_labels.tolist()) <= {0, 1, 2, 3}
        for i, lab in zip(ann["image_index"], ann["labels"]):  # image labels = its boxes' labels
            assert labels[i, lab]
    src = np.load(d / "source-train-images.npy")
    src_labels = np.load(d / "source-train-labels.npy")
    assert src.shape == (60, 64, 64, 3) and src_labels.dtype == np.int64
    assert len(np.load(d / "source-val-labels.npy")) == 30
    # on PLAIN mosaics each source image shows one item of the class its label names
    for im, lab in zip(src[..., 0], src_labels):
        assert _mode_nonzero(im) == SOURCE_VALUES[lab]
    boxes = np.load(d / "target-test-annotations.npz")
    images = np.load(d / "target-test-images.npy")[..., 0]
    for (x0, y0, x1, y1), lab, i in zip(boxes["boxes"].astype(int), boxes["labels"], boxes["image_index"]):
        assert _mode_nonzero(images[i, y0:y1, x0:x1]) == TARGET_VALUES[lab]
    again = tmp_path / "again"
    demo._step_data(cfg, again, None)
    for name in _files(d):
        if name.endswith(".npy"):
            np.testing.assert_array_equal(np.load(d / name), np.load(again / "data" / name))


def test_fashion_profile_identity_and_procedural_hashes_unchanged():
    # the scenes profiles' identities ignore the fashion-only fields...
    full = demo_profiles.PROFILES["full"]
    assert demo_profiles.config_hash(full) == demo_profiles.config_hash(replace(full, mosaics=replace(full.mosaics, max_items=2)))
    # ...the fashion profile's covers them
    fashion = demo_profiles.PROFILES["fashion"]
    assert demo_profiles.config_hash(fashion) != demo_profiles.config_hash(replace(fashion, mosaics=replace(fashion.mosaics,
                                                                                           max_items=2)))
    assert demo_profiles.config_hash(fashion) != demo_profiles.config_hash(replace(fashion, data="scenes"))
    with pytest.raises(InputError, match="unknown"):
        demo_profiles.class_names(replace(fashion, data="cifar"))


# --------------------------------------------------------------------------- missing package
class _FakeApt:
    def __init__(self, creates: Path | None, rc: int = 0):
        self.calls: list[list[str]] = []
        self.creates, self.rc = creates, rc

    def __call__(self, cmd, check=False):
        self.calls.append(list(cmd))
        if self.creates is not None and cmd[:2] == ["apt-get", "install"]:
            images, labels = _fixture_split(1, 0)
            for stem in ("train", "t10k"):
                _write_idx(self.creates / f"{stem}-images-idx3-ubyte.gz", images)
                _write_idx(self.creates / f"{stem}-labels-idx1-ubyte.gz", labels)
        return subprocess.CompletedProcess(cmd, self.rc)


@pytest.fixture()
def no_package(tmp_path, monkeypatch) -> Path:
    """Debian's folder replaced by an empty one; no override."""
    debian = tmp_path / "usr-share-datasets-fashion-mnist"
    debian.mkdir()
    monkeypatch.setattr(datasets, "FASHION_MNIST_DIR", debian)
    monkeypatch.delenv(datasets.FASHION_MNIST_ENV, raising=False)
    return debian


def test_missing_package_installs_with_apt_when_root(no_package, monkeypatch):
    monkeypatch.setattr(datasets, "can_apt_install", lambda: True)
    apt, said = _FakeApt(creates=no_package), []
    assert datasets.ensure_fashion_mnist(install=True, say=said.append, run=apt) == no_package
    assert apt.calls == [["apt-get", "install", "-y", "dataset-fashion-mnist"]]
    assert any("apt-get install -y dataset-fashion-mnist" in s for s in said)


def test_missing_package_failed_install_retries_after_update_then_names_command(no_package, monkeypatch):
    monkeypatch.setattr(datasets, "can_apt_install", lambda: True)
    apt = _FakeApt(creates=None, rc=100)
    with pytest.raises(DataMissingError, match="apt-get install -y dataset-fashion-mnist"):
        datasets.ensure_fashion_mnist(install=True, say=lambda s: None, run=apt)
    assert apt.calls == [["apt-get", "install", "-y", "dataset-fashion-mnist"], ["apt-get", "update"]]


def test_missing_package_without_root_says_the_command(no_package, monkeypatch):
    monkeypatch.setattr(datasets, "can_apt_install", lambda: False)
    apt = _FakeApt(creates=no_package)
    with pytest.raises(DataMissingError, match="apt-get install -y dataset-fashion-mnist") as err:
        datasets.ensure_fashion_mnist(install=True, run=apt)
    assert apt.calls == [] and datasets.FASHION_MNIST_ENV in str(err.value)
    with pytest.raises(DataMissingError, match="apt-get install -y dataset-fashion-mnist"):
        demo._step_data(demo_profiles.PROFILES["fashion"], no_package.parent / "build", None)


def test_cli_demo_fashion_reports_missing_package(no_package, monkeypatch, capsys, tmp_cache):
    from core.__main__ import main

    monkeypatch.setattr(datasets, "can_apt_install", lambda: False)
    assert main(["demo", "--dataset", "fashion-mnist", "--no-warm"]) == 2
    err = capsys.readouterr().err
    assert "apt-get install -y dataset-fashion-mnist" in err and "Traceback" not in err
    assert main(["demo", "--dataset", "fashion-mnist", "--profile", "full"]) == 2
    assert "--dataset" in capsys.readouterr().err
    assert not (tmp_cache / "demo").exists()


# --------------------------------------------------------------------------- tiny build end to end
def _clear_service_caches() -> None:
    from core import service

    for fn in (service.load_model, service.load_set, service.catalog._demo_built_at):
        fn.cache_clear()


@pytest.mark.slow
def test_tiny_fashion_build_end_to_end(fashion_root, tmp_cache, monkeypatch):
    """A tiny ``fashion`` build (~20 s), then the app's standard analyses on it (``warm_demo``)."""
    from core import service
    from core.data.datasets import load_dataset

    quick = TrainConfig(iterations=2, batch_size=8, lr=1e-3, seed=1, optimizer="adamw")
    sizes = {**SMALL, "target_train": 30, "target_test": 30}
    cfg = replace(demo_profiles.PROFILES["fashion"], profile="fashion-tiny", **sizes, finetune=quick, scratch=quick,
                  pretrain=TrainConfig(iterations=4, batch_size=16, lr=1e-3, optimizer="adamw", snapshots=(0, 2, 4)),
                  finetune_from=(2,), net=DemoNetConfig(widths=(8, 16, 16, 16, 8), fc=32))
    monkeypatch.setitem(demo_profiles.PROFILES, "fashion-tiny", cfg)
    man = demo.build("fashion-tiny")
    assert man["classes"]["source"] == list(datasets.FASHION_SOURCE_CLASSES)
    assert man["classes"]["target"] == list(datasets.FASHION_TARGET_CLASSES)
    assert man["data"] == "fashion-mnist" and demo.is_built("fashion-tiny")
    ft = demo.load_demo_model("demo:finetuned", "fashion-tiny")
    assert tuple(ft.spec.class_names) == datasets.FASHION_TARGET_CLASSES
    pre = demo.load_demo_model("demo:pretrained", "fashion-tiny")
    assert tuple(pre.spec.class_names) == datasets.FASHION_SOURCE_CLASSES
    test = load_dataset("demo:fashion-tiny/target-test")
    assert test.multilabel and test.class_names == datasets.FASHION_TARGET_CLASSES and len(test) == 30
    crops = load_dataset("demo:fashion-tiny/target-test-detgt")
    assert not crops.multilabel and crops.num_classes == 4
    monkeypatch.setenv("FILTERSCOPE_DEMO", "fashion-tiny")
    _clear_service_caches()
    try:
        assert {"demo-detgt", "demo-cls", "demo-scene"} <= set(service.tasks())
        assert "demo:finetuned-from-00002" in service.models()
        service.warm_demo(tasks_to_warm=("demo-detgt",))  # every standard analysis of one task runs
    finally:
        _clear_service_caches()  # nothing of this profile leaks into other tests
