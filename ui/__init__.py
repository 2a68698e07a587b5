"""Streamlit helpers shared by the pages (sidebar, guards, progress, exports). Thin: no analysis here."""
