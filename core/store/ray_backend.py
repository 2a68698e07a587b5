"""Feature extraction on Ray Data: the same feature store as :mod:`core.store.extraction`, in shards.

The dataset is cut into contiguous shards of ``shard_size`` items; a Ray dataset holds one
row per shard (``start``, ``stop``) and ``map_batches`` sends each row to a pool of model
actors (one per GPU, or one per CPU). The caller passes the built model and the image set;
each actor fetches one object-store copy of both, runs the local extraction pipeline on
its shard and writes one float16 file per layer,
``<features_dir>/<layer>.shards/<start>-<stop>.npy``, laid out exactly as the local
``<layer>.npy`` rows ``start:stop``. The driver then writes one manifest per layer
(``<layer>.json``, atomic) listing the shards in order, with the local path's provenance
keys and fingerprint, so :func:`core.store.extraction.open_layer` and every analysis read a
sharded layer like a local one.

Deviation from "ray.data reading the images": the Ray dataset's rows are shards (index
ranges) and each actor reads its images from the :class:`~core.data.datasets.ImageSet`. Shard
boundaries are then exact and every actor feeds the network the same input batches as the
local path (the input pipeline is :func:`core.store.extraction.iter_batches` itself), which is
what makes the stored features bit-for-bit equal.

:func:`map_shards_ray` is the Ray map step of the shard reducers of
:mod:`core.analysis.sharded` (one task per shard). Everything that knows Ray is here; this
module is given models and image sets and never resolves ids (that is :mod:`core.service`'s
job, which calls it).

Ray is imported lazily: the rest of the app works without it, and a missing Ray is an
:class:`~core.errors.InputError` that says how to install it.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from core import config
from core.store import extraction
from core.analysis.sharded import ShardData, StoredShard, load_shard
from core.data.datasets import ArrayImageSet, ImageSet
from core.errors import CacheCorruptError, InputError
from core.data.models import LoadedModel
from core.data.user_models import user_modules

log = logging.getLogger(__name__)
RAY_REQUIREMENT = "ray[data]==2.58.0"
#: Upper bound of the default shard size (items); a shard's files are written in one go.
MAX_DEFAULT_SHARD = 4096


# --------------------------------------------------------------------------- ray session
def require_ray() -> Any:
    """The ``ray`` module, or an :class:`InputError` saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401  (the Data library is an extra of the ray package)
    except ImportError as exc:
        raise InputError(f"the Ray backend needs Ray Data: `pip install '{RAY_REQUIREMENT}'` "
                         "(it is pinned in requirements.txt), or use --backend local.") from exc
    return ray


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[Any]:
    """Yield ``ray`` connected to a cluster; disconnect on exit if this call connected.

    An already initialised Ray (e.g. a test fixture's) is used as it is. ``address``
    ``None`` starts a local Ray with ``num_cpus`` (default: this machine's CPUs);
    ``"auto"`` or ``"host:port"`` joins a running cluster (``ray start --head``).
    """
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    if address:
        _check_reachable(address)
    try:
        if address:
            ray.init(address=address, runtime_env={"env_vars": config.worker_environment()}, log_to_driver=False)
        else:
            ray.init(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False,
                     log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address!r}" if address else "a local Ray instance"
        raise InputError(f"cannot start or reach {where}: {exc}. Start a cluster with "
                         "`ray start --head` and pass its address (or 'auto'), or leave the "
                         "address empty for a local Ray.") from exc
    try:
        yield ray
    finally:
        ray.shutdown()


def _check_reachable(address: str, timeout_s: float = 3.0) -> None:
    """Fail fast on a ``host:port`` nobody listens on (Ray itself retries for minutes)."""
    import socket

    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return                                  # "auto" and other forms: Ray resolves them
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise InputError(f"no Ray cluster answers at {address!r} ({exc}). Start one with "
                         "`ray start --head` and pass the address it prints (or 'auto' on its "
                         "head node), or leave the address empty for a local Ray.") from exc


def _quiet_data(ray: Any) -> None:
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.verbose_progress = False


# --------------------------------------------------------------------------- shards
def shard_ranges(n: int, shard_size: int) -> list[tuple[int, int]]:
    """Consecutive ``(start, stop)`` ranges of at most ``shard_size`` items covering ``[0, n)``."""
    if not isinstance(shard_size, (int, np.integer)) or shard_size < 1:
        raise InputError(f"shard_size must be a positive int, got {shard_size!r}")
    return [(s, min(n, s + int(shard_size))) for s in range(0, n, int(shard_size))]


