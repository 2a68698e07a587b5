"""R-CNN-style detection (core.tasks.rcnn): proposals, crops, mining, NMS and the VOC path end to end
on a VOC-shaped tree of real JPEGs + XML written here, with a tiny random network."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import write_voc
from core.tasks import rcnn as det
from core.store import extraction
from core.data.datasets import RCNN_FILL, VOC_CLASSES, ArrayImageSet, warp_box
from core.errors import DataMissingError, InputError
from core.data.models import DemoNetConfig, build_demo

C = VOC_CLASSES.index
BG = (40, 40, 200)
COLOURS = {"dog": (230, 30, 30), "cat": (30, 220, 30), "car": (240, 240, 20)}

# image id -> (w, h, [(class, 0-based half-open box, difficult)]); objects never overlap
VOC_SPEC = {
    "000001": (96, 80, [("dog", (5, 5, 40, 40), 0), ("cat", (50, 30, 90, 70), 0)]),
    "000002": (80, 80, [("car", (10, 40, 60, 75), 0), ("dog", (55, 5, 78, 30), 0)]),
    "000003": (90, 70, [("cat", (4, 4, 40, 44), 0), ("car", (48, 10, 86, 50), 0)]),
    "000004": (80, 90, [("dog", (20, 10, 70, 50), 0), ("car", (5, 55, 45, 85), 0)]),
    "000005": (100, 80, [("cat", (60, 10, 95, 60), 0), ("dog", (5, 30, 45, 75), 0)]),
    "000006": (80, 80, [("car", (30, 5, 75, 40), 0), ("cat", (5, 45, 40, 78), 0)]),
    # test
    "000007": (96, 80, [("dog", (50, 10, 90, 50), 0), ("car", (4, 40, 44, 76), 0)]),
    "000008": (80, 80, [("cat", (10, 10, 50, 50), 0), ("dog", (55, 55, 78, 78), 1)]),  # a difficult dog
    "000009": (90, 90, [("car", (40, 40, 85, 80), 0), ("cat", (5, 5, 35, 35), 0)]),
    "000010": (80, 80, [("dog", (8, 8, 42, 42), 0), ("cat", (45, 45, 78, 78), 0)]),
}
SPLITS = {"trainval": ["000001", "000002", "000003", "000004", "000005", "000006"],
          "test": ["000007", "000008", "000009", "000010"]}


@pytest.fixture
def voc_root(tmp_path: Path) -> Path:
    """``tmp/VOCdevkit/VOC2007`` with 10 JPEGs: each object painted in its class's colour."""
    spec = {i: (w, h, [(n, box, d, 0, COLOURS[n]) for n, box, d in objs]) for i, (w, h, objs) in VOC_SPEC.items()}
    return write_voc(tmp_path, spec, SPLITS, BG)


@pytest.fixture
def tiny_net():
    return build_demo(num_classes=3, cfg=DemoNetConfig(widths=(8, 8, 8, 8, 8), fc=32, input_size=64),
                      name="tiny-random")


# --------------------------------------------------------------------------- proposals
def test_sliding_windows_inside_and_cached():
    b = det.sliding_windows((64, 64))
    assert 80 <= len(b) <= 200 and b.dtype == np.float32
    assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= 64 + 1e-4).all() and (b[:, 3] <= 64 + 1e-4).all()
    assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
    assert len(np.unique(b, axis=0)) == len(b)
    assert det.sliding_windows((64, 64)) is b and not b.flags.writeable
    wide = det.sliding_windows((40, 120))
    assert wide[:, 2].max() <= 120 + 1e-4 and wide[:, 3].max() <= 40 + 1e-4
    with pytest.raises(InputError, match="overlap"):
        det.sliding_windows((64, 64), overlap=1.0)


def test_selective_search_finds_painted_boxes():
    a = np.zeros((80, 100, 3), np.uint8)
    a[:] = (20, 20, 160)
    a[10:40, 10:50] = (250, 20, 20)
    a[45:75, 60:95] = (20, 240, 20)
    boxes = det.selective_search(a, "fast")
    assert boxes.ndim == 2 and boxes.shape[1] == 4 and len(boxes) >= 2
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 100).all() and (boxes[:, 3] <= 80).all()
    from torchvision.ops import box_iou
    import torch

    iou = box_iou(torch.tensor([[10, 10, 50, 40], [60, 45, 95, 75]], dtype=torch.float32), torch.from_numpy(boxes))
    assert (iou.max(1).values >= 0.9).all()
    assert len(det.selective_search(a, "fast", max_proposals=1)) == 1


