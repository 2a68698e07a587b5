"""Model registry: the demo AlexNet-shaped network and torchvision classifiers.

Each :class:`ModelSpec` knows its input transform, its analysable layers (named as
in the paper for AlexNet-shaped nets: conv1..conv5, fc6, fc7) and the provenance
of its weights (file path, SHA-256, where they came from). Weights come only from
local files; nothing is ever downloaded.

Layer convention (paper Sec. 2.2): conv1, conv2 and conv5 are the outputs of the
max-pooling that follows conv+ReLU (after LRN for conv1/conv2 where the net has
it); conv3, conv4, fc6 and fc7 are the outputs of their ReLUs.
"""
from __future__ import annotations

import hashlib
import os
import pickle
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from core.data import series
from core.data.layers import TokenLayout, closest_paths
from core.data.registry import Registry
from core.errors import InputError

PAPER_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")

#: torchvision AlexNet: paper layer -> module path (torchvision's AlexNet has no LRN).
ALEXNET_LAYERS = {
    "conv1": "features.2", "conv2": "features.5", "conv3": "features.7",
    "conv4": "features.9", "conv5": "features.12", "fc6": "classifier.2", "fc7": "classifier.5",
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------- demo net
class FastLRN(nn.Module):
    """Cross-channel local response normalisation written as a banded 1x1 convolution.

    Same operation as ``nn.LocalResponseNorm(size, alpha, beta, k)`` (matched to ~1e-6 in
    tests) but ~40% cheaper on these CPUs (see shared NOTES).
    """

    def __init__(self, channels: int, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0):
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k
        idx = torch.arange(channels)
        band = ((idx[:, None] - idx[None, :]).abs() <= size // 2).float()
        if size % 2 == 0:  # torch pads (size//2, (size-1)//2): window [c - size//2, c + (size-1)//2]
            d = idx[None, :] - idx[:, None]
            band = ((d >= -(size // 2)) & (d <= (size - 1) // 2)).float()
        self.register_buffer("band", band[:, :, None, None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sq = F.conv2d(x * x, self.band.to(dtype=x.dtype))
        return x / (self.k + (self.alpha / self.size) * sq).pow(self.beta)


@dataclass(frozen=True)
class DemoNetConfig:
    """Widths of the demo AlexNet-shaped network (64x64 input)."""

    widths: tuple[int, int, int, int, int] = (32, 64, 96, 96, 64)
    fc: int = 256
    num_classes: int = 48
    input_size: int = 64
    dropout: float = 0.5
    #: LRN alpha scaled by ~60^2 from Caffe's 1e-4 because our inputs have unit variance
    #: rather than Caffe's 0-255 range (with 1e-4 LRN would be a constant factor).
    lrn_alpha: float = 0.36


class DemoAlexNet(nn.Module):
    """AlexNet-shaped network small enough to train in minutes on 2 CPU cores.

    Same layer order as Caffe AlexNet (conv-ReLU-pool-LRN twice, conv-ReLU x2,
    conv-ReLU-pool, fc-ReLU-dropout x2, classifier) and the same layer names, so
    every analysis works identically on both. 64x64 input, conv1 5x5 stride 2;
    spatial sizes: conv1 16x16, conv2 8x8, conv3-4 8x8, conv5 4x4.
    """

    def __init__(self, cfg: DemoNetConfig = DemoNetConfig()):
        super().__init__()
        w1, w2, w3, w4, w5 = cfg.widths
        pool = lambda: nn.MaxPool2d(3, 2, padding=1)  # noqa: E731
        self.conv1 = nn.Sequential(nn.Conv2d(3, w1, 5, 2, 2), nn.ReLU(), pool(), FastLRN(w1, alpha=cfg.lrn_alpha))
        self.conv2 = nn.Sequential(nn.Conv2d(w1, w2, 5, 1, 2), nn.ReLU(), pool(), FastLRN(w2, alpha=cfg.lrn_alpha))
        self.conv3 = nn.Sequential(nn.Conv2d(w2, w3, 3, 1, 1), nn.ReLU())
        self.conv4 = nn.Sequential(nn.Conv2d(w3, w4, 3, 1, 1), nn.ReLU())
        self.conv5 = nn.Sequential(nn.Conv2d(w4, w5, 3, 1, 1), nn.ReLU(), pool())
        side = cfg.input_size // 16
        self.fc6 = nn.Sequential(nn.Flatten(), nn.Dropout(cfg.dropout), nn.Linear(w5 * side * side, cfg.fc), nn.ReLU())
        self.fc7 = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(cfg.fc, cfg.fc), nn.ReLU())
        self.classifier = nn.Linear(cfg.fc, cfg.num_classes)
        self.cfg = cfg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in PAPER_LAYERS:
            x = getattr(self, name)(x)
        return self.classifier(x)

    def replace_classifier(self, num_classes: int, seed: int = 0) -> None:
        """New randomly initialised classification layer (paper Sec. 2.3)."""
        g = torch.Generator().manual_seed(seed)
        layer = nn.Linear(self.cfg.fc, num_classes)
        with torch.no_grad():
            layer.weight.normal_(0, 0.01, generator=g)
            layer.bias.zero_()
        self.classifier = layer
        self.cfg = replace(self.cfg, num_classes=num_classes)


DEMO_LAYERS = {name: name for name in PAPER_LAYERS}


# --------------------------------------------------------------------------- specs
@dataclass(frozen=True)
class WeightsInfo:
    """Where a model's weights came from."""

    source: str  # "random init", "user file", "torch hub cache", "demo build"
    path: str | None = None
    sha256: str | None = None

    @property
    def short_hash(self) -> str:
        return (self.sha256 or "none")[:12]


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model and interpret its layers.

    ``layers`` maps analysable layer names to module paths inside the network.
    """

    name: str
    arch: str
    num_classes: int
    layers: dict[str, str]
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights: WeightsInfo
    class_names: tuple[str, ...] = ()
    resize: int | None = None  # resize shorter side before centre crop (torchvision models)
    extra: dict = field(default_factory=dict)
    interpolation: str = "bilinear"  # of the resize: "bilinear" or "bicubic" (timm's ViTs)
    tokens: TokenLayout | None = None  # transformers: how token outputs map onto spatial samples

    def describe(self) -> dict:
        """Provenance dictionary stored with every result computed from this model."""
        out = {"name": self.name, "arch": self.arch, "num_classes": self.num_classes,
               "input_size": self.input_size, "layers": dict(self.layers),
               "weights_source": self.weights.source, "weights_path": self.weights.path,
               "weights_sha256": self.weights.sha256, **{k: v for k, v in self.extra.items()}}
        if self.interpolation != "bilinear":
            out["interpolation"] = self.interpolation
        if self.tokens is not None:
            out["tokens"] = self.tokens.describe()
        return out

    def identity(self) -> tuple:
        """What determines this model's features: architecture, weights, input transform, and where
        they apply the resize's interpolation and the SHA-256 of the user's model code (the key of
        its stored features; the same parts as before for the models that have neither)."""
        parts: tuple = (self.arch, self.weights.sha256 or "random", self.input_size, self.mean, self.std, self.resize)
        if self.interpolation != "bilinear":
            parts += (("interpolation", self.interpolation),)
        if self.extra.get("code_sha256"):
            parts += (("code", self.extra["code_sha256"]),)
        return parts

    def geometric_transform(self) -> Callable:
        """PIL RGB image -> uint8 tensor [3, S, S]: the resize (and centre crop) of :meth:`transform`."""
        from torchvision.transforms import v2 as T

        mode = T.InterpolationMode(self.interpolation)
        steps = [T.ToImage()]
        if self.resize:
            steps += [T.Resize(self.resize, interpolation=mode, antialias=True), T.CenterCrop(self.input_size)]
        else:
            steps += [T.Resize((self.input_size, self.input_size), interpolation=mode, antialias=True)]
        return T.Compose(steps)

    def transform(self) -> Callable:
        """PIL RGB image -> float tensor [3, S, S], normalised."""
        from torchvision.transforms import v2 as T

        return T.Compose([self.geometric_transform(), T.ToDtype(torch.float32, scale=True),
                          T.Normalize(self.mean, self.std)])

    def normalize_batch(self, crops: torch.Tensor | Sequence[torch.Tensor],
                        out: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 crops ``[3, S, S]`` from :meth:`geometric_transform` (a ``[B, 3, S, S]`` batch or
        a list) -> the float batch :meth:`transform` gives image by image: the same float32
        operations (torchvision's ``to_dtype``: ``* (1 / 255)``; ``normalize``: ``- mean``,
        ``/ std``), bit for bit, into one contiguous ``[B, 3, S, S]`` batch.

        Image by image, so each crop is read in whatever strides it has (a channels-last view of
        the decoded image: no transposing ``stack``) and the arithmetic runs on one cache-sized
        image at a time instead of four passes over the whole batch (32 -> 10 ms for 64
        AlexNet crops on 2 cores). ``out`` (contiguous float32 ``[>=B, 3, S, S]``) receives the
        batch when given, so a caller can reuse one buffer from batch to batch.
        """
        b = len(crops)
        shape = tuple(crops[0].shape) if b else (3, self.input_size, self.input_size)
        if out is None:
            out = torch.empty((b, *shape), dtype=torch.float32)
        elif out.dtype != torch.float32 or tuple(out.shape[1:]) != shape or len(out) < b or not out.is_contiguous():
            raise ValueError(f"out must be contiguous float32 [>={b}, {', '.join(map(str, shape))}], "
                             f"got {out.dtype} {tuple(out.shape)}")
        mean = torch.as_tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.as_tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        for dst, crop in zip(out, crops):
            dst.copy_(crop)
            dst.mul_(1.0 / 255).sub_(mean).div_(std)
        return out[:b]


@dataclass
class LoadedModel:
    """A spec with its network in eval mode."""

    spec: ModelSpec
    net: nn.Module

    def module(self, layer: str) -> nn.Module:
        """The module of ``layer``: a default layer's display name or any module path of the network."""
        path = self.spec.layers.get(layer, layer)
        try:
            return self.net.get_submodule(path)
        except AttributeError as exc:
            close = closest_paths(self.net, path)
            raise InputError(f"model '{self.spec.name}' has no layer '{layer}' (module path '{path}'); "
                             + (f"closest module paths: {', '.join(close)}; " if close else "")
                             + f"default layers: {', '.join(self.spec.layers)}. `python -m core layers --model "
                             "ID` lists every path.") from exc


# --------------------------------------------------------------------------- weights
def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def load_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a plain state dict with ``torch.load(weights_only=True)``.

    Accepts a state dict, or a dict holding one under ``state_dict`` / ``model``.
    Raises :class:`~core.errors.InputError` for a missing, truncated, non-torch or
    pickle-payload file, or one that holds no tensors.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"weights file not found: {p}. Give the path of a local .pt/.pth/.bin/.safetensors "
                         "state dict.")
    if p.stat().st_size == 0:
        raise InputError(f"weights file {p} is empty (0 bytes); re-copy or re-save it.")
    if p.suffix == ".safetensors":
        return _load_safetensors(p)
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise InputError(f"weights file {p} is not a plain state dict: it holds Python objects that "
                         f"cannot be loaded safely (weights_only=True refused: {str(exc).splitlines()[0]}). "
                         "Re-save it with torch.save(model.state_dict(), path).") from exc
    except Exception as exc:  # noqa: BLE001 - torch raises many types on garbage input
        raise InputError(f"weights file {p} could not be read as a torch checkpoint (truncated or not a "
                         f"torch file): {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"weights file {p} does not hold a state dict of tensors "
                         f"(found {type(obj).__name__}). Save with torch.save(model.state_dict(), path).")
    return obj


def _load_safetensors(p: Path) -> dict[str, torch.Tensor]:
    """A ``.safetensors`` file's tensors (a format that holds tensors only: nothing to execute)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(p), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"weights file {p} could not be read as safetensors (truncated or not a safetensors "
                         f"file): {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    if not state:
        raise InputError(f"weights file {p} holds no tensors.")
    return state


def classifier_outputs(state: dict[str, torch.Tensor], default: int) -> int:
    """Number of classes of a checkpoint: rows of its last weight of rank >= 2 (a Linear, or a 1x1
    conv as in SqueezeNet), ``default`` when it has none."""
    last = [v for k, v in state.items() if k.endswith("weight") and v.ndim >= 2]
    return int(last[-1].shape[0]) if last else default


def apply_state_dict(net: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` strictly; a wrong architecture raises InputError naming the mismatch."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
             for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        if wrong:
            parts.append(f"shape mismatches: {'; '.join(wrong[:3])}")
        raise InputError(f"weights in {source} do not fit this architecture: " + ", ".join(parts)
                         + ". Check that the file belongs to the chosen model.")
    net.load_state_dict(state)


# --------------------------------------------------------------------------- builders
def build_demo(*, num_classes: int, weights: str | os.PathLike | None = None, name: str = "demo",
               class_names: tuple[str, ...] = (), cfg: DemoNetConfig | None = None,
               source: str = "demo build", extra: dict | None = None) -> LoadedModel:
    """Demo AlexNet-shaped network, random or from a local state dict."""
    cfg = replace(cfg or DemoNetConfig(), num_classes=num_classes)
    net = DemoAlexNet(cfg)
    info = WeightsInfo("random init")
    if weights is not None:
        apply_state_dict(net, load_checkpoint(weights), str(weights))
        info = WeightsInfo(source, str(weights), sha256_file(weights))
    spec = ModelSpec(name=name, arch="demo-alexnet", num_classes=num_classes, layers=dict(DEMO_LAYERS),
                     input_size=cfg.input_size, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                     weights=info, class_names=tuple(class_names),
                     extra={"widths": list(cfg.widths), "fc": cfg.fc, **(extra or {})})
    return LoadedModel(spec, net.eval())


def torchvision_default_layers(arch: str, net: nn.Module) -> dict[str, str]:
    """Sensible analysable layers for a torchvision classifier."""
    if arch == "alexnet":
        return dict(ALEXNET_LAYERS)
    names = dict(net.named_children())
    if all(f"layer{i}" in names for i in range(1, 5)):  # ResNet family
        return {**{f"layer{i}": f"layer{i}" for i in range(1, 5)}, "avgpool": "avgpool"}
    if "features" in names and isinstance(names["features"], nn.Sequential):  # VGG, MobileNet, ...
        feats = names["features"]
        picks = [f"features.{i}" for i, m in enumerate(feats) if isinstance(m, nn.MaxPool2d)]
        if not picks:
            picks = [f"features.{i}" for i in range(len(feats))][-5:]
        return {p.replace("features.", "features_"): p for p in picks}
    return {n: n for n in list(names)[:-1]}


def hub_weights_path(arch: str) -> Path | None:
    """Path of torchvision's default weights for ``arch`` if already in the torch hub cache."""
    import torchvision

    try:
        url = torchvision.models.get_model_weights(arch).DEFAULT.url
    except (ValueError, AttributeError, KeyError):
        return None
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    return path if path.is_file() else None


def build_torchvision(arch: str, *, weights: str | os.PathLike | None = None,
                      use_hub_cache: bool = True, layers: dict[str, str] | None = None) -> LoadedModel:
    """Any torchvision classification model, with weights from a local file or the hub cache.

    Never downloads: without a local file and without cached weights the model is
    randomly initialised (and its provenance says so).
    """
    import torchvision

    if arch not in torchvision.models.list_models(module=torchvision.models):
        raise InputError(f"unknown torchvision classification model '{arch}'. "
                         "Use a name from torchvision.models.list_models(), e.g. alexnet, resnet18, vgg16.")
    info = WeightsInfo("random init")
    path = Path(weights) if weights is not None else (hub_weights_path(arch) if use_hub_cache else None)
    state = load_checkpoint(path) if path is not None else None
    num_classes = classifier_outputs(state, 1000) if state is not None else 1000
    net = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    if state is not None:
        apply_state_dict(net, state, str(path))
        info = WeightsInfo("user file" if weights is not None else "torch hub cache", str(path), sha256_file(path))
    class_names: tuple[str, ...] = ()
    try:
        meta = torchvision.models.get_model_weights(arch).DEFAULT.meta
        if num_classes == len(meta.get("categories", [])):
            class_names = tuple(meta["categories"])
    except (ValueError, AttributeError, KeyError):
        pass
    size = 227 if arch == "alexnet" else 224
    spec = ModelSpec(name=arch, arch=arch, num_classes=num_classes,
                     layers=layers or torchvision_default_layers(arch, net), input_size=size,
                     mean=IMAGENET_MEAN, std=IMAGENET_STD, weights=info, class_names=class_names,
                     resize=256)
    return LoadedModel(spec, net.eval())


# --------------------------------------------------------------------------- model ids
MODEL_KINDS: Registry[Callable[[str], LoadedModel]] = Registry(
    "model kind", "Use demo:<variant>, tv:<arch>, timm:<name> or py:<file.py>:<callable> (each [@<weights path>]).")
"""``kind -> builder(rest_of_id)`` for ids ``<kind>:<rest>``; :func:`get_model` dispatches on it.
``tv`` is registered here, ``timm`` by :mod:`core.data.timm_models`, ``py`` by :mod:`core.data.user_models`
and ``demo`` by the embedded demo (:mod:`core.demo.build`); the service's catalog imports all of them."""


@MODEL_KINDS.register("tv")
def _torchvision_id(rest: str) -> LoadedModel:
    """``tv:<arch>[@<weights path>]``: a torchvision classifier (see :func:`build_torchvision`)."""
    arch, _, path = rest.partition("@")
    return build_torchvision(arch, weights=path or None)


def get_model(model_id: str) -> LoadedModel:
    """Build the model a ``<kind>:<rest>`` id names, through :data:`MODEL_KINDS`.

    An id whose weights are a checkpoint series (a folder or a glob, :mod:`core.data.series`) builds
    the series' last checkpoint, with the series in its provenance. Raises InputError naming the
    known kinds when the id has none of them.
    """
    kind, sep, rest = model_id.partition(":")
    if not sep:
        raise InputError(f"model id {model_id!r} has no kind; " + MODEL_KINDS.hint.replace("Use", "use", 1))
    builder = MODEL_KINDS.get(kind)
    run = series.members(model_id)
    if not run:
        return builder(rest)
    last = builder(run[-1][1].partition(":")[2])
    spec = replace(last.spec, extra={**last.spec.extra, "series": rest.partition("@")[2],
                                     "series_steps": [step for step, _ in run]})
    return LoadedModel(spec, last.net)
