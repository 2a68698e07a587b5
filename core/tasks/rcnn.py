"""R-CNN-style object detection (PASCAL-DET) on any layer of any network.

Reproduces: the PASCAL-DET experiments of Agrawal et al. 2014 (Sec. 2, Tables 1, 2, 4, 8),
which use the R-CNN pipeline of Girshick et al. (CVPR 2014) *without bounding-box regression*:

1. region proposals per image (selective search "fast", or cheap multi-scale windows for the
   64 px demo scenes), cached on disk per image;
2. each proposal cropped with R-CNN's warp (16 px of context at 227, scaled to the network's
   input) and passed through the network; features of one layer stored in the feature store
   like any other extraction (an :class:`~core.data.datasets.ImageSet` of crops);
3. the Table 7-8 ablation applied to the features (original / binarize / sp-shuffle / sp-max);
4. per class a linear SVM, positives = the ground-truth boxes, negatives = candidates with
   IoU < 0.3 with every box of the class, trained with R-CNN's hard-negative mining;
5. every test proposal scored, class-wise NMS at IoU 0.3, VOC 2007 evaluation
   (:func:`core.analysis.evaluate_detections`).

Deviations (all stated in :class:`DetectionConfig`): mining is done in fixed rounds over a
feature matrix held in memory rather than R-CNN's image-by-image cache passes; training and
testing can be capped to the first ``max_train_images`` / ``max_test_images`` images (the demo
does this to aim at 2 minutes on 2 cores); detections are capped to ``top_per_image`` per class
and image after NMS; the expanded crop box keeps fractional coordinates (as the DET-GT crops).
"""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from core import analysis
from core.analysis.sharded import ablate_block, load_shard
from core.store import extraction
from core.config import cache_root, memory_budget
from core.hashing import stable_hash
from core.data.datasets import (RCNN_CONTEXT_PAD, RCNN_CROP_SIZE, RCNN_FILL, VOC_CLASSES, ArrayImageSet, FileImageSet,
                                ImageSet, read_voc_annotations, warp_box)
from core.data.registry import Registry
from core.errors import InputError
from core.data.models import LoadedModel

log = logging.getLogger(__name__)
Progress = Callable[[int, int, str], None]
PROPOSAL_METHODS = ("windows", "selective-search", "gt")
#: Feature stores above this size are refused (e.g. conv1 maps of every proposal).
MAX_FEATURE_BYTES = 4 << 30
_HARD_THRESH, _EVICT_THRESH = -1.0, -1.2  # R-CNN's rcnn_train: hard > -1 (the margin), evict easy < -1.2


# =========================================================================== configuration
@dataclass(frozen=True)
class DetectionConfig:
    """What one detection evaluation computes; its stable hash keys the cache.

    Attributes
    ----------
    layer : features for the SVMs (fc7 as the paper's Tables 1, 2, 4; conv5 in Table 8).
    proposals : "windows" (multi-scale sliding windows, the demo's default), "selective-search"
        (OpenCV's fast mode, as R-CNN), or "gt" (the ground-truth boxes only: an oracle for
        sanity checks, not a detector).
    max_proposals : cap per image (selective search keeps its first ones, i.e. its ranking).
    mining_rounds : hard-negative mining rounds after the first fit.
    C, positive_weight, feat_norm : R-CNN's liblinear setting: hinge loss, C = 1e-3, positive
        loss weight 2, bias term scaled 10, features scaled so their mean L2 norm is 20.
    ablation : "original", "binarize", "sp-shuffle" or "sp-max" (the last two need a conv layer).
    use_07_metric : 11-point AP of VOC 2007 (True, the paper's) or the all-points area.
    initial_negatives : size of the random negative subset of the first fit, per class.
    max_train_images, max_test_images : use the first N images of the split only (None: all);
        a deviation the demo takes to stay within 2 minutes on 2 CPU cores.
    top_per_image : detections kept per class and image after NMS.
    """

    layer: str = "fc7"
    proposals: str = "windows"
    max_proposals: int = 2000
    mining_rounds: int = 2
    C: float = 1e-3
    positive_weight: float = 2.0
    feat_norm: float = 20.0
    ablation: str = "original"
    use_07_metric: bool = True
    negative_iou: float = 0.3
    nms_iou: float = 0.3
    initial_negatives: int = 2000
    max_train_images: int | None = None
    max_test_images: int | None = None
    top_per_image: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        if self.proposals not in PROPOSAL_METHODS:
            raise InputError(f"unknown proposal method {self.proposals!r}; use one of {', '.join(PROPOSAL_METHODS)}")
        if self.ablation not in ("original", "binarize", "sp-shuffle", "sp-max"):
            raise InputError(f"unknown ablation {self.ablation!r}; use original, binarize, sp-shuffle or sp-max")
        if self.max_proposals < 1 or self.top_per_image < 1 or self.mining_rounds < 0 or self.C <= 0:
            raise InputError("max_proposals and top_per_image must be >= 1, mining_rounds >= 0 and C > 0")


