"""Real-data loaders of core/data/datasets.py on tiny trees the tests write themselves."""
from __future__ import annotations

import gzip
import logging
import os
import pickle
import shutil
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision.datasets import ImageFolder, VOCDetection

from conftest import voc_xml, write_voc
from core.data import datasets as ds
from core.data.datasets import VOC_CLASSES
from core.errors import DataMissingError, InputError

C = VOC_CLASSES.index
BACKGROUND = (0, 0, 255)
RED, GREEN, YELLOW, MAGENTA = (255, 0, 0), (0, 255, 0), (255, 255, 0), (255, 0, 255)

# image id -> (width, height, [(class, 0-based half-open box, difficult, truncated, colour)])
VOC_SPEC = {
    "000001": (320, 300, [("dog", (50, 50, 245, 245), 0, 0, RED),           # 195 px: warp scale is 1
                          ("person", (250, 10, 310, 90), 1, 0, GREEN)]),
    "000002": (200, 150, [("car", (0, 0, 60, 40), 0, 1, YELLOW),             # image corner, truncated
                          ("person", (100, 50, 180, 140), 0, 0, MAGENTA),
                          ("cat", (10, 100, 40, 140), 1, 0, GREEN)]),
    "000003": (120, 100, [("bird", (20, 20, 80, 80), 1, 0, RED)]),          # only a difficult box
    "000004": (100, 100, [("aeroplane", (10, 10, 50, 50), 0, 0, RED),
                          ("tvmonitor", (60, 60, 90, 90), 0, 0, GREEN)]),
}
SPLITS = {"trainval": ["000001", "000002", "000003"], "test": ["000004"]}


@pytest.fixture
def voc_root(tmp_path: Path) -> Path:
    """``tmp/VOCdevkit/VOC2007`` with 4 JPEGs: boxes painted in flat colours on blue."""
    return write_voc(tmp_path, VOC_SPEC, SPLITS, BACKGROUND)


def _expected_labels(ids, include_difficult: bool) -> np.ndarray:
    out = np.zeros((len(ids), 20), bool)
    for i, image_id in enumerate(ids):
        for name, _, diff, _, _ in VOC_SPEC[image_id][2]:
            out[i, C(name)] |= include_difficult or not diff
    return out


# --------------------------------------------------------------------------- VOC classification
def test_voc_classes_are_the_standard_twenty():
    assert len(VOC_CLASSES) == 20 and VOC_CLASSES[0] == "aeroplane" and VOC_CLASSES[-1] == "tvmonitor"
    assert list(VOC_CLASSES) == sorted(VOC_CLASSES)


def test_voc_classification_labels(voc_root):
    s = ds.voc_classification(voc_root, "trainval")
    assert s.multilabel and s.labels.shape == (3, 20) and s.labels.dtype == bool
    hand = np.zeros((3, 20), bool)
    hand[0, C("dog")] = hand[1, C("car")] = hand[1, C("person")] = True
    np.testing.assert_array_equal(s.labels, hand)
    np.testing.assert_array_equal(s.labels, _expected_labels(SPLITS["trainval"], False))
    assert list(s.image_ids) == SPLITS["trainval"]
    assert s.difficult_only[0, C("person")] and s.difficult_only[1, C("cat")] and s.difficult_only[2, C("bird")]
    assert s.difficult_only.sum() == 3
    img, idx = s[1]
    assert idx == 1 and img.mode == "RGB" and img.size == (200, 150)


def test_voc_classification_include_difficult(voc_root):
    s = ds.voc_classification(voc_root, "trainval", include_difficult=True)
    np.testing.assert_array_equal(s.labels, _expected_labels(SPLITS["trainval"], True))
    assert s.labels[2, C("bird")] and not s.difficult_only.any()
    assert s.fingerprint != ds.voc_classification(voc_root, "trainval").fingerprint


def test_voc_test_split(voc_root):
    s = ds.voc_classification(voc_root, "test")
    assert len(s) == 1 and s.name == "voc2007-test-cls"
    assert set(np.flatnonzero(s.labels[0])) == {C("aeroplane"), C("tvmonitor")}


@pytest.mark.parametrize("sub", ["", "VOCdevkit", "VOCdevkit/VOC2007"])
def test_voc_root_resolution(voc_root, sub):
    ref = ds.voc_classification(voc_root, "trainval")
    s = ds.voc_classification(voc_root / sub if sub else voc_root, "trainval")
    assert s.fingerprint == ref.fingerprint and s.paths == ref.paths