def test_selective_search_without_opencv_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(InputError, match="opencv-contrib-python-headless"):
        det.selective_search(np.zeros((10, 10, 3), np.uint8))


def test_proposals_cached_per_image(tmp_cache, monkeypatch):
    img = np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    calls = []
    real = det.selective_search

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(det, "selective_search", counting)
    first = det.image_proposals(img, "selective-search", 50)
    second = det.image_proposals(img.copy(), "selective-search", 50)
    np.testing.assert_array_equal(first, second)
    assert len(calls) == 1
    assert list((tmp_cache / "proposals").rglob("*.npy"))
    det.image_proposals(img[::-1].copy(), "selective-search", 50)  # other content: computed again
    assert len(calls) == 2


# --------------------------------------------------------------------------- crops and overlaps
def test_crop_set_is_rcnn_warp():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    data = ArrayImageSet("imgs", images, np.zeros(3, np.int64), ("x",))
    boxes = np.array([[0, 0, 30, 30], [10, 5, 60, 40], [-4, 20, 20, 70]], np.float32)
    index = np.array([0, 0, 2])
    cs = det.crop_set(data, index, boxes, 64, "crops")
    pad = round(16 * 64 / 227)  # 16 px of context at 227, scaled to 64
    for k in range(3):
        pil = Image.fromarray(images[index[k]])
        np.testing.assert_array_equal(cs.images[k], np.asarray(warp_box(pil, boxes[k], 64, pad)))
        np.testing.assert_array_equal(np.asarray(cs.image(k)), np.asarray(warp_box(pil, boxes[k], 64, pad)))
        # the geometry written out independently (float rounding may move a pixel value by 1)
        ref = np.asarray(pil.transform((64, 64), Image.Transform.EXTENT, data=_context(boxes[k], 64, pad),
                                       resample=Image.Resampling.BILINEAR, fillcolor=RCNN_FILL))
        assert np.abs(cs.images[k].astype(int) - ref).max() <= 1
    np.testing.assert_array_equal(cs.images[np.arange(3)][2], cs.images[2])
    assert cs.fingerprint != det.crop_set(data, index, boxes + 1, 64, "crops").fingerprint


def _context(box, size, pad):
    """R-CNN's context box written out: scale (size / (size - 2 pad)) about the centre."""
    x0, y0, x1, y1 = (float(v) for v in box)
    s = size / (size - 2 * pad)
    cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2 * s, (y1 - y0) / 2 * s
    return (cx - hw, cy - hh, cx + hw, cy + hh)


def test_max_overlap_per_class_matches_loop():
    rng = np.random.default_rng(2)
    images = ArrayImageSet("imgs", np.zeros((4, 8, 8, 3), np.uint8), np.zeros(4, np.int64), ("a", "b", "c"))
    gt_xy = rng.uniform(0, 40, (9, 2))
    gt = det.DetectionData(images, np.concatenate([gt_xy, gt_xy + 15], 1).astype(np.float32),
                           rng.integers(0, 3, 9), np.zeros(9, bool), np.sort(rng.integers(0, 4, 9)))
    xy = rng.uniform(0, 40, (30, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 25, (30, 2))], 1).astype(np.float32)
    index = np.sort(rng.integers(0, 4, 30))
    got = det.max_overlap_per_class(boxes, index, gt, 3)
    for p in range(30):
        for c in range(3):
            best = 0.0
            for g in range(9):
                if gt.image_index[g] == index[p] and gt.labels[g] == c:
                    a, b = boxes[p], gt.boxes[g]
                    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
                    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
                    inter = iw * ih
                    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
                    best = max(best, inter / union)
            assert got[p, c] == pytest.approx(best, abs=1e-5)


# --------------------------------------------------------------------------- training and NMS
def test_hard_negative_mining_finds_the_hard_negatives():
    rng = np.random.default_rng(0)
    pos = rng.normal([2.0, 0.0], 0.1, (20, 2))
    easy = rng.normal([-6.0, 0.0], 0.5, (500, 2))
    hard = rng.normal([0.8, 0.0], 0.05, (15, 2))  # separable from the positives, close to them
    x = np.concatenate([pos, easy, hard]).astype(np.float32)
    p_idx, n_idx = np.arange(20), np.arange(20, len(x))
    hard_idx = np.arange(520, len(x))
    cfg0 = det.DetectionConfig(mining_rounds=0, initial_negatives=30, C=1.0)
    w0, b0, _ = det.train_class_svm(x, p_idx, n_idx, cfg0, np.random.default_rng(0))
    assert ((x[hard_idx] @ w0 + b0) > -1).any()  # premise: the random subset left hard negatives in the margin
    cfg = det.DetectionConfig(mining_rounds=3, initial_negatives=30, C=1.0)
    w, b, meta = det.train_class_svm(x, p_idx, n_idx, cfg, np.random.default_rng(0))
    s = x @ w + b
    assert s[hard_idx].max() < s[p_idx].min()  # every positive now outranks every negative
    assert len(meta["cache"]) >= 2 and meta["cache"][1] < meta["cache"][0] + len(hard_idx) + 1


