"""Speed and memory benchmark: every fast path timed side by side with its slow reference.

``python -m core bench --json PATH [--quick]`` calls :func:`run` and prints
:func:`format_table`. On a shared machine absolute timings are noisy, so each fast path
is measured in the same run as its reference and reported as a ratio; the load average
at start and end is recorded in ``machine``.

Result layout (JSON-ready: plain floats, ints, strings, ``None``):

- ``device``, ``machine``, ``code_version``, ``quick``
- ``extraction``, ``aue``, ``ap``: dicts of numbers; on failure their numbers are ``None``
  and ``reason`` says why
- ``pages_warm_ms`` (page file -> ms), ``probe_ms``, ``demo_build_s``, ``demo_rerun_s``, ``peak_rss_mb``:
  numbers, or ``None`` with the reason in ``reasons[key]``
- ``targets``: metric -> ``{"value", "target", "pass"}`` (``pass`` is ``None`` when the
  value could not be measured)
"""
from __future__ import annotations

import io
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent.parent


@dataclass(frozen=True)
class BenchSizes:
    """Problem sizes of one benchmark run (``None`` reference subsets: all filters)."""

    extraction_images: int = 2000
    extraction_repeats: int = 21       # back-to-back pairs (bare, pipeline): single runs vary by +-20%
    batch_size: int = 128
    alexnet_images: int = 256          # torchvision AlexNet at 227 px: ~10 ms an image on 2 cores
    alexnet_batch_size: int = 64
    alexnet_repeats: int = 7
    aue_images: int = 1000          # paper AlexNet conv5: 256 filters of 13x13
    aue_filters: int = 256
    aue_side: int = 13
    aue_classes: int = 12
    aue_thresholds: int = 100
    aue_reference_filters: int | None = None
    ap_items: int = 2000
    ap_filters: int = 256
    ap_classes: int = 12
    ap_reference_filters: int | None = None
    pages: bool = True
    pages_budget_s: float | None = None   # stop timing further pages after this long
    probe: bool = True
    demo_build: bool = True
    detection: bool = True
    demo_build_timeout_s: int = 3600


FULL = BenchSizes()
#: --quick: under 2 minutes on 2 cores. Every ratio is still measured side by side in one run;
#: the extraction on the same 2,000 images (with 500 the files' fixed set-up costs weigh on the
#: ratio) in fewer back-to-back pairs (11 and 5), the slow references on a subset of filters (their
#: time scaled linearly), every page of the navigation, no demo build.
QUICK = replace(FULL, extraction_repeats=11, alexnet_repeats=5, aue_reference_filters=16,
                ap_reference_filters=32, pages_budget_s=None, demo_build=False)

TARGETS = {  # metric -> (comparison, bound)
    "extraction_ratio": (">=", 0.9),
    "extraction_ratio_alexnet": (">=", 0.93),
    "aue_speedup": (">=", 50.0),
    "aue_max_abs_diff": ("<=", 1e-6),
    "ap_speedup": (">=", 20.0),
    "ap_max_abs_diff": ("<=", 1e-9),
    "pages_warm_ms_max": ("<=", 300.0),
    "probe_ms": ("<=", 1000.0),
    "cka_demo_s": ("<=", 5.0),
    "detection_s": ("<=", 120.0),
    "demo_build_s": ("<=", 120.0),
    "demo_rerun_s": ("<=", 15.0),
    "peak_rss_mb": ("<=", 1536.0),
}


