"""``py:<path/to/file.py>:<callable>[@<weights>]``: the user's own model code.

**Loading such an id runs that file's code**, with the same trust as running the user's own
script: the file is imported by path only because the user named it (in ``FILTERSCOPE_MODELS``,
the sidebar's "Your models and data" box or a CLI ``--model``), never found or imported otherwise.

The callable (a function or a class) is called without arguments and returns either an
``nn.Module``, or ``(module, preprocessing)`` where ``preprocessing`` is a dict that may give:

- ``input_size`` (default 224), ``mean`` and ``std`` (default ImageNet's),
- ``resize`` (shorter side before the centre crop; default: none, the image is resized to
  ``input_size`` squared), ``interpolation`` (``"bilinear"`` or ``"bicubic"``, default bilinear),
- ``layers``: the default analysable layers (a list of module paths, or ``{name: path}``),
- ``class_names``: the classifier's class names.

Weights (a state dict file, ``.pth`` / ``.pt`` / ``.bin`` / ``.safetensors``) are loaded with
``weights_only=True``. A checkpoint fine-tuned with a classifier of another size than the one the
callable builds loads too: each ``nn.Linear`` (or 1 x 1 ``nn.Conv2d``) whose output size differs
from the checkpoint's is replaced by one of the checkpoint's size before loading (only output
sizes may differ; anything else is reported as weights that do not fit).
"""
from __future__ import annotations

import importlib.util
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from core.data.layers import default_layers, token_layout
from core.data.models import (IMAGENET_MEAN, IMAGENET_STD, MODEL_KINDS, LoadedModel, ModelSpec, WeightsInfo,
                              apply_state_dict, load_checkpoint, sha256_file)
from core.errors import InputError

DEFAULT_INPUT_SIZE = 224
#: a model file is imported as module ``<prefix><stem>_<sha[:12]>``; Ray workers get such modules by value
USER_MODULE_PREFIX = "filterscope_user_"
PREPROCESSING_KEYS = ("input_size", "mean", "std", "resize", "interpolation", "layers", "class_names")


def parse_id(rest: str) -> tuple[Path, str, Path | None]:
    """``<file.py>:<callable>[@<weights>]`` -> (file, callable, weights or None)."""
    head, at, weights = rest.partition("@")
    file, colon, name = head.rpartition(":")
    if not colon or not file or not name.isidentifier():
        raise InputError(f"model id 'py:{rest}' must be py:<path/to/file.py>:<callable>[@<weights file>], "
                         "e.g. py:models/mynet.py:build or py:mynet.py:MyNet@runs/best.pth")
    return Path(file).expanduser(), name, (Path(weights).expanduser() if at and weights else None)


def import_file(path: Path) -> tuple[ModuleType, str]:
    """Import ``path`` as a module of its own (named after its SHA-256, so an edited file is a new
    module); returns the module and the file's SHA-256. Runs the file's code."""
    if not path.is_file():
        raise InputError(f"model file {path} not found: give the path of your .py file (relative to where "
                         "Filterscope runs, or absolute)")
    if path.suffix != ".py":
        raise InputError(f"model file {path} is not a .py file")
    digest = sha256_file(path)
    name = f"{USER_MODULE_PREFIX}{path.stem if path.stem.isidentifier() else 'model'}_{digest[:12]}"
    if name in sys.modules:
        return sys.modules[name], digest
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    folder = str(path.resolve().parent)
    added = folder not in sys.path
    if added:  # the file's own sibling imports work as when the user runs it
        sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:  # noqa: BLE001 - the user's code may raise anything, SystemExit too
        sys.modules.pop(name, None)
        where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        line = f" (line {where.lineno} of {Path(where.filename).name})" if where else ""
        raise InputError(f"model file {path} raised {type(exc).__name__} on import{line}: {exc}. Fix the file "
                         "(it must import with plain `python -c 'import runpy; runpy.run_path(PATH)'`)") from None
    finally:
        if added and folder in sys.path:
            sys.path.remove(folder)
    return module, digest


def _call(module: ModuleType, path: Path, name: str) -> tuple[nn.Module, dict]:
    fn = getattr(module, name, None)
    if fn is None or not callable(fn):
        found = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                 and getattr(v, "__module__", None) == module.__name__]
        raise InputError(f"model file {path} has no callable {name!r}; it defines: {', '.join(found) or 'none'}")
    try:
        out = fn()
    except Exception as exc:  # noqa: BLE001 - the user's code
        raise InputError(f"{path}:{name}() raised {type(exc).__name__}: {exc}. It is called without arguments "
                         "and must return an nn.Module or (module, preprocessing dict)") from None
    prep: Any = {}
    if isinstance(out, tuple) and len(out) == 2:
        out, prep = out
    if not isinstance(out, nn.Module):
        raise InputError(f"{path}:{name}() returned {type(out).__name__}, not a torch.nn.Module (or a tuple "
                         "(module, preprocessing dict))")
    if not isinstance(prep, dict):
        raise InputError(f"{path}:{name}(): the preprocessing it returns must be a dict with some of "
                         f"{', '.join(PREPROCESSING_KEYS)}, got {type(prep).__name__}")
    unknown = sorted(set(prep) - set(PREPROCESSING_KEYS))
    if unknown:
        raise InputError(f"{path}:{name}(): unknown preprocessing keys {', '.join(unknown)}; known: "
                         f"{', '.join(PREPROCESSING_KEYS)}")
    return out, prep