def test_voc_fingerprint_is_stable_and_content_based(voc_root):
    a = ds.voc_det_gt(voc_root, "trainval").fingerprint
    assert a == ds.voc_det_gt(voc_root, "trainval").fingerprint
    assert a != ds.voc_det_gt(voc_root, "trainval", context_pad=8).fingerprint
    xml = voc_root / "VOCdevkit/VOC2007/Annotations/000002.xml"
    xml.write_text(xml.read_text().replace("<xmax>180</xmax>", "<xmax>181</xmax>"))
    assert ds.voc_det_gt(voc_root, "trainval").fingerprint != a


def test_voc_parsing_agrees_with_torchvision(voc_root):
    """Same tree, same files and boxes as ``VOCDetection(download=False)``."""
    tv = VOCDetection(str(voc_root), year="2007", image_set="trainval", download=False)
    cls = ds.voc_classification(voc_root, "trainval")
    assert [str(Path(p)) for p in tv.images] == cls.paths
    ann = ds.read_voc_annotations(voc_root, "trainval")
    for xml_path, objects in zip(tv.annotations, ann.objects):
        target = VOCDetection.parse_voc_xml(ET.parse(xml_path).getroot())
        tv_boxes = [(int(o["bndbox"]["xmin"]) - 1, int(o["bndbox"]["ymin"]) - 1, int(o["bndbox"]["xmax"]),
                     int(o["bndbox"]["ymax"])) for o in target["annotation"]["object"]]
        assert tv_boxes == [o.box for o in objects]


# --------------------------------------------------------------------------- DET-GT
def test_det_gt_items(voc_root):
    s = ds.voc_det_gt(voc_root, "trainval")
    assert not s.multilabel and len(s) == 3
    assert list(s.labels) == [C("dog"), C("car"), C("person")]
    assert list(s.image_ids) == ["000001", "000002", "000002"]
    np.testing.assert_array_equal(s.boxes, [[50, 50, 245, 245], [0, 0, 60, 40], [100, 50, 180, 140]])
    assert not s.difficult.any() and list(s.truncated) == [False, True, False]
    s2 = ds.voc_det_gt(voc_root, "trainval", include_difficult=True)
    assert len(s2) == 6 and s2.difficult.sum() == 3
    assert list(s2.labels) == [C(n) for i in SPLITS["trainval"] for n, *_ in VOC_SPEC[i][2]]


def test_det_gt_decodes_each_image_once_for_its_boxes(voc_root, monkeypatch):
    s = ds.voc_det_gt(voc_root, "trainval", include_difficult=True)
    fresh = [np.asarray(ds.warp_box(ds._open_rgb(s.paths[i]), s.boxes[i])) for i in range(len(s))]
    opened = []
    real = ds._open_rgb
    monkeypatch.setattr(ds, "_open_rgb", lambda path: opened.append(path) or real(path))
    crops = [np.asarray(s.image(i)) for i in range(len(s))]
    assert len(opened) == len(set(s.paths)) == 3          # 6 boxes on 3 images
    for a, b in zip(crops, fresh):
        np.testing.assert_array_equal(a, b)
    # a file replaced since is decoded again
    Image.new("RGB", (300, 300), (9, 9, 9)).save(s.paths[-1])
    os.utime(s.paths[-1], ns=(1, 1))
    centre = np.asarray(s.image(len(s) - 1))[113, 113]
    assert len(opened) == 4 and centre.tolist() == [9, 9, 9]


def test_det_gt_crop_at_scale_one_is_the_image_region(voc_root):
    """A 195 px box at crop 227 / pad 16 expands by exactly 16 px a side: a pixel copy."""
    s = ds.voc_det_gt(voc_root, "trainval")
    crop = np.asarray(s.image(0))
    full = np.asarray(Image.open(voc_root / "VOCdevkit/VOC2007/JPEGImages/000001.jpg").convert("RGB"))
    assert crop.shape == (227, 227, 3)
    np.testing.assert_array_equal(crop, full[50 - 16:245 + 16, 50 - 16:245 + 16])


def _is(colour, px, tol=40) -> bool:
    return bool(np.abs(np.asarray(px, int) - colour).max() <= tol)


def test_det_gt_context_padding_is_16_output_pixels(voc_root):
    s = ds.voc_det_gt(voc_root, "trainval")
    crop = np.asarray(s.image(2))  # magenta 80 x 90 box on blue, well inside its image
    assert _is(MAGENTA, crop[113, 113])
    mid_row, mid_col = crop[113], crop[:, 113]
    for line in (mid_row, mid_col):
        inside = [i for i in range(227) if _is(MAGENTA, line[i], tol=60)]
        # the box spans output pixels [16, 211): allow one pixel of bilinear / JPEG blur each side
        assert inside[0] in (16, 17) and inside[-1] in (209, 210)
        assert all(_is(BACKGROUND, line[i], tol=60) for i in list(range(14)) + list(range(213, 227)))