# --------------------------------------------------------------------------- slow references
def aue_reference(responses: np.ndarray, labels: np.ndarray, num_classes: int,
                  num_thresholds: int = 100, filters: Any = None) -> np.ndarray:
    """SLOW REFERENCE for :func:`core.analysis.aue`: the obvious per-filter loop.

    For each filter: its ``N*H*W`` samples as float64, ``np.linspace(min, max, T)``
    thresholds, a class histogram of the samples ``>=`` each threshold, entropy in bits,
    trapezoid with spacing ``1/(T-1)``. ``filters`` picks a subset (default: all).
    """
    n, f = responses.shape[:2]
    hw = int(np.prod(responses.shape[2:])) if responses.ndim > 2 else 1
    labels_rep = np.repeat(np.asarray(labels), hw)
    out = []
    for j in (range(f) if filters is None else filters):
        samples = np.asarray(responses[:, j], dtype=np.float64).ravel()
        curve = np.empty(num_thresholds)
        for t, thr in enumerate(np.linspace(samples.min(), samples.max(), num_thresholds)):
            counts = np.bincount(labels_rep[samples >= thr], minlength=num_classes)
            p = counts[counts > 0] / counts.sum()
            curve[t] = -(p * np.log2(p)).sum()
        out.append(np.trapezoid(curve, dx=1.0 / (num_thresholds - 1)))
    return np.asarray(out)


def ap_reference(scores: np.ndarray, labels: np.ndarray, num_classes: int,
                 filters: Any = None) -> np.ndarray:
    """SLOW REFERENCE for :func:`core.analysis.class_filter_ap`: scikit-learn's
    ``average_precision_score`` called once per (class, filter) column, ``[C, F']``."""
    from sklearn.metrics import average_precision_score

    cols = range(scores.shape[1]) if filters is None else filters
    average_precision_score(np.array([0, 1]), np.array([0.0, 1.0]))  # import/JIT warm-up
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return np.array([[average_precision_score(labels == c, scores[:, f]) for f in cols]
                         for c in range(num_classes)])


# --------------------------------------------------------------------------- helpers
def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _section(fn: Callable[[], dict], keys: tuple[str, ...]) -> dict:
    """Run a section; on any error its numbers are ``None`` and ``reason`` says why."""
    try:
        return {**fn(), "reason": None}
    except Exception as exc:  # noqa: BLE001 - a failing section must not stop the others
        log.warning("bench section failed: %s", traceback.format_exc())
        return {**{k: None for k in keys}, "reason": f"{type(exc).__name__}: {exc}"}


def _metric(fn: Callable[[], Any], reasons: dict, key: str) -> Any:
    """A scalar metric; ``None`` with ``reasons[key]`` when it cannot run."""
    try:
        value = fn()
    except _Skip as skip:
        reasons[key] = str(skip)
        return None
    except Exception as exc:  # noqa: BLE001
        log.warning("bench metric %s failed: %s", key, traceback.format_exc())
        reasons[key] = f"{type(exc).__name__}: {exc}"
        return None
    return value


class _Skip(Exception):
    """A metric that cannot run here (the message is the reason)."""


def machine_info() -> dict:
    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "numpy": np.__version__,
            "load_avg_start": _load_avg()}


def _load_avg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


# --------------------------------------------------------------------------- extraction
def _extraction_pairs(lm: Any, data: Any, batches: list[torch.Tensor], layers: list[str], bs: int,
                      device: torch.device, pairs: int) -> dict:
    """``pairs`` back-to-back (bare forward, whole pipeline) runs on the same images, their
    order swapped every pair so that a slow drift of the machine hits both alike.

    ``ratio`` is the median over pairs of pipeline/bare throughput: on a shared VM single
    runs of ~1 s vary by +-20%, and neighbouring runs share most of that noise; the best
    run of each side (``*_img_s``) is kept for the absolute figures.
    """
    from core.store import extraction

    n = len(data)
    model_runs, pipe_runs = [], []
    with tempfile.TemporaryDirectory(prefix="fs-bench-") as tmp:
        for r in range(pairs):
            def bare() -> None:
                model_runs.append(extraction.forward_throughput(lm, batches, device))

            def pipe() -> None:
                secs, _ = _timed(lambda: extraction.extract(lm, data, layers, device=str(device), batch_size=bs,
                                                            root=Path(tmp) / f"run{r}", force=True))
                pipe_runs.append(n / secs)

            for step in ((bare, pipe) if r % 2 == 0 else (pipe, bare)):
                step()
    ratios = [p / m for p, m in zip(pipe_runs, model_runs)]
    return {"images": n, "batch_size": bs, "layers": layers, "model_only_img_s": round(max(model_runs), 1),
            "pipeline_img_s": round(max(pipe_runs), 1), "ratio": round(statistics.median(ratios), 4),
            "runs": {"model_only_img_s": [round(v, 1) for v in model_runs],
                     "pipeline_img_s": [round(v, 1) for v in pipe_runs],
                     "ratio": [round(v, 3) for v in ratios]},
            "note": f"ratio: median of {pairs} back-to-back pairs (order alternating); img/s: best run of each"}


