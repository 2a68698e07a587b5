"""Catalog of models and tasks: ids, aliases, loading, and registering real models and data.

Module-level registries live here once: registered tasks (:func:`register_task`) and
models (:func:`register_model`), the ``FILTERSCOPE_*`` settings read by
:func:`configure_from_env`, the lock that guards them, and the per-process caches of
built models (:func:`load_model`), image sets (:func:`load_set`) and detection splits
(:func:`load_detection`). Also the demo's networks grouped for comparisons, their
training curves and build summary.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np

from core import config
from core.data.datasets import ImageSet, load_dataset
from core.data import series, timm_models, user_models  # noqa: F401  (timm: and py: register themselves)
from core.data.models import MODEL_KINDS, LoadedModel, get_model
from core.demo import build as demo
from core.demo import profiles as demo_profiles
from core.errors import DataMissingError, InputError
from core.store.extraction import Progress
from core.store.extraction import all_layer_shapes as _forward_all_shapes
from core.store.extraction import layer_shapes as _forward_shapes
from core.tasks import rcnn


# --------------------------------------------------------------------------- tasks and models
@dataclass(frozen=True)
class TaskSpec:
    """A train/test pair of image sets with one label space."""

    id: str
    title: str
    train: str
    test: str
    kind: str  # "det-gt" | "cls" | "scene" | "other"
    paper: str = ""


_TASKS: dict[str, TaskSpec] = {}
_LOCK = threading.RLock()


def register_task(task: TaskSpec) -> None:
    """Make ``task`` selectable on every page and in the CLI (a later task of the same id replaces it)."""
    with _LOCK:
        _TASKS[task.id] = task


def demo_tasks() -> list[TaskSpec]:
    """The embedded demo's four tasks, in the roles of the paper's PASCAL-DET-GT, PASCAL-CLS,
    SUN-CLS and PASCAL-DET (their image sets are the demo's ``demo:<split>`` datasets)."""
    return [
        TaskSpec("demo-detgt", "Demo target · ground-truth box crops (DET-GT)", "demo:target-train-detgt",
                 "demo:target-test-detgt", "det-gt", "PASCAL-DET-GT"),
        TaskSpec("demo-cls", "Demo target · whole images, multi-label (CLS)", "demo:target-clstrain",
                 "demo:target-test", "cls", "PASCAL-CLS"),
        TaskSpec("demo-scene", "Demo scenes · scene classification", "demo:scene-train", "demo:scene-test",
                 "scene", "SUN-CLS"),
        TaskSpec("demo-det", "Demo target · object detection (R-CNN on windows)", "demo:target-train",
                 "demo:target-test", "det", "PASCAL-DET"),
    ]


def _demo_built() -> bool:
    """:func:`demo.is_built`, remembered while the demo's manifest file is unchanged (it
    hashes the whole demo config, and pages ask many times per run)."""
    path = demo_profiles.demo_dir() / "manifest.json"
    try:
        info = path.stat()
    except OSError:
        return False
    return _demo_built_at(str(path), info.st_mtime_ns, info.st_size, info.st_ino)


@lru_cache(maxsize=8)
def _demo_built_at(path: str, mtime_ns: int, size: int, inode: int) -> bool:
    return demo.is_built()


def tasks() -> dict[str, TaskSpec]:
    """Every known task: the demo's (when built) plus registered real-data tasks."""
    configure_from_env()
    out = {t.id: t for t in demo_tasks()} if _demo_built() else {}
    with _LOCK:
        out.update(_TASKS)
    return {k: TaskSpec(**v) if isinstance(v, dict) else v for k, v in out.items()}


def task(task_id: str) -> TaskSpec:
    """The task of id ``task_id``; DataMissingError when it is a demo task and the demo is not built,
    InputError naming the known tasks otherwise."""
    all_tasks = tasks()
    if task_id not in all_tasks:
        if task_id.startswith("demo") and not _demo_built():
            raise DataMissingError("the embedded demo is not built yet: run `make run` or `python -m core demo`.")
        raise InputError(f"unknown task '{task_id}'; known: {', '.join(all_tasks) or 'none'}")
    return all_tasks[task_id]


def models() -> dict[str, str]:
    """Model id -> human title: the demo's first, then the registered real models
    (:func:`register_model`, ``$FILTERSCOPE_MODELS``)."""
    configure_from_env()
    out = demo.demo_models() if _demo_built() else {}
    with _LOCK:
        out.update(_MODELS)
    return out


#: Short names users type for a model: ``demo`` is the demo network every page opens on.
MODEL_ALIASES = {"demo": "demo:finetuned"}


def model_label(model_id: str) -> str:
    """Short legend name of a model: 'fine-tuned', 'pretrained', 'snapshot 00200' for the demo's;
    'resnet50 @ft-voc' (name, and the weights file's stem) or 'mynet.py:build' for the others."""
    kind, _, v = model_id.partition(":")
    if kind == "demo":
        return {"finetuned": "fine-tuned", "fc-finetuned": "fc-only fine-tuned"}.get(v, v.replace("-", " "))
    head, _, weights = v.partition("@")
    if kind == "py":
        file, _, fn = head.rpartition(":")
        head = f"{Path(file).name}:{fn}"
    return head + (f" @{Path(weights).stem}" if weights else "")


def resolve_model(model_id: str) -> str:
    """The model id behind what a user typed (an alias of :data:`MODEL_ALIASES` or an id).

    Demo ids and aliases are checked against the built demo's networks; ``tv:``, ``timm:`` and
    ``py:`` ids are returned as they are (they are checked when loaded). Raises InputError
    listing the valid ids otherwise.
    """
    model_id = MODEL_ALIASES.get(model_id, model_id)
    kind, sep, _ = model_id.partition(":")
    if sep and kind != "demo" and kind in MODEL_KINDS:
        return model_id
    known = models()
    if model_id not in known:
        listing = ", ".join([*(a for a, m in MODEL_ALIASES.items() if m in known), *known]) or "none (build the demo)"
        raise InputError(f"unknown model id '{model_id}'; valid ids: {listing}, or tv:<arch>[@<weights path>], "
                         "timm:<name>[@<weights path>], py:<file.py>:<callable>[@<weights path>]")
    return model_id


# --------------------------------------------------------------------------- loading by id
@lru_cache(maxsize=32)
def load_model(model_id: str) -> LoadedModel:
    """Build a model from its id (cached per process), through :data:`core.data.models.MODEL_KINDS`."""
    return get_model(model_id)


@lru_cache(maxsize=64)
def load_set(dataset_id: str) -> ImageSet:
    return load_dataset(dataset_id)


def checkpoint_series(model_id: str) -> list[tuple[int, str]]:
    """``(step, model id)`` of each checkpoint when ``model_id`` names a checkpoint series (a folder or a
    glob of one run's checkpoints, ordered by the step number in their names); ``[]`` otherwise."""
    return [] if model_id.startswith("demo:") else series.members(model_id)


def model_info(model_id: str) -> dict:
    """What a model is: its id, architecture, input size and normalisation, layers and weights'
    provenance (source, path, SHA-256)."""
    lm = load_model(model_id)
    return {"id": model_id, **lm.spec.describe()}


def load_detection(dataset_id: str) -> rcnn.DetectionData:
    """Whole images and every ground-truth box of a detection split (cached per process; a demo split per
    demo build: another profile or a rebuild reads its own files)."""
    build = None
    if dataset_id.startswith("demo:"):
        path = demo_profiles.demo_dir() / "manifest.json"
        try:
            info = path.stat()
            build = (str(path), info.st_mtime_ns, info.st_size, info.st_ino)
        except OSError:
            build = (str(path),)
    return _load_detection(dataset_id, build)


@lru_cache(maxsize=16)
def _load_detection(dataset_id: str, build: tuple | None) -> rcnn.DetectionData:
    return rcnn.load_detection_data(dataset_id)


def _require_kind(t: TaskSpec, kinds: tuple[str, ...], what: str) -> None:
    if t.kind not in kinds:
        raise InputError(f"{what} needs a {' or '.join(kinds)} task; '{t.id}' is a {t.kind} task "
                         f"({t.title}). Pick a {'detection' if 'det' in kinds else 'scene'} task in the sidebar.")


def layers_of(model_id: str) -> list[str]:
    """The model's analysable layers, in forward order (their display names)."""
    return list(load_model(model_id).spec.layers)


def layer_shapes(model_id: str) -> dict[str, tuple[int, ...]]:
    """Output shape of each analysable layer (one dummy forward per model and process)."""
    return dict(_layer_shapes(model_id))


@lru_cache(maxsize=32)
def _layer_shapes(model_id: str) -> dict[str, tuple[int, ...]]:
    return _forward_shapes(load_model(model_id))


def model_layers(model_id: str) -> list[dict]:
    """Every module of the model, in definition order: ``path``, output ``shape`` as stored (units first,
    token outputs on their grid; None where the module does not run in a plain forward), ``default``
    (one of the analysable layers offered first) and its display ``name`` (its path for the others)."""
    lm = load_model(model_id)
    names = {path: name for name, path in lm.spec.layers.items()}
    return [{"path": path, "shape": shape, "default": path in names, "name": names.get(path, path)}
            for path, shape in _all_shapes(model_id).items()]


def layer_choices(model_id: str) -> list[str]:
    """The layers a user can pick: the model's default layers (display names) first, then every other
    module path whose output is one tensor, in definition order."""
    defaults = layers_of(model_id)
    paths = set(load_model(model_id).spec.layers.values())
    return defaults + [r["path"] for r in model_layers(model_id) if r["shape"] is not None and r["path"] not in paths]


@lru_cache(maxsize=8)
def _all_shapes(model_id: str) -> dict[str, tuple[int, ...] | None]:
    return _forward_all_shapes(load_model(model_id))


def first_layer_weights(model_id: str) -> np.ndarray:
    """Weights of the first convolution ``[F, 3, k, k]`` (Fig. 2)."""
    import torch

    net = load_model(model_id).net
    conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    return conv.weight.detach().cpu().numpy().astype(np.float32)


# --------------------------------------------------------------------------- demo networks
def demo_variants() -> dict[str, list[str]]:
    """Model ids grouped for the training-dynamics comparisons."""
    ids = list(models())
    return {"regimes": [m for m in ("demo:scratch", "demo:pretrained", "demo:finetuned") if m in ids],
            "ft_vs_fc": [m for m in ("demo:finetuned", "demo:fc-finetuned") if m in ids],
            "snapshots": [m for m in ids if m.startswith("demo:snapshot-")],
            "ft_from": [m for m in ids if m.startswith("demo:finetuned-from-")] +
                       (["demo:finetuned"] if "demo:finetuned" in ids else [])}


def training_curves() -> dict[str, dict[str, list[float]]]:
    """Training loss of every demo run: ``{run: {"iteration": [...], "loss": [...]}}``.

    The build keeps every :func:`core.demo.training.loss_curve_step`-th step's loss; the
    iteration of each kept value is rebuilt from the run's iteration count.
    """
    from core.demo.training import loss_curve_step

    man = demo.manifest()
    iterations = {"pretrain": man.get("pretrain", {}).get("iterations"),
                  **{k: v.get("iterations") for k, v in man.get("finetune", {}).items()}}
    out = {}
    for run, loss in man.get("loss_curves", {}).items():
        step = loss_curve_step(int(iterations.get(run) or len(loss)))
        out[run] = {"iteration": [1 + i * step for i in range(len(loss))], "loss": [float(v) for v in loss]}
    return out


def demo_is_built() -> bool:
    """True when the embedded demo of the active profile is built and intact (cheap: remembered
    while its manifest file is unchanged)."""
    return _demo_built()


def build_demo(progress: Progress | None = None) -> dict:
    """Build the embedded demo of the active profile if needed (other processes wait for the same
    build); returns its manifest."""
    return demo.build(progress=progress)


def demo_summary() -> dict:
    """Accuracy of the demo networks' own classifiers and build timings."""
    man = demo.manifest()
    return {"source_val_accuracy": man["pretrain"].get("source_val_accuracy"),
            "source_val_accuracy_by_snapshot": man["pretrain"].get("source_val_accuracy_by_snapshot", {}),
            "finetune": {k: v.get("target_detgt_test_accuracy") for k, v in man["finetune"].items()},
            "finetune_map": {k: v.get("target_detgt_test_map") for k, v in man["finetune"].items()},
            "seconds": man.get("seconds", {}), "profile": man["profile"], "built": man["built"]}


# --------------------------------------------------------------------------- real models and data in the app
# The sidebar lists :func:`models` and :func:`tasks`: the demo's, plus what is registered here, from
# Python, from the sidebar's "Your models and data" box, or from the settings that name the user's
# models and data (core.config.USER_DATA_SETTINGS: FILTERSCOPE_MODELS, _VOC, _VOC_2012, _SUN397,
# _IMAGEFOLDER), registered once per distinct value.
_MODELS: dict[str, str] = {}
_ENV_STATE: dict[str, Any] = {"seen": None, "errors": []}


def register_model(model_id: str, title: str | None = None) -> str:
    """Make a model selectable on every page: ``tv:<arch>`` (torch hub cache or random init) or
    ``tv:<arch>@<local weights file>``. It is loaded now, so a bad id, a wrong architecture or a
    damaged file fails here with an :class:`InputError` naming the problem."""
    model_id = model_id.strip()
    lm = load_model(model_id)
    w = lm.spec.weights
    run = lm.spec.extra.get("series_steps")
    title = title or (f"{lm.spec.arch} · {w.source}" + (f" · {Path(w.path).name} ({w.short_hash})" if w.path else "")
                      + (f" · series of {len(run)} checkpoints, steps {run[0]}-{run[-1]}" if run else ""))
    with _LOCK:
        _MODELS[model_id] = title
    return model_id


def register_voc(root: str, with_2012: bool = False) -> list[TaskSpec]:
    """PASCAL VOC 2007 from a local VOCdevkit as three tasks: image classification (PASCAL-CLS,
    trainval -> test), ground-truth box crops (PASCAL-DET-GT) and R-CNN detection (PASCAL-DET;
    ``with_2012`` adds VOC 2012 trainval to its training set, the paper's DET+DATA)."""
    root = str(Path(root).expanduser())
    out = []
    for view, kind, paper, title in (("cls", "cls", "PASCAL-CLS", "classification (multi-label)"),
                                     ("det-gt", "det-gt", "PASCAL-DET-GT", "ground-truth box crops (DET-GT)")):
        t = TaskSpec(f"voc07-{view}", f"VOC 2007 test · {title}", f"voc2007:{root}:trainval:{view}",
                     f"voc2007:{root}:test:{view}", kind, paper)
        load_set(t.train), load_set(t.test)  # checks the folders and annotations now
        register_task(t)
        out.append(t)
    out.append(register_voc_detection(root, with_2012=with_2012))
    return out


def register_voc_detection(root: str, with_2012: bool = False) -> TaskSpec:
    """Register PASCAL-DET on a local VOCdevkit: train VOC 2007 trainval (+ VOC 2012 trainval with
    ``with_2012``, the paper's PASCAL-DET+DATA), test VOC 2007 test. Checks the folders now."""
    train = f"voc0712:{root}" if with_2012 else f"voc2007:{root}:trainval"
    load_detection(train), load_detection(f"voc2007:{root}:test")
    t = TaskSpec("voc07-det+data" if with_2012 else "voc07-det",
                 "VOC 2007 test · detection" + (" (trained on 07+12 trainval)" if with_2012 else ""),
                 train, f"voc2007:{root}:test", "det", "PASCAL-DET+DATA" if with_2012 else "PASCAL-DET")
    register_task(t)
    return t


def register_sun397(root: str) -> TaskSpec:
    """Register SUN-CLS on a local SUN397 copy (all images pooled; official partitions when present)."""
    load_set(f"sun397:{root}")
    t = TaskSpec("sun397", "SUN397 · scene classification", f"sun397:{root}", f"sun397:{root}", "scene", "SUN-CLS")
    register_task(t)
    return t


def register_imagefolder(root: str) -> TaskSpec:
    """An ImageFolder tree with ``<root>/train/<class>/...`` and ``<root>/test/<class>/...`` as a
    single-label task (every analysis that needs one label per item works on it)."""
    base = Path(root).expanduser()
    missing = [s for s in ("train", "test") if not (base / s).is_dir()]
    if missing:
        raise InputError(f"ImageFolder task {base}: missing sub-folder(s) {', '.join(missing)}; expected "
                         f"{base}/train/<class>/<image> and {base}/test/<class>/<image>")
    t = TaskSpec(f"imagefolder-{base.name}", f"{base.name} · ImageFolder (train -> test)",
                 f"imagefolder:{base / 'train'}", f"imagefolder:{base / 'test'}", "other", "")
    tr, te = load_set(t.train), load_set(t.test)
    if tuple(tr.class_names) != tuple(te.class_names):
        raise InputError(f"ImageFolder task {base}: train and test have different class folders "
                         f"({len(tr.class_names)} vs {len(te.class_names)}); use the same classes in both")
    register_task(t)
    return t


def configure_from_env(environ: Any = None) -> list[str]:
    """Register the models and data named by the ``FILTERSCOPE_*`` variables (once per distinct
    setting). Never raises: each problem becomes a message in :func:`config_errors`."""
    seen = tuple(config.user_data(environ).values())
    with _LOCK:
        if _ENV_STATE["seen"] == seen:
            return list(_ENV_STATE["errors"])
        _ENV_STATE["seen"] = seen
    errors: list[str] = []
    models_s, voc, voc12, sun, folder = seen
    jobs: list[tuple[str, Callable[[], Any]]] = [
        (f"FILTERSCOPE_MODELS: {m}", lambda m=m: register_model(m)) for m in models_s.split(",") if m.strip()]
    if voc:
        jobs.append((f"FILTERSCOPE_VOC={voc}", lambda: register_voc(voc, with_2012=voc12 not in ("", "0", "no"))))
    if sun:
        jobs.append((f"FILTERSCOPE_SUN397={sun}", lambda: register_sun397(sun)))
    if folder:
        jobs.append((f"FILTERSCOPE_IMAGEFOLDER={folder}", lambda: register_imagefolder(folder)))
    for label, job in jobs:
        try:
            job()
        except (InputError, DataMissingError, OSError) as exc:
            errors.append(f"{label}: {exc}")
    with _LOCK:
        _ENV_STATE["errors"] = errors
    return errors


def config_errors() -> list[str]:
    """Problems found in the ``FILTERSCOPE_*`` settings (shown by the app's sidebar)."""
    configure_from_env()
    with _LOCK:
        return list(_ENV_STATE["errors"])
