"""Procedural demo scenes: the stand-ins for ImageNet, PASCAL VOC and SUN.

Reproduces: the data roles of Agrawal, Girshick & Malik (ECCV 2014), Sec. 2.1-2.3.
A network is pre-trained on a large *source* task (ImageNet's role: many classes, one
dominant object per image), fine-tuned on a small *target* task (PASCAL's role: a few
classes, 1-4 boxed objects per image, image-level multi-labels; core.demo.build cuts the DET-GT box crops) and
evaluated on a *scene* task (SUN-CLS's role: classes defined by layout, not objects).

Deviations from the paper: nothing is downloaded; images are 64x64 procedural renders
instead of natural photographs, and there are 48 / 12 / 10 classes instead of
1000 / 20 / 397.

Design. Every object class is a *recipe* over a shared part vocabulary:
outline shape x fill texture x hue family x attached sub-part. Source and target recipes
are disjoint (every target recipe differs from every source recipe in >= 2 attributes,
like PASCAL's classes are not ImageNet's), but the target reuses only attribute values
that the source also uses, so low- and mid-level filters transfer while the conjunctions
must be re-learnt. Within each task no two recipes differ in a single attribute, yet
many pairs share two of the four, and in the target every attribute value is used by
exactly two classes: no single cue names a class. Clutter and distractor strokes/blobs
are drawn from the same vocabulary (shapes, textures, hues; never a sub-part), so clutter
is confusable with objects.

Determinism: item ``i`` of a task is a pure function of ``(seed, start + i, size,
config)`` (its generator is ``np.random.default_rng([seed, index, task tag])``); batches
made in any order, in any process, on the fly, agree byte for byte (tested). Across
different CPUs, BLAS and SIMD rounding in the last bit of a float can in rare cases move
a pixel by one grey level; labels do not depend on it except at exact coverage ties.
Rendering is vectorised numpy over small per-object patches on a channel-first canvas;
background clutter is stamped from a fixed bank of pre-rendered silhouettes.

Conventions: images are uint8 ``[N, H, W, 3]`` RGB. Boxes are float32 ``[k, 4]``
``(x1, y1, x2, y2)`` in pixel-edge coordinates (pixel ``(r, c)`` covers
``[c, c+1) x [r, r+1)``), the tight box of the object's *visible* pixels (VOC's rule),
hence always inside ``[0, size]``.
"""
from __future__ import annotations

import colorsys
import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Callable, NamedTuple

import numpy as np

from core.errors import InputError

try:  # the ufunc itself: np.clip adds several microseconds of dispatch per call
    from numpy._core.umath import clip as _clip
except ImportError:  # pragma: no cover - other numpy layouts
    _clip = np.clip
_ZERO, _ONE = np.float32(0.0), np.float32(1.0)

SCENES_VERSION = "1"  # bump whenever rendering changes: part of every cache key

# --------------------------------------------------------------------------- vocabulary
SHAPES = ("disc", "square", "triangle", "ring", "cross", "star", "diamond", "bar")
TEXTURES = ("solid", "hstripes", "vstripes", "checker", "dots", "gradient")
HUES = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "magenta")
HUE_DEGREES = (0.0, 28.0, 55.0, 120.0, 180.0, 225.0, 272.0, 318.0)
PARTS = ("eye", "knob", "handle", "ears", "stand", "band")
PART_DESCRIPTIONS = {
    "eye": "small contrasting disc at the centre",
    "knob": "small disc attached on top",
    "handle": "short bar attached on the right",
    "ears": "two small discs at the upper corners",
    "stand": "stem and foot below the body",
    "band": "contrasting horizontal band across the middle",
}

# Per shape, in the object's normalised frame (the body spans about [-1, 1]^2, v points
# down): top, bottom, right extents and the (u, v) anchor of the ears.
_ANCHORS = {
    0: (-1.0, 1.0, 1.0, 0.62, -0.78),     # disc
    1: (-0.85, 0.85, 0.85, 0.55, -0.85),  # square
    2: (-1.0, 0.7, 0.67, 0.45, -0.3),     # triangle
    3: (-1.0, 1.0, 1.0, 0.62, -0.78),     # ring
    4: (-1.0, 1.0, 1.0, 0.65, -0.32),     # cross
    5: (-1.0, 1.0, 0.6, 0.87, -0.5),      # star (hexagram)
    6: (-1.15, 1.15, 1.15, 0.5, -0.65),   # diamond
    7: (-0.45, 0.45, 1.0, 0.55, -0.37),   # bar (ellipse)
}


@dataclass(frozen=True)
class Recipe:
    """An object class: indices into SHAPES, TEXTURES, HUES, PARTS."""

    shape: int
    texture: int
    hue: int
    part: int

    @property
    def attributes(self) -> tuple[int, int, int, int]:
        return (self.shape, self.texture, self.hue, self.part)

    def describe(self) -> dict:
        return {"shape": SHAPES[self.shape], "texture": TEXTURES[self.texture],
                "hue": HUES[self.hue], "part": PARTS[self.part]}

    @property
    def auto_name(self) -> str:
        return f"{HUES[self.hue]}-{TEXTURES[self.texture]}-{SHAPES[self.shape]}-{PARTS[self.part]}"


# Found offline by a constrained search (pairwise Hamming distance >= 2, balanced use of
# every attribute value, every class has a distance-2 confuser) and frozen here.
_SOURCE_TABLE = (
    (0, 1, 4, 2), (0, 3, 5, 1), (0, 4, 0, 4), (0, 4, 1, 1), (0, 4, 6, 0), (0, 4, 7, 2),
    (1, 0, 1, 4), (1, 0, 4, 0), (1, 0, 5, 3), (1, 2, 7, 1), (1, 4, 4, 1), (1, 4, 7, 3),
    (2, 0, 7, 5), (2, 2, 3, 2), (2, 3, 6, 0), (2, 5, 1, 0), (2, 5, 2, 3), (2, 5, 5, 5),
    (3, 0, 4, 2), (3, 1, 5, 5), (3, 2, 3, 5), (3, 3, 0, 3), (3, 3, 1, 4), (3, 5, 0, 4),
    (4, 2, 2, 0), (4, 2, 3, 1), (4, 3, 2, 4), (4, 3, 6, 3), (4, 4, 3, 3), (4, 5, 0, 2),
    (5, 0, 2, 4), (5, 0, 7, 2), (5, 1, 3, 5), (5, 1, 4, 1), (5, 2, 5, 2), (5, 5, 6, 4),
    (6, 0, 0, 5), (6, 1, 4, 5), (6, 1, 6, 3), (6, 4, 1, 0), (6, 5, 1, 3), (6, 5, 6, 2),
    (7, 1, 3, 0), (7, 1, 7, 1), (7, 2, 0, 0), (7, 2, 2, 5), (7, 3, 2, 1), (7, 3, 5, 4),
)
# Each target attribute value is used by exactly two target classes; 7 target pairs share
# two attributes; every target class shares two attributes with some source class.
_TARGET_TABLE = (
    ("fox", (1, 1, 0, 3)),         # red h-striped square with ears
    ("owl", (3, 1, 7, 3)),         # magenta h-striped ring with ears
    ("starfish", (5, 5, 4, 5)),    # cyan gradient star with band
    ("submarine", (7, 0, 5, 1)),   # blue solid bar with knob
    ("signpost", (6, 2, 1, 4)),    # orange v-striped diamond on a stand
    ("medkit", (4, 3, 7, 1)),      # magenta checkered cross with knob
    ("flashlight", (7, 4, 5, 2)),  # blue dotted bar with handle
    ("compass", (4, 3, 0, 0)),     # red checkered cross with eye
    ("bullseye", (3, 2, 1, 0)),    # orange v-striped ring with eye
    ("rattle", (5, 4, 3, 2)),      # green dotted star with handle
    ("kite", (6, 0, 4, 4)),        # cyan solid diamond on a stand
    ("parcel", (1, 5, 3, 5)),      # green gradient square with band
)

