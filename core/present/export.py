"""Static exports for lab meetings: figures as PNG / SVG / PDF, tables as CSV / LaTeX, each stamped.

No streamlit. Every export carries a provenance stamp (model, short weights hash,
dataset and split, layer, parameters, date, code version and the permalink of the
view): visible under the plot (the figure's ``fs-stamp`` annotation, see
:func:`core.present.figures.apply_style`) and in the file's metadata where the format has
some (PNG ``tEXt``/``iTXt`` chunks, SVG ``<desc>``/``<metadata>``, PDF document info);
CSV files start with ``# `` comment lines, LaTeX tables print it under the table.

Static images come from plotly through kaleido v1, which drives an installed
Chromium (Debian's ``chromium``, ``$BROWSER_PATH`` or any Chrome on ``PATH``). One
browser is started on first use and kept for the life of the process (~3 s once,
then ~0.2 s per image); calls from several threads are safe. Without a browser,
:func:`static_export_problem` says what to install and the figure exports raise
:class:`~core.errors.DataMissingError` with that message; CSV and LaTeX always work.
MathJax is disabled (it would come from a CDN): keep LaTeX out of titles.
"""
from __future__ import annotations

import asyncio
import atexit
import io
import json
import logging
import math
import os
import shutil
import threading
import time
from typing import Any, Iterable, Mapping, Sequence
from urllib.parse import urlencode
from xml.sax.saxutils import escape as xml_escape

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from core.present import figures
from core.hashing import code_version
from core.errors import DataMissingError, FilterscopeError, InputError

log = logging.getLogger("filterscope.export")

#: What to do when no browser is found (also shown next to the disabled buttons).
NO_BROWSER = ("PNG/SVG/PDF export needs a Chromium browser, and none was found: install chromium "
              "(`make chromium`, or `apt-get install chromium` on Debian), or point $BROWSER_PATH at a "
              "Chrome/Chromium executable. CSV and LaTeX exports work without it.")
_BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
#: Default size of exported figures, in CSS pixels (PNGs are rendered at ``scale`` 2).
EXPORT_WIDTH = 960
#: Pixel size of a slide (PNG).
SLIDE_PIXELS = (1920, 1080)
DEFAULT_BASE_URL = "http://127.0.0.1:8501"


# --------------------------------------------------------------------------- stamps
def _provenances(prov: Any) -> list:
    if prov is None:
        return []
    if isinstance(prov, (list, tuple)):
        return [p for p in prov if p is not None]
    return [prov]


def _field(p: Any, name: str) -> Any:
    return p.get(name) if isinstance(p, Mapping) else getattr(p, name)


def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(v for v in values if v))


def stamp_fields(prov: Any, url: str = "") -> dict:
    """The stamp as a dict: ``models`` (name + short weights hash), ``dataset``, ``layer``,
    ``params``, ``date``, ``code``, ``url``.

    Parameters
    ----------
    prov : a :class:`core.service.Provenance` (or its ``asdict``), a list of them (a figure
        over several models), or None (then only code version, date and URL are known).
    url : the permalink of the view (see :func:`permalink`).
    """
    provs = _provenances(prov)
    models = _unique(f"{_field(p, 'model').get('name')} (weights "
                     f"{(_field(p, 'model').get('weights_sha256') or 'none')[:12]})" for p in provs)
    params: dict = {}
    for p in provs:
        params.update(_field(p, "params") or {})
    dates = _unique(str(_field(p, "computed")) for p in provs)
    return {"models": models, "dataset": _unique(_field(p, "dataset") for p in provs),
            "layer": _unique(_field(p, "layer") for p in provs), "params": params,
            "date": dates[-1] if dates else time.strftime("%Y-%m-%d %H:%M"),
            "code": _unique(_field(p, "code_version") for p in provs) or [code_version()], "url": url}


def stamp_text(prov: Any, url: str = "") -> str:
    """One-line provenance stamp: ``model … (weights 1a2b…) · data … · layer … · params ·
    computed <date> · code <version> · <url>``.

    Built from :func:`stamp_fields`; several provenances (compare mode) list every model.
    """
    f = stamp_fields(prov, url)
    parts = []
    if f["models"]:
        parts.append(("models " if len(f["models"]) > 1 else "model ") + ", ".join(f["models"]))
    if f["dataset"]:
        parts.append("data " + ", ".join(f["dataset"]))
    if f["layer"]:
        parts.append("layer " + ", ".join(f["layer"]))
    if f["params"]:
        parts.append(", ".join(f"{k}={v}" for k, v in f["params"].items()))
    parts += [f"computed {f['date']}", "code " + ", ".join(f["code"])]
    if url:
        parts.append(url)
    return " · ".join(parts)