# =========================================================================== data
@dataclass
class DetectionData:
    """Whole images with every ground-truth box (VOC-style; difficult boxes kept for evaluation).

    ``boxes`` ``[B, 4]`` float32 pixel edges (x1, y1, x2, y2), ``labels``, ``difficult`` and
    ``image_index`` ``[B]``.
    """

    images: ImageSet
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    image_index: np.ndarray

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.images.class_names

    @property
    def fingerprint(self) -> str:
        return stable_hash("det-data", self.images.fingerprint, _digest(self.boxes, self.labels,
                                                                       self.difficult, self.image_index))

    def subset(self, n: int | None) -> "DetectionData":
        """The first ``n`` images and their boxes (all when ``n`` is None or large)."""
        if n is None or n >= len(self.images):
            return self
        keep = self.image_index < n
        idx = np.arange(n)
        if isinstance(self.images, ArrayImageSet):
            imgs: ImageSet = ArrayImageSet(f"{self.images.name}[:{n}]", self.images.images[:n],
                                           self.images.labels[idx], self.images.class_names,
                                           fingerprint=stable_hash(self.images.fingerprint, n))
        elif isinstance(self.images, FileImageSet):
            imgs = FileImageSet(f"{self.images.name}[:{n}]", self.images.paths[:n], self.images.labels[idx],
                                self.images.class_names, stable_hash(self.images.fingerprint, n))
        else:
            raise InputError(f"cannot take a subset of {type(self.images).__name__}")
        imgs.derived_from = self.images.derived_from or (self.images.fingerprint,)
        return DetectionData(imgs, self.boxes[keep], self.labels[keep], self.difficult[keep], self.image_index[keep])


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def voc_detection(root: str | Path, split: str = "trainval", year: str = "2007") -> DetectionData:
    """PASCAL VOC detection data: whole images and every box, difficult ones flagged.

    Parses the annotations once with :func:`core.data.datasets.read_voc_annotations` (the VOC
    loader's XML parsing); images are the PASCAL-CLS set of the same split.
    """
    from core.data.datasets import voc_classification

    ann = read_voc_annotations(root, split, year)
    images = voc_classification(root, split, year)
    rows = [(i, o) for i, objs in enumerate(ann.objects) for o in objs]
    return DetectionData(images, np.array([o.box for _, o in rows], np.float32).reshape(-1, 4),
                         np.array([o.cls for _, o in rows], np.int64),
                         np.array([o.difficult for _, o in rows], bool), np.array([i for i, _ in rows], np.int64))


def concat_detection(parts: Sequence[DetectionData], name: str) -> DetectionData:
    """Several file-backed detection sets as one (e.g. VOC 2007 + 2012 trainval, "PASCAL-DET+DATA")."""
    if any(not isinstance(p.images, FileImageSet) for p in parts):
        raise InputError("only file-backed detection sets can be concatenated")
    if len({p.class_names for p in parts}) != 1:
        raise InputError("detection sets to concatenate must share their classes")
    offsets = np.cumsum([0] + [len(p.images) for p in parts])
    images = FileImageSet(name, [f for p in parts for f in p.images.paths],
                          np.concatenate([p.images.labels for p in parts]), parts[0].class_names,
                          stable_hash("concat", [p.images.fingerprint for p in parts]))
    return DetectionData(images, np.concatenate([p.boxes for p in parts]), np.concatenate([p.labels for p in parts]),
                         np.concatenate([p.difficult for p in parts]),
                         np.concatenate([p.image_index + o for p, o in zip(parts, offsets)]))


DETECTION_LOADERS: Registry[Callable[[str], DetectionData]] = Registry(
    "detection data prefix", "Use voc2007:<root>[:<split>], voc2012:<root>[:<split>], voc0712:<root> "
    "or demo:target-<split>.")
"""``prefix -> loader(rest_of_spec)`` for detection splits; the demo registers ``demo``."""


def _voc_loader(prefix: str) -> Callable[[str], DetectionData]:
    """Loader of ``<prefix>:<root>[:<split>]`` for voc2007 / voc2012 (split default trainval), and of
    ``voc0712:<root>``: VOC 2007 + 2012 trainval (the paper's PASCAL-DET+DATA training set)."""
    def load(rest: str) -> DetectionData:
        root, split = rest, "trainval"
        head, _, tail = rest.rpartition(":")
        if head and tail in ("train", "val", "trainval", "test"):
            root, split = head, tail
        if not root:
            raise InputError(f"detection spec '{prefix}:{rest}' needs a folder: '{prefix}:<root>[:<split>]'")
        if prefix == "voc0712":
            return concat_detection([voc_detection(root, "trainval", "2007"), voc_detection(root, "trainval", "2012")],
                                    "voc0712-trainval")
        return voc_detection(root, split, prefix[3:])
    return load


for _prefix in ("voc2007", "voc2012", "voc0712"):
    DETECTION_LOADERS.register(_prefix, _voc_loader(_prefix))


