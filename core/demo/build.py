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
from dataclasses import asdict, replace
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image

from core import analysis
from core.data.datasets import (DATASETS, FASHION_SOURCE_CLASSES, FASHION_TARGET_CLASSES, RCNN_CONTEXT_PAD,
                                RCNN_CROP_SIZE, ArrayImageSet, ImageSet, ensure_fashion_mnist, load_dataset,
                                read_fashion_mnist, warp_box)
from core.data.models import MODEL_KINDS, LoadedModel, build_demo, sha256_file
from core.demo import scenes, source_net
from core.demo.mosaics import fashion_mosaics, fashion_pool
from core.demo.profiles import (DEMO_FORMAT, DEMO_SETS, MEAN, PROFILES, STD, DemoConfig, class_names, config_hash,
                                demo_dir, new_net, profile_name)
from core.demo.training import TrainConfig, accuracy, predict, train
from core.errors import CacheCorruptError, DataMissingError, InputError
from core.hashing import code_version, stable_hash
from core.store import cache_usage
from core.tasks.rcnn import DETECTION_LOADERS, DetectionData

log = logging.getLogger(__name__)
Progress = Callable[[int, int, str], None]


def _built_manifest(profile: str) -> dict | None:
    path = demo_dir(profile) / "manifest.json"
    if not path.is_file():
        return None
    try:
        return _manifest_cached(str(path), path.stat().st_mtime)
    except (OSError, ValueError):
        return None


def is_built(profile: str | None = None) -> bool:
    """True when a complete demo built from the current code's config is there, every
    network file matching the SHA-256 its manifest records.

    A demo built by an older version (other config or format) counts as not built: the
    next build replaces it. One with a damaged or missing network file counts as not
    built too: the next build retrains only that network (:func:`damaged_files`).
    """
    profile = profile or profile_name()
    man = _built_manifest(profile)
    return (man is not None and man.get("config_hash") == config_hash(PROFILES[profile])
            and not damaged_files(profile))


def damaged_files(profile: str | None = None) -> list[Path]:
    """Network files of the built demo that are missing or whose SHA-256 differs from the
    manifest's (each file is hashed once per size and modification time)."""
    profile = profile or profile_name()
    man = _built_manifest(profile)
    if man is None:
        return []
    models = demo_dir(profile) / "models"
    return [models / name for name, digest in man.get("weights_sha256", {}).items()
            if _digest(models / name) != digest]


def _digest(path: Path) -> str | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return _digest_cached(str(path), st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=256)
def _digest_cached(path: str, _mtime_ns: int, _size: int) -> str:
    return sha256_file(path)


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
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # the kernel's lock: released even when its holder is killed
            log.warning("another process is building the demo in %s; waiting for it to finish", root)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- build steps
def _step_data(cfg: DemoConfig, root: Path, progress: Progress | None) -> None:
    """Write every split once, as uint8 .npy files (+ boxes as .npz), from the profile's ``data``."""
    class_names(cfg)  # validates cfg.data
    d = root / "data"
    d.mkdir(parents=True, exist_ok=True)
    _DATA_STEPS[cfg.data](cfg, d, progress)


def _scene_task_jobs(cfg: DemoConfig) -> list[tuple[str, Callable[[], tuple[np.ndarray, np.ndarray]]]]:
    """The procedural scene task (SUN-CLS's role), shared by every profile."""
    seed = cfg.seed
    return [
        ("scene-train", lambda: scenes.generate_scene_task(cfg.scene_train, seed + 3000, size=cfg.size,
                                                           config=cfg.target_scenes)),
        ("scene-test", lambda: scenes.generate_scene_task(cfg.scene_test, seed + 3001, size=cfg.size,
                                                          config=cfg.target_scenes)),
    ]


def _write_single(d: Path, name: str, make: Callable[[], tuple[np.ndarray, np.ndarray]]) -> None:
    if not (d / f"{name}-labels.npy").exists():
        images, labels = make()
        _save_npy(d / f"{name}-images.npy", images)
        _save_npy(d / f"{name}-labels.npy", np.asarray(labels, dtype=np.int64))


