"""Reports (core.present.report) and ``python -m core report``: the written files, their stamps, and numbers
held against core.service on the tiny demo."""
from __future__ import annotations

import html
import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.present import export
from core import service
from core.present import report
from core.errors import InputError

MODEL, PRE, TASK = "demo:finetuned", "demo:pretrained", "demo-detgt"
needs_browser = pytest.mark.skipif(export.find_browser() is None,
                                   reason="no Chromium for kaleido: make chromium / apt-get install chromium")
pytestmark = pytest.mark.usefixtures("demo_env")
REQ = report.ReportRequest(model=MODEL, compare=PRE, task=TASK, layer="conv5", cls=1, ablation_seeds=(0,))


@pytest.fixture(scope="module")
def items(demo_env):
    return report.standard_items(REQ, ["pr", "needed", "sparsity", "layers"])


@pytest.fixture(scope="module")
def written(items, tmp_path_factory) -> report.ReportFiles:
    return report.write_report(items, tmp_path_factory.mktemp("report"), title="Lab meeting")


def _read_csv(path: Path) -> pd.DataFrame:
    text = path.read_text(encoding="utf-8")
    n = next(i for i, line in enumerate(text.splitlines()) if not line.startswith("# "))
    return pd.read_csv(io.StringIO(text), skiprows=n)


def _decode(obj):
    import base64

    if isinstance(obj, dict):
        if set(obj) >= {"dtype", "bdata"}:
            return np.frombuffer(base64.b64decode(obj["bdata"]), dtype=obj["dtype"])
        return {k: _decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v) for v in obj]
    return obj


def _html_figures(page: str) -> dict[str, list]:
    """The data argument of every ``Plotly.newPlot("plot-NN", [...], ...)`` call in the page."""
    out = {}
    for m in re.finditer(r'Plotly\.newPlot\(\s*"(plot-\d+)",\s*', page):
        data, _ = json.JSONDecoder().raw_decode(page, m.end())
        out[m.group(1)] = _decode(data)
    return out


# --------------------------------------------------------------------------- items
def test_standard_items_carry_captions_stamps_and_the_service_numbers(items):
    from core import service

    assert [it.key for it in items] == ["pr", "needed", "sparsity", "layers"]
    for it in items:
        assert it.caption.startswith("Reproduces ") and "Agrawal, Girshick & Malik" in it.caption
        assert it.paper_ref and it.table is not None
        sha = service.model_info(MODEL)["weights_sha256"][:12]
        assert f"weights {sha}" in it.stamp and "code " in it.stamp and "http://127.0.0.1:8501/" in it.stamp
    pr, needed, sparsity, layers = items
    ap = service.filter_ap(MODEL, TASK, "conv5").ap[1]
    top = np.argsort(-ap, kind="stable")[:5]
    mine = pr.table[pr.table["model"] == "fine-tuned"]
    np.testing.assert_array_equal(mine["filter"], top)
    np.testing.assert_allclose(mine["AP"], ap[top].round(3))
    assert "cls=1" in pr.url and "precision-recall" in pr.url
    for m, label in ((MODEL, "fine-tuned"), (PRE, "pretrained")):
        fn = service.filters_needed(m, TASK, "conv5")
        np.testing.assert_array_equal(needed.table.loc[(label, "50%")].to_numpy(), fn.k50)
        np.testing.assert_array_equal(needed.table.loc[(label, "90%")].to_numpy(), fn.k90)
        rows = service.sparsity(m, TASK)["table"]
        np.testing.assert_allclose(sparsity.table.loc[label, [r["layer"] for r in rows]],
                                   np.round([r["mean"] for r in rows], 1))
        np.testing.assert_allclose(layers.table[label],
                                   [round(100 * service.layer_map(m, TASK, l)["map"], 1) for l in layers.table.index])


