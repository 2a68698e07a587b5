"""Fault injection through the Probe page in a real headless browser.

One upload of a corpus of bad files mixed with good ones goes through ``/probe``'s
``st.file_uploader`` in Chromium. Expected: one error line per unusable file, naming it;
the decodable oddities (16-bit TIFF, CMYK JPEG, animated GIF) and the good files probed;
the file over ``server.maxUploadSize`` refused by Streamlit's uploader itself; no
traceback; the server still healthy and serving other pages afterwards.

Every file is generated here into ``tmp_path``; nothing binary is committed.
"""
from __future__ import annotations

import io
import re
import shutil
import struct
import time
import urllib.request
import zlib

import numpy as np
import pytest
from PIL import Image

from conftest import FAULT_SUMMARIES


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# skipped before any fixture runs (no demo build, no server) when the browser is missing
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it)")]
pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

# .streamlit/config.toml's server.maxUploadSize, in "megabytes"; the server checks n * 1024 * 1024 bytes, the browser
# n * 1000 * 1000 (n * 1024 * 1024 on Windows only), so 25 MiB + 1 byte is over the limit for both.
MAX_UPLOAD_MB = 25
OVERSIZE_BYTES = MAX_UPLOAD_MB * 1024 * 1024 + 1

SUMMARY = {"injected": 0, "survived": 0}


# --------------------------------------------------------------------------- the corpus