def test_det_gt_outside_image_is_filled(voc_root):
    s = ds.voc_det_gt(voc_root, "trainval")
    crop = np.asarray(s.image(1))  # car box at the image's top-left corner
    assert (crop[:15] == ds.RCNN_FILL).all() and (crop[:, :15] == ds.RCNN_FILL).all()
    assert _is(YELLOW, crop[113, 113]) and _is(YELLOW, crop[20, 20])
    black = np.asarray(ds.voc_det_gt(voc_root, "trainval", fill=(0, 0, 0)).image(1))
    assert (black[:15, :15] == 0).all()


def test_det_gt_geometry_options(voc_root):
    crop = np.asarray(ds.voc_det_gt(voc_root, "trainval", context_pad=0, crop_size=64).image(2))
    assert crop.shape == (64, 64, 3)
    assert _is(MAGENTA, crop[2, 2], tol=60) and _is(MAGENTA, crop[61, 61], tol=60)
    with pytest.raises(InputError, match="context_pad"):
        ds.voc_det_gt(voc_root, "trainval", context_pad=120)


def test_context_box_matches_rcnn_factor():
    x0, y0, x1, y1 = ds.context_box((10, 20, 49, 59), 227, 16)
    factor = 227 / (227 - 2 * 16)
    assert np.isclose(x1 - x0, 39 * factor) and np.isclose((x0 + x1) / 2, 29.5)
    assert ds.context_box((10, 20, 49, 59), 227, 0) == (10, 20, 49, 59)


def test_sets_pickle_for_dataloader_workers(voc_root):
    s = ds.voc_det_gt(voc_root, "trainval")
    t = pickle.loads(pickle.dumps(s))
    np.testing.assert_array_equal(np.asarray(t.image(1)), np.asarray(s.image(1)))


# --------------------------------------------------------------------------- VOC errors
@pytest.mark.parametrize("sub", ["Annotations", "JPEGImages", "ImageSets"])
def test_voc_missing_folder(voc_root, sub):
    shutil.rmtree(voc_root / "VOCdevkit/VOC2007" / sub)
    with pytest.raises(DataMissingError, match=sub):
        ds.voc_classification(voc_root, "trainval")


def test_voc_missing_split_file_and_bad_split(voc_root):
    (voc_root / "VOCdevkit/VOC2007/ImageSets/Main/test.txt").unlink()
    with pytest.raises(DataMissingError, match=r"test\.txt.*VOCtest"):
        ds.voc_det_gt(voc_root, "test")
    with pytest.raises(InputError, match="unknown VOC split"):
        ds.voc_classification(voc_root, "everything")


def test_voc_missing_root_or_layout(tmp_path):
    with pytest.raises(DataMissingError, match="does not exist"):
        ds.voc_classification(tmp_path / "nowhere")
    with pytest.raises(DataMissingError, match="VOCdevkit"):
        ds.voc_classification(tmp_path)


def test_voc_missing_annotation_or_jpeg(voc_root):
    (voc_root / "VOCdevkit/VOC2007/JPEGImages/000003.jpg").unlink()
    with pytest.raises(DataMissingError, match="000003.jpg"):
        ds.voc_classification(voc_root)
    (voc_root / "VOCdevkit/VOC2007/Annotations/000004.xml").unlink()
    with pytest.raises(DataMissingError, match="000004.xml"):
        ds.voc_classification(voc_root, "test")


def test_voc_malformed_xml(voc_root):
    ann = voc_root / "VOCdevkit/VOC2007/Annotations"
    (ann / "000002.xml").write_text("<annotation><object><name>car</name>")
    with pytest.raises(InputError, match="000002.xml"):
        ds.voc_classification(voc_root)
    (ann / "000002.xml").write_text("<annotation><object><name>car</name></object></annotation>")
    with pytest.raises(InputError, match=r"000002.xml.*bndbox"):
        ds.voc_det_gt(voc_root)
    (ann / "000002.xml").write_text(voc_xml("000002", 10, 10, [("unicorn", (1, 1, 5, 5), 0, 0, RED)]))
    with pytest.raises(InputError, match="unicorn"):
        ds.voc_det_gt(voc_root)


def test_voc_damaged_jpeg_raises_on_load(voc_root):
    (voc_root / "VOCdevkit/VOC2007/JPEGImages/000001.jpg").write_bytes(b"not a jpeg")
    s = ds.voc_det_gt(voc_root)
    with pytest.raises(InputError, match="000001.jpg"):
        s.image(0)


