"""Any layer of any network: module paths, default layers per family, and units over tokens.

The paper measures a layer's units (its filters) over the spatial samples of their maps:
a conv layer's ``[N, C, H, W]`` output is C units seen at H x W places. A vision
transformer's block output ``[N, T, D]`` is treated the same way (D units over the patch
tokens laid out on their grid, ``[N, D, h, w]``), so every analysis, heatmap, probe and
ablation works unchanged on it (:func:`unit_view`):

- the *prefix tokens* (class, distillation and register tokens: timm's ``num_prefix_tokens``)
  come first in the sequence and are kept apart: they are not spatial samples, so they are
  left out of the map (deviation from analyses that pool the class token with the patches);
- the remaining ``h * w`` patch tokens are in row-major order of the patch grid
  (timm's ``patch_embed.grid_size``), as the patch embedding flattens them;
- a 4-D output of a network that computes channels-last (timm's Swin: ``output_fmt ==
  "NHWC"``, ``[N, h, w, D]``) is the same map with its channels last.

The views are views (no copy): extraction copies them once into the store, densely.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class TokenLayout:
    """How a network's token outputs map onto spatial samples.

    ``prefix`` leading tokens (class / distillation / register) are kept apart; the next
    ``grid[0] * grid[1]`` tokens are the patch grid in row-major order. ``nhwc``: the network's
    4-D outputs are ``[N, H, W, C]`` (channels last, as timm's Swin).
    """

    prefix: int = 0
    grid: tuple[int, int] | None = None
    nhwc: bool = False

    def describe(self) -> dict:
        return {"prefix_tokens": self.prefix, "patch_grid": list(self.grid) if self.grid else None,
                "channels_last_outputs": self.nhwc}


def token_layout(net: nn.Module) -> TokenLayout | None:
    """The token layout of a transformer-like network (timm's attributes), None for a plain CNN."""
    grid = getattr(getattr(net, "patch_embed", None), "grid_size", None)
    nhwc = getattr(net, "output_fmt", "NCHW") == "NHWC"
    if grid is None and not nhwc:
        return None
    return TokenLayout(prefix=int(getattr(net, "num_prefix_tokens", 0) or 0),
                       grid=(int(grid[0]), int(grid[1])) if grid is not None else None, nhwc=nhwc)


def unit_view(out: torch.Tensor, tokens: TokenLayout | None) -> torch.Tensor:
    """``out`` as ``[N, units, ...]``: token sequences ``[N, T, D]`` whose length is the prefix plus
    the patch grid (or the grid alone, before the prefix tokens are added) become ``[N, D, h, w]``
    (prefix tokens left out), channels-last maps
    ``[N, h, w, D]`` become ``[N, D, h, w]``; anything else is returned as it is. Views, no copies.

    >>> lay = TokenLayout(prefix=1, grid=(2, 3))
    >>> x = torch.arange(2 * 7 * 4).reshape(2, 7, 4)   # N=2, T=1+6, D=4
    >>> v = unit_view(x, lay)
    >>> tuple(v.shape), int(v[0, 1, 1, 2]) == int(x[0, 1 + 1 * 3 + 2, 1])
    ((2, 4, 2, 3), True)
    """
    if tokens is None or not isinstance(out, torch.Tensor):
        return out
    if out.dim() == 3 and tokens.grid is not None:
        h, w = tokens.grid
        if out.shape[1] in (tokens.prefix + h * w, h * w):  # after / before the prefix tokens are added
            return out[:, out.shape[1] - h * w:].unflatten(1, (h, w)).permute(0, 3, 1, 2)
    if out.dim() == 4 and tokens.nhwc:
        return out.permute(0, 3, 1, 2)
    return out


def module_paths(net: nn.Module) -> list[str]:
    """Every module path of ``net`` in definition order (the root excluded)."""
    return [name for name, _ in net.named_modules() if name]


def closest_paths(net: nn.Module, path: str, n: int = 5) -> list[str]:
    """The module paths of ``net`` most like ``path`` (for error messages)."""
    paths = module_paths(net)
    close = difflib.get_close_matches(path, paths, n=n, cutoff=0.5)
    if not close:
        head = path.rsplit(".", 1)[0]
        close = [p for p in paths if p.startswith(head)][:n]
    return close


def _every_block(count: int, prefix: str) -> dict[str, str]:
    """Every block up to 12, every second one past that (always the last)."""
    step = 1 if count <= 12 else 2
    picks = list(range(step - 1, count, step))
    if picks[-1] != count - 1:
        picks.append(count - 1)
    return {f"{prefix}.{i}": f"{prefix}.{i}" for i in picks}


def default_layers(net: nn.Module) -> dict[str, str]:
    """Sensible analysable layers of a network whose family is recognised by its structure.

    ViT / DeiT (``blocks`` and a patch grid): every block, or every second past 12; Swin
    (``layers`` of stages, channels-last): the stages; other timm models: the modules of their
    ``feature_info`` (ResNet / ConvNeXt / RegNet / EfficientNet stages); otherwise the top-level
    children but the last (the classifier), as torchvision's families.
    """
    children = dict(net.named_children())
    if isinstance(children.get("blocks"), nn.Sequential) and hasattr(getattr(net, "patch_embed", None), "grid_size"):
        return _every_block(len(children["blocks"]), "blocks")
    if getattr(net, "output_fmt", "") == "NHWC" and isinstance(children.get("layers"), nn.Sequential):
        return {f"layers.{i}": f"layers.{i}" for i in range(len(children["layers"]))}
    info = getattr(net, "feature_info", None)
    mods = [f.get("module") for f in info] if isinstance(info, list) else \
        [f.get("module") for f in getattr(info, "info", [])]
    mods = [m for m in mods if m and _has(net, m)]
    if mods:
        return {m: m for m in mods}
    return {n: n for n in list(children)[:-1]}


def _has(net: nn.Module, path: str) -> bool:
    try:
        net.get_submodule(path)
        return True
    except AttributeError:
        return False

