"""``timm:<name>[@<weights>]``: any timm model, with weights a user already has. Never downloads.

Weights come from a local file (a state dict: ``.pth`` / ``.pt`` / ``.bin`` or ``.safetensors``,
possibly fine-tuned with a head of another size), or, without a file, from the Hugging Face
cache on this machine when the model's default weights are there (looked up with
``huggingface_hub.try_to_load_from_cache``, which reads the cache folder only); otherwise the
model is randomly initialised and its provenance says so. ``timm.create_model`` is always
called with ``pretrained=False``.

Input size, mean, std, interpolation and crop come from timm's own data config for the model
(``timm.data.resolve_data_config``): the image is resized to ``floor(size / crop_pct)`` on its
shorter side with the model's interpolation, then centre-cropped, as timm's eval transform.
"""
from __future__ import annotations

import difflib
import math
import os
from pathlib import Path

import torch

from core.data.layers import default_layers, token_layout
from core.data.models import (MODEL_KINDS, LoadedModel, ModelSpec, WeightsInfo, apply_state_dict, classifier_outputs,
                              load_checkpoint, sha256_file)
from core.errors import InputError

#: file names timm's Hugging Face repositories hold the weights under, preferred first
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _timm():
    try:
        import timm
    except ImportError as exc:  # pragma: no cover - timm is in requirements.txt
        raise InputError("timm: models need the timm package (pip install -r requirements.txt)") from exc
    return timm


def hf_cache_weights(net: torch.nn.Module) -> Path | None:
    """The model's default weights if they are already in the local Hugging Face cache (no network)."""
    repo = (getattr(net, "pretrained_cfg", None) or {}).get("hf_hub_id")
    if not repo:
        return None
    from huggingface_hub import try_to_load_from_cache

    for name in HF_WEIGHT_FILES:
        found = try_to_load_from_cache(repo, name)
        if isinstance(found, str) and os.path.isfile(found):
            return Path(found)
    return None


def check_name(name: str) -> None:
    """InputError naming the closest timm models when ``name`` is not one."""
    timm = _timm()
    if not name or not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        raise InputError(f"unknown timm model {name!r}" + (f"; closest: {', '.join(close)}" if close else "")
                         + ". timm.list_models() lists them (with a pattern: timm.list_models('*vit*')).")


def build_timm(name: str, *, weights: str | os.PathLike | None = None, use_hf_cache: bool = True) -> LoadedModel:
    """A timm model, random or with local weights (see the module docstring); never downloads."""
    timm = _timm()
    check_name(name)
    state, info = None, WeightsInfo("random init")
    path = Path(weights) if weights is not None else None
    if path is not None:
        state = load_checkpoint(path)
    net = timm.create_model(name, pretrained=False)
    default_classes = int(getattr(net, "num_classes", 0) or 0)
    if path is None and use_hf_cache and (cached := hf_cache_weights(net)) is not None:
        path, state = cached, load_checkpoint(cached)
    if state is not None:
        state = {k.removeprefix("module."): v for k, v in state.items()}
        head = (getattr(net, "pretrained_cfg", None) or {}).get("classifier")
        heads = [head] if isinstance(head, str) else list(head or ())
        key = next((f"{h}.weight" for h in heads if f"{h}.weight" in state), None)
        n = int(state[key].shape[0]) if key else classifier_outputs(state, default_classes)
        if n != default_classes and default_classes:
            net = timm.create_model(name, pretrained=False, num_classes=n)  # a fine-tuned head
        apply_state_dict(net, state, str(path))
        info = WeightsInfo("user file" if weights is not None else "Hugging Face cache", str(path),
                           sha256_file(path))
    cfg = timm.data.resolve_data_config({}, model=net)
    size = int(cfg["input_size"][-1])
    crop = float(cfg.get("crop_pct") or 1.0)
    tokens = token_layout(net)
    spec = ModelSpec(name=f"timm-{name}", arch=f"timm:{name}", num_classes=int(getattr(net, "num_classes", 0) or 0),
                     layers=default_layers(net), input_size=size, mean=tuple(float(v) for v in cfg["mean"]),
                     std=tuple(float(v) for v in cfg["std"]), weights=info,
                     resize=int(math.floor(size / crop)),
                     interpolation=str(cfg.get("interpolation") or "bilinear"), tokens=tokens,
                     extra={"timm_version": timm.__version__, "torch_version": torch.__version__,
                            "crop_pct": crop})
    return LoadedModel(spec, net.eval())


@MODEL_KINDS.register("timm")
def _timm_id(rest: str) -> LoadedModel:
    """``timm:<name>[@<weights path>]``."""
    name, _, path = rest.partition("@")
    return build_timm(name, weights=path or None)
