"""Shared page furniture: demo bootstrap, sidebar selection synced to the URL, guards, progress."""
from __future__ import annotations

import contextlib
import logging
import sys
import threading
import zlib
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import streamlit as st
from streamlit.errors import StreamlitAPIException

from core import service
from core.errors import FilterscopeError

log = logging.getLogger("filterscope.ui")
SEL_KEYS = ("model", "compare", "task", "layer", "cls")


@dataclass
class Selection:
    """What the sidebar selected; ``compare`` is None when compare mode is off."""

    model: str
    task: str
    layer: str
    compare: str | None = None
    cls: int = 0

    @property
    def models(self) -> list[str]:
        return [self.model] + ([self.compare] if self.compare else [])


def progress_callback(bar) -> Callable[[int, int, str], None]:
    def cb(done: int, total: int, message: str) -> None:
        bar.progress(min(1.0, done / max(total, 1)), text=message[:120])
    return cb


def _needs_demo() -> bool:
    """Build the embedded demo now? Only when there is nothing else to show (no model or no task of the
    user's own), when a demo model or task is asked for (URL, earlier choice), or on the sidebar's button:
    a user who starts the app on their own model and data does not wait for the demo."""
    if service.demo_is_built():
        return False
    asked = [str(st.session_state.get(f"sel_{k}") or "") for k in ("model", "compare", "task")]
    if st.session_state.get("_build_demo") or any(a.startswith("demo") for a in asked):
        return True
    own_models = [m for m in service.models() if not m.startswith("demo:")]
    own_tasks = [t for t in service.tasks() if not t.startswith("demo")]
    return not (own_models and own_tasks)


def _demo_button() -> None:
    """Sidebar button that builds the embedded demo on demand (shown while it is not built)."""
    if not service.demo_is_built() and st.sidebar.button(
            "Build the embedded demo", key="build_demo_btn", icon=":material/construction:",
            help="The demo's networks and tasks (a few minutes, once): the paper's setting on procedural scenes."):
        st.session_state["_build_demo"] = True
        st.rerun()


def ensure_demo() -> None:
    """Build the embedded demo on first use, with visible progress (stops the page until done)."""
    if service.demo_is_built():
        return
    with st.status("Building the embedded demo (first run only, a few minutes)…", expanded=True) as status:
        st.write("Generating scenes, pretraining, fine-tuning, extracting features, caching analyses. "
                 "Other sessions wait for the same build instead of starting their own.")
        bar = st.progress(0.0)
        service.build_demo(progress=progress_callback(bar))
        service.warm_demo(progress=progress_callback(bar))
        status.update(label="Demo built", state="complete")


