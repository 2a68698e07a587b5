"""Shared page furniture: demo bootstrap, sidebar selection synced to the URL, guards, progress."""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import streamlit as st

from core import demo, service
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


def ensure_demo() -> None:
    """Build the embedded demo on first use, with visible progress (stops the page until done)."""
    if demo.is_built():
        return
    with st.status("Building the embedded demo (first run only, a few minutes)…", expanded=True) as status:
        st.write("Generating scenes, pretraining, fine-tuning, extracting features, caching analyses. "
                 "Other sessions wait for the same build instead of starting their own.")
        bar = st.progress(0.0)
        demo.build(progress=progress_callback(bar))
        service.warm_demo(progress=progress_callback(bar))
        status.update(label="Demo built", state="complete")


@contextlib.contextmanager
def guard(what: str = "this view") -> Iterator[None]:
    """Turn errors into a clear message instead of a traceback."""
    try:
        yield
    except FilterscopeError as exc:
        st.error(f"Cannot show {what}: {exc}")
    except Exception as exc:  # noqa: BLE001 - a page must never show a traceback
        log.exception("unexpected error in %s", what)
        st.error(f"Unexpected error while computing {what}: {type(exc).__name__}: {exc}. "
                 "The details are in the server log; other pages keep working.")


def computing(label: str, fn: Callable[..., Any], *args, **kwargs) -> Any:
    """Run ``fn(*args, progress=cb, **kwargs)`` inside a status box with a progress bar."""
    with st.status(label, expanded=False) as status:
        bar = st.progress(0.0)
        out = fn(*args, progress=progress_callback(bar), **kwargs)
        status.update(label=label.rstrip("…") + " — done", state="complete")
    return out


def _init_from_url() -> None:
    if st.session_state.get("_sel_init"):
        return
    for k in SEL_KEYS:
        if k in st.query_params:
            st.session_state[f"sel_{k}"] = st.query_params[k]
    st.session_state["_sel_init"] = True


def _pick(label: str, key: str, options: Sequence[str], fmt: Callable[[str], str] = str, help: str | None = None) -> str:
    options = list(options)
    current = st.session_state.get(f"sel_{key}")
    index = options.index(current) if current in options else 0
    value = st.sidebar.selectbox(label, options, index=index, format_func=fmt, key=f"w_{key}", help=help)
    st.session_state[f"sel_{key}"] = value
    return value


def sidebar(*, layer: bool = True, cls: bool = False, compare: bool = True,
            task_kinds: Sequence[str] | None = None, default_model: str = "demo:finetuned",
            default_compare: str = "demo:pretrained", default_task: str | None = None) -> Selection:
    """Common controls (model, compare model, task, layer, class) kept in session state and the URL."""
    ensure_demo()
    _init_from_url()
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
    chosen_layer = _pick("Layer", "layer", service.layers_of(model)) if layer else ""
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
    return Selection(model, task_id, chosen_layer, cmp_model, c)


def model_label(model_id: str) -> str:
    return service.models().get(model_id, model_id)


def short_label(model_id: str) -> str:
    """Short legend name: 'fine-tuned', 'pretrained', 'snapshot 200'…"""
    v = model_id.split(":", 1)[-1]
    return {"finetuned": "fine-tuned", "fc-finetuned": "fc-only fine-tuned"}.get(v, v.replace("-", " "))