def test_selectivity_overlap_and_ablation_items_hold_the_service_numbers():
    from core import service

    req = report.ReportRequest(model=MODEL, compare=None, task=TASK, layer="conv5", ablation_seeds=(0,))
    sel, ov, abl = report.standard_items(req, ["sel", "overlap", "ablation"])
    for layer in service.layers_of(MODEL):
        assert sel.table.loc[layer, "fine-tuned"] == round(float(service.selectivity(MODEL, TASK, layer).aue.mean()), 3)
    assert (sel.paper_ref, ov.paper_ref, abl.paper_ref) == ("Fig. 1", "Fig. 5", "Tables 7-8")
    width = service.filters_needed(MODEL, TASK, "conv5").ranking.ranking.shape[1]
    o = service.overlap(MODEL, TASK, "conv5", report.overlap_k(width))
    assert list(ov.table.index) == [o.class_names[i] for i in o.order]
    np.testing.assert_allclose(ov.table.to_numpy(), o.matrix[np.ix_(o.order, o.order)].round(3))
    for layer in ("conv5", "fc7"):
        for r in service.ablation(MODEL, TASK, layer, seeds=(0,))["summary"]:
            row = abl.table[(abl.table["layer"] == layer) & (abl.table["ablation"] == r["ablation"])]
            assert row["mAP (%)"].item() == round(100 * r["mean"], 1)
    assert "layer=conv5" in sel.url and "/overlap?" in ov.url and "/ablations?" in abl.url


def test_item_figure_round_trips_and_switches_to_presentation(items):
    it = items[-1]
    screen, big = it.figure(), it.figure(presentation=True)
    assert screen.layout.title.text == it.title == "Linear-classifier mAP by layer"
    assert (screen.layout.font.size, big.layout.font.size) == (16, 22)
    stamp = next(a for a in big.layout.annotations if a.name == "fs-stamp").text
    assert re.sub(r"\s|<br>", "", stamp) == re.sub(r"\s", "", it.stamp)


def test_selectivity_is_skipped_on_multi_label_tasks_with_the_reason():
    skipped = []
    req = report.ReportRequest(model=MODEL, compare=None, task="demo-cls")
    assert report.standard_items(req, ["sel"], on_skip=lambda k, why: skipped.append((k, why))) == []
    assert skipped and skipped[0][0] == "sel" and "multi-label" in skipped[0][1]


def test_bad_requests_say_what_is_wrong():
    with pytest.raises(InputError, match="unknown report figures.*choose from findings, sel"):
        report.standard_items(REQ, ["fig9"])
    with pytest.raises(InputError, match="layer 'conv9'"):
        report.standard_items(report.ReportRequest(layer="conv9"), ["pr"])
    with pytest.raises(InputError, match="class 99"):
        report.standard_items(report.ReportRequest(cls=99), ["pr"])
    with pytest.raises(InputError, match="empty"):
        report.write_report([], "/nonexistent/never-written")


# --------------------------------------------------------------------------- files
def test_html_is_one_offline_file_with_stamps_and_figure_data(items, written):
    from core import service

    page = written.html.read_text(encoding="utf-8")
    assert written.html.parent.glob("*.html") and len(list(written.html.parent.glob("*.html"))) == 1
    assert not re.search(r"<script[^>]*\bsrc=", page)  # plotly.js inline, nothing fetched
    assert "<link" not in page and "cdn." not in page.split("</script>", 1)[1]
    assert page.count("Plotly.newPlot(") == len(items)
    for it in items:
        assert html.escape(it.stamp) in page and html.escape(it.caption) in page
    figs = _html_figures(page)
    layers = {t["name"]: t for t in figs["plot-04"]}
    ref = service.layer_map_table([MODEL, PRE], TASK)
    np.testing.assert_allclose(layers["fine-tuned"]["y"], ref[MODEL].round(1).to_numpy())
    np.testing.assert_allclose(layers["pretrained"]["y"], ref[PRE].round(1).to_numpy())


