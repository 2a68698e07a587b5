"""The demo's pretrained source network: trained once, shipped with the code, verified on use.

Reproduces: the pretraining of Agrawal, Girshick & Malik (ECCV 2014), Sec. 2.3 / 3.3 (a
network trained on a large source task, ImageNet's role, with snapshots along the way for
Table 3, Table 4 and Fig. 2), scaled to the procedural demo. Deviations: AdamW instead of
SGD, 64 px procedural scenes, tens of minutes on 2 CPU cores instead of a week on a GPU.

Pretraining long enough to give transferable features takes far longer than a user's first
run should, so ``python -m core demo --train-source`` trains it once (seeded, deterministic
on the CPU) and writes into ``weights/demo/<profile>/``:

- ``pretrained.pt`` (the final iterate) and ``snapshot-NNNNN.pt`` per snapshot: float16 state
  dicts (plain tensors, loaded with ``weights_only=True``);
- ``manifest.json``: SHA-256 and size of each file, the source config and its hash, source
  train / val accuracy of every snapshot (measured on the float16 weights as shipped), the
  loss curve, code version and wall time.

The demo build (:func:`install`) checks every file against the manifest and the manifest's
source config against the current code's before copying the files into the build: a missing,
altered or stale file stops the build with a message naming it and the retrain command.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from core.config import source_weights_dir
from core.data.models import sha256_file
from core.demo import scenes
from core.demo.profiles import MEAN, STD, DemoConfig, class_names, new_net
from core.demo.training import accuracy, predict, train
from core.errors import DataMissingError, InputError
from core.hashing import code_version, stable_hash

Progress = Callable[[int, int, str], None]
FORMAT = 1
#: images of the training set scored at each snapshot (the train accuracy's sample)
TRAIN_ACCURACY_SAMPLE = 2000


def shipped_root() -> Path:
    """Folder of the shipped source networks: ``$FILTERSCOPE_SOURCE_WEIGHTS`` or ``weights/demo``."""
    return source_weights_dir()


def shipped_dir(profile: str) -> Path:
    return shipped_root() / profile


def retrain_command(profile: str) -> str:
    return f"python -m core demo --train-source --profile {profile}"


def source_config(cfg: DemoConfig) -> dict:
    """Everything that determines the source network (its identity, stored in the manifest)."""
    keep = ("seed", "size", "source_train", "source_val", "pretrain", "net", "source_scenes", "data")
    view = {k: v for k, v in asdict(cfg).items() if k in keep}
    return json.loads(json.dumps({**view, "scenes_version": scenes.SCENES_VERSION}, default=str))


def source_hash(cfg: DemoConfig) -> str:
    return stable_hash("demo-source", FORMAT, source_config(cfg))


def snapshot_file(iteration: int) -> str:
    return f"snapshot-{iteration:05d}.pt"


def _half_state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with floating tensors as contiguous float16 copies (what is shipped)."""
    return {k: (v.detach().to(torch.float16) if v.is_floating_point() else v.detach()).clone().contiguous()
            for k, v in net.state_dict().items()}


