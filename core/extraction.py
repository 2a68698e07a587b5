"""Batched forward passes with hooks -> the on-disk feature store.

Several layers in one pass; conv maps stored whole ([N, C, H, W]) as float16 ``.npy``
files (memory-mapped on read) written atomically (temp file + rename) with a JSON
manifest carrying provenance. Memory stays bounded: each batch is appended to its
file as soon as it is computed, so datasets larger than RAM stream to disk.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from core.config import cache_root, code_version, stable_hash
from core.datasets import ArrayImageSet, ImageSet
from core.errors import CacheCorruptError, InputError
from core.models import LoadedModel

log = logging.getLogger(__name__)
FORMAT_VERSION = 1
Progress = Callable[[int, int, str], None]


# --------------------------------------------------------------------------- hooks
def _detached_copy(out: torch.Tensor, dtype: torch.dtype,
                   buffers: dict[str, torch.Tensor] | None = None, key: str = "") -> torch.Tensor:
    """A contiguous copy of ``out`` converted to ``dtype``.

    With ``buffers`` (CPU only) the copy lands in ``buffers[key]``, allocated once and
    reused by every later batch: a fresh multi-MB tensor per batch costs a page fault per
    4 KiB, three times the copy itself (measured on the 2-core machine).
    """
    src = out.detach()
    if buffers is None or src.device.type != "cpu" or src.dim() == 0:
        return src.to(dtype, memory_format=torch.contiguous_format, copy=True)
    buf = buffers.get(key)
    if buf is None or buf.dtype != dtype or buf.shape[1:] != src.shape[1:] or len(buf) < len(src):
        buf = buffers[key] = torch.empty(src.shape, dtype=dtype)
    dst = buf[:len(src)]
    dst.copy_(src)
    return dst


@contextlib.contextmanager
def capture_layers(loaded: LoadedModel, layers: Sequence[str], dtype: torch.dtype | None = None,
                   reuse: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Register forward hooks on ``layers``; yields a dict filled with each forward's outputs.

    Hooks are removed on exit, also when the body raises. Outputs are detached and
    copied (torchvision's in-place ReLUs would otherwise alias them), contiguous, and
    converted to ``dtype`` in the same copy when given. ``reuse=True`` copies CPU outputs
    into one buffer per layer that the next forward overwrites: the caller must be done
    with a batch's outputs before it runs the next one.
    """
    outputs: dict[str, torch.Tensor] = {}
    buffers: dict[str, torch.Tensor] | None = {} if reuse else None
    handles = []
    try:
        for layer in layers:
            module = loaded.module(layer)

            def hook(_m, _inp, out, _name=layer):
                outputs[_name] = _detached_copy(out, dtype or out.dtype, buffers, _name)

            handles.append(module.register_forward_hook(hook))
        yield outputs
    finally:
        for h in handles:
            h.remove()


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' -> CUDA when available, else CPU. Asking for CUDA without one is an InputError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device '{device}' requested but no CUDA GPU is available here; use --device cpu or auto.")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise InputError(f"unknown device '{device}'; use auto, cpu or cuda[:N].") from exc


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return device.type


# --------------------------------------------------------------------------- batching
class _Transformed(torch.utils.data.Dataset):
    def __init__(self, data: ImageSet, transform: Callable):
        self.data, self.transform = data, transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> torch.Tensor:
        img, _ = self.data[i]
        return self.transform(img)


def uint8_to_input(images: np.ndarray, mean: Sequence[float], std: Sequence[float], size: int,
                   out: np.ndarray | None = None) -> torch.Tensor:
    """uint8 ``[B, H, W, 3]`` -> normalised float ``[B, 3, size, size]`` (bilinear resize if needed).

    The result is channels-last in memory (a permuted view of ``[B, H, W, 3]``). When the
    images already have the input size, ``out`` (float32 ``[>=B, size, size, 3]``) may
    hold the result, reused from batch to batch.
    """
    images = np.asarray(images)
    if images.shape[1] == size and images.shape[2] == size:
        # Same float32 operations as the torch code below, bit for bit, in numpy: single
        # threaded, so they never wait on a second core that another process is using.
        if out is None:
            x = images.astype(np.float32)
        else:
            x = out[:len(images)]
            np.copyto(x, images, casting="unsafe")
        rows = x.reshape(-1, size * 3)           # per-channel constants tiled along a row
        rows /= np.float32(255.0)
        rows -= np.tile(np.asarray(mean, dtype=np.float32), size)
        rows /= np.tile(np.asarray(std, dtype=np.float32), size)
        return torch.from_numpy(x).permute(0, 3, 1, 2)
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.sub_(torch.tensor(mean).view(1, 3, 1, 1)).div_(torch.tensor(std).view(1, 3, 1, 1))