def bench_extraction(sizes: BenchSizes, device: torch.device) -> dict:
    """Bare forward vs. the whole extraction pipeline (data, hooks, fp16 store) on the same
    images: the demo network on 64-px in-memory images, all seven paper layers."""
    from core.store import extraction
    from core.data import models
    from core.data.datasets import ArrayImageSet

    n, bs = sizes.extraction_images, sizes.batch_size
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)
    torch.manual_seed(0)
    lm = models.build_demo(num_classes=12)
    data = ArrayImageSet("bench-random", images, rng.integers(0, 12, n), [f"c{i}" for i in range(12)])
    batches = [extraction.array_batch(data, np.arange(s, min(n, s + bs)), lm) for s in range(0, n, bs)]
    return _extraction_pairs(lm, data, batches, list(models.PAPER_LAYERS), bs, device, sizes.extraction_repeats)


def bench_extraction_alexnet(sizes: BenchSizes, device: torch.device) -> dict:
    """The same comparison on the paper's network: torchvision AlexNet (random weights, 227 px)
    through the real-data path (PIL resize to 256 + centre crop, on the CPU in this process),
    all seven paper layers. The bare forward runs on the same crops, made beforehand."""
    from core.data import models
    from core.data.datasets import ArrayImageSet

    n, bs = sizes.alexnet_images, sizes.alexnet_batch_size
    if n <= 0:
        raise _Skip("skipped by the benchmark sizes")
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, (n, 256, 256, 3), dtype=np.uint8)
    torch.manual_seed(0)
    lm = models.build_torchvision("alexnet", use_hub_cache=False)
    data = ArrayImageSet("bench-random-256", images, rng.integers(0, 10, n), [f"c{i}" for i in range(10)])
    transform = lm.spec.transform()
    batches = [torch.stack([transform(data[i][0]) for i in range(s, min(n, s + bs))]) for s in range(0, n, bs)]
    return _extraction_pairs(lm, data, batches, list(models.PAPER_LAYERS), bs, device,
                             sizes.alexnet_repeats)


# --------------------------------------------------------------------------- AuE
def aue_data(sizes: BenchSizes) -> tuple[np.ndarray, np.ndarray]:
    """conv5-like float16 responses (ReLU: exact zeros, ties) and labels."""
    rng = np.random.default_rng(1)
    shape = (sizes.aue_images, sizes.aue_filters, sizes.aue_side, sizes.aue_side)
    x = np.empty(shape, dtype=np.float16)
    for i in range(0, shape[0], 250):  # in slices: bounded float64 temporaries
        z = rng.standard_normal(size=(min(250, shape[0] - i), *shape[1:]), dtype=np.float32)
        x[i:i + 250] = np.maximum(z * 2.0 - 0.5, 0.0)
    return x, rng.integers(0, sizes.aue_classes, shape[0])


def bench_aue(sizes: BenchSizes) -> dict:
    """Fast :func:`core.analysis.aue` on the whole layer vs. :func:`aue_reference`."""
    from core import analysis

    x, y = aue_data(sizes)
    c, t, f = sizes.aue_classes, sizes.aue_thresholds, sizes.aue_filters
    fast_runs = [_timed(lambda: analysis.aue(x, y, c, t)) for _ in range(3)]
    fast_s, fast = min(fast_runs, key=lambda r: r[0])
    k = f if sizes.aue_reference_filters is None else min(f, sizes.aue_reference_filters)
    subset = np.linspace(0, f - 1, k).round().astype(int)
    ref_s, ref = _timed(lambda: aue_reference(x, y, c, t, subset))
    ref_s_all = ref_s * f / k
    note = "fast: best of 3 on the whole layer; reference: one run"
    if k < f:
        note += f" on {k} of {f} filters, time scaled linearly to all {f}"
    return {"shape": list(x.shape), "dtype": str(x.dtype), "num_classes": c, "num_thresholds": t,
            "reference_filters": k, "reference_s": round(ref_s_all, 6), "fast_s": round(fast_s, 6),
            "speedup": round(ref_s_all / fast_s, 2),
            "max_abs_diff": float(np.abs(fast[subset] - ref).max()), "note": note}


