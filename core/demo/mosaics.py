"""Fashion-MNIST mosaics: the ``fashion`` profile's images, composed from real 28 x 28 items.

The target task (PASCAL's role) holds 1-4 items per 64 x 64 image at random sides and
places, with VOC-style boxes and "difficult" flags; the source task (ImageNet's role)
holds one larger item per image. Deterministic for a seed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from core.data.datasets import FASHION_CLASSES
from core.demo import scenes
from core.errors import InputError

MOSAIC_VERSION = 1
"""Version of the Fashion-MNIST mosaic composer (part of the ``fashion`` profile's identity)."""


@dataclass(frozen=True)
class MosaicConfig:
    """How the ``fashion`` profile composes 64 x 64 images from 28 x 28 Fashion-MNIST items.

    Sides are in pixels at 64 px and scale with ``size``. An item is pasted where its
    (resized, bilinear) grey value is non-zero, over a plain grey background of a random
    level, lightly textured (smooth low-frequency noise) with probability ``texture_prob``;
    its faint edge pixels are blended (opacity ``value / edge``) rather than pasted.
    """

    #: target images hold 1..max_items items (uniform), each resized to a side in target_scale
    max_items: int = 4
    target_scale: tuple[int, int] = (16, 40)
    #: source images hold one larger item (ImageNet's role: one dominant object)
    source_scale: tuple[int, int] = (36, 64)
    #: a new item's box may cover at most this fraction of the smaller of it and any earlier box
    max_overlap: float = 0.35
    #: placement attempts per item before it is dropped
    tries: int = 12
    background: tuple[float, float] = (0.0, 110.0)
    texture_prob: float = 0.5
    texture: float = 18.0
    texture_cells: int = 5
    #: item pixels below this grey value are blended with what lies under them (opacity value/edge)
    edge: float = 48.0
    #: VOC-style "difficult": less than this fraction of the item's pixels stays visible
    difficult_visible: float = 0.5


def _tight_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Half-open ``(x0, y0, x1, y1)`` box of the True pixels of a 2-D mask (None if none)."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not len(rows):
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection of two boxes over the area of the smaller one."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    return iw * ih / min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))


def _mosaic_background(rng: np.random.Generator, size: int, cfg: MosaicConfig) -> np.ndarray:
    """Plain grey of a random level, lightly textured with probability ``cfg.texture_prob``."""
    bg = np.full((size, size), rng.uniform(*cfg.background), np.float32)
    if rng.random() < cfg.texture_prob:
        coarse = rng.normal(0.0, cfg.texture, (cfg.texture_cells, cfg.texture_cells)).astype(np.float32)
        bg += np.asarray(Image.fromarray(coarse, mode="F").resize((size, size), Image.Resampling.BILINEAR))
    return np.clip(np.rint(bg), 0, 255).astype(np.uint8)


def _paste(rng: np.random.Generator, canvas: np.ndarray, owner: np.ndarray, item: np.ndarray,
           scale: tuple[int, int], placed: list[tuple[int, int, int, int]], cfg: MosaicConfig, j: int):
    """Paste one grey item at a random side in ``scale`` and position, its box inside the canvas and
    overlapping no earlier box by more than ``cfg.max_overlap``. Returns ``(box, n_pixels)`` or None."""
    size = canvas.shape[0]
    for _ in range(cfg.tries):
        side = int(min(size, rng.integers(scale[0], scale[1] + 1)))
        patch = np.asarray(Image.fromarray(item).resize((side, side), Image.Resampling.BILINEAR))
        mask = patch > 0
        tb = _tight_box(mask)
        if tb is None:
            return None
        ox = int(rng.integers(-tb[0], size - tb[2] + 1))
        oy = int(rng.integers(-tb[1], size - tb[3] + 1))
        box = (ox + tb[0], oy + tb[1], ox + tb[2], oy + tb[3])
        if any(_overlap(box, b) > cfg.max_overlap for b in placed):
            continue
        # the patch rows/cols inside the canvas (all of the item's pixels are: its box is)
        x0, y0, x1, y1 = max(ox, 0), max(oy, 0), min(ox + side, size), min(oy + side, size)
        sub = mask[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
        value = patch[y0 - oy:y1 - oy, x0 - ox:x1 - ox][sub].astype(np.float32)
        under = canvas[y0:y1, x0:x1][sub].astype(np.float32)
        alpha = np.minimum(value / cfg.edge, 1.0)  # faint edge pixels blend in: no dark halo
        canvas[y0:y1, x0:x1][sub] = np.rint(under + alpha * (value - under)).astype(np.uint8)
        owner[y0:y1, x0:x1][sub] = j
        return box, int(mask.sum())
    return None


def fashion_mosaics(items: np.ndarray, labels: np.ndarray, n: int, seed: int, num_classes: int,
                    size: int = 64, config: MosaicConfig = MosaicConfig(), *,
                    source: bool = False) -> scenes.TargetScenes:
    """Compose ``n`` images from grey Fashion-MNIST ``items`` (uint8 ``[M, 28, 28]``, ``labels`` ``[M]``).

    The target task (PASCAL's role): each image holds 1..``max_items`` items drawn at random
    from the pool, resized to a random side in ``target_scale`` and pasted at random positions
    (an item that finds no place within ``max_overlap`` is dropped). With ``source=True`` (the
    ImageNet-like source task), image ``i`` holds exactly item ``i`` at a side in ``source_scale``.
    Boxes are each item's full extent (the tight box of its non-zero resized pixels, half-open,
    as the procedural scenes); ``difficult`` marks items with less than ``difficult_visible`` of
    their pixels left visible. Images are grey replicated to RGB. Image ``i`` depends only on
    ``(seed, i)`` and the pool, so the result is deterministic and a prefix of a larger ``n``.

    Returns
    -------
    scenes.TargetScenes
        With ``image_labels`` ``[n, num_classes]`` bool; for ``source=True`` use ``labels[:n]``.
    """
    cfg = config
    k = size / 64.0
    if not len(items) or (source and len(items) < n):
        raise InputError(f"Fashion-MNIST mosaics: {n} {'source' if source else 'target'} images asked from a pool "
                         f"of {len(items)} items; lower the profile's counts or use the full dataset")
    scale = tuple(max(2, round(v * k)) for v in (cfg.source_scale if source else cfg.target_scale))
    images = np.empty((n, size, size, 3), np.uint8)
    boxes, box_labels, difficult = [], [], []
    present = np.zeros((n, num_classes), bool)
    easy = np.zeros((n, num_classes), bool)
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        canvas = _mosaic_background(rng, size, cfg)
        owner = np.full((size, size), -1, np.int16)
        picks = [i] if source else rng.integers(0, len(items), 1 + int(rng.integers(cfg.max_items)))
        placed, labs, counts = [], [], []
        for idx in picks:
            got = _paste(rng, canvas, owner, items[idx], scale, placed, cfg, len(placed))
            if got is not None:
                placed.append(got[0]), labs.append(int(labels[idx])), counts.append(got[1])
        visible = np.bincount(owner[owner >= 0], minlength=len(placed))[:len(placed)] / np.maximum(counts, 1)
        images[i] = canvas[..., None]
        boxes.append(np.asarray(placed, np.float32).reshape(-1, 4))
        box_labels.append(np.asarray(labs, np.int64))
        difficult.append(np.asarray(visible < cfg.difficult_visible, bool).reshape(-1))
        present[i, box_labels[-1]] = True
        easy[i, box_labels[-1][~difficult[-1]]] = True
    return scenes.TargetScenes(images, boxes, box_labels, difficult, present, present & ~easy)


def fashion_pool(images: np.ndarray, labels: np.ndarray, names: tuple[str, ...],
                  seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The items of classes ``names`` in a seeded random order, labels renumbered ``0..len(names)-1``."""
    new = np.full(len(FASHION_CLASSES), -1, np.int64)
    new[[FASHION_CLASSES.index(c) for c in names]] = np.arange(len(names))
    idx = np.flatnonzero(new[labels] >= 0)
    idx = idx[np.random.default_rng(seed).permutation(len(idx))]
    return images[idx], new[labels[idx]]