def _ref_nms(boxes, scores, thr):
    order = sorted(range(len(scores)), key=lambda k: -scores[k])
    keep = []
    for k in order:
        ok = True
        for j in keep:
            a, b = boxes[k], boxes[j]
            iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
            ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
            inter = iw * ih
            if inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter) > thr:
                ok = False
                break
        if ok:
            keep.append(k)
    return keep


def test_detect_is_classwise_nms_per_image_then_top_n():
    rng = np.random.default_rng(5)
    n_img, per, c = 3, 25, 2
    xy = rng.uniform(0, 30, (n_img * per, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(8, 20, (n_img * per, 2))], 1).astype(np.float32)
    index = np.repeat(np.arange(n_img), per)
    scores = rng.normal(size=(n_img * per, c)).astype(np.float32)
    out = det.detect(scores, boxes, index, nms_iou=0.3, top_per_image=4)
    for k in range(c):
        for i in range(n_img):
            m = np.flatnonzero(index == i)
            keep = _ref_nms(boxes[m].tolist(), scores[m, k].tolist(), 0.3)[:4]
            got = out[k][out[k][:, 0] == i]
            np.testing.assert_allclose(got[:, 1], scores[m[keep], k], rtol=1e-6)
            np.testing.assert_allclose(got[:, 2:], boxes[m[keep]], rtol=1e-6)


def test_config_validation():
    with pytest.raises(InputError, match="proposal method"):
        det.DetectionConfig(proposals="edgeboxes")
    with pytest.raises(InputError, match="ablation"):
        det.DetectionConfig(ablation="dropout")
    with pytest.raises(InputError, match="conv"):
        det.ablate(np.ones((3, 5), np.float32), "sp-max")
    assert hash(det.DetectionConfig()) == hash(det.DetectionConfig())


def test_load_detection_data_errors(tmp_path):
    with pytest.raises(InputError, match="no detection annotations"):
        det.load_detection_data("imagefolder:/x")
    with pytest.raises(DataMissingError):
        det.load_detection_data(f"voc2007:{tmp_path / 'nothing'}:test")


# --------------------------------------------------------------------------- VOC end to end
def test_voc_detection_data(voc_root):
    tr = det.load_detection_data(f"voc2007:{voc_root}:trainval")
    te = det.load_detection_data(f"voc2007:{voc_root}:test")
    assert len(tr.images) == 6 and len(tr.boxes) == 12 and len(te.boxes) == 8
    assert te.difficult.sum() == 1 and te.labels[te.difficult][0] == C("dog")
    # pixel-edge boxes: the XML's xmin - 1 .. xmax
    np.testing.assert_array_equal(tr.boxes[0], [5, 5, 40, 40])
    assert tr.image_index.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]


def test_voc_perfect_proposals_and_separable_features_give_ap_1(voc_root, tmp_cache, tiny_net):
    tr = det.load_detection_data(f"voc2007:{voc_root}:trainval")
    te = det.load_detection_data(f"voc2007:{voc_root}:test")
    cfg = det.DetectionConfig(layer="conv5", proposals="gt", mining_rounds=1)
    r = det.run_detection(tiny_net, tr, te, cfg, device="cpu")
    for name in COLOURS:
        assert r.ap[C(name)] == pytest.approx(1.0), name
    assert r.map == pytest.approx(1.0)
    assert np.isnan(r.ap[C("person")])  # no ground truth: not in the mean
    assert r.num_positives[C("dog")] == 2  # the difficult dog is not counted
    # cached: the second run reads the stored region features instead of running the network
    def boom(*a, **k):
        raise AssertionError("features were extracted again")

    orig = extraction._run_forward
    extraction._run_forward = boom
    try:
        again = det.run_detection(tiny_net, tr, te, cfg, device="cpu")
    finally:
        extraction._run_forward = orig
    np.testing.assert_array_equal(again.ap, r.ap)


