"""Static exports (core.present.export): PNG / SVG / PDF figures and CSV / LaTeX tables, each stamped.

The files are checked as files (Pillow opens the PNG, the SVG parses as XML, pypdf
reads the PDF, pandas reads the CSV back), the stamp must be in them, and table
numbers must equal what core.service computed (not what the exporter was given
back). Figure exports need Chromium; they are skipped, with the reason, only when no
browser is installed.
"""
from __future__ import annotations

import io
import json
import re
import threading
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from core.present import export
from core.present import figures
from core.errors import DataMissingError, InputError
from core.service import Provenance

needs_browser = pytest.mark.skipif(export.find_browser() is None,
                                   reason="no Chromium for kaleido: make chromium / apt-get install chromium")
SVG = "{http://www.w3.org/2000/svg}"
MODEL, TASK = "demo:finetuned", "demo-detgt"


def _prov() -> Provenance:
    return Provenance(model={"name": "demo:finetuned", "weights_sha256": "0123456789abcdef" * 4},
                      dataset="demo:target-test-detgt", layer="conv5", params={"pooling": "spatial max"},
                      code_version="0.1.0@abc1234", computed="2026-12-01 10:00")


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


def _line_fig(stamp: str = "", n: int = 5) -> go.Figure:
    fig = go.Figure(go.Scatter(x=list(range(n)), y=[v * v for v in range(n)], mode="lines", name="squares"))
    return figures.apply_style(fig, title=f"{n} squares", caption="Reproduces nothing in particular.", stamp=stamp)


# --------------------------------------------------------------------------- stamps
def test_stamp_names_model_hash_data_layer_params_date_code_and_url():
    url = export.permalink("precision-recall", {"model": MODEL, "compare": "", "task": TASK, "layer": "conv5",
                                                "cls": 3})
    assert url == "http://127.0.0.1:8501/precision-recall?model=demo:finetuned&task=demo-detgt&layer=conv5&cls=3"
    assert export.permalink("", {"layer": "conv5"}, "http://h:8501/overlap/") == "http://h:8501/overlap?layer=conv5"
    assert export.stamp_text(_prov(), url) == (
        "model demo:finetuned (weights 0123456789ab) · data demo:target-test-detgt · layer conv5 · "
        "pooling=spatial max · computed 2026-12-01 10:00 · code 0.1.0@abc1234 · " + url)


def test_stamp_of_several_models_lists_each_once():
    other = Provenance(model={"name": "demo:pretrained", "weights_sha256": "f" * 64}, dataset="demo:target-test-detgt",
                       layer="conv5", params={"pooling": "spatial max"}, code_version="0.1.0@abc1234",
                       computed="2026-12-01 10:00")
    text = export.stamp_text([_prov(), other])
    assert text.startswith("models demo:finetuned (weights 0123456789ab), demo:pretrained (weights ffffffffffff) · "
                           "data demo:target-test-detgt · layer conv5 ·")
    assert text.count("demo:target-test-detgt") == 1


# --------------------------------------------------------------------------- figures
@needs_browser
def test_png_opens_has_the_size_and_carries_the_stamp():
    from PIL import Image

    stamp = export.stamp_text(_prov(), "http://127.0.0.1:8501/selectivity?layer=conv5")
    fig = _line_fig()
    png = export.figure_png(fig, stamp, width=640, scale=2)
    img = Image.open(io.BytesIO(png))
    img.load()
    drawn = export.stamped(fig, stamp)
    assert img.format == "PNG"
    assert img.size == (1280, 2 * drawn.layout.height)
    assert img.text["Description"] == stamp
    assert img.text["Title"] == "5 squares"
    note = next(a for a in drawn.layout.annotations if a.name == "fs-stamp")  # visible under the plot
    assert _squash(note.text.replace("<br>", "")) == _squash(stamp)
    assert not fig.layout.meta.get("stamp")  # the page's figure is left as it was


@needs_browser
def test_svg_parses_and_shows_the_stamp_in_the_drawing_and_metadata():
    stamp = export.stamp_text(_prov(), "http://127.0.0.1:8501/overlap?model=demo:finetuned&layer=conv5")
    svg = export.figure_svg(_line_fig(), stamp, width=700)
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg" and root.get("width") == "700"
    assert root.find(f"{SVG}desc").text == stamp
    meta = json.loads(root.find(f"{SVG}metadata").text)
    assert meta["stamp"] == stamp and meta["title"] == "5 squares"
    drawn = "".join("".join(t.itertext()) for t in root.iter(f"{SVG}text"))
    assert _squash(stamp) in _squash(drawn)  # wrapped over several lines, but all there, in order


@needs_browser
def test_pdf_is_one_page_with_the_stamp_in_its_info():
    from pypdf import PdfReader

    stamp = export.stamp_text(_prov())
    pdf = export.figure_pdf(_line_fig(), stamp)
    assert pdf.startswith(b"%PDF")
    reader = PdfReader(io.BytesIO(pdf))
    assert len(reader.pages) == 1
    assert reader.metadata.subject == stamp
    assert "pooling=spatial max" in reader.pages[0].extract_text()  # drawn, not only in the info


