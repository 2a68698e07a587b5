"""Report & presentation: pinned figures, the paper's standard figures, downloads, presentation mode."""
import streamlit as st
import streamlit.components.v1 as components

from core.present import export
from core.present import report
from ui.common import PINS, computing, current_permalink, guard, sidebar

sel = sidebar(cls=True, default_task="demo-detgt")
pins: list = st.session_state.setdefault(PINS, [])
SLIDE = "rp_slide"

# Presentation: no sidebar or header, large type; ←/→ click the Previous / Next buttons.
PRESENT_CSS = """<style>
section[data-testid="stSidebar"], [data-testid="stSidebarCollapsedControl"], header[data-testid="stHeader"],
[data-testid="stSidebarNav"] {display: none !important;}
.block-container {padding-top: 1rem !important; max-width: 100% !important;}
.block-container p, .block-container li {font-size: 1.5rem !important;}
</style>"""
KEYS_JS = """<script>
const doc = window.parent.document;
if (!doc.fsKeys) {
  doc.fsKeys = true;
  doc.addEventListener("keydown", (e) => {
    if (["INPUT", "TEXTAREA"].includes(e.target.tagName)) return;
    const label = {ArrowRight: "Next", ArrowLeft: "Previous", Escape: "Exit presentation"}[e.key];
    if (!label) return;
    const btn = [...doc.querySelectorAll("button")].find((b) => b.innerText.trim().endsWith(label));
    if (btn && !btn.disabled) { e.preventDefault(); btn.click(); }
  });
}
</script>"""


def _move(item: int, step: int) -> None:
    j = item + step
    if 0 <= j < len(pins):
        pins[item], pins[j] = pins[j], pins[item]


def _remove(item: int) -> None:
    pins.pop(item)
    st.session_state[SLIDE] = min(st.session_state.get(SLIDE, 0), max(0, len(pins) - 1))


def _step(step: int) -> None:
    st.session_state[SLIDE] = min(max(0, st.session_state.get(SLIDE, 0) + step), max(0, len(pins) - 1))


def _present(on: bool) -> None:
    st.session_state["rp_present"] = on
    st.session_state[SLIDE] = 0


def _add_standard(items: list) -> None:
    keys = {it.key for it in items}
    pins[:] = [p for p in pins if p.key not in keys] + list(items)


def presentation() -> None:
    """One pinned figure per screen, Previous / Next (or ←/→), large fonts, no sidebar."""
    st.markdown(PRESENT_CSS, unsafe_allow_html=True)
    components.html(KEYS_JS, height=0)
    i = min(st.session_state.get(SLIDE, 0), len(pins) - 1)
    item = pins[i]
    st.plotly_chart(item.figure(presentation=True), key="rp_slide_chart", theme=None)
    st.markdown(f"**{i + 1} / {len(pins)} · {item.paper_ref}** — {item.caption}")
    prev, counter, nxt, done = st.columns([2, 3, 2, 2])
    prev.button("Previous", key="rp_prev", icon=":material/arrow_back:", on_click=_step, args=(-1,),
                disabled=i == 0, width="stretch")
    counter.progress((i + 1) / len(pins), text=f"figure {i + 1} of {len(pins)} · ←/→ to move, Esc to exit")
    nxt.button("Next", key="rp_next", icon=":material/arrow_forward:", on_click=_step, args=(1,),
               disabled=i == len(pins) - 1, width="stretch")
    done.button("Exit presentation", key="rp_exit", icon=":material/close:", on_click=_present, args=(False,),
                width="stretch")