# --------------------------------------------------------------------------- ImageFolder
@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """3 classes x 2 images (a PNG and a JPEG each) and a stray text file."""
    root = tmp_path / "imgs"
    for k, cls in enumerate(["cat", "dog", "fox"]):
        (root / cls).mkdir(parents=True)
        for j, ext in enumerate(["png", "jpg"]):
            Image.new("RGB", (8 + j, 6), (40 * k, 10 * j, 0)).save(root / cls / f"{j}.{ext}")
    (root / "dog" / "notes.txt").write_text("not an image")
    return root


def test_image_folder(folder, caplog):
    with caplog.at_level(logging.WARNING, logger="core.data.datasets"):
        s = ds.image_folder(folder)
    assert "notes.txt" in caplog.text
    assert s.class_names == ("cat", "dog", "fox") and not s.multilabel
    assert list(s.labels) == [0, 0, 1, 1, 2, 2]
    tv = ImageFolder(str(folder))
    assert s.paths == [p for p, _ in tv.samples] and list(s.labels) == [c for _, c in tv.samples]
    img, _ = s[0]
    assert img.mode == "RGB" and img.size == (8, 6) and img.getpixel((0, 0)) == (0, 0, 0)
    assert s.fingerprint == ds.image_folder(folder).fingerprint


def test_image_folder_split(folder):
    s = ds.image_folder(folder.parent, split="imgs")
    assert len(s) == 6 and s.name.endswith("-imgs")
    with pytest.raises(DataMissingError, match="imgs"):
        ds.image_folder(folder.parent, split="val")


def test_image_folder_errors(tmp_path, folder):
    with pytest.raises(DataMissingError, match="does not exist"):
        ds.image_folder(tmp_path / "missing")
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(InputError, match="no class sub-folders"):
        ds.image_folder(tmp_path / "flat")
    (folder / "empty").mkdir()
    with pytest.raises(InputError, match="empty"):
        ds.image_folder(folder)


def test_image_folder_unreadable_image(folder):
    (folder / "cat" / "0.png").write_bytes(b"garbage")
    s = ds.image_folder(folder)
    with pytest.raises(InputError, match="0.png"):
        s.image(0)
    assert s.image(1).mode == "RGB"


# --------------------------------------------------------------------------- Fashion-MNIST
FASHION_LABELS = [0, 4, 6, 7, 9]


def _fashion_images() -> np.ndarray:
    g = np.arange(5 * 28 * 28, dtype=np.int64).reshape(5, 28, 28)
    return ((g * 7) % 256).astype(np.uint8)


def _write_idx(path: Path, arr: np.ndarray, code: int = 0x08, compress: bool = False) -> None:
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    raw = header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


@pytest.fixture
def fashion_root(tmp_path: Path) -> Path:
    root = tmp_path / "fashion"
    root.mkdir()
    labels = np.array(FASHION_LABELS, np.uint8)
    for stem, compress in (("train", True), ("t10k", False)):
        _write_idx(root / f"{stem}-images-idx3-ubyte{'.gz' if compress else ''}", _fashion_images(), compress=compress)
        _write_idx(root / f"{stem}-labels-idx1-ubyte{'.gz' if compress else ''}", labels, compress=compress)
    return root


def test_idx_header_is_the_standard_one(fashion_root):
    raw = (fashion_root / "t10k-images-idx3-ubyte").read_bytes()
    assert struct.unpack(">IIII", raw[:16]) == (2051, 5, 28, 28)
    assert struct.unpack(">II", (fashion_root / "t10k-labels-idx1-ubyte").read_bytes()[:8]) == (2049, 5)


def test_read_idx_other_dtype(tmp_path):
    arr = np.arange(24, dtype=np.int32).reshape(2, 3, 4) - 5
    _write_idx(tmp_path / "x.idx", arr, code=0x0C)
    out = ds.read_idx(tmp_path / "x.idx")
    np.testing.assert_array_equal(out, arr)
    assert out.dtype == np.int32


@pytest.mark.parametrize("split", ["train", "test"])  # train is gzipped, test is not
def test_fashion_values_at_native_size(fashion_root, split):
    s = ds.fashion_mnist(fashion_root, split, size=28)
    assert len(s) == 5 and s.class_names == ds.FASHION_CLASSES and list(s.labels) == FASHION_LABELS
    img = np.asarray(s.image(3))
    assert img.shape == (28, 28, 3)
    for ch in range(3):
        np.testing.assert_array_equal(img[..., ch], _fashion_images()[3])


