"""Reports for lab meetings: the standard figures of the paper, with captions, tables and provenance.

No streamlit. :func:`standard_items` gathers the figures that reproduce the paper
(Fig. 1 selectivity, Fig. 3 precision-recall, Fig. 4 / Table 5 filters needed, Fig. 5
overlap, Table 6 sparsity, Tables 7-8 ablations, Tables 1-4 per-layer mAP) from
:mod:`core.service` and :mod:`core.present.figures`; the app's "Pin to report" button makes the
same :class:`ReportItem` from any chart on any page. :func:`write_report` writes

- ``report.html``: one self-contained file, interactive plotly charts with plotly.js
  embedded inline (works offline), captions, stamps and tables;
- ``slides/NN-<key>.png``: one 1920x1080 PNG per figure (projector styling), numbered;
- ``report.pdf``: one page per figure (kaleido vector PDFs merged), when a browser is there;
- ``tables/NN-<key>.csv`` and ``.tex`` (booktabs) for every item with a table;
- ``index.json``: title, date, code version and, per item, caption, stamp, provenance
  and the files written.

``python -m core report`` (see :mod:`core.__main__`) is the same path without a browser window.
"""
from __future__ import annotations

import dataclasses
import html
import io
import json
import logging
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio

from core import service
from core.present import export
from core.present import figures
from core.hashing import code_version
from core.errors import InputError

log = logging.getLogger("filterscope.report")
Progress = Callable[[int, int, str], None]


# --------------------------------------------------------------------------- items
@dataclass(frozen=True)
class ReportItem:
    """One figure of a report (optionally with its table).

    Attributes
    ----------
    key : short id, used in file names (``"sel"``, ``"pr"``, or a page's chart key).
    title : heading of the item (and of its slide).
    caption : what it reproduces from the paper and on which data.
    figure_json : the plotly figure as JSON (``fig.to_json()``), styled by
        :func:`core.present.figures.apply_style`.
    stamp : provenance line (:func:`core.present.export.stamp_text`), drawn under the figure.
    paper_ref : e.g. ``"Fig. 1"``, ``"Tables 7-8"``.
    table : optional DataFrame exported as CSV / LaTeX and shown under the figure.
    table_caption : caption of the table.
    provenance : JSON-ready provenance records (``dataclasses.asdict(Provenance)``).
    url : permalink of the view the item came from.
    """

    key: str
    title: str
    caption: str
    figure_json: str
    stamp: str
    paper_ref: str = ""
    table: pd.DataFrame | None = field(default=None, compare=False, repr=False)
    table_caption: str = ""
    provenance: tuple = field(default=(), compare=False, repr=False)
    url: str = ""

    @classmethod
    def from_figure(cls, fig: go.Figure, *, key: str, stamp: str, caption: str | None = None,
                    title: str | None = None, paper_ref: str | None = None, table: pd.DataFrame | None = None,
                    table_caption: str = "", provenance: Any = None, url: str = "") -> "ReportItem":
        """An item from a figure; caption, title and paper reference default to the figure's own."""
        meta = fig.layout.meta if isinstance(fig.layout.meta, dict) else {}
        title = title or fig.layout.title.text or key
        caption = caption if caption is not None else str(meta.get("caption", ""))
        out = export.stamped(fig, stamp, presentation=False)
        return cls(key=key, title=str(title), caption=caption, figure_json=out.to_json(), stamp=stamp,
                   paper_ref=paper_ref if paper_ref is not None else str(meta.get("reproduces", "")),
                   table=table, table_caption=table_caption, provenance=_records(provenance), url=url)

    def figure(self, presentation: bool = False) -> go.Figure:
        """The figure, with its stamp, in screen or projector styling."""
        fig = pio.from_json(self.figure_json)
        return figures.apply_style(fig, title=None, stamp=self.stamp, presentation=presentation)

    def summary(self) -> dict:
        """JSON-ready description (no figure data) for the report's index."""
        return {"key": self.key, "title": self.title, "reproduces": self.paper_ref, "caption": self.caption,
                "stamp": self.stamp, "url": self.url, "provenance": list(self.provenance),
                "table_caption": self.table_caption if self.table is not None else None}