def _save(path: Path, state: dict[str, torch.Tensor]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- data
def _scene_chunk(args: tuple) -> tuple[np.ndarray, np.ndarray]:
    n, seed, size, start, config = args
    return scenes.generate_source(n, seed, size=size, start=start, config=config)


def generate_source_scenes(n: int, seed: int, cfg: DemoConfig, workers: int = 2,
                           progress: Progress | None = None, chunk: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """``n`` procedural source images of ``seed`` made in ``workers`` processes (item ``i``
    depends only on ``(seed, i)``, so the result equals one ``generate_source`` call)."""
    jobs = [(min(chunk, n - s), seed, cfg.size, s, cfg.source_scenes) for s in range(0, n, chunk)]
    images = np.empty((n, cfg.size, cfg.size, 3), np.uint8)
    labels = np.empty(n, np.int64)
    with ProcessPoolExecutor(max(1, workers)) as pool:
        for i, ((m, _, _, start, _), (x, y)) in enumerate(zip(jobs, pool.map(_scene_chunk, jobs))):
            images[start:start + m], labels[start:start + m] = x, y
            if progress:
                progress(i + 1, len(jobs), f"generating source scenes: {start + m} of {n}")
    return images, labels


def source_data(cfg: DemoConfig, progress: Progress | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The source task's train and val splits of a procedural profile (same seeds as the build)."""
    if cfg.data != "scenes":
        raise InputError(f"profile {cfg.profile!r} pretrains on {cfg.data} inside its own build; "
                         "--train-source is for procedural profiles (full, tiny)")
    return {"train": generate_source_scenes(cfg.source_train, cfg.seed, cfg, progress=progress),
            "val": generate_source_scenes(cfg.source_val, cfg.seed + 1000, cfg)}


# --------------------------------------------------------------------------- training
def train_source(cfg: DemoConfig, out: Path, data: dict[str, tuple[np.ndarray, np.ndarray]],
                 progress: Progress | None = None) -> dict:
    """Pretrain the demo network on the source task; write float16 weights + manifest into ``out``.

    ``data``: ``{"train": (images, labels), "val": (images, labels)}``. Each snapshot's
    source accuracies are measured on the float16 weights exactly as written. Returns the
    manifest.
    """
    out.mkdir(parents=True, exist_ok=True)
    (x, y), (xv, yv) = data["train"], data["val"]
    sample = np.sort(np.random.default_rng(cfg.seed).permutation(len(x))[:TRAIN_ACCURACY_SAMPLE])
    xs, ys = np.asarray(x[sample]), y[sample]
    n_cls = len(class_names(cfg)["source"])
    net = new_net(cfg, n_cls, cfg.seed)
    probe = new_net(cfg, n_cls, cfg.seed)
    snaps: dict[str, dict] = {}
    t0 = time.perf_counter()

    def save_and_score(n: torch.nn.Module, name: str) -> dict:
        """Write the float16 weights; score the network they load into (what is shipped)."""
        state = _half_state(n)
        _save(out / name, state)
        probe.load_state_dict(state)
        return {"file": name,
                "source_val_accuracy": accuracy(predict(probe, np.asarray(xv), mean=MEAN, std=STD), yv),
                "source_train_accuracy": accuracy(predict(probe, xs, mean=MEAN, std=STD), ys)}

    def on_snapshot(it: int, n: torch.nn.Module) -> None:
        snaps[str(it)] = save_and_score(n, snapshot_file(it))

    stats = train(net, x, y, cfg.pretrain, mean=MEAN, std=STD, on_snapshot=on_snapshot,
                  progress=progress, desc="pretraining on source scenes")
    final = save_and_score(net, "pretrained.pt")
    files = sorted(p.name for p in out.glob("*.pt"))
    man = {"format": FORMAT, "profile": cfg.profile, "source_hash": source_hash(cfg), "config": source_config(cfg),
           "classes": class_names(cfg)["source"], "code_version": code_version(),
           "trained": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "wall_seconds": time.perf_counter() - t0,
           "torch": torch.__version__, "threads": torch.get_num_threads(),
           "iterations": stats["iterations"], "final_loss": stats["final_loss"], "img_per_s": stats["img_per_s"],
           "source_val_accuracy": final["source_val_accuracy"],
           "source_train_accuracy": final["source_train_accuracy"],
           "snapshots": snaps, "loss_curve": stats["loss_curve"],
           "files": {f: {"sha256": sha256_file(out / f), "bytes": (out / f).stat().st_size} for f in files}}
    tmp = out / f".manifest.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(man, indent=1))
    os.replace(tmp, out / "manifest.json")
    return man


# --------------------------------------------------------------------------- verification and install
def verify(cfg: DemoConfig, root: Path | None = None) -> dict:
    """The shipped manifest of ``cfg``'s profile, after checking it and every file it lists.

    Raises :class:`DataMissingError` naming the missing, altered or stale file and the
    retrain command.
    """
    root = root or shipped_dir(cfg.profile)
    fix = f"Restore it from git (git checkout -- {root}) or retrain: {retrain_command(cfg.profile)}"
    path = root / "manifest.json"
    if not path.is_file():
        raise DataMissingError(f"the shipped source network of profile {cfg.profile!r} is missing: no {path}. {fix}")
    try:
        man = json.loads(path.read_text())
        files, want = man["files"], man["source_hash"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataMissingError(f"{path} is not a valid source-network manifest ({exc}). {fix}") from exc
    if want != source_hash(cfg):
        raise DataMissingError(f"the source network in {root} was trained with another config than this code's "
                               f"profile {cfg.profile!r} (source hash {want} vs {source_hash(cfg)}). "
                               f"Retrain it: {retrain_command(cfg.profile)}")
    needed = ["pretrained.pt"] + [snapshot_file(it) for it in cfg.pretrain.snapshots]
    for name in needed:
        if name not in files:
            raise DataMissingError(f"{path} lists no {name}. {fix}")
    for name, info in files.items():
        f = root / name
        if not f.is_file():
            raise DataMissingError(f"shipped weights file {f} is missing. {fix}")
        if sha256_file(f) != info["sha256"]:
            raise DataMissingError(f"shipped weights file {f} does not match its SHA-256 in {path} "
                                   f"(altered or truncated). {fix}")
    return man


def install(cfg: DemoConfig, models: Path, root: Path | None = None) -> dict:
    """Copy the verified shipped source network into a demo build's ``models`` folder.

    Returns the pretraining metrics in the build's format (``source_val_accuracy``,
    ``source_val_accuracy_by_snapshot``, ``loss_curve``, ... plus ``shipped`` provenance).
    """
    root = root or shipped_dir(cfg.profile)
    man = verify(cfg, root)
    models.mkdir(parents=True, exist_ok=True)
    for name in man["files"]:
        tmp = models / f".{name}.tmp-{os.getpid()}"
        shutil.copyfile(root / name, tmp)
        os.replace(tmp, models / name)
    return metrics(man, str(root))


def metrics(man: dict, where: str) -> dict:
    """A source manifest as the build's pretraining metrics."""
    snaps = man["snapshots"]
    return {"iterations": man["iterations"], "final_loss": man["final_loss"], "img_per_s": man["img_per_s"],
            "seconds": man["wall_seconds"], "loss_curve": man["loss_curve"],
            "source_val_accuracy": man["source_val_accuracy"],
            "source_train_accuracy": man["source_train_accuracy"],
            "source_val_accuracy_by_snapshot": {k: v["source_val_accuracy"] for k, v in snaps.items()},
            "source_train_accuracy_by_snapshot": {k: v["source_train_accuracy"] for k, v in snaps.items()},
            "shipped": {"from": where, "source_hash": man["source_hash"], "code_version": man["code_version"],
                        "trained": man["trained"],
                        "sha256": {k: v["sha256"] for k, v in man["files"].items()}}}