def test_fashion_resize_is_pil_bilinear(fashion_root):
    s = ds.fashion_mnist(fashion_root, "test", size=56)
    expect = np.asarray(Image.fromarray(_fashion_images()[1]).resize((56, 56), Image.Resampling.BILINEAR))
    assert s.images.shape == (5, 56, 56, 3)
    np.testing.assert_array_equal(np.asarray(s.image(1)), np.repeat(expect[..., None], 3, axis=-1))


def test_fashion_class_subsets(fashion_root):
    t = ds.fashion_mnist(fashion_root, "test", size=28, classes="target")
    assert t.class_names == ds.FASHION_TARGET_CLASSES == ("Coat", "Shirt", "Sneaker", "Ankle boot")
    assert list(t.labels) == [0, 1, 2, 3]  # labels 4, 6, 7, 9 in the file
    np.testing.assert_array_equal(np.asarray(t.image(0))[..., 0], _fashion_images()[1])
    src = ds.fashion_mnist(fashion_root, "test", size=28, classes="source")
    assert len(src) == 1 and src.class_names[src.labels[0]] == "T-shirt/top"
    custom = ds.fashion_mnist(fashion_root, "test", size=28, classes=["Ankle boot", 0])
    assert custom.class_names == ("Ankle boot", "T-shirt/top") and list(custom.labels) == [1, 0]
    assert not set(ds.FASHION_SOURCE_CLASSES) & set(ds.FASHION_TARGET_CLASSES)
    assert len(ds.FASHION_SOURCE_CLASSES) + len(ds.FASHION_TARGET_CLASSES) == 10
    with pytest.raises(InputError, match="Hat"):
        ds.fashion_mnist(fashion_root, "test", classes=["Hat"])


def test_fashion_errors(fashion_root, tmp_path, monkeypatch):
    monkeypatch.setattr(ds, "FASHION_MNIST_DIR", tmp_path / "not-installed")
    with pytest.raises(DataMissingError, match="apt-get install dataset-fashion-mnist"):
        ds.fashion_mnist()
    with pytest.raises(InputError, match="split"):
        ds.fashion_mnist(fashion_root, "val")
    bad = fashion_root / "t10k-images-idx3-ubyte"
    bad.write_bytes(bad.read_bytes()[:-10])
    with pytest.raises(InputError, match="truncated"):
        ds.fashion_mnist(fashion_root, "test")
    bad.write_bytes(b"\x89PNG....")
    with pytest.raises(InputError, match="not an IDX"):
        ds.fashion_mnist(fashion_root, "test")


@pytest.mark.skipif(not (ds.FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_real_debian_files():
    s = ds.fashion_mnist(split="test", size=28)
    assert len(s) == 10_000 and s.images.shape == (10_000, 28, 28, 3)
    assert list(s.labels[:5]) == [9, 2, 1, 1, 6]  # Ankle boot, Pullover, Trouser, Trouser, Shirt
    assert (np.bincount(s.labels) == 1000).all()


# --------------------------------------------------------------------------- load_dataset
def test_load_dataset_voc_specs(voc_root):
    assert ds.load_dataset(f"voc2007:{voc_root}").name == "voc2007-trainval-cls"
    assert ds.load_dataset(f"voc2007:{voc_root}:test").name == "voc2007-test-cls"
    det = ds.load_dataset(f"voc2007:{voc_root}:trainval:det-gt", include_difficult=True)
    assert det.name == "voc2007-trainval-det-gt" and len(det) == 6
    assert ds.load_dataset(str(voc_root), split="test").name == "voc2007-test-cls"
    assert len(ds.load_dataset(str(voc_root / "VOCdevkit"))) == 3


def test_load_dataset_other_specs(folder, fashion_root):
    assert len(ds.load_dataset(f"imagefolder:{folder}")) == 6
    assert ds.load_dataset(str(folder)).class_names == ("cat", "dog", "fox")
    f = ds.load_dataset("fashion-mnist:test:target", root=fashion_root, size=28)
    assert f.name == "fashion-mnist-test-target" and len(f) == 4


def test_load_dataset_registry(monkeypatch, folder):
    calls = []

    def factory(rest, **kw):
        calls.append((rest, kw))
        return ds.image_folder(folder)

    monkeypatch.setitem(ds.DATASETS._entries, "demo", factory)
    assert len(ds.load_dataset("demo:target-test", seed=1)) == 6
    assert calls == [("target-test", {"seed": 1})]
    with pytest.raises(InputError, match="known: .*demo"):
        ds.load_dataset("nosuch:thing")
    with pytest.raises(InputError, match="prefix"):
        ds.DATASETS.register("a:b", factory)