# --------------------------------------------------------------------------- AP
def bench_ap(sizes: BenchSizes) -> dict:
    """Fast :func:`core.analysis.class_filter_ap` vs. sklearn per (class, filter) column."""
    from core import analysis

    rng = np.random.default_rng(2)
    n, f, c = sizes.ap_items, sizes.ap_filters, sizes.ap_classes
    scores = np.round(np.maximum(rng.normal(size=(n, f)), 0.0), 1).astype(np.float32)  # ties
    labels = rng.integers(0, c, n)
    fast_runs = [_timed(lambda: analysis.class_filter_ap(scores, labels, c)) for _ in range(3)]
    fast_s, fast = min(fast_runs, key=lambda r: r[0])
    k = f if sizes.ap_reference_filters is None else min(f, sizes.ap_reference_filters)
    subset = np.linspace(0, f - 1, k).round().astype(int)
    ref_s, ref = _timed(lambda: ap_reference(scores, labels, c, subset))
    ref_s_all = ref_s * f / k
    note = "fast: best of 3 on all columns; reference: one run"
    if k < f:
        note += f" on {k} of {f} filters (x {c} classes), time scaled linearly to all {f}"
    return {"shape": [n, f], "num_classes": c, "reference_filters": k,
            "reference_s": round(ref_s_all, 6), "fast_s": round(fast_s, 6),
            "speedup": round(ref_s_all / fast_s, 2),
            "max_abs_diff": float(np.abs(fast[:, subset] - ref).max()), "note": note}


# --------------------------------------------------------------------------- app
def _require_demo() -> None:
    from core.demo import build as demo

    if not demo.is_built():
        raise _Skip("demo not built: run python -m core demo")


def pages_warm_ms(budget_s: float | None = None) -> dict[str, float | None]:
    """Warm render time (ms) of each page, measured by ``bench/pages_warm.py`` (AppTest) in
    a subprocess so that core never imports streamlit. Pages that raise, or that come after
    ``budget_s`` seconds, get ``None`` (reported through :class:`_PagesFailed`)."""
    _require_demo()
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "pages_warm.py"), str(budget_s or "none")],
                          capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"bench/pages_warm.py failed: {proc.stderr.strip()[-500:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    if "skip" in res:
        raise _Skip(res["skip"])
    if res["errors"]:
        raise _PagesFailed(res["pages"], "; ".join(res["errors"]))
    return res["pages"]


class _PagesFailed(Exception):
    def __init__(self, partial: dict, message: str):
        super().__init__(message)
        self.partial = partial


def probe_ms(model_id: str | None = None, task_id: str | None = None, layer: str = "conv5") -> float:
    """End-to-end probe of one uploaded PNG (decode + forward + percentiles), ms,
    median of 5 after one warm-up."""
    from PIL import Image

    from core import service
    from core.service import probe

    _require_demo()
    model_id = model_id or ("demo:finetuned" if "demo:finetuned" in service.models() else next(iter(service.models())))
    task_id = task_id or ("demo-cls" if "demo-cls" in service.tasks() else next(iter(service.tasks())))
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    png = buf.getvalue()

    def once() -> None:
        probe.probe(model_id, task_id, layer, [("bench.png", probe.decode_image(png, "bench.png"))])

    once()
    return round(statistics.median(_timed(once)[0] for _ in range(5)) * 1e3, 1)


def cka_demo_s() -> float:
    """Seconds of the 7 x 7 linear CKA matrix of two demo networks on the DET-GT test split (flattened
    conv maps), computed cold (the result cache bypassed; features already stored), median of 3."""
    from core import service
    from core.service import compare

    _require_demo()
    service.cka_layers("demo:pretrained", "demo:finetuned", "demo-detgt")   # features extracted, files warm
    saved = compare._cached
    compare._cached = lambda request, fingerprints, compute, progress=None: compute()
    try:
        times = [_timed(lambda: service.cka_layers("demo:pretrained", "demo:finetuned", "demo-detgt"))[0]
                 for _ in range(3)]
    finally:
        compare._cached = saved
    return round(statistics.median(times), 2)


