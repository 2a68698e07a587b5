"""The headline-finding rules (the paper's ten and CKA's) on hand-made numbers: each verdict worked out by
hand from the rule."""
from __future__ import annotations

import json

import pytest

from core.analysis import findings as fnd

LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")


def _aue(*values):
    return dict(zip(LAYERS, values))


def test_ids_titles_and_papers_cover_every_finding():
    assert len(fnd.FINDING_IDS) == 11 and len(set(fnd.FINDING_IDS)) == 11
    for fid in fnd.FINDING_IDS:
        assert fnd.TITLES[fid] and fnd.PAPER[fid]


def test_selectivity_depth():
    ft = _aue(3.0, 2.9, 2.5, 2.2, 2.0, 1.5, 1.2)
    pre = _aue(3.1, 3.0, 2.7, 2.5, 2.4, 2.0, 1.9)
    assert fnd.selectivity_depth(ft, pre).holds is True
    flat_pre = _aue(2.0, 3.0, 2.7, 2.5, 2.4, 2.0, 2.1)          # pretrained fc7 2.1 > conv1 2.0
    f = fnd.selectivity_depth(ft, flat_pre)
    assert f.holds is False and "pretrained" in f.why and "fine-tuned" not in f.why
    assert fnd.selectivity_depth(_aue(1.0, 1, 1, 1, 1, 1, 1.0), pre).holds is False  # equal: no fall


def test_finetune_moves_fc():
    pre = _aue(3.0, 2.9, 2.5, 2.2, 2.0, 1.9, 1.8)
    ft = _aue(3.0, 2.95, 2.45, 2.2, 1.9, 1.4, 1.0)               # |Δ|: fc7 .8, fc6 .5, conv5 .1
    f = fnd.finetune_moves_fc(ft, pre)
    assert f.holds is True and f.numbers["delta"]["fc7"] == pytest.approx(-0.8)
    ft2 = _aue(3.0, 3.6, 2.5, 2.2, 2.0, 1.4, 1.8)                # |Δ|: conv2 .7, fc6 .5, fc7 0
    f2 = fnd.finetune_moves_fc(ft2, pre)
    assert f2.holds is False and "conv2" in f2.why
    # sign does not matter: a rise counts like a fall
    assert fnd.finetune_moves_fc(_aue(3.0, 2.9, 2.5, 2.2, 2.0, 2.5, 2.6), pre).holds is True


def test_map_rises_with_depth_needs_every_task():
    good = {"cls": {"conv1": 0.25, "fc7": 0.40}, "detgt": {"conv1": 0.70, "fc7": 0.85}}
    assert fnd.map_rises_with_depth(good).holds is True
    bad = {"cls": {"conv1": 0.25, "fc7": 0.40}, "detgt": {"conv1": 0.75, "fc7": 0.42}}
    f = fnd.map_rises_with_depth(bad)
    assert f.holds is False and "detgt" in f.why and "cls" not in f.why
    assert fnd.map_rises_with_depth({}).holds is False


@pytest.mark.parametrize("rule,a,b,holds", [
    (fnd.pretrain_beats_scratch, 0.90, 0.86, True), (fnd.pretrain_beats_scratch, 0.86, 0.90, False),
    (fnd.full_ft_beats_fc_only, 0.90, 0.61, True), (fnd.full_ft_beats_fc_only, 0.61, 0.61, False),
])
def test_pairwise_comparisons(rule, a, b, holds):
    assert rule(a, b).holds is holds


def test_longer_pretraining_helps():
    f = fnd.longer_pretraining_helps(0.88, 0.80, 80, 5000)
    assert f.holds is True and "5000" in f.measured and "80" in f.measured
    assert fnd.longer_pretraining_helps(0.79, 0.80, 80, 5000).holds is False


def test_binarize_cheap_threshold_is_five_points():
    assert fnd.binarize_cheap(0.656, 0.608).holds is True       # paper: -4.8
    assert fnd.binarize_cheap(0.70, 0.649).holds is False       # 5.1 points
    assert fnd.binarize_cheap(0.70, 0.651).holds is True        # 4.9 points
    assert fnd.binarize_cheap(0.70, 0.72).holds is True         # a gain is cheap