def test_tables_are_written_as_csv_and_latex_with_the_service_numbers(written):
    from core import service

    names = sorted(p.name for p in written.tables)
    assert names == ["01-pr.csv", "01-pr.tex", "02-needed.csv", "02-needed.tex", "03-sparsity.csv",
                     "03-sparsity.tex", "04-layers.csv", "04-layers.tex"]
    tables = written.html.parent / "tables"
    back = _read_csv(tables / "04-layers.csv").set_index("layer")
    for m, label in ((MODEL, "fine-tuned"), (PRE, "pretrained")):
        np.testing.assert_allclose(back[label], [round(100 * service.layer_map(m, TASK, l)["map"], 1)
                                                 for l in back.index])
    assert (tables / "04-layers.csv").read_text().startswith("# Per-layer mAP (%)\n# provenance: model")
    tex = (tables / "02-needed.tex").read_text()
    assert all(rule in tex for rule in (r"\toprule", r"\midrule", r"\bottomrule"))
    k90 = service.filters_needed(PRE, TASK, "conv5").k90
    row = next(l for l in tex.splitlines() if l.startswith(r"pretrained & 90\%"))
    assert [int(v) for v in row.removesuffix(r" \\").split(" & ")[2:]] == list(k90)


@needs_browser
def test_slides_are_numbered_1920x1080_pngs_with_stamps(items, written):
    from PIL import Image

    assert [p.name for p in written.slides] == ["01-pr.png", "02-needed.png", "03-sparsity.png", "04-layers.png"]
    for path, it in zip(written.slides, items):
        img = Image.open(path)
        assert img.format == "PNG" and img.size == (1920, 1080)
        assert img.text["Description"] == it.stamp


@needs_browser
def test_pdf_has_one_page_per_figure(items, written):
    from pypdf import PdfReader

    reader = PdfReader(written.pdf)
    assert len(reader.pages) == len(items)
    assert reader.metadata.title == "Lab meeting"
    w, h = float(reader.pages[0].mediabox.width), float(reader.pages[0].mediabox.height)
    assert abs(w / h - 16 / 9) < 0.01
    assert "Linear-classifier mAP by layer" in reader.pages[3].extract_text()


def test_index_records_the_provenance_of_everything(items, written):
    from core import service

    index = json.loads(written.index.read_text(encoding="utf-8"))
    assert index["title"] == "Lab meeting" and index["html"] == "report.html"
    assert [e["key"] for e in index["items"]] == [it.key for it in items]
    for e, it in zip(index["items"], items):
        assert e["stamp"] == it.stamp and e["caption"] == it.caption
        shas = {p["model"]["weights_sha256"] for p in e["provenance"]}
        assert service.model_info(MODEL)["weights_sha256"] in shas
        assert e["files"]["csv"].startswith("tables/")
        if export.find_browser():
            assert e["files"]["slide"] == f"slides/{Path(e['files']['csv']).stem}.png"