class _RunWarnings(logging.Handler):
    """Warnings that core logs from one thread (one session's script run): a damaged cache
    file dropped, a demo network rebuilt... shown on the page as well as in the server log."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.thread = threading.get_ident()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.messages.append(record.getMessage())


def run_page(nav: Any) -> None:
    """Run the page ``st.navigation`` chose. What core warned about during the run is shown
    above the page (once per message); a cache folder that cannot be written, is full or has
    gone away gets a message saying what to do instead of a traceback."""
    top = st.container()
    pending = st.session_state.setdefault("_run_warnings", [])
    handler = _RunWarnings()
    loggers = [logging.getLogger(n) for n in ("core", "filterscope")]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        nav.run()
    except OSError as exc:
        st.error(service.storage_problem(exc))
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
        pending.extend(handler.messages)  # kept over an st.rerun() that ends this run early
    for msg in dict.fromkeys(pending):
        top.warning(msg, icon=":material/build:")
    pending.clear()


@contextlib.contextmanager
def guard(what: str = "this view") -> Iterator[None]:
    """Turn errors into a clear message instead of a traceback."""
    try:
        yield
    except FilterscopeError as exc:
        st.error(f"Cannot show {what}: {exc}")
    except OSError as exc:
        st.error(f"Cannot show {what}: {service.storage_problem(exc)}")
    except Exception as exc:  # noqa: BLE001 - a page must never show a traceback
        log.exception("unexpected error in %s", what)
        st.error(f"Unexpected error while computing {what}: {type(exc).__name__}: {exc}. "
                 "The details are in the server log; other pages keep working.")


def backend_picker() -> None:
    """Sidebar expander: where missing features are extracted (local by default, or Ray)."""
    with st.sidebar.expander("Compute backend"):
        ray = st.radio("Extract missing features", ["local", "Ray"], key="compute_backend", horizontal=True,
                       help="Ray: model actors on Ray Data write a sharded feature store (same features).") == "Ray"
        st.text_input("Ray address", key="ray_address", disabled=not ray, placeholder="empty: local Ray · auto",
                      help="A running cluster (`ray start --head`): auto or host:port. Empty starts Ray here.")


DATA_KINDS = {"VOC 2007 (folder holding VOCdevkit)": "voc", "ImageFolder (<root>/train, <root>/test)": "imagefolder",
              "SUN397 (folder holding SUN397)": "sun397"}


def data_picker() -> None:
    """Sidebar expander: add a real model (local weights) or a local dataset to every page's choices."""
    problems = service.config_errors()
    with st.sidebar.expander("Your models and data", expanded=bool(problems)):
        for msg in problems:
            st.warning(msg)
        model_id = st.text_input("Model id", key="add_model_id", placeholder="timm:resnet50@/data/resnet50.pth",
                                 help="tv:<torchvision arch>, timm:<timm name> or py:<file.py>:<callable>, each with "
                                      "an optional @<local weights file>; without a file: the torch hub / Hugging "
                                      "Face cache if it holds the weights, else random init (provenance says "
                                      "which). A py: id runs that file's code.")
        if st.button("Add model", key="add_model_btn", disabled=not model_id.strip()):
            _register(lambda: service.register_model(model_id), f"model {model_id}")
        kind = st.selectbox("Data kind", list(DATA_KINDS), key="add_data_kind")
        folder = st.text_input("Data folder", key="add_data_root", placeholder="/data")
        if st.button("Add data", key="add_data_btn", disabled=not folder.strip()):
            register = {"voc": service.register_voc, "imagefolder": service.register_imagefolder,
                        "sun397": service.register_sun397}[DATA_KINDS[kind]]
            _register(lambda: register(folder.strip()), f"data {folder}")
        if msg := st.session_state.pop("_add_result", None):
            (st.success if msg[0] else st.error)(msg[1])


def _register(fn: Callable[[], Any], what: str) -> None:
    """Run a registration; remember its outcome for the next run (the lists change) and rerun."""
    try:
        fn()
        st.session_state["_add_result"] = (True, f"Added {what}: pick it in the lists above.")
    except FilterscopeError as exc:
        st.session_state["_add_result"] = (False, f"Could not add {what}: {exc}")
    st.rerun()


def chosen_backend() -> dict:
    """The sidebar's backend choice as keyword arguments of :func:`core.service.compute_backend`."""
    if st.session_state.get("compute_backend") != "Ray":
        return {"name": "local"}
    return {"name": "ray", "address": (st.session_state.get("ray_address") or "").strip() or None}


class _LazyStatus:
    """A progress callback that opens a status box with a progress bar on its first report.

    The service reports only when something is extracted or computed (or another session
    is computing it), so a warm page shows no status box and pays nothing for one.
    """

    def __init__(self, label: str):
        self.label, self.box, self.bar = label, None, None

    def __call__(self, done: int, total: int, message: str) -> None:
        if self.box is None:
            self.box = st.status(self.label, expanded=True)  # the bar shows while it runs
            self.bar = self.box.progress(0.0)
        self.bar.progress(min(1.0, done / max(total, 1)), text=message[:120])

    def finish(self, ok: bool = True) -> None:
        if self.box is not None:
            self.box.update(label=self.label.rstrip("…") + (" — done" if ok else " — failed"),
                            state="complete" if ok else "error", expanded=False)


def computing(label: str, fn: Callable[..., Any], *args, **kwargs) -> Any:
    """Run ``fn(*args, progress=cb, **kwargs)``; when it has work to do (nothing cached), a
    status box labelled ``label`` with a progress bar shows it.

    Features missing on the way are extracted on the sidebar's compute backend.
    """
    status = _LazyStatus(label)
    try:
        with service.compute_backend(**chosen_backend()):
            out = fn(*args, progress=status, **kwargs)
    except Exception:
        status.finish(ok=False)
        raise
    status.finish()
    return out