def load_detection_data(spec: str) -> DetectionData:
    """Detection data from a dataset id, through :data:`DETECTION_LOADERS`.

    ``voc2007:<root>[:<split>]`` / ``voc2012:<root>[:<split>]`` (split default trainval);
    ``voc0712:<root>`` = VOC 2007 trainval + VOC 2012 trainval under one ``VOCdevkit`` (the
    paper's PASCAL-DET+DATA training set); ``demo:target-{train,val,test}`` once the demo's
    loader is registered (:mod:`core.demo.build`).
    """
    prefix, _, rest = spec.partition(":")
    if prefix not in DETECTION_LOADERS:
        raise InputError(f"no detection annotations for dataset {spec!r}; use "
                         + DETECTION_LOADERS.hint.removeprefix("Use "))
    return DETECTION_LOADERS.get(prefix)(rest)


# =========================================================================== proposals
@lru_cache(maxsize=64)
def _windows_cached(h: int, w: int, scales: tuple[float, ...], aspects: tuple[float, ...],
                    overlap: float) -> np.ndarray:
    out = []
    side = min(h, w)
    for s in scales:
        for a in aspects:
            bw, bh = min(w, s * side * np.sqrt(a)), min(h, s * side / np.sqrt(a))
            nx = max(1, int(np.ceil((w - bw) / (bw * (1 - overlap)))) + 1)
            ny = max(1, int(np.ceil((h - bh) / (bh * (1 - overlap)))) + 1)
            xs, ys = np.linspace(0, w - bw, nx), np.linspace(0, h - bh, ny)
            gx, gy = np.meshgrid(xs, ys)
            out.append(np.stack([gx.ravel(), gy.ravel(), gx.ravel() + bw, gy.ravel() + bh], 1))
    boxes = np.unique(np.concatenate(out).round(2), axis=0).astype(np.float32)
    boxes.setflags(write=False)
    return boxes


def sliding_windows(size: tuple[int, int], scales: Sequence[float] = (0.25, 0.4, 0.6),
                    aspects: Sequence[float] = (0.5, 1.0, 2.0), overlap: float = 0.2) -> np.ndarray:
    """Cheap multi-scale windows: a built-in proposal method for the small demo scenes.

    Parameters
    ----------
    size : (height, width)
    scales : window side (geometric mean of width and height) as a fraction of the shorter image side
    aspects : width / height ratios
    overlap : fraction of a window shared with its neighbour along x and y (evenly spread
        positions from edge to edge)

    Returns
    -------
    ``[P, 4]`` float32 (x1, y1, x2, y2) pixel edges, read-only, sorted; 126 for 64 x 64 with the defaults, which
    reach IoU >= 0.5 with 83% of the demo's ground-truth boxes (162 windows at overlap 0.3: 88%).
    """
    h, w = (int(v) for v in size)
    if h < 1 or w < 1 or not 0 <= overlap < 1 or not scales or not aspects:
        raise InputError(f"sliding_windows needs a positive size, 0 <= overlap < 1 and some scales/aspects; "
                         f"got size {size}, overlap {overlap}")
    return _windows_cached(h, w, tuple(float(s) for s in scales), tuple(float(a) for a in aspects), float(overlap))


def selective_search(image: Any, mode: str = "fast", max_proposals: int = 2000, min_size: int = 2) -> np.ndarray:
    """Selective search (Uijlings et al.) proposals as R-CNN uses them, via OpenCV's contrib module.

    Parameters
    ----------
    image : uint8 ``[H, W, 3]`` RGB array or PIL image
    mode : "fast" (R-CNN's setting) or "quality"
    max_proposals : keep the first ones in OpenCV's order
    min_size : drop boxes narrower or shorter than this many pixels

    Returns
    -------
    ``[P, 4]`` float32 (x1, y1, x2, y2) pixel edges.

    Raises
    ------
    InputError
        When ``opencv-contrib-python-headless`` is not installed (it says how to install it).
    """
    try:
        import cv2
        seg = cv2.ximgproc.segmentation
    except (ImportError, AttributeError):
        raise InputError("selective search needs OpenCV's contrib module: "
                         "`.venv/bin/python -m pip install opencv-contrib-python-headless==4.14.0.94` "
                         "(or use proposals='windows')") from None
    if mode not in ("fast", "quality"):
        raise InputError(f"selective search mode must be 'fast' or 'quality', got {mode!r}")
    arr = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise InputError(f"selective search needs a uint8 [H, W, 3] image, got {arr.dtype} {arr.shape}")
    cv2.setNumThreads(1)
    ss = seg.createSelectiveSearchSegmentation()
    ss.setBaseImage(np.ascontiguousarray(arr[:, :, ::-1]))
    ss.switchToSelectiveSearchFast() if mode == "fast" else ss.switchToSelectiveSearchQuality()
    rects = np.asarray(ss.process(), dtype=np.float32).reshape(-1, 4)
    rects = rects[(rects[:, 2] >= min_size) & (rects[:, 3] >= min_size)][:max_proposals]
    return np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], 1)