SOURCE_RECIPES: tuple[Recipe, ...] = tuple(Recipe(*a) for a in _SOURCE_TABLE)
TARGET_RECIPES: tuple[Recipe, ...] = tuple(Recipe(*a) for _, a in _TARGET_TABLE)
SOURCE_CLASS_NAMES: tuple[str, ...] = tuple(r.auto_name for r in SOURCE_RECIPES)
TARGET_CLASS_NAMES: tuple[str, ...] = tuple(n for n, _ in _TARGET_TABLE)
SCENE_CLASS_NAMES: tuple[str, ...] = (
    "sky-over-ground", "indoor-grid", "forest-stripes", "water-waves", "night-sky",
    "desert-dunes", "city-skyline", "field-rows", "road", "snowfield")
SOURCE_CLASSES = len(SOURCE_RECIPES)
TARGET_CLASSES = len(TARGET_RECIPES)
SCENE_CLASSES = len(SCENE_CLASS_NAMES)


# --------------------------------------------------------------------------- config
@dataclass(frozen=True)
class SceneConfig:
    """Difficulty knobs shared by all three tasks; pixel sizes refer to 64x64 images and
    scale with ``size``.

    Attributes
    ----------
    clutter : mean number of background distractors is ``6 * clutter``.
    occlusion : probability that a foreground occluder is dropped onto each object.
    min_scale, max_scale : target object body size (px, log-uniform).
    source_min_scale : source objects are drawn in ``[source_min_scale, max_scale]``.
    jitter : scales hue / saturation / brightness / aspect jitter (0 = canonical colours).
    rotation : maximum in-plane rotation of objects in degrees (stripes stay tellable).
    truncation : fraction of the object size that may leave the image.
    noise : std of additive pixel noise (0-255 scale).
    max_objects : target images hold 1..max_objects objects.
    distractor_prob : chance that a source image also holds a small object of another class.
    difficult_visible : objects with a smaller visible fraction are ``difficult``.
    difficult_size : objects whose visible box has a side below this (px) are ``difficult``.
    """

    clutter: float = 1.0
    occlusion: float = 0.5
    min_scale: float = 12.0
    max_scale: float = 40.0
    source_min_scale: float = 20.0
    jitter: float = 1.0
    rotation: float = 25.0
    truncation: float = 0.45
    noise: float = 6.0
    max_objects: int = 4
    distractor_prob: float = 0.3
    difficult_visible: float = 0.5
    difficult_size: float = 8.0

    def __post_init__(self) -> None:
        checks = [("clutter", self.clutter >= 0), ("occlusion", 0 <= self.occlusion <= 1),
                  ("min_scale", 4 <= self.min_scale <= self.max_scale),
                  ("max_scale", self.max_scale <= 60), ("jitter", self.jitter >= 0),
                  ("source_min_scale", self.min_scale <= self.source_min_scale <= self.max_scale),
                  ("rotation", 0 <= self.rotation <= 180), ("truncation", 0 <= self.truncation <= 0.5),
                  ("noise", self.noise >= 0), ("max_objects", 1 <= self.max_objects <= 8),
                  ("distractor_prob", 0 <= self.distractor_prob <= 1),
                  ("difficult_visible", 0 <= self.difficult_visible <= 1),
                  ("difficult_size", self.difficult_size >= 0)]
        bad = [name for name, ok in checks if not ok]
        if bad:
            raise InputError(f"SceneConfig: invalid value for {', '.join(bad)} ({self}); "
                             "see the SceneConfig docstring for the allowed ranges")


DEFAULT_CONFIG = SceneConfig()


# --------------------------------------------------------------------------- results
@dataclass
class TargetScenes:
    """Target-task images with VOC-style annotations.

    ``image_labels[i, c]`` is True when image ``i`` holds any object of class ``c``;
    ``image_difficult[i, c]`` is True when all those objects are ``difficult`` (VOC
    marks such image-class pairs 0 and leaves them out of the evaluation).
    """

    images: np.ndarray
    boxes: list[np.ndarray]
    box_labels: list[np.ndarray]
    difficult: list[np.ndarray]
    image_labels: np.ndarray
    image_difficult: np.ndarray
    class_names: tuple[str, ...] = TARGET_CLASS_NAMES

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_boxes(self) -> int:
        return int(sum(len(b) for b in self.boxes))


# --------------------------------------------------------------------------- randomness
_TASK_TAGS = {"source": 1, "target": 2, "scene": 3}


class _Draws:
    """Uniform numbers drawn in blocks from one ``np.random.Generator``."""

    __slots__ = ("rng", "buf", "i")

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.buf = rng.random(192).tolist()
        self.i = 0

    def u(self) -> float:
        if self.i >= len(self.buf):
            self.buf = self.rng.random(192).tolist()
            self.i = 0
        self.i += 1
        return self.buf[self.i - 1]

    def uni(self, a: float, b: float) -> float:
        return a + (b - a) * self.u()

    def int(self, n: int) -> int:
        return min(int(self.u() * n), n - 1)

    def logu(self, a: float, b: float) -> float:
        return a * math.exp(math.log(b / a) * self.u())


def _item_draws(seed: int, index: int, task: str) -> _Draws:
    return _Draws(np.random.default_rng([seed, index, _TASK_TAGS[task]]))


# --------------------------------------------------------------------------- rendering
class _Obj(NamedTuple):
    shape: int
    texture: int
    part: int          # -1: no part (clutter)
    cx: float
    cy: float
    hx: float          # half extent of the body along u, px
    hy: float          # half extent along v, px
    theta: float       # radians
    c1: np.ndarray     # (3, 1, 1) float32 colours
    c2: np.ndarray
    cp: np.ndarray
    period: float      # texture period in normalised units
    phase: float
    cut: tuple | None  # (a, b, c): keep a*u + b*v < c (fragments)


def _soft(sdf: np.ndarray, px: float) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] from a signed distance (>0 inside) in normalised
    units, ``px`` pixels per unit: a ramp about one pixel wide across the outline."""
    a = sdf * px
    a += 0.5
    return _clip(a, _ZERO, _ONE, out=a)


def _shape_sdf(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Approximate signed distance (>0 inside) of a body outline in normalised units."""
    if shape == 0:
        return (1.0 - u * u - v * v) * 0.5
    if shape == 1:
        return 0.85 - np.maximum(np.abs(u), np.abs(v))
    if shape == 2:
        return np.minimum(0.7 - v, (v + 1.0 - 1.5 * np.abs(u)) * 0.55)
    if shape == 3:
        r2 = u * u + v * v
        return np.minimum((1.0 - r2) * 0.5, (r2 - 0.36) * 0.8)
    au, av = np.abs(u), np.abs(v)
    if shape == 4:
        return np.maximum(np.minimum(0.32 - au, 1.0 - av), np.minimum(0.32 - av, 1.0 - au))
    if shape == 5:
        w = 1.732 * au
        return np.maximum(np.minimum(0.5 - v, (v + 1.0 - w) * 0.5),
                          np.minimum(v + 0.5, (1.0 - v - w) * 0.5))
    if shape == 6:
        return (1.15 - au - av) * 0.707
    return (1.0 - u * u - v * v * 4.94) * 0.225  # bar: ellipse with axes 1 x 0.45