def default_shard_size(n: int, batch_size: int, num_actors: int) -> int:
    """About two shards per actor, a multiple of ``batch_size``, at most ``MAX_DEFAULT_SHARD``."""
    per = math.ceil(n / max(1, 2 * num_actors))
    size = batch_size * max(1, math.ceil(per / batch_size))
    return max(batch_size, min(size, batch_size * max(1, MAX_DEFAULT_SHARD // batch_size)))


class _ShardView(ImageSet):
    """Items ``start:stop`` of an image set, re-indexed from 0."""

    def __init__(self, base: ImageSet, start: int, stop: int):
        self.base, self.start = base, start
        self.name, self.class_names = base.name, base.class_names
        self.labels = np.asarray(base.labels)[start:stop]
        self.fingerprint = f"{base.fingerprint}[{start}:{stop}]"

    def image(self, i: int):
        return self.base.image(self.start + int(i))


def shard_view(data: ImageSet, start: int, stop: int) -> ImageSet:
    """Items ``start:stop`` of ``data`` as an image set (in-memory arrays stay on the fast path)."""
    if isinstance(data, ArrayImageSet):
        return ArrayImageSet(data.name, data.images[start:stop], np.asarray(data.labels)[start:stop],
                             data.class_names, fingerprint=f"{data.fingerprint}[{start}:{stop}]")
    return _ShardView(data, start, stop)


def shard_file(layer: str, start: int, stop: int) -> str:
    """A shard's path relative to the features directory."""
    return f"{layer}.shards/{start}-{stop}.npy"


def write_shard(loaded: LoadedModel, data: ImageSet, layers: Sequence[str], directory: Path,
                start: int, stop: int, device: torch.device, batch_size: int) -> dict[str, dict]:
    """Extract items ``start:stop`` and write one shard file per layer (and a conv layer's
    maxima beside it); returns per layer its logical ``shape``, stored ``layout`` and ``maxima``.

    Uses the local pipeline (:func:`core.store.extraction._run_forward`) into a private temp
    folder, then renames each file into place, so a killed actor leaves no partial shard.
    """
    tmp = directory / f".shard-{start}-{stop}.tmp-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        written = extraction._run_forward(loaded, shard_view(data, start, stop), list(layers), tmp,
                                          device, batch_size, 0, None)
        out = {}
        for layer, w in written.items():
            final = directory / shard_file(layer, start, stop)
            final.parent.mkdir(exist_ok=True)
            out[layer] = {"shape": extraction.place(w, final), "layout": w.layout, "maxima": w.maxima is not None}
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- shard reducers
def map_shards_ray(fn: Callable[..., Any], specs: Sequence[tuple[int, ShardData]], *args: Any) -> list[Any]:
    """The map step of :mod:`core.analysis.sharded` as one Ray task per shard, results in order.

    Pass it as ``map_shards=`` to any ``*_sharded`` reducer. Stored shards travel as file
    paths, arrays and ``args`` through the object store (``args`` once for all tasks). An
    initialised Ray is used, else a local one is started for the call.
    """
    with ray_session() as ray:
        task = ray.remote(num_cpus=1)(_remote_call)
        shared = [ray.put(a) for a in args]   # one object-store copy of labels etc.
        refs = [task.remote(fn, start, data if isinstance(data, (str, StoredShard)) else ray.put(data), *shared)
                for start, data in specs]
        return ray.get(refs)


def _remote_call(fn: Callable[..., Any], start: int, data: ShardData, *args: Any) -> Any:
    return fn(start, load_shard(data), *args)


# --------------------------------------------------------------------------- actors
class ShardExtractor:
    """Ray Data actor: fetches the model and the image set once, extracts shard rows.

    ``model`` and ``data`` are one-element lists holding an object-store reference (Ray
    leaves a reference inside a list alone; the actor fetches it once, here).
    """

    def __init__(self, model: list, data: list, layers: list[str], directory: str,
                 batch_size: int, device: str, threads: int | None = None):
        import ray

        if threads:                    # Ray sets one intra-op thread per reserved CPU otherwise
            torch.set_num_threads(threads)
        self.loaded: LoadedModel = ray.get(model[0])
        self.data: ImageSet = ray.get(data[0])
        self.layers, self.directory, self.batch_size = layers, Path(directory), batch_size
        self.device = extraction.resolve_device(device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        starts, stops = batch["start"].astype(int), batch["stop"].astype(int)
        shapes = [json.dumps(write_shard(self.loaded, self.data, self.layers, self.directory,
                                         int(a), int(b), self.device, self.batch_size))
                  for a, b in zip(starts, stops)]
        label = extraction.device_label(self.device)
        return {"start": starts, "stop": stops, "shapes": np.array(shapes, dtype=object),
                "device": np.array([label] * len(starts), dtype=object)}


def _actor_plan(ray: Any, device: str, num_actors: int | None) -> tuple[int, float, str]:
    """``(num_actors, gpus_per_actor, actor_device)`` from the cluster's resources."""
    res = ray.cluster_resources()
    gpus, cpus = int(res.get("GPU", 0)), max(1, int(res.get("CPU", 1)))
    if device.startswith("cuda") and not gpus:
        raise InputError(f"device '{device}' requested but the Ray cluster has no GPU; use cpu or auto.")
    use_gpu = gpus > 0 and device != "cpu"
    n = num_actors or (gpus if use_gpu else cpus)
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise InputError(f"num_actors must be a positive int, got {num_actors!r}")
    return int(n), (1.0 if use_gpu else 0.0), ("cuda" if use_gpu else "cpu")


def _run_actors(ray: Any, model: LoadedModel, data: ImageSet, layers: list[str], directory: Path,
                ranges: list[tuple[int, int]], batch_size: int, plan: tuple[int, float, str],
                threads: int | None, progress: extraction.Progress | None, n: int) -> list[dict]:
    _quiet_data(ray)
    for module in user_modules(model.net):  # a py: model file is imported by path: workers cannot import it
        ray.cloudpickle.register_pickle_by_value(module)
    num_actors, gpus, dev = plan
    items = [{"start": a, "stop": b} for a, b in ranges]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    out = ds.map_batches(ShardExtractor, batch_size=1, num_cpus=1, num_gpus=gpus,
                         runtime_env={"env_vars": config.worker_environment()},  # the driver's Filterscope settings
                         compute=ray.data.ActorPoolStrategy(size=min(num_actors, len(items))),
                         fn_constructor_kwargs={"model": [ray.put(model)], "data": [ray.put(data)],
                                                "layers": layers, "directory": str(directory),
                                                "batch_size": batch_size, "device": dev,
                                                "threads": threads})
    rows, done = [], 0
    for row in out.iter_rows():
        rows.append(row)
        done += int(row["stop"]) - int(row["start"])
        if progress:
            progress(done, n, f"extracting {', '.join(layers)} on Ray ({num_actors} actors)")
    return sorted(rows, key=lambda r: int(r["start"]))


# --------------------------------------------------------------------------- manifests
def _check_tiling(rows: list[dict], ranges: list[tuple[int, int]]) -> None:
    got = [(int(r["start"]), int(r["stop"])) for r in rows]
    if got != ranges:
        raise CacheCorruptError(f"Ray extraction returned shards {got[:5]}... instead of {ranges[:5]}...")


def write_manifests(loaded: LoadedModel, data: ImageSet, layers: Sequence[str], directory: Path,
                    rows: list[dict], info: dict) -> dict[str, extraction.LayerFeatures]:
    """One manifest per layer listing its shards in order (temp + rename), local provenance keys."""
    devices = sorted({str(r["device"]) for r in rows})
    prov = {**extraction._provenance(loaded, data, torch.device("cpu")), "device": ", ".join(devices)}
    out = {}
    for layer in layers:
        parts = [json.loads(r["shapes"])[layer] for r in rows]
        shape = [sum(part["shape"][0] for part in parts), *parts[0]["shape"][1:]]
        shards = [{"start": int(r["start"]), "stop": int(r["stop"]), "layout": part["layout"],
                   "maxima": part["maxima"], "file": shard_file(layer, int(r["start"]), int(r["stop"]))}
                  for r, part in zip(rows, parts)]
        manifest = {**prov, "format": extraction.FORMAT_VERSION, "layer": layer, "shape": shape,
                    "dtype": "float16", "layout": parts[0]["layout"], "maxima": all(p["maxima"] for p in parts),
                    "fingerprint": extraction.layer_fingerprint(loaded, data, layer, shape),
                    "backend": "ray", "ray": info, "shards": shards}
        mtmp = directory / f".{layer}.json.tmp-{os.getpid()}"
        mtmp.write_text(json.dumps(manifest, indent=1))
        os.replace(mtmp, directory / f"{layer}.json")
        for stale in (directory / f"{layer}.npy", extraction.maxima_file(directory / f"{layer}.npy")):
            stale.unlink(missing_ok=True)   # a local copy would now be stale
        _drop_unlisted(directory / f"{layer}.shards", {name for s in shards for name in (
            Path(s["file"]).name, extraction.maxima_file(Path(s["file"])).name)})
        opened = extraction.open_layer(directory, layer)
        if opened is None:
            raise CacheCorruptError(f"the sharded layer {layer} in {directory} did not open after writing")
        out[layer] = opened
    return out


def _drop_unlisted(folder: Path, keep: set[str]) -> None:
    for p in folder.glob("*.npy"):
        if p.name not in keep:
            p.unlink(missing_ok=True)


# --------------------------------------------------------------------------- entry point
def extract_ray(loaded: LoadedModel, dataset: ImageSet, layers: Sequence[str], *,
                address: str | None = None, num_actors: int | None = None, batch_size: int = 128,
                shard_size: int | None = None, device: str = "auto", threads: int | None = None,
                root: Path | None = None, progress: extraction.Progress | None = None,
                force: bool = False) -> dict[str, extraction.LayerFeatures]:
    """Extract ``layers`` on Ray into the local feature store's directory, as shards.

    Parameters
    ----------
    loaded : LoadedModel
        The built model (put in the object store once; each actor fetches one copy, so
        every actor runs these very weights, random initialisations included).
    dataset : ImageSet
        The image set (one object-store copy; each actor reads its shards' images from it).
    layers : sequence of str
    address : str, optional
        A running cluster (``"auto"`` or ``"host:port"``); ``None`` starts a local Ray with
        this machine's CPUs. An already initialised Ray is used as it is.
    num_actors : int, optional
        Model actors; default one per GPU of the cluster, else one per CPU.
    batch_size : int
        Forward batch inside an actor (as the local path's).
    shard_size : int, optional
        Items per shard, rounded up to a multiple of ``batch_size`` (default: about two shards
        per actor).
    device : str
        ``auto`` (GPU actors, ``num_gpus=1`` each, when the cluster has GPUs), ``cpu`` or ``cuda``.
    threads : int, optional
        Intra-op torch threads per actor. Default: this process's ``torch.get_num_threads()``
        for a local Ray (float kernels block their sums by thread count, so equal counts give
        bit-for-bit the local backend's features), else Ray's (one per reserved CPU).
    root, progress, force
        As in :func:`core.store.extraction.extract` (present layers are kept unless ``force``).

    Returns
    -------
    dict
        One :class:`~core.store.extraction.LayerFeatures` per layer (sharded for the new ones),
        with the fingerprint the local path gives for the same model, data and layer.
    """
    layers = extraction.validated_layers(loaded, dataset, layers)
    directory = extraction.features_dir(loaded, dataset, root)
    directory.mkdir(parents=True, exist_ok=True)
    have = {} if force else {l: f for l in layers if (f := extraction.open_layer(directory, l)) is not None}
    todo = [l for l in layers if l not in have]
    if todo:
        n = len(dataset)
        with ray_session(address) as ray:
            plan = _actor_plan(ray, device, num_actors)
            # a multiple of the batch: every forward batch is then the local path's, row for row
            # (GEMM kernels round differently for another batch size: the last rows would differ)
            size = (batch_size * math.ceil(shard_size / batch_size) if shard_size
                    else default_shard_size(n, batch_size, plan[0]))
            ranges = shard_ranges(n, size)
            threads = threads or (torch.get_num_threads() if address is None else None)
            rows = _run_actors(ray, loaded, dataset, todo, directory, ranges, batch_size, plan, threads,
                               progress, n)
        _check_tiling(rows, ranges)
        info = {"address": address or "local", "num_actors": plan[0], "shard_size": size,
                "batch_size": batch_size, "threads": threads}
        have.update(write_manifests(loaded, dataset, todo, directory, rows, info))
    return {l: have[l] for l in layers}


def benchmark(n: int = 2000, batch_size: int = 128, num_actors: int | None = None,
              threads: int | None = None, seed: int = 0) -> dict:
    """Images/s of the local and the Ray-local backend: same random images, net and layers.

    A random demo net (3 classes) on ``n`` random 64x64 images, all seven layers, each
    backend into its own temporary store; Ray's start-up is timed apart from the run.
    """
    import tempfile
    import time

    from core.data.models import build_demo

    torch.manual_seed(seed)
    lm = build_demo(num_classes=3)
    rng = np.random.default_rng(seed)
    data = ArrayImageSet("bench-ray", rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8),
                         rng.integers(0, 3, n), ["a", "b", "c"])
    layers = list(lm.spec.layers)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        extraction.extract(lm, data, layers, root=Path(tmp) / "local", batch_size=batch_size)
        local_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        with ray_session() as ray:
            start_s = time.perf_counter() - t0
            plan = _actor_plan(ray, "auto", num_actors)
            t1 = time.perf_counter()
            extract_ray(lm, data, layers, root=Path(tmp) / "ray", num_actors=num_actors,
                        batch_size=batch_size, threads=threads)
            ray_s = time.perf_counter() - t1
    return {"images": n, "layers": layers, "batch_size": batch_size, "local_img_s": round(n / local_s, 1),
            "ray_img_s": round(n / ray_s, 1), "ray_actors": plan[0], "ray_start_s": round(start_s, 2),
            "threads_per_actor": threads or torch.get_num_threads(), "cpus": os.cpu_count()}


__all__ = ["extract_ray", "benchmark", "map_shards_ray", "ray_session", "require_ray", "shard_ranges",
           "default_shard_size", "shard_view", "write_shard", "write_manifests", "ShardExtractor"]