def _records(prov: Any) -> tuple:
    out = []
    for p in export._provenances(prov):  # noqa: SLF001 - same package
        out.append(dataclasses.asdict(p) if dataclasses.is_dataclass(p) else dict(p))
    return tuple(json.loads(json.dumps(out, default=str)))


# --------------------------------------------------------------------------- standard figures
@dataclass(frozen=True)
class ReportRequest:
    """What :func:`standard_items` reports on (the sidebar's selection, or the CLI's flags)."""

    model: str = "demo:finetuned"
    compare: str | None = "demo:pretrained"
    task: str = "demo-detgt"
    layer: str = "conv5"
    cls: int = 0
    base_url: str = export.DEFAULT_BASE_URL
    ablation_seeds: tuple[int, ...] = (0, 1, 2)

    @property
    def models(self) -> list[str]:
        return [self.model] + ([self.compare] if self.compare and self.compare != self.model else [])

    def url(self, page: str, **extra: Any) -> str:
        params = {"model": self.model, "compare": self.compare or "", "task": self.task, **extra}
        return export.permalink(page, params, self.base_url)


def _paper(ref: str, what: str, task: service.TaskSpec, split: str) -> str:
    return f"Reproduces {ref} of {figures.PAPER}: {what} · {task.title} ({split})."


def _item(req: ReportRequest, key: str, fig: go.Figure, *, title: str, caption: str, ref: str, prov: Any,
          page: str, table: pd.DataFrame | None = None, table_caption: str = "", **url_extra: Any) -> ReportItem:
    url = req.url(page, **url_extra)
    stamp = export.stamp_text(prov, url)
    figures.apply_style(fig, title=title, caption=caption, stamp=stamp)
    return ReportItem.from_figure(fig, key=key, stamp=stamp, caption=caption, title=title, paper_ref=ref,
                                  table=table, table_caption=table_caption, provenance=prov, url=url)


def _selectivity_item(req: ReportRequest, t: service.TaskSpec, progress: Progress | None) -> ReportItem:
    layers = service.layers_of(req.model)
    res = {(m, l): service.selectivity(m, req.task, l, progress=progress) for m in req.models for l in layers}
    fig = figures.selectivity_results_figure({(service.model_label(m), l): r for (m, l), r in res.items()},
                                             baseline=res[(req.model, req.layer)], baseline_layer=req.layer)
    table = pd.DataFrame({service.model_label(m): [float(res[(m, l)].aue.mean()) for l in layers] for m in req.models},
                         index=pd.Index(layers, name="layer")).round(3)
    return _item(req, "sel", fig, title="Class selectivity by layer (lower = more selective)", ref="Fig. 1",
                 caption=_paper("Fig. 1", "mean AuE of the k most selective filters vs. k / F; dash-dot "
                                "pretrained, solid fine-tuned, grey band shuffled labels", t, "test split"),
                 prov=[res[(m, req.layer)].provenance for m in req.models], page="selectivity", layer=req.layer,
                 table=table, table_caption="Mean AuE per layer (bits; lower = more class-selective)")


def _pr_item(req: ReportRequest, t: service.TaskSpec, progress: Progress | None) -> ReportItem:
    aps = {m: service.filter_ap(m, req.task, req.layer, progress=progress) for m in req.models}
    main = aps[req.model]
    c = int(req.cls)
    if not 0 <= c < len(main.class_names):
        raise InputError(f"class {c} does not exist: {req.task} has {len(main.class_names)} classes (0-"
                         f"{len(main.class_names) - 1})")
    name = main.class_names[c]
    curves = {service.model_label(m): service.pr_curves(m, req.task, req.layer, c, aps[m].top_filters(c, 5))
              for m in req.models}
    rows = [{"model": v, "filter": pr["filter"], "AP": round(pr["ap"], 3)} for v, prs in curves.items() for pr in prs]
    rows.append({"model": "random filter", "filter": -1, "AP": round(float(main.prevalence[c]), 3)})
    fig = figures.pr_results_figure(curves, random_precision=float(main.prevalence[c]), class_name=name)
    return _item(req, "pr", fig, title=f"Single-filter precision-recall · {name}", ref="Fig. 3",
                 caption=_paper("Fig. 3", f"precision-recall of the 5 best {req.layer} filters for '{name}' "
                                "vs. a random filter", t, "test split"),
                 prov=[aps[m].provenance for m in req.models], page="precision-recall", layer=req.layer, cls=c,
                 table=pd.DataFrame(rows), table_caption=f"AP of the top-5 single filters for '{name}' "
                                                         "(random filter: filter -1, AP = class prevalence)")


