"""What leaves the engine: plotly figures (one builder per paper figure), static export
(PNG/SVG/PDF/CSV with provenance) and the lab-meeting report (HTML, slides, PDF).

- :mod:`.figures` — figure builders; they take numbers, never compute them
- :mod:`.export` — static files and their provenance records (kaleido + Chromium)
- :mod:`.report` — the standard report: findings, figures, slides
"""
