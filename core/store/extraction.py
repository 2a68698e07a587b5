"""Batched forward passes with hooks -> the on-disk feature store.

Several layers in one pass; conv maps stored whole as float16 ``.npy`` files
(memory-mapped on read) written atomically (temp file + rename) with a JSON manifest
carrying provenance. Memory stays bounded: each batch is appended to its file as soon
as it is computed, so datasets larger than RAM stream to disk.

Store format 2 keeps a conv map's bytes in the layout the network produced: ``NHWC``
when it runs channels-last (the demo network on the CPU), else ``NCHW`` (manifest key
``layout``), so the hook's copy is a straight float16 conversion, never a transpose.
Every reader sees the logical ``[N, C, H, W]`` view (:meth:`LayerFeatures.array`).
Beside each conv map lie its spatial maxima ``[N, C]`` (``<layer>.max.npy``, the
paper's Sec. 4 pooled features), taken in the same pass from the float32 output and
then rounded (the same numbers as the maxima of the stored float16 maps), so the
pooled analyses never re-read the maps. Format 1 stores (``NCHW``, no maxima)
are read as they are; an unknown format is dropped with a warning and re-extracted.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from core.analysis.sharded import StoredShard, load_shard
from core.config import cache_root
from core.hashing import code_version, stable_hash
from core.data.datasets import ArrayImageSet, ImageSet
from core.errors import CacheCorruptError, InputError
from core.data.layers import module_paths, unit_view
from core.data.models import LoadedModel

log = logging.getLogger(__name__)
FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
Progress = Callable[[int, int, str], None]


# --------------------------------------------------------------------------- buffers
class BufferPool:
    """CPU buffers kept mapped between extractions in this process, up to ``limit`` bytes (128 MB:
    AlexNet at batch 64 holds 66 MB, the demo net at batch 128 13 MB).

    Memory a process frees goes back to the kernel, and on a VM with a balloon device (these
    2-core machines) back to the host within seconds; touching it again costs a host fault per
    4 KiB page: a fresh 40 MB buffer took 116-137 ms to fill against 2 ms for the same buffer
    reused (measured here). One extraction's input batch and hook buffers (AlexNet, batch 64:
    ~66 MB) would pay that on every call. :meth:`take` hands a buffer out for exclusive use (a
    new one when none of that shape, dtype and layout is free, e.g. while another extraction
    holds it); :meth:`give` returns it; the least recently returned are dropped over ``limit``.
    """

    def __init__(self, limit: int):
        self.limit, self.held = limit, 0
        self._free: dict[tuple, list[torch.Tensor]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(shape: Sequence[int], dtype: torch.dtype, fmt: torch.memory_format) -> tuple:
        return tuple(shape), dtype, fmt

    def take(self, shape: Sequence[int], dtype: torch.dtype,
             memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
        key = self._key(shape, dtype, memory_format)
        with self._lock:
            free = self._free.get(key)
            if free:
                buf = free.pop()
                if not free:  # no empty lists: give() evicts from the first key, which must hold one
                    del self._free[key]
                self.held -= buf.nbytes
                return buf
        with torch.inference_mode(False):  # a normal tensor: an inference one is read-only outside that mode
            return torch.empty(tuple(shape), dtype=dtype, memory_format=memory_format)

    def give(self, buf: torch.Tensor) -> None:
        fmt = torch.channels_last if channels_last(buf) else torch.contiguous_format
        key = self._key(buf.shape, buf.dtype, fmt)
        with self._lock:
            self._free[key] = self._free.pop(key, []) + [buf]   # most recently returned last
            self.held += buf.nbytes
            while self.held > self.limit:
                oldest = next(iter(self._free))
                self.held -= self._free[oldest].pop(0).nbytes
                if not self._free[oldest]:
                    del self._free[oldest]


#: Shared by every extraction in this process (the app's server runs many, one after another).
POOL = BufferPool(limit=128 << 20)


# --------------------------------------------------------------------------- hooks
def channels_last(t: torch.Tensor | np.ndarray) -> bool:
    """True for a 4-D ``[N, C, H, W]`` tensor or array whose bytes are ``NHWC`` (and not also ``NCHW``)."""
    if t.ndim != 4:
        return False
    if isinstance(t, np.ndarray):
        return not t.flags.c_contiguous and t.transpose(0, 2, 3, 1).flags.c_contiguous
    return not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def _detached_copy(out: torch.Tensor, dtype: torch.dtype,
                   buffers: dict[str, torch.Tensor] | None = None, key: str = "") -> torch.Tensor:
    """A dense copy of ``out`` converted to ``dtype``, in ``out``'s memory layout: a
    channels-last output stays channels-last (one straight converting copy, no transpose).

    With ``buffers`` (CPU only) the copy lands in ``buffers[key]``, taken once from
    :data:`POOL` and reused by every later batch: a fresh multi-MB tensor per batch costs a
    page fault per 4 KiB, three times the copy itself (measured on the 2-core machine).
    """
    src = out.detach()
    fmt = torch.channels_last if channels_last(src) else torch.contiguous_format
    if buffers is None or src.device.type != "cpu" or src.dim() == 0:
        return src.to(dtype, memory_format=fmt, copy=True)
    buf = buffers.get(key)
    if (buf is None or buf.dtype != dtype or buf.shape[1:] != src.shape[1:] or len(buf) < len(src)
            or not buf.is_contiguous(memory_format=fmt)):
        if buf is not None:
            POOL.give(buf)
        buf = buffers[key] = POOL.take(src.shape, dtype, fmt)
    dst = buf[:len(src)]
    dst.copy_(src)
    return dst


@contextlib.contextmanager
def capture_layers(loaded: LoadedModel, layers: Sequence[str], dtype: torch.dtype | None = None,
                   reuse: bool = False, maxima: dict[str, torch.Tensor] | None = None
                   ) -> Iterator[dict[str, torch.Tensor]]:
    """Register forward hooks on ``layers``; yields a dict filled with each forward's outputs.

    ``layers`` are default layers' display names or any module paths. A transformer's token
    outputs are stored as units over their patch grid (:func:`core.data.layers.unit_view`).
    Only forwards run by the thread that entered the block are recorded: two threads (two app
    sessions) extracting the same network at once each get their own batches' outputs.

    Hooks are removed on exit, also when the body raises. Outputs are detached and
    copied (torchvision's in-place ReLUs would otherwise alias them), dense in the layout
    the network produced (:func:`channels_last` tells which), and converted to ``dtype``
    in the same copy when given. ``reuse=True`` copies CPU outputs
    into one buffer per layer that the next forward overwrites, taken from :data:`POOL` and
    given back on exit: the caller must be done with a batch's outputs before it runs the
    next one, and with all of them when the block exits. ``maxima``, when given, receives each
    conv output's spatial maxima ``[B, C]``, taken from the output as computed and converted to
    ``dtype`` after: the same numbers as the maxima of the converted maps (rounding is monotonic),
    at a fraction of the cost (a float16 reduction is ~25x slower than a float32 one on the CPU).
    """
    outputs: dict[str, torch.Tensor] = {}
    buffers: dict[str, torch.Tensor] | None = {} if reuse else None
    handles = []
    tokens = loaded.spec.tokens
    owner = threading.get_ident()
    try:
        for layer in layers:
            module = loaded.module(layer)

            def hook(_m, _inp, out, _name=layer):
                if threading.get_ident() != owner:  # another thread's forward of the same network
                    return
                if not isinstance(out, torch.Tensor):
                    raise InputError(f"layer '{_name}' of '{loaded.spec.name}' outputs a "
                                     f"{type(out).__name__}, not a tensor: pick one of its sub-modules "
                                     "(`python -m core layers --model ID` lists them with their shapes)")
                out = unit_view(out, tokens)  # token sequences -> [N, D, h, w] (core.data.layers)
                outputs[_name] = _detached_copy(out, dtype or out.dtype, buffers, _name)
                if maxima is not None and out.dim() == 4:
                    maxima[_name] = out.detach().amax(dim=(2, 3)).to(dtype or out.dtype)

            handles.append(module.register_forward_hook(hook))
        yield outputs
    finally:
        for h in handles:
            h.remove()
        for buf in (buffers or {}).values():
            POOL.give(buf)


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


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Mixed precision for a forward on ``device``: bfloat16 (else float16) autocast on CUDA,
    nothing on the CPU (the extraction and the benchmark's bare forward both use it)."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)


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


def _uint8_image(data: ImageSet, i: int) -> torch.Tensor | Image.Image:
    """Item ``i`` for :meth:`ModelSpec.geometric_transform`: an in-memory image as the uint8
    ``[3, H, W]`` (channels-last view) tensor that torchvision's ``ToImage`` makes of its PIL
    image, without the PIL round trip (a fifth of the input time on 256-px images); any other
    set's PIL image as it is."""
    if isinstance(data, ArrayImageSet):
        return torch.from_numpy(np.array(data.images[i])).permute(2, 0, 1)
    return data[i][0]


def iter_batches(loaded: LoadedModel, data: ImageSet, batch_size: int, device: torch.device,
                 num_workers: int | None = None, fan: _Fan | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(start, input_batch)`` in dataset order, on ``device``.

    On the CPU each batch is a view of a reused buffer, valid until the next one is asked
    for: in-memory images of the input size are normalised into it in row blocks split over
    ``fan``'s threads; other data is resized and cropped image by image (the model's transform)
    and normalised into it, one batch ahead on a helper thread, unless ``num_workers > 0`` asks for DataLoader
    worker processes (the default on CUDA, where they decode while the GPU runs).
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
        held = POOL.take((min(n, batch_size), size, size, 3), torch.float32)
        buf = held.numpy()
        fan = fan or _Fan(1)

        def block(lo: int, hi: int, start: int) -> Callable[[], None]:
            return lambda: uint8_to_input(data.images[start + lo:start + hi], spec.mean, spec.std, size,
                                          out=buf[lo:hi])

        try:
            for start in range(0, n, batch_size):
                m = min(batch_size, n - start)
                edges = np.linspace(0, m, fan.width + 1).astype(int)
                fan.run([block(lo, hi, start) for lo, hi in zip(edges[:-1], edges[1:]) if hi > lo])
                yield start, held[:m].permute(0, 3, 1, 2)
        finally:
            POOL.give(held)
        return
    if device.type == "cpu" and not num_workers:
        # In this process, in turn with the forward: a DataLoader worker process would
        # compete with the forward for the same cores and add the copy of every batch
        # between processes (measured on AlexNet, 2 cores: 0.72 of the bare forward with
        # one worker, 0.85 without; splitting the transforms over threads gained nothing).
        # Resize and crop image by image (uint8), then normalise them into a batch buffer: on one
        # helper thread, for the next batch while the forward of this one runs (PIL's decoding and
        # resampling release the GIL), into the other of two buffers.
        spec = loaded.spec
        geometric = spec.geometric_transform()
        shape = (min(n, batch_size), 3, spec.input_size, spec.input_size)
        bufs = [POOL.take(shape, torch.float32), POOL.take(shape, torch.float32)]
        prep = ThreadPoolExecutor(1, thread_name_prefix="extract-prep")

        def prepare(lo: int, out: torch.Tensor) -> torch.Tensor:
            crops = [geometric(_uint8_image(data, i)) for i in range(lo, min(n, lo + batch_size))]
            return spec.normalize_batch(crops, out=out)

        try:
            ahead = prep.submit(prepare, 0, bufs[0])
            for k, start in enumerate(range(0, n, batch_size)):
                batch = ahead.result()
                if start + batch_size < n:   # the other buffer held the batch before this one: done with
                    ahead = prep.submit(prepare, start + batch_size, bufs[(k + 1) % 2])
                yield start, batch
        finally:
            prep.shutdown(cancel_futures=True)
            for b in bufs:
                POOL.give(b)
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
    return f"{spec.name.replace(':', '-').replace('/', '-')}-{stable_hash(*spec.identity(), length=10)}"


def features_dir(loaded: LoadedModel, data: ImageSet, root: Path | None = None) -> Path:
    """Directory holding every stored layer of ``loaded`` on ``data``."""
    base = (root or cache_root()) / "features"
    return base / model_key(loaded) / f"{data.name.replace(':', '-').replace('/', '-')}-{data.fingerprint[:10]}"


def stored_shape(shape: Sequence[int], layout: str) -> list[int]:
    """Shape of the file holding a ``[N, C, H, W]`` layer ``shape`` in ``layout``."""
    return [shape[0], *shape[2:], shape[1]] if layout == "NHWC" else list(shape)


def maxima_file(maps: Path) -> Path:
    """``conv5.npy`` -> ``conv5.max.npy``: the spatial maxima stored beside a conv map."""
    return maps.with_name(f"{maps.stem}.max.npy")


@dataclass(frozen=True)
class LayerFeatures:
    """One stored layer: read-only float16 ``[N, ...]`` (a memmap view) and its manifest."""

    path: Path
    manifest: dict

    @property
    def sharded(self) -> bool:
        """True for a layer stored as shards (the Ray backend); ``path`` is then its shard folder."""
        return "shards" in self.manifest

    @property
    def layout(self) -> str:
        """Byte order of the stored maps: ``NHWC`` or ``NCHW`` (format 1, vector layers)."""
        return self.manifest.get("layout", "NCHW")

    def array(self) -> np.ndarray:
        """The whole logical ``[N, C, H, W]`` (or ``[N, F]``) array: a view of the memmap, or
        the shards concatenated in memory."""
        if not self.sharded:
            return load_shard(StoredShard(str(self.path), self.layout))
        return np.concatenate([a for _, a in self.shards()])

    def shards(self) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, logical view)`` per shard in order, one open at a time (one shard for a local layer)."""
        if not self.sharded:
            yield 0, self.array()
            return
        for s in self.manifest["shards"]:
            yield int(s["start"]), load_shard(StoredShard(str(self.path.parent / s["file"]), s.get("layout", self.layout)))

    def maxima(self) -> np.ndarray:
        """Spatially max-pooled features ``[N, C]`` float16 (Sec. 4); a vector layer as it is.

        Read from the file stored beside the maps in the same pass (format 2); taken from
        the maps, chunk by chunk, for a format-1 store or shards without that file. The
        same numbers either way: the maximum of float16 values is one of them.
        """
        if len(self.shape) != 4:
            return self.array()
        if not self.sharded:
            if self.manifest.get("maxima"):
                return np.load(maxima_file(self.path), mmap_mode="r")
            return _max_pool(self.array())
        return np.concatenate([np.load(maxima_file(self.path.parent / s["file"]), mmap_mode="r") if s.get("maxima")
                               else _max_pool(maps) for s, (_, maps) in zip(self.manifest["shards"], self.shards())])

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.manifest["shape"])

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]


def _max_pool(maps: np.ndarray, chunk_bytes: int = 64 * 2**20) -> np.ndarray:
    """``[N, C, H, W]`` (any strides) -> ``[N, C]`` maxima over H and W, a bounded slab of rows at a time."""
    step = max(1, chunk_bytes // max(1, maps[:1].nbytes))
    return np.concatenate([maps[i:i + step].max(axis=(2, 3)) for i in range(0, len(maps), step)])


def _manifest_path(npy: Path) -> Path:
    return npy.with_suffix(".json")


def _check_format(manifest: dict) -> None:
    if manifest.get("format") not in READABLE_FORMATS:
        raise CacheCorruptError(f"written in store format {manifest.get('format')}; this version reads formats "
                                f"{', '.join(map(str, READABLE_FORMATS))}")


def _check_maps(npy: Path, shape: Sequence[int], layout: str, maxima: bool) -> None:
    """``npy`` holds float16 ``shape`` (logical) in ``layout``; its maxima file, when listed, ``shape[:2]``."""
    if layout not in ("NCHW", "NHWC") or (layout == "NHWC" and len(shape) != 4):
        raise CacheCorruptError(f"layout {layout!r} for shape {list(shape)}")
    arr = np.load(npy, mmap_mode="r")
    if list(arr.shape) != stored_shape(shape, layout) or arr.dtype != np.float16:
        raise CacheCorruptError(f"{npy.name} is {arr.dtype} {list(arr.shape)}, expected float16 "
                                f"{stored_shape(shape, layout)} ({layout})")
    if maxima:
        mx = np.load(maxima_file(npy), mmap_mode="r")
        if list(mx.shape) != list(shape[:2]) or mx.dtype != np.float16:
            raise CacheCorruptError(f"{maxima_file(npy).name} is {mx.dtype} {list(mx.shape)}, expected "
                                    f"float16 {list(shape[:2])}")


def _open_sharded(directory: Path, layer: str, manifest: dict) -> LayerFeatures | None:
    """A sharded layer (manifest with ``shards``); damaged shards are dropped and ``None`` returned."""
    folder = directory / f"{layer}.shards"
    try:
        shape, stop = manifest["shape"], 0
        _check_format(manifest)
        for s in manifest["shards"]:
            if s["start"] != stop:
                raise CacheCorruptError(f"shard {s['file']} starts at row {s['start']}, expected {stop}")
            _check_maps(directory / s["file"], [s["stop"] - s["start"], *shape[1:]],
                        s.get("layout", manifest.get("layout", "NCHW")), bool(s.get("maxima")))
            stop = s["stop"]
        if stop != shape[0]:
            raise CacheCorruptError(f"shards cover {stop} of {shape[0]} rows")
    except (OSError, ValueError, KeyError, TypeError, CacheCorruptError) as exc:
        log.warning("sharded features %s cannot be used (%s); dropping them, they will be re-extracted", folder, exc)
        _manifest_path(directory / f"{layer}.npy").unlink(missing_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
        return None
    return LayerFeatures(folder, manifest)


def open_layer(directory: Path, layer: str) -> LayerFeatures | None:
    """Open a stored layer; ``None`` if absent. A damaged file is deleted and ``None`` returned.

    A layer is one ``<layer>.npy`` (local backend) or, when its manifest lists ``shards``,
    the files ``<layer>.shards/<start>-<stop>.npy`` (Ray backend, :mod:`core.store.ray_backend`).
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
        _check_format(manifest)
        damaged = npy
        _check_maps(npy, manifest["shape"], manifest.get("layout", "NCHW"), bool(manifest.get("maxima")))
    except (OSError, ValueError, KeyError, TypeError, CacheCorruptError) as exc:
        log.warning("stored features %s cannot be used (%s); dropping them, they will be re-extracted", damaged, exc)
        for p in (npy, man, maxima_file(npy)):
            p.unlink(missing_ok=True)
        return None
    return LayerFeatures(npy, manifest)


