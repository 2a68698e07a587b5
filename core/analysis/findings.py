"""The paper's headline findings as explicit rules over measured numbers.

Reproduces: the conclusions of Agrawal, Girshick & Malik (ECCV 2014) that a reader checks
first: Fig. 1 (selectivity rises with depth; fine-tuning moves fc6/fc7, and the same asked of
representations with CKA, not in the paper), Tables 1-2 (mAP
rises with depth), Sec. 3 / Tables 1-2 (pretraining beats scratch when target data are
scarce; full fine-tuning beats fc-only), Table 4 (longer pretraining helps), Table 7
(binarizing conv5 is cheap), Sec. 4.1-4.2 / Table 5 (a distributed code, few grandmother
cells), Table 6 (sparsity falls with depth) and Table 3 (lower layers converge first).

Each rule is a pure function of plain numbers (no models, no files): :mod:`core.service`
measures the numbers and calls them, the tests call them on hand-made numbers. Every rule
returns a :class:`Finding` whose ``holds`` follows the rule written in its docstring, with
the measured figures and, where it does not hold, one line saying why.
Deviation: the paper states these findings in prose over its tables; the thresholds here
(5 mAP points, 10% of filters, 10% of classes, 90% of final mAP) make them checkable.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Mapping, Sequence

import numpy as np


@dataclass(frozen=True)
class Finding:
    """One headline finding checked on one model: ``holds`` is None when it could not be measured."""

    id: str
    title: str
    paper: str
    measured: str
    holds: bool | None
    why: str = ""
    numbers: dict = field(default_factory=dict)

    def row(self) -> dict:
        """The finding as a JSON-ready dict (``id``, ``title``, ``paper``, ``measured``, ``holds``, ``why``, ``numbers``)."""
        return asdict(self)


#: The findings, in the order the app, the report and ``python -m core findings`` list them.
FINDING_IDS = ("selectivity_depth", "finetune_moves_fc", "map_rises_with_depth", "pretrain_beats_scratch",
               "longer_pretraining_helps", "full_ft_beats_fc_only", "binarize_cheap", "distributed_conv",
               "sparsity_falls", "lower_layers_converge_first", "cka_moves_fc")

TITLES = {
    "selectivity_depth": "Class selectivity rises with depth (Fig. 1)",
    "finetune_moves_fc": "Fine-tuning mostly changes fc6 and fc7 (Fig. 1)",
    "map_rises_with_depth": "Linear mAP rises with depth in the pretrained net (Tables 1-2)",
    "pretrain_beats_scratch": "Pretraining beats training from scratch on scarce target data (Tables 1-2)",
    "longer_pretraining_helps": "Longer pretraining gives a better fine-tuned net (Table 4)",
    "full_ft_beats_fc_only": "Fine-tuning all layers beats fine-tuning fc6-fc7 only (Table 2)",
    "binarize_cheap": "Binarizing conv5 costs little (Table 7)",
    "distributed_conv": "conv5 codes classes with many filters, few grandmother cells (Sec. 4.1-4.2, Table 5)",
    "sparsity_falls": "Responses get sparser with depth (Table 6)",
    "lower_layers_converge_first": "Lower layers converge first during pretraining (Table 3)",
    "cka_moves_fc": "By CKA too, fine-tuning moves the top layers most (ours; Fig. 1's question)",
}

PAPER = {
    "selectivity_depth": "mean AuE falls from conv1 to fc7, before and after fine-tuning",
    "finetune_moves_fc": "only fc6 and fc7 change noticeably",
    "map_rises_with_depth": "PASCAL-CLS: conv1 ~25 → fc7 ~73 mAP; DET-GT rises too",
    "pretrain_beats_scratch": "PASCAL-DET fc7: 45.5 (fine-tuned) vs 40.7 (scratch)",
    "longer_pretraining_helps": "fc7 fine-tuned from 5k iterations 50.0 < from 310k 54.1 (PASCAL-DET)",
    "full_ft_beats_fc_only": "PASCAL-DET fc7: 54.1 (all layers) vs 48.2 (fc only)",
    "binarize_cheap": "conv5 65.6 → 60.8 mAP binarized (-4.8, PASCAL-DET-GT)",
    "distributed_conv": "~30-40 conv5 filters for 90% of full AP; few grandmother cells",
    "sparsity_falls": "non-zero responses: conv1 87.5% → fc7 21.6%",
    "lower_layers_converge_first": "conv1 is nearly final after 15k iterations; fc7 keeps improving",
    "cka_moves_fc": "by mean AuE (Fig. 1), fine-tuning changes fc6 and fc7, little below",
}


def _finding(fid: str, measured: str, holds: bool, why: str, **numbers) -> Finding:
    return Finding(fid, TITLES[fid], PAPER[fid], measured, bool(holds), "" if holds else why, numbers)


def not_measured(fid: str, why: str) -> Finding:
    """A finding that cannot be checked on these models or data (``holds`` None)."""
    return Finding(fid, TITLES[fid], PAPER[fid], "not measured", None, why, {})


def selectivity_depth(aue_finetuned: Mapping[str, float], aue_pretrained: Mapping[str, float],
                      first: str = "conv1", last: str = "fc7") -> Finding:
    """Holds when mean AuE at ``last`` < at ``first`` for the fine-tuned and for the pretrained net."""
    ft = aue_finetuned[last] < aue_finetuned[first]
    pre = aue_pretrained[last] < aue_pretrained[first]
    fails = [name for name, ok in (("fine-tuned", ft), ("pretrained", pre)) if not ok]
    return _finding("selectivity_depth",
                    f"mean AuE {first} → {last}: fine-tuned {aue_finetuned[first]:.3f} → {aue_finetuned[last]:.3f}, "
                    f"pretrained {aue_pretrained[first]:.3f} → {aue_pretrained[last]:.3f} bits",
                    ft and pre, f"{' and '.join(fails)}: {last} is not more selective than {first}",
                    aue_finetuned=dict(aue_finetuned), aue_pretrained=dict(aue_pretrained))


def finetune_moves_fc(aue_finetuned: Mapping[str, float], aue_pretrained: Mapping[str, float],
                      fc: Sequence[str] = ("fc6", "fc7")) -> Finding:
    """Holds when the two layers with the largest |Δ mean AuE| (fine-tuned - pretrained) are ``fc``."""
    delta = {l: aue_finetuned[l] - aue_pretrained[l] for l in aue_finetuned}
    top = sorted(delta, key=lambda l: -abs(delta[l]))[:2]
    holds = set(top) == set(fc)
    others = [l for l in top if l not in fc]
    return _finding("finetune_moves_fc",
                    "largest |ΔAuE|: " + ", ".join(f"{l} {delta[l]:+.3f}" for l in top) + " bits",
                    holds, f"{', '.join(others)} moved more than {' or '.join(l for l in fc if l not in top)}",
                    delta=delta)


def map_rises_with_depth(map_by_task: Mapping[str, Mapping[str, float]], first: str = "conv1",
                         last: str = "fc7") -> Finding:
    """Holds when the pretrained net's mAP at ``last`` > at ``first`` on every task given
    (``{task: {layer: mAP}}``; the image-level CLS task and DET-GT)."""
    fails = [t for t, m in map_by_task.items() if not m[last] > m[first]]
    return _finding("map_rises_with_depth",
                    "; ".join(f"{t}: {first} {100 * m[first]:.1f} → {last} {100 * m[last]:.1f}"
                              for t, m in map_by_task.items()) + " mAP",
                    not fails and bool(map_by_task), f"{last} is not above {first} on {', '.join(fails)}",
                    map_by_task={t: dict(m) for t, m in map_by_task.items()})


def _better(fid: str, label_a: str, a: float, label_b: str, b: float, layer: str) -> Finding:
    """Holds when ``a`` > ``b`` (mAP fractions, shown in percent)."""
    return _finding(fid, f"{layer} mAP: {label_a} {100 * a:.1f} vs {label_b} {100 * b:.1f}", a > b,
                    f"{label_a} is {100 * (b - a):.1f} points {'below' if a < b else 'level with'} {label_b}",
                    **{label_a.replace(" ", "_"): a, label_b.replace(" ", "_"): b})


def pretrain_beats_scratch(finetuned_map: float, scratch_map: float, layer: str = "fc7") -> Finding:
    """Holds when the fine-tuned net's ``layer`` mAP > the scratch net's."""
    return _better("pretrain_beats_scratch", "fine-tuned", finetuned_map, "scratch", scratch_map, layer)


def longer_pretraining_helps(final_map: float, earliest_map: float, earliest_iteration: int,
                             final_iteration: int, layer: str = "fc7") -> Finding:
    """Holds when fine-tuning from the final iterate gives a higher ``layer`` mAP than from the earliest snapshot."""
    return _better("longer_pretraining_helps", f"from {final_iteration} its", final_map,
                   f"from {earliest_iteration} its", earliest_map, layer)


def full_ft_beats_fc_only(full_map: float, fc_only_map: float, layer: str = "fc7") -> Finding:
    """Holds when full fine-tuning's ``layer`` mAP > fc-only fine-tuning's."""
    return _better("full_ft_beats_fc_only", "all layers", full_map, "fc only", fc_only_map, layer)


def binarize_cheap(original_map: float, binarized_map: float, layer: str = "conv5",
                   max_drop_points: float = 5.0) -> Finding:
    """Holds when binarizing ``layer`` costs fewer than ``max_drop_points`` mAP points."""
    drop = 100 * (original_map - binarized_map)
    return _finding("binarize_cheap", f"{layer}: {100 * original_map:.1f} → {100 * binarized_map:.1f} mAP "
                                      f"({-drop:+.1f})",
                    drop < max_drop_points, f"binarizing costs {drop:.1f} points (≥ {max_drop_points:g})",
                    original=original_map, binarized=binarized_map)


def distributed_conv(k90: Sequence[float], num_filters: int, best_single_ap: Sequence[float],
                     full_ap: Sequence[float], layer: str = "conv5", min_filter_share: float = 0.10,
                     gm_ratio: float = 0.9, max_gm_share: float = 0.10) -> Finding:
    """Holds when the median k for 90% of full AP is ≥ ``min_filter_share`` of the layer's
    filters and fewer than ``max_gm_share`` of classes have one filter whose AP is ≥
    ``gm_ratio`` × the full-layer AP (grandmother cells). Per-class arrays: ``k90``,
    ``best_single_ap`` (best single-filter AP), ``full_ap`` (SVM on all filters)."""
    med = float(np.median(np.asarray(k90, np.float64)))
    best, full = np.asarray(best_single_ap, np.float64), np.asarray(full_ap, np.float64)
    gm = (full > 0) & (best >= gm_ratio * full)
    share = float(gm.mean()) if gm.size else 0.0
    many = med >= min_filter_share * num_filters
    few_gm = share < max_gm_share
    why = "; ".join(w for w, bad in (
        (f"median k90 {med:g} < {min_filter_share:.0%} of {num_filters} filters", not many),
        (f"{int(gm.sum())} of {gm.size} classes have a grandmother-cell filter", not few_gm)) if bad)
    return _finding("distributed_conv",
                    f"{layer}: median k for 90% of full AP {med:g} of {num_filters} filters; "
                    f"{int(gm.sum())} of {gm.size} classes with one filter ≥ {gm_ratio:.0%} of full AP",
                    many and few_gm, why, median_k90=med, num_filters=num_filters,
                    grandmother_classes=int(gm.sum()), classes=int(gm.size))


def sparsity_falls(nonzero_percent: Mapping[str, float], first: str = "conv1", mid: str = "conv5",
                   last: str = "fc7") -> Finding:
    """Holds when the % of non-zero responses at ``last`` and at ``mid`` are both below ``first``'s."""
    nz = nonzero_percent
    fails = [l for l in (mid, last) if not nz[l] < nz[first]]
    return _finding("sparsity_falls", f"non-zero: {first} {nz[first]:.1f}% → {mid} {nz[mid]:.1f}% → "
                                      f"{last} {nz[last]:.1f}%",
                    not fails, f"{', '.join(fails)} not sparser than {first}", nonzero_percent=dict(nz))


