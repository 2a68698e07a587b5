"""The embedded demo: generated scenes, a small AlexNet-shaped net, snapshots, fine-tuned variants.

Mirrors the paper's setting on a 2-core CPU: pretrain on a many-class "source" task
(ImageNet's role), then fine-tune on a small multi-object "target" task (PASCAL's
role) three ways (full ft, fc-only ft, from scratch). Everything is deterministic for
a seed and uses fixed iteration counts.

The build writes into ``<cache>/demo/<profile>.partial`` step by step (each step's
files are written atomically, so a killed build resumes at the first missing step)
and renames it to ``<cache>/demo/<profile>`` only when complete: the app never sees
a half-built demo. A file lock makes concurrent builds wait for each other.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from core import scenes
from core.config import cache_root, code_version, stable_hash
from PIL import Image

from core.datasets import RCNN_CONTEXT_PAD, RCNN_CROP_SIZE, ArrayImageSet, ImageSet, register_dataset, warp_box
from core.errors import DataMissingError, InputError
from core.models import DemoNetConfig, LoadedModel, build_demo, PAPER_LAYERS
from core.training import TrainConfig, accuracy, init_weights, predict, train

log = logging.getLogger(__name__)
Progress = Callable[[int, int, str], None]
DEMO_FORMAT = 2
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


@dataclass(frozen=True)
class DemoConfig:
    """Sizes and schedules of one demo profile (``full`` for users, ``tiny`` for tests)."""

    profile: str = "full"
    seed: int = 0
    size: int = 64
    source_train: int = 16000
    source_val: int = 2000
    target_train: int = 1200
    target_val: int = 300
    target_test: int = 800
    scene_train: int = 1200
    scene_test: int = 800
    #: Pretraining uses AdamW (lr 1e-3): plain SGD stayed at chance for 250 iterations on the
    #: cluttered 48-class source task, and the build must finish in minutes on 2 cores.
    pretrain: TrainConfig = TrainConfig(iterations=500, batch_size=128, lr=1e-3, lr_steps=(400,),
                                        weight_decay=1e-4, optimizer="adamw",
                                        snapshots=(0, 25, 50, 100, 200, 350, 500))
    #: Fine-tuning as the paper, scaled: lr 1/10 of pretraining's, divided by 10 at a fixed step.
    finetune: TrainConfig = TrainConfig(iterations=200, batch_size=64, lr=1e-4, lr_steps=(150,), seed=1,
                                        weight_decay=1e-4, optimizer="adamw")
    scratch: TrainConfig = TrainConfig(iterations=200, batch_size=64, lr=1e-3, lr_steps=(150,), seed=1,
                                       weight_decay=1e-4, optimizer="adamw")
    net: DemoNetConfig = DemoNetConfig()
    #: snapshots from which extra fine-tunings run (Table 4); the final one is "finetuned"
    finetune_from: tuple[int, ...] = (100,)
    #: difficulty of the source (ImageNet's role: one dominant, larger object, light clutter)
    #: and of the target / scene tasks (PASCAL's role: cluttered, occluded, 1-4 objects)
    source_scenes: scenes.SceneConfig = scenes.SceneConfig(clutter=0.4, occlusion=0.2, distractor_prob=0.15,
                                                           source_min_scale=24.0, jitter=0.6, noise=4.0)
    target_scenes: scenes.SceneConfig = scenes.SceneConfig()


PROFILES = {
    "full": DemoConfig(),
    "tiny": DemoConfig(profile="tiny", source_train=1024, source_val=128, target_train=160, target_val=40,
                       target_test=120, scene_train=120, scene_test=120,
                       pretrain=TrainConfig(iterations=24, batch_size=64, lr=1e-3, lr_steps=(18,),
                                            optimizer="adamw", snapshots=(0, 8, 24)),
                       finetune=TrainConfig(iterations=12, batch_size=32, lr=1e-4, seed=1, optimizer="adamw"),
                       scratch=TrainConfig(iterations=12, batch_size=32, lr=1e-3, seed=1, optimizer="adamw"),
                       finetune_from=(8,)),
}


def profile_name() -> str:
    """Active profile: ``$FILTERSCOPE_DEMO`` (``full`` by default)."""
    name = os.environ.get("FILTERSCOPE_DEMO", "full")
    if name not in PROFILES:
        raise InputError(f"FILTERSCOPE_DEMO={name!r} is not a demo profile; use one of {', '.join(PROFILES)}")
    return name


def demo_dir(profile: str | None = None) -> Path:
    return cache_root() / "demo" / (profile or profile_name())


def config_hash(cfg: DemoConfig) -> str:
    """Identity of a demo build: its format, the scene renderer's version and the whole config."""
    return stable_hash(DEMO_FORMAT, scenes.SCENES_VERSION, cfg)