@needs_browser
def test_renders_from_several_threads_come_back_to_the_right_caller():
    sizes = {n: 300 + 40 * n for n in range(6)}
    out: dict[int, tuple[int, int]] = {}

    def work(n: int) -> None:
        from PIL import Image

        img = Image.open(io.BytesIO(export.figure_png(_line_fig(f"stamp {n}", n + 2), None, width=sizes[n],
                                                      scale=1)))
        out[n] = (img.size[0], img.text["Description"])

    threads = [threading.Thread(target=work, args=(n,)) for n in sizes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert out == {n: (sizes[n], f"stamp {n}") for n in sizes}


def test_without_a_browser_figures_fail_clearly_and_tables_still_work(monkeypatch):
    export.shutdown()
    monkeypatch.setattr(export, "find_browser", lambda: None)
    assert "install chromium" in export.static_export_problem()
    for fn in (export.figure_png, export.figure_svg, export.figure_pdf):
        with pytest.raises(DataMissingError, match="apt-get install chromium"):
            fn(_line_fig(), "s")
    assert export.table_csv(pd.DataFrame({"a": [1]}), "s").endswith(b"a\n1\n")


# --------------------------------------------------------------------------- tables
@pytest.fixture(scope="module")
def filter_ap(demo_env):
    from core import service

    return service.filter_ap(MODEL, TASK, "conv5")


def _comment_lines(text: str) -> int:
    return next(i for i, line in enumerate(text.splitlines()) if not line.startswith("# "))


def test_csv_reads_back_to_the_service_numbers_after_the_stamp(filter_ap):
    from core import service

    stamp = export.stamp_text(filter_ap.provenance, "http://127.0.0.1:8501/precision-recall")
    df = pd.DataFrame({"class": list(filter_ap.class_names), "best filter": filter_ap.ap.argmax(1),
                       "best AP": filter_ap.ap.max(1), "random AP": filter_ap.prevalence})
    text = export.table_csv(df, stamp, caption="Best single filter per class").decode("utf-8")
    n = _comment_lines(text)
    assert text.splitlines()[:2] == ["# Best single filter per class", f"# provenance: {stamp}"]
    back = pd.read_csv(io.StringIO(text), skiprows=n)
    ref = service.filter_ap(MODEL, TASK, "conv5")  # the service's own numbers, read again
    assert list(back.columns) == ["class", "best filter", "best AP", "random AP"]
    assert list(back["class"]) == list(ref.class_names)
    np.testing.assert_array_equal(back["best filter"], ref.ap.argmax(1))
    np.testing.assert_array_equal(back["best AP"], ref.ap.max(1))  # full precision: exactly equal
    np.testing.assert_array_equal(back["random AP"], ref.prevalence)


def test_csv_keeps_a_named_index():
    df = pd.DataFrame({"mAP": [1.5, 2.25]}, index=pd.Index(["conv1", "fc7"], name="layer"))
    text = export.table_csv(df, "s").decode()
    back = pd.read_csv(io.StringIO(text), skiprows=_comment_lines(text), index_col="layer")
    assert back.to_dict() == {"mAP": {"conv1": 1.5, "fc7": 2.25}}


def test_latex_escapes_special_characters():
    assert export.latex_escape("a_b 50% & c#1 $x$ {y} ~^\\") == \
        r"a\_b 50\% \& c\#1 \$x\$ \{y\} \textasciitilde{}\textasciicircum{}\textbackslash{}"
    assert export.latex_escape("90 ± 2 · k ≥ 5") == r"90 $\pm$ 2 $\cdot$ k $\geq$ 5"


def _latex_rows(tex: str) -> list[list[str]]:
    body = tex.split("\\midrule\n", 1)[1].split("\\bottomrule", 1)[0]
    return [[c.strip() for c in line.removesuffix(r" \\").split(" & ")] for line in body.strip().splitlines()]


def test_latex_is_booktabs_with_the_service_numbers(filter_ap):
    from core import service

    stamp = export.stamp_text(filter_ap.provenance, "http://127.0.0.1:8501/precision-recall?task=demo-detgt&cls=0")
    df = pd.DataFrame({"best_AP": filter_ap.ap.max(1), "filter #": filter_ap.ap.argmax(1)},
                      index=pd.Index(list(filter_ap.class_names), name="class_name"))
    tex = export.table_latex(df, "Best filter per class (50% & more)", stamp, label="tab:best")
    lines = tex.splitlines()
    rules = [lines.index(r) for r in (r"\toprule", r"\midrule", r"\bottomrule")]
    assert rules == sorted(rules)
    assert r"\begin{tabular}{lrr}" in lines
    assert r"\caption{Best filter per class (50\% \& more)}" in lines and r"\label{tab:best}" in lines
    assert lines[rules[0] + 1] == r"class\_name & best\_AP & filter \# \\"
    ref = service.filter_ap(MODEL, TASK, "conv5")
    rows = _latex_rows(tex)
    assert [r[0] for r in rows] == [export.latex_escape(c) for c in ref.class_names]
    np.testing.assert_array_equal([float(r[1]) for r in rows], ref.ap.max(1))
    np.testing.assert_array_equal([int(r[2]) for r in rows], ref.ap.argmax(1))
    assert f"\\footnotesize {export.latex_escape(stamp)}" in tex  # printed under the table
    assert "demo-detgt\\&cls=0" in tex  # the permalink's & is escaped
    assert tex.splitlines()[0] == f"% provenance: {stamp}"


def test_latex_multiindex_and_float_format():
    df = pd.DataFrame([[1, 2], [3, 4]], columns=["fox", "owl"],
                      index=pd.MultiIndex.from_tuples([("fine-tuned", "50%"), ("fine-tuned", "90%")],
                                                      names=["model", "perf."]))
    rows = _latex_rows(export.table_latex(df, "Table 5", "s"))
    assert rows == [["fine-tuned", r"50\%", "1", "2"], ["fine-tuned", r"90\%", "3", "4"]]
    tex = export.table_latex(pd.DataFrame({"x": [0.123456, np.nan]}), "c", "s", float_format="{:.2f}")
    assert [r for r in _latex_rows(tex)] == [["0.12"], ["--"]]


def test_tables_need_a_dataframe():
    with pytest.raises(InputError, match="DataFrame"):
        export.table_csv([[1, 2]], "s")