def first_reaching(iterations: Sequence[int], maps: Sequence[float], fraction: float = 0.9) -> int:
    """The first snapshot iteration whose mAP is ≥ ``fraction`` × the final snapshot's mAP."""
    its, m = list(iterations), np.asarray(maps, np.float64)
    order = np.argsort(its, kind="stable")
    its, m = [its[i] for i in order], m[order]
    return next(it for it, v in zip(its, m) if v >= fraction * m[-1])


def lower_layers_converge_first(iterations: Sequence[int], map_by_layer: Mapping[str, Sequence[float]],
                                low: str = "conv1", high: str = "fc7", fraction: float = 0.9) -> Finding:
    """Holds when ``low`` reaches ``fraction`` of its final-snapshot mAP at an earlier snapshot than ``high``
    (Table 3: mAP of each pretraining snapshot, no fine-tuning)."""
    a = first_reaching(iterations, map_by_layer[low], fraction)
    b = first_reaching(iterations, map_by_layer[high], fraction)
    return _finding("lower_layers_converge_first",
                    f"{fraction:.0%} of final mAP reached at iteration {a} ({low}) vs {b} ({high})",
                    a < b, f"{low} gets there {'at the same snapshot as' if a == b else 'later than'} {high}",
                    iterations=list(iterations), map_by_layer={k: list(v) for k, v in map_by_layer.items()},
                    reached={low: a, high: b})