def layer_fingerprint(loaded: LoadedModel, data: ImageSet, layer: str, shape: Sequence[int]) -> str:
    """The stored layer's fingerprint (the same for the local and the Ray backend)."""
    return stable_hash(model_key(loaded), data.fingerprint, layer, list(shape))


def _provenance(loaded: LoadedModel, data: ImageSet, device: torch.device) -> dict:
    return {"model": loaded.spec.describe(), "dataset": data.describe(), "device": device_label(device),
            "transform": {"input_size": loaded.spec.input_size, "mean": list(loaded.spec.mean),
                          "std": list(loaded.spec.std), "resize": loaded.spec.resize,
                          **({"interpolation": loaded.spec.interpolation}
                             if loaded.spec.interpolation != "bilinear" else {})},
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


@dataclass(frozen=True)
class Written:
    """What :func:`_run_forward` wrote for one layer: the maps in ``layout`` and, for a conv
    layer, its spatial maxima beside them (both hidden temp files until renamed)."""

    maps: Path
    layout: str
    maxima: Path | None


class _LayerWriter:
    """One layer's files: the maps in the layout of the first batch, and the maxima of a conv map."""

    def __init__(self, directory: Path, layer: str, n: int, first: np.ndarray):
        self.layout = "NHWC" if channels_last(first) else "NCHW"
        tmp = f".tmp-{os.getpid()}"
        self.maps = _NpyWriter(directory / f".{layer}.npy{tmp}", (n, *stored_shape(first.shape, self.layout)[1:]))
        self.maxima = _NpyWriter(directory / f".{layer}.max.npy{tmp}", (n, first.shape[1])) if first.ndim == 4 else None

    def write(self, start: int, batch: np.ndarray, maxima: np.ndarray | None) -> None:
        self.maps.write(start, batch.transpose(0, 2, 3, 1) if self.layout == "NHWC" else batch)
        if self.maxima is not None:
            self.maxima.write(start, maxima)

    @property
    def nbytes_per_row(self) -> int:
        return int(np.prod(self.maps.shape[1:])) * 2

    def close(self) -> Written:
        self.maps.close()
        if self.maxima is not None:
            self.maxima.close()
        return Written(self.maps.path, self.layout, self.maxima.path if self.maxima else None)


def _write_batch(writers: dict[str, _LayerWriter], directory: Path, n: int, start: int,
                 arrays: dict[str, tuple[np.ndarray, np.ndarray | None]], fan: _Fan | None = None) -> None:
    """Append one batch (maps, maxima) to each layer's files; the layers are split in groups of
    about equal bytes, one per thread of ``fan`` (each file is still written by one thread, in order)."""
    for layer, (maps, _) in arrays.items():
        if layer not in writers:
            writers[layer] = _LayerWriter(directory, layer, n, maps)
    fan = fan or _Fan(1)
    groups: list[list[str]] = [[] for _ in range(fan.width)]
    sizes = [0] * len(groups)
    for layer in sorted(arrays, key=lambda l: -arrays[l][0].nbytes):
        g = sizes.index(min(sizes))
        groups[g].append(layer)
        sizes[g] += arrays[layer][0].nbytes

    def write(group: list[str]) -> Callable[[], None]:
        return lambda: [writers[layer].write(start, *arrays[layer]) for layer in group]

    fan.run([write(g) for g in groups if g])


def _batch_arrays(outs: dict[str, torch.Tensor], maxima: dict[str, torch.Tensor],
                  layers: Sequence[str]) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """CPU: one batch's arrays per layer: the float16 maps as the hook stored them (their layout
    kept) and, for a conv map, its ``[B, C]`` spatial maxima (:func:`capture_layers`)."""
    return {layer: (outs[layer].numpy(), maxima[layer].numpy() if layer in maxima else None) for layer in layers}


class _HostCopies:
    """CUDA: each batch's float16 maps and maxima copied to the host on a side stream, without
    blocking, into pinned buffers of the outputs' own strides (no transpose). Two sets of buffers
    are used in turn: one is written to disk while the next batch runs and is copied into the
    other. :meth:`take` returns the host arrays and an event to wait for before reading them.
    """

    def __init__(self, device: torch.device):
        self.stream = torch.cuda.Stream(device)
        self.buffers: dict[tuple[str, int], torch.Tensor] = {}
        self.turn = 0

    def _pinned(self, key: str, t: torch.Tensor) -> torch.Tensor:
        buf = self.buffers.get((key, self.turn))
        if buf is None or buf.dtype != t.dtype or buf.shape[1:] != t.shape[1:] or len(buf) < len(t) \
                or buf[:len(t)].stride() != t.stride():
            buf = self.buffers[(key, self.turn)] = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype,
                                                                       pin_memory=True)
        return buf[:len(t)]

    def take(self, outs: dict[str, torch.Tensor], maxima: dict[str, torch.Tensor], layers: Sequence[str]
             ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray | None]], torch.cuda.Event]:
        self.turn ^= 1
        self.stream.wait_stream(torch.cuda.current_stream(self.stream.device))  # the forward's outputs are done
        arrays = {}
        with torch.cuda.stream(self.stream):
            for layer in layers:
                t = outs[layer]
                t.record_stream(self.stream)  # not reused by the next forward before this copy ends
                host = self._pinned(layer, t)
                host.copy_(t, non_blocking=True)
                host_max = None
                if layer in maxima:
                    maxima[layer].record_stream(self.stream)
                    host_max = self._pinned(f"{layer}.max", maxima[layer])
                    host_max.copy_(maxima[layer], non_blocking=True)
                arrays[layer] = (host.numpy(), None if host_max is None else host_max.numpy())
        return arrays, self.stream.record_event()