def array_batch(data: ArrayImageSet, idx: np.ndarray, loaded: LoadedModel) -> torch.Tensor:
    """Fast path for in-memory uint8 images: normalise a whole batch at once (no PIL)."""
    return uint8_to_input(data.images[idx], loaded.spec.mean, loaded.spec.std, loaded.spec.input_size)


class _Fan:
    """``width`` threads in all: this one plus ``width - 1`` helpers, for work split in parts."""

    def __init__(self, width: int):
        self.width = max(1, width)
        self.pool = ThreadPoolExecutor(self.width - 1, thread_name_prefix="extract-io") if self.width > 1 else None

    def run(self, parts: Sequence[Callable[[], None]]) -> None:
        """Run ``parts`` at once, the first in this thread, the rest on the helpers; wait for all."""
        if self.pool is None:
            for part in parts:
                part()
            return
        futures = [self.pool.submit(part) for part in parts[1:]]
        if parts:
            parts[0]()
        for f in futures:
            f.result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


def iter_batches(loaded: LoadedModel, data: ImageSet, batch_size: int, device: torch.device,
                 num_workers: int | None = None, fan: _Fan | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(start, input_batch)`` in dataset order, on ``device``.

    On the CPU, in-memory images of the input size are normalised into one reused buffer
    (each batch is a view of it, valid until the next one is asked for), split in row
    blocks over ``fan``'s threads. Other data on the CPU goes through the model's transform
    in this process, unless ``num_workers > 0`` asks for DataLoader worker processes (the
    default on CUDA, where they decode while the GPU runs).
    """
    n = len(data)
    if isinstance(data, ArrayImageSet) and loaded.spec.resize is None:
        spec, size = loaded.spec, loaded.spec.input_size
        if device.type != "cpu" or data.images.shape[1:3] != (size, size):
            for start in range(0, n, batch_size):
                x = uint8_to_input(data.images[start:start + batch_size], spec.mean, spec.std, size)
                if device.type == "cuda":
                    x = x.pin_memory().to(device, non_blocking=True)
                yield start, x
            return
        buf = np.empty((min(n, batch_size), size, size, 3), np.float32)
        fan = fan or _Fan(1)

        def block(lo: int, hi: int, start: int) -> Callable[[], None]:
            return lambda: uint8_to_input(data.images[start + lo:start + hi], spec.mean, spec.std, size,
                                          out=buf[lo:hi])

        for start in range(0, n, batch_size):
            m = min(batch_size, n - start)
            edges = np.linspace(0, m, fan.width + 1).astype(int)
            fan.run([block(lo, hi, start) for lo, hi in zip(edges[:-1], edges[1:]) if hi > lo])
            yield start, torch.from_numpy(buf[:m]).permute(0, 3, 1, 2)
        return
    if device.type == "cpu" and not num_workers:
        # In this process, in turn with the forward: a DataLoader worker process would
        # compete with the forward for the same cores and add the copy of every batch
        # between processes (measured on AlexNet, 2 cores: 0.72 of the bare forward with
        # one worker, 0.85 without; splitting the transforms over threads gained nothing).
        # Resize and crop image by image (uint8), then normalise the whole batch at once.
        spec = loaded.spec
        geometric = spec.geometric_transform()
        for start in range(0, n, batch_size):
            crops = torch.stack([geometric(data[i][0]) for i in range(start, min(n, start + batch_size))])
            yield start, spec.normalize_batch(crops)
        return
    if num_workers is None:
        num_workers = min(4, max(0, (os.cpu_count() or 1) - 1))
    loader = torch.utils.data.DataLoader(_Transformed(data, loaded.spec.transform()), batch_size=batch_size,
                                         shuffle=False, num_workers=num_workers,
                                         pin_memory=device.type == "cuda",
                                         persistent_workers=False)
    start = 0
    for x in loader:
        yield start, x.to(device, non_blocking=True)
        start += len(x)


# --------------------------------------------------------------------------- store
def model_key(loaded: LoadedModel) -> str:
    spec = loaded.spec
    return f"{spec.name.replace(':', '-').replace('/', '-')}-{stable_hash(spec.arch, spec.weights.sha256 or 'random', spec.input_size, spec.mean, spec.std, spec.resize, length=10)}"


def features_dir(loaded: LoadedModel, data: ImageSet, root: Path | None = None) -> Path:
    """Directory holding every stored layer of ``loaded`` on ``data``."""
    base = (root or cache_root()) / "features"
    return base / model_key(loaded) / f"{data.name.replace(':', '-').replace('/', '-')}-{data.fingerprint[:10]}"


@dataclass(frozen=True)
class LayerFeatures:
    """One stored layer: a read-only memmap ``[N, ...]`` float16 and its manifest."""

    path: Path
    manifest: dict

    @property
    def sharded(self) -> bool:
        """True for a layer stored as shards (the Ray backend); ``path`` is then its shard folder."""
        return "shards" in self.manifest

    def array(self) -> np.ndarray:
        """The whole ``[N, ...]`` array: a memmap, or the shards concatenated in memory."""
        if not self.sharded:
            return np.load(self.path, mmap_mode="r")
        return np.concatenate([a for _, a in self.shards()])

    def shards(self) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, memmap)`` per shard in order, one open at a time (one shard for a local layer)."""
        if not self.sharded:
            yield 0, self.array()
            return
        for s in self.manifest["shards"]:
            yield int(s["start"]), np.load(self.path.parent / s["file"], mmap_mode="r")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.manifest["shape"])

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]


