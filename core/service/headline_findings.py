"""The paper's ten headline findings, and one of ours asked with CKA, checked on measured numbers
(:mod:`core.analysis.findings`)."""
from __future__ import annotations

from typing import Any, Callable, Sequence

from core.demo import build as demo
from core.hashing import code_version
from core.errors import DataMissingError
from core.store.extraction import Progress
from core.service.analyses import ablation, filter_ap, filters_needed, layer_map, selectivity, sparsity
from core.service.compare import cka_layers
from core.service.catalog import (_demo_built, checkpoint_series, demo_variants, layers_of, model_info, model_label,
                                  models, tasks)

#: what each demo network is to the fine-tuned one, for the rows a user's own model cannot measure yet
_ROLE = {"demo:scratch": "a network of the same architecture trained from scratch on this task",
         "demo:fc-finetuned": "a version fine-tuned in its last two layers only"}
_OWN_SNAPSHOTS = ("needs checkpoints of the run: name them as a series in the model id "
                  "(<kind>:<name>@<folder or glob of checkpoints>)")
from core.service.paper_tables import snapshot_table


def pretrained_counterpart(model_id: str, compare: str | None = None) -> str | None:
    """The pretrained network a model's findings compare it with: ``compare`` when given, the demo's
    pretrained net for a demo network, the first checkpoint of a checkpoint series, else None (rows
    that need one then say so: never another network trained on other data)."""
    if compare:
        return compare
    if model_id.startswith("demo:"):
        return "demo:pretrained"
    run = checkpoint_series(model_id)
    return run[0][1] if len(run) > 1 else None  # a run's first checkpoint: where it started