def cka_moves_fc(cka_by_layer: Mapping[str, float], fc: Sequence[str] = ("fc6", "fc7"),
                 low: Sequence[str] = ("conv1", "conv2", "conv3")) -> Finding:
    """Holds when the layer that moved most under fine-tuning (largest ``1 - CKA`` between a layer of the
    pretrained and the same layer of the fine-tuned network) is one of ``fc``, and every ``fc`` layer
    moved more than every ``low`` layer.

    Reproduces: Fig. 1's conclusion (fine-tuning changes the top layers) asked of representations with
    linear CKA (Kornblith et al. 2019) instead of mean AuE: not in the paper.
    """
    moved = {l: 1.0 - float(v) for l, v in cka_by_layer.items()}
    top = max(moved, key=lambda l: moved[l])
    below = [l for l in low if l in moved]
    lagging = [f"{f} {moved[f]:.3f} <= {l} {moved[l]:.3f}" for f in fc if f in moved for l in below
               if moved[f] <= moved[l]]
    holds = top in fc and not lagging
    why = (f"{top} moved most ({moved[top]:.3f}), not {' or '.join(fc)}" if top not in fc
           else "an fc layer moved less than a lower one: " + "; ".join(lagging))
    return _finding("cka_moves_fc", "1 - CKA(pretrained, fine-tuned): " + ", ".join(f"{l} {m:.3f}"
                                                                                   for l, m in moved.items()),
                    holds, why, moved=moved, most=top)


__all__ = ["Finding", "FINDING_IDS", "not_measured", "selectivity_depth", "finetune_moves_fc",
           "map_rises_with_depth", "pretrain_beats_scratch", "longer_pretraining_helps", "full_ft_beats_fc_only",
           "binarize_cheap", "distributed_conv", "sparsity_falls", "first_reaching", "lower_layers_converge_first",
           "cka_moves_fc"]