def _needed_item(req: ReportRequest, t: service.TaskSpec, progress: Progress | None) -> ReportItem:
    res = {m: service.filters_needed(m, req.task, req.layer, progress=progress) for m in req.models}
    fig = figures.filters_needed_models_figure(res, req.model, req.compare, label=service.model_label)
    table = service.filters_needed_table(res)
    return _item(req, "needed", fig, title="How many filters does a class need?", ref="Fig. 4 / Table 5",
                 caption=_paper("Fig. 4 and Table 5", f"AP of the top-k |SVM weight| {req.layer} filters as a "
                                "fraction of the AP with all of them", t, "train → test split"),
                 prov=[res[m].provenance for m in req.models], page="filters-needed", layer=req.layer,
                 table=table, table_caption=f"Table 5: {req.layer} filters needed for 50% / 90% of the "
                                            "complete performance, per class")


def overlap_k(width: int) -> int:
    """The paper's k = 50 of 256 conv5 filters; narrower layers keep that fraction."""
    return 50 if width >= 256 else max(1, round(width * 50 / 256))


def _overlap_item(req: ReportRequest, t: service.TaskSpec, progress: Progress | None) -> ReportItem:
    width = int(service.filters_needed(req.model, req.task, req.layer, progress=progress).ranking.ranking.shape[1])
    o = service.overlap(req.model, req.task, req.layer, overlap_k(width), progress=progress)
    names = [o.class_names[i] for i in o.order]
    fig = figures.overlap_figure(o.matrix, o.class_names, order=o.order, chance=o.chance, k=o.k, sets=o.sets)
    table = pd.DataFrame(o.matrix[np.ix_(o.order, o.order)], index=pd.Index(names, name="class"),
                         columns=names).round(3)
    return _item(req, "overlap", fig,
                 title=f"Top-{o.k} filter overlap between classes · {service.model_label(req.model)}",
                 ref="Fig. 5", caption=_paper("Fig. 5", f"fraction of shared top-{o.k} |SVM weight| {req.layer} "
                                              f"filters between classes (chance {o.chance:.3f})", t,
                                              "SVMs trained on the train split"),
                 prov=o.provenance, page="overlap", layer=req.layer, table=table,
                 table_caption=f"Top-{o.k} overlap matrix (clustered class order)")


def _sparsity_item(req: ReportRequest, t: service.TaskSpec, progress: Progress | None) -> ReportItem:
    res = {service.model_label(m): service.sparsity(m, req.task, progress=progress) for m in req.models}
    provs = [r["provenance"] for r in res.values()]
    fig = figures.sparsity_results_figure(res)
    df = pd.DataFrame([{**row, "variant": v} for v, r in res.items() for row in r["table"]])
    table = df.pivot(index="variant", columns="layer", values="mean")[service.layers_of(req.model)]
    table = table.reindex([service.model_label(m) for m in req.models]).round(1)
    return _item(req, "sparsity", fig, title="Sparsity of filter responses by layer", ref="Table 6",
                 caption=_paper("Table 6", "percent non-zero responses per layer (mean ± std over items)", t,
                                "test split"),
                 prov=provs, page="ablations", table=table,
                 table_caption="Table 6: non-zero responses (%)" + _moot_note(df))


