"""VOC 2007 AP and detection matching (core.analysis.detection) against hand-computed answers
and a slow loop port of the devkit's logic written here independently."""
from __future__ import annotations

import numpy as np
import pytest

from core.analysis import evaluate_detections, voc_ap
from core.errors import InputError


# --------------------------------------------------------------------------- slow references
def ref_voc_ap(rec, prec, use_07_metric=True):
    """Line by line as py-faster-rcnn's voc_eval.voc_ap."""
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            if np.sum(rec >= t) == 0:
                p = 0
            else:
                p = np.max(prec[rec >= t])
            ap = ap + p / 11.0
        return ap
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])


def ref_iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def ref_eval_class(dets, gt_boxes, gt_img, gt_diff, thr=0.5, use_07=True):
    """The devkit's VOCevaldet loop for one class (plain python)."""
    npos = int(sum(not d for d in gt_diff))
    order = sorted(range(len(dets)), key=lambda k: -dets[k][1])  # python's sort is stable
    detected = [False] * len(gt_boxes)
    tp, fp = [], []
    for k in order:
        img, _, *box = dets[k]
        ovmax, jmax = -np.inf, -1
        for j, g in enumerate(gt_boxes):
            if gt_img[j] != img:
                continue
            o = ref_iou(box, g)
            if o > ovmax:
                ovmax, jmax = o, j
        if ovmax >= thr:
            if gt_diff[jmax]:
                tp.append(0), fp.append(0)
            elif not detected[jmax]:
                detected[jmax] = True
                tp.append(1), fp.append(0)
            else:
                tp.append(0), fp.append(1)
        else:
            tp.append(0), fp.append(1)
    ctp, cfp = np.cumsum(tp, dtype=float), np.cumsum(fp, dtype=float)
    if npos == 0:
        return float("nan")
    rec = ctp / npos
    prec = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
    return ref_voc_ap(rec, prec, use_07)


# --------------------------------------------------------------------------- voc_ap
def test_voc_ap_11_point_by_hand():
    # 4 positives; detections TP, FP, TP, TP  ->  recall .25 .25 .5 .75, precision 1 .5 .667 .75
    rec = np.array([0.25, 0.25, 0.5, 0.75])
    prec = np.array([1.0, 0.5, 2 / 3, 0.75])
    # t = 0, .1, .2 : max precision at recall >= t over all points = 1.0        -> 3 * 1.0
    # t = .3, .4, .5: points with recall .5, .75 -> max(.667, .75) = .75         -> 3 * .75
    # t = .6, .7    : only recall .75 -> .75                                     -> 2 * .75
    # t = .8, .9, 1 : nothing reaches                                            -> 0
    expected = (3 * 1.0 + 5 * 0.75) / 11
    assert voc_ap(rec, prec, use_07_metric=True) == pytest.approx(expected, abs=1e-12)


def test_voc_ap_all_points_by_hand():
    rec = np.array([0.25, 0.25, 0.5, 0.75])
    prec = np.array([1.0, 0.5, 2 / 3, 0.75])
    # envelope from the right: [1, .75, .75, .75] at recall [.25, .25, .5, .75], then 0 at 1
    # area = .25 * 1 + (.5 - .25) * .75 + (.75 - .5) * .75 + (1 - .75) * 0 = .25 + .1875 + .1875
    assert voc_ap(rec, prec, use_07_metric=False) == pytest.approx(0.625, abs=1e-12)


def test_voc_ap_perfect_and_empty():
    rec = np.array([0.5, 1.0])
    prec = np.array([1.0, 1.0])
    assert voc_ap(rec, prec, True) == pytest.approx(1.0)  # 11 thresholds all reached at precision 1
    assert voc_ap(rec, prec, False) == pytest.approx(1.0)
    assert voc_ap(np.zeros(0), np.zeros(0), True) == 0.0
    assert voc_ap(np.zeros(0), np.zeros(0), False) == 0.0


def test_voc_ap_threshold_floats_as_voc_eval():
    # recall exactly 3/10 (0.3) does not reach voc_eval's threshold 0.30000000000000004:
    # thresholds 0, .1, .2 get precision 1 -> 3/11, the rest 0
    assert voc_ap(np.array([0.3]), np.array([1.0]), True) == pytest.approx(3 / 11)


def test_voc_ap_matches_reference_on_random_curves():
    rng = np.random.default_rng(3)
    for _ in range(50):
        n = int(rng.integers(1, 40))
        tp = rng.random(n) < 0.5
        npos = int(tp.sum() + rng.integers(0, 5)) or 1
        ctp, cfp = np.cumsum(tp), np.cumsum(~tp)
        rec, prec = ctp / npos, ctp / np.maximum(ctp + cfp, 1e-12)
        for m in (True, False):
            assert voc_ap(rec, prec, m) == pytest.approx(ref_voc_ap(rec, prec, m), abs=1e-12)


def test_voc_ap_rejects_mismatched_lengths():
    with pytest.raises(InputError, match="same length"):
        voc_ap(np.zeros(3), np.zeros(2))


# --------------------------------------------------------------------------- matching
def _det(img, score, box):
    return [img, score, *box]


