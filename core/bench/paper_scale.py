"""Paper-scale benchmark: the paper's analyses on a PASCAL VOC 2007-sized tree, stage by stage.

``python -m core bench --paper-scale [--fraction F] [--weights FILE] [--json PATH] [--root DIR]``
calls :func:`run` and prints :func:`format_paper_table`.

1. :func:`generate` writes (or reuses, when its manifest matches) a synthetic
   ``VOCdevkit/VOC2007`` tree the size of PASCAL VOC 2007 times ``fraction``: 5,011 trainval
   and 4,952 test JPEGs of about 500x375 px, each with 1-4 boxes of the 20 VOC classes
   (mean 2.4, VOC's class frequencies), about 10% marked difficult, drawn with numpy: each
   class its own colours, pattern and shape, over a gradient with noise. Image ``i`` of a
   split depends only on the seed, the split and ``i``, so a smaller fraction is a prefix
   of a larger one.
2. :func:`run` registers the tree (``register_voc``: task ``voc07-det-gt``, the paper's
   PASCAL-DET-GT) and runs each stage in its own fresh process: the extraction of the seven
   layers of ``tv:alexnet`` on the test split, then on trainval; then for every layer
   selectivity, filter AP, filters needed (SVM ranking), overlap, ablation, layer mAP and
   top activations, and sparsity over all layers at once. Each stage reports its wall time
   (measured in the child, once its imports, the data's registration and the model are
   ready: ``process_s`` is the whole process) and peak RSS (the child's ``ru_maxrss`` from
   ``wait4``, so a child killed for memory is measured too; it counts the pages of memory
   -mapped features it touched; ``peak_anon_mib`` samples the anonymous part alone, and
   ``children_peak_rss_mib`` the sampled peak of the summed RSS of the processes the stage
   started itself, e.g. the DataLoader workers of an extraction on CUDA). The JSON records the ``FILTERSCOPE_*``
   settings the stages saw (``settings``: the memory budget among them).
   A failing stage is recorded with its error and the run goes on.

Features and results live in a fresh cache folder of the run (``<root>/run-cache``,
removed at start and at the end), and the result cache is emptied before every stage:
every analysis is computed cold from the stored features (overlap therefore recomputes the
SVM ranking that filters needed also computes; in the app the two share it).

Without ``weights`` the network is torchvision's AlexNet with a seeded random init, the same
in every stage process (``TORCH_HOME`` points at an empty folder, so no hub weights are used).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from core.data.datasets import VOC_CLASSES

ROOT = Path(__file__).resolve().parent.parent.parent
GENERATOR = "filterscope-paper-scale"
GENERATOR_VERSION = 1
#: PASCAL VOC 2007's image counts per split.
VOC07_IMAGES = {"trainval": 5011, "test": 4952}
_SPLIT_CODE = {"trainval": 0, "test": 1}
_ID_BASE = {"trainval": 1, "test": 10_001}
#: Objects per class in VOC 2007 trainval: the synthetic boxes' class frequencies.
CLASS_COUNTS = (331, 418, 599, 398, 634, 272, 1644, 389, 1432, 356, 310, 538, 406, 390, 5447, 625, 353, 425,
                328, 367)
BOXES_P = (0.25, 0.25, 0.35, 0.15)   # 1, 2, 3 or 4 boxes: mean 2.4
DIFFICULT_P = 0.1
IMAGE_SIZES = ((500, 375), (375, 500), (500, 333))
IMAGE_SIZES_P = (0.6, 0.2, 0.2)
#: The first images of each split start with one (not difficult) box of class ``i % 20``:
#: every class has crops in both splits at any fraction.
_FORCED = 40

LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")
ANALYSES = ("selectivity", "filter_ap", "filters_needed", "overlap", "ablation", "layer_map", "top_activations")
TASK = "voc07-det-gt"
TARGET_PEAK_RSS_MIB = 2048.0
#: The real extraction path's throughput over the bare forward's on the same crops (#30).
TARGET_EXTRACTION_RATIO = 0.8
#: Analysis time may grow at most this much faster than the data between two fractions (#30: fraction 1
#: within 2.6 x fraction 0.4, i.e. 1.04 x the data ratio of 2.5).
TARGET_TIME_SLOPE = 1.04
DEFAULT_JSON = ROOT / "bench" / "paper_scale.json"


# =========================================================================== the tree
def split_sizes(fraction: float) -> dict[str, int]:
    """Images per split at ``fraction`` of VOC 2007 (at least one each)."""
    fraction = check_fraction(fraction)
    return {s: max(1, int(round(n * fraction))) for s, n in VOC07_IMAGES.items()}


def check_fraction(fraction: Any) -> float:
    """``fraction`` as a float in (0, 1]; InputError otherwise."""
    from core.errors import InputError

    try:
        f = float(fraction)
    except (TypeError, ValueError):
        raise InputError(f"--fraction {fraction!r} is not a number; give a fraction of PASCAL VOC 2007 in (0, 1], "
                         "e.g. 0.02") from None
    if not (math.isfinite(f) and 0.0 < f <= 1.0):
        raise InputError(f"--fraction {fraction!r} is outside (0, 1]; give a fraction of PASCAL VOC 2007, e.g. 0.02 "
                         "(1 = 5,011 trainval + 4,952 test images)")
    return f


def image_id(split: str, index: int) -> str:
    return f"{_ID_BASE[split] + index:06d}"


def image_spec(seed: int, split: str, index: int) -> tuple[int, int, list[tuple]]:
    """``(width, height, objects)`` of image ``index`` of ``split``; objects are ``(class name,
    0-based half-open box, difficult, truncated)``. Depends only on its arguments."""
    rng = np.random.default_rng([seed, _SPLIT_CODE[split], index])
    w, h = IMAGE_SIZES[rng.choice(len(IMAGE_SIZES), p=IMAGE_SIZES_P)]
    weights = np.asarray(CLASS_COUNTS, float) / sum(CLASS_COUNTS)
    objects = []
    for j in range(1 + rng.choice(len(BOXES_P), p=BOXES_P)):
        forced = j == 0 and index < _FORCED
        cls = index % len(VOC_CLASSES) if forced else int(rng.choice(len(VOC_CLASSES), p=weights))
        bw, bh = (int(rng.uniform(0.15, 0.75) * side) for side in (w, h))
        x0, y0 = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
        difficult = not forced and rng.random() < DIFFICULT_P
        truncated = x0 == 0 or y0 == 0 or x0 + bw == w or y0 + bh == h
        objects.append((VOC_CLASSES[cls], (x0, y0, x0 + bw, y0 + bh), int(difficult), int(truncated)))
    return w, h, objects


def voc_xml(image_id: str, w: int, h: int, objects: Sequence[tuple]) -> str:
    """A VOC 2007 annotation (the test suite's format); boxes are written 1-based inclusive."""
    objs = "".join(
        f"<object><name>{name}</name><pose>Unspecified</pose><truncated>{trunc}</truncated>"
        f"<difficult>{diff}</difficult><bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin>"
        f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for name, (x0, y0, x1, y1), diff, trunc, *_ in objects)
    return (f"<annotation><folder>VOC2007</folder><filename>{image_id}.jpg</filename>"
            f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>"
            f"<segmented>0</segmented>{objs}</annotation>")


def _class_styles(seed: int) -> list[dict]:
    """Per class: two colours, a pattern, its period and angle, and a shape (seeded)."""
    out = []
    for c in range(len(VOC_CLASSES)):
        rng = np.random.default_rng([seed, 99, c])
        a = rng.integers(30, 226, 3)
        out.append({"a": a, "b": np.clip(255 - a + rng.integers(-40, 41, 3), 0, 255),
                    "pattern": ("stripes", "checker", "dots", "rings")[c % 4],
                    "period": float(rng.uniform(6, 28)), "angle": float(rng.uniform(0, np.pi)),
                    "ellipse": bool(c % 3 == 1)})
    return out


_NOISE: dict[int, np.ndarray] = {}


def _noise(seed: int) -> np.ndarray:
    if seed not in _NOISE:
        _NOISE[seed] = np.random.default_rng([seed, 7]).integers(-10, 11, (640, 640, 3), dtype=np.int16)
    return _NOISE[seed]


def draw_image(seed: int, split: str, index: int, spec: tuple[int, int, list[tuple]]) -> np.ndarray:
    """The pixels of one image ``[h, w, 3]`` uint8: a two-colour gradient, each box in its class's
    pattern (colours and period jittered per instance), noise over all."""
    w, h, objects = spec
    rng = np.random.default_rng([seed, _SPLIT_CODE[split], index, 1])
    styles = _class_styles(seed)
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0.0, 1.0, w if rng.random() < 0.5 else h, dtype=np.float32)
    ramp = (c0 + (c1 - c0) * t[:, None]).astype(np.int16)
    img = np.empty((h, w, 3), np.int16)
    img[:] = ramp[None, :, :] if len(t) == w else ramp[:, None, :]
    for name, (x0, y0, x1, y1), *_ in objects:
        st = styles[VOC_CLASSES.index(name)]
        bh, bw = y1 - y0, x1 - x0
        yy, xx = np.ogrid[:bh, :bw]
        p = st["period"] * rng.uniform(0.8, 1.25)
        if st["pattern"] == "stripes":
            m = np.sin(2 * np.pi * (xx * np.cos(st["angle"]) + yy * np.sin(st["angle"])) / p) > 0
        elif st["pattern"] == "checker":
            m = ((xx // int(p)) + (yy // int(p))) % 2 == 0
        elif st["pattern"] == "dots":
            m = ((xx % p) - p / 2) ** 2 + ((yy % p) - p / 2) ** 2 < (p / 3) ** 2
        else:
            m = (np.hypot(xx - bw / 2, yy - bh / 2) // p) % 2 == 0
        jitter = rng.integers(-20, 21, 3)
        tex = np.where(m[..., None], st["a"] + jitter, st["b"] + jitter).astype(np.int16)
        if st["ellipse"]:
            inside = ((xx - bw / 2) / (bw / 2)) ** 2 + ((yy - bh / 2) / (bh / 2)) ** 2 <= 1.0
            region = img[y0:y1, x0:x1]
            region[inside] = tex[inside]
        else:
            img[y0:y1, x0:x1] = tex
    noise = _noise(seed)
    oy, ox = int(rng.integers(0, noise.shape[0] - h + 1)), int(rng.integers(0, noise.shape[1] - w + 1))
    img += noise[oy:oy + h, ox:ox + w]
    return np.clip(img, 0, 255).astype(np.uint8)


def _write_chunk(voc_dir: str, seed: int, split: str, start: int, stop: int) -> list[tuple[int, int, int]]:
    """Write images ``start:stop`` of ``split``: ``(boxes, difficult, jpeg bytes)`` of each."""
    from PIL import Image

    voc = Path(voc_dir)
    out = []
    for i in range(start, stop):
        spec = image_spec(seed, split, i)
        iid = image_id(split, i)
        jpg = voc / "JPEGImages" / f"{iid}.jpg"
        Image.fromarray(draw_image(seed, split, i, spec)).save(jpg, quality=90)
        (voc / "Annotations" / f"{iid}.xml").write_text(voc_xml(iid, *spec))
        objects = spec[2]
        out.append((len(objects), sum(o[2] for o in objects), jpg.stat().st_size))
    return out


def default_root() -> Path:
    from core.config import cache_root

    return cache_root() / "paper_scale"


def _manifest(root: Path) -> dict | None:
    try:
        return json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


def generate(root: str | os.PathLike | None = None, fraction: float = 1.0, seed: int = 0, workers: int | None = None,
             say: Callable[[str], None] | None = None) -> dict:
    """Write the synthetic ``<root>/VOCdevkit/VOC2007`` tree (or reuse it: same fraction, seed and
    generator version in ``<root>/manifest.json``); returns the manifest.

    ``workers`` processes draw the images (default: up to 2). A folder that holds a VOCdevkit
    without this generator's manifest is never overwritten (InputError).
    """
    from core.errors import InputError

    fraction = check_fraction(fraction)
    root = Path(root).expanduser() if root is not None else default_root()
    want = {"generator": GENERATOR, "version": GENERATOR_VERSION, "fraction": fraction, "seed": int(seed)}
    man = _manifest(root)
    voc = root / "VOCdevkit" / "VOC2007"
    if man is not None and man.get("complete") and {k: man.get(k) for k in want} == want and \
            all((voc / "ImageSets" / "Main" / f"{s}.txt").is_file() for s in VOC07_IMAGES):
        return {**man, "reused": True}
    if (root / "VOCdevkit").exists():
        if man is None or man.get("generator") != GENERATOR:
            raise InputError(f"{root} holds a VOCdevkit that this benchmark did not write; give --root an empty "
                             "folder (or one it wrote before)")
        shutil.rmtree(root / "VOCdevkit")
    root.mkdir(parents=True, exist_ok=True)
    # ours from now on, but not complete: an interrupted generation is redone by the next call
    (root / "manifest.json").write_text(json.dumps({**want, "complete": False}))
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    sizes = split_sizes(fraction)
    workers = max(1, min(2, os.cpu_count() or 1) if workers is None else workers)
    t0 = time.perf_counter()
    splits: dict[str, dict] = {}
    chunk = 64
    jobs = [(split, s, min(n, s + chunk)) for split, n in sizes.items() for s in range(0, n, chunk)]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            done = list(pool.map(_write_chunk, *zip(*[(str(voc), int(seed), *j) for j in jobs])))
    else:
        done = [_write_chunk(str(voc), int(seed), *j) for j in jobs]
    for (split, _, _), rows in zip(jobs, done):
        d = splits.setdefault(split, {"images": 0, "boxes": 0, "difficult": 0, "jpeg_bytes": 0})
        d["images"] += len(rows)
        d["boxes"] += sum(r[0] for r in rows)
        d["difficult"] += sum(r[1] for r in rows)
        d["jpeg_bytes"] += sum(r[2] for r in rows)
    for split, n in sizes.items():
        splits[split]["crops"] = splits[split]["boxes"] - splits[split]["difficult"]
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{image_id(split, i)}\n" for i in range(n)))
    man = {**want, "complete": True, "splits": splits, "seconds": round(time.perf_counter() - t0, 1),
           "workers": workers}
    (root / "manifest.json").write_text(json.dumps(man, indent=1))
    if say:
        say(f"generated {sum(d['images'] for d in splits.values())} images in {man['seconds']} s under {root}")
    return {**man, "reused": False}


# =========================================================================== stages (in the child)
def _service():
    from core import service

    return service


def _stage_extract(spec: dict) -> dict:
    svc = _service()
    t = svc.task(TASK)
    ds = t.test if spec["split"] == "test" else t.train
    out = svc.extract_all(spec["model"], ds, spec["layers"])
    return {"items": len(svc.load_set(ds)), "layers": list(out), "dataset": ds}


def _stage_extraction_ratio(spec: dict) -> dict:
    """The real path (JPEG decode, crop with context, resize, forward, write) against the bare forward
    on the same crops made beforehand: the first ``crops`` test crops, ``pairs`` back-to-back pairs in
    alternating order (:func:`core.bench.quick._extraction_pairs`). 512 crops by default: the first batch
    is prepared before any forward can overlap it, a fixed cost that 256 crops weighted twice as much as
    a real extraction of thousands does."""
    import copy

    from core.bench.quick import _extraction_pairs
    from core.hashing import stable_hash
    from core.store.extraction import resolve_device

    svc = _service()
    full = svc.load_set(svc.task(TASK).test)
    n = min(len(full), int(spec.get("crops", 512)))
    data = copy.copy(full)      # the first n crops, as a box set of their own
    data.paths, data.labels, data.boxes = full.paths[:n], full.labels[:n], full.boxes[:n]
    data.fingerprint = stable_hash(full.fingerprint, "head", n)
    lm, bs = svc.load_model(spec["model"]), 64
    geometric = lm.spec.geometric_transform()
    crops = [geometric(data[i][0]) for i in range(n)]
    batches = [lm.spec.normalize_batch(crops[s:s + bs]).clone() for s in range(0, n, bs)]
    del crops
    return _extraction_pairs(lm, data, batches, list(spec["layers"]), bs, resolve_device("auto"),
                             int(spec.get("pairs", 5)))


def _finite(v: Any) -> float | None:
    v = float(v)
    return round(v, 6) if math.isfinite(v) else None


def _stage_analysis(spec: dict) -> dict:
    svc = _service()
    model, layer, name = spec["model"], spec.get("layer"), spec["stage"]
    if name == "selectivity":
        r = svc.selectivity(model, TASK, layer)
        return {"mean_aue": _finite(np.mean(r.aue)), "filters": int(len(r.aue))}
    if name == "filter_ap":
        r = svc.filter_ap(model, TASK, layer)
        return {"max_ap": _finite(np.nanmax(r.ap)), "shape": list(r.ap.shape)}
    if name == "filters_needed":
        r = svc.filters_needed(model, TASK, layer)
        return {"median_k50": _finite(np.median(r.k50)), "full_map": _finite(np.nanmean(r.ranking.full_ap))}
    if name == "overlap":
        r = svc.overlap(model, TASK, layer)
        return {"k": int(r.k), "mean_overlap": _finite(np.mean(r.matrix))}
    if name == "ablation":
        r = svc.ablation(model, TASK, layer)
        return {"rows": len(r["summary"])}
    if name == "layer_map":
        return {"map": _finite(svc.layer_map(model, TASK, layer)["map"])}
    if name == "top_activations":
        r = svc.top_activations(model, TASK, layer, 0)
        return {"top_score": _finite(r["scores"][0]) if len(r["scores"]) else None}
    if name == "cka":   # the network against itself, every layer pair: streams minibatches over budget
        r = svc.cka_layers(model, model, TASK, debiased=True, layers_a=spec["layers"], layers_b=spec["layers"])
        return {"estimator": r.estimator, "min_offdiag": _finite(np.min(r.matrix)), "layers": list(r.layers_a)}
    if name == "sparsity":
        r = svc.sparsity(model, TASK, spec["layers"])
        return {"nonzero_pct": {row["layer"]: _finite(row["mean"]) for row in r["table"]}}
    from core.errors import InputError

    raise InputError(f"unknown paper-scale stage {name!r}; known: extract, {', '.join(ANALYSES)}, sparsity")


class _Sampler:
    """Samples this process's ``RssAnon`` (Linux) every 50 ms: its peak without file-backed pages; and
    every 200 ms the summed RSS of the processes it started (DataLoader workers of a CUDA extraction),
    which its own ``ru_maxrss`` leaves out (``RUSAGE_CHILDREN`` would report a forked child's copy of
    this process's pages before it exec'd)."""

    def __init__(self) -> None:
        self.peak_kib: int | None = None
        self.children_peak: int = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        try:
            with open("/proc/self/status") as fh:
                for line in fh:
                    if line.startswith("RssAnon:"):
                        kib = int(line.split()[1])
                        self.peak_kib = max(self.peak_kib or 0, kib)
                        return
        except (OSError, ValueError, IndexError):
            pass

    def _sample_children(self) -> None:
        try:
            import psutil

            total = 0
            for c in psutil.Process().children(recursive=True):
                try:
                    total += c.memory_info().rss
                except psutil.Error:
                    pass
            self.children_peak = max(self.children_peak, total)
        except Exception:  # noqa: BLE001 - a measurement aid only
            pass

    def _loop(self) -> None:
        tick = 0
        while not self._stop.wait(0.05):
            self._sample()
            tick += 1
            if tick % 4 == 0:
                self._sample_children()

    def stop(self) -> tuple[float | None, float | None]:
        """``(peak RssAnon, peak summed RSS of child processes)`` in MiB (None: not measured / none)."""
        self._stop.set()
        self._thread.join(1)
        self._sample()
        anon = None if self.peak_kib is None else round(self.peak_kib / 1024, 1)
        return anon, (round(self.children_peak / 2**20, 1) if self.children_peak else None)


def _child_main() -> None:
    """Run one stage (``sys.argv[1]``: its spec file) and write its outcome to ``spec["out"]``."""
    import resource

    spec = json.loads(Path(sys.argv[1]).read_text())
    sampler = _Sampler()
    out: dict[str, Any] = {"ok": False, "error": None, "wall_s": None, "info": {}}
    try:
        import torch

        torch.manual_seed(int(spec["torch_seed"]))  # the same random init in every stage
        from core.service import catalog

        catalog.register_voc(spec["root"])
        catalog.load_model(spec["model"])
        t0 = time.perf_counter()
        stage = {"extract": _stage_extract, "extraction_ratio": _stage_extraction_ratio}.get(spec["stage"],
                                                                                          _stage_analysis)
        info = stage(spec)
        out.update(ok=True, wall_s=round(time.perf_counter() - t0, 3), info=info)
    except BaseException as exc:  # noqa: BLE001 - MemoryError included: the parent records it
        traceback.print_exc()
        out["error"] = f"{type(exc).__name__}: {exc}"[:2000]
    finally:
        out["ru_maxrss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        out["peak_anon_mib"], out["children_peak_rss_mib"] = sampler.stop()
        Path(spec["out"]).write_text(json.dumps(out))
    sys.exit(0 if out["ok"] else 1)


# =========================================================================== stages (in the parent)
@dataclass
class _Outcome:
    returncode: int
    seconds: float
    maxrss_mib: float | None
    timed_out: bool


def _wait_measured(proc: subprocess.Popen, timeout_s: float | None, t0: float) -> _Outcome:
    """Wait for ``proc`` with ``os.wait4``: its exit status and its own ``ru_maxrss`` (KiB on Linux)."""
    timed_out = False
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if timeout_s is not None and time.perf_counter() - t0 > timeout_s:
            try:
                os.killpg(proc.pid, 9)  # the stage and any worker processes it started
            except OSError:
                proc.kill()
            timed_out = True
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return _Outcome(proc.returncode, time.perf_counter() - t0, round(usage.ru_maxrss / scale, 1), timed_out)


_CHILD = "from core.bench.paper_scale import _child_main; _child_main()"


def _run_stage(k: int, spec: dict, env: dict, run_dir: Path, timeout_s: float | None) -> dict:
    spec_path, out_path, log_path = (run_dir / f"stage-{k:02d}.{ext}" for ext in ("json", "out.json", "log"))
    out_path.unlink(missing_ok=True)
    spec_path.write_text(json.dumps({**spec, "out": str(out_path)}))
    t0 = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(spec_path)], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    res = _wait_measured(proc, timeout_s, t0)
    try:
        child = json.loads(out_path.read_text())
    except (OSError, ValueError):
        child = {}
    error = child.get("error")
    if res.timed_out:
        error = f"TimeoutError: still running after {timeout_s} s (killed)"
    elif res.returncode < 0:
        error = (f"killed by signal {-res.returncode}" + (" (out of memory?)" if -res.returncode == 9 else "")
                 + (f"; {error}" if error else ""))
    elif res.returncode and not error:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
        error = f"exited with {res.returncode}: {' | '.join(tail)}"[:2000]
    ok = res.returncode == 0 and bool(child.get("ok")) and not res.timed_out
    return {"name": spec["stage"] if spec["stage"] != "extract" else f"extract:{spec['split']}",
            "layer": spec.get("layer") or ("all" if spec["stage"] in ("extract", "sparsity", "extraction_ratio", "cka")
                                           else None),
            "wall_s": child.get("wall_s") if ok else None, "process_s": round(res.seconds, 2),
            "peak_rss_mib": res.maxrss_mib, "peak_anon_mib": child.get("peak_anon_mib"),
            "children_peak_rss_mib": child.get("children_peak_rss_mib"),
            "ok": ok, "error": None if ok else (error or "failed without a message"), "info": child.get("info") or {},
            "log": str(log_path)}


def _dir_bytes(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


def stage_plan(layers: Sequence[str] = LAYERS, analyses: Sequence[str] = ANALYSES,
               sparsity: bool = True) -> list[dict]:
    """The stages in order: extraction of test, then trainval; the extraction ratio against the bare
    forward; per layer each analysis; sparsity and the layer x layer CKA over all layers."""
    plan = [{"stage": "extract", "split": split, "layers": list(layers)} for split in ("test", "trainval")]
    plan.append({"stage": "extraction_ratio", "layers": list(layers), "crops": 512, "pairs": 5})
    plan += [{"stage": a, "layer": l} for l in layers for a in analyses]
    if sparsity:
        plan.append({"stage": "sparsity", "layers": list(layers)})
        plan.append({"stage": "cka", "layers": list(layers)})
    return plan


def run(fraction: float = 1.0, weights: str | os.PathLike | None = None, root: str | os.PathLike | None = None,
        seed: int = 0, say: Callable[[str], None] | None = None, *, plan: Sequence[dict] | None = None,
        stage_timeout_s: float | None = 6 * 3600, keep_cache: bool = False, workers: int | None = None) -> dict:
    """Generate (or reuse) the tree, run every stage in its own process; failures are recorded, never raised.

    ``plan`` replaces :func:`stage_plan`'s stages (tests: fewer layers and analyses); ``keep_cache``
    keeps the run's features (``<root>/run-cache``) after the run.
    """
    from core import config
    from core.errors import InputError
    from core.hashing import code_version
    from core.bench.quick import _load_avg, machine_info
    from core.store.extraction import device_label, resolve_device

    fraction = check_fraction(fraction)
    if weights is not None:
        weights = Path(weights).expanduser().resolve()
        if not weights.is_file():
            raise InputError(f"--weights {weights}: no such file; give a local AlexNet state dict (.pt/.pth)")
    root = Path(root).expanduser().resolve() if root is not None else default_root()
    say = say or (lambda _msg: None)
    t_start = time.perf_counter()
    machine = machine_info()  # load average at the start
    man = generate(root, fraction, seed, workers=workers, say=say)
    model = f"tv:alexnet@{weights}" if weights else "tv:alexnet"
    run_dir = root / "run"
    cache = root / "run-cache"
    for d in (run_dir, cache):
        shutil.rmtree(d, ignore_errors=True)
    run_dir.mkdir(parents=True)
    (run_dir / "torch-home").mkdir()
    env = {**os.environ, "FILTERSCOPE_CACHE": str(cache), "TORCH_HOME": str(run_dir / "torch-home")}
    for k in config.USER_DATA_SETTINGS:  # only the benchmark's tree and model in the stage processes
        env.pop(k, None)
    dev = resolve_device("auto")
    result: dict[str, Any] = {
        "kind": "paper-scale", "fraction": fraction, "seed": seed, "root": str(root), "model": model,
        "weights": str(weights) if weights else None,
        "weights_note": "user file" if weights else f"random init, torch.manual_seed({seed}) in every stage",
        "task": TASK, "device": device_label(dev),
        "settings": {k: config.get(k, env) for k in config.SETTINGS if k not in config.USER_DATA_SETTINGS},
        "machine": machine,
        "code_version": code_version(),
        "generation": {"seconds": man.get("seconds"), "reused": man.get("reused"), "workers": man.get("workers")},
        "splits": {s: {k: man["splits"][s][k] for k in ("images", "boxes", "difficult", "crops", "jpeg_bytes")}
                   for s in ("trainval", "test")},
        "stages": [],
    }
    plan = list(plan) if plan is not None else stage_plan()
    for k, spec in enumerate(plan):
        shutil.rmtree(cache / "results", ignore_errors=True)  # every analysis cold
        full = {**spec, "model": model, "root": str(root), "torch_seed": seed}
        label = f"{spec['stage']}{':' + spec['split'] if 'split' in spec else ''} {spec.get('layer', '')}".strip()
        say(f"[{k + 1}/{len(plan)}] {label} ...")
        row = _run_stage(k, full, env, run_dir, stage_timeout_s)
        result["stages"].append(row)
        say(f"[{k + 1}/{len(plan)}] {label}: " + (f"{row['wall_s']:.1f} s, " if row["ok"] else "FAILED, ")
            + f"peak RSS {row['peak_rss_mib']} MiB" + ("" if row["ok"] else f" ({row['error'][:200]})"))
        if spec["stage"] == "extract":
            result["feature_store_bytes"] = _dir_bytes(cache / "features")
    result["feature_store_bytes"] = _dir_bytes(cache / "features")
    _summarise(result)
    result["machine"]["load_avg_end"] = _load_avg()
    result["total_s"] = round(time.perf_counter() - t_start, 1)
    if not keep_cache:
        shutil.rmtree(cache, ignore_errors=True)
    json.dumps(result)  # fail here, not in the CLI, if something is not JSON-ready
    return result


def _summarise(result: dict) -> None:
    """Crops/s per split, total analysis seconds, max peak RSS and the target."""
    stages = result["stages"]
    rate = {}
    for s in stages:
        if s["name"].startswith("extract:"):
            split = s["name"].split(":", 1)[1]
            items = (s.get("info") or {}).get("items") or result["splits"][split]["crops"]
            rate[split] = round(items / s["wall_s"], 2) if s["ok"] and s["wall_s"] else None
    result["extraction_crops_per_s"] = rate
    after = [s for s in stages if not s["name"].startswith("extract")]
    result["analysis_s"] = round(sum(s["wall_s"] for s in after if s["wall_s"] is not None), 2)
    result["analysis_process_s"] = round(sum(s["process_s"] for s in after), 2)
    result["failed_stages"] = sum(not s["ok"] for s in stages)
    peaks = [s["peak_rss_mib"] for s in stages if s["peak_rss_mib"] is not None]
    peak = max(peaks) if peaks else None
    result["max_peak_rss_mib"] = peak
    worst = max((s for s in stages if s["peak_rss_mib"] is not None), key=lambda s: s["peak_rss_mib"], default=None)
    result["max_peak_rss_stage"] = f"{worst['name']} {worst['layer']}" if worst else None
    result["targets"] = {"max_peak_rss_mib": {"value": peak, "target": f"<= {TARGET_PEAK_RSS_MIB:g}",
                                              "pass": None if peak is None else peak <= TARGET_PEAK_RSS_MIB}}
    ratio = next((s for s in stages if s["name"] == "extraction_ratio"), None)
    value = (ratio.get("info") or {}).get("ratio") if ratio and ratio["ok"] else None
    result["targets"]["extraction_vs_bare_forward"] = {
        "value": value, "target": f">= {TARGET_EXTRACTION_RATIO:g}",
        "pass": None if value is None else value >= TARGET_EXTRACTION_RATIO}


def scaling(results: Sequence[dict]) -> dict:
    """Runs at several fractions as one record: the runs, smallest fraction first, and how the smallest and
    the largest compare: analysis time (every stage after extraction, each in its own process) against
    the data, and the peak RSS of each (flat in the data: every stage of both within the target).

    The time target is ``TARGET_TIME_SLOPE`` x the ratio of the fractions (#30: fraction 1 within 2.6 x
    fraction 0.4)."""
    from core.errors import InputError

    runs = sorted(results, key=lambda r: r["fraction"])
    if len(runs) < 2 or runs[0]["fraction"] == runs[-1]["fraction"]:
        raise InputError("the scaling needs runs at two different fractions, e.g. --fraction 0.4,1")
    small, large = runs[0], runs[-1]
    crops = [sum(r["splits"][s]["crops"] for s in ("trainval", "test")) for r in (small, large)]
    data_ratio = large["fraction"] / small["fraction"]
    time_ratio = large["analysis_s"] / small["analysis_s"] if small["analysis_s"] else None
    bound = TARGET_TIME_SLOPE * data_ratio
    complete = not small["failed_stages"] and not large["failed_stages"]
    peaks = [r["max_peak_rss_mib"] for r in (small, large)]
    return {
        "kind": "paper-scale scaling", "runs": runs,
        "fractions": [small["fraction"], large["fraction"]], "crops": crops,
        "data_ratio": round(data_ratio, 4), "crops_ratio": round(crops[1] / crops[0], 4),
        "analysis_s": [small["analysis_s"], large["analysis_s"]],
        "time_ratio": None if time_ratio is None else round(time_ratio, 4),
        "process_time_ratio": (round(large["analysis_process_s"] / small["analysis_process_s"], 4)
                               if small["analysis_process_s"] else None),
        "max_peak_rss_mib": peaks,
        "targets": {
            "time_ratio": {"value": None if time_ratio is None else round(time_ratio, 4),
                           "target": f"<= {bound:.2f} ({TARGET_TIME_SLOPE:g} x the data ratio {data_ratio:.2f})",
                           "pass": None if time_ratio is None or not complete else time_ratio <= bound},
            "max_peak_rss_mib": {"value": max(p for p in peaks if p is not None) if any(peaks) else None,
                                 "target": f"<= {TARGET_PEAK_RSS_MIB:g} at every fraction",
                                 "pass": None if None in peaks else all(p <= TARGET_PEAK_RSS_MIB for p in peaks)},
        },
        "complete": complete,
    }


_TITLES = {"selectivity": "selectivity (Fig. 1)", "filter_ap": "single-filter AP (Fig. 3)",
           "filters_needed": "filters needed (Fig. 4)", "overlap": "overlap (Fig. 5)",
           "ablation": "ablations (Tables 7-8)", "layer_map": "layer mAP (Tables 1-4)",
           "top_activations": "top activations", "sparsity": "sparsity (Table 6)", "cka": "layer x layer CKA"}


def _total_cell(stages: Sequence[dict]) -> str:
    if not stages:
        return "-"
    failed = sum(not s["ok"] for s in stages)
    wall = sum(s["wall_s"] for s in stages if s["ok"])
    return (f"{wall:,.0f} s · {max(s['peak_rss_mib'] for s in stages):,.0f} MiB"
            + (f" ({failed} failed)" if failed else ""))


def format_summary(record: dict) -> str:
    """Markdown, short enough for the README: per stage kind, its wall time summed over every layer and
    its largest peak RSS, at each fraction of a :func:`scaling` record."""
    runs = record["runs"]
    kinds = [("extraction, both splits", lambda s: s["name"].startswith("extract:"))]
    kinds += [(_TITLES.get(a, a), lambda s, a=a: s["name"] == a) for a in (*ANALYSES, "sparsity", "cka")]
    crops = [sum(r["splits"][x]["crops"] for x in ("trainval", "test")) for r in runs]
    head = " | ".join(f"fraction {r['fraction']:g} ({c:,} crops)" for r, c in zip(runs, crops))
    lines = [f"| stage, all layers | {head} |", "|---|" + "---:|" * len(runs)]
    for name, pick in kinds:
        cells = [_total_cell([s for s in r["stages"] if pick(s)]) for r in runs]
        if any(c != "-" for c in cells):
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| **analyses in all** · largest peak RSS of any stage | " + " | ".join(
        f"**{r['analysis_s']:,.0f} s · {r['max_peak_rss_mib']:,.0f} MiB**" for r in runs) + " |")
    return "\n".join(lines)


def format_scaling(record: dict) -> str:
    """Markdown: the summary (:func:`format_summary`), each run's table (:func:`format_paper_table`),
    then the scaling line."""
    parts = [format_summary(record)] + [format_paper_table(r) for r in record["runs"]]
    t = record["targets"]
    mark = {True: "PASS", False: "FAIL", None: "n/a"}
    parts.append(
        f"Scaling, fraction {record['fractions'][0]:g} -> {record['fractions'][1]:g} (data x{record['data_ratio']:g}, "
        f"crops x{record['crops_ratio']:g}): analysis time {record['analysis_s'][0]:.0f} s -> "
        f"{record['analysis_s'][1]:.0f} s, x{record['time_ratio']}, target {t['time_ratio']['target']}: "
        f"{mark[t['time_ratio']['pass']]}; max peak RSS {record['max_peak_rss_mib'][0]} -> "
        f"{record['max_peak_rss_mib'][1]} MiB, target {t['max_peak_rss_mib']['target']}: "
        f"{mark[t['max_peak_rss_mib']['pass']]}" + ("" if record["complete"] else " (a run has failed stages)"))
    return "\n\n".join(parts)


# =========================================================================== table
def _cell(s: dict | None) -> str:
    if s is None:
        return "-"
    if not s["ok"]:
        return f"FAIL · {s['peak_rss_mib']} MiB"
    return f"{s['wall_s']:.1f} s · {s['peak_rss_mib']:.0f} MiB"


def format_paper_table(result: dict) -> str:
    """Markdown for the README: a summary line, extraction per split, a layer x analysis grid of
    ``wall s · peak RSS MiB``, and the failed stages with their errors."""
    m, sp = result["machine"], result["splits"]
    stages = result["stages"]
    lines = [f"Paper-scale benchmark: {result['fraction']:g} x PASCAL VOC 2007 (synthetic tree), {result['model']} "
             f"({result['weights_note']}), task {result['task']}, on {result['device']}: {m.get('cpu_count')} CPUs, "
             f"load {m.get('load_avg_start')} -> {m.get('load_avg_end')}, code {result.get('code_version')}, "
             f"{result.get('total_s')} s in all", "",
             "| split | images | boxes | crops (not difficult) | extraction s | crops/s | peak RSS MiB |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for split in ("test", "trainval"):
        s = next((x for x in stages if x["name"] == f"extract:{split}"), None)
        d = sp[split]
        rate = result.get("extraction_crops_per_s", {}).get(split)
        wall = "-" if s is None else ("FAIL" if not s["ok"] else f"{s['wall_s']:.1f}")
        lines.append(f"| {split} | {d['images']:,} | {d['boxes']:,} | {d['crops']:,} | {wall} | "
                     f"{rate if rate is not None else '-'} | {s['peak_rss_mib'] if s else '-'} |")
    ratio = next((x for x in stages if x["name"] == "extraction_ratio"), None)
    if ratio is not None:
        r, t = ratio.get("info") or {}, result["targets"]["extraction_vs_bare_forward"]
        lines += ["", (f"Extraction of {r.get('images')} test crops against the bare forward on the same crops: "
                       f"{r.get('pipeline_img_s')} vs {r.get('model_only_img_s')} crops/s, ratio {r.get('ratio')} "
                       f"(median of {len(r.get('runs', {}).get('ratio', []))} pairs), target {t['target']}: "
                       f"{ {True: 'PASS', False: 'FAIL', None: 'n/a'}[t['pass']]}") if ratio["ok"]
                      else f"Extraction ratio: FAIL ({ratio['error']})"]
    workers = [f"{x['name']} {x['children_peak_rss_mib']} MiB" for x in stages
               if (x.get("children_peak_rss_mib") or 0) >= 100]
    if workers:
        lines += ["", "Processes the stages started (DataLoader workers; summed RSS, sampled, not in the stage's "
                      "peak RSS): " + ", ".join(workers)]
    analyses = [a for a in ANALYSES if any(x["name"] == a for x in stages)]
    analyses += sorted({x["name"] for x in stages if not x["name"].startswith("extract")
                        and x["name"] not in ANALYSES and x["name"] not in ("sparsity", "cka")})
    layers = list(dict.fromkeys(x["layer"] for x in stages if x["name"] in analyses))
    if analyses:
        lines += ["", "| layer | " + " | ".join(analyses) + " |", "|---|" + "---:|" * len(analyses)]
        for layer in layers:
            cells = [_cell(next((x for x in stages if x["name"] == a and x["layer"] == layer), None)) for a in analyses]
            lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    spars = next((x for x in stages if x["name"] == "sparsity"), None)
    if spars:
        lines += ["", f"sparsity, all layers at once: {_cell(spars)}"]
    cka = next((x for x in stages if x["name"] == "cka"), None)
    if cka:
        lines += ["", f"layer x layer CKA of the network with itself, every layer pair: {_cell(cka)}"
                      + (f" ({cka['info'].get('estimator')})" if cka["ok"] else "")]
    t = result["targets"]["max_peak_rss_mib"]
    mark = {True: "PASS", False: "FAIL", None: "n/a"}[t["pass"]]
    lines += ["", f"Cells: wall s (in the stage's own process, after imports and model load) · its peak RSS "
                  f"(ru_maxrss, memory-mapped feature pages included). Feature store "
                  f"{result.get('feature_store_bytes', 0) / 2**30:.2f} GiB; analyses {result['analysis_s']:.1f} s in "
                  f"all ({result['analysis_process_s']:.0f} s with process start-up); max peak RSS "
                  f"{t['value']} MiB ({result.get('max_peak_rss_stage')}), target {t['target']} MiB: {mark}."]
    failed = [x for x in stages if not x["ok"]]
    if failed:
        lines += ["", f"{len(failed)} failed stage(s):"]
        lines += [f"- {x['name']} {x['layer']}: {x['error']}" for x in failed]
    return "\n".join(lines)


__all__ = ["generate", "run", "format_paper_table", "scaling", "format_summary", "format_scaling", "stage_plan", "split_sizes", "check_fraction", "image_spec",
           "draw_image", "voc_xml", "LAYERS", "ANALYSES", "TASK", "TARGET_PEAK_RSS_MIB", "TARGET_EXTRACTION_RATIO", "TARGET_TIME_SLOPE", "DEFAULT_JSON"]