def _init_from_url() -> None:
    if st.session_state.get("_sel_init"):
        return
    for k in SEL_KEYS:
        if k in st.query_params:
            st.session_state[f"sel_{k}"] = st.query_params[k]
    st.session_state["_sel_init"] = True


def preset(**values: str) -> None:
    """Page defaults for sidebar choices not made yet (call before :func:`sidebar`).

    E.g. ``preset(layer="conv5")`` on the Sec. 4 pages; a URL parameter or an earlier
    choice in this session still wins.
    """
    for k, v in values.items():
        if not st.session_state.get(f"sel_{k}"):
            st.session_state[f"sel_{k}"] = str(v)


def select_and_rerun(**values: str) -> None:
    """Change sidebar choices from page code (e.g. a click on a chart) and rerun the page.

    Sidebar widgets already exist in the current run, so the change is applied by
    :func:`sidebar` at the start of the next run.
    """
    st.session_state["_sel_pending"] = {k: str(v) for k, v in values.items()}
    st.rerun()


def new_click(event: Any, key: str) -> dict | None:
    """The first point selected in a chart event (``st.plotly_chart(on_select="rerun")``) when it
    differs from the one handled in an earlier run, else None; ``key`` names the chart."""
    points = list(event.selection.points) if event is not None else []
    if not points:
        st.session_state.pop(f"_click_{key}", None)  # clicking the same point later counts again
        return None
    p = dict(points[0])
    sig = repr((p.get("curve_number"), p.get("point_index"), p.get("x"), p.get("y")))
    if st.session_state.get(f"_click_{key}") == sig:
        return None
    st.session_state[f"_click_{key}"] = sig
    return p


def custom_value(point: dict, i: int = 0) -> Any:
    """Item ``i`` of a clicked point's ``customdata`` (it comes back as a list, a dict or a scalar)."""
    cd = point.get("customdata")
    if isinstance(cd, dict):
        return cd.get(str(i), cd.get(i))
    return cd[i] if isinstance(cd, (list, tuple)) else cd


def clickable(fig: Any) -> Any:
    """Make a figure's points clickable for ``st.plotly_chart(on_select="rerun", selection_mode="points")``.

    Streamlit reports clicks only on marker points: line-only scatter traces get invisible
    markers (the clicked one shows), and each heatmap gets an invisible marker at every
    cell centre carrying the cell's ``x``, ``y``, customdata and hover text (the heatmap's
    own hover is switched off; the clicked cell shows a white ring). In place; returns ``fig``.
    """
    import re

    import numpy as np

    for tr in list(fig.data):
        if tr.type == "scatter" and tr.mode == "lines" and tr.hoverinfo != "skip" and tr.fill in (None, "none"):
            tr.update(mode="lines+markers", marker=dict(size=7, color=tr.line.color, opacity=0),
                      selected=dict(marker=dict(opacity=1, size=13)), unselected=dict(marker=dict(opacity=0)))
        elif tr.type == "heatmap" and tr.z is not None:
            z = np.asarray(tr.z, dtype=float)
            ny, nx = z.shape
            xs = list(tr.x) if tr.x is not None else list(range(nx))
            ys = list(tr.y) if tr.y is not None else list(range(ny))
            cd = np.empty((ny, nx, 0), object) if tr.customdata is None else np.asarray(tr.customdata, object)
            cd = cd[..., None] if cd.ndim == 2 else cd
            k = cd.shape[-1]
            custom = np.concatenate([cd, z[..., None].astype(object)], axis=-1).reshape(ny * nx, k + 1)
            template = re.sub(r"%\{customdata(?!\[)", "%{customdata[0]", tr.hovertemplate or "%{x}, %{y}: %{z}")
            template = template.replace("%{z", "%{customdata[" + str(k) + "]")
            jj, ii = np.divmod(np.arange(ny * nx), nx)
            fig.add_scatter(x=[xs[i] for i in ii], y=[ys[j] for j in jj], mode="markers", customdata=custom.tolist(),
                            hovertemplate=template, showlegend=False, name=tr.name or "cells",
                            xaxis=tr.xaxis, yaxis=tr.yaxis,
                            marker=dict(symbol="circle-open", size=14, color="white", opacity=0,
                                        line=dict(width=3, color="white")),
                            selected=dict(marker=dict(opacity=1)), unselected=dict(marker=dict(opacity=0)))
            tr.update(hoverinfo="skip", hovertemplate=None)
            fig.update_layout(hoverdistance=-1)
            if all(isinstance(v, str) for v in xs + ys):  # keep the axes tight on the cells (no marker padding)
                flip = fig.layout.yaxis.autorange == "reversed"
                fig.update_xaxes(autorange=False, range=[-0.5, nx - 0.5])
                fig.update_yaxes(autorange=False, range=[ny - 0.5, -0.5] if flip else [-0.5, ny - 0.5])
    return fig