def permalink(page: str, params: Mapping[str, Any] | None = None, base: str = DEFAULT_BASE_URL) -> str:
    """The URL of a view: ``<base>/<page url path>?model=…&task=…`` (empty values dropped).

    ``page`` may be empty when ``base`` already is the page's URL (``st.context.url``).
    """
    query = urlencode({k: str(v) for k, v in (params or {}).items() if v not in (None, "")}, safe=":,")
    path = page.strip("/")
    return base.rstrip("/") + (f"/{path}" if path else "") + (f"?{query}" if query else "")


def stamped(fig: go.Figure, stamp: str | None, *, presentation: bool | None = None) -> go.Figure:
    """A copy of ``fig`` with ``stamp`` drawn under the plot (``None`` keeps its own stamp).

    ``presentation`` switches projector styling on or off (``None`` keeps the figure's).
    """
    out = go.Figure(fig)
    meta = out.layout.meta if isinstance(out.layout.meta, dict) else {}
    pres = bool(meta.get("presentation", False)) if presentation is None else presentation
    return figures.apply_style(out, title=None, stamp=stamp, presentation=pres)


def _figure_stamp(fig: go.Figure) -> str:
    meta = fig.layout.meta
    return str(meta.get("stamp", "")) if isinstance(meta, dict) else ""


# --------------------------------------------------------------------------- browser + kaleido
def find_browser() -> str | None:
    """Path of the browser kaleido would drive: ``$BROWSER_PATH`` or a Chromium/Chrome on PATH."""
    env = os.environ.get("BROWSER_PATH")
    if env:
        return env if os.access(env, os.X_OK) else None
    for name in _BROWSER_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def static_export_problem() -> str | None:
    """None when PNG/SVG/PDF export can work here, else the message saying what to install."""
    return None if find_browser() else NO_BROWSER