def _moot_note(rows: pd.DataFrame) -> str:
    """The layers whose non-zero % is not meaningful (not rectified), for a table caption."""
    moot = sorted(set(rows.loc[~rows.get("meaningful", pd.Series(True, index=rows.index)).astype(bool), "layer"]))
    return f"; empty: not meaningful for {', '.join(moot)} (responses not rectified)" if moot else ""


def _ablation_item(req: ReportRequest, t: service.TaskSpec, progress: Progress | None) -> ReportItem:
    layers = list(dict.fromkeys(l for l in (req.layer, "fc7") if l in service.layers_of(req.model)))
    res = {(service.model_label(m), layer): service.ablation(m, req.task, layer, seeds=req.ablation_seeds,
                                                             progress=progress)
           for m in req.models for layer in layers}
    provs = [r["provenance"] for r in res.values()]
    fig = figures.ablation_results_figure(res)
    table = pd.DataFrame([{"variant": v, "layer": layer, "ablation": r["ablation"],
                           "mAP (%)": round(100 * r["mean"], 1), "std": round(100 * r["std"], 1),
                           "CI low": round(100 * r["ci_low"], 1), "CI high": round(100 * r["ci_high"], 1)}
                          for (v, layer), out in res.items() for r in out["summary"]])
    return _item(req, "ablation", fig, title="Feature ablations: spatial layout and magnitude", ref="Tables 7-8",
                 caption=_paper("Tables 7-8", "linear-classifier mAP on original / binarized / spatially "
                                "shuffled / spatially max-pooled features (95% bootstrap CI)", t,
                                "train → test split"),
                 prov=provs, page="ablations", table=table,
                 table_caption=f"Tables 7-8: mAP (%) under ablations, {len(req.ablation_seeds)} split(s)")


def _layers_item(req: ReportRequest, t: service.TaskSpec, progress: Progress | None) -> ReportItem:
    df = service.layer_map_table(req.models, req.task, progress=progress)
    df.columns = [service.model_label(m) for m in req.models]
    df = df.round(1)
    fig = figures.layer_map_figure(df)
    provs = [layer_map_provenance(m, t) for m in req.models]
    return _item(req, "layers", fig, title="Linear-classifier mAP by layer", ref="Tables 1-4",
                 caption=_paper("Tables 1-4", "mAP of one linear classifier per class on each layer's features",
                                t, "train → test split"),
                 prov=provs, page="overview", table=df, table_caption="Per-layer mAP (%)")


def _changed_item(req: ReportRequest, t: service.TaskSpec, progress: Progress | None) -> ReportItem:
    """What changed (#31): the layer x layer CKA of the compare (before) and the report's model (after), with
    the units of the report's layer that changed most by |ΔAuE| as its table."""
    from core.present import change_figures

    before = service.pretrained_counterpart(req.model, req.compare)
    if before is None:
        raise InputError(f"what changed needs the network {req.model} started from: pass it as the compare model")
    cka = service.cka_layers(before, req.model, req.task, progress=progress)
    la, lb = service.model_label(before), service.model_label(req.model)
    fig = change_figures.cka_heatmap_figure(cka.matrix, cka.layers_a, cka.layers_b, label_a=la, label_b=lb,
                                            pool=cka.pool, estimator=cka.estimator)
    units = service.unit_change(before, req.model, req.task, req.layer, progress=progress)
    table = service.most_changed(units, "|ΔAuE|", 15)[
        ["unit", "unit after", "status", "match correlation", "AuE before", "AuE after", "best class before",
         "best AP before", "best class after", "best AP after", "weight change"]].round(4)
    return _item(req, "changed", fig, title=f"What changed: {la} → {lb}", ref="Fig. 1 (by CKA)",
                 caption=f"Linear CKA (Kornblith et al. 2019) of every layer pair on the same test items "
                         f"({cka.estimator}); table: the 15 {req.layer} units that changed most by |ΔAuE| · "
                         f"{t.title} (test split).",
                 prov=[cka.provenance, units.provenance], page="what-changed", table=table,
                 table_caption=f"{req.layer}: the units that changed most by |ΔAuE|, {la} → {lb}")