def _encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_bomb(width: int, height: int) -> bytes:
    """A valid PNG signature + IHDR declaring width x height 8-bit grey, one tiny IDAT (one row)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * (width + 1), 9)) + _png_chunk(b"IEND", b""))


def _noise(w: int, h: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8), "RGB")


def build_corpus(folder) -> tuple[dict, dict, str]:
    """Write the corpus; return (probed: name -> what it is, refused: name -> expected words, oversize name)."""
    files: dict[str, bytes] = {}
    # good files
    files["good_rgb.png"] = _encode(_noise(96, 64, 1), "PNG")
    files["good_photo.jpg"] = _encode(_noise(80, 80, 2), "JPEG", quality=90)
    # decodable oddities: converted to RGB, so probed
    deep = (np.linspace(0, 65535, 64 * 48).reshape(48, 64)).astype(np.uint16)
    files["deep16.tiff"] = _encode(Image.fromarray(deep), "TIFF")
    files["cmyk.jpg"] = _encode(Image.new("CMYK", (64, 64), (0, 255, 255, 0)), "JPEG", quality=95)
    frames = [Image.new("RGB", (64, 48), (255, 0, 0)), Image.new("RGB", (64, 48), (0, 0, 255))]
    files["anim.gif"] = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    # unusable files: each must give its own error line
    files["empty.png"] = b""
    png = _encode(_noise(64, 64, 3), "PNG")
    jpg = _encode(_noise(64, 64, 4), "JPEG", quality=90)
    files["cut.png"] = png[: len(png) // 2]
    files["cut.jpg"] = jpg[: len(jpg) // 2]
    files["page.png"] = b"<!DOCTYPE html>\n<html><head><title>Not an image</title></head><body>hi</body></html>\n"
    files["bomb.png"] = _png_bomb(30_000, 30_000)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    oversize = "huge.png"  # a real PNG padded with zeros to one byte over the limit (sparse: cheap)
    with open(folder / oversize, "wb") as f:
        f.write(_encode(_noise(8, 8, 5), "PNG"))
        f.truncate(OVERSIZE_BYTES)

    # the corpus is what it claims to be
    assert Image.open(folder / "deep16.tiff").mode.startswith("I;16")
    assert Image.open(folder / "cmyk.jpg").mode == "CMYK"
    assert Image.open(folder / "anim.gif").n_frames == 2
    assert struct.unpack(">II", files["bomb.png"][16:24]) == (30_000, 30_000) and len(files["bomb.png"]) < 1000
    assert (folder / oversize).stat().st_size == OVERSIZE_BYTES

    probed = {"good_rgb.png": "RGB PNG", "good_photo.jpg": "JPEG", "deep16.tiff": "16-bit TIFF",
              "cmyk.jpg": "CMYK JPEG", "anim.gif": "animated GIF"}
    refused = {"empty.png": ["empty (0 bytes)"], "cut.png": ["cut short"], "cut.jpg": ["cut short"],
               "page.png": ["text file, not an image"], "bomb.png": ["too large", "900,000,000 pixels"]}
    assert set(probed) | set(refused) == set(files)
    return probed, refused, oversize


# --------------------------------------------------------------------------- server + summary

@pytest.fixture(scope="module")
def summary():
    yield SUMMARY
    # survived: right per-file outcome, counted only once the server is known to be alive afterwards
    FAULT_SUMMARIES.append(f"tests/pages/test_faults_upload.py: faults injected: {SUMMARY['injected']}, "
                           f"survived: {SUMMARY['survived']}")


def _settle(page, timeout: float = 120) -> None:
    """Wait until the script run is over: the running indicator has gone (and stays gone)."""
    deadline = time.time() + timeout
    quiet = 0
    while time.time() < deadline and quiet < 3:
        quiet = 0 if page.locator("[data-testid='stStatusWidget']").count() else quiet + 1
        time.sleep(0.25)
    assert quiet >= 3, "the script was still running after %.0f s" % timeout


def _health(url: str) -> str:
    with urllib.request.urlopen(f"{url}/_stcore/health", timeout=5) as r:
        return r.read().decode()


# --------------------------------------------------------------------------- the test

def test_bad_uploads_get_one_error_each_good_ones_are_probed_server_survives(app_server, summary, tmp_path):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    url, proc, log_path = app_server
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    probed, refused, oversize = build_corpus(corpus)
    # upload order: bad and good files interleaved, the oversize one in the middle
    order = ["empty.png", "good_rgb.png", "cut.png", "deep16.tiff", "page.png", oversize, "cmyk.jpg",
             "cut.jpg", "anim.gif", "bomb.png", "good_photo.jpg"]
    assert sorted(order) == sorted([*probed, *refused, oversize])
    sent = len(order) - 1  # what reaches the script: the oversize file is stopped in the browser
    faults = ["empty.png", "cut.png", "cut.jpg", "page.png", "bomb.png", "deep16.tiff", "cmyk.jpg", "anim.gif",
              oversize]
    SUMMARY["injected"] = len(faults)
    verdicts: dict[str, str | None] = {}  # fault -> None (survived) or what went wrong

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{url}/probe", wait_until="domcontentloaded")
            page.wait_for_selector("h1:has-text('Probe your images')", timeout=120_000)
            _settle(page)  # the sample-image run of a fresh session

            t0 = time.perf_counter()
            page.locator("[data-testid='stFileUploader'] input[type='file']").set_input_files(
                [str(corpus / name) for name in order])
            caption = page.get_by_text(re.compile(r"\d+ of \d+ files probed; \d+ skipped\."))
            exception = page.locator("[data-testid='stException']")
            for done in (caption, page.get_by_text(re.compile(r"Probed \d+ images at \w+ \(your uploads\)"))):
                done.or_(exception).first.wait_for(timeout=120_000)  # an exception ends the wait at once
                assert exception.count() == 0, "a Python exception is shown:\n" + exception.first.inner_text()
            _settle(page)
            upload_s = time.perf_counter() - t0
            page.screenshot(path=str(tmp_path / "probe_after_faulty_upload.png"))
            body = page.locator("body").inner_text()
            alerts = [a.locator("[data-testid='stMarkdownContainer']").first.inner_text().strip()  # not the icon
                      for a in page.locator("[data-testid='stAlert']").all()]
            errors = [a for a in alerts if a.startswith("'")]  # core.data.imageio: "'<name>' <what>. Please ..."
            tabs = [t.inner_text().strip() for t in page.locator("[data-testid='stTab']").all()]
            caption_text = caption.inner_text().strip()
            n_exceptions = exception.count()
            n_images = page.locator("[data-testid='stTabPanel'] [data-testid='stImage']").count()

            # --- each fault on its own
            for name in faults:
                mine = [e for e in errors if e.startswith(f"'{name}'")]
                if name in refused:
                    want = refused[name]
                    ok = len(mine) == 1 and all(w in mine[0] for w in want) and name not in tabs
                    verdicts[name] = None if ok else f"error lines {mine}, wanted one with {want}; tabs {tabs}"
                elif name in probed:
                    ok = not mine and name in tabs
                    verdicts[name] = None if ok else f"not probed: error lines {mine}, tabs {tabs}"
                else:  # the oversize file: refused by Streamlit's uploader in the browser, never sent
                    # its chip turns red with an error icon, an aria alert, and the message in a tooltip on hover
                    chip = page.locator("[data-testid='stFileChip']").filter(has_text=name)
                    limit_msg = f"File must be {MAX_UPLOAD_MB:.1f}MB or smaller."
                    tip = ""
                    if chip.count() == 1:
                        chip.hover()
                        shown = page.locator("[data-testid='stTooltipErrorContent']").filter(has_text=limit_msg)
                        try:
                            shown.first.wait_for(timeout=10_000)
                            tip = shown.first.inner_text()
                        except PlaywrightTimeout:
                            pass
                        page.mouse.move(0, 0)
                    ok = (chip.count() == 1 and limit_msg in tip
                          and chip.get_attribute("aria-invalid") == "true"
                          and f"Error: {limit_msg}" in chip.locator("[role='alert']").inner_text()
                          and chip.locator("[data-testid='stFileChipIconError']").count() == 1
                          and not mine and name not in tabs)
                    verdicts[name] = None if ok else (f"chip count {chip.count()}, tooltip {tip!r}, wanted "
                                                      f"{limit_msg!r}; error lines {mine}; tabs {tabs}")
            handled = sum(v is None for v in verdicts.values())
            page.get_by_role("heading", name="Strongest filters per image").scroll_into_view_if_needed()
            page.screenshot(path=str(tmp_path / "probe_after_faulty_upload_results.png"))

            # --- the server survived: process alive, health ok, another page renders in a new session
            assert proc.poll() is None, "the server process died"
            assert _health(url).strip() == "ok"
            other = browser.new_page(viewport={"width": 1200, "height": 900})
            other.goto(f"{url}/selectivity", wait_until="domcontentloaded")
            other.wait_for_selector("h1:has-text('Class selectivity')", timeout=120_000)
            _settle(other)
            assert other.locator("[data-testid='stException']").count() == 0
            assert "Unexpected error" not in other.locator("body").inner_text()
            other.close()
            assert _health(url).strip() == "ok"
        finally:
            browser.close()
    log = log_path.read_text(errors="replace")
    assert "Traceback" not in log, "traceback in the server log:\n" + log[-4000:]
    SUMMARY["survived"] = handled  # only once the server is known to have survived the upload
    print(f"\nupload of {len(order)} files ({len(faults)} faults) handled in {upload_s:.1f} s")

    broken = {k: v for k, v in verdicts.items() if v is not None}
    assert not broken, "faults not survived:\n" + "\n".join(f"{k}: {v}" for k, v in broken.items())
    # --- the page as a whole: no traceback, the counts right, the good files probed (one tab each)
    assert n_exceptions == 0, "a Python exception is shown"
    for bad in ("Traceback", "Unexpected error", "Cannot show"):
        assert bad not in body, f"{bad!r} on the page:\n{body[:3000]}"
    assert caption_text == f"{len(probed)} of {sent} files probed; {len(refused)} skipped.", caption_text
    assert f"Probed {len(probed)} images at" in body
    assert len(errors) == len(refused), f"expected {len(refused)} error lines, got:\n" + "\n".join(alerts)
    assert sorted(tabs) == sorted(probed) and {"good_rgb.png", "good_photo.jpg"} <= set(tabs), tabs
    assert n_images >= 1, "the open tab shows no image"