def widget_key(base: str, labels: Sequence[Any]) -> str:
    """A widget key that changes with the widget's option labels.

    A selectbox or multiselect whose options change under one key keeps showing (or
    silently drops) the old choices in the browser, e.g. class names after a change of
    task; a key per list of labels makes a fresh widget instead.
    """
    return f"{base}_{zlib.crc32(chr(31).join(map(str, labels)).encode()):08x}"


def _apply_pending() -> None:
    for k, v in (st.session_state.pop("_sel_pending", None) or {}).items():
        st.session_state[f"sel_{k}"] = v
        st.session_state[f"_force_{k}"] = v  # _pick sets the widget before it exists: the browser shows it too


def _pick(label: str, key: str, options: Sequence[str], fmt: Callable[[str], str] = str, help: str | None = None) -> str:
    options = list(options)
    current = st.session_state.get(f"sel_{key}")
    index = options.index(current) if current in options else 0
    # One widget per list of labels: a selectbox whose labels change under the same key keeps
    # showing the old label in the browser (e.g. class names after a change of task).
    wkey = widget_key(f"w_{key}", [fmt(o) for o in options])
    forced = st.session_state.pop(f"_force_{key}", None)
    if forced in options:  # the value set here wins (passing index too would only log a warning)
        st.session_state[wkey] = forced
    # index always otherwise: a widget on another page is a new widget that starts from its index
    pos = {} if forced in options else {"index": index}
    value = st.sidebar.selectbox(label, options, **pos, format_func=fmt, key=wkey, help=help)
    st.session_state[f"sel_{key}"] = value
    return value


def route_through_app(page_file: str) -> None:
    """Deep links on a fresh server: Streamlit then runs a page file without app.py (old
    folder-based navigation). Send the request through app.py, which forwards it back here
    with the query parameters, so permalinks always get the real navigation and layout."""
    if st.session_state.get("_via_app") or not page_file:
        return
    st.session_state["_goto"] = f"pages/{Path(page_file).name}"
    try:
        st.switch_page("app.py", query_params=st.query_params.to_dict())
    except StreamlitAPIException:  # the page runs as its own entry script (e.g. in tests): stay
        st.session_state.pop("_goto", None)


# --------------------------------------------------------------------------- downloads and pins
PINS = "report_items"  #: session-state list of pinned core.present.report.ReportItem


def current_permalink() -> str:
    """The URL of this view with its query parameters (the sidebar's selection)."""
    from core.present import export

    params = st.query_params.to_dict()
    base = st.context.url
    if base:
        return export.permalink("", params, base)
    try:  # AppTest and bare runs have no browser URL: the page's url path on the default address
        from streamlit.runtime.scriptrunner import get_script_run_ctx

        pm = get_script_run_ctx().pages_manager
        page = pm.get_pages().get(pm.current_page_script_hash, {}).get("url_pathname", "")
    except Exception:  # noqa: BLE001 - internal API, best effort
        page = ""
    return export.permalink(page, params)


def export_stamp(provenance: Any = None, stamp: str | None = None) -> str:
    """The stamp of an export: from ``provenance`` (one or several) plus this view's permalink;
    an explicit ``stamp`` gets the permalink appended."""
    from core.present import export

    url = current_permalink()
    if stamp:
        return stamp if url in stamp else f"{stamp} · {url}"
    return export.stamp_text(provenance, url)


def _pin(item_args: dict) -> None:
    from core.present.report import ReportItem

    fig = item_args.pop("fig")
    item = ReportItem.from_figure(fig, **item_args)
    pins = [p for p in st.session_state.get(PINS, []) if p.key != item.key]
    st.session_state[PINS] = pins + [item]