def test_voc_selective_search_pipeline_runs(voc_root, tmp_cache, tiny_net):
    tr = det.load_detection_data(f"voc2007:{voc_root}:trainval")
    te = det.load_detection_data(f"voc2007:{voc_root}:test")
    cfg = det.DetectionConfig(layer="fc7", proposals="selective-search", max_proposals=60, mining_rounds=1,
                              ablation="binarize")
    r = det.run_detection(tiny_net, tr, te, cfg, device="cpu")
    used = [C(n) for n in COLOURS]
    assert np.all((r.ap[used] >= 0) & (r.ap[used] <= 1))
    assert r.stats["test_regions"] > 4 and r.stats["train_regions"] > 12
    rows = det.image_detections(r, 0, per_class=2)
    assert rows == sorted(rows, key=lambda d: -d["score"])
    assert all(d["class_name"] == VOC_CLASSES[d["class"]] for d in rows)
    assert list((tmp_cache / "proposals").rglob("*.npy"))


def test_register_voc_detection_task(voc_root, tmp_cache):
    from core import service

    t = service.register_voc_detection(str(voc_root))
    assert service.task("voc07-det") == t and t.kind == "det" and t.paper == "PASCAL-DET"
    assert len(service.load_detection(t.test).boxes) == 8
    assert service.detection_config("voc07-det").proposals == "selective-search"
    with pytest.raises(DataMissingError):
        service.register_voc_detection(str(voc_root / "missing"))


@pytest.mark.parametrize("layer, ablation", [("conv5", "original"), ("conv5", "sp-shuffle"), ("fc7", "binarize")])
def test_detection_over_the_memory_budget_streams_the_regions(voc_root, tmp_cache, tiny_net, monkeypatch,
                                                              layer, ablation):
    """Region features over FILTERSCOPE_MEMORY_GB are read from the store as needed (the SVMs' rows,
    and block by block for mining and test scores), never ablated whole: the same detectors, scores
    and AP as the in-memory path (#30)."""
    tr = det.load_detection_data(f"voc2007:{voc_root}:trainval")
    te = det.load_detection_data(f"voc2007:{voc_root}:test")
    cfg = det.DetectionConfig(layer=layer, proposals="selective-search", max_proposals=40, mining_rounds=2,
                              initial_negatives=20, ablation=ablation)
    ref = det.run_detection(tiny_net, tr, te, cfg, device="cpu")
    monkeypatch.setenv("FILTERSCOPE_MEMORY_GB", str(2**-17))          # 8 KiB: blocks of a row or two
    monkeypatch.setattr(det, "ablate", lambda *a, **k: pytest.fail("a whole-layer ablation over the budget"))
    calls = []
    got = det.run_detection(tiny_net, tr, te, cfg, device="cpu", progress=lambda *a: calls.append(a))
    training = [c[:2] for c in calls if c[2].startswith("training per-class SVMs")]
    assert training == [(k, len(VOC_CLASSES)) for k in range(len(VOC_CLASSES) + 1)]   # class by class
    assert got.stats["mining"] == ref.stats["mining"]                 # the same negative caches, round by round
    np.testing.assert_allclose(got.ap, ref.ap, atol=1e-9, equal_nan=True)
    for a, b in zip(got.detections, ref.detections):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_streamed_regions_equal_the_whole_ablation(tmp_cache, tiny_net, monkeypatch):
    """Row for row, any index order, any block size: StreamedRegions equals ablate() of the whole layer
    (sp-shuffle's permutation of row i is the i-th of the whole layer's)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (23, 40, 40, 3), dtype=np.uint8)
    data = ArrayImageSet("regions", images, np.zeros(23, int), ["x"])
    f = extraction.extract(tiny_net, data, ["conv5"], device="cpu", num_workers=0)["conv5"]
    idx = rng.permutation(23)[:9]
    for ablation in ("original", "binarize", "sp-shuffle", "sp-max"):
        whole = det.ablate(f.array(), ablation, seed=3)
        for budget in (2**-20, 2**-14):
            monkeypatch.setenv("FILTERSCOPE_MEMORY_GB", str(budget))
            s = det.StreamedRegions(f, ablation, seed=3)
            assert s.shape == whole.shape
            np.testing.assert_array_equal(s.take(idx), whole[idx])
            blocks = list(s.blocks())
            assert np.array_equal(np.concatenate([r for r, _ in blocks]), np.arange(23))
            np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), whole)
        s.scale = 0.5
        np.testing.assert_array_equal(s.take(idx), whole[idx] * np.float32(0.5))