def _part_sdf(part: int, shape: int, u: np.ndarray, v: np.ndarray,
              body: np.ndarray) -> np.ndarray:
    """Signed distance of a class-specific sub-part, placed relative to the body."""
    top, bottom, right, eu, ev = _ANCHORS[shape]
    if part == 0:
        return (0.1 - u * u - v * v) * 1.6
    if part == 1:
        dv = v - (top - 0.2)
        return (0.09 - u * u - dv * dv) * 1.6
    if part == 2:
        return np.minimum(np.minimum(u - (right - 0.1), right + 0.55 - u), 0.14 - np.abs(v))
    if part == 3:
        du, dv = np.abs(u) - eu, v - ev
        return (0.08 - du * du - dv * dv) * 1.8
    if part == 4:
        au = np.abs(u)
        stem = np.minimum(np.minimum(0.12 - au, v - (bottom - 0.1)), bottom + 0.5 - v)
        foot = np.minimum(np.minimum(0.5 - au, v - (bottom + 0.38)), bottom + 0.56 - v)
        return np.maximum(stem, foot)
    return np.minimum(0.17 - np.abs(v), body)  # band


def _saw(x: np.ndarray, inv_period: float, phase: float) -> np.ndarray:
    """Sawtooth in [-0.5, 0.5) of ``x * inv_period + phase`` (floor, not the slow %)."""
    t = x * inv_period
    t += phase
    t -= np.floor(t)
    t -= 0.5
    return t


def _tri(x: np.ndarray, inv_period: float, phase: float) -> np.ndarray:
    """Triangle wave in [-0.25, 0.25]; positive on alternate half periods."""
    t = _saw(x, inv_period, phase)
    np.abs(t, out=t)
    t -= 0.25
    return t


def _texture(texture: int, u: np.ndarray, v: np.ndarray, period: float, phase: float,
             px: float) -> np.ndarray | None:
    """Fraction of the secondary colour in [0, 1]; None for a solid fill.

    ``period`` is in normalised units, ``px`` pixels per normalised unit.
    """
    if texture == 0:
        return None
    sharp = max(period * px, 1.0)  # pixels per period: edge softness of about 1 px
    ip = 1.0 / period
    if texture == 1:
        return _soft(_tri(v, ip, phase), sharp)
    if texture == 2:
        return _soft(_tri(u, ip, phase), sharp)
    if texture == 3:
        t = _tri(u, ip, phase)
        t *= _tri(v, ip, phase * 0.7)
        return _soft(t, sharp * 4.0)
    if texture == 4:
        fu, fv = _saw(u, ip, phase), _saw(v, ip, phase * 0.6)
        fu *= fu
        fv *= fv
        d = 0.09 - fu
        d -= fv
        return _soft(d, sharp * 1.67)
    t = v * 0.55
    t += 0.5
    return _clip(t, _ZERO, _ONE, out=t)


class _Frame(NamedTuple):
    y0: int   # in-image slice of the frame
    y1: int
    x0: int
    x1: int
    iy: slice  # the same region inside the full (unclipped) frame arrays
    ix: slice