def _table_downloads(box: Any, df: Any, key: str, stamp: str, caption: str) -> None:
    from core.present import export

    name = key.replace(" ", "_")
    box.download_button("CSV", data=lambda: export.table_csv(df, stamp, caption), file_name=f"{name}.csv",
                        mime="text/csv", key=f"{key}__csv", on_click="ignore", icon=":material/download:",
                        type="tertiary", help="Table as CSV; the provenance stamp heads it as # comment lines.")
    box.download_button("LaTeX", data=lambda: export.table_latex(df, caption or name, stamp),
                        file_name=f"{name}.tex", mime="text/x-tex", key=f"{key}__tex", on_click="ignore",
                        icon=":material/download:", type="tertiary",
                        help="Booktabs LaTeX table (needs \\usepackage{booktabs}), caption and stamp included.")


FIGURE_MEMO = "_figure_memo"  #: session-state dict: memo_figure's key -> figure, least recently used first
FIGURE_MEMO_SIZE = 16


def memo_figure(key: tuple, build: Callable[[], Any]) -> Any:
    """``build()``'s figure, kept in this session under ``key``, which must name every input the
    figure depends on (model, task, layer, items, the widgets' values, presentation mode).

    A rerun that changes none of them (a widget elsewhere on the page, a click on a bar, the
    pages' own reruns) reuses the figure instead of building it again: plotly's object model
    takes 20-30 ms per styled image grid on the 2-core machine, most of the probe page's warm
    render. The figure must not be changed after ``build`` (pins and exports take copies).
    The least recently used are dropped past :data:`FIGURE_MEMO_SIZE`.
    """
    memo = st.session_state.setdefault(FIGURE_MEMO, {})
    fig = memo.pop(key, None)
    if fig is None:
        fig = build()
    memo[key] = fig
    while len(memo) > FIGURE_MEMO_SIZE:
        memo.pop(next(iter(memo)))
    return fig


def show_figure(fig: Any, key: str, *, provenance: Any = None, stamp: str | None = None,
                caption: str | None = None, table: Any = None, table_caption: str = "",
                paper_ref: str | None = None, title: str | None = None, **chart_kwargs: Any) -> Any:
    """Draw a figure with a compact row of downloads and a "Pin to report" button under it.

    ``st.plotly_chart(fig, key=key, **chart_kwargs)`` draws it (pass ``on_select`` /
    ``selection_mode`` as the page did; the chart event is returned), with ``theme=None``
    unless given: the figure's own house template (core.present.figures), so the page shows what
    the PNG/SVG exports and the report show. PNG and
    SVG are rendered only when clicked (kaleido), stamped with ``provenance`` (or
    ``stamp``) plus this view's permalink. ``table`` (the figure's numbers) is pinned
    with it and exported with the report; draw it with :func:`show_table` for its own
    CSV / LaTeX buttons. Without a browser the PNG/SVG buttons are disabled and say
    what to install.
    """
    from core.present import export

    event = st.plotly_chart(fig, key=key, **{"theme": None, **chart_kwargs})
    full = export_stamp(provenance, stamp)
    problem = export.static_export_problem()
    box = st.container(horizontal=True, gap="small", key=f"{key}__exports")
    for fmt, render, mime in (("PNG", export.figure_png, "image/png"), ("SVG", export.figure_svg, "image/svg+xml")):
        box.download_button(fmt, data=lambda r=render: r(fig, full), file_name=f"{key}.{fmt.lower()}", mime=mime,
                            key=f"{key}__{fmt.lower()}", on_click="ignore", icon=":material/download:",
                            type="tertiary", disabled=problem is not None,
                            help=problem or f"{fmt} of this figure, provenance stamp under the plot and in the file.")
    pinned = any(p.key == key for p in st.session_state.get(PINS, []))
    box.button("Update pin" if pinned else "Pin to report", key=f"{key}__pin", type="tertiary",
               icon=":material/push_pin:", on_click=_pin,
               args=({"fig": fig, "key": key, "stamp": full, "caption": caption, "title": title,
                      "paper_ref": paper_ref, "table": table, "table_caption": table_caption,
                      "provenance": provenance, "url": current_permalink()},),
               help="Add this figure (as shown now) to the Report & presentation page.")
    return event


