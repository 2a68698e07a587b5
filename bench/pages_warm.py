"""Warm render time of every page (ms), printed as JSON. Run by ``python -m core bench``.

Lives outside core/ because it drives Streamlit's AppTest (core never imports streamlit).
The pages are the ones app.py's navigation lists (``st.Page("pages/...py", ...)``), so a
new page is timed without touching this file. Each page is rendered once to warm every
cache it uses (the first render may compute), then ``repeats`` more times; the reported
number is the median of those warm renders: server-side script time, everything cached.
``first_render_s`` has each page's first render (seconds; cold where nothing was cached), and
each page's two figures go to stderr as it finishes.

Usage: python bench/pages_warm.py [budget_s|none] [repeats] [key=value ...]

``key=value``: sidebar choices as URL parameters (``model=tv:alexnet task=voc07-det-gt`` on the
paper-scale benchmark's store, kept with ``--keep-cache``: set ``FILTERSCOPE_CACHE`` and
``FILTERSCOPE_VOC`` to its run-cache and root, ``FILTERSCOPE_MODELS=tv:alexnet``); without them the
embedded demo. A choice the sidebar does not take (a model it does not list) stops the run.
"""
from __future__ import annotations

import ast
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def navigation_pages(app: Path = ROOT / "app.py") -> list[str]:
    """Page files in app.py's navigation, in menu order (``st.Page`` calls with a file path)."""
    found = []
    for node in ast.walk(ast.parse(app.read_text())):
        if (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "Page"
                and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
                and node.args[0].value.endswith(".py")):
            found.append((node.lineno, node.col_offset, node.args[0].value))
    return list(dict.fromkeys(page for *_, page in sorted(found)))


def _time_page(at, rel: str, repeats: int) -> tuple[float | None, float, list[str]]:
    t0 = time.perf_counter()
    at.switch_page(rel).run()                          # first render: fills every cache it uses
    first_s = round(time.perf_counter() - t0, 1)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        at.switch_page(rel).run()                      # warm render: timed
        times.append((time.perf_counter() - t0) * 1e3)
    failed = [str(e.value) for e in at.exception]
    warm = None if failed else round(statistics.median(times), 1)
    print(f"{rel}: first render {first_s} s, warm {warm} ms", file=sys.stderr, flush=True)
    return warm, first_s, [f"{rel}: {m[:200]}" for m in failed]


def main(budget_s: float | None, repeats: int = 3, params: dict[str, str] | None = None) -> dict:
    from streamlit.testing.v1 import AppTest

    from core.demo import build as demo

    if not params and not demo.is_built():
        return {"skip": "demo not built: run python -m core demo"}
    pages = navigation_pages()
    t_start = time.perf_counter()
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=3600)
    for k, v in (params or {}).items():
        at.query_params[k] = v
    at.run()
    ignored = {k: v for k, v in (params or {}).items()
               if f"sel_{k}" not in at.session_state or at.session_state[f"sel_{k}"] != v}
    if ignored:  # e.g. a model the app does not list: timing the default model instead would mislead
        return {"error": f"sidebar choices not applied: {ignored} (a model must be listed in FILTERSCOPE_MODELS, "
                         "a task's data set in its FILTERSCOPE_* folder)"}
    out, first, errors = {}, {}, []
    for rel in pages:
        if not (ROOT / rel).is_file():
            out[rel] = None
            errors.append(f"{rel}: listed in app.py but missing")
            continue
        if budget_s is not None and time.perf_counter() - t_start > budget_s:
            out[rel] = None
            errors.append(f"{rel}: not timed (over the {budget_s:g} s budget of this run)")
            continue
        out[rel], first[rel], failed = _time_page(at, rel, repeats)
        errors += failed
    return {"pages": out, "first_render_s": first, "errors": errors, "repeats": repeats, "params": params or {},
            "load_avg": list(os.getloadavg())}


if __name__ == "__main__":
    budget = float(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1] != "none" else None
    given = dict(a.split("=", 1) for a in sys.argv[3:] if "=" in a)
    print(json.dumps(main(budget, int(sys.argv[2]) if len(sys.argv) > 2 else 3, given)))