def findings(finetuned: str = "demo:finetuned", pretrained: str | None = "demo:pretrained",
             task_id: str = "demo-detgt", cls_task: str | None = "demo-cls",
             progress: Progress | None = None) -> list[dict]:
    """The paper's ten headline findings and CKA's version of Fig. 1's, checked on these models
    (:mod:`core.analysis.findings`).

    ``pretrained`` is the network ``finetuned`` started from (:func:`pretrained_counterpart`); None
    leaves the rows that compare with it "not measured", saying how to give it.
    Measured on ``task_id`` (DET-GT by default) unless a rule says otherwise: mAP rising
    with depth is checked on ``cls_task`` too, and the layer-convergence rule reads Table 3
    (pretraining snapshots) on ``cls_task``. Rows that need the demo's other networks
    (scratch, fc-only, fine-tuned from a snapshot, snapshots) are measured when
    ``finetuned`` is a demo network; otherwise, or when a model or task is missing, a row
    says "not measured" and why. Uses cached analyses when present.

    Returns one dict per finding, in :data:`analysis.findings.FINDING_IDS` order, with
    ``id``, ``title``, ``paper``, ``measured``, ``holds`` (True / False / None), ``why``
    (one line where it does not hold) and ``numbers`` (what the rule read).
    """
    from core.analysis import findings as fnd

    if cls_task and cls_task.startswith("demo") and not finetuned.startswith("demo:"):
        cls_task = None  # the demo's image-level task says nothing about a network trained on other data
    layers = layers_of(finetuned)
    first, last = layers[0], layers[-1]
    fc = tuple(l for l in ("fc6", "fc7") if l in layers) or tuple(layers[-2:])
    conv = "conv5" if "conv5" in layers else layers[len(layers) // 2]
    variants = demo_variants() if finetuned.startswith("demo:") else {}
    ids = set(models())

    def fc7_map(m: str, t: str = task_id) -> float:
        return layer_map(m, t, last, progress)["map"]

    def need(*model_ids: str | None) -> None:
        if None in model_ids:
            raise DataMissingError(f"needs the pretrained network {model_label(finetuned)} started from: pick it as "
                                   "the compare model (sidebar, or --compare)")
        roles = [m for m in model_ids if m in _ROLE]
        if roles and not finetuned.startswith("demo:"):  # the demo's networks are not this model's
            raise DataMissingError(f"needs {' and '.join(_ROLE[m] for m in roles)}, beside "
                                   f"{model_label(finetuned)}; only the embedded demo has one so far")
        missing = [m for m in model_ids if m not in ids and m.startswith("demo:")]
        if missing:
            raise DataMissingError(f"needs {', '.join(missing)} (the embedded demo's networks)")

    def aue(m: str) -> dict[str, float]:
        return {l: float(selectivity(m, task_id, l, progress=progress).aue.mean()) for l in layers}

    def selectivity_rows() -> list:
        need(pretrained)
        a_ft, a_pre = aue(finetuned), aue(pretrained)
        return [fnd.selectivity_depth(a_ft, a_pre, first, last), fnd.finetune_moves_fc(a_ft, a_pre, fc)]

    def map_depth():
        need(pretrained)
        tasks_ = [t for t in dict.fromkeys([cls_task, task_id]) if t and t in tasks()]
        return fnd.map_rises_with_depth({t: {l: layer_map(pretrained, t, l, progress)["map"] for l in (first, last)}
                                         for t in tasks_}, first, last)

    def scratch():
        need("demo:scratch")
        return fnd.pretrain_beats_scratch(fc7_map(finetuned), fc7_map("demo:scratch"), last)

    def longer():
        earlier = [m for m in variants.get("ft_from", []) if "-from-" in m]
        if not finetuned.startswith("demo:"):
            raise DataMissingError(_OWN_SNAPSHOTS)
        if not earlier or finetuned != "demo:finetuned":
            raise DataMissingError("needs demo:finetuned and a demo net fine-tuned from a pretraining snapshot")
        earliest = min(earlier, key=lambda m: int(m.rsplit("-", 1)[1]))
        final_it = int(demo.manifest()["config"]["pretrain"]["iterations"])
        return fnd.longer_pretraining_helps(fc7_map(finetuned), fc7_map(earliest), int(earliest.rsplit("-", 1)[1]),
                                            final_it, last)

    def fc_only():
        need("demo:fc-finetuned")
        return fnd.full_ft_beats_fc_only(fc7_map(finetuned), fc7_map("demo:fc-finetuned"), last)

    def binarize():
        abl = {r["ablation"]: r["mean"]
               for r in ablation(finetuned, task_id, conv, seeds=(0,), progress=progress)["summary"]}
        return fnd.binarize_cheap(abl["original"], abl["binarize"], conv)

    def distributed():
        need_res = filters_needed(finetuned, task_id, conv, progress=progress)
        single = filter_ap(finetuned, task_id, conv, progress=progress).ap.max(1)
        return fnd.distributed_conv(need_res.k90, need_res.ranking.ranking.shape[1], single,
                                    need_res.ranking.full_ap, conv)

    def sparse():
        rows = [r for r in sparsity(finetuned, task_id, progress=progress)["table"] if r["layer"] in (first, conv, last)]
        moot = [r["layer"] for r in rows if not r.get("meaningful", True)]
        if moot:
            raise DataMissingError(f"not meaningful for {', '.join(moot)}: responses are not rectified (some are "
                                   "negative), so exact zeros do not mark units that did not fire")
        return fnd.sparsity_falls({r["layer"]: r["mean"] for r in rows}, first, conv, last)

    def converge():
        if checkpoint_series(finetuned):  # the user's own run, measured on the task of the other rows
            table = snapshot_table(task_id, [first, last], progress, series=finetuned)
        elif not finetuned.startswith("demo:"):
            raise DataMissingError(_OWN_SNAPSHOTS)
        elif not variants.get("snapshots") or not cls_task or cls_task not in tasks():
            raise DataMissingError("needs the demo's pretraining snapshots and its image-level task")
        else:
            table = snapshot_table(cls_task, [first, last], progress)
        return fnd.lower_layers_converge_first(list(table.index), {l: list(table[l] / 100) for l in (first, last)},
                                               first, last)

    def cka_rows():
        need(pretrained)
        diag = cka_layers(pretrained, finetuned, task_id, progress=progress).diagonal()
        return fnd.cka_moves_fc(dict(zip(diag["layer"], diag["cka"])), fc, tuple(layers[:max(1, len(layers) // 2)]))

    steps: list[tuple[tuple[str, ...], Callable[[], Any]]] = [
        (("selectivity_depth", "finetune_moves_fc"), selectivity_rows), (("map_rises_with_depth",), map_depth),
        (("pretrain_beats_scratch",), scratch), (("longer_pretraining_helps",), longer),
        (("full_ft_beats_fc_only",), fc_only), (("binarize_cheap",), binarize),
        (("distributed_conv",), distributed), (("sparsity_falls",), sparse),
        (("lower_layers_converge_first",), converge), (("cka_moves_fc",), cka_rows)]
    rows = []
    for fids, measure in steps:
        try:
            got = measure()
            rows += got if isinstance(got, list) else [got]
        except DataMissingError as exc:
            rows += [fnd.not_measured(f, str(exc)) for f in fids]
    return [r.row() for r in rows]


def findings_provenance(finetuned: str, pretrained: str | None, task_id: str, cls_task: str | None) -> dict:
    """Where :func:`findings`' numbers come from: models with weights hashes, tasks, code version."""
    keep = ("id", "name", "arch", "weights_source", "weights_path", "weights_sha256", "code_sha256",
            "source_file", "timm_version", "torch_version")
    nets = {m: {k: v for k, v in model_info(m).items() if k in keep}
            for m in dict.fromkeys([finetuned, pretrained]) if m and (m in models() or not m.startswith("demo:"))}
    return {"models": nets, "task": task_id, "cls_task": cls_task, "code_version": code_version(),
            "demo": {k: demo.manifest().get(k) for k in ("profile", "config_hash", "built")} if _demo_built() else None}


def findings_summary(rows: Sequence[dict]) -> str:
    """``"8 of 11 findings hold (1 not measured)"``."""
    held = sum(r["holds"] is True for r in rows)
    skipped = sum(r["holds"] is None for r in rows)
    return f"{held} of {len(rows)} findings hold" + (f" ({skipped} not measured)" if skipped else "")