def findings_table(rows: Sequence[dict]) -> pd.DataFrame:
    """The findings as a table: id, finding, paper, this model, verdict, why."""
    return pd.DataFrame([{"id": r["id"], "finding": r["title"], "paper": r["paper"], "this model": r["measured"],
                          "verdict": figures.FINDING_MARKS[r["holds"]][0], "why not": r["why"]} for r in rows])


def findings_provenances(req: ReportRequest, t: service.TaskSpec) -> list[service.Provenance]:
    """Provenance of the findings table: one record per model compared."""
    return [service.Provenance(service.model_info(m), f"{t.train} -> {t.test}", "all layers",
                               {"rules": "core/analysis/findings.py"}, code_version(), time.strftime("%Y-%m-%d %H:%M"))
            for m in req.models]


def _findings_item(req: ReportRequest, t: service.TaskSpec, progress: Progress | None) -> ReportItem:
    rows = service.findings(req.model, service.pretrained_counterpart(req.model, req.compare), req.task,
                            progress=progress)
    fig = figures.findings_figure(rows)
    return _item(req, "findings", fig, title=fig.layout.title.text, ref="Figs. 1, 4; Tables 1-7",
                 caption=_paper("the headline findings", "each verdict by the rule in core/analysis/findings.py",
                                t, "train → test split"),
                 prov=findings_provenances(req, t), page="overview", table=findings_table(rows),
                 table_caption=service.findings_summary(rows))


def layer_map_provenance(model_id: str, t: service.TaskSpec) -> service.Provenance:
    """Provenance of a per-layer mAP table (the service's layer mAP results carry none)."""
    return service.Provenance(service.model_info(model_id), f"{t.train} -> {t.test}", "all layers",
                              {"classifier": service.TABLE_CLASSIFIER.method}, code_version(),
                              time.strftime("%Y-%m-%d %H:%M"))


#: key -> (builder, what it reproduces), in report order.
STANDARD: dict[str, tuple[Callable[..., ReportItem], str]] = {
    "findings": (_findings_item, "headline findings"),
    "sel": (_selectivity_item, "Fig. 1 class selectivity"),
    "pr": (_pr_item, "Fig. 3 single-filter precision-recall"),
    "needed": (_needed_item, "Fig. 4 / Table 5 filters needed"),
    "overlap": (_overlap_item, "Fig. 5 filter overlap"),
    "sparsity": (_sparsity_item, "Table 6 sparsity"),
    "ablation": (_ablation_item, "Tables 7-8 ablations"),
    "layers": (_layers_item, "Tables 1-4 per-layer mAP"),
    "changed": (_changed_item, "what changed: layer CKA and the units that changed most"),
}


def standard_items(req: ReportRequest, keys: Sequence[str] | None = None, *, progress: Progress | None = None,
                   on_skip: Callable[[str, str], None] | None = None) -> list[ReportItem]:
    """The standard figures of the paper for one selection (computed or read from the cache).

    Parameters
    ----------
    req : model, compare model, task, layer, class, permalink base.
    keys : which of :data:`STANDARD` (default all, in that order).
    progress : passed to the service (extraction and analyses on first use).
    on_skip : called with ``(key, reason)`` for a figure that does not apply to this task
        (e.g. selectivity needs single-label data); default: log a warning.

    Raises
    ------
    InputError : an unknown key, model, task or class.
    """
    keys = list(keys or STANDARD)
    unknown = [k for k in keys if k not in STANDARD]
    if unknown:
        raise InputError(f"unknown report figures {unknown}; choose from {', '.join(STANDARD)}")
    t = service.task(req.task)
    if req.layer not in service.layers_of(req.model):
        raise InputError(f"layer '{req.layer}' is not in {req.model}: {', '.join(service.layers_of(req.model))}")
    multilabel = service.load_set(t.test).multilabel
    skip = on_skip or (lambda k, r: log.warning("report: skipped %s: %s", k, r))
    items = []
    for key in keys:
        builder, what = STANDARD[key]
        if key in ("sel", "findings", "changed") and multilabel:  # class-label entropy needs one label per item
            skip(key, f"{what} needs single-label data; {t.title} is multi-label (pick a DET-GT or scene task)")
            continue
        items.append(builder(req, t, progress))
    return items


