"""Faults injected into real processes and files: a demo build killed at three points, two
builds at once, damaged feature files, manifests, networks and cache entries, and a cache
folder made read-only or removed while the app runs. Each case checks that the fault is
reported once, naming the file, that the item is rebuilt, and that nothing else changed.
"""
from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import FAULT_SUMMARIES, ROOT

pytestmark = pytest.mark.slow
SURVIVED: dict[str, bool] = {}   # fault -> survived, for the module's summary line

DIGEST = """
import hashlib, json
import numpy as np
from core import service
from core.demo import build as demo
man = demo.manifest()
sel = service.selectivity("demo:finetuned", "demo-detgt", "conv5")
feat = service.features("demo:finetuned", "demo:target-test-detgt", "conv3").array()
print(json.dumps({"weights": man["weights_sha256"], "aue": sel.aue.tolist(),
                  "features": hashlib.sha256(np.ascontiguousarray(feat).tobytes()).hexdigest()}))
"""

APPTEST = """
import json, sys
from streamlit.testing.v1 import AppTest
at = AppTest.from_file("app.py", default_timeout=240)
at.run()
first = [w.value for w in at.warning]     # the default page's run may meet the fault first
for key, value in json.loads(sys.argv[2]).items():
    at.session_state[key] = value
at.switch_page(sys.argv[1]).run()
print(json.dumps({"warnings": first + [w.value for w in at.warning], "errors": [e.value for e in at.error],
                  "exceptions": [str(e.value) for e in at.exception], "charts": len(at.get("plotly_chart"))}))
"""


@pytest.fixture(scope="module", autouse=True)
def summary():
    yield
    line = f"faults injected: {len(SURVIVED)}, survived: {sum(SURVIVED.values())}"
    if failed := [k for k, ok in SURVIVED.items() if not ok]:
        line += f" (not: {', '.join(failed)})"
    FAULT_SUMMARIES.append(f"tests/test_faults.py: {line}")


def _env(cache: Path) -> dict:
    return {**os.environ, "FILTERSCOPE_CACHE": str(cache), "FILTERSCOPE_DEMO": "tiny", "PYTHONUNBUFFERED": "1"}


def _cli(cache: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, env=_env(cache), capture_output=True,
                          text=True, timeout=timeout)


def _py(cache: Path, code: str, *args: str, timeout: int = 300) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=_env(cache), capture_output=True,
                         text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _warnings(stderr: str) -> list[str]:
    return [l for l in stderr.splitlines() if l.startswith("WARNING")]