def _write_target(d: Path, split: str, size: int, make: Callable[[], scenes.TargetScenes]) -> None:
    """A target split: whole images + multi-labels, every GT box, and the DET-GT crops."""
    if (d / f"target-{split}-detgt-labels.npy").exists():
        return
    sc = make()
    _save_npy(d / f"target-{split}-images.npy", sc.images)
    _save_npy(d / f"target-{split}-labels.npy", sc.image_labels.astype(bool))
    np.savez(d / f"target-{split}-annotations.npz", **all_boxes(sc))
    crops, meta = detgt_crops(sc, size)
    _save_npy(d / f"target-{split}-detgt-images.npy", crops)
    np.savez(d / f"target-{split}-boxes.npz", **meta)
    _save_npy(d / f"target-{split}-detgt-labels.npy", meta["labels"])


def _write_cls(d: Path, name: str, make: Callable[[], scenes.TargetScenes]) -> None:
    """Whole images and their multi-labels only (the image-level task's extra training images)."""
    if not (d / f"{name}-labels.npy").exists():
        sc = make()
        _save_npy(d / f"{name}-images.npy", sc.images)
        _save_npy(d / f"{name}-labels.npy", sc.image_labels.astype(bool))


def _step_data_scenes(cfg: DemoConfig, d: Path, progress: Progress | None) -> None:
    """The procedural demo: generated source, target and scene images."""
    seed = cfg.seed
    jobs = [] if cfg.shipped_source else [
        ("source-train", lambda: scenes.generate_source(cfg.source_train, seed, size=cfg.size,
                                                        config=cfg.source_scenes))]
    jobs += [
        ("source-val", lambda: scenes.generate_source(cfg.source_val, seed + 1000, size=cfg.size,
                                                      config=cfg.source_scenes)),
        *_scene_task_jobs(cfg),
    ]
    for i, (name, make) in enumerate(jobs):
        _write_single(d, name, make)
        if progress:
            progress(i + 1, len(jobs) + 3, f"generating scenes: {name}")
    for j, (split, n, s) in enumerate((("train", cfg.target_train, 2000), ("val", cfg.target_val, 2001),
                                       ("test", cfg.target_test, 2002))):
        _write_target(d, split, cfg.size, lambda: scenes.generate_target(n, seed + s, size=cfg.size,
                                                                         config=cfg.target_scenes))
        if progress:
            progress(len(jobs) + j + 1, len(jobs) + 3, f"generating scenes: target-{split}")
    _write_cls(d, "target-clstrain", lambda: scenes.generate_target(cfg.cls_train, seed + 2003, size=cfg.size,
                                                                    config=cfg.target_scenes))


def _step_data_fashion(cfg: DemoConfig, d: Path, progress: Progress | None) -> None:
    """The real-image demo: Fashion-MNIST source items and target mosaics; the scene task stays procedural.

    Source train / val: single items of :data:`FASHION_SOURCE_CLASSES` from Fashion-MNIST's train /
    test split. Target train and val mosaics draw from disjoint parts (80% / 20%) of the train
    split's :data:`FASHION_TARGET_CLASSES` items, target test mosaics from the test split's.
    """
    ensure_fashion_mnist()
    tr_x, tr_y = read_fashion_mnist("train")
    te_x, te_y = read_fashion_mnist("test")
    seed, m, n_src, n_tgt = cfg.seed, cfg.mosaics, len(FASHION_SOURCE_CLASSES), len(FASHION_TARGET_CLASSES)
    src_tr = fashion_pool(tr_x, tr_y, FASHION_SOURCE_CLASSES, seed)
    src_te = fashion_pool(te_x, te_y, FASHION_SOURCE_CLASSES, seed + 1)
    tgt_tr = fashion_pool(tr_x, tr_y, FASHION_TARGET_CLASSES, seed + 2)
    tgt_te = fashion_pool(te_x, te_y, FASHION_TARGET_CLASSES, seed + 3)
    cut = len(tgt_tr[0]) // 5

    def source(pool: tuple[np.ndarray, np.ndarray], n: int, s: int) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
        return lambda: (fashion_mosaics(*pool, n, s, n_src, cfg.size, m, source=True).images, pool[1][:n])

    jobs = [("source-train", source(src_tr, cfg.source_train, seed)),
            ("source-val", source(src_te, cfg.source_val, seed + 1000)), *_scene_task_jobs(cfg)]
    for i, (name, make) in enumerate(jobs):
        _write_single(d, name, make)
        if progress:
            progress(i + 1, len(jobs) + 3, f"composing Fashion-MNIST: {name}")
    targets = (("train", (tgt_tr[0][cut:], tgt_tr[1][cut:]), cfg.target_train, 2000),
               ("val", (tgt_tr[0][:cut], tgt_tr[1][:cut]), cfg.target_val, 2001),
               ("test", tgt_te, cfg.target_test, 2002))
    for j, (split, pool, n, s) in enumerate(targets):
        _write_target(d, split, cfg.size, lambda: fashion_mosaics(*pool, n, seed + s, n_tgt, cfg.size, m))
        if progress:
            progress(len(jobs) + j + 1, len(jobs) + 3, f"composing Fashion-MNIST: target-{split}")
    _write_cls(d, "target-clstrain", lambda: fashion_mosaics(tgt_tr[0][cut:], tgt_tr[1][cut:], cfg.cls_train,
                                                             seed + 2003, n_tgt, cfg.size, m))