def test_evaluate_by_hand_with_duplicate_and_miss():
    # one class, 2 images, 3 GT boxes; 4 detections
    gt = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10]], float)
    gt_img = np.array([0, 0, 1])
    dets = np.array([_det(0, 0.9, (0, 0, 10, 10)),      # TP (GT 0)
                     _det(0, 0.8, (0, 0, 10, 11)),      # duplicate of GT 0 (IoU 100/110): FP
                     _det(1, 0.7, (50, 50, 60, 60)),    # no overlap: FP
                     _det(1, 0.6, (0, 0, 10, 10))])     # TP (GT 2)
    r = evaluate_detections([dets], gt, [0, 0, 0], [False] * 3, gt_img)
    assert r.tp[0].tolist() == [True, False, False, True]
    assert r.fp[0].tolist() == [False, True, True, False]
    # recall 1/3 1/3 1/3 2/3, precision 1 .5 1/3 .5
    # t = 0..0.3 (4 thresholds; 1/3 >= 0.30000000000000004): max prec = 1   -> 4
    # t = .4, .5, .6 : only recall 2/3 -> .5                                   -> 1.5
    # t = .7 .. 1: none                                                         -> 0
    assert r.ap[0] == pytest.approx((4 * 1.0 + 3 * 0.5) / 11)
    assert r.map == pytest.approx(r.ap[0])
    assert r.num_positives.tolist() == [3]


def test_difficult_is_neither_tp_nor_fp_and_not_counted():
    gt = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float)
    dets = np.array([_det(0, 0.9, (20, 20, 30, 30)),   # on the difficult box: ignored
                     _det(0, 0.5, (0, 0, 10, 10))])    # TP
    r = evaluate_detections([dets], gt, [0, 0], [False, True], [0, 0])
    assert r.tp[0].tolist() == [False, True] and r.fp[0].tolist() == [False, False]
    assert r.num_positives.tolist() == [1]
    # recall 0, 1; precision 0 (0/eps), 1 -> every threshold reaches precision 1 -> AP 1
    assert r.ap[0] == pytest.approx(1.0)


def test_best_box_already_taken_is_fp_even_if_another_overlaps():
    # devkit semantics: a detection is matched to its *best* GT only; if that one is taken it is
    # a FP although a second GT also overlaps > 0.5
    gt = np.array([[0, 0, 10, 10], [0, 0, 10, 12]], float)
    dets = np.array([_det(0, 0.9, (0, 0, 10, 10)), _det(0, 0.8, (0, 0, 10, 10))])
    r = evaluate_detections([dets], gt, [0, 0], [False, False], [0, 0])
    assert r.tp[0].tolist() == [True, False] and r.fp[0].tolist() == [False, True]


def test_ties_keep_input_order():
    gt = np.array([[0, 0, 10, 10]], float)
    dets = np.array([_det(0, 0.5, (40, 40, 50, 50)), _det(0, 0.5, (0, 0, 10, 10))])
    r = evaluate_detections([dets], gt, [0], [False], [0])
    assert r.tp[0].tolist() == [False, True]
    # recall 0, 1; precision 0, .5 -> every threshold has max precision .5
    assert r.ap[0] == pytest.approx(0.5)


def test_iou_threshold_is_inclusive():
    gt = np.array([[0, 0, 10, 10]], float)
    dets = np.array([_det(0, 1.0, (0, 0, 10, 5))])  # IoU exactly 50/100
    assert evaluate_detections([dets], gt, [0], [False], [0]).tp[0].tolist() == [True]


def test_empty_classes():
    gt = np.array([[0, 0, 10, 10]], float)
    r = evaluate_detections([np.zeros((0, 6)), np.array([_det(0, 1.0, (0, 0, 10, 10))])], gt, [0], [False], [0])
    assert r.ap[0] == 0.0                      # positives but no detections
    assert np.isnan(r.ap[1])                   # detections but no ground truth: undefined
    assert r.map == 0.0                        # mean over classes with positives only


def test_matches_reference_on_random_scenes():
    rng = np.random.default_rng(0)
    for trial in range(15):
        num_classes, num_images = 3, 6
        nb = int(rng.integers(1, 20))
        xy = rng.uniform(0, 40, (nb, 2))
        gt = np.concatenate([xy, xy + rng.uniform(5, 20, (nb, 2))], 1).round()
        labels = rng.integers(0, num_classes, nb)
        diff = rng.random(nb) < 0.2
        img = rng.integers(0, num_images, nb)
        dets = []
        for c in range(num_classes):
            # jittered copies of GT boxes (duplicates included) plus random boxes; rounded scores give ties
            src = rng.integers(0, nb, 15)
            jit = gt[src] + rng.normal(0, 2, (15, 4))
            rnd = rng.uniform(0, 50, (5, 2))
            boxes = np.concatenate([jit, np.concatenate([rnd, rnd + 10], 1)])
            ims = np.concatenate([img[src], rng.integers(0, num_images, 5)])
            scores = rng.integers(0, 6, len(boxes)) / 5.0
            dets.append(np.column_stack([ims, scores, boxes]))
        for use07 in (True, False):
            r = evaluate_detections(dets, gt, labels, diff, img, use_07_metric=use07)
            for c in range(num_classes):
                m = labels == c
                ref = ref_eval_class(dets[c].tolist(), gt[m].tolist(), img[m].tolist(), diff[m].tolist(),
                                     use_07=use07)
                if np.isnan(ref):
                    assert np.isnan(r.ap[c])
                else:
                    assert r.ap[c] == pytest.approx(ref, abs=1e-12), (trial, c, use07)


def test_bad_input_is_named():
    with pytest.raises(InputError, match=r"\[D, 6\]"):
        evaluate_detections([np.zeros((2, 5))], np.zeros((0, 4)), [], [], [])
    with pytest.raises(InputError, match="differ in length"):
        evaluate_detections([np.zeros((0, 6))], np.zeros((2, 4)), [0], [False, False], [0, 0])
    with pytest.raises(InputError, match="labels must lie"):
        evaluate_detections([np.zeros((0, 6))], np.zeros((1, 4)), [3], [False], [0])