def pinned_list() -> None:
    st.header(f"Pinned figures ({len(pins)})")
    if not pins:
        st.info("Nothing pinned yet: use **Pin to report** under any chart on the other pages, or add the "
                "standard figures below.")
    for i, item in enumerate(pins):
        text, up, down, drop = st.columns([12, 1, 1, 1], vertical_alignment="center")
        text.markdown(f"**{i + 1}. {item.title}** · {item.paper_ref}  \n{item.caption}")
        text.caption(item.stamp)
        up.button("", key=f"rp_up_{i}", icon=":material/arrow_upward:", on_click=_move, args=(i, -1),
                  disabled=i == 0, help="Move up")
        down.button("", key=f"rp_down_{i}", icon=":material/arrow_downward:", on_click=_move, args=(i, 1),
                    disabled=i == len(pins) - 1, help="Move down")
        drop.button("", key=f"rp_del_{i}", icon=":material/delete:", on_click=_remove, args=(i,), help="Remove")
    if pins:
        st.button("Remove all", key="rp_clear", on_click=lambda: pins.clear())


def standard() -> None:
    st.header("The paper's standard figures")
    st.caption(f"For the sidebar's selection: {sel.model}" + (f" vs. {sel.compare}" if sel.compare else "")
               + f" · {sel.task} · {sel.layer} · class {sel.cls}. Analyses not cached yet are computed now.")
    keys = st.multiselect("Figures", list(report.STANDARD), default=list(report.STANDARD), key="rp_std_keys",
                          format_func=lambda k: report.STANDARD[k][1])
    if st.button("Add the standard figures", key="rp_add_std", icon=":material/library_add:", disabled=not keys):
        base = current_permalink().split("?", 1)[0].rsplit("/", 1)[0]
        req = report.ReportRequest(model=sel.model, compare=sel.compare, task=sel.task, layer=sel.layer, cls=sel.cls,
                                   base_url=base or export.DEFAULT_BASE_URL)
        skipped: list[str] = []
        added = False
        with guard("the standard figures"):
            _add_standard(computing("Gathering the standard figures…", report.standard_items, req, keys,
                                    on_skip=lambda k, why: skipped.append(why)))
            added = True
        if added:
            st.session_state["rp_skipped"] = skipped
            st.rerun()  # redraw the pinned list above with the new figures
    for why in st.session_state.pop("rp_skipped", []):
        st.warning(f"Skipped {why}")


def downloads() -> None:
    st.header("Download the report")
    title = st.text_input("Report title", "Filterscope report", key="rp_title")
    problem = export.static_export_problem()
    items = list(pins)
    row = st.container(horizontal=True)
    row.download_button("HTML report (interactive, offline)", data=lambda: report.report_html(items, title),
                        file_name="filterscope-report.html", mime="text/html", key="rp_dl_html", on_click="ignore",
                        icon=":material/download:", disabled=not items)
    row.download_button("Slides (1920×1080 PNG, zip)", data=lambda: report.slides_zip(items),
                        file_name="filterscope-slides.zip", mime="application/zip", key="rp_dl_zip",
                        on_click="ignore", icon=":material/download:", disabled=not items or problem is not None,
                        help=problem)
    row.download_button("PDF (one page per figure)", data=lambda: report.report_pdf(items, title),
                        file_name="filterscope-report.pdf", mime="application/pdf", key="rp_dl_pdf",
                        on_click="ignore", icon=":material/download:", disabled=not items or problem is not None,
                        help=problem)
    if problem:
        st.caption(problem)
    st.caption("Without the browser: `python -m core report --model demo:finetuned --compare demo:pretrained "
               "--task demo-detgt --out DIR` writes the same report (standard figures).")


if st.session_state.get("rp_present") and pins:
    presentation()
else:
    st.title("Report & presentation")
    st.markdown("Collect figures for a lab meeting: **pin** charts from any page (the button under each chart), "
                "add the paper's standard figures, reorder them, then download one self-contained HTML file, a "
                "set of 1920×1080 slides or a PDF, or present them here: one figure per screen, large fonts, "
                "←/→ to move. Every figure carries its provenance stamp and permalink.")
    st.button("Start presentation", key="rp_start", icon=":material/slideshow:", type="primary",
              on_click=_present, args=(True,), disabled=not pins)
    pinned_list()
    standard()
    downloads()