# --------------------------------------------------------------------------- demo build
def detection_s(model_id: str = "demo:finetuned", layer: str = "fc7", timeout_s: int = 1800) -> float:
    """Seconds of the demo detection evaluation (``service.detection_map``) for one network and
    layer on a cold cache: proposals, region features, SVM training with hard-negative mining,
    NMS and VOC evaluation, in a subprocess whose cache is a fresh folder sharing only the
    built demo (a symlink), so nothing of an earlier run is reused."""
    _require_demo()
    from core.demo import profiles as demo_profiles

    code = ("import json, time; from core import service; t = time.perf_counter(); "
            f"r = service.detection_map({model_id!r}, 'demo-det', {layer!r}); "
            "print(json.dumps({'s': time.perf_counter() - t, 'map': r['map']}))")
    with tempfile.TemporaryDirectory(prefix="fs-bench-det-") as tmp:
        (Path(tmp) / "demo").mkdir()
        os.symlink(demo_profiles.demo_dir(), Path(tmp) / "demo" / demo_profiles.profile_name())
        env = {**os.environ, "FILTERSCOPE_CACHE": tmp, "FILTERSCOPE_DEMO": demo_profiles.profile_name()}
        out = subprocess.run([sys.executable, "-c", code], cwd=str(ROOT),
                             env=env, capture_output=True, text=True, timeout=timeout_s)
    if out.returncode != 0:
        raise RuntimeError(f"detection run failed: {out.stderr.strip()[-400:]}")
    return round(float(json.loads(out.stdout.strip().splitlines()[-1])["s"]), 1)


def _tree_rss(proc: Any) -> int:
    import psutil

    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def _timed_run(cmd: list[str], env: dict, timeout_s: int) -> tuple[float, int]:
    """Run ``cmd``: wall seconds and the peak RSS of its process tree in bytes (polled every 0.2 s)."""
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ps, peak = psutil.Process(proc.pid), 0
    stderr: list[bytes] = []
    reader = threading.Thread(target=lambda: stderr.append(proc.stderr.read()), daemon=True)
    reader.start()
    while proc.poll() is None:
        if time.perf_counter() - t0 > timeout_s:
            proc.kill()
            raise TimeoutError(f"{' '.join(cmd[1:])} still running after {timeout_s} s")
        try:
            peak = max(peak, _tree_rss(ps))
        except psutil.Error:
            pass
        time.sleep(0.2)
    wall = time.perf_counter() - t0
    reader.join(5)
    if proc.returncode:
        tail = b"".join(stderr).decode(errors="replace")[-400:]
        raise RuntimeError(f"{' '.join(cmd[1:])} exited with {proc.returncode}: {tail}")
    return wall, peak


def demo_build(timeout_s: int = 3600, profile: str = "full") -> dict:
    """``python -m core demo --profile full --force`` in a fresh cache (the shipped source
    network, fine-tuning, extraction and warm analyses): wall time and the peak RSS of its
    process tree (sum over processes; at least the largest single process's ``ru_maxrss``);
    then the same command without ``--force`` (``demo_rerun_s``: a no-op on a built demo)."""
    import resource

    with tempfile.TemporaryDirectory(prefix="fs-bench-demo-") as cache:
        env = {**os.environ, "FILTERSCOPE_CACHE": cache, "FILTERSCOPE_DEMO": profile}
        cmd = [sys.executable, "-m", "core", "demo", "--profile", profile]
        wall, peak = _timed_run(cmd + ["--force"], env, timeout_s)
        rerun, _ = _timed_run(cmd, env, timeout_s)
    child_max = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB -> MiB
    return {"demo_build_s": round(wall, 1), "peak_rss_mb": round(max(peak / 2**20, child_max), 1),
            "demo_rerun_s": round(rerun, 1)}