def _run_forward(loaded: LoadedModel, data: ImageSet, layers: list[str], directory: Path, device: torch.device,
                 batch_size: int, num_workers: int | None, progress: Progress | None) -> dict[str, Written]:
    """Forward every batch, appending the hooked outputs (and conv maxima) to temp files per layer.

    On the CPU each batch is prepared, run and written in turn, into buffers reused from
    batch to batch: the forward keeps every core busy (its threads spin between ops), so a
    helper thread preparing and writing *beside* it only takes cycles from it (measured: a
    lower ratio to the bare forward). Between forwards the input normalisation and the
    writes are split over as many threads as torch uses. On CUDA the forward runs under
    autocast; the outputs go to pinned host buffers on a side stream (:class:`_HostCopies`)
    while the next batch runs; one helper thread prepares the next input batch and writes
    the previous outputs once their copy is done, in that order, so at most two batches of
    inputs and of outputs are alive at once.
    """
    n = len(data)
    net = loaded.net.to(device).eval()
    gpu = device.type == "cuda"
    writers: dict[str, _LayerWriter] = {}
    done = 0

    def forward(start: int, x: torch.Tensor) -> None:
        nonlocal done
        with autocast(device):
            net(x)
        done = start + len(x)
        if progress:
            progress(done, n, f"extracting {', '.join(layers)} from {loaded.spec.name}")

    written: dict[str, Written] = {}
    maxima: dict[str, torch.Tensor] = {}
    try:
        with torch.inference_mode(), capture_layers(loaded, layers, torch.float16, reuse=not gpu,
                                                    maxima=maxima) as outs:
            if not gpu:
                fan = _Fan(min(4, torch.get_num_threads()))
                try:
                    for start, x in iter_batches(loaded, data, batch_size, device, num_workers, fan):
                        forward(start, x)
                        _write_batch(writers, directory, n, start, _batch_arrays(outs, maxima, layers), fan)
                finally:
                    fan.close()
            else:
                copies = _HostCopies(device)

                def write(start: int, arrays: dict, copied: torch.cuda.Event) -> None:
                    copied.synchronize()
                    _write_batch(writers, directory, n, start, arrays)

                with ThreadPoolExecutor(1, thread_name_prefix="extract-io") as io:
                    batches = iter_batches(loaded, data, batch_size, device, num_workers)
                    pending, writing = io.submit(next, batches, None), None
                    while (item := pending.result()) is not None:
                        pending = io.submit(next, batches, None)
                        forward(*item)
                        if writing is not None:
                            writing.result()  # the host buffers about to be reused are on disk
                        writing = io.submit(write, item[0], *copies.take(outs, maxima, layers))
                    if writing is not None:
                        writing.result()
    finally:
        for layer, w in writers.items():
            written[layer] = w.close()
    if done != n:
        raise CacheCorruptError(f"extraction produced {done} of {n} items")
    return written


