"""One real-browser pass: start the server, open every page in headless Chromium, check it rendered."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from conftest import ROOT, free_port, wait_until_healthy

def _nav_paths() -> list[str]:
    """Every page's url_path, read from app.py's navigation (so new pages are covered)."""
    import re

    return re.findall(r'url_path="([^"]+)"', (ROOT / "app.py").read_text())


PAGES = _nav_paths()

pytestmark = pytest.mark.browser



@pytest.fixture(scope="module")
def server(demo_env):
    port = free_port()
    env = {**os.environ, "FILTERSCOPE_CACHE": str(demo_env), "FILTERSCOPE_DEMO": "tiny"}
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"),
                             "--server.port", str(port), "--server.address", "127.0.0.1",
                             "--server.headless", "true", "--browser.gatherUsageStats", "false"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    wait_until_healthy(url, proc, 120, lambda: proc.stderr.read().decode())
    yield url
    proc.terminate()
    proc.wait(10)


def test_every_page_renders_in_chromium(server, tmp_path):
    assert {"overview", "selectivity", "probe", "detections", "report"} <= set(PAGES), PAGES
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (make test installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        for name in PAGES:
            page.goto(f"{server}/{name}", wait_until="domcontentloaded")
            page.wait_for_selector("[data-testid='stSidebar']", timeout=120_000)
            page.wait_for_selector("h1", timeout=120_000)
            # wait until the script finished running (the running indicator disappears)
            deadline = time.time() + 180
            while time.time() < deadline and page.locator("[data-testid='stStatusWidget']").count():
                time.sleep(0.5)
            assert page.locator("[data-testid='stException']").count() == 0, f"{name}: exception shown"
            page.screenshot(path=str(tmp_path / f"{name}.png"))
        browser.close()
