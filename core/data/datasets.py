"""Datasets as ``ImageSet``s: a list of RGB images with class labels.

An ``ImageSet`` is the unit that extraction and every analysis work on. Labels are
either single-label (``labels`` is ``[N]`` int64 in ``[0, C)``; e.g. DET-GT box crops,
ImageFolder, scenes) or multi-label (``labels`` is ``[N, C]`` bool; e.g. image-level
PASCAL-CLS). ``__getitem__`` returns ``(PIL RGB image, index)``; the model's transform
is applied by the extraction, not here.

Real-data loaders (below the base classes), all returning ``ImageSet``s:

* :func:`voc_classification` -- PASCAL-CLS: whole VOC images, multi-label ``[N, 20]``.
* :func:`voc_det_gt` -- PASCAL-DET-GT (Agrawal et al. 2014, Sec. 2): one R-CNN warped
  crop (context padding 16 at 227 px) per ground-truth box, single-label.
* :func:`image_folder` -- any torchvision ``ImageFolder`` tree (one folder per class).
* :func:`fashion_mnist` -- the IDX files of Debian's ``dataset-fashion-mnist`` package.
* :func:`sun397` -- SUN397 scenes (SUN-CLS) and :func:`sun397_partitions`, its official splits.
* :func:`load_dataset` -- one string spec -> ``ImageSet``, with a prefix registry
  (:data:`DATASETS`) for extra sources such as the demo scenes.

Nothing here downloads anything; a missing or incomplete dataset raises
:class:`~core.errors.DataMissingError` naming the missing part and how to get it.
"""
from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import struct
import subprocess
import threading
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from core import config
from core.hashing import stable_hash
from core.data.registry import Registry
from core.errors import DataMissingError, InputError
from core.data.imageio import decode_image


class ImageSet(torch.utils.data.Dataset):
    """Base class. Subclasses implement ``image(i)``."""

    name: str
    class_names: tuple[str, ...]
    labels: np.ndarray
    fingerprint: str
    #: fingerprints of the sets this one is made from (a subset, region crops), when it is derived: the
    #: cache's pruning keeps its features while those sets are live (``core.store.cache_usage``)
    derived_from: tuple[str, ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def multilabel(self) -> bool:
        return self.labels.ndim == 2

    def positives(self, c: int) -> np.ndarray:
        """Boolean ``[N]`` mask of the items that belong to class ``c``."""
        return self.labels[:, c].astype(bool) if self.multilabel else self.labels == c

    def label_matrix(self) -> np.ndarray:
        """``[N, C]`` bool membership matrix, for single- and multi-label sets alike."""
        if self.multilabel:
            return self.labels.astype(bool)
        return np.eye(self.num_classes, dtype=bool)[self.labels]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def image(self, i: int) -> Image.Image:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, i: int):
        return self.image(int(i)), int(i)

    def describe(self) -> dict:
        """Provenance of this set, stored in every manifest that uses it."""
        out = {"name": self.name, "fingerprint": self.fingerprint, "num_items": len(self),
               "num_classes": self.num_classes, "multilabel": self.multilabel,
               "class_names": list(self.class_names)}
        if self.derived_from:
            out["derived_from"] = list(self.derived_from)
        return out


class ArrayImageSet(ImageSet):
    """Images held in a uint8 ``[N, H, W, 3]`` array (possibly an ``np.load(mmap_mode='r')``)."""

    def __init__(self, name: str, images: np.ndarray, labels: np.ndarray,
                 class_names: Sequence[str], fingerprint: str | None = None):
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise InputError(f"{name}: images must be uint8 [N, H, W, 3], got {images.dtype} {images.shape}")
        if len(images) != len(labels):
            raise InputError(f"{name}: {len(images)} images but {len(labels)} labels")
        self.name = name
        self.images = images
        self.labels = np.asarray(labels)
        self.class_names = tuple(class_names)
        self.fingerprint = fingerprint or stable_hash(name, list(self.class_names), self.labels.tolist(),
                                                      int(np.asarray(images[: min(8, len(images))], dtype=np.int64).sum()))

    def image(self, i: int) -> Image.Image:
        return Image.fromarray(np.asarray(self.images[i]), mode="RGB")


logger = logging.getLogger(__name__)

PathLike = str | os.PathLike