@lru_cache(maxsize=1024)
def _grid(h: int, w: int) -> np.ndarray:
    """Homogeneous pixel-centre coordinates of an ``h x w`` patch: ``(3, h*w)`` rows x, y, 1."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx.ravel() + 0.5, yy.ravel() + 0.5, np.ones(h * w)]).astype(np.float32)


_BODY_EXTENT = {  # (umin, umax, vmin, vmax) of each body outline, normalised units
    0: (-1.0, 1.0, -1.0, 1.0), 1: (-0.85, 0.85, -0.85, 0.85), 2: (-1.14, 1.14, -1.0, 0.7),
    3: (-1.0, 1.0, -1.0, 1.0), 4: (-1.0, 1.0, -1.0, 1.0), 5: (-0.87, 0.87, -1.0, 1.0),
    6: (-1.15, 1.15, -1.15, 1.15), 7: (-1.0, 1.0, -0.45, 0.45)}


@lru_cache(maxsize=None)
def _extent(shape: int, part: int) -> tuple[float, float, float, float]:
    """Normalised bounding box of a body with its sub-part (``part`` -1: none)."""
    umin, umax, vmin, vmax = _BODY_EXTENT[shape]
    top, bottom, right, eu, ev = _ANCHORS[shape]
    extra = {-1: None, 0: None, 5: None,
             1: (-0.3, 0.3, top - 0.5, top),
             2: (right - 0.1, right + 0.55, -0.14, 0.14),
             3: (-eu - 0.29, eu + 0.29, ev - 0.29, ev + 0.29),
             4: (-0.5, 0.5, bottom, bottom + 0.56)}[part]
    if extra is not None:
        umin, umax = min(umin, extra[0]), max(umax, extra[1])
        vmin, vmax = min(vmin, extra[2]), max(vmax, extra[3])
    return umin, umax, vmin, vmax


def _frame(obj: _Obj, size: int):
    """Unclipped normalised coordinates (u, v) around an object, and its in-image window.

    ``u`` runs along the object's rotated x axis in units of ``hx``, ``v`` along its
    y axis (pointing down) in units of ``hy``; both come from one small matrix product.
    The frame is the pixel box of the rotated extent plus a 1 px margin.
    """
    c, s = math.cos(obj.theta), math.sin(obj.theta)
    umin, umax, vmin, vmax = _extent(obj.shape, obj.part)
    # half-widths of the rotated extent box around its centre
    uc, vc = 0.5 * (umin + umax) * obj.hx, 0.5 * (vmin + vmax) * obj.hy
    uh, vh = 0.5 * (umax - umin) * obj.hx, 0.5 * (vmax - vmin) * obj.hy
    ex, ey = abs(c) * uh + abs(s) * vh + 1.0, abs(s) * uh + abs(c) * vh + 1.0
    mx, my = obj.cx + c * uc - s * vc, obj.cy + s * uc + c * vc
    fx0, fx1 = int(math.floor(mx - ex)), int(math.ceil(mx + ex))
    fy0, fy1 = int(math.floor(my - ey)), int(math.ceil(my + ey))
    x0, x1, y0, y1 = max(fx0, 0), min(fx1, size), max(fy0, 0), min(fy1, size)
    if x0 >= x1 or y0 >= y1:
        return None
    ox, oy = fx0 - obj.cx, fy0 - obj.cy
    m = np.array([[c / obj.hx, s / obj.hx, (ox * c + oy * s) / obj.hx],
                  [-s / obj.hy, c / obj.hy, (oy * c - ox * s) / obj.hy]], np.float32)
    h, w = fy1 - fy0, fx1 - fx0
    uv = np.dot(m, _grid(h, w))
    fr = _Frame(y0, y1, x0, x1, slice(y0 - fy0, y1 - fy0), slice(x0 - fx0, x1 - fx0))
    return uv[0].reshape(h, w), uv[1].reshape(h, w), fr


def _masks(obj: _Obj, size: int):
    """Coverage of an item on its unclipped frame: (frame, alpha, tex, part alpha) or None
    when the item is entirely outside a ``size`` image."""
    got = _frame(obj, size)
    if got is None:
        return None
    u, v, fr = got
    px = min(obj.hx, obj.hy)
    body = _shape_sdf(obj.shape, u, v)
    if obj.cut is not None:
        a, b, c = obj.cut
        body = np.minimum(body, c - a * u - b * v)
    pa = _soft(_part_sdf(obj.part, obj.shape, u, v, body), px) if obj.part >= 0 else None
    tex = _texture(obj.texture, u, v, obj.period, obj.phase, px)
    alpha = _soft(body, px)
    if pa is not None:
        np.maximum(alpha, pa, out=alpha)
    return fr, alpha, tex, pa


def _draw(canvas: np.ndarray, obj: _Obj, owner: np.ndarray | None = None,
          owner_id: int = -1) -> tuple[int, _Frame] | None:
    """Composite one object (or occluder) onto a channel-first float canvas.

    Returns (number of covered pixels of the unclipped silhouette, frame) or None when
    the item is entirely outside the image. Pixels with coverage > 0.5 are written into
    ``owner`` with ``owner_id`` (-1 marks clutter that hides what is below).
    """
    got = _masks(obj, canvas.shape[1])
    if got is None:
        return None
    fr, alpha, tex, pa = got
    full = int(np.count_nonzero(alpha > 0.5)) if owner is not None else 0
    iy, ix = fr.iy, fr.ix
    al = alpha[iy, ix]
    if tex is None:
        colour = obj.c1
    else:
        colour = tex[iy, ix] * (obj.c2 - obj.c1)
        colour += obj.c1
    if pa is not None:
        colour = colour + pa[iy, ix] * np.subtract(obj.cp, colour)
    sub = canvas[:, fr.y0:fr.y1, fr.x0:fr.x1]
    diff = np.subtract(colour, sub)
    diff *= al
    sub += diff
    if owner is not None:
        owner[fr.y0:fr.y1, fr.x0:fr.x1][al > 0.5] = owner_id
    return full, fr


def _rgb(h_deg: float, s: float, v: float) -> np.ndarray:
    r, g, b = colorsys.hsv_to_rgb((h_deg / 360.0) % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return np.array([r * 255.0, g * 255.0, b * 255.0], np.float32).reshape(3, 1, 1)


def _colours(d: _Draws, hue_deg: float, cfg: SceneConfig) -> tuple[np.ndarray, ...]:
    """Primary, secondary (same hue, far in brightness) and part colours of an instance."""
    j = cfg.jitter
    h = hue_deg + d.uni(-10.0, 10.0) * j
    s = 0.85 + d.uni(-0.3, 0.15) * j
    val = 0.8 + d.uni(-0.3, 0.2) * j
    c1 = _rgb(h, s, val)
    if d.u() < 0.5:
        c2 = c1 * d.uni(0.25, 0.45)
    else:
        c2 = c1 * 0.35 + 255.0 * d.uni(0.5, 0.65)
    grey = d.uni(10.0, 50.0) if val > 0.7 else d.uni(200.0, 250.0)
    cp = np.full((3, 1, 1), grey, np.float32) + _rgb(h + 180.0, 0.5, 0.12) * d.u()
    return c1, c2, cp


def _object(d: _Draws, recipe: Recipe, cx: float, cy: float, scale: float,
            cfg: SceneConfig) -> _Obj:
    """A class instance with per-instance jitter (aspect, rotation, colours, texture)."""
    aspect = math.exp(d.uni(-0.22, 0.22) * cfg.jitter)
    half = 0.5 * scale
    theta = math.radians(d.uni(-cfg.rotation, cfg.rotation))
    c1, c2, cp = _colours(d, HUE_DEGREES[recipe.hue], cfg)
    period = max(d.uni(0.45, 0.65), 4.0 / half)
    return _Obj(recipe.shape, recipe.texture, recipe.part, cx, cy, half * aspect, half / aspect,
                theta, c1, c2, cp, period, d.uni(0.0, 2.0), None)


def _clutter_colours(d: _Draws) -> tuple[np.ndarray, np.ndarray]:
    """Any hue, saturation and brightness; the secondary colour is a dark or light shade."""
    r, g, b = colorsys.hsv_to_rgb(d.u(), d.uni(0.2, 1.0), d.uni(0.15, 1.0))
    if d.u() < 0.5:
        f, add = d.uni(0.25, 0.5), 0.0
    else:
        f, add = 0.35, d.uni(0.45, 0.65)
    c = np.array([r, g, b, r * f + add, g * f + add, b * f + add], np.float32) * np.float32(255.0)
    c = c.reshape(2, 3, 1, 1)
    return c[0], c[1]


def _clutter_item(d: _Draws, k: float, cx: float, cy: float, near: float | None = None,
                  colours: tuple | None = None) -> _Obj:
    """A distractor from the same vocabulary (never with a sub-part): a textured body
    fragment, a stroke or a blob. ``near``: size of the object it should occlude."""
    c1, c2 = colours if colours is not None else (None, None)
    kind = d.u()
    theta = d.uni(0.0, 2.0 * math.pi)
    if kind < 0.45:  # fragment of a body, textured, possibly cut by a half-plane
        half = k * d.logu(3.0, 11.0) if near is None else d.uni(0.25, 0.5) * near
        aspect = math.exp(d.uni(-0.4, 0.4))
        cut = None
        if d.u() < 0.5:
            ang = d.uni(0.0, 2.0 * math.pi)
            cut = (math.cos(ang), math.sin(ang), d.uni(-0.3, 0.6))
        return _Obj(d.int(8), d.int(6), -1, cx, cy, half * aspect, half / aspect, theta,
                    c1, c2, c1, max(d.uni(0.45, 0.7), 4.0 / half), d.uni(0.0, 2.0), cut)
    if kind < 0.8:  # stroke: a long thin ellipse
        length = k * d.uni(5.0, 16.0) if near is None else d.uni(0.5, 0.9) * near
        width = k * d.uni(0.6, 1.8)
        return _Obj(0, 0, -1, cx, cy, length, width, theta, c1, c1, c1, 1.0, 0.0, None)
    half = k * d.uni(1.5, 4.5) if near is None else d.uni(0.15, 0.3) * near  # blob
    return _Obj(0, 0 if d.u() < 0.7 else 4, -1, cx, cy, half, half * d.uni(0.6, 1.0), theta,
                c1, c2, c1, 0.6, d.uni(0.0, 2.0), None)


def _occluder(d: _Draws, k: float, cx: float, cy: float, scale: float) -> _Obj:
    """A clutter item dropped onto an object of size ``scale`` centred at (cx, cy)."""
    ox, oy = cx + d.uni(-0.6, 0.6) * scale, cy + d.uni(-0.6, 0.6) * scale
    return _clutter_item(d, k, ox, oy, near=scale, colours=_clutter_colours(d))


_BANK_SIZE = 512


@lru_cache(maxsize=4)
def _clutter_bank(size: int) -> tuple[tuple[np.ndarray, np.ndarray | None], ...]:
    """Pre-rendered clutter silhouettes ``(alpha, tex)`` for ``size`` images.

    Background clutter is stamped from this fixed bank (with flips, colours and
    positions drawn per image) because rendering each item afresh costs ~4x more.
    """
    d = _Draws(np.random.default_rng([20140906, size]))
    k = size / 64.0
    bank = []
    while len(bank) < _BANK_SIZE:
        obj = _clutter_item(d, k, 1000.0 + d.u(), 1000.0 + d.u())
        fr, alpha, tex, _ = _masks(obj, 10 ** 6)
        keep = alpha.max(1) > 0.0, alpha.max(0) > 0.0  # trim empty rows / columns
        if not keep[0].any():
            continue
        ry, rx = np.flatnonzero(keep[0]), np.flatnonzero(keep[1])
        win = (slice(ry[0], ry[-1] + 1), slice(rx[0], rx[-1] + 1))
        bank.append((np.ascontiguousarray(alpha[win]),
                     None if tex is None else np.ascontiguousarray(tex[win])))
    return tuple(bank)


def _stamp(canvas: np.ndarray, d: _Draws, bank) -> None:
    """Blend one bank sprite, flipped and coloured at random, at a random position."""
    alpha, tex = bank[d.int(len(bank))]
    flip = d.int(4)
    if flip & 1:
        alpha, tex = alpha[:, ::-1], None if tex is None else tex[:, ::-1]
    if flip & 2:
        alpha, tex = alpha[::-1], None if tex is None else tex[::-1]
    size = canvas.shape[1]
    h, w = alpha.shape
    x0, y0 = int(d.uni(-0.5 * w, size - 0.5 * w)), int(d.uni(-0.5 * h, size - 0.5 * h))
    sx, sy = max(0, -x0), max(0, -y0)
    ex, ey = min(w, size - x0), min(h, size - y0)
    if sx >= ex or sy >= ey:
        return
    c1, c2 = _clutter_colours(d)
    if tex is None:
        colour = c1
    else:
        colour = tex[sy:ey, sx:ex] * (c2 - c1)
        colour += c1
    sub = canvas[:, y0 + sy:y0 + ey, x0 + sx:x0 + ex]
    diff = np.subtract(colour, sub)
    diff *= alpha[sy:ey, sx:ex]
    sub += diff


# --------------------------------------------------------------------------- backgrounds
@lru_cache(maxsize=32)
def _interp(size: int, grids: tuple[int, ...]) -> np.ndarray:
    """Smooth (Gaussian RBF) interpolation weights from g-node grids to ``size`` pixels,
    the grids side by side: ``(size, sum(grids))``."""
    blocks = []
    for g in grids:
        pos = (np.arange(size) + 0.5) / size * g - 0.5
        w = np.exp(-((pos[:, None] - np.arange(g)[None, :]) / 0.75) ** 2)
        blocks.append(w / w.sum(1, keepdims=True))
    return np.concatenate(blocks, 1).astype(np.float32)


def _smooth_field(rng: np.random.Generator, size: int, grids: tuple[int, ...],
                  amps: tuple[float, ...]) -> np.ndarray:
    """Sum of low-frequency colour-noise octaves, channel-first ``(3, size, size)``."""
    n = sum(grids)
    coef = np.zeros((3, n, n), np.float32)
    o = 0
    for g, a in zip(grids, amps):
        coef[:, o:o + g, o:o + g] = rng.standard_normal((3, g, g)).astype(np.float32) * a
        o += g
    k = _interp(size, grids)
    return (k @ coef) @ k.T


@lru_cache(maxsize=8)
def _noise_tile(size: int) -> np.ndarray:
    """Fixed pixel-noise tile (legacy RandomState: its stream is frozen across numpy)."""
    n = size + 96
    return np.random.RandomState(20140906).standard_normal((3, n, n)).astype(np.float32)


@lru_cache(maxsize=8)
def _coords(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [0, 1]: Y ``(size, 1)`` and X ``(1, size)``."""
    t = ((np.arange(size) + 0.5) / size).astype(np.float32)
    return t[:, None], t[None, :]