def place(w: Written, final: Path) -> list[int]:
    """Rename what :func:`_run_forward` wrote for a layer to ``final`` (and its maxima beside
    it); returns the layer's logical shape. The maxima go first: maps without their maxima
    file are never in place under a manifest that lists it (the manifest is written last)."""
    if w.maxima is not None:
        os.replace(w.maxima, maxima_file(final))
    os.replace(w.maps, final)
    return list(load_shard(StoredShard(str(final), w.layout)).shape)


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
        for layer, w in tmp.items():
            final = directory / f"{layer}.npy"
            shape = place(w, final)
            manifest = {**prov, "format": FORMAT_VERSION, "layer": layer, "shape": shape, "dtype": "float16",
                        "layout": w.layout, "maxima": w.maxima is not None,
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
    """Images/s of the bare model over pre-made batches (the benchmark's reference), with the
    extraction's own precision (:func:`autocast`)."""
    net = loaded.net.to(device).eval()
    xs = [b.to(device) for b in batches]
    with torch.inference_mode(), autocast(device):
        net(xs[0])
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for x in xs:
            net(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return sum(len(x) for x in xs) / (time.perf_counter() - t0)


def layer_shapes(loaded: LoadedModel, device: str = "cpu", layers: Sequence[str] | None = None
                 ) -> dict[str, tuple[int, ...]]:
    """Output shape (without batch) of each of ``layers`` (default: the analysable ones) as stored:
    units first, token outputs on their grid. One dummy forward pass."""
    x = torch.zeros(1, 3, loaded.spec.input_size, loaded.spec.input_size, device=device)
    with torch.no_grad(), capture_layers(loaded, list(loaded.spec.layers if layers is None else layers)) as store:
        loaded.net.to(device)(x)
    return {k: tuple(v.shape[1:]) for k, v in store.items()}


def all_layer_shapes(loaded: LoadedModel, device: str = "cpu") -> dict[str, tuple[int, ...] | None]:
    """Every module path of the network with its output shape as stored (None where the module
    does not run in a plain forward or outputs something other than one tensor). One forward."""
    x = torch.zeros(1, 3, loaded.spec.input_size, loaded.spec.input_size, device=device)
    shapes: dict[str, tuple[int, ...] | None] = {p: None for p in module_paths(loaded.net)}
    handles = []

    def hook(name: str):
        def record(_m, _inp, out):
            if isinstance(out, torch.Tensor):
                shapes[name] = tuple(unit_view(out, loaded.spec.tokens).shape[1:])
        return record

    try:
        for name, module in loaded.net.named_modules():
            if name:
                handles.append(module.register_forward_hook(hook(name)))
        with torch.no_grad():
            loaded.net.to(device)(x)
    finally:
        for h in handles:
            h.remove()
    return shapes