def fit_heads(net: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Replace each ``nn.Linear`` / 1 x 1 ``nn.Conv2d`` whose output size differs from ``state``'s by one
    of that size (a fine-tuned classifier); returns the replaced module paths."""
    own = net.state_dict()
    replaced = []
    for key, value in state.items():
        if not key.endswith(".weight") or key not in own or own[key].shape == value.shape:
            continue
        path = key[:-len(".weight")]
        module = net.get_submodule(path)
        same_rest = own[key].shape[1:] == value.shape[1:]
        if isinstance(module, nn.Linear) and same_rest:
            new: nn.Module = nn.Linear(module.in_features, value.shape[0], bias=module.bias is not None)
        elif isinstance(module, nn.Conv2d) and same_rest and module.kernel_size == (1, 1) and module.groups == 1:
            new = nn.Conv2d(module.in_channels, value.shape[0], 1, stride=module.stride, bias=module.bias is not None)
        else:
            continue
        parent, _, child = path.rpartition(".")
        setattr(net.get_submodule(parent) if parent else net, child, new)
        replaced.append(path)
    return replaced


def _layers(net: nn.Module, prep: dict, path: Path) -> dict[str, str]:
    layers = prep.get("layers")
    if layers is None:
        return default_layers(net)
    layers = dict(layers) if isinstance(layers, dict) else {str(p): str(p) for p in layers}
    for module_path in layers.values():
        try:
            net.get_submodule(module_path)
        except AttributeError:
            raise InputError(f"{path}: preprocessing 'layers' names {module_path!r}, which is not a module path "
                             "of the returned network") from None
    return layers


def build_user(file: Path, name: str, weights: Path | None = None) -> LoadedModel:
    """The network ``file``'s ``name()`` returns (see the module docstring), with ``weights`` when given."""
    module, digest = import_file(file)
    net, prep = _call(module, file, name)
    info = WeightsInfo("random init" if weights is None else "user file")
    replaced: list[str] = []
    if weights is not None:
        state = {k.removeprefix("module."): v for k, v in load_checkpoint(weights).items()}
        replaced = fit_heads(net, state)
        apply_state_dict(net, state, str(weights))
        info = WeightsInfo("user file", str(weights), sha256_file(weights))
    size = int(prep.get("input_size", DEFAULT_INPUT_SIZE))
    interpolation = str(prep.get("interpolation", "bilinear"))
    if interpolation not in ("bilinear", "bicubic", "nearest"):
        raise InputError(f"{file}:{name}(): interpolation {interpolation!r} must be bilinear, bicubic or nearest")
    net.eval()
    _check_forward(net, size, f"{file}:{name}")
    last = [m for m in net.modules() if isinstance(m, nn.Linear)]
    spec = ModelSpec(name=f"py-{file.stem}-{name}", arch=f"py:{file.name}:{name}",
                     num_classes=int(last[-1].out_features) if last else 0, layers=_layers(net, prep, file),
                     input_size=size, mean=tuple(float(v) for v in prep.get("mean", IMAGENET_MEAN)),
                     std=tuple(float(v) for v in prep.get("std", IMAGENET_STD)), weights=info,
                     class_names=tuple(prep.get("class_names", ())),
                     resize=int(prep["resize"]) if prep.get("resize") else None,
                     interpolation=interpolation, tokens=token_layout(net),
                     extra={"source_file": str(file.resolve()), "code_sha256": digest, "callable": name,
                            "torch_version": torch.__version__,
                            **({"replaced_heads": replaced} if replaced else {})})
    return LoadedModel(spec, net)


def _check_forward(net: nn.Module, size: int, what: str) -> None:
    """A model whose forward fails on a 3-channel batch of its input size is refused now, with the reason."""
    try:
        with torch.no_grad():
            net(torch.zeros(2, 3, size, size))
    except Exception as exc:  # noqa: BLE001 - the user's code
        raise InputError(f"{what}: the forward pass fails on a batch of 2 RGB images of {size}x{size} "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). Return the "
                         "input size the model expects in the preprocessing dict ({'input_size': N}), or fix "
                         "the model") from None


def user_modules(net: nn.Module) -> list[ModuleType]:
    """The imported model files whose classes ``net`` is made of (none for library models)."""
    names = {type(m).__module__ for m in net.modules()}
    return [sys.modules[n] for n in sorted(names) if n.startswith(USER_MODULE_PREFIX) and n in sys.modules]


@MODEL_KINDS.register("py")
def _user_id(rest: str) -> LoadedModel:
    """``py:<path/to/file.py>:<callable>[@<weights path>]``."""
    return build_user(*parse_id(rest))