def show_table(df: Any, key: str, *, provenance: Any = None, stamp: str | None = None, caption: str = "",
               **dataframe_kwargs: Any) -> Any:
    """``st.dataframe(df, **dataframe_kwargs)`` with CSV and LaTeX downloads (stamped) under it.

    ``key`` names the download buttons; it is also the dataframe's key when the page
    makes rows selectable (``on_select``). Returns what ``st.dataframe`` returns.
    """
    if "on_select" in dataframe_kwargs:
        dataframe_kwargs.setdefault("key", key)
    out = st.dataframe(df, **dataframe_kwargs)
    box = st.container(horizontal=True, gap="small", key=f"{key}__table_exports")
    shown = df.reset_index(drop=True) if dataframe_kwargs.get("hide_index") else df  # export what is shown
    _table_downloads(box, shown, key, export_stamp(provenance, stamp), caption)
    return out


def presentation_toggle() -> bool:
    """Large fonts and thick lines on every figure (for projectors)."""
    return st.sidebar.toggle("Presentation mode", key="presentation",
                             help="Large fonts and thick lines on every figure, for lab meetings.")


def sidebar(*, layer: bool = True, cls: bool = False, compare: bool = True,
            task_kinds: Sequence[str] | None = None, default_model: str = "demo:finetuned",
            default_compare: str = "demo:pretrained", default_task: str | None = None) -> Selection:
    """Common controls (model, compare model, task, layer, class) kept in session state and the URL."""
    route_through_app(sys._getframe(1).f_globals.get("__file__", ""))
    _init_from_url()
    _apply_pending()
    if _needs_demo():
        ensure_demo()
    models = service.models()
    tasks = {k: t for k, t in service.tasks().items() if not task_kinds or t.kind in task_kinds}
    if default_model in models and "sel_model" not in st.session_state:
        st.session_state["sel_model"] = default_model
    model = _pick("Model", "model", list(models), lambda m: models.get(m, m))
    cmp_model = None
    if compare:
        on = st.sidebar.toggle("Compare with a second model", value=bool(st.session_state.get("sel_compare")),
                               key="w_compare_on")
        if on:
            if "sel_compare" not in st.session_state or not st.session_state["sel_compare"]:
                st.session_state["sel_compare"] = default_compare
            cmp_model = _pick("Compare with", "compare", [m for m in models if m != model], lambda m: models.get(m, m))
        else:
            st.session_state["sel_compare"] = ""
    if default_task and default_task in tasks and st.session_state.get("sel_task") not in tasks:
        st.session_state["sel_task"] = default_task
    task_id = _pick("Task / data", "task", list(tasks), lambda t: tasks[t].title)
    chosen_layer = ""
    if layer:
        defaults = set(service.layers_of(model))
        chosen_layer = _pick("Layer", "layer", service.layer_choices(model),
                             lambda l: l if l in defaults else f"{l} (module)",
                             help="The model's default layers first, then every other module path "
                                  "(type to search, e.g. layer3.1.conv2 or blocks.5)")
    c = 0
    if cls:
        names = service.load_set(tasks[task_id].test).class_names
        c = int(_pick("Class", "cls", [str(i) for i in range(len(names))], lambda i: names[int(i)]))
    for k, v in (("model", model), ("compare", cmp_model or ""), ("task", task_id), ("layer", chosen_layer),
                 ("cls", str(c) if cls else "")):
        if v:
            st.query_params[k] = v
        elif k in st.query_params:
            del st.query_params[k]
    presentation_toggle()
    data_picker()
    backend_picker()
    _demo_button()
    return Selection(model, task_id, chosen_layer, cmp_model, c)


def model_title(model_id: str) -> str:
    """A model's full title ('Demo net, fine-tuned (all layers)'); legends use service.model_label."""
    return service.models().get(model_id, model_id)


def _freeze_imports() -> None:
    """Keep what the server imported (streamlit, torch, plotly, pandas, core: ~420k objects)
    out of the garbage collector's full collections. They live as long as the process, and
    a full collection walks every tracked object: ~115 ms each on the 2-core machine,
    several per page visit (bench/pages_warm.py). Runs once, when pages first import this
    module; objects made later (models, figures, caches) are collected as usual."""
    import gc

    import pandas  # noqa: F401  (the pages' own imports, frozen with the rest)
    from core.present import export
    from core.present import figures
    from core.service import probe
    from core.present import report

    gc.freeze()


_freeze_imports()