def _manifest_path(npy: Path) -> Path:
    return npy.with_suffix(".json")


def _open_sharded(directory: Path, layer: str, manifest: dict) -> LayerFeatures | None:
    """A sharded layer (manifest with ``shards``); damaged shards are dropped and ``None`` returned."""
    folder = directory / f"{layer}.shards"
    try:
        shape, stop = manifest["shape"], 0
        if manifest.get("format") != FORMAT_VERSION:
            raise CacheCorruptError(f"format {manifest.get('format')} != {FORMAT_VERSION}")
        for s in manifest["shards"]:
            arr = np.load(directory / s["file"], mmap_mode="r")
            if s["start"] != stop or list(arr.shape) != [s["stop"] - s["start"], *shape[1:]] \
                    or arr.dtype != np.float16:
                raise CacheCorruptError(f"shard {s['file']} is {arr.dtype} {arr.shape}, expected rows "
                                        f"{s['start']}:{s['stop']} of {shape} after row {stop}")
            stop = s["stop"]
        if stop != shape[0]:
            raise CacheCorruptError(f"shards cover {stop} of {shape[0]} rows")
    except (OSError, ValueError, KeyError, TypeError, CacheCorruptError) as exc:
        log.warning("sharded features %s are damaged (%s); dropping them, they will be re-extracted", folder, exc)
        _manifest_path(directory / f"{layer}.npy").unlink(missing_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
        return None
    return LayerFeatures(folder, manifest)


def open_layer(directory: Path, layer: str) -> LayerFeatures | None:
    """Open a stored layer; ``None`` if absent. A damaged file is deleted and ``None`` returned.

    A layer is one ``<layer>.npy`` (local backend) or, when its manifest lists ``shards``,
    the files ``<layer>.shards/<start>-<stop>.npy`` (Ray backend, :mod:`core.distributed`).
    """
    npy = directory / f"{layer}.npy"
    man = _manifest_path(npy)
    with contextlib.suppress(OSError, ValueError):
        manifest = json.loads(man.read_text()) if man.exists() else {}
        if isinstance(manifest, dict) and "shards" in manifest:
            return _open_sharded(directory, layer, manifest)
    if not npy.exists() or not man.exists():
        return None
    damaged = man
    try:
        manifest = json.loads(man.read_text())
        damaged = npy
        arr = np.load(npy, mmap_mode="r")
        if list(arr.shape) != manifest["shape"] or manifest.get("format") != FORMAT_VERSION:
            raise CacheCorruptError(f"shape {arr.shape} != manifest {manifest.get('shape')}")
    except (OSError, ValueError, KeyError, TypeError, CacheCorruptError) as exc:
        log.warning("stored features %s are damaged (%s); dropping them, they will be re-extracted", damaged, exc)
        for p in (npy, man):
            p.unlink(missing_ok=True)
        return None
    return LayerFeatures(npy, manifest)


def layer_fingerprint(loaded: LoadedModel, data: ImageSet, layer: str, shape: Sequence[int]) -> str:
    """The stored layer's fingerprint (the same for the local and the Ray backend)."""
    return stable_hash(model_key(loaded), data.fingerprint, layer, list(shape))


def _provenance(loaded: LoadedModel, data: ImageSet, device: torch.device) -> dict:
    return {"model": loaded.spec.describe(), "dataset": data.describe(), "device": device_label(device),
            "transform": {"input_size": loaded.spec.input_size, "mean": list(loaded.spec.mean),
                          "std": list(loaded.spec.std), "resize": loaded.spec.resize},
            "code_version": code_version(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


class _NpyWriter:
    """Appends batches to a new float16 ``.npy`` file of known shape, in order.

    Plain sequential writes: filling a fresh memmap page by page costs a page fault
    per 4 KiB, several times the price of the copy itself on small VMs.
    """

    def __init__(self, path: Path, shape: tuple[int, ...]):
        self.path, self.shape, self.rows = path, shape, 0
        self.fh = open(path, "wb")
        np.lib.format.write_array_header_1_0(self.fh, {
            "descr": np.lib.format.dtype_to_descr(np.dtype(np.float16)),
            "fortran_order": False, "shape": shape})

    def write(self, start: int, batch: np.ndarray) -> None:
        if start != self.rows or batch.shape[1:] != self.shape[1:] or batch.dtype != np.float16:
            raise CacheCorruptError(f"batch at {start} ({batch.dtype} {batch.shape}) does not continue "
                                    f"{self.path.name} ({self.rows} rows of {self.shape})")
        self.fh.write(np.ascontiguousarray(batch).data)
        self.rows += len(batch)

    def close(self) -> None:
        self.fh.close()


def _write_batch(writers: dict[str, _NpyWriter], directory: Path, n: int, start: int,
                 arrays: dict[str, np.ndarray], fan: _Fan | None = None) -> None:
    """Append one batch to each layer's file; the layers are split in groups of about equal
    bytes, one per thread of ``fan`` (each file is still written by one thread, in order)."""
    for layer, out in arrays.items():
        if layer not in writers:
            writers[layer] = _NpyWriter(directory / f".{layer}.npy.tmp-{os.getpid()}", (n, *out.shape[1:]))
    fan = fan or _Fan(1)
    groups: list[list[str]] = [[] for _ in range(fan.width)]
    sizes = [0] * len(groups)
    for layer in sorted(arrays, key=lambda l: -arrays[l].nbytes):
        g = sizes.index(min(sizes))
        groups[g].append(layer)
        sizes[g] += arrays[layer].nbytes

    def write(group: list[str]) -> Callable[[], None]:
        return lambda: [writers[layer].write(start, arrays[layer]) for layer in group]

    fan.run([write(g) for g in groups if g])


def _run_forward(loaded: LoadedModel, data: ImageSet, layers: list[str], directory: Path, device: torch.device,
                 batch_size: int, num_workers: int | None, progress: Progress | None) -> dict[str, Path]:
    """Forward every batch, appending the hooked outputs to one temp file per layer.

    On the CPU each batch is prepared, run and written in turn, into buffers reused from
    batch to batch: the forward keeps every core busy (its threads spin between ops), so a
    helper thread preparing and writing *beside* it only takes cycles from it (measured: a
    lower ratio to the bare forward). Between forwards the input normalisation and the
    writes are split over as many threads as torch uses. On CUDA one helper thread
    prepares the next input batch and writes the previous outputs while the GPU runs, in
    that order, so at most two batches of inputs and of outputs are alive at once.
    """
    n = len(data)
    net = loaded.net.to(device).eval()
    gpu = device.type == "cuda"
    amp_dtype = torch.bfloat16 if gpu and torch.cuda.is_bf16_supported() else torch.float16
    writers: dict[str, _NpyWriter] = {}
    done = 0

    def step(start: int, x: torch.Tensor) -> dict[str, np.ndarray]:
        nonlocal done
        with torch.autocast(device.type, dtype=amp_dtype, enabled=gpu):
            net(x)
        done = start + len(x)
        if progress:
            progress(done, n, f"extracting {', '.join(layers)} from {loaded.spec.name}")
        return {layer: outs[layer].cpu().numpy() for layer in layers}

    try:
        with torch.inference_mode(), capture_layers(loaded, layers, torch.float16, reuse=not gpu) as outs:
            if not gpu:
                fan = _Fan(min(4, torch.get_num_threads()))
                try:
                    for start, x in iter_batches(loaded, data, batch_size, device, num_workers, fan):
                        _write_batch(writers, directory, n, start, step(start, x), fan)
                finally:
                    fan.close()
            else:
                with ThreadPoolExecutor(1, thread_name_prefix="extract-io") as io:
                    batches = iter_batches(loaded, data, batch_size, device, num_workers)
                    pending, written = io.submit(next, batches, None), None
                    while (item := pending.result()) is not None:
                        pending = io.submit(next, batches, None)
                        arrays = step(*item)
                        if written is not None:
                            written.result()
                        written = io.submit(_write_batch, writers, directory, n, item[0], arrays)
                    if written is not None:
                        written.result()
    finally:
        for w in writers.values():
            w.close()
    if done != n:
        raise CacheCorruptError(f"extraction produced {done} of {n} items")
    return {layer: w.path for layer, w in writers.items()}


def validated_layers(loaded: LoadedModel, data: ImageSet, layers: Sequence[str]) -> list[str]:
    """``layers`` without repeats, each a layer of ``loaded``, for a non-empty ``data`` (else InputError)."""
    layers = list(dict.fromkeys(layers))
    if not layers:
        raise InputError("no layers requested; pass e.g. --layers conv1,conv5,fc7")
    for layer in layers:
        loaded.module(layer)  # validates the name
    if len(data) == 0:
        raise InputError(f"dataset '{data.name}' is empty; nothing to extract")
    return layers


def extract(loaded: LoadedModel, data: ImageSet, layers: Sequence[str], *, device: str = "auto",
            batch_size: int = 128, num_workers: int | None = None, root: Path | None = None,
            progress: Progress | None = None, force: bool = False) -> dict[str, LayerFeatures]:
    """Extract ``layers`` of ``loaded`` on ``data`` into the feature store (missing layers only).

    Returns one :class:`LayerFeatures` per layer. Files appear atomically: a killed
    run leaves only hidden temp files, which the next run ignores and overwrites.
    """
    layers = validated_layers(loaded, data, layers)
    directory = features_dir(loaded, data, root)
    directory.mkdir(parents=True, exist_ok=True)
    result = {} if force else {l: f for l in layers if (f := open_layer(directory, l)) is not None}
    todo = [l for l in layers if l not in result]
    if todo:
        dev = resolve_device(device)
        tmp = _run_forward(loaded, data, todo, directory, dev, batch_size, num_workers, progress)
        prov = _provenance(loaded, data, dev)
        for layer, tpath in tmp.items():
            final = directory / f"{layer}.npy"
            os.replace(tpath, final)
            shape = list(np.load(final, mmap_mode="r").shape)
            manifest = {**prov, "format": FORMAT_VERSION, "layer": layer, "shape": shape, "dtype": "float16",
                        "fingerprint": layer_fingerprint(loaded, data, layer, shape)}
            mtmp = directory / f".{layer}.json.tmp-{os.getpid()}"
            mtmp.write_text(json.dumps(manifest, indent=1))
            os.replace(mtmp, _manifest_path(final))
            result[layer] = LayerFeatures(final, manifest)
    return {l: result[l] for l in layers}


def load_features(loaded: LoadedModel, data: ImageSet, layer: str, root: Path | None = None) -> LayerFeatures | None:
    """Stored features of one layer, or ``None`` when not extracted yet."""
    return open_layer(features_dir(loaded, data, root), layer)


def drop_features(loaded: LoadedModel, data: ImageSet, root: Path | None = None) -> None:
    shutil.rmtree(features_dir(loaded, data, root), ignore_errors=True)


def forward_throughput(loaded: LoadedModel, batches: list[torch.Tensor], device: torch.device) -> float:
    """Images/s of the bare model over pre-made batches (the benchmark's reference)."""
    net = loaded.net.to(device).eval()
    xs = [b.to(device) for b in batches]
    with torch.inference_mode():
        net(xs[0])
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for x in xs:
            net(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return sum(len(x) for x in xs) / (time.perf_counter() - t0)