_DATA_STEPS: dict[str, Callable[[DemoConfig, Path, Progress | None], None]] = {
    "scenes": _step_data_scenes, "fashion-mnist": _step_data_fashion}


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


def _step_pretrain(cfg: DemoConfig, root: Path, progress: Progress | None) -> dict:
    """The source network and its snapshots in ``models/``: the shipped, verified files
    (``cfg.shipped_source``, see :mod:`core.demo.source_net`) or pretrained here on the build's data."""
    m = root / "models"
    m.mkdir(exist_ok=True)
    metrics_path = m / "pretrain.json"
    if metrics_path.exists():
        return json.loads(metrics_path.read_text())
    if cfg.shipped_source:
        metrics = source_net.install(cfg, m)
    else:
        data = {"train": _load_split(root, "source-train"), "val": _load_split(root, "source-val")}
        metrics = source_net.metrics(source_net.train_source(cfg, m, data, progress), "this build")
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
    n_cls = len(class_names(cfg)["target"])
    out = {}
    for name, (init, sched) in _finetune_runs(cfg).items():
        metrics_path = m / f"{name}.json"
        if metrics_path.exists():
            out[name] = json.loads(metrics_path.read_text())
            continue
        if init is None:
            net = new_net(cfg, n_cls, cfg.seed + 7)
        else:
            net = new_net(cfg, len(class_names(cfg)["source"]), cfg.seed)
            net.load_state_dict(torch.load(m / init, map_location="cpu", weights_only=True))
            net.replace_classifier(n_cls, seed=cfg.seed + 11)
        stats = train(net, x, y, sched, mean=MEAN, std=STD, progress=progress, desc=f"fine-tuning: {name}")
        _save_state(m / f"{name}.pt", net)
        probs = predict(net, np.asarray(xt), mean=MEAN, std=STD)
        stats["target_detgt_test_accuracy"] = accuracy(probs, yt)
        stats["target_detgt_test_map"] = float(np.nanmean(np.diag(analysis.class_filter_ap(probs, yt, n_cls))))
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
    partial = final.with_name(f"{final.name}.partial-{key}")
    if not force and is_built(profile):  # nothing to write (nor to lock: the cache may be read-only)
        return manifest(profile)
    with _build_lock(final):
        built_at = None
        if final.exists() and (force or not is_built(profile)):
            built_at = None if force else _reopen_for_repair(profile, final, partial)
            if built_at is None:
                if not force:
                    log.warning("the demo in %s was built by another version (config changed); rebuilding it",
                                final)
                shutil.rmtree(final)
        if is_built(profile):
            return manifest(profile)
        for stale in final.parent.glob(f"{final.name}.partial*"):  # half builds of other configs
            if stale.name != partial.name:
                shutil.rmtree(stale, ignore_errors=True)
        partial.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        _step_data(cfg, partial, progress)
        t_data = time.perf_counter() - t0
        pre = _step_pretrain(cfg, partial, progress)
        fts = _step_finetune(cfg, partial, progress)
        info = {"format": DEMO_FORMAT, "profile": profile, "config_hash": key, "config": _jsonable_cfg(cfg),
                "code_version": code_version(), "built": built_at or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "weights_sha256": {p.name: sha256_file(p) for p in sorted((partial / "models").glob("*.pt"))},
                "seconds": {"data": t_data, "total_training": time.perf_counter() - t0},
                "pretrain": {k: v for k, v in pre.items() if k != "loss_curve"},
                "finetune": {k: {kk: vv for kk, vv in v.items() if kk != "loss_curve"} for k, v in fts.items()},
                "loss_curves": {"pretrain": pre.get("loss_curve", []),
                                **{k: v.get("loss_curve", []) for k, v in fts.items()}},
                "classes": class_names(cfg), "data": cfg.data,
                "scenes": scenes.describe()}
        _save_json(partial / "manifest.json", info)
        os.replace(partial, final)
        gone = cache_usage.prune()  # features of the build this one replaced
        if gone:
            log.warning("removed %d stale cache folder(s) of replaced demo builds (%.0f MB)", len(gone),
                        sum(i.bytes for i in gone) / 1e6)
        return info