def _image_digest(img: Any) -> str:
    a = np.asarray(img)
    return hashlib.sha1(str(a.shape).encode() + a.tobytes()).hexdigest()


def image_proposals(img: Any, method: str, max_proposals: int, root: Path | None = None) -> np.ndarray:
    """Proposals of one image (PIL or uint8 array), cached on disk by image content + method."""
    arr = np.asarray(img)
    if method == "windows":
        return sliding_windows(arr.shape[:2])[:max_proposals]
    if method != "selective-search":
        raise InputError(f"image_proposals: unknown method {method!r} ('gt' proposals come from annotations)")
    d = (root or cache_root()) / "proposals" / f"ss-fast-{max_proposals}"
    path = d / f"{_image_digest(arr)}.npy"
    if path.is_file():
        try:
            return np.load(path)
        except (OSError, ValueError):
            log.warning("damaged proposal cache %s; recomputing", path)
    boxes = selective_search(arr, "fast", max_proposals)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".{path.name}.tmp"
    with open(tmp, "wb") as fh:
        np.save(fh, boxes)
    tmp.replace(path)
    return boxes


def dataset_proposals(data: DetectionData, method: str, max_proposals: int,
                      progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Proposals of every image: boxes ``[P, 4]`` float32 and image index ``[P]``."""
    if method == "gt":
        return data.boxes.astype(np.float32), data.image_index.copy()
    boxes, index = [], []
    n = len(data.images)
    for i in range(n):
        b = image_proposals(_image_array(data.images, i), method, max_proposals)
        boxes.append(b), index.append(np.full(len(b), i, np.int64))
        if progress and (i % 50 == 0 or i == n - 1):
            progress(i + 1, n, f"region proposals ({method}): image {i + 1} of {n}")
    return np.concatenate(boxes).astype(np.float32), np.concatenate(index)


def _image_array(images: ImageSet, i: int) -> np.ndarray:
    if isinstance(images, ArrayImageSet):
        return np.asarray(images.images[i])
    return np.asarray(images.image(i))


# =========================================================================== crops as an ImageSet
class _LazyCrops:
    """Array-like ``[N, S, S, 3]`` uint8 whose rows are R-CNN warps, computed when indexed.

    Lets the extraction's batched array path (and its I/O thread) cut crops batch by batch.
    """

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, images: ImageSet, image_index: np.ndarray, boxes: np.ndarray, size: int, pad: int,
                 fill: tuple[int, int, int]):
        self.images, self.index, self.boxes = images, image_index, boxes
        self.size, self.pad, self.fill = size, pad, fill
        self.shape = (len(boxes), size, size, 3)
        self._last: tuple[int, Any] = (-1, None)

    def __len__(self) -> int:
        return self.shape[0]

    def _pil(self, i: int):
        if self._last[0] != i:
            self._last = (i, self.images.image(i))
        return self._last[1]

    def __getitem__(self, idx):
        if isinstance(idx, (int, np.integer)):
            return np.asarray(warp_box(self._pil(int(self.index[idx])), self.boxes[idx], self.size, self.pad,
                                       self.fill))
        rows = np.arange(len(self))[idx]
        out = np.empty((len(rows), self.size, self.size, 3), np.uint8)
        for k, r in enumerate(rows):
            out[k] = self[int(r)]
        return out


def crop_set(images: ImageSet, image_index: np.ndarray, boxes: np.ndarray, input_size: int, name: str,
             fill: tuple[int, int, int] = RCNN_FILL) -> ArrayImageSet:
    """An ``ImageSet`` of R-CNN warped crops (context 16 px at 227, scaled to ``input_size``).

    The same warp as the DET-GT crops (:func:`core.data.datasets.warp_box`); item ``k`` is box
    ``boxes[k]`` of image ``image_index[k]``. Labels are all 0 (the crops are unlabelled).
    """
    order_ok = len(image_index) == 0 or bool(np.all(np.diff(image_index) >= 0))
    if not order_ok:
        raise InputError("crop_set needs boxes grouped by image (image_index non-decreasing)")
    pad = max(1, round(RCNN_CONTEXT_PAD * input_size / RCNN_CROP_SIZE))
    lazy = _LazyCrops(images, image_index, boxes, input_size, pad, fill)
    fp = stable_hash("rcnn-crops", images.fingerprint, _digest(image_index, boxes.astype(np.float32)),
                     input_size, pad, list(fill))
    out = ArrayImageSet(name, lazy, np.zeros(len(boxes), np.int64), ("region",), fingerprint=fp)  # type: ignore[arg-type]
    out.derived_from = images.derived_from or (images.fingerprint,)
    return out


def _check_size(loaded: LoadedModel, layer: str, n: int) -> None:
    shape = extraction.layer_shapes(loaded)[layer]
    need = n * int(np.prod(shape)) * 2
    if need > MAX_FEATURE_BYTES:
        raise InputError(f"{layer} features of {n} regions would take {need / 2**30:.1f} GiB "
                         f"(limit {MAX_FEATURE_BYTES / 2**30:.0f} GiB): use a higher layer, fewer proposals "
                         "(max_proposals) or fewer training images (max_train_images)")


def region_features(loaded: LoadedModel, crops: ArrayImageSet, layer: str, *, device: str = "auto",
                    progress: Progress | None = None) -> extraction.LayerFeatures:
    """Features of every crop, through the feature store (extracted once, then memory-mapped)."""
    stored = extraction.load_features(loaded, crops, layer)
    if stored is not None:
        return stored
    _check_size(loaded, layer, len(crops))
    return extraction.extract(loaded, crops, [layer], device=device, progress=progress, num_workers=0)[layer]


def _ablation_fn(ndim: int, ablation: str) -> Callable[[np.ndarray, int], np.ndarray]:
    fns = analysis.ablation_transforms(ndim)
    if ablation not in fns:
        raise InputError(f"ablation {ablation!r} needs a convolutional layer; for fc layers use "
                         "original or binarize")
    return fns[ablation]


def ablate(x: np.ndarray, ablation: str, seed: int = 0) -> np.ndarray:
    """Table 7-8 ablation of region features, as a float32 ``[N, D]`` matrix."""
    fn = _ablation_fn(np.ndim(x), ablation)
    return np.ascontiguousarray(fn(np.asarray(x, np.float32), seed), dtype=np.float32)


#: Bytes per stored value the in-memory path holds: the float32 ablated copy and its scaled copy, and
#: the float16 store's pages; over ``FILTERSCOPE_MEMORY_GB`` the regions stream (:class:`StreamedRegions`).
_HELD_BYTES = 12
#: A streamed block holds at most this share of the budget in float32 ablated rows.
_BLOCK_SHARE = 128


class StreamedRegions:
    """Region features over the memory budget, read from the feature store as they are needed, never
    whole: the ablated float32 rows of an index set (the SVMs' positives and negative cache), or every
    row in blocks (hard-negative scoring, the test scores). Equal to :func:`ablate` of the whole layer
    row for row: binarize and sp-max are per row, and sp-shuffle gives row ``i`` the ``i``-th of the
    permutations :func:`core.analysis.ablation.spatial_shuffle` draws for the whole layer.

    Rows are scaled by ``scale`` (R-CNN's feature normalisation) once it is set."""

    def __init__(self, f: extraction.LayerFeatures, ablation: str, seed: int = 0):
        _ablation_fn(len(f.shape), ablation)  # an ablation this layer does not have: the same error as ablate()
        self.features, self.ablation, self.scale = f, ablation, 1.0
        n = f.shape[0]
        self.perms = None
        if ablation == "sp-shuffle":
            from core.analysis.ablation import shuffle_permutations
            self.perms = shuffle_permutations(n, f.shape[2] * f.shape[3], seed).numpy().astype(np.int16)
        dim = f.shape[1] if ablation == "sp-max" else int(np.prod(f.shape[1:]))
        self.shape = (n, dim)
        # the float32 copy of a stored block (full width, before sp-max pools it) is the working size
        self.block_rows = max(1, memory_budget() // _BLOCK_SHARE // (4 * int(np.prod(f.shape[1:]))))

    def _ablated(self, x: np.ndarray, rows: np.ndarray) -> np.ndarray:
        perms = None if self.perms is None else self.perms[rows].astype(np.int64)
        out = np.ascontiguousarray(ablate_block(0, np.asarray(x, np.float32), self.ablation, perms), np.float32)
        return out * np.float32(self.scale) if self.scale != 1.0 else out

    def take(self, idx: np.ndarray) -> np.ndarray:
        """The ablated, scaled rows ``idx`` ``[len(idx), D]`` float32."""
        idx = np.asarray(idx, np.int64)
        order = np.argsort(idx, kind="stable")       # the store read in row order
        out = np.empty((len(idx), self.shape[1]), np.float32)
        # a fresh memory map per call, released after it: the pages read do not stay mapped (and counted)
        out[order] = self._ablated(self.features.array()[idx[order]], idx[order])
        return out

    def blocks(self):
        """``(rows, ablated scaled block)`` over every row, a block of :attr:`block_rows` at a time."""
        stored_row = 2 * int(np.prod(self.features.shape[1:]))  # float16
        for lo, d in analysis.row_blocks(self.features, self.block_rows * stored_row):
            block = load_shard(d)  # mapped for this block only
            rows = np.arange(lo, lo + len(block))
            yield rows, self._ablated(block, rows)


Regions = np.ndarray | StreamedRegions


def _take(x: Regions, idx: np.ndarray) -> np.ndarray:
    return x.take(idx) if isinstance(x, StreamedRegions) else x[idx]


#: Rows scored at a time by :func:`_scores` on an in-memory layer.
_SCORE_ROWS = 4096


def _scores(x: Regions, idx: np.ndarray, w: np.ndarray, b: Any) -> np.ndarray:
    """``x[idx] @ w + b`` for ascending ``idx``, in float64 (float32 inputs): a chunk of rows at a time,
    over a streamed layer its blocks. Float64 so that the two paths' different chunkings cannot move a
    score across the mining thresholds (float32 dot products of other lengths round differently)."""
    w64, b64 = np.asarray(w, np.float64), np.asarray(b, np.float64)
    if isinstance(x, StreamedRegions):
        parts = []
        for rows, block in x.blocks():
            lo, hi = np.searchsorted(idx, [rows[0], rows[-1] + 1])
            parts.append(block[idx[lo:hi] - rows[0]] @ w64 + b64)
    else:
        parts = [x[idx[k:k + _SCORE_ROWS]] @ w64 + b64 for k in range(0, len(idx), _SCORE_ROWS)]
    return np.concatenate(parts) if parts else np.zeros((0,) + w64.shape[1:])


def region_rows(f: extraction.LayerFeatures, ablation: str, seed: int = 0) -> Regions:
    """The SVMs' region features: :func:`ablate` of the whole layer when its working copies fit
    ``FILTERSCOPE_MEMORY_GB``, else :class:`StreamedRegions` over the store."""
    if int(np.prod(f.shape)) * _HELD_BYTES <= memory_budget():
        return ablate(f.array(), ablation, seed)
    return StreamedRegions(f, ablation, seed)


# =========================================================================== training
def max_overlap_per_class(boxes: np.ndarray, image_index: np.ndarray, gt: DetectionData,
                          num_classes: int) -> np.ndarray:
    """``[P, C]`` the largest IoU of each box with any ground-truth box of each class in its image."""
    from torchvision.ops import box_iou

    out = np.zeros((len(boxes), num_classes), np.float32)
    order = np.argsort(gt.image_index, kind="stable")
    g_img = gt.image_index[order]
    starts = np.searchsorted(image_index, np.arange(len(gt.images) + 1))
    g_starts = np.searchsorted(g_img, np.arange(len(gt.images) + 1))
    for i in np.unique(image_index):
        a, b = starts[i], starts[i + 1]
        ga, gb = g_starts[i], g_starts[i + 1]
        if gb == ga:
            continue
        sel = order[ga:gb]
        iou = box_iou(torch.from_numpy(boxes[a:b].astype(np.float32)),
                      torch.from_numpy(gt.boxes[sel].astype(np.float32))).numpy()
        for c in np.unique(gt.labels[sel]):
            out[a:b, c] = iou[:, gt.labels[sel] == c].max(1)
    return out


def _fit_svm(x: np.ndarray, y: np.ndarray, cfg: DetectionConfig) -> tuple[np.ndarray, float]:
    from sklearn.svm import LinearSVC

    svm = LinearSVC(C=cfg.C, loss="hinge", dual=True, class_weight={1: cfg.positive_weight, 0: 1.0},
                    intercept_scaling=10.0, max_iter=5000, tol=1e-4, random_state=cfg.seed)
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        svm.fit(x, y)
    return svm.coef_.ravel().astype(np.float32), float(svm.intercept_[0])


def train_class_svm(x: Regions, pos: np.ndarray, neg: np.ndarray, cfg: DetectionConfig,
                    rng: np.random.Generator) -> tuple[np.ndarray, float, dict]:
    """One class's linear SVM with R-CNN's hard-negative mining.

    scikit-learn ``LinearSVC`` (liblinear, L2-regularised hinge loss in the dual: R-CNN's
    ``-s 3``). The first fit uses every positive and a random subset of
    ``initial_negatives`` negatives; each of ``mining_rounds`` rounds then scores *all*
    negatives, adds those scoring above -1 (inside the margin), drops cached ones below
    -1.2 (R-CNN's eviction of easy negatives) and refits. Stops early when no new hard
    negative appears.

    Returns
    -------
    w ``[D]``, b, and a dict with the cache size after each fit.
    """
    if len(pos) == 0:
        return np.zeros(x.shape[1], np.float32), -1e3, {"cache": [], "note": "no positives"}
    neg = np.sort(neg)
    cache = rng.choice(neg, min(len(neg), cfg.initial_negatives), replace=False) if len(neg) else neg
    sizes = []
    for rnd in range(cfg.mining_rounds + 1):
        if len(cache) == 0:
            return np.zeros(x.shape[1], np.float32), 1.0, {"cache": sizes, "note": "no negatives"}
        idx = np.concatenate([pos, cache])
        w, b = _fit_svm(_take(x, idx), np.r_[np.ones(len(pos), int), np.zeros(len(cache), int)], cfg)
        sizes.append(int(len(cache)))
        if rnd == cfg.mining_rounds:
            break
        s = _scores(x, neg, w, b)
        in_cache = np.isin(neg, cache)
        hard = neg[(s > _HARD_THRESH) & ~in_cache]
        if len(hard) == 0:
            break
        keep = cache[(_take(x, cache) @ w + b) >= _EVICT_THRESH]
        cache = np.concatenate([keep, hard])
    return w, b, {"cache": sizes}


@dataclass
class DetectorWeights:
    w: np.ndarray  # [D, C]
    b: np.ndarray  # [C]
    scale: float  # feature scale (mean norm -> feat_norm)
    mining: list[dict]


def train_detectors(x: Regions, is_gt_pos: np.ndarray, labels: np.ndarray, overlaps: np.ndarray,
                    num_classes: int, cfg: DetectionConfig, progress: Progress | None = None) -> DetectorWeights:
    """Per-class SVMs on candidate features ``x`` ``[P, D]`` (an array, or :class:`StreamedRegions`).

    ``is_gt_pos`` marks the non-difficult ground-truth candidates and ``labels`` their class;
    ``overlaps`` ``[P, C]`` is :func:`max_overlap_per_class`. Negatives of class ``c``: candidates
    with overlap < ``negative_iou`` with every box of ``c`` (other classes' boxes included).
    """
    if isinstance(x, StreamedRegions):
        norms = np.concatenate([np.linalg.norm(block, axis=1) for _, block in x.blocks()])
    else:
        norms = np.linalg.norm(x, axis=1)
    scale = float(cfg.feat_norm / max(norms.mean(), 1e-12))
    if isinstance(x, StreamedRegions):
        x.scale, xs = scale, x
    else:
        xs = x * np.float32(scale)
    rng = np.random.default_rng(cfg.seed)
    ws, bs, info = [], [], []
    for c in range(num_classes):
        pos = np.flatnonzero(is_gt_pos & (labels == c))
        neg = np.flatnonzero(overlaps[:, c] < cfg.negative_iou)
        w, b, meta = train_class_svm(xs, pos, neg, cfg, rng)
        ws.append(w), bs.append(b), info.append({"positives": int(len(pos)), **meta})
        if progress:
            progress(c + 1, num_classes, f"training per-class SVMs with hard-negative mining: class {c + 1} of "
                                         f"{num_classes}")
    return DetectorWeights(np.stack(ws, 1), np.asarray(bs, np.float32), scale, info)


# =========================================================================== testing
def detect(scores: np.ndarray, boxes: np.ndarray, image_index: np.ndarray, nms_iou: float = 0.3,
           top_per_image: int = 20) -> list[np.ndarray]:
    """Class-wise NMS per image and top-N: per class a ``[D_c, 6]`` array (image, score, box).

    ``scores`` ``[P, C]`` for ``boxes`` ``[P, 4]`` of images ``image_index`` ``[P]`` (grouped by
    image). One ``torchvision.ops.nms`` call per image with every class's copy of the boxes
    shifted apart by ``class * (max coordinate + 1)`` (``batched_nms``'s coordinate trick:
    boxes of different classes never overlap), so suppression is within (image, class) only.
    """
    from torchvision.ops import nms

    p, c = scores.shape
    if p == 0:
        return [np.zeros((0, 6), np.float32) for _ in range(c)]
    if np.any(np.diff(image_index) < 0):
        raise InputError("detect needs boxes grouped by image (image_index non-decreasing)")
    offset = float(np.abs(boxes).max()) + 1.0
    starts = np.flatnonzero(np.r_[True, np.diff(image_index) != 0, True])
    out: list[list[np.ndarray]] = [[] for _ in range(c)]
    for a, b in zip(starts[:-1], starts[1:]):
        n = b - a
        bx = np.tile(boxes[a:b].astype(np.float32), (c, 1))  # class-major copies
        k = np.repeat(np.arange(c), n)
        sc = scores[a:b].T.reshape(-1).astype(np.float32)
        keep = nms(torch.from_numpy(bx + (k * offset)[:, None].astype(np.float32)), torch.from_numpy(sc),
                   nms_iou).numpy()  # descending score
        kk = k[keep]
        for j in np.unique(kk):
            sel = keep[kk == j][:top_per_image]
            out[j].append(np.column_stack([np.full(len(sel), image_index[a], np.float32), sc[sel], bx[sel]]))
    return [np.concatenate(o).astype(np.float32) if o else np.zeros((0, 6), np.float32) for o in out]


@dataclass
class DetectionResult:
    """One detection evaluation (PASCAL-DET analogue)."""

    ap: np.ndarray  # [C]
    map: float
    num_positives: np.ndarray
    detections: list[np.ndarray]  # per class [D_c, 6]: image, score, x1, y1, x2, y2
    class_names: tuple[str, ...]
    config: dict
    stats: dict


def _candidates(data: DetectionData, cfg: DetectionConfig, progress: Progress | None, train: bool):
    """Boxes (GT first, then proposals, per image), image index, GT-positive flag and GT label."""
    pb, pi = dataset_proposals(data, cfg.proposals, cfg.max_proposals, progress)
    if not train or cfg.proposals == "gt":
        flag = np.zeros(len(pb), bool) if not train else ~data.difficult
        lab = np.full(len(pb), -1, np.int64) if not train else data.labels.copy()
        order = np.argsort(pi, kind="stable")
        return pb[order], pi[order], flag[order], lab[order]
    boxes = np.concatenate([data.boxes, pb])
    index = np.concatenate([data.image_index, pi])
    flag = np.concatenate([~data.difficult, np.zeros(len(pb), bool)])
    lab = np.concatenate([data.labels, np.full(len(pb), -1, np.int64)])
    order = np.argsort(index, kind="stable")
    return boxes[order].astype(np.float32), index[order], flag[order], lab[order]


def _features_of(loaded, data, boxes, index, cfg, name, device, progress) -> Regions:
    crops = crop_set(data.images, index, boxes, loaded.spec.input_size, name)
    f = region_features(loaded, crops, cfg.layer, device=device, progress=progress)
    return region_rows(f, cfg.ablation, cfg.seed)


def _test_scores(x: Regions, det: DetectorWeights) -> np.ndarray:
    """Every region's class scores ``[P, C]``: over a streamed layer block by block."""
    if isinstance(x, StreamedRegions):
        x.scale = det.scale
    else:
        x = x * np.float32(det.scale)
    return _scores(x, np.arange(x.shape[0]), det.w, det.b).astype(np.float32)


def run_detection(loaded: LoadedModel, train: DetectionData, test: DetectionData,
                  cfg: DetectionConfig = DetectionConfig(), *, device: str = "auto",
                  progress: Progress | None = None) -> DetectionResult:
    """Train per-class detectors on ``train`` and evaluate them on ``test`` (VOC 2007 protocol).

    Reproduces: PASCAL-DET (R-CNN without bounding-box regression), Tables 1, 2, 4, 8.
    """
    if train.class_names != test.class_names:
        raise InputError("train and test detection sets have different classes")
    num_classes = len(train.class_names)
    t0 = time.perf_counter()
    tr = train.subset(cfg.max_train_images)
    tb, ti, tflag, tlab = _candidates(tr, cfg, progress, train=True)
    xtr = _features_of(loaded, tr, tb, ti, cfg, f"{tr.images.name}-det-{cfg.proposals}{cfg.max_proposals}-train",
                       device, progress)
    t_feat_train = time.perf_counter() - t0
    overlaps = max_overlap_per_class(tb, ti, tr, num_classes)
    if progress:
        progress(0, num_classes, "training per-class SVMs with hard-negative mining: class 1 of "
                                 f"{num_classes}")
    det = train_detectors(xtr, tflag, tlab, overlaps, num_classes, cfg, progress)
    t_train = time.perf_counter() - t0 - t_feat_train
    test = test.subset(cfg.max_test_images)
    qb, qi, _, _ = _candidates(test, cfg, progress, train=False)
    xte = _features_of(loaded, test, qb, qi, cfg, f"{test.images.name}-det-{cfg.proposals}{cfg.max_proposals}-test",
                       device, progress)
    scores = _test_scores(xte, det)
    dets = detect(scores, qb, qi, cfg.nms_iou, cfg.top_per_image)
    ev = analysis.evaluate_detections(dets, test.boxes, test.labels, test.difficult, test.image_index,
                                      use_07_metric=cfg.use_07_metric)
    stats = {"train_images": len(tr.images), "train_regions": int(len(tb)), "test_images": len(test.images),
             "test_regions": int(len(qb)), "feature_dim": int(xtr.shape[1]), "mining": det.mining,
             "seconds": {"train_features": t_feat_train, "svm": t_train, "total": time.perf_counter() - t0}}
    log.info("detection %s %s: mAP %.3f (%s)", loaded.spec.name, cfg.layer, ev.map, stats["seconds"])
    return DetectionResult(ev.ap, ev.map, ev.num_positives, dets, train.class_names, asdict(cfg), stats)


def image_detections(result: DetectionResult, image_index: int, per_class: int = 3,
                     min_score: float | None = None) -> list[dict]:
    """The top detections of one test image: ``{"class", "class_name", "score", "box"}``,
    by descending score, at most ``per_class`` per class (and score >= ``min_score``)."""
    rows = []
    for c, d in enumerate(result.detections):
        d = d[d[:, 0] == image_index]
        d = d[np.argsort(-d[:, 1], kind="stable")][:per_class]
        for r in d:
            if min_score is None or r[1] >= min_score:
                rows.append({"class": c, "class_name": result.class_names[c], "score": float(r[1]),
                             "box": tuple(float(v) for v in r[2:6])})
    return sorted(rows, key=lambda r: -r["score"])


__all__ = ["DetectionConfig", "DetectionData", "DetectionResult", "PROPOSAL_METHODS", "VOC_CLASSES",
           "sliding_windows", "selective_search", "image_proposals", "dataset_proposals", "crop_set",
           "region_features", "ablate", "region_rows", "StreamedRegions", "max_overlap_per_class",
           "train_class_svm", "train_detectors", "detect", "run_detection", "image_detections", "voc_detection", "concat_detection",
           "load_detection_data"]
