"""Real-browser passes: every page opened in headless Chromium on a running server, and every
page's deep link as the first session of a freshly started one."""
from __future__ import annotations

import re
import shutil
import time

import pytest

from conftest import ROOT, launch_server, stop_server, wait_until_healthy


def _nav_paths() -> list[str]:
    """Every page's url_path, read from app.py's navigation (so new pages are covered)."""
    return re.findall(r'url_path="([^"]+)"', (ROOT / "app.py").read_text())


APP = (ROOT / "app.py").read_text()
DEFAULT = re.search(r'url_path="([^"]+)", default=True', APP).group(1)  # served at /; its own path is reserved
HIDDEN = set(re.findall(r'url_path="([^"]+)",\s*visibility="hidden"', APP))
PAGES = [p for p in _nav_paths() if p != DEFAULT]

pytestmark = pytest.mark.browser



def _titles() -> dict[str, str]:
    """url_path -> the page's title in the sidebar, from app.py's navigation."""
    return {path: title for title, path in re.findall(r'st\.Page\("pages/[^"]+", title="([^"]+)".*?url_path="([^"]+)"',
                                                      APP, flags=re.S)}


def _check_landed(page, url: str, name: str, titles: dict[str, str], session: str) -> None:
    """The page opened at ``/<name>`` shows no "Page not found" dialog, keeps its url and is the one
    marked in the sidebar (the hidden alias may hand over to the default page it mirrors, at /)."""
    assert page.get_by_text("Page not found").count() == 0, f"/{name} ({session}): 'Page not found'"
    path = page.url.split("?")[0].rstrip("/")
    assert path.endswith(f"/{name}") or (name in HIDDEN and path == url), page.url
    if name not in HIDDEN:
        current = page.locator("[data-testid='stSidebarNav'] a[aria-current='page']")
        assert titles[name] in current.inner_text(), f"/{name} ({session}): sidebar marks {current.inner_text()!r}"


def test_every_page_renders_in_chromium(app_server, tmp_path):
    """Every page's deep link, opened by a later session of a running server: it lands on that
    page, renders with no exception shown (screenshots in the test's tmp folder)."""
    assert {"overview", "selectivity", "probe", "detections", "report"} <= set(PAGES), PAGES
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (make test installs it)")
    from playwright.sync_api import sync_playwright

    server, titles = app_server[0], _titles()
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
            _check_landed(page, server, name, titles, "later session")
            page.screenshot(path=str(tmp_path / f"{name}.png"))
        browser.close()


def test_deep_links_as_first_session_of_a_fresh_server(demo_env, tmp_path):
    """Each page's permalink, opened by the very first session of a newly started server, lands
    on that page with no "Page not found" dialog (Streamlit's folder-based lookup runs before
    app.py's navigation exists: page files are named after their url paths; the default page's
    own path is reserved and unanswered: /overview is a hidden alias of it). Later sessions are
    checked by the pass over every page above. One server per page, a few at a time: each
    first session is mostly the server importing the app, so they overlap well."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (make test installs it)")
    from playwright.sync_api import sync_playwright

    titles = _titles()
    assert set(titles) - {DEFAULT} == set(PAGES) and "overview" in HIDDEN
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        for batch in (PAGES[i:i + 5] for i in range(0, len(PAGES), 5)):
            servers = {name: launch_server(demo_env, tmp_path / f"{name}.log") for name in batch}
            try:
                for name, (proc, url) in servers.items():
                    wait_until_healthy(url, proc, 120, (tmp_path / f"{name}.log").read_text)
                pages = {}
                for name, (_, url) in servers.items():  # every server's first session starts at once
                    pages[name] = browser.new_page(viewport={"width": 1200, "height": 900})
                    pages[name].goto(f"{url}/{name}", wait_until="commit")
                for page in pages.values():
                    page.wait_for_selector("h1", timeout=120_000)
                time.sleep(1.0)  # the dialog, when it comes, follows the first script run
                for name, page in pages.items():
                    _check_landed(page, servers[name][1], name, titles, "first session")
                    page.close()
            finally:
                for proc, _ in servers.values():
                    proc.terminate()   # all at once: each takes a few seconds to wind down
                for proc, _ in servers.values():
                    stop_server(proc)
        browser.close()


def test_own_models_in_chromium(demo_env, tmp_path):
    """Your own network in the real browser: a server started with FILTERSCOPE_MODELS (a py: model file and
    a timm ViT) and FILTERSCOPE_IMAGEFOLDER; Selectivity at a ViT block and Probe at a py: module path render
    a chart and no exception."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (make test installs it)")
    import numpy as np
    from PIL import Image
    from playwright.sync_api import sync_playwright

    rng = np.random.default_rng(2)
    for split in ("train", "test"):
        for c, channel in (("red", 0), ("blue", 2)):
            (tmp_path / "pets" / split / c).mkdir(parents=True)
            for i in range(5):
                im = rng.integers(0, 110, (30, 30, 3), dtype=np.uint8)
                im[..., channel] += 140
                Image.fromarray(im).save(tmp_path / "pets" / split / c / f"{i}.png")
    (tmp_path / "mynet.py").write_text(
        "from torch import nn\n\n\ndef build():\n    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 6, 3),"
        " nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2))\n    return net, {'input_size': 28}\n")
    py_model = f"py:{tmp_path / 'mynet.py'}:build"
    env = {"FILTERSCOPE_MODELS": f"{py_model},timm:test_vit", "FILTERSCOPE_IMAGEFOLDER": str(tmp_path / "pets")}
    proc, url = launch_server(demo_env, tmp_path / "server.log", env=env)
    try:
        wait_until_healthy(url, proc, 120, (tmp_path / "server.log").read_text)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True,
                                        args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            for path, model, layer in (("selectivity", "timm:test_vit", "blocks.1"), ("probe", py_model, "2")):
                page.goto(f"{url}/{path}?model={model}&task=imagefolder-pets&layer={layer}",
                          wait_until="domcontentloaded")
                page.wait_for_selector(".js-plotly-plot", timeout=180_000)
                deadline = time.time() + 180
                while time.time() < deadline and page.locator("[data-testid='stStatusWidget']").count():
                    time.sleep(0.5)
                assert page.locator("[data-testid='stException']").count() == 0, f"{path}: exception shown"
                body = page.inner_text("body")
                assert "ImageFolder" in body and (layer in body), f"{path}: not on the user's task and layer"
                page.screenshot(path=str(tmp_path / f"own-{path}.png"))
            browser.close()
    finally:
        stop_server(proc)