# --------------------------------------------------------------------------- outputs
_CSS = """
body{font-family:Arial,Helvetica,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{margin-bottom:.2em} .meta,.stamp{color:#777;font-size:.85em} .ref{color:#0072B2;font-weight:bold}
section{margin:2.5em 0;border-top:1px solid #ddd;padding-top:1em} .caption{font-size:1.05em}
table.fs{border-collapse:collapse;margin:.6em 0;font-size:.9em} table.fs th,table.fs td{padding:3px 8px;
border-bottom:1px solid #ccc;text-align:right} table.fs thead th{border-bottom:2px solid #444}
"""


def _file_stem(n: int, item: ReportItem) -> str:
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in item.key)[:40]
    return f"{n:02d}-{safe}"


def report_html(items: Sequence[ReportItem], title: str = "Filterscope report") -> str:
    """One self-contained HTML page: interactive figures (plotly.js inline, no network),
    captions, stamps and tables."""
    from plotly.offline import get_plotlyjs

    esc = html.escape
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>",
             f"<style>{_CSS}</style>", f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body>",
             f"<h1>{esc(title)}</h1>",
             f"<p class='meta'>{esc(figures.PAPER)} reproduced with Filterscope {esc(code_version())} · "
             f"{time.strftime('%Y-%m-%d %H:%M')} · {len(items)} figure(s)</p><ol>"]
    parts += [f"<li><a href='#{_file_stem(n, it)}'>{esc(it.title)}</a> ({esc(it.paper_ref)})</li>"
              for n, it in enumerate(items, 1)]
    parts.append("</ol>")
    for n, it in enumerate(items, 1):
        div = pio.to_html(it.figure(), full_html=False, include_plotlyjs=False, include_mathjax=False,
                          div_id=f"plot-{n:02d}", config={"displaylogo": False, "responsive": True})
        parts += [f"<section id='{_file_stem(n, it)}'><h2>{n}. {esc(it.title)}</h2>",
                  f"<p class='ref'>{esc(it.paper_ref)}</p>", div, f"<p class='caption'>{esc(it.caption)}</p>",
                  f"<p class='stamp'>{esc(it.stamp)}</p>"]
        if it.table is not None:
            parts += [f"<p><b>{esc(it.table_caption or 'Table')}</b></p>",
                      it.table.to_html(classes="fs", border=0, escape=True)]
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def slide_geometry(fig: go.Figure) -> tuple[int, int, float]:
    """CSS width, height and scale of a 1920x1080 slide that fits the figure's own height.

    A tall figure (long legend, many classes) gets a larger canvas at a smaller scale
    instead of being squeezed; the pixel size stays 16:9, 1920x1080.
    """
    h = max(720, int(fig.layout.height or 720))
    return round(h * 16 / 9), h, 1080 / h