# =========================================================================== file-backed sets
def _open_rgb(path: str) -> Image.Image:
    """Open an image file as a loaded RGB PIL image (as torchvision's loaders do: no EXIF rotation)."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"cannot read image {path}: {exc}. Replace or delete the damaged file.") from exc


_DECODED = threading.local()


def _open_rgb_once(path: str) -> Image.Image:
    """:func:`_open_rgb`, remembering this thread's last image: the boxes of one image follow each
    other in a box set, so each image is decoded once for all its boxes (the decoded image is only
    read from: PIL's ``transform`` makes a new image). A file changed since is decoded again."""
    try:
        st = os.stat(path)
        key = (path, st.st_mtime_ns, st.st_size)
    except OSError:
        key = None
    last = getattr(_DECODED, "last", None)
    if key is not None and last is not None and last[0] == key:
        return last[1]
    img = _open_rgb(path)
    _DECODED.last = (key, img) if key is not None else None
    return img


class FileImageSet(ImageSet):
    """Images read lazily from files, one file per item (paths kept as ``str``: cheap to pickle)."""

    def __init__(self, name: str, paths: Sequence[PathLike], labels: np.ndarray,
                 class_names: Sequence[str], fingerprint: str):
        if len(paths) != len(labels):
            raise InputError(f"{name}: {len(paths)} files but {len(labels)} labels")
        self.name = name
        self.paths = [str(p) for p in paths]
        self.labels = np.asarray(labels)
        self.class_names = tuple(class_names)
        self.fingerprint = fingerprint

    def image(self, i: int) -> Image.Image:
        return _open_rgb(self.paths[i])


# =========================================================================== PASCAL VOC
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
"""The 20 PASCAL VOC classes in the devkit's (alphabetical) order."""

VOC_SPLITS: tuple[str, ...] = ("train", "val", "trainval", "test")

RCNN_CROP_SIZE = 227
RCNN_CONTEXT_PAD = 16
RCNN_FILL: tuple[int, int, int] = (124, 116, 104)
"""Colour of warped-crop pixels that fall outside the image: the ImageNet mean RGB, i.e. 0
after the model's normalisation, as in R-CNN (which zeroes them after mean subtraction)."""

_VOC_TARS = "VOCtrainval_06-Nov-2007.tar (and VOCtest_06-Nov-2007.tar for the test split)"


@dataclass(frozen=True)
class VOCObject:
    """One annotated object. ``box`` is ``(x0, y0, x1, y1)``, 0-based and half-open
    (``(xmin - 1, ymin - 1, xmax, ymax)`` of the XML), so ``image.crop(box)`` is the box."""

    cls: int
    box: tuple[int, int, int, int]
    difficult: bool
    truncated: bool


@dataclass(frozen=True)
class VOCAnnotations:
    """Every annotation of one VOC split, parsed once (the cache the loaders share)."""

    voc_dir: Path
    year: str
    split: str
    image_ids: tuple[str, ...]
    objects: tuple[tuple[VOCObject, ...], ...]
    digest: str = field(repr=False)  # content hash: split list, XML bytes, JPEG sizes

    def image_path(self, image_id: str) -> Path:
        return self.voc_dir / "JPEGImages" / f"{image_id}.jpg"


def find_voc_dir(root: PathLike, year: str = "2007") -> Path:
    """Resolve the ``VOC<year>`` folder from ``root``.

    Accepted, in this order: the folder *containing* ``VOCdevkit`` (torchvision's ``root``),
    the ``VOCdevkit`` folder itself, or the ``VOC<year>`` folder itself.

    Raises
    ------
    DataMissingError
        If ``root`` does not exist or none of the three layouts is found.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataMissingError(f"PASCAL VOC folder {root} does not exist. Extract {_VOC_TARS} "
                               f"so that {root / 'VOCdevkit' / f'VOC{year}'} exists, or pass the right path.")
    for cand in (root / "VOCdevkit" / f"VOC{year}", root / f"VOC{year}"):
        if cand.is_dir():
            return cand
    if root.name == f"VOC{year}" or (root / "Annotations").is_dir() or (root / "JPEGImages").is_dir():
        return root
    raise DataMissingError(f"no VOC{year} folder under {root}: expected {root / 'VOCdevkit' / f'VOC{year}'} "
                           f"(or pass the VOCdevkit or VOC{year} folder itself). Extract {_VOC_TARS} there.")


def _check_voc_layout(voc_dir: Path, split: str) -> Path:
    """Check the folders a split needs; return its ``ImageSets/Main/<split>.txt``."""
    for sub in ("Annotations", "JPEGImages", "ImageSets", "ImageSets/Main"):
        if not (voc_dir / sub).is_dir():
            raise DataMissingError(f"{voc_dir / sub} is missing: the VOC folder {voc_dir} is incomplete. "
                                   f"Re-extract {_VOC_TARS} into the folder holding VOCdevkit.")
    split_file = voc_dir / "ImageSets" / "Main" / f"{split}.txt"
    if not split_file.is_file():
        have = sorted(p.stem for p in (voc_dir / "ImageSets" / "Main").glob("*.txt") if "_" not in p.stem)
        hint = " The test split ships in VOCtest_06-Nov-2007.tar." if split == "test" else ""
        raise DataMissingError(f"split list {split_file} is missing (splits present: {have or 'none'}).{hint}")
    return split_file


def _check_split(split: str, year: str) -> None:
    if split not in VOC_SPLITS:
        raise InputError(f"unknown VOC split {split!r}; use one of {', '.join(VOC_SPLITS)}")
    if split == "test" and year != "2007":
        raise InputError(f"VOC{year} has no public test annotations; only VOC2007 has a 'test' split")


def _xml_objects(xml_path: Path, raw: bytes) -> tuple[VOCObject, ...]:
    """Objects of one annotation file, parsed with ``VOCDetection.parse_voc_xml`` (same dict as
    ``VOCDetection(...)[i][1]``)."""
    from torchvision.datasets import VOCDetection  # here: importing torchvision costs ~2 s (torch._dynamo)

    try:
        ann = VOCDetection.parse_voc_xml(ET.fromstring(raw))["annotation"]
    except (ET.ParseError, KeyError, TypeError) as exc:
        raise InputError(f"malformed VOC annotation {xml_path}: {exc}. Re-extract it from {_VOC_TARS}.") from exc
    objects = []
    for k, obj in enumerate(ann.get("object", [])):
        try:
            name = obj["name"]
            box = obj["bndbox"]
            xmin, ymin, xmax, ymax = (int(round(float(box[key]))) for key in ("xmin", "ymin", "xmax", "ymax"))
            difficult, truncated = int(obj.get("difficult", 0) or 0), int(obj.get("truncated", 0) or 0)
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"malformed VOC annotation {xml_path}: object #{k} lacks a valid "
                             f"name/bndbox ({exc!r}). Re-extract it from {_VOC_TARS}.") from exc
        if name not in VOC_CLASSES:
            raise InputError(f"VOC annotation {xml_path}: object #{k} has unknown class {name!r}")
        if xmax < xmin or ymax < ymin:
            raise InputError(f"VOC annotation {xml_path}: object #{k} has an empty box {box}")
        objects.append(VOCObject(VOC_CLASSES.index(name), (xmin - 1, ymin - 1, xmax, ymax),
                                 bool(difficult), bool(truncated)))
    return tuple(objects)


def read_voc_annotations(root: PathLike, split: str = "trainval", year: str = "2007") -> VOCAnnotations:
    """Validate a VOC folder and parse every annotation of ``split`` once.

    The folder layout is torchvision's (``VOCDetection(root, year, image_set=split,
    download=False)`` opens the same tree); the XML is parsed with
    ``VOCDetection.parse_voc_xml``, but directly with ``xml.etree`` instead of through
    ``VOCDetection.__getitem__`` (which would decode every JPEG too).

    Raises
    ------
    DataMissingError
        A missing folder, split list, annotation or JPEG (named in the message).
    InputError
        A bad split/year, or a malformed annotation file (named in the message).
    """
    year = str(year)
    _check_split(split, year)
    voc_dir = find_voc_dir(root, year)
    split_file = _check_voc_layout(voc_dir, split)
    ids = tuple(line.split()[0] for line in split_file.read_text().splitlines() if line.strip())
    h = hashlib.sha256(split_file.read_bytes())
    objects = []
    for image_id in ids:
        xml_path = voc_dir / "Annotations" / f"{image_id}.xml"
        jpg = voc_dir / "JPEGImages" / f"{image_id}.jpg"
        try:
            raw, jpg_size = xml_path.read_bytes(), jpg.stat().st_size
        except FileNotFoundError as exc:
            raise DataMissingError(f"{exc.filename} is missing (listed in {split_file}). "
                                   f"Re-extract {_VOC_TARS}.") from exc
        h.update(hashlib.sha256(raw).digest() + str(jpg_size).encode())
        objects.append(_xml_objects(xml_path, raw))
    return VOCAnnotations(voc_dir, year, split, ids, tuple(objects), h.hexdigest())


class VOCImageSet(FileImageSet):
    """PASCAL-CLS: whole images, multi-label ``labels`` ``[N, 20]`` bool.

    Extra per-item metadata: ``image_ids`` ``[N]`` str and ``difficult_only`` ``[N, 20]``
    bool (the class occurs in the image, but only as difficult boxes: the devkit's
    "0" label, which VOC's classification AP ignores).
    """

    image_ids: np.ndarray
    difficult_only: np.ndarray


def voc_classification(root: PathLike, split: str = "trainval", year: str = "2007",
                       include_difficult: bool = False) -> VOCImageSet:
    """PASCAL VOC image classification ("PASCAL-CLS" of Agrawal et al. 2014, Sec. 2).

    Parameters
    ----------
    root : path
        Folder containing ``VOCdevkit`` (or the ``VOCdevkit`` / ``VOC<year>`` folder).
    split : {"trainval", "test", "train", "val"}
    year : str
        VOC year; only "2007" has a test split.
    include_difficult : bool
        If False (default) an image is positive for a class only if it has a non-difficult
        box of it (images with only difficult boxes are negatives; see ``difficult_only``).

    Returns
    -------
    VOCImageSet
        Images loaded lazily as RGB PIL images; ``labels`` ``[N, 20]`` bool.
    """
    ann = read_voc_annotations(root, split, year)
    n = len(ann.image_ids)
    labels = np.zeros((n, len(VOC_CLASSES)), bool)
    any_box = np.zeros_like(labels)
    for i, objs in enumerate(ann.objects):
        for o in objs:
            any_box[i, o.cls] = True
            labels[i, o.cls] |= include_difficult or not o.difficult
    fp = stable_hash("voc-cls", ann.year, split, include_difficult, ann.digest)
    out = VOCImageSet(f"voc{ann.year}-{split}-cls", [ann.image_path(i) for i in ann.image_ids],
                      labels, VOC_CLASSES, fp)
    out.image_ids = np.array(ann.image_ids, dtype=str)
    out.difficult_only = any_box & ~labels
    return out


def context_box(box: Sequence[float], crop_size: int = RCNN_CROP_SIZE,
                context_pad: int = RCNN_CONTEXT_PAD) -> tuple[float, float, float, float]:
    """Expand ``box`` (x0, y0, x1, y1) about its centre so that, once warped to
    ``crop_size`` x ``crop_size``, ``context_pad`` output pixels of context surround it.

    The factor is R-CNN's ``crop_size / (crop_size - 2 * context_pad)`` (227/195 by default).
    Unlike R-CNN's MATLAB code the result is not rounded to whole pixels, so the context is
    exactly ``context_pad`` output pixels on each side.
    """
    if not 0 <= 2 * context_pad < crop_size:
        raise InputError(f"context_pad={context_pad} must be >= 0 and < crop_size/2 = {crop_size / 2}")
    x0, y0, x1, y1 = (float(v) for v in box)
    inner = 2 * (crop_size - 2 * context_pad)  # half-size = size * crop_size / inner (exact for ints)
    cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * crop_size / inner, (y1 - y0) * crop_size / inner
    return cx - hw, cy - hh, cx + hw, cy + hh


def warp_box(img: Image.Image, box: Sequence[float], crop_size: int = RCNN_CROP_SIZE,
             context_pad: int = RCNN_CONTEXT_PAD, fill: tuple[int, int, int] = RCNN_FILL) -> Image.Image:
    """R-CNN's "warp" region crop: the :func:`context_box` of ``box``, stretched (aspect ratio
    not kept) to ``crop_size`` x ``crop_size`` with bilinear sampling and no anti-aliasing
    (as R-CNN's ``imresize(..., 'antialiasing', false)``); parts outside the image are ``fill``.
    """
    return img.transform((crop_size, crop_size), Image.Transform.EXTENT,
                         data=context_box(box, crop_size, context_pad),
                         resample=Image.Resampling.BILINEAR, fillcolor=tuple(fill))


class VOCBoxSet(FileImageSet):
    """PASCAL-DET-GT: one warped crop per ground-truth box, single-label ``labels`` ``[N]``.

    Per-item metadata: ``image_ids`` ``[N]`` str, ``boxes`` ``[N, 4]`` int (0-based half-open
    x0, y0, x1, y1 in the source image), ``difficult`` ``[N]`` bool, ``truncated`` ``[N]`` bool.
    """

    image_ids: np.ndarray
    boxes: np.ndarray
    difficult: np.ndarray
    truncated: np.ndarray
    crop_size: int = RCNN_CROP_SIZE
    context_pad: int = RCNN_CONTEXT_PAD
    fill: tuple[int, int, int] = RCNN_FILL

    def image(self, i: int) -> Image.Image:
        return warp_box(_open_rgb_once(self.paths[i]), self.boxes[i], self.crop_size, self.context_pad, self.fill)


def voc_det_gt(root: PathLike, split: str = "trainval", year: str = "2007", include_difficult: bool = False,
               context_pad: int = RCNN_CONTEXT_PAD, crop_size: int = RCNN_CROP_SIZE, *,
               fill: tuple[int, int, int] = RCNN_FILL) -> VOCBoxSet:
    """PASCAL-DET-GT (Agrawal et al. 2014, Sec. 2): the ground-truth boxes as items.

    Reproduces the box crops of R-CNN [7], whose code the paper uses: each box is expanded
    by :func:`context_box` (16 px of context at the 227 px input scale) and warped to
    ``crop_size`` x ``crop_size`` by :func:`warp_box`; the model transform then only
    normalises (its resize is a no-op at 227). Deviation: the expanded box keeps fractional
    coordinates (R-CNN rounds it to pixels).

    Parameters
    ----------
    root, split, year
        As :func:`voc_classification`.
    include_difficult : bool
        Keep boxes marked difficult (excluded by default, as in the paper's R-CNN setup).
    context_pad, crop_size : int
        Context in output pixels and output side length.
    fill : (r, g, b)
        Colour of crop pixels outside the image (default: ImageNet mean, see ``RCNN_FILL``).

    Returns
    -------
    VOCBoxSet
        Items in split order, then XML order; ``labels`` ``[N]`` int64 class of the box.
    """
    context_box((0, 0, 1, 1), crop_size, context_pad)  # validates the geometry
    ann = read_voc_annotations(root, split, year)
    rows = [(image_id, o) for image_id, objs in zip(ann.image_ids, ann.objects)
            for o in objs if include_difficult or not o.difficult]
    fp = stable_hash("voc-det-gt", ann.year, split, include_difficult, context_pad, crop_size, list(fill), ann.digest)
    out = VOCBoxSet(f"voc{ann.year}-{split}-det-gt", [ann.image_path(i) for i, _ in rows],
                    np.array([o.cls for _, o in rows], dtype=np.int64), VOC_CLASSES, fp)
    out.image_ids = np.array([i for i, _ in rows], dtype=str)
    out.boxes = np.array([o.box for _, o in rows], dtype=np.int64).reshape(-1, 4)
    out.difficult = np.array([o.difficult for _, o in rows], dtype=bool)
    out.truncated = np.array([o.truncated for _, o in rows], dtype=bool)
    out.crop_size, out.context_pad, out.fill = crop_size, context_pad, tuple(fill)
    return out


# =========================================================================== ImageFolder
class ImageFolderSet(FileImageSet):
    """An ``ImageFolder`` tree; images decoded by :func:`core.data.imageio.decode_image` (EXIF
    orientation applied, transparency over white); a damaged file raises ``InputError``."""

    def image(self, i: int) -> Image.Image:
        path = self.paths[i]
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read image {path}: {exc}") from exc
        return decode_image(data, name=path)


def image_folder(root: PathLike, split: str | None = None) -> ImageFolderSet:
    """Any torchvision ``ImageFolder`` tree: ``root[/split]/<class>/**/<image>``.

    Classes and files are found exactly as ``torchvision.datasets.ImageFolder`` finds them
    (sorted class folders; files with an image extension, ``IMG_EXTENSIONS``). Other files are
    skipped with a logged warning. Images are only decoded when used.

    Parameters
    ----------
    root : path
        The folder holding one sub-folder per class.
    split : str, optional
        A sub-folder of ``root`` to use instead (e.g. "train" for ``root/train/<class>/...``).

    Raises
    ------
    DataMissingError
        ``root`` (or ``root/split``) does not exist.
    InputError
        No class folder, or a class folder without any image file.
    """
    folder = Path(root).expanduser()
    if split:
        folder = folder / split
    if not folder.is_dir():
        have = sorted(p.name for p in folder.parent.iterdir() if p.is_dir()) if folder.parent.is_dir() else []
        also = f" (sub-folders of {folder.parent}: {have})" if split else ""
        raise DataMissingError(f"image folder {folder} does not exist{also}. Pass a folder holding "
                               "one sub-folder of images per class.")
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, has_file_allowed_extension, make_dataset

    try:
        classes, class_to_idx = find_classes(folder)
    except FileNotFoundError:
        raise InputError(f"{folder} has no class sub-folders: an image folder needs one sub-folder per "
                         "class (e.g. cat/1.jpg, dog/2.jpg).") from None
    skipped: list[str] = []

    def is_image(path: str) -> bool:
        ok = has_file_allowed_extension(path, IMG_EXTENSIONS)
        if not ok:
            skipped.append(path)
        return ok

    samples = make_dataset(folder, class_to_idx, is_valid_file=is_image, allow_empty=True)
    empty = sorted(set(classes) - {classes[c] for _, c in samples})
    if empty:
        raise InputError(f"{folder}: class folder(s) {empty} hold no image file "
                         f"(accepted extensions: {' '.join(IMG_EXTENSIONS)}). Add images or remove the folder(s).")
    if skipped:
        logger.warning("%s: skipped %d file(s) without an image extension, e.g. %s",
                       folder, len(skipped), ", ".join(skipped[:3]))
    stats = [(os.path.relpath(p, folder), c, os.stat(p).st_size, os.stat(p).st_mtime_ns) for p, c in samples]
    fp = stable_hash("imagefolder", classes, stats)
    name = f"imagefolder-{Path(root).expanduser().resolve().name}" + (f"-{split}" if split else "")
    return ImageFolderSet(name, [p for p, _ in samples], np.array([c for _, c in samples], dtype=np.int64),
                          classes, fp)


# =========================================================================== Fashion-MNIST
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's ``dataset-fashion-mnist`` package installs the four ``*-ubyte.gz`` files."""

FASHION_MNIST_ENV = "FILTERSCOPE_FASHION_MNIST"
"""Environment variable naming another folder with the IDX files (tests point it at a fixture)."""

FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
FASHION_MNIST_INSTALL = f"apt-get install -y {FASHION_MNIST_PACKAGE}"

FASHION_CLASSES: tuple[str, ...] = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
"""The 10 Fashion-MNIST labels, in label order 0..9."""

FASHION_SOURCE_CLASSES: tuple[str, ...] = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Sandal", "Bag")
FASHION_TARGET_CLASSES: tuple[str, ...] = ("Coat", "Shirt", "Sneaker", "Ankle boot")
"""A small-scale stand-in for the paper's ImageNet -> PASCAL transfer (Sec. 3-5): pre-train on
the 6 *source* classes, fine-tune on and analyse the 4 disjoint *target* classes. As PASCAL's
classes are new labels with visual relatives in ImageNet, each target class has a relative among
the sources (Coat~Pullover, Shirt~T-shirt/top, Sneaker/Ankle boot~Sandal) but must be told
apart from a look-alike in the target set (Coat vs Shirt, Sneaker vs Ankle boot): pre-trained
features transfer partially and fine-tuning has something to change. Use the "train" split for
(pre-)training and "test" for analysis."""

_FASHION_FILES = {"train": "train", "test": "t10k"}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.int16, 0x0C: np.int32, 0x0D: np.float32, 0x0E: np.float64}


def read_idx(path: PathLike) -> np.ndarray:
    """Read an IDX file (LeCun's MNIST format), gzip-compressed or not.

    Header: two zero bytes, a type byte (0x08 = uint8 ...), the number of dimensions, then
    each dimension as big-endian uint32; the data follow, big-endian.

    Raises
    ------
    InputError
        If the file is not IDX or is truncated (the message names the file).
    """
    path = Path(path)
    raw = path.read_bytes()
    try:
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as exc:
        raise InputError(f"{path}: damaged gzip file ({exc}); reinstall or re-download it") from exc
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _IDX_DTYPES:
        raise InputError(f"{path} is not an IDX file (header {raw[:4].hex()}); expected e.g. train-images-idx3-ubyte")
    ndim, dtype = raw[3], np.dtype(_IDX_DTYPES[raw[2]]).newbyteorder(">")
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", raw[4:header]) if len(raw) >= header else None
    if dims is None or len(raw) - header != int(np.prod(dims)) * dtype.itemsize:
        raise InputError(f"{path} is truncated or damaged: header says shape {dims}, "
                         f"file has {len(raw) - header} data bytes")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def fashion_mnist_root() -> Path:
    """The Fashion-MNIST folder: ``$FILTERSCOPE_FASHION_MNIST`` if set, else :data:`FASHION_MNIST_DIR`."""
    return config.fashion_mnist_dir(FASHION_MNIST_DIR)


def _fashion_file(root: Path, stem: str) -> Path:
    for cand in (root / stem, root / f"{stem}.gz"):
        if cand.is_file():
            return cand
    if root == FASHION_MNIST_DIR:
        todo = (f"install it with `apt-get install {FASHION_MNIST_PACKAGE}` (as root, Debian), or set "
                f"${FASHION_MNIST_ENV} (or pass root=) to a folder with the IDX files")
    else:
        todo = f"put the Fashion-MNIST IDX files there or pass another root (default: {FASHION_MNIST_DIR})"
    raise DataMissingError(f"Fashion-MNIST file {root / stem}[.gz] is missing: {todo}.")


def _fashion_classes(classes: Sequence[str | int] | str | None) -> list[int]:
    if classes is None:
        return list(range(len(FASHION_CLASSES)))
    if isinstance(classes, str):
        named = {"all": FASHION_CLASSES, "source": FASHION_SOURCE_CLASSES, "target": FASHION_TARGET_CLASSES}
        if classes not in named:
            raise InputError(f"unknown Fashion-MNIST class set {classes!r}; use one of {list(named)} or a list")
        classes = named[classes]
    out = []
    for c in classes:
        if isinstance(c, str) and c in FASHION_CLASSES:
            out.append(FASHION_CLASSES.index(c))
        elif isinstance(c, (int, np.integer)) and not isinstance(c, bool) and 0 <= c < len(FASHION_CLASSES):
            out.append(int(c))
        else:
            raise InputError(f"unknown Fashion-MNIST class {c!r}; use 0..9 or one of {list(FASHION_CLASSES)}")
    if not out or len(set(out)) != len(out):
        raise InputError(f"Fashion-MNIST classes must be a non-empty list without repeats, got {list(classes)}")
    return out


def _fashion_stems() -> list[str]:
    return [f"{stem}-{kind}" for stem in _FASHION_FILES.values()
            for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")]


def can_apt_install() -> bool:
    """True when this process may install Debian packages: root, on Debian, with ``apt-get``."""
    return (hasattr(os, "geteuid") and os.geteuid() == 0 and Path("/etc/debian_version").is_file()
            and shutil.which("apt-get") is not None)


def ensure_fashion_mnist(root: PathLike | None = None, *, install: bool = False,
                         say: Callable[[str], None] = logger.info,
                         run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> Path:
    """Check that the four Fashion-MNIST IDX files are there; optionally install Debian's package.

    Parameters
    ----------
    root : path, optional
        Folder to check (default :func:`fashion_mnist_root`).
    install : bool
        When files are missing from Debian's folder and this process is root on Debian
        (``apt-get`` present), run ``apt-get install -y dataset-fashion-mnist`` (after an
        ``apt-get update`` if the first try fails). Nothing else is ever downloaded.
    say : callable
        Receives a line for every command run (the CLI prints them).
    run : callable
        ``subprocess.run``-compatible runner (tests inject a fake one).

    Returns
    -------
    Path
        The folder holding the files.

    Raises
    ------
    DataMissingError
        Files still missing; the message names the exact command to run.
    """
    root = Path(root).expanduser() if root is not None else fashion_mnist_root()

    def missing() -> list[str]:
        return [s for s in _fashion_stems() if not ((root / s).is_file() or (root / f"{s}.gz").is_file())]

    if not missing():
        return root
    if install and root == FASHION_MNIST_DIR and can_apt_install():
        for cmd in ([FASHION_MNIST_INSTALL], ["apt-get update", FASHION_MNIST_INSTALL]):
            for line in cmd:
                say(f"Fashion-MNIST is missing from {root}: running `{line}`")
                done = run(line.split(), check=False)
                if done.returncode != 0:
                    say(f"`{line}` failed (exit status {done.returncode})")
                    break
            if not missing():
                return root
    lack = missing()
    raise DataMissingError(f"Fashion-MNIST file(s) {', '.join(lack)}[.gz] missing from {root}: "
                           + (f"run `{FASHION_MNIST_INSTALL}` as root (Debian's package puts them in "
                              f"{FASHION_MNIST_DIR})" if root == FASHION_MNIST_DIR else
                              "put the four IDX files there") + f", or set ${FASHION_MNIST_ENV} to a folder "
                           "holding them.")


def read_fashion_mnist(split: str = "train", root: PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The raw split: grey images uint8 ``[N, 28, 28]`` and labels int64 ``[N]`` in ``0..9``
    (:data:`FASHION_CLASSES` order), read from ``root`` (default :func:`fashion_mnist_root`).

    Raises
    ------
    InputError
        Unknown split, or files that do not match each other or hold labels beyond 9.
    DataMissingError
        A file is missing (the message says how to install it).
    """
    if split not in _FASHION_FILES:
        raise InputError(f"unknown Fashion-MNIST split {split!r}; use 'train' or 'test'")
    root = Path(root).expanduser() if root is not None else fashion_mnist_root()
    stem = _FASHION_FILES[split]
    images = read_idx(_fashion_file(root, f"{stem}-images-idx3-ubyte"))
    labels = read_idx(_fashion_file(root, f"{stem}-labels-idx1-ubyte"))
    if images.ndim != 3 or images.dtype != np.uint8 or labels.ndim != 1 or len(labels) != len(images):
        raise InputError(f"Fashion-MNIST files in {root} do not match: images {images.dtype} {images.shape}, "
                         f"labels {labels.dtype} {labels.shape}")
    if len(labels) and int(labels.max()) >= len(FASHION_CLASSES):
        raise InputError(f"Fashion-MNIST labels in {root} go up to {int(labels.max())}; expected 0..9")
    return images, labels.astype(np.int64)


def fashion_mnist(root: PathLike | None = None, split: str = "train", size: int = 64,
                  classes: Sequence[str | int] | str | None = None) -> ArrayImageSet:
    """Fashion-MNIST from its IDX files, as RGB images of ``size`` x ``size``.

    Parameters
    ----------
    root : path, optional
        Folder with ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``; default
        ``$FILTERSCOPE_FASHION_MNIST``, else :data:`FASHION_MNIST_DIR` (Debian's ``dataset-fashion-mnist``).
    split : {"train", "test"}
    size : int
        Output side; the 28 x 28 grey images are resized with PIL bilinear (none at 28) and
        the grey channel replicated to RGB (a zero-copy view).
    classes : list of names or labels, or "source" / "target" / "all", optional
        Keep only these classes; labels are re-numbered ``0..k-1`` in the given order.

    Returns
    -------
    ArrayImageSet
        In memory (``N * size**2`` bytes: 245 MB for the full train split at 64 px), so
        the extraction uses its batched array path.
    """
    if split not in _FASHION_FILES:
        raise InputError(f"unknown Fashion-MNIST split {split!r}; use 'train' or 'test'")
    if not isinstance(size, (int, np.integer)) or size < 1:
        raise InputError(f"size must be a positive integer, got {size!r}")
    images, labels = read_fashion_mnist(split, root)
    keep = _fashion_classes(classes)
    digest = hashlib.sha256(images.tobytes() + labels.astype(np.uint8).tobytes()).hexdigest()
    new_label = np.full(len(FASHION_CLASSES), -1, np.int64)
    new_label[keep] = np.arange(len(keep))
    mask = new_label[labels] >= 0
    images, labels = images[mask], new_label[labels[mask]]
    if size != images.shape[1] or size != images.shape[2]:
        images = np.stack([np.asarray(Image.fromarray(g).resize((size, size), Image.Resampling.BILINEAR))
                           for g in images]) if len(images) else np.zeros((0, size, size), np.uint8)
    names = [FASHION_CLASSES[c] for c in keep]
    suffix = "" if classes is None else "-" + (classes if isinstance(classes, str) else "custom")
    fp = stable_hash("fashion-mnist", split, int(size), names, digest)
    return ArrayImageSet(f"fashion-mnist-{split}{suffix}", np.broadcast_to(images[..., None], images.shape + (3,)),
                         labels, names, fingerprint=fp)


# =========================================================================== SUN397 (SUN-CLS)
class SUNImageSet(FileImageSet):
    """SUN397 scenes, single-label. ``rel_paths`` ``[N]`` str: each image as the official
    partition lists name it (``/a/abbey/sun_xxx.jpg``), to match ``Training_XX`` / ``Testing_XX``."""

    rel_paths: np.ndarray


def sun397(root: PathLike) -> SUNImageSet:
    """SUN397 (the paper's SUN-CLS) from a local copy, via ``torchvision.datasets.SUN397(download=False)``.

    ``root`` is the folder holding ``SUN397/`` (with ``ClassName.txt`` and ``a/abbey/sun_*.jpg``)
    or that folder itself. Images are listed as torchvision lists them, then sorted by path
    so the order is the same on every machine.

    Raises
    ------
    DataMissingError
        No ``SUN397`` folder or ``ClassName.txt`` (the message says what to extract where).
    """
    from torchvision.datasets import SUN397

    root = Path(root).expanduser()
    if root.name == "SUN397" and not (root / "SUN397").is_dir():
        root = root.parent
    data_dir = root / "SUN397"
    if not (data_dir / "ClassName.txt").is_file():
        raise DataMissingError(f"no SUN397 data at {data_dir} (ClassName.txt missing): extract SUN397.tar.gz "
                               f"into {root} so that {data_dir / 'ClassName.txt'} exists, or use an ImageFolder tree")
    try:
        tv = SUN397(str(root), download=False)
    except (KeyError, RuntimeError) as exc:
        raise InputError(f"{data_dir} does not match SUN397's layout ({exc!r}): images must lie in "
                         "<letter>/<class>/sun_*.jpg as listed in ClassName.txt") from exc
    pairs = sorted(zip((str(p) for p in tv._image_files), tv._labels))
    if not pairs:
        raise InputError(f"{data_dir} holds no sun_*.jpg image")
    rel = ["/" + str(Path(p).relative_to(data_dir)) for p, _ in pairs]
    stats = [(r, lab, os.stat(p).st_size) for r, (p, lab) in zip(rel, pairs)]
    out = SUNImageSet("sun397", [p for p, _ in pairs], np.array([lab for _, lab in pairs], np.int64),
                      tuple(tv.classes), stable_hash("sun397", list(tv.classes), stats))
    out.rel_paths = np.array(rel, dtype=str)
    return out


def sun397_partitions(root: PathLike, data: SUNImageSet) -> list[np.ndarray]:
    """SUN397's official partitions (``Partitions/Training_XX.txt`` / ``Testing_XX.txt`` beside or
    inside the ``SUN397`` folder), as ``[N]`` int8 arrays: 0 train, 2 test, -1 not in the
    partition. An empty list when the lists are absent (then use seeded splits)."""
    root = Path(root).expanduser()
    cands = [root / "Partitions", root / "SUN397" / "Partitions", root.parent / "Partitions"]
    folder = next((c for c in cands if (c / "Training_01.txt").is_file()), None)
    if folder is None:
        return []
    where = {r: i for i, r in enumerate(data.rel_paths)}
    parts = []
    for k in range(1, 11):
        tr, te = folder / f"Training_{k:02d}.txt", folder / f"Testing_{k:02d}.txt"
        if not (tr.is_file() and te.is_file()):
            break
        part = np.full(len(data), -1, np.int8)
        for value, f in ((0, tr), (2, te)):
            names = [ln.strip() for ln in f.read_text().splitlines() if ln.strip()]
            missing = [n for n in names if n not in where]
            if missing:
                raise DataMissingError(f"{f} lists {len(missing)} image(s) not found under the SUN397 folder, "
                                       f"e.g. {missing[0]}: re-extract SUN397.tar.gz")
            part[[where[n] for n in names]] = value
        parts.append(part)
    return parts


# =========================================================================== dispatch
DatasetFactory = Callable[..., ImageSet]

DATASETS: Registry[DatasetFactory] = Registry(
    "dataset prefix", "Examples: 'voc2007:/data/voc:test:det-gt', 'imagefolder:/data/imgs', 'fashion-mnist:test'.")
"""``prefix -> factory(rest_of_spec, **kw)``; :func:`load_dataset` dispatches on it."""


def _voc_spec(rest: str, **kw) -> ImageSet:
    parts = rest.split(":")
    view = parts.pop() if len(parts) > 1 and parts[-1] in ("det-gt", "cls") else "cls"
    split = kw.pop("split", "trainval")
    if len(parts) > 1 and parts[-1] in VOC_SPLITS:
        split = parts.pop()  # the spec wins over a split keyword
    root = ":".join(parts)
    if not root:
        raise InputError("VOC spec needs a folder: 'voc2007:<root>[:<split>][:det-gt]'")
    loader = voc_det_gt if view == "det-gt" else voc_classification
    return loader(root, split, year="2007", **kw)


def _fashion_spec(rest: str, **kw) -> ImageSet:
    split, _, classes = rest.partition(":")
    if classes:
        kw["classes"] = classes
    return fashion_mnist(split=split or "train", **kw)


def _looks_like_voc(path: Path) -> bool:
    return any((path / p).is_dir() for p in ("VOCdevkit/VOC2007", "VOC2007", "Annotations"))


def load_dataset(spec: str, **kw) -> ImageSet:
    """Build an ``ImageSet`` from a one-string description.

    ``spec`` is one of:

    * ``"voc2007:<root>[:<split>][:det-gt|cls]"`` (split default "trainval", view "cls"),
    * ``"imagefolder:<root>"``,
    * ``"fashion-mnist:<split>[:source|target|all]"``,
    * ``"<prefix>:<rest>"`` for any prefix registered in :data:`DATASETS`
      (e.g. ``"demo:target-test"``),
    * a bare directory: VOC if it holds ``VOCdevkit/VOC2007`` (or is one), else ImageFolder.

    ``kw`` go to the loader (e.g. ``include_difficult=True``, ``size=32``).
    """
    prefix, sep, rest = spec.partition(":")
    if sep and prefix in DATASETS:
        return DATASETS.get(prefix)(rest, **kw)
    path = Path(spec).expanduser()
    if path.is_dir():
        if _looks_like_voc(path):
            return voc_classification(path, **kw)
        return image_folder(path, **kw)
    raise InputError(f"unknown dataset {spec!r}: not a folder, and no known prefix "
                     f"(known: {', '.join(DATASETS.names())}). "
                     "Examples: 'voc2007:/data/voc:test:det-gt', 'imagefolder:/data/imgs', 'fashion-mnist:test'.")


DATASETS.register("voc2007", _voc_spec)
DATASETS.register("imagefolder", lambda rest, **kw: image_folder(rest, **kw))
DATASETS.register("fashion-mnist", _fashion_spec)
DATASETS.register("sun397", lambda rest, **kw: sun397(rest, **kw))