_OVERLAY_BANK_SIZE = 64


@lru_cache(maxsize=4)
def _overlay_bank(size: int) -> tuple[np.ndarray, ...]:
    """Large-scale vocabulary textures (stripes, checks, dots, gradients) in [-0.5, 0.5]."""
    d = _Draws(np.random.default_rng([20140907, size]))
    y, x = _coords(size)
    bank = []
    for _ in range(_OVERLAY_BANK_SIZE):
        ang = d.uni(0.0, math.pi)
        u = np.broadcast_to(x * math.cos(ang) + y * math.sin(ang), (size, size)) * 8.0
        v = np.broadcast_to(y * math.cos(ang) - x * math.sin(ang), (size, size)) * 8.0
        tex = _texture(d.int(5) + 1, u, v, d.uni(0.6, 1.6), d.uni(0.0, 2.0), size / 8.0)
        bank.append((tex - 0.5).astype(np.float32))
    return tuple(bank)


def _clutter_background(d: _Draws, size: int, cfg: SceneConfig) -> np.ndarray:
    """Textured, cluttered background shared by the source and target tasks."""
    canvas = _smooth_field(d.rng, size, (4, 9), (32.0, 14.0 * min(cfg.clutter, 2.0)))
    canvas += _rgb(d.uni(0.0, 360.0), d.uni(0.05, 0.6), d.uni(0.25, 0.85))
    if d.u() < 0.4:  # a faint large-scale texture from the vocabulary
        field = _overlay_bank(size)[d.int(_OVERLAY_BANK_SIZE)]
        canvas += field * _rgb(d.uni(0, 360), d.uni(0, 1), d.uni(0.08, 0.25))
    bank = _clutter_bank(size)
    for _ in range(int(cfg.clutter * d.uni(3.0, 9.0) + 0.5)):
        _stamp(canvas, d, bank)
    return canvas


@lru_cache(maxsize=8)
def _scaled_noise(size: int, noise: float) -> np.ndarray:
    return _noise_tile(size) * np.float32(noise)


def _finish(canvas: np.ndarray, d: _Draws, cfg: SceneConfig, out: np.ndarray) -> None:
    """Add pixel noise, clip and write a channel-last uint8 image into ``out``."""
    size = canvas.shape[1]
    if cfg.noise > 0:
        oy, ox = d.int(96), d.int(96)
        canvas += _scaled_noise(size, cfg.noise)[:, oy:oy + size, ox:ox + size]
    _clip(canvas, np.float32(0.0), np.float32(255.0), out=canvas)
    flat = out.reshape(-1, 3)  # per channel: a transposing copy is 3x slower
    for c in range(3):
        flat[:, c] = canvas[c].ravel()


# --------------------------------------------------------------------------- source task
def _check_request(n: int, seed: int, size: int, start: int) -> None:
    for name, value, low in (("n", n, 0), ("seed", seed, 0), ("size", size, 16), ("start", start, 0)):
        if not isinstance(value, (int, np.integer)) or value < low:
            raise InputError(f"{name} must be an integer >= {low}, got {value!r}")
    if size > 512:
        raise InputError(f"size must be at most 512 px, got {size}")


def _render_source(seed: int, index: int, size: int, cfg: SceneConfig,
                   out: np.ndarray) -> int:
    d = _item_draws(seed, index, "source")
    label = d.int(SOURCE_CLASSES)
    canvas = _clutter_background(d, size, cfg)
    k = size / 64.0
    scale = k * d.logu(cfg.source_min_scale, cfg.max_scale)
    slack = 0.5 - cfg.truncation * 0.5
    cx = d.uni(slack * scale, size - slack * scale)
    cy = d.uni(slack * scale, size - slack * scale)
    if d.u() < cfg.distractor_prob:
        other = (label + 1 + d.int(SOURCE_CLASSES - 1)) % SOURCE_CLASSES
        s2 = scale * d.uni(0.3, 0.55)
        _draw(canvas, _object(d, SOURCE_RECIPES[other], d.uni(0, size), d.uni(0, size), s2, cfg))
    obj = _object(d, SOURCE_RECIPES[label], cx, cy, scale, cfg)
    _draw(canvas, obj)
    if d.u() < cfg.occlusion:
        _draw(canvas, _occluder(d, k, cx, cy, scale))
    _finish(canvas, d, cfg, out)
    return label


def generate_source(n: int, seed: int, size: int = 64, start: int = 0, *,
                    config: SceneConfig = DEFAULT_CONFIG) -> tuple[np.ndarray, np.ndarray]:
    """Source task (ImageNet's role): one dominant object per image, single label.

    Parameters
    ----------
    n, seed : number of images and the dataset seed.
    size : image side in pixels.
    start : index of the first item; item ``i`` depends only on ``(seed, start + i)``.
    config : difficulty knobs.

    Returns
    -------
    images : uint8 ``[n, size, size, 3]``.
    labels : int64 ``[n]`` in ``[0, SOURCE_CLASSES)``.
    """
    _check_request(n, seed, size, start)
    images = np.empty((n, size, size, 3), np.uint8)
    labels = np.empty(n, np.int64)
    for i in range(n):
        labels[i] = _render_source(seed, start + i, size, config, images[i])
    return images, labels