def _kill_at(cache: Path, marker: bytes, timeout: float = 240) -> bytes:
    """Start ``python -m core demo`` and SIGKILL it as soon as ``marker`` appears in its output."""
    proc = subprocess.Popen([sys.executable, "-m", "core", "demo"], cwd=ROOT, env=_env(cache),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seen, end = b"", time.monotonic() + timeout
    try:
        while marker not in seen:
            assert time.monotonic() < end, f"no {marker!r} after {timeout} s: {seen[-2000:]!r}"
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if ready:
                chunk = os.read(proc.stdout.fileno(), 65536)
                assert chunk, f"the build ended before {marker!r}: {seen[-2000:]!r}"
                seen += chunk
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    return seen


def _files(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def killed_build(tmp_path_factory) -> Path:
    """A tiny demo built by ``python -m core demo`` killed during fine-tuning, during feature
    extraction and during the analysis warm-up, then finished by two builds started at once."""
    cache = tmp_path_factory.mktemp("killed-build")
    demo_root = cache / "demo"
    _kill_at(cache, b"fine-tuning")
    assert not (demo_root / "tiny" / "manifest.json").exists()
    assert list(demo_root.glob("tiny.partial-*/models/*.pt"))            # killed half way, work kept
    _kill_at(cache, b"features demo:pretrained")
    assert (demo_root / "tiny" / "manifest.json").exists()               # built; warm-up interrupted
    _kill_at(cache, b"layer mAP demo:finetuned")
    assert any((cache / "features").rglob("fc7.npy"))
    first = subprocess.Popen([sys.executable, "-m", "core", "demo"], cwd=ROOT, env=_env(cache),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = subprocess.Popen([sys.executable, "-m", "core", "demo"], cwd=ROOT, env=_env(cache),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outs = [p.communicate(timeout=300) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], [o[1][-2000:] for o in outs]
    SURVIVED["two builds at once"] = True
    return cache


def test_killed_build_resumes_to_the_results_of_an_uninterrupted_one(killed_build, demo_env):
    """Weights (the manifest's SHA-256 of every network), a layer's features and an AuE array
    equal those of the session's uninterrupted build of the same profile."""
    got, ref = _py(killed_build, DIGEST), _py(demo_env, DIGEST)
    assert got["weights"] == ref["weights"] and len(got["weights"]) >= 8
    assert got["features"] == ref["features"]
    assert np.array_equal(got["aue"], ref["aue"])
    SURVIVED.update({"SIGKILL during fine-tuning": True, "SIGKILL during extraction": True,
                     "SIGKILL during analysis warm-up": True})


def _feature_file(cache: Path, layer: str, suffix: str) -> Path:
    """The stored ``layer`` of demo:finetuned on demo:target-test-detgt."""
    hits = [p for p in (cache / "features").glob(f"demo-finetuned-*/demo-target-test-detgt-*/{layer}.{suffix}")
            if re.fullmatch(r"demo-finetuned-[0-9a-f]{10}", p.parent.parent.name)]
    assert len(hits) == 1, hits
    return hits[0]


def _item(path: Path) -> Path:
    """The stored item a file belongs to: ``conv3.npy``, ``conv3.max.npy`` and ``conv3.json`` are one layer."""
    return path.with_name(path.name.split(".")[0] or path.name)


def test_damaged_files_are_each_reported_once_rebuilt_and_nothing_else_touched(killed_build, demo_env):
    """Four damages at once, then one ``python -m core demo``: one warning per damaged item
    naming it, each rebuilt to the same bytes and numbers, every other file left as it was."""
    import diskcache

    from core.store.cache import ResultCache
    from core.service import SelectivityRequest
    cache = killed_build
    names = ["truncated feature file", "manifest with invalid JSON", "network not matching its manifest's SHA-256",
             "garbage cache entry"]
    SURVIVED.update(dict.fromkeys(names, False))
    truncated, bad_json = _feature_file(cache, "conv3", "npy"), _feature_file(cache, "conv4", "json")
    network = cache / "demo" / "tiny" / "models" / "finetuned.pt"
    fp = _py(cache, "import json; from core import service; print(json.dumps(service.features("
                    "'demo:finetuned', 'demo:target-test-detgt', 'conv5').fingerprint))")
    key = ResultCache.key(SelectivityRequest("demo:finetuned", "demo-detgt", "conv5", 100, 3), [fp])
    damaged = [truncated, bad_json, network, Path(key)]
    items = {_item(p) for p in damaged}   # a damaged file and its kin (.npy/.max.npy/.json, .pt/.json)
    rewritten = {cache / "demo" / "tiny" / "manifest.json"}  # the repair's record (same hashes, see DIGEST)
    untouched = {p: m for p, m in _files(cache).items() if _item(p) not in items and p not in rewritten
                 and p.parent.name != "results" and "locks" not in p.parts and p.suffix != ".lock"}
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    bad_json.write_text('{"format": 1, "shape": [')
    raw = bytearray(network.read_bytes())
    raw[-100] ^= 0xFF
    network.write_bytes(bytes(raw))
    with diskcache.Cache(str(cache / "results")) as dc:
        assert key in dc
        dc.set(key, ("0" * 64, b"garbage"))

    out = _cli(cache, "demo")
    assert out.returncode == 0, out.stderr[-3000:]
    warned = _warnings(out.stderr)
    for name, path in zip(names, damaged):
        assert sum(str(path) in w for w in warned) == 1, (name, warned)
    assert len(warned) == len(damaged), "\n".join(warned)
    assert _py(cache, DIGEST) == _py(demo_env, DIGEST)       # rebuilt to the same bytes and numbers
    assert {p: m for p, m in _files(cache).items() if p in untouched} == untouched
    SURVIVED.update(dict.fromkeys(names, True))


def _apptest(cache: Path, page: str, state: dict | None = None) -> dict:
    return _py(cache, APPTEST, page, json.dumps(state or {}), timeout=400)


def test_app_page_reports_a_damaged_feature_file_once_and_shows_the_page(killed_build):
    SURVIVED["damaged file seen by a page"] = False
    bad = _feature_file(killed_build, "conv2", "npy")
    bad.write_bytes(b"\x93NUMPY garbage")
    page = _apptest(killed_build, "pages/selectivity.py")
    assert not page["exceptions"] and not page["errors"], page
    assert len(page["warnings"]) == 1 and str(bad) in page["warnings"][0], page
    assert page["charts"] >= 1 and np.load(bad, mmap_mode="r").shape[0] > 0
    SURVIVED["damaged file seen by a page"] = True


MID_SESSION = """
import json, subprocess, sys
from streamlit.testing.v1 import AppTest
cache, steps = sys.argv[1], []
def look(at):
    return {"warnings": [w.value for w in at.warning], "errors": [e.value for e in at.error],
            "exceptions": [str(e.value) for e in at.exception], "charts": len(at.get("plotly_chart"))}
at = AppTest.from_file("app.py", default_timeout=240)
at.run()
at.switch_page("pages/selectivity.py").run()
steps.append(look(at))
subprocess.run(["chattr", "-R", "+i", cache], check=True)
try:
    task = next(b for b in at.selectbox if b.label == "Task / data")
    task.set_value("demo-scene").run()                  # new work: nothing cached for this task
    steps.append(look(at))
    task = next(b for b in at.selectbox if b.label == "Task / data")
    task.set_value("demo-detgt").run()                  # back to what is cached
    steps.append(look(at))
finally:
    subprocess.run(["chattr", "-R", "-i", cache], check=True)
print(json.dumps(steps))
"""


def _copy_if_chattr_works(src: Path, cache: Path) -> Path:
    """A copy of the cache ``src``; skips the test where ``chattr +i`` cannot make files immutable."""
    shutil.copytree(src, cache)
    probe = cache / "probe-immutable"
    probe.mkdir()
    if subprocess.run(["chattr", "+i", str(probe)], capture_output=True).returncode:
        pytest.skip("chattr +i is not supported on this file system; cannot make the cache read-only as root")
    subprocess.run(["chattr", "-i", str(probe)], check=True)
    probe.rmdir()
    return cache


def test_read_only_cache_folder_at_startup(killed_build, tmp_path):
    """A cache folder that is read-only before the app starts: not mistaken for a damaged
    one (nothing moved aside), one warning saying what to do, the cached results shown; the
    CLI's demo command finds the demo built and exits cleanly."""
    cache = _copy_if_chattr_works(killed_build, tmp_path / "cache")
    SURVIVED["read-only cache folder at startup"] = False
    subprocess.run(["chattr", "-R", "+i", cache], check=True)
    try:
        page = _apptest(cache, "pages/selectivity.py")
        cli = _cli(cache, "demo")
        after = sorted(p.name for p in cache.iterdir())
    finally:
        subprocess.run(["chattr", "-R", "-i", cache], check=True)
    assert not page["exceptions"] and not page["errors"] and page["charts"] >= 1, page
    assert len(page["warnings"]) == 1, page
    assert "cannot be written" in page["warnings"][0] and "FILTERSCOPE_CACHE" in page["warnings"][0], page
    assert "damaged" not in page["warnings"][0]
    assert cli.returncode == 0 and "already built" in cli.stdout, cli.stderr[-3000:]
    assert [w for w in _warnings(cli.stderr) if "cannot be written" in w], cli.stderr[-3000:]
    assert after == ["demo", "features", "results"]  # nothing moved aside
    SURVIVED["read-only cache folder at startup"] = True


def test_read_only_then_missing_cache_folder_mid_session(killed_build, tmp_path):
    """The cache folder made read-only (immutable, so even root cannot write) in the middle of
    a session: the page needing new work explains what to do, the cached page still renders.
    Then the folder removed: the app rebuilds the demo and the page renders again."""
    cache = _copy_if_chattr_works(killed_build, tmp_path / "cache")
    SURVIVED["read-only cache folder"] = False
    out = subprocess.run([sys.executable, "-c", MID_SESSION, str(cache)], cwd=ROOT, env=_env(cache),
                         capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stderr[-3000:]
    before, new_work, cached = json.loads(out.stdout.strip().splitlines()[-1])
    assert not before["errors"] and before["charts"] >= 1, before
    assert not new_work["exceptions"], new_work
    assert any("cannot be written" in e and "FILTERSCOPE_CACHE" in e for e in new_work["errors"]), new_work
    assert not cached["exceptions"] and not cached["errors"] and cached["charts"] >= 1, cached
    SURVIVED["read-only cache folder"] = True
    SURVIVED["cache folder removed"] = False
    shutil.rmtree(cache)
    again = _apptest(cache, "pages/selectivity.py")
    assert not again["exceptions"] and not again["errors"] and again["charts"] >= 1, again
    SURVIVED["cache folder removed"] = True
