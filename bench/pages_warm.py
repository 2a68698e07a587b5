"""Warm render time of every page (ms), printed as JSON. Run by ``python -m core bench``.

Lives outside core/ because it drives Streamlit's AppTest (core never imports streamlit).
Usage: python bench/pages_warm.py [budget_s]
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(budget_s: float | None) -> dict:
    from streamlit.testing.v1 import AppTest

    from core import demo

    if not demo.is_built():
        return {"skip": "demo not built: run python -m core demo"}
    app = ROOT / "app.py"
    pages = sorted(p for p in (ROOT / "pages").glob("*.py") if not p.name.startswith("_"))
    t_start = time.perf_counter()
    at = AppTest.from_file(str(app), default_timeout=300)
    at.run()
    out, errors = {}, []
    for page in pages:
        rel = str(page.relative_to(ROOT))
        if budget_s is not None and time.perf_counter() - t_start > budget_s:
            out[rel] = None
            errors.append(f"{rel}: not timed (over the {budget_s:g} s budget of this run)")
            continue
        at.switch_page(rel).run()                     # first (cold) render
        t0 = time.perf_counter()
        at.switch_page(rel).run()                     # second (warm) render: timed
        ms = (time.perf_counter() - t0) * 1e3
        failed = [str(e.value) for e in at.exception]
        out[rel] = None if failed else round(ms, 1)
        errors += [f"{rel}: {m[:200]}" for m in failed]
    return {"pages": out, "errors": errors}


if __name__ == "__main__":
    print(json.dumps(main(float(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1] != "none" else None)))