def _reopen_for_repair(profile: str, final: Path, partial: Path) -> str | None:
    """A built demo of the current config whose only fault is damaged network files: move
    it back to ``partial`` without those files (and the records saying they were made) so
    the build steps redo just them. Returns the build's timestamp (kept, so the datasets'
    fingerprints and every stored feature and result stay valid), None if not repairable."""
    man = _built_manifest(profile)
    bad = damaged_files(profile)
    if man is None or man.get("config_hash") != config_hash(PROFILES[profile]) or not bad:
        return None
    for p in bad:
        log.warning("demo network file %s is missing or does not match the SHA-256 in %s; rebuilding that "
                    "network only", p, final / "manifest.json")
    shutil.rmtree(partial, ignore_errors=True)
    os.replace(final, partial)
    models = partial / "models"
    for p in bad:
        (models / p.name).unlink(missing_ok=True)
        source = p.stem == "pretrained" or p.stem.startswith("snapshot-")
        (models / ("pretrain.json" if source else f"{p.stem}.json")).unlink(missing_ok=True)
    (partial / "manifest.json").unlink()
    return man["built"]


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
    lm = build_demo(num_classes=len(names), weights=demo_dir(profile) / "models" / f"{variant}.pt",
                    name=model_id, class_names=tuple(names), cfg=PROFILES[man["profile"]].net,
                    extra={"demo_profile": man["profile"]})
    want = man.get("weights_sha256", {}).get(f"{variant}.pt")
    if want is not None and lm.spec.weights.sha256 != want:
        raise CacheCorruptError(f"demo network file {lm.spec.weights.path} does not match the SHA-256 in "
                                f"{demo_dir(profile) / 'manifest.json'}: run `python -m core demo` (or reload the "
                                f"app) to rebuild that network")
    return lm


def _demo_factory(rest: str, **_kw) -> ImageSet:
    profile, _, name = rest.rpartition("/")
    if name not in DEMO_SETS:
        raise InputError(f"unknown demo dataset 'demo:{rest}'; known: {', '.join('demo:' + k for k in DEMO_SETS)}")
    root = demo_dir(profile or None)
    man = manifest(profile or None)
    images, labels = _load_split(root, name)
    return ArrayImageSet(f"demo:{name}", images, labels, man["classes"][DEMO_SETS[name]],
                         fingerprint=stable_hash("demo", man["profile"], man["built"], name))


def _demo_detection(rest: str) -> DetectionData:
    """Whole images and every ground-truth box of ``demo:target-{train,val,test}``."""
    profile, _, name = rest.rpartition("/")
    if name not in ("target-train", "target-val", "target-test"):
        raise InputError(f"demo detection data exists for demo:target-train, -val and -test, not demo:{rest}")
    path = demo_dir(profile or None) / "data" / f"{name}-annotations.npz"
    if not path.is_file():
        raise DataMissingError(f"{path} is missing: rebuild the demo (`python -m core demo --force`), "
                               "which stores every ground-truth box per target split")
    with np.load(path) as z:
        ann = {k: z[k] for k in ("boxes", "labels", "difficult", "image_index")}
    return DetectionData(load_dataset(f"demo:{rest}"), ann["boxes"].astype(np.float32),
                         ann["labels"].astype(np.int64), ann["difficult"].astype(bool),
                         ann["image_index"].astype(np.int64))


# The demo's entries in the registries of model kinds, datasets and detection loaders: ``demo:<variant>``,
# ``demo:<split>`` and ``demo:target-<split>`` resolve once this module is imported (the service's
# catalog imports it).
MODEL_KINDS.register("demo", lambda rest: load_demo_model(f"demo:{rest}"))
DATASETS.register("demo", _demo_factory)
DETECTION_LOADERS.register("demo", _demo_detection)