# --------------------------------------------------------------------------- target task
def _place(d: _Draws, scale: float, size: int, cfg: SceneConfig,
           placed: list[tuple[float, float, float]]) -> tuple[float, float]:
    """Object centre, avoiding heavy overlap with those already placed (a few tries)."""
    slack = 0.5 - cfg.truncation
    for _ in range(4):
        cx = d.uni(slack * scale, size - slack * scale)
        cy = d.uni(slack * scale, size - slack * scale)
        if all(abs(cx - x) + abs(cy - y) > 0.55 * (scale + s) for x, y, s in placed):
            break
    return cx, cy


def _tight_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(x1, y1, x2, y2)`` pixel-edge box of the True pixels of a 2-D mask."""
    rows, cols = mask.any(1), mask.any(0)
    if not rows.any():
        return None
    y1, x1 = int(rows.argmax()), int(cols.argmax())
    y2 = len(rows) - int(rows[::-1].argmax())
    x2 = len(cols) - int(cols[::-1].argmax())
    return x1, y1, x2, y2


def render_target_item(seed: int, index: int, size: int = 64, *,
                       config: SceneConfig = DEFAULT_CONFIG) -> dict:
    """One target image with annotations and its instance map.

    Returns a dict with ``image`` (uint8 ``[size, size, 3]``), ``boxes`` (float32
    ``[k, 4]``), ``labels`` (int64 ``[k]``), ``difficult`` (bool ``[k]``),
    ``visible`` (float32 ``[k]``, visible / full silhouette area) and ``owner`` (int8
    ``[size, size]``: annotation index of the object that owns each pixel, -1 elsewhere).
    """
    cfg = config
    d = _item_draws(seed, index, "target")
    canvas = _clutter_background(d, size, cfg)
    k = size / 64.0
    n_obj = 1 + min(int(d.u() ** 1.4 * cfg.max_objects), cfg.max_objects - 1)
    scales = sorted((k * d.logu(cfg.min_scale, cfg.max_scale) for _ in range(n_obj)), reverse=True)
    owner = np.full((size, size), -1, np.int8)
    objs, fulls, placed = [], [], []
    for j, scale in enumerate(scales):
        label = d.int(TARGET_CLASSES)
        cx, cy = _place(d, scale, size, cfg, placed)
        placed.append((cx, cy, scale))
        drawn = _draw(canvas, _object(d, TARGET_RECIPES[label], cx, cy, scale, cfg), owner, j)
        objs.append((label, drawn))
        if d.u() < cfg.occlusion:
            _draw(canvas, _occluder(d, k, cx, cy, scale), owner, -1)
    ann = _annotate(owner, objs, cfg, size)
    image = np.empty((size, size, 3), np.uint8)
    _finish(canvas, d, cfg, image)
    ann["image"] = image
    return ann


def _annotate(owner: np.ndarray, objs: list, cfg: SceneConfig, size: int) -> dict:
    """Boxes of the visible pixels; drop nearly hidden objects; mark VOC-style difficult.

    ``owner`` is relabelled in place from drawing order to annotation index.
    """
    k = size / 64.0
    rows = []
    for j, (label, drawn) in enumerate(objs):
        if drawn is None:
            continue
        full, fr = drawn
        vis_mask = owner[fr.y0:fr.y1, fr.x0:fr.x1] == j
        vis = int(np.count_nonzero(vis_mask))
        box = _tight_box(vis_mask)
        if box is None:
            continue
        x1, y1, x2, y2 = box
        frac = vis / max(full, 1)
        rows.append((j, label, frac, vis, (x1 + fr.x0, y1 + fr.y0, x2 + fr.x0, y2 + fr.y0)))
    keep = [r for r in rows if r[2] >= 0.12 and r[3] >= 6 * k * k]
    if not keep and rows:
        keep = [max(rows, key=lambda r: r[3])]
    if [r[0] for r in keep] != list(range(len(objs))):  # relabel unless identity
        lut = np.full(len(objs) + 1, -1, np.int8)  # the last entry serves owner == -1
        for a, r in enumerate(keep):
            lut[r[0]] = a
        owner[...] = lut[owner]
    boxes = np.array([r[4] for r in keep], np.float32).reshape(-1, 4)
    sides = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    visible = np.array([r[2] for r in keep], np.float32)
    difficult = (visible < cfg.difficult_visible) | (sides < cfg.difficult_size * k)
    return {"boxes": boxes, "labels": np.array([r[1] for r in keep], np.int64),
            "difficult": difficult, "visible": visible, "owner": owner}


def generate_target(n: int, seed: int, size: int = 64, start: int = 0, *,
                    config: SceneConfig = DEFAULT_CONFIG) -> TargetScenes:
    """Target task (PASCAL's role): 1-``max_objects`` boxed objects per image.

    Parameters are those of :func:`generate_source`. Returns a :class:`TargetScenes`
    with per-image boxes, box labels, VOC-style ``difficult`` flags and the image-level
    multi-labels derived from them.
    """
    _check_request(n, seed, size, start)
    images = np.empty((n, size, size, 3), np.uint8)
    boxes, labels, difficult = [], [], []
    for i in range(n):
        item = render_target_item(seed, start + i, size, config=config)
        images[i] = item["image"]
        boxes.append(item["boxes"])
        labels.append(item["labels"])
        difficult.append(item["difficult"])
    return _target_scenes(images, boxes, labels, difficult)


def _target_scenes(images, boxes, labels, difficult) -> TargetScenes:
    n = len(images)
    present = np.zeros((n, TARGET_CLASSES), bool)
    easy = np.zeros((n, TARGET_CLASSES), bool)
    for i in range(n):
        present[i, labels[i]] = True
        easy[i, labels[i][~difficult[i]]] = True
    return TargetScenes(images, boxes, labels, difficult, present, present & ~easy)


# --------------------------------------------------------------------------- scene task
def _blend(canvas: np.ndarray, mask: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """``canvas + mask * (colour - canvas)``; ``mask`` broadcasts over channels."""
    return canvas + mask * (colour - canvas)


def _vgrad(top: np.ndarray, bottom: np.ndarray, t: np.ndarray) -> np.ndarray:
    return top + (bottom - top) * t


def _sky(d: _Draws, y: np.ndarray, night: bool = False) -> np.ndarray:
    if night:
        return _vgrad(_rgb(d.uni(215, 250), d.uni(0.5, 0.9), d.uni(0.03, 0.15)),
                      _rgb(d.uni(200, 240), d.uni(0.4, 0.8), d.uni(0.15, 0.35)), y)
    return _vgrad(_rgb(d.uni(195, 225), d.uni(0.35, 0.75), d.uni(0.7, 1.0)),
                  _rgb(d.uni(180, 220), d.uni(0.05, 0.3), d.uni(0.85, 1.0)), y)


def _scene_sky_ground(d, size, y, x):
    hz = d.uni(0.3, 0.6)
    line = hz + (x - 0.5) * d.uni(-0.25, 0.25)
    ground = _rgb(d.uni(75, 135) if d.u() < 0.6 else d.uni(20, 45), d.uni(0.4, 0.8), d.uni(0.35, 0.7))
    canvas = _blend(_sky(d, y / hz), _soft(y - line, size), ground * (1.15 - 0.4 * y))
    return canvas, (0.05, 0.95, hz + 0.1, 0.95)


def _scene_indoor(d, size, y, x):
    wall = _rgb(d.uni(0, 360), d.uni(0.05, 0.4), d.uni(0.55, 0.9))
    p = d.uni(5.0, 11.0) / size
    lw = d.uni(0.8, 1.6) / size
    lines = ((((x + d.u() * p) % p) < lw) | (((y + d.u() * p) % p) < lw)).astype(np.float32)
    canvas = wall * (1.0 - np.float32(d.uni(0.2, 0.45)) * lines)
    yf = d.uni(0.6, 0.8)
    floor = _rgb(d.uni(15, 45), d.uni(0.3, 0.7), d.uni(0.25, 0.6))
    planks = (((y - yf) * size * d.uni(0.25, 0.45)) % 1.0 < 0.15).astype(np.float32) * np.float32(0.25)
    canvas = _blend(canvas, _soft(np.broadcast_to(y - yf, (size, size)), size), floor * (1.0 - planks))
    return canvas, (0.05, 0.95, 0.3, 0.95)


def _scene_forest(d, size, y, x):
    canvas = _rgb(d.uni(70, 150), d.uni(0.35, 0.75), d.uni(0.25, 0.6)) * (0.7 + 0.5 * y)
    trunks = np.zeros_like(x)
    for _ in range(4 + d.int(6)):
        xc, w = d.u(), d.uni(1.0, 4.0) / size
        np.maximum(trunks, _soft(w - np.abs(x - xc), size), out=trunks)
    canvas = _blend(canvas, trunks, _rgb(d.uni(15, 40), d.uni(0.4, 0.8), d.uni(0.12, 0.35)))
    return canvas, (0.05, 0.95, 0.4, 0.95)


def _scene_water(d, size, y, x):
    canvas = _vgrad(_rgb(d.uni(170, 200), d.uni(0.3, 0.6), d.uni(0.7, 0.95)),
                    _rgb(d.uni(195, 235), d.uni(0.6, 0.95), d.uni(0.2, 0.45)), y)
    f, a, g, ph = d.uni(5.0, 10.0), d.uni(0.01, 0.05), d.uni(1.0, 3.0), d.uni(0, 6.3)
    wave = np.sin(2 * math.pi * (y * f + a * np.sin(2 * math.pi * g * x + ph)))
    canvas = canvas + np.clip((wave - 0.75) * 4.0, 0.0, 1.0) * d.uni(40.0, 90.0)
    return canvas, (0.05, 0.95, 0.25, 0.8)


def _scene_night(d, size, y, x):
    canvas = _sky(d, y, night=True) + np.zeros((1, size, size), np.float32)
    n = 15 + d.int(30)
    ys, xs = d.rng.integers(0, size, n), d.rng.integers(0, size, n)
    canvas[:, ys, xs] = _rgb(d.uni(40, 70), d.uni(0.0, 0.4), d.uni(0.8, 1.0))[:, :, 0]
    if d.u() < 0.5:
        moon = _Obj(0, 0, -1, d.uni(0, size), d.uni(0, size * 0.4), d.uni(3, 7) * size / 64,
                    d.uni(3, 7) * size / 64, 0.0, _rgb(50, 0.2, 0.95), _rgb(50, 0.2, 0.95),
                    _rgb(50, 0.2, 0.95), 1.0, 0.0, None)
        _draw(canvas, moon)
    hill = d.uni(0.75, 0.9) + 0.04 * np.sin(2 * math.pi * (x * d.uni(1, 3) + d.u()))
    canvas = _blend(canvas, _soft(y - hill, size), _rgb(d.uni(0, 360), 0.3, d.uni(0.02, 0.12)))
    return canvas, (0.05, 0.95, 0.5, 0.95)


def _scene_desert(d, size, y, x):
    top = d.uni(0.15, 0.35)
    canvas = _blend(_sky(d, y / top), _soft(y - top, size), _rgb(d.uni(30, 50), d.uni(0.35, 0.7), d.uni(0.7, 0.95)))
    level = top
    for _ in range(2 + d.int(2)):
        level += d.uni(0.12, 0.25)
        line = level + d.uni(0.02, 0.06) * np.sin(2 * math.pi * (x * d.uni(0.7, 2.0) + d.u()))
        canvas = _blend(canvas, _soft(y - line, size) * d.uni(0.2, 0.5),
                        _rgb(d.uni(20, 45), d.uni(0.4, 0.8), d.uni(0.35, 0.7)))
    return canvas, (0.05, 0.95, top + 0.1, 0.95)


@lru_cache(maxsize=4)
def _windows(size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] * (64.0 / size)
    return (((xx % 4.0) < 1.6) & ((yy % 5.0) < 2.0)).astype(np.float32)


def _scene_city(d, size, y, x):
    night = d.u() < 0.5
    sky = _sky(d, y, night=night)
    top = np.full(size, 2.0, np.float32)       # skyline height per column (2: a gap)
    wall = np.zeros((3, 1, size), np.float32)  # building colour per column
    edge = 0
    while edge < size:
        w = max(int(d.uni(0.08, 0.22) * size), 2)
        top[edge:edge + w] = d.uni(0.15, 0.6)
        wall[:, 0, edge:edge + w] = _rgb(d.uni(0, 60), d.uni(0.0, 0.3),
                                         d.uni(0.1, 0.35) if night else d.uni(0.3, 0.65))[:, :, 0]
        edge += w + int(d.uni(-0.03, 0.05) * size)
    lit = _rgb(d.uni(40, 60), 0.7, 0.95) if night else _rgb(200, 0.3, 0.3)
    facade = _blend(wall, _windows(size) * np.float32(d.uni(0.5, 1.0)), lit)
    canvas = _blend(sky, _soft(y - top[None, :], size)[None], facade)
    return canvas, (0.05, 0.95, 0.7, 0.95)


def _scene_field(d, size, y, x):
    hz = d.uni(0.2, 0.45)
    rows = np.sin(2 * math.pi * d.uni(2.0, 5.0) * (x - 0.5 + d.uni(-0.2, 0.2)) / (y - hz + 0.08))
    crop = _blend(_rgb(d.uni(70, 130), d.uni(0.5, 0.9), d.uni(0.3, 0.6)), np.clip(rows * 2 + 0.5, 0, 1),
                  _rgb(d.uni(40, 70), d.uni(0.5, 0.9), d.uni(0.55, 0.9)))
    canvas = _blend(_sky(d, y / hz), _soft(y - hz, size), crop)
    return canvas, (0.05, 0.95, hz + 0.1, 0.95)


def _scene_road(d, size, y, x):
    hz = d.uni(0.25, 0.45)
    canvas = _blend(_sky(d, y / hz), _soft(y - hz, size), _rgb(d.uni(70, 130), d.uni(0.4, 0.8), d.uni(0.3, 0.6)))
    t = np.clip((y - hz) / (1.0 - hz), 0.0, 1.0)
    centre = 0.5 + d.uni(-0.25, 0.25) * (1.0 - t)
    half = 0.03 + d.uni(0.3, 0.5) * t
    road = _soft(np.minimum(half - np.abs(x - centre), y - hz), size)
    canvas = _blend(canvas, road, _rgb(d.uni(0, 360), d.uni(0.0, 0.12), d.uni(0.25, 0.5)))
    dash = (np.sin(2 * math.pi * d.uni(2.0, 4.0) / (t + 0.15)) > 0) * _soft(0.012 + 0.02 * t - np.abs(x - centre), size)
    canvas = _blend(canvas, dash * (y > hz + 0.05), _rgb(d.uni(40, 60), d.uni(0.0, 0.8), 0.95))
    return canvas, (0.3, 0.7, hz + 0.15, 0.95)


def _scene_snow(d, size, y, x):
    canvas = _rgb(d.uni(180, 230), d.uni(0.0, 0.15), d.uni(0.8, 1.0)) + np.zeros((1, size, size), np.float32)
    rocks = _smooth_field(d.rng, size, (7,), (1.0,))[0]  # dark patches where the field peaks
    rocks -= d.uni(0.7, 1.1)
    canvas = _blend(canvas, _soft(rocks, 12.0), _rgb(d.uni(0, 60), d.uni(0.0, 0.25), d.uni(0.15, 0.5)))
    return canvas, (0.05, 0.95, 0.1, 0.95)


_SCENE_RENDERERS: tuple[Callable, ...] = (
    _scene_sky_ground, _scene_indoor, _scene_forest, _scene_water, _scene_night,
    _scene_desert, _scene_city, _scene_field, _scene_road, _scene_snow)


def _render_scene(seed: int, index: int, size: int, cfg: SceneConfig, out: np.ndarray) -> int:
    d = _item_draws(seed, index, "scene")
    label = d.int(SCENE_CLASSES)
    y, x = _coords(size)
    canvas, (zx0, zx1, zy0, zy1) = _SCENE_RENDERERS[label](d, size, y, x)
    canvas = _smooth_field(d.rng, size, (6,), (12.0,)) + canvas
    k = size / 64.0
    bank = _clutter_bank(size)
    for _ in range(int(cfg.clutter * d.uni(0.0, 4.0) + 0.5)):
        _stamp(canvas, d, bank)
    for _ in range(d.int(4)):
        recipe = Recipe(d.int(len(SHAPES)), d.int(len(TEXTURES)), d.int(len(HUES)), d.int(len(PARTS)))
        cx, cy = size * d.uni(zx0, zx1), size * d.uni(zy0, zy1)
        scale = k * d.logu(cfg.min_scale * 0.75, cfg.max_scale * 0.6) * (0.5 + cy / size)
        _draw(canvas, _object(d, recipe, cx, cy, scale, cfg))
    _finish(canvas, d, cfg, out)
    return label


def generate_scene_task(n: int, seed: int, size: int = 64, start: int = 0, *,
                        config: SceneConfig = DEFAULT_CONFIG) -> tuple[np.ndarray, np.ndarray]:
    """Scene task (SUN-CLS's role): classes defined by background layout.

    Objects with random attribute combinations are placed in class-specific zones (on
    the ground, on the road, ...). Parameters and returns as :func:`generate_source`,
    with labels in ``[0, SCENE_CLASSES)``.
    """
    _check_request(n, seed, size, start)
    images = np.empty((n, size, size, 3), np.uint8)
    labels = np.empty(n, np.int64)
    for i in range(n):
        labels[i] = _render_scene(seed, start + i, size, config, images[i])
    return images, labels


SCENE_DESCRIPTIONS = {
    "sky-over-ground": "sky gradient above a green or brown ground, tilted horizon; objects on the ground",
    "indoor-grid": "tiled wall (grid lines) above a planked floor; objects on wall and floor",
    "forest-stripes": "green undergrowth crossed by dark vertical trunks; objects low",
    "water-waves": "blue vertical gradient with bright wavy streaks; objects float mid-height",
    "night-sky": "dark sky with stars, sometimes a moon, dark hills; objects low",
    "desert-dunes": "pale sky over sand with 2-3 shaded dune ridges",
    "city-skyline": "day or night sky over buildings with window grids; objects at street level",
    "field-rows": "sky over crop rows converging in perspective",
    "road": "sky, grass and a road in perspective with a dashed centre line; objects on the road",
    "snowfield": "pale snow with dark rock patches; objects anywhere",
}


# --------------------------------------------------------------------------- helpers
def render_object(recipe: Recipe, *, size: int = 64, center: tuple[float, float] | None = None,
                  scale: float = 24.0, rotation: float = 0.0, aspect: float = 1.0,
                  background: tuple[int, int, int] = (0, 0, 0), seed: int = 0
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one object alone on a flat background, through the generator's own code.

    Returns ``(image uint8 [size, size, 3], mask bool [size, size], box float32 [4])``:
    the mask is the owner map that :func:`generate_target` uses (coverage > 0.5) and the
    box is computed from it exactly as for generated annotations. For tests, figures
    and the README.
    """
    d = _Draws(np.random.default_rng([seed, 0, 9]))
    cx, cy = center if center is not None else (size / 2.0, size / 2.0)
    obj = _object(d, recipe, cx, cy, scale, DEFAULT_CONFIG)
    r = math.sqrt(aspect)
    obj = obj._replace(hx=0.5 * scale * r, hy=0.5 * scale / r, theta=math.radians(rotation))
    canvas = np.empty((3, size, size), np.float32)
    canvas[...] = np.asarray(background, np.float32).reshape(3, 1, 1)
    owner = np.full((size, size), -1, np.int8)
    drawn = _draw(canvas, obj, owner, 0)
    ann = _annotate(owner, [(0, drawn)], DEFAULT_CONFIG, size)
    image = np.empty((size, size, 3), np.uint8)
    _finish(canvas, d, SceneConfig(noise=0.0), image)
    box = ann["boxes"][0] if len(ann["boxes"]) else np.zeros(4, np.float32)
    return image, owner == 0, box


def recipe_distance(a: Recipe, b: Recipe) -> int:
    """Number of attributes (shape, texture, hue, part) in which two recipes differ."""
    return sum(x != y for x, y in zip(a.attributes, b.attributes))


def describe() -> dict:
    """Part vocabulary, class recipes, defaults and conventions (README / provenance)."""
    def recipes(names, recs):
        return {n: r.describe() for n, r in zip(names, recs)}

    def min_distance(recs):
        return min(recipe_distance(a, b) for i, a in enumerate(recs) for b in recs[i + 1:])

    return {
        "version": SCENES_VERSION,
        "vocabulary": {"shapes": list(SHAPES), "textures": list(TEXTURES),
                       "hues": dict(zip(HUES, HUE_DEGREES)), "parts": dict(PART_DESCRIPTIONS)},
        "source_classes": recipes(SOURCE_CLASS_NAMES, SOURCE_RECIPES),
        "target_classes": recipes(TARGET_CLASS_NAMES, TARGET_RECIPES),
        "scene_classes": dict(SCENE_DESCRIPTIONS),
        "design": {
            "source_vs_target": "disjoint recipes; every target recipe differs from every source "
                                "recipe in >= 2 attributes but uses only source attribute values",
            "min_distance_within_source": min_distance(SOURCE_RECIPES),
            "min_distance_within_target": min_distance(TARGET_RECIPES),
            "min_distance_target_to_source": min(recipe_distance(t, s) for t in TARGET_RECIPES
                                                 for s in SOURCE_RECIPES),
            "clutter": "body fragments, strokes and blobs with the vocabulary's shapes, "
                       "textures and any hue, never a sub-part",
        },
        "config_defaults": asdict(DEFAULT_CONFIG),
        "conventions": {
            "images": "uint8 [N, H, W, 3] RGB",
            "boxes": "float32 [k, 4] x1, y1, x2, y2 in pixel edges: tight box of the visible "
                     "pixels (coverage > 0.5), inside [0, size]",
            "difficult": "visible fraction < difficult_visible or box side < difficult_size px",
            "determinism": "item i = f(seed, start + i, size, config); "
                           "rng = np.random.default_rng([seed, index, task tag])",
        },
    }
