"""Filterscope: navigation only. Each page is a thin file under pages/."""
import streamlit as st

st.set_page_config(page_title="Filterscope", page_icon="🔬", layout="wide")

PAGES = {
    "Results": [
        st.Page("pages/overview.py", title="Overview", icon="🏠", url_path="overview", default=True),
        st.Page("pages/selectivity.py", title="Selectivity", icon="📉", url_path="selectivity"),
        st.Page("pages/precision_recall.py", title="Precision-recall", icon="🎯", url_path="precision-recall"),
        st.Page("pages/filters_needed.py", title="Filters needed", icon="🔢", url_path="filters-needed"),
        st.Page("pages/overlap.py", title="Overlap", icon="🧩", url_path="overlap"),
        st.Page("pages/sparsity_ablations.py", title="Sparsity & ablations", icon="✂️", url_path="ablations"),
        st.Page("pages/training_dynamics.py", title="Training dynamics", icon="⏱️", url_path="training"),
    ],
    "Explore": [
        st.Page("pages/probe.py", title="Probe your images", icon="🔍", url_path="probe"),
    ],
}

st.navigation(PAGES, position="sidebar").run()
