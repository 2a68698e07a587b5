"""Shared fixtures. Every test runs with its own cache directory (FILTERSCOPE_CACHE)."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
os.environ["FILTERSCOPE_VALIDATE_FIGURES"] = "1"  # a wrong plotly property fails the tests (core.present.figures)


#: One line per fault-injection module ("faults injected: N, survived: M"), printed at the end
#: of the run: output written while a module's fixtures tear down is captured and never shown.
FAULT_SUMMARIES: list[str] = []


def pytest_terminal_summary(terminalreporter) -> None:
    for line in FAULT_SUMMARIES:
        terminalreporter.write_line(line)


@pytest.fixture()
def tmp_cache(tmp_path, monkeypatch) -> Path:
    """A private cache root for one test."""
    root = tmp_path / "cache"
    monkeypatch.setenv("FILTERSCOPE_CACHE", str(root))
    return root


@pytest.fixture()
def tiny_images() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (37, 64, 64, 3), dtype=np.uint8), rng.integers(0, 3, 37)


@pytest.fixture(scope="session")
def demo_env(tmp_path_factory):
    """The tiny demo profile built once per test session in a private cache (env vars set).

    Yields the cache root. ~30-60 s on the 2-core machine.
    """
    from core import service
    from core.demo import build as demo

    root = tmp_path_factory.mktemp("demo-cache")
    saved = {k: os.environ.get(k) for k in ("FILTERSCOPE_CACHE", "FILTERSCOPE_DEMO")}
    os.environ["FILTERSCOPE_CACHE"] = str(root)
    os.environ["FILTERSCOPE_DEMO"] = "tiny"
    service.load_model.cache_clear()
    service.load_set.cache_clear()
    demo.build("tiny")
    yield root
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    service.load_model.cache_clear()
    service.load_set.cache_clear()


APP = ROOT / "app.py"


def app_test(page: str | None = None, timeout: int = 180):
    """An AppTest of app.py, switched to ``page`` (e.g. "pages/overview.py") and run."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(APP), default_timeout=timeout)
    at.run()
    if page:
        at.switch_page(page).run()
    return at


def plotly_figures(at) -> list[dict]:
    """Decoded plotly figure JSON of every chart on the page (numeric arrays decoded)."""
    import base64
    import json

    def decode(obj):
        if isinstance(obj, dict):
            if set(obj) >= {"dtype", "bdata"}:
                arr = np.frombuffer(base64.b64decode(obj["bdata"]), dtype=obj["dtype"])
                shape = obj.get("shape")
                if isinstance(shape, str):  # plotly writes e.g. "64, 64, 3"
                    shape = [int(v) for v in shape.split(",")]
                return arr.reshape(shape) if shape else arr
            return {k: decode(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [decode(v) for v in obj]
        return obj

    return [decode(json.loads(el.proto.spec)) for el in at.get("plotly_chart")]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_server(cache: Path, log_path: Path, runner: Sequence[str] = ("-m", "streamlit", "run"),
                  env: dict | None = None) -> tuple["subprocess.Popen", str]:
    """Start ``streamlit run app.py`` over the tiny demo in ``cache`` on a free port, as ``make run``
    would but headless and without the file watcher; output to ``log_path`` (a file, not a
    pipe: a chatty server must never block on it). Returns the process and its url at once.
    ``runner`` replaces ``-m streamlit run`` (e.g. ``-c <script> <args>`` that patches the app
    first, then runs Streamlit on the arguments that follow); ``env`` adds variables."""
    import subprocess

    port = free_port()
    env = {**os.environ, "FILTERSCOPE_CACHE": str(cache), "FILTERSCOPE_DEMO": "tiny", **(env or {})}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, *runner, str(ROOT / "app.py"),
                                 "--server.port", str(port), "--server.address", "127.0.0.1",
                                 "--server.headless", "true", "--browser.gatherUsageStats", "false",
                                 "--server.fileWatcherType", "none"],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}"


def start_server(cache: Path, log_path: Path) -> tuple["subprocess.Popen", str]:
    """:func:`launch_server`, returned once the server answers its health check."""
    proc, url = launch_server(cache, log_path)
    wait_until_healthy(url, proc, 120, lambda: log_path.read_text(errors="replace"))
    return proc, url


def stop_server(proc) -> None:
    import subprocess

    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@pytest.fixture(scope="session")
def app_server(demo_env, tmp_path_factory):
    """One server over the session's tiny demo, shared by the browser tests: (url, process, log path)."""
    log_path = tmp_path_factory.mktemp("app-server") / "server.log"
    proc, url = start_server(demo_env, log_path)
    yield url, proc, log_path
    stop_server(proc)


def wait_until_healthy(url: str, proc, tries: int, stderr_text) -> None:
    """Poll a Streamlit server's health endpoint every 0.5 s; kill it and fail the test with
    the tail of ``stderr_text()`` when it has not answered after ``tries`` polls."""
    import time
    import urllib.request

    for _ in range(tries):
        try:
            urllib.request.urlopen(f"{url}/_stcore/health", timeout=1)
            return
        except OSError:
            time.sleep(0.5)
    proc.kill()
    pytest.fail("streamlit server did not start: " + stderr_text()[-2000:])


# --------------------------------------------------------------------------- VOC-shaped trees
def voc_xml(image_id: str, w: int, h: int, objects) -> str:
    """A VOC 2007 annotation; ``objects`` are ``(class, 0-based half-open box, difficult, truncated,
    colour)`` and are written 1-based inclusive, as the devkit's."""
    objs = "".join(
        f"<object><name>{name}</name><pose>Unspecified</pose><truncated>{trunc}</truncated>"
        f"<difficult>{diff}</difficult><bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin>"
        f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for name, (x0, y0, x1, y1), diff, trunc, _ in objects)
    return (f"<annotation><folder>VOC2007</folder><filename>{image_id}.jpg</filename>"
            f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>"
            f"<segmented>0</segmented>{objs}</annotation>")


def write_voc(root: Path, spec: dict, splits: dict[str, list[str]], background: tuple[int, int, int]) -> Path:
    """``root/VOCdevkit/VOC2007`` of real JPEGs and XML annotations; returns ``root``.

    ``spec`` maps image ids to ``(width, height, objects)`` with objects as in :func:`voc_xml`:
    each box is painted in its colour on ``background``. ``splits`` maps split names to image
    ids (``ImageSets/Main/<split>.txt``).
    """
    from PIL import Image

    voc = root / "VOCdevkit" / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True)
    for image_id, (w, h, objects) in spec.items():
        a = np.empty((h, w, 3), np.uint8)
        a[:] = background
        for _, (x0, y0, x1, y1), _, _, colour in objects:
            a[y0:y1, x0:x1] = colour
        Image.fromarray(a).save(voc / "JPEGImages" / f"{image_id}.jpg", quality=95)
        (voc / "Annotations" / f"{image_id}.xml").write_text(voc_xml(image_id, w, h, objects))
    for split, ids in splits.items():
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return root