# --------------------------------------------------------------------------- run
def _targets(result: dict) -> dict:
    pages = result.get("pages_warm_ms") or {}
    values = {
        "extraction_ratio": result["extraction"].get("ratio"),
        "extraction_ratio_alexnet": result["extraction_alexnet"].get("ratio"),
        "aue_speedup": result["aue"].get("speedup"),
        "aue_max_abs_diff": result["aue"].get("max_abs_diff"),
        "ap_speedup": result["ap"].get("speedup"),
        "ap_max_abs_diff": result["ap"].get("max_abs_diff"),
        "pages_warm_ms_max": (None if not pages or None in pages.values() else max(pages.values())),
        "probe_ms": result.get("probe_ms"),
        "cka_demo_s": result.get("cka_demo_s"),
        "detection_s": result.get("detection_s"),
        "demo_build_s": result.get("demo_build_s"),
        "demo_rerun_s": result.get("demo_rerun_s"),
        "peak_rss_mb": result.get("peak_rss_mb"),
    }
    out = {}
    for key, (op, bound) in TARGETS.items():
        v = values[key]
        ok = None if v is None else (v >= bound if op == ">=" else v <= bound)
        out[key] = {"value": v, "target": f"{op} {bound:g}", "pass": ok}
    return out


def _pages_metric(reasons: dict, budget_s: float | None) -> dict | None:
    try:
        return pages_warm_ms(budget_s=budget_s)
    except _PagesFailed as exc:  # pages that raised are None; the others keep their time
        reasons["pages_warm_ms"] = str(exc)
        return exc.partial


def _app_metrics(result: dict, sizes: BenchSizes, quick: bool) -> None:
    """Pages, probe and demo build: numbers, or ``None`` with ``result["reasons"][key]``."""
    reasons = result["reasons"]

    def maybe(enabled: bool, key: str, fn: Callable[[], Any]) -> Any:
        if enabled:
            return _metric(fn, reasons, key)
        reasons[key] = "skipped in --quick" if quick else "skipped by the benchmark sizes"
        return None

    result["pages_warm_ms"] = maybe(sizes.pages, "pages_warm_ms",
                                    lambda: _pages_metric(reasons, sizes.pages_budget_s))
    result["probe_ms"] = maybe(sizes.probe, "probe_ms", probe_ms)
    result["cka_demo_s"] = maybe(sizes.probe, "cka_demo_s", cka_demo_s)
    result["detection_s"] = maybe(sizes.detection and not quick, "detection_s", detection_s)
    build = maybe(sizes.demo_build, "demo_build_s", lambda: demo_build(sizes.demo_build_timeout_s)) or {}
    for key in ("demo_build_s", "demo_rerun_s", "peak_rss_mb"):
        result[key] = build.get(key)
        if not build:
            reasons[key] = reasons["demo_build_s"]


def run(quick: bool = False, sizes: BenchSizes | None = None) -> dict:
    """Run every benchmark section; each failure is reported, never raised.

    Parameters
    ----------
    quick : bool
        Smaller problems, references timed on a subset of filters and scaled, no demo
        build (finishes in well under 2 minutes on 2 cores).
    sizes : BenchSizes, optional
        Override the problem sizes (tests use tiny ones).
    """
    from core.hashing import code_version
    from core.store.extraction import device_label, resolve_device

    sizes = sizes or (QUICK if quick else FULL)
    t0 = time.perf_counter()
    dev = resolve_device("auto")
    result: dict[str, Any] = {"device": device_label(dev), "machine": machine_info(),
                              "code_version": code_version(), "quick": quick, "sizes": asdict(sizes),
                              "reasons": {}}
    result["extraction"] = _section(lambda: bench_extraction(sizes, dev),
                                    ("model_only_img_s", "pipeline_img_s", "ratio"))
    result["extraction_alexnet"] = _section(lambda: bench_extraction_alexnet(sizes, dev),
                                            ("model_only_img_s", "pipeline_img_s", "ratio"))
    result["aue"] = _section(lambda: bench_aue(sizes), ("reference_s", "fast_s", "speedup", "max_abs_diff"))
    result["ap"] = _section(lambda: bench_ap(sizes), ("reference_s", "fast_s", "speedup", "max_abs_diff"))
    _app_metrics(result, sizes, quick)
    result["targets"] = _targets(result)
    result["machine"]["load_avg_end"] = _load_avg()
    result["total_s"] = round(time.perf_counter() - t0, 1)
    json.dumps(result)  # fail here, not in the CLI, if something is not JSON-ready
    return result