# --------------------------------------------------------------------------- CLI
def test_cli_writes_the_report(tmp_path, capsys):
    from core import service
    from core.__main__ import main

    out = tmp_path / "cli"
    rc = main(["report", "--model", MODEL, "--task", TASK, "--figures", "needed", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert (out / "report.html").is_file() and (out / "index.json").is_file()
    table = _read_csv(out / "tables" / "01-needed.csv")
    fn = service.filters_needed(MODEL, TASK, "conv5")
    np.testing.assert_array_equal(table[table["perf."] == "50%"].iloc[0, 2:].to_numpy(int), fn.k50)
    if export.find_browser():
        assert (out / "slides" / "01-needed.png").is_file() and (out / "report.pdf").is_file()
    assert "wrote 1 figure(s)" in capsys.readouterr().out


def test_cli_reports_skips_and_bad_input(tmp_path, capsys):
    from core.__main__ import main

    rc = main(["report", "--model", MODEL, "--task", "demo-cls", "--figures", "sel,layers", "--no-static",
               "--out", str(tmp_path / "cls")])
    out = capsys.readouterr().out
    assert rc == 0 and "skipped: Fig. 1 class selectivity needs single-label data" in out
    assert not (tmp_path / "cls" / "slides").exists()
    assert main(["report", "--figures", "nope", "--out", str(tmp_path / "bad")]) == 2
    assert "unknown report figures ['nope']" in capsys.readouterr().err


def test_cli_accepts_demo_and_lists_valid_ids(tmp_path, capsys):
    from core.__main__ import main

    rc = main(["report", "--model", "demo", "--figures", "layers", "--no-static", "--out", str(tmp_path / "d")])
    assert rc == 0, capsys.readouterr().err
    index = json.loads((tmp_path / "d" / "index.json").read_text())
    assert index["items"][0]["provenance"][0]["model"]["name"] == MODEL  # demo = the fine-tuned demo net
    assert main(["report", "--model", "demo:nope", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "unknown model id 'demo:nope'" in err and "demo, demo:pretrained" in err and "demo:finetuned" in err


def test_findings_item_and_cli_hold_the_rules_on_the_service_numbers(tmp_path, capsys):
    """Each row's verdict recomputed here from the service's own numbers with the written rule."""
    from core import service
    from core.__main__ import main

    out = tmp_path / "findings.json"
    assert main(["findings", "--model", "demo", "--json", str(out)]) == 0, capsys.readouterr().err
    doc = json.loads(out.read_text())
    rows = {r["id"]: r for r in doc["findings"]}
    assert list(rows) == list(__import__("core.analysis.findings", fromlist=["x"]).FINDING_IDS)
    assert all({"id", "paper", "measured", "holds", "why"} <= set(r) for r in rows.values())
    assert doc["provenance"]["models"][MODEL]["weights_sha256"] == service.model_info(MODEL)["weights_sha256"]
    aue = {m: {l: float(service.selectivity(m, TASK, l).aue.mean()) for l in service.layers_of(m)}
           for m in (MODEL, PRE)}
    assert rows["selectivity_depth"]["holds"] == (aue[MODEL]["fc7"] < aue[MODEL]["conv1"]
                                                  and aue[PRE]["fc7"] < aue[PRE]["conv1"])
    delta = {l: abs(aue[MODEL][l] - aue[PRE][l]) for l in aue[MODEL]}
    assert rows["finetune_moves_fc"]["holds"] == (set(sorted(delta, key=delta.get)[-2:]) == {"fc6", "fc7"})
    fc7 = {m: service.layer_map(m, TASK, "fc7")["map"] for m in (MODEL, "demo:scratch", "demo:fc-finetuned")}
    assert rows["pretrain_beats_scratch"]["holds"] == (fc7[MODEL] > fc7["demo:scratch"])
    assert rows["full_ft_beats_fc_only"]["holds"] == (fc7[MODEL] > fc7["demo:fc-finetuned"])
    sp = {r["layer"]: r["mean"] for r in service.sparsity(MODEL, TASK)["table"]}
    assert rows["sparsity_falls"]["holds"] == (sp["fc7"] < sp["conv1"] and sp["conv5"] < sp["conv1"])
    text = capsys.readouterr().out
    assert service.findings_summary(doc["findings"]) in text
    item = report.standard_items(REQ, ["findings"])[0]
    table = item.table.set_index("id")
    verdict = {True: "holds", False: "does not hold", None: "not measured"}
    assert all(table.loc[k, "verdict"] == verdict[r["holds"]] for k, r in rows.items())


def test_changed_item_is_the_cka_matrix_and_the_units_that_changed_most():
    item = report.standard_items(REQ, ["changed"])[0]
    cka = service.cka_layers("demo:pretrained", "demo:finetuned", REQ.task)
    heat = [t for t in item.figure().data if t.type == "heatmap"][0]
    z = heat.z
    if isinstance(z, dict):                      # plotly's typed-array encoding, as stored in the item
        import base64
        z = np.frombuffer(base64.b64decode(z["bdata"]), dtype=z["dtype"]).reshape(cka.matrix.shape)
    np.testing.assert_allclose(np.asarray(z, dtype=float), cka.matrix, atol=1e-12)
    top = service.most_changed(service.unit_change("demo:pretrained", "demo:finetuned", REQ.task, REQ.layer), "|ΔAuE|", 15)
    assert list(item.table["unit"]) == list(top["unit"]) and item.key == "changed"
    assert "what-changed" in item.url and "Kornblith" in item.caption