def _built_manifest(profile: str) -> dict | None:
    path = demo_dir(profile) / "manifest.json"
    if not path.is_file():
        return None
    try:
        return _manifest_cached(str(path), path.stat().st_mtime)
    except (OSError, ValueError):
        return None


def is_built(profile: str | None = None) -> bool:
    """True when a complete demo built from the current code's config is there.

    A demo built by an older version (other config or format) counts as not built: the
    next build replaces it.
    """
    profile = profile or profile_name()
    man = _built_manifest(profile)
    return man is not None and man.get("config_hash") == config_hash(PROFILES[profile])


@lru_cache(maxsize=4)
def _manifest_cached(path: str, mtime: float) -> dict:
    return json.loads(Path(path).read_text())


def manifest(profile: str | None = None) -> dict:
    path = demo_dir(profile) / "manifest.json"
    if not path.is_file():
        raise DataMissingError("the embedded demo is not built yet: run `make run` or `python -m core demo`.")
    return _manifest_cached(str(path), path.stat().st_mtime)


# --------------------------------------------------------------------------- small IO helpers
def _save_npy(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        np.save(fh, arr)
    os.replace(tmp, path)


def _save_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


def _save_state(path: Path, net: torch.nn.Module) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save({k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}, tmp)
    os.replace(tmp, path)


@contextlib.contextmanager
def _build_lock(root: Path) -> Iterator[None]:
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- build steps
def _step_data(cfg: DemoConfig, root: Path, progress: Progress | None) -> None:
    """Generate every split once, as uint8 .npy files (+ boxes as .npz)."""
    d = root / "data"
    d.mkdir(parents=True, exist_ok=True)
    seed = cfg.seed
    jobs = [
        ("source-train", lambda: scenes.generate_source(cfg.source_train, seed, size=cfg.size,
                                                        config=cfg.source_scenes)),
        ("source-val", lambda: scenes.generate_source(cfg.source_val, seed + 1000, size=cfg.size,
                                                      config=cfg.source_scenes)),
        ("scene-train", lambda: scenes.generate_scene_task(cfg.scene_train, seed + 3000, size=cfg.size,
                                                           config=cfg.target_scenes)),
        ("scene-test", lambda: scenes.generate_scene_task(cfg.scene_test, seed + 3001, size=cfg.size,
                                                          config=cfg.target_scenes)),
    ]
    for i, (name, make) in enumerate(jobs):
        if not (d / f"{name}-labels.npy").exists():
            images, labels = make()
            _save_npy(d / f"{name}-images.npy", images)
            _save_npy(d / f"{name}-labels.npy", np.asarray(labels, dtype=np.int64))
        if progress:
            progress(i + 1, len(jobs) + 3, f"generating scenes: {name}")
    for j, (split, n, s) in enumerate((("train", cfg.target_train, 2000), ("val", cfg.target_val, 2001),
                                       ("test", cfg.target_test, 2002))):
        if not (d / f"target-{split}-detgt-labels.npy").exists():
            sc = scenes.generate_target(n, seed + s, size=cfg.size, config=cfg.target_scenes)
            _save_npy(d / f"target-{split}-images.npy", sc.images)
            _save_npy(d / f"target-{split}-labels.npy", sc.image_labels.astype(bool))
            np.savez(d / f"target-{split}-annotations.npz", **all_boxes(sc))
            crops, meta = detgt_crops(sc, cfg.size)
            _save_npy(d / f"target-{split}-detgt-images.npy", crops)
            np.savez(d / f"target-{split}-boxes.npz", **meta)
            _save_npy(d / f"target-{split}-detgt-labels.npy", meta["labels"])
        if progress:
            progress(len(jobs) + j + 1, len(jobs) + 3, f"generating scenes: target-{split}")


def all_boxes(sc) -> dict:
    """Every ground-truth box of generated scenes, difficult ones included (VOC-style
    annotations for detection evaluation): ``boxes`` float32 ``[B, 4]``, ``labels``,
    ``difficult`` and ``image_index`` ``[B]``."""
    index = np.concatenate([np.full(len(b), i, np.int64) for i, b in enumerate(sc.boxes)] or [np.zeros(0, np.int64)])
    return {"boxes": np.concatenate(sc.boxes).astype(np.float32).reshape(-1, 4),
            "labels": np.concatenate(sc.box_labels).astype(np.int64),
            "difficult": np.concatenate(sc.difficult).astype(bool), "image_index": index}


def detgt_crops(sc, size: int) -> tuple[np.ndarray, dict]:
    """The DET-GT view of generated scenes: every non-difficult ground-truth box, cropped with
    R-CNN's warp geometry (same code as the VOC loader; context padding 16 px at 227 scaled to
    ``size``) and warped to ``size`` x ``size``."""
    pad = max(1, round(RCNN_CONTEXT_PAD * size / RCNN_CROP_SIZE))
    crops, labels, index, boxes = [], [], [], []
    for i, (img, bxs, lbs, dif) in enumerate(zip(sc.images, sc.boxes, sc.box_labels, sc.difficult)):
        pil = Image.fromarray(img)
        for box, lab, d in zip(bxs, lbs, dif):
            if d:
                continue
            crops.append(np.asarray(warp_box(pil, box, size, pad)))
            labels.append(int(lab)), index.append(i), boxes.append(box)
    meta = {"labels": np.asarray(labels, np.int64), "image_index": np.asarray(index, np.int64),
            "boxes": np.asarray(boxes, np.float32).reshape(-1, 4)}
    return np.stack(crops).astype(np.uint8), meta


def _load_split(root: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    d = root / "data"
    return np.load(d / f"{name}-images.npy", mmap_mode="r"), np.load(d / f"{name}-labels.npy")


def _new_net(cfg: DemoConfig, num_classes: int, seed: int) -> torch.nn.Module:
    net = build_demo(num_classes=num_classes, cfg=cfg.net).net
    init_weights(net, seed)
    return net


def _step_pretrain(cfg: DemoConfig, root: Path, progress: Progress | None) -> dict:
    m = root / "models"
    m.mkdir(exist_ok=True)
    metrics_path = m / "pretrain.json"
    if metrics_path.exists():
        return json.loads(metrics_path.read_text())
    x, y = _load_split(root, "source-train")
    xv, yv = _load_split(root, "source-val")
    net = _new_net(cfg, len(scenes.SOURCE_CLASS_NAMES), cfg.seed)
    snaps: dict[str, float] = {}

    def on_snapshot(it: int, n: torch.nn.Module) -> None:
        _save_state(m / f"snapshot-{it:05d}.pt", n)
        snaps[str(it)] = accuracy(predict(n, np.asarray(xv), mean=MEAN, std=STD), yv)

    stats = train(net, x, y, cfg.pretrain, mean=MEAN, std=STD, on_snapshot=on_snapshot,
                  progress=progress, desc="pretraining on source scenes")
    _save_state(m / "pretrained.pt", net)
    metrics = {**stats, "source_val_accuracy_by_snapshot": snaps,
               "source_val_accuracy": snaps[str(cfg.pretrain.iterations)]}
    _save_json(metrics_path, metrics)
    return metrics


def _finetune_runs(cfg: DemoConfig) -> dict[str, tuple[str | None, TrainConfig]]:
    """name -> (initial weights file or None for scratch, schedule)."""
    runs = {"finetuned": ("pretrained.pt", cfg.finetune),
            "fc-finetuned": ("pretrained.pt", replace(cfg.finetune, freeze_conv=True)),
            "scratch": (None, cfg.scratch)}
    for it in cfg.finetune_from:
        runs[f"finetuned-from-{it:05d}"] = (f"snapshot-{it:05d}.pt", cfg.finetune)
    return runs


def _step_finetune(cfg: DemoConfig, root: Path, progress: Progress | None) -> dict:
    m = root / "models"
    x, y = _load_split(root, "target-train-detgt")
    xt, yt = _load_split(root, "target-test-detgt")
    n_cls = len(scenes.TARGET_CLASS_NAMES)
    out = {}
    for name, (init, sched) in _finetune_runs(cfg).items():
        metrics_path = m / f"{name}.json"
        if metrics_path.exists():
            out[name] = json.loads(metrics_path.read_text())
            continue
        if init is None:
            net = _new_net(cfg, n_cls, cfg.seed + 7)
        else:
            net = _new_net(cfg, len(scenes.SOURCE_CLASS_NAMES), cfg.seed)
            net.load_state_dict(torch.load(m / init, map_location="cpu", weights_only=True))
            net.replace_classifier(n_cls, seed=cfg.seed + 11)
        stats = train(net, x, y, sched, mean=MEAN, std=STD, progress=progress, desc=f"fine-tuning: {name}")
        _save_state(m / f"{name}.pt", net)
        probs = predict(net, np.asarray(xt), mean=MEAN, std=STD)
        stats["target_detgt_test_accuracy"] = accuracy(probs, yt)
        stats["init"] = init or "random"
        _save_json(metrics_path, stats)
        out[name] = stats
    return out


def build(profile: str | None = None, *, progress: Progress | None = None, force: bool = False) -> dict:
    """Build the demo (idempotent). Returns its manifest."""
    profile = profile or profile_name()
    cfg = PROFILES[profile]
    final = demo_dir(profile)
    key = config_hash(cfg)
    with _build_lock(final):
        if final.exists() and (force or not is_built(profile)):
            if not force:
                log.warning("the demo in %s was built by another version (config changed); rebuilding it", final)
            shutil.rmtree(final)
        if is_built(profile):
            return manifest(profile)
        for stale in final.parent.glob(f"{final.name}.partial*"):  # half builds of other configs
            if stale.name != f"{final.name}.partial-{key}":
                shutil.rmtree(stale, ignore_errors=True)
        partial = final.with_name(f"{final.name}.partial-{key}")
        partial.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        _step_data(cfg, partial, progress)
        t_data = time.perf_counter() - t0
        pre = _step_pretrain(cfg, partial, progress)
        fts = _step_finetune(cfg, partial, progress)
        info = {"format": DEMO_FORMAT, "profile": profile, "config_hash": key, "config": _jsonable_cfg(cfg),
                "code_version": code_version(), "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "seconds": {"data": t_data, "total_training": time.perf_counter() - t0},
                "pretrain": {k: v for k, v in pre.items() if k != "loss_curve"},
                "finetune": {k: {kk: vv for kk, vv in v.items() if kk != "loss_curve"} for k, v in fts.items()},
                "loss_curves": {"pretrain": pre.get("loss_curve", []),
                                **{k: v.get("loss_curve", []) for k, v in fts.items()}},
                "classes": {"source": list(scenes.SOURCE_CLASS_NAMES), "target": list(scenes.TARGET_CLASS_NAMES),
                            "scene": list(scenes.SCENE_CLASS_NAMES)},
                "scenes": scenes.describe()}
        _save_json(partial / "manifest.json", info)
        os.replace(partial, final)
        return info


def _jsonable_cfg(cfg: DemoConfig) -> dict:
    return json.loads(json.dumps(asdict(cfg), default=str))


# --------------------------------------------------------------------------- catalog
def demo_models(profile: str | None = None) -> dict[str, str]:
    """Model id -> title for every demo network."""
    man = manifest(profile)
    out = {"demo:pretrained": "Demo net, pretrained on source scenes",
           "demo:finetuned": "Demo net, fine-tuned (all layers)",
           "demo:fc-finetuned": "Demo net, fine-tuned fc6-fc7 only",
           "demo:scratch": "Demo net, trained from scratch on target"}
    for it in man["config"]["finetune_from"]:
        out[f"demo:finetuned-from-{it:05d}"] = f"Demo net, fine-tuned from pretraining snapshot {it}"
    for it in man["config"]["pretrain"]["snapshots"]:
        out[f"demo:snapshot-{it:05d}"] = f"Demo net, pretraining snapshot at iteration {it}"
    return out


def snapshot_iterations(profile: str | None = None) -> list[int]:
    return list(manifest(profile)["config"]["pretrain"]["snapshots"])


def load_demo_model(model_id: str, profile: str | None = None) -> LoadedModel:
    variant = model_id.removeprefix("demo:")
    known = demo_models(profile)
    if model_id not in known:
        raise InputError(f"unknown demo model '{model_id}'; known: {', '.join(known)}")
    man = manifest(profile)
    target = variant not in ("pretrained",) and not variant.startswith("snapshot-")
    names = man["classes"]["target" if target else "source"]
    return build_demo(num_classes=len(names), weights=demo_dir(profile) / "models" / f"{variant}.pt",
                      name=model_id, class_names=tuple(names), cfg=PROFILES[man["profile"]].net,
                      extra={"demo_profile": man["profile"]})


DEMO_SETS = {
    "target-train": "target", "target-val": "target", "target-test": "target",
    "target-train-detgt": "target", "target-val-detgt": "target", "target-test-detgt": "target",
    "scene-train": "scene", "scene-test": "scene", "source-val": "source",
}


def _demo_factory(rest: str, **_kw) -> ImageSet:
    profile, _, name = rest.rpartition("/")
    if name not in DEMO_SETS:
        raise InputError(f"unknown demo dataset 'demo:{rest}'; known: {', '.join('demo:' + k for k in DEMO_SETS)}")
    root = demo_dir(profile or None)
    man = manifest(profile or None)
    images, labels = _load_split(root, name)
    return ArrayImageSet(f"demo:{name}", images, labels, man["classes"][DEMO_SETS[name]],
                         fingerprint=stable_hash("demo", man["profile"], man["built"], name))


register_dataset("demo", _demo_factory)


def demo_tasks(profile: str | None = None) -> list:
    from core.service import TaskSpec

    return [
        TaskSpec("demo-detgt", "Demo target · ground-truth box crops (DET-GT)", "demo:target-train-detgt",
                 "demo:target-test-detgt", "det-gt", "PASCAL-DET-GT"),
        TaskSpec("demo-cls", "Demo target · whole images, multi-label (CLS)", "demo:target-train",
                 "demo:target-test", "cls", "PASCAL-CLS"),
        TaskSpec("demo-scene", "Demo scenes · scene classification", "demo:scene-train", "demo:scene-test",
                 "scene", "SUN-CLS"),
        TaskSpec("demo-det", "Demo target · object detection (R-CNN on windows)", "demo:target-train",
                 "demo:target-test", "det", "PASCAL-DET"),
    ]
