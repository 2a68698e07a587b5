"""Filterscope: navigation only. Each page is a thin file under pages/."""
import streamlit as st

from ui.common import run_page

st.set_page_config(page_title="Filterscope", page_icon=":material/biotech:", layout="wide")

PAGES = {
    "Results": [
        # The default page is served at / and reserves its url_path, which Streamlit then answers with
        # "Page not found": it gets an unused one, and /overview (permalinks) is a hidden alias.
        st.Page("pages/overview.py", title="Overview", icon=":material/dashboard:", url_path="start", default=True),
        st.Page("pages/overview.py", title="Overview", icon=":material/dashboard:", url_path="overview",
                visibility="hidden"),
        st.Page("pages/selectivity.py", title="Selectivity", icon=":material/stacked_line_chart:", url_path="selectivity"),
        st.Page("pages/precision-recall.py", title="Precision-recall", icon=":material/target:", url_path="precision-recall"),
        st.Page("pages/filters-needed.py", title="Filters needed", icon=":material/format_list_numbered:", url_path="filters-needed"),
        st.Page("pages/overlap.py", title="Overlap", icon=":material/join_inner:", url_path="overlap"),
        st.Page("pages/ablations.py", title="Sparsity & ablations", icon=":material/content_cut:", url_path="ablations"),
        st.Page("pages/training.py", title="Training dynamics", icon=":material/timeline:", url_path="training"),
        st.Page("pages/what-changed.py", title="What changed", icon=":material/compare_arrows:",
                url_path="what-changed"),
    ],
    "Explore": [
        st.Page("pages/probe.py", title="Probe your images", icon=":material/image_search:", url_path="probe"),
        st.Page("pages/detections.py", title="Detections", icon=":material/center_focus_strong:", url_path="detections"),
    ],
    "Present": [
        st.Page("pages/report.py", title="Report & presentation", icon=":material/slideshow:", url_path="report"),
    ],
}

nav = st.navigation(PAGES, position="sidebar")
st.session_state["_via_app"] = True
if goto := st.session_state.pop("_goto", None):  # a deep link that arrived before navigation existed
    st.switch_page(goto, query_params=st.query_params.to_dict())
run_page(nav)