class _Renderer:
    """One kaleido (one headless Chromium) on its own event-loop thread, for the whole process."""

    def __init__(self, browser: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="filterscope-kaleido", daemon=True)
        self._thread.start()
        try:
            self._kaleido = self._call(self._open(browser), timeout=120)
        except BaseException:
            self._stop_loop()
            raise

    @staticmethod
    async def _open(browser: str) -> Any:
        import kaleido

        k = kaleido.Kaleido(n=1, mathjax=False, path=browser)
        await k.open()
        return k

    def _call(self, coro: Any, timeout: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def render(self, fig: dict, fmt: str, width: int, height: int, scale: float) -> bytes:
        opts = {"format": fmt, "width": width, "height": height, "scale": scale}
        return self._call(self._kaleido.calc_fig(fig, opts=opts), timeout=120)

    def close(self) -> None:
        try:
            self._call(self._kaleido.close(), timeout=30)
        except Exception:  # noqa: BLE001 - closing a dead browser
            log.debug("kaleido close failed", exc_info=True)
        self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


_RENDERER: _Renderer | None = None
_RENDERER_LOCK = threading.Lock()


def _renderer() -> _Renderer:
    global _RENDERER
    with _RENDERER_LOCK:
        if _RENDERER is None:
            browser = find_browser()
            if browser is None:
                raise DataMissingError(NO_BROWSER)
            log.info("starting kaleido with %s", browser)
            _RENDERER = _Renderer(browser)
        return _RENDERER


def shutdown() -> None:
    """Close the export browser (it restarts on the next export)."""
    global _RENDERER
    with _RENDERER_LOCK:
        if _RENDERER is not None:
            _RENDERER.close()
            _RENDERER = None


atexit.register(shutdown)


def _size(fig: go.Figure, width: int | None, height: int | None) -> tuple[int, int]:
    h = height or fig.layout.height or 500
    return int(width or fig.layout.width or EXPORT_WIDTH), int(h)


def render(fig: go.Figure, fmt: str, *, width: int | None = None, height: int | None = None,
           scale: float = 1.0) -> bytes:
    """Raw kaleido output (``png``, ``svg``, ``pdf``, ``jpg``, ``webp``) of ``fig`` as it is.

    Retries once with a fresh browser if the first one died. Raises
    :class:`DataMissingError` (no browser) or :class:`FilterscopeError` (render failed).
    """
    w, h = _size(fig, width, height)
    spec = fig.to_plotly_json()
    for attempt in (1, 2):
        r = _renderer()
        try:
            return r.render(spec, fmt, w, h, scale)
        except Exception as exc:  # noqa: BLE001 - kaleido/choreographer raise many kinds
            log.warning("static export (%s) failed, attempt %d: %s", fmt, attempt, exc)
            shutdown()
            if attempt == 2:
                raise FilterscopeError(f"static {fmt.upper()} export failed: {type(exc).__name__}: {exc}. "
                                       "Check that chromium starts (`chromium --headless --version`).") from exc
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- figures
def _metadata(stamp: str, fig: go.Figure) -> dict:
    title = fig.layout.title.text or ""
    meta = fig.layout.meta if isinstance(fig.layout.meta, dict) else {}
    return {"title": title, "reproduces": meta.get("reproduces", ""), "caption": meta.get("caption", ""),
            "stamp": stamp, "software": f"Filterscope {code_version()}"}


def figure_png(fig: go.Figure, stamp: str | None = None, *, width: int | None = None,
               height: int | None = None, scale: float = 2.0, presentation: bool | None = None) -> bytes:
    """PNG of ``fig`` with ``stamp`` under the plot and in ``tEXt`` chunks (``Description``).

    Parameters
    ----------
    fig : any figure (typically styled by :func:`core.present.figures.apply_style`).
    stamp : provenance line (:func:`stamp_text`); ``None`` keeps the figure's own stamp.
    width, height : CSS pixels (default: 960 wide, the figure's own height).
    scale : pixel density (2 = 1920 px wide by default).
    presentation : force projector styling on/off (``None`` keeps the figure's).
    """
    from PIL import Image

    out = stamped(fig, stamp, presentation=presentation)
    raw = render(out, "png", width=width, height=height, scale=scale)
    meta = _metadata(_figure_stamp(out), out)
    text = {("Description" if k == "stamp" else k.capitalize()): str(v) for k, v in meta.items() if v}
    buf = io.BytesIO()
    Image.open(io.BytesIO(raw)).save(buf, format="PNG", pnginfo=png_info(text))
    return buf.getvalue()


def png_info(text: Mapping[str, str]) -> Any:
    """PNG text chunks (``tEXt``; ``iTXt`` for text outside Latin-1) for Pillow's ``save``."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        info.add_text(key, str(value))
    return info


def figure_svg(fig: go.Figure, stamp: str | None = None, *, width: int | None = None,
               height: int | None = None, presentation: bool | None = None) -> bytes:
    """SVG of ``fig``: the stamp under the plot, in ``<desc>`` and as JSON in ``<metadata>``."""
    out = stamped(fig, stamp, presentation=presentation)
    svg = render(out, "svg", width=width, height=height).decode("utf-8")
    meta = _metadata(_figure_stamp(out), out)
    head = (f"<title>{xml_escape(meta['title'])}</title><desc>{xml_escape(meta['stamp'])}</desc>"
            f'<metadata id="filterscope-provenance">{xml_escape(json.dumps(meta, ensure_ascii=False))}</metadata>')
    start = svg.find("<svg")
    end = svg.find(">", start)
    if start < 0 or end < 0:
        raise FilterscopeError("static SVG export returned no <svg> element; try again or export PNG")
    return (svg[: end + 1] + head + svg[end + 1:]).encode("utf-8")


def figure_pdf(fig: go.Figure, stamp: str | None = None, *, width: int | None = None,
               height: int | None = None, presentation: bool | None = None) -> bytes:
    """Vector PDF of ``fig``; the stamp under the plot and in the document info (Subject)."""
    out = stamped(fig, stamp, presentation=presentation)
    return _with_pdf_info(render(out, "pdf", width=width, height=height), _metadata(_figure_stamp(out), out))


def _with_pdf_info(pdf: bytes, meta: Mapping[str, str]) -> bytes:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf)))
    writer.add_metadata({"/Title": meta.get("title", ""), "/Subject": meta.get("stamp", ""),
                         "/Creator": meta.get("software", "Filterscope")})
    buf = io.BytesIO()
    writer.write(buf)
    return buf.getvalue()


def merge_pdfs(pages: Sequence[bytes], *, title: str, subject: str = "") -> bytes:
    """One PDF from several (e.g. one per figure, in order), with document info."""
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter()
    for pdf in pages:
        writer.append(PdfReader(io.BytesIO(pdf)))
    writer.add_metadata({"/Title": title, "/Subject": subject, "/Creator": f"Filterscope {code_version()}"})
    buf = io.BytesIO()
    writer.write(buf)
    return buf.getvalue()


# --------------------------------------------------------------------------- tables
def _check_table(df: Any) -> pd.DataFrame:
    if not isinstance(df, pd.DataFrame):
        raise InputError(f"tables are exported from pandas DataFrames, got {type(df).__name__}")
    return df


def _keep_index(df: pd.DataFrame) -> bool:
    """Write the index unless it is the default 0..n-1 RangeIndex without a name."""
    idx = df.index
    return not (isinstance(idx, pd.RangeIndex) and idx.name is None and idx.start == 0 and idx.step == 1)


def stamp_lines(stamp: str, caption: str = "") -> list[str]:
    """The comment lines that head a CSV export (without the ``# `` prefix)."""
    lines = [caption] if caption else []
    return lines + [f"provenance: {stamp}" if stamp else "provenance: unknown",
                    f"exported {time.strftime('%Y-%m-%d %H:%M')} by Filterscope {code_version()}"]


def table_csv(df: pd.DataFrame, stamp: str, caption: str = "") -> bytes:
    """CSV (UTF-8) of ``df``, headed by ``# `` comment lines: caption, provenance stamp, export date.

    Read it back with ``pd.read_csv(path, skiprows=<number of leading '#' lines>)`` (or
    ``comment="#"`` when no cell starts with ``#``). Floats are written in full precision.
    """
    df = _check_table(df)
    head = "".join(f"# {line}\n" for text in stamp_lines(stamp, caption) for line in text.splitlines() or [""])
    return (head + df.to_csv(index=_keep_index(df))).encode("utf-8")


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "<": r"\textless{}", ">": r"\textgreater{}", "±": r"$\pm$", "→": r"$\rightarrow$",
                  "×": r"$\times$", "≥": r"$\geq$", "≤": r"$\leq$", "·": r"$\cdot$", "∩": r"$\cap$",
                  "…": r"\ldots{}", "–": "--", "—": "---", "✅": "yes", "❌": "no", "Δ": r"$\Delta$"}


def latex_escape(text: Any) -> str:
    """``text`` with LaTeX's special characters escaped (and a few symbols as math)."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def _latex_cell(v: Any, float_format: str | None) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        x = float(v)
        if math.isnan(x):
            return "--"
        return float_format.format(x) if float_format and math.isfinite(x) else repr(x)
    return latex_escape(v)


def _header(cols: pd.Index) -> list[str]:
    if isinstance(cols, pd.MultiIndex):
        return [" / ".join(str(p) for p in c if str(p)) for c in cols]
    return [str(c) for c in cols]


def table_latex(df: pd.DataFrame, caption: str, stamp: str, *, label: str | None = None,
                float_format: str | None = None) -> str:
    """A booktabs LaTeX table (``\\toprule``/``\\midrule``/``\\bottomrule``) of ``df``.

    Parameters
    ----------
    caption : table caption (what it reproduces), escaped.
    stamp : provenance line, printed small under the table and as ``%`` comments on top.
    label : optional ``\\label{…}``.
    float_format : e.g. ``"{:.1f}"``; default: the shortest text that reads back as the
        same float (round the DataFrame first for a tidy table).

    The index is written as leading columns (one per level) unless it is a plain
    0..n-1 range. Needs ``\\usepackage{booktabs}`` in the document.
    """
    df = _check_table(df)
    index = _keep_index(df)
    names = [str(n) if n is not None else "" for n in df.index.names] if index else []
    cols = names + _header(df.columns)
    numeric = [False] * len(names) + [pd.api.types.is_numeric_dtype(df[c]) for c in df.columns]
    spec = "".join("r" if n else "l" for n in numeric)
    lines = [f"% {line}" for line in stamp_lines(stamp)]
    lines += [r"\begin{table}[htbp]", r"\centering", rf"\caption{{{latex_escape(caption)}}}"]
    if label:
        lines.append(rf"\label{{{label}}}")
    lines += [rf"\begin{{tabular}}{{{spec}}}", r"\toprule", " & ".join(latex_escape(c) for c in cols) + r" \\",
              r"\midrule"]
    for key, row in zip(df.index, df.itertuples(index=False, name=None)):
        keys = (list(key) if isinstance(key, tuple) else [key]) if index else []
        cells = [latex_escape(k) for k in keys] + [_latex_cell(v, float_format) for v in row]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if stamp:
        lines.append(rf"\par\smallskip{{\footnotesize {latex_escape(stamp)}}}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"