def slide_png(item: ReportItem) -> bytes:
    """One 1920x1080 slide of the item (projector styling, stamp under the plot)."""
    from PIL import Image

    fig = item.figure(presentation=True)
    w, h, scale = slide_geometry(fig)
    png = export.figure_png(fig, item.stamp, width=w, height=h, scale=scale, presentation=True)
    img = Image.open(io.BytesIO(png))
    if img.size == export.SLIDE_PIXELS:
        return png
    buf = io.BytesIO()  # off by a pixel from rounding: resize, keep the provenance chunks
    info = export.png_info(img.text)
    img.resize(export.SLIDE_PIXELS, Image.LANCZOS).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def slides_zip(items: Sequence[ReportItem]) -> bytes:
    """The slide PNGs (``NN-<key>.png``) in one zip file."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for n, it in enumerate(items, 1):
            z.writestr(f"{_file_stem(n, it)}.png", slide_png(it))
    return buf.getvalue()


def report_pdf(items: Sequence[ReportItem], title: str = "Filterscope report") -> bytes:
    """One vector PDF page per item (16:9, the slide geometry), in order."""
    if not items:
        raise InputError("the report is empty: pin figures or add the standard ones first")
    pages = []
    for it in items:
        fig = it.figure(presentation=True)
        w, h, _ = slide_geometry(fig)
        pages.append(export.figure_pdf(fig, it.stamp, width=w, height=h, presentation=True))
    return export.merge_pdfs(pages, title=title, subject="; ".join(it.stamp for it in items))


@dataclass
class ReportFiles:
    """What :func:`write_report` wrote (paths) and, when no browser was found, why PNG/PDF are missing."""

    html: Path
    index: Path
    slides: list[Path] = field(default_factory=list)
    pdf: Path | None = None
    tables: list[Path] = field(default_factory=list)
    static_problem: str | None = None

    def all(self) -> list[Path]:
        return [self.html, *self.slides, *([self.pdf] if self.pdf else []), *self.tables, self.index]


def write_report(items: Sequence[ReportItem], out_dir: str | Path, *, title: str = "Filterscope report",
                 static: bool = True, progress: Progress | None = None,
                 skipped: Sequence[str] = ()) -> ReportFiles:
    """Write the report (HTML, slide PNGs, PDF, tables, JSON index) into ``out_dir``.

    Parameters
    ----------
    static : also write the PNG slides and the PDF (needs a browser; without one they are
        skipped and ``ReportFiles.static_problem`` says what to install).
    skipped : notes on figures left out (recorded in the index).
    """
    if not items:
        raise InputError("the report is empty: pin figures or add the standard ones first")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = ReportFiles(html=out / "report.html", index=out / "index.json")
    files.html.write_text(report_html(items, title), encoding="utf-8")
    entries = [_write_tables(n, it, out, files) for n, it in enumerate(items, 1)]
    files.static_problem = export.static_export_problem() if static else "not requested"
    if static and files.static_problem is None:
        _write_static(items, out, files, entries, title, progress)
    index = {"title": title, "created": time.strftime("%Y-%m-%d %H:%M:%S"), "code_version": code_version(),
             "paper": figures.PAPER, "html": files.html.name, "pdf": files.pdf.name if files.pdf else None,
             "static_exports": files.static_problem or "written", "skipped": list(skipped), "items": entries}
    files.index.write_text(json.dumps(index, indent=1, ensure_ascii=False), encoding="utf-8")
    return files


def _write_tables(n: int, it: ReportItem, out: Path, files: ReportFiles) -> dict:
    entry = {"n": n, **it.summary(), "files": {}}
    if it.table is not None:
        (out / "tables").mkdir(exist_ok=True)
        stem = out / "tables" / _file_stem(n, it)
        caption = it.table_caption or it.title
        stem.with_suffix(".csv").write_bytes(export.table_csv(it.table, it.stamp, caption))
        stem.with_suffix(".tex").write_text(export.table_latex(it.table, caption, it.stamp,
                                                               label=f"tab:{_file_stem(n, it)}"), encoding="utf-8")
        files.tables += [stem.with_suffix(".csv"), stem.with_suffix(".tex")]
        entry["files"].update(csv=f"tables/{stem.name}.csv", tex=f"tables/{stem.name}.tex")
    return entry


def _write_static(items: Sequence[ReportItem], out: Path, files: ReportFiles, entries: list[dict], title: str,
                  progress: Progress | None) -> None:
    (out / "slides").mkdir(exist_ok=True)
    for n, (it, entry) in enumerate(zip(items, entries), 1):
        if progress:
            progress(n - 1, len(items), f"slides: {it.title}")
        path = out / "slides" / f"{_file_stem(n, it)}.png"
        path.write_bytes(slide_png(it))
        files.slides.append(path)
        entry["files"]["slide"] = f"slides/{path.name}"
    if progress:
        progress(len(items), len(items), "slides: PDF")
    files.pdf = out / "report.pdf"
    files.pdf.write_bytes(report_pdf(items, title))