def test_distributed_conv_both_conditions():
    full = [0.8] * 10
    spread = [0.5] * 10                                           # no class has a 0.9 x full single filter
    assert fnd.distributed_conv([8] * 10, 64, spread, full).holds is True      # 8 >= 6.4
    f = fnd.distributed_conv([6] * 10, 64, spread, full)                       # 6 < 6.4
    assert f.holds is False and "median k90" in f.why
    gm = [0.73] + [0.5] * 9                                       # one class of 10: 10% is not < 10%
    g = fnd.distributed_conv([8] * 10, 64, gm, full)
    assert g.holds is False and g.numbers["grandmother_classes"] == 1
    assert fnd.distributed_conv([8] * 11, 64, [0.73] + [0.5] * 10, [0.8] * 11).holds is True  # 1 of 11
    assert fnd.distributed_conv([1, 9, 40], 64, [0.1] * 3, [0.8] * 3).numbers["median_k90"] == 9


def test_sparsity_falls():
    assert fnd.sparsity_falls({"conv1": 87.5, "conv5": 40.0, "fc7": 21.6}).holds is True
    f = fnd.sparsity_falls({"conv1": 50.0, "conv5": 60.0, "fc7": 21.6})
    assert f.holds is False and "conv5" in f.why and "fc7" not in f.why


def test_first_reaching_and_convergence():
    its = [0, 20, 80, 320, 5000]
    assert fnd.first_reaching(its, [0.23, 0.23, 0.24, 0.24, 0.25]) == 0      # 0.23 >= 0.9 * 0.25
    assert fnd.first_reaching(its, [0.10, 0.20, 0.30, 0.37, 0.40]) == 320    # 0.37 >= 0.9 * 0.40 > 0.30
    assert fnd.first_reaching([80, 0, 20], [0.5, 0.1, 0.46]) == 20           # order of snapshots
    f = fnd.lower_layers_converge_first(its, {"conv1": [0.23, 0.23, 0.24, 0.24, 0.25],
                                              "fc7": [0.10, 0.20, 0.30, 0.37, 0.40]})
    assert f.holds is True and f.numbers["reached"] == {"conv1": 0, "fc7": 320}
    same = fnd.lower_layers_converge_first(its, {"conv1": [0.1, 0.2, 0.3, 0.4, 0.4], "fc7": [0.1, 0.2, 0.3, 0.4, 0.4]})
    assert same.holds is False and "same snapshot" in same.why


def test_rows_are_json_ready_and_why_only_when_not_holding():
    rows = [fnd.binarize_cheap(0.7, 0.69).row(), fnd.binarize_cheap(0.7, 0.5).row(),
            fnd.not_measured("pretrain_beats_scratch", "needs demo:scratch").row()]
    json.dumps(rows)
    assert rows[0]["why"] == "" and rows[1]["why"] and rows[2]["holds"] is None
    assert {"id", "paper", "measured", "holds"} <= set(rows[0])


def test_cka_moves_fc():
    cka = _aue(0.99, 0.9, 0.85, 0.6, 0.5, 0.45, 0.55)            # 1 - CKA: fc6 .55 most; fc7 .45 > conv3 .15
    f = fnd.cka_moves_fc(cka)
    assert f.holds is True and f.numbers["most"] == "fc6" and f.numbers["moved"]["conv1"] == pytest.approx(0.01)
    f2 = fnd.cka_moves_fc(_aue(0.99, 0.9, 0.85, 0.6, 0.3, 0.45, 0.55))          # conv5 moved most (.7)
    assert f2.holds is False and "conv5 moved most" in f2.why
    f3 = fnd.cka_moves_fc(_aue(0.99, 0.9, 0.5, 0.6, 0.5, 0.4, 0.6))             # fc7 .4 <= conv3 .5
    assert f3.holds is False and "fc7 0.400 <= conv3 0.500" in f3.why