# --------------------------------------------------------------------------- table
def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e-3 and v != 0 else f"{v:,.3f}".rstrip("0").rstrip(".")
    return str(v)


def _detail(key: str, r: dict) -> str:
    e, a, p = r["extraction"], r["aue"], r["ap"]

    def extraction(e: dict, what: str) -> str:
        pairs = (e.get("runs") or {}).get("ratio") or []
        spread = f", pairs {min(pairs):.3f}-{max(pairs):.3f} (n={len(pairs)})" if pairs else ""
        return e.get("reason") or (f"{what}: model {_fmt(e.get('model_only_img_s'))} img/s, pipeline "
                                   f"{_fmt(e.get('pipeline_img_s'))} img/s, {e.get('images')} images{spread}")

    details = {
        "extraction_ratio": extraction(e, "demo net, 64 px"),
        "extraction_ratio_alexnet": extraction(r.get("extraction_alexnet", {}), "AlexNet, 227 px"),
        "aue_speedup": a.get("reason") or f"ref {_fmt(a.get('reference_s'))} s, fast {_fmt(a.get('fast_s'))} s, "
                       f"{a.get('dtype')} {a.get('shape')}",
        "ap_speedup": p.get("reason") or f"ref {_fmt(p.get('reference_s'))} s, fast {_fmt(p.get('fast_s'))} s, "
                      f"{p.get('shape')} x {p.get('num_classes')} classes",
        "pages_warm_ms_max": r["reasons"].get("pages_warm_ms") or f"{len(r.get('pages_warm_ms') or {})} pages",
        "probe_ms": r["reasons"].get("probe_ms", ""),
        "cka_demo_s": r["reasons"].get("cka_demo_s", "7 x 7 linear CKA, demo:pretrained vs demo:finetuned, "
                                                     "DET-GT test split, flattened, cold"),
        "detection_s": r["reasons"].get("detection_s", "demo:finetuned, fc7, cold cache (R-CNN on windows)"),
        "demo_build_s": r["reasons"].get("demo_build_s", ""),
        "demo_rerun_s": r["reasons"].get("demo_rerun_s", ""),
        "peak_rss_mb": r["reasons"].get("peak_rss_mb", ""),
    }
    return details.get(key, "")


def format_table(result: dict) -> str:
    """A readable summary of :func:`run`'s result: one line per target."""
    m = result["machine"]
    lines = [f"Filterscope bench{' (quick)' if result.get('quick') else ''} on {result['device']}: "
             f"{m.get('cpu_count')} CPUs, torch threads {m.get('torch_threads')}, load "
             f"{m.get('load_avg_start')} -> {m.get('load_avg_end')}, code {result.get('code_version')}, "
             f"{result.get('total_s')} s",
             f"{'metric':<20} {'value':>12} {'target':>10}  {'pass':<5} detail"]
    for key, t in result["targets"].items():
        mark = {True: "PASS", False: "FAIL", None: "-"}[t["pass"]]
        lines.append(f"{key:<20} {_fmt(t['value']):>12} {t['target']:>10}  {mark:<5} {_detail(key, result)}")
    for page, ms in (result.get("pages_warm_ms") or {}).items():
        lines.append(f"  {page:<40} {_fmt(ms):>10} ms")
    for section in ("aue", "ap"):
        if result[section].get("note"):
            lines.append(f"note ({section}): {result[section]['note']}")
    return "\n".join(lines)


__all__ = ["BenchSizes", "FULL", "QUICK", "TARGETS", "aue_reference", "ap_reference", "run",
           "format_table", "bench_extraction", "bench_aue", "bench_ap", "pages_warm_ms", "probe_ms", "cka_demo_s", "detection_s",
           "demo_build"]
