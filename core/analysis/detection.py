"""PASCAL VOC 2007 detection evaluation: average precision and per-class matching.

Reproduces: the PASCAL-DET metric of Agrawal et al. 2014 (Sec. 2, Tables 1, 2, 4, 8), i.e.
the VOC 2007 devkit's ``VOCevaldet`` / ``VOCap`` as ported in R-CNN's ``voc_eval.py``.

Box convention: ``(x1, y1, x2, y2)`` with *pixel edges* (0-based, half-open, e.g. the
``VOCObject.box`` of :mod:`core.data.datasets`: ``(xmin - 1, ymin - 1, xmax, ymax)`` of the XML).
Area and IoU are computed without the devkit's ``+ 1`` because the devkit's inclusive
1-based pixel indices become exactly these edges: the IoU values are identical.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from core.errors import InputError

#: Columns of one class's detections: image index, score, box.
DET_COLUMNS = ("image_index", "score", "x1", "y1", "x2", "y2")
_IOU_CHUNK = 4096


def voc_ap(recall: Any, precision: Any, use_07_metric: bool = True) -> float:
    """Average precision from a recall/precision curve, as the VOC devkit computes it.

    Reproduces: VOC 2007 devkit ``VOCevaldet`` (11-point) and ``VOCap`` (all points),
    R-CNN / py-faster-rcnn ``voc_eval.voc_ap``.

    Parameters
    ----------
    recall, precision : array-like ``[D]``
        Cumulative recall and precision after each detection, in descending-score order.
    use_07_metric : bool
        True: VOC 2007's 11-point interpolation, the mean over ``t`` in
        ``np.arange(0, 1.1, 0.1)`` of the maximum precision at recall ``>= t`` (0 when no
        point reaches ``t``). The thresholds are ``voc_eval.py``'s floats (so ``0.3`` is
        ``0.30000000000000004``: a recall of exactly 3/10 does not reach it, as in the port).
        False: the area under the precision envelope (VOC 2010+): sentinels ``(0, 0)`` and
        ``(1, 0)`` are appended, precision is made monotone from the right, and
        ``sum((r[i+1] - r[i]) * p[i+1])`` is taken where recall changes.

    Returns
    -------
    float
    """
    rec = np.asarray(recall, dtype=np.float64).ravel()
    prec = np.asarray(precision, dtype=np.float64).ravel()
    if rec.shape != prec.shape:
        raise InputError(f"recall and precision must have the same length, got {rec.shape} and {prec.shape}")
    if use_07_metric:
        thresholds = np.arange(0.0, 1.1, 0.1)
        reach = rec[None, :] >= thresholds[:, None]  # [11, D]
        best = np.where(reach, prec[None, :], -np.inf).max(axis=1, initial=-np.inf)
        return float(np.where(np.isfinite(best), best, 0.0).sum() / 11.0)
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


@dataclass
class DetectionEvalResult:
    """Per-class VOC evaluation.

    ``ap[c]`` is NaN for a class without any non-difficult ground truth (it has no
    recall); ``map`` is the mean over the other classes.
    """

    ap: np.ndarray  # [C]
    map: float
    num_positives: np.ndarray  # [C] non-difficult ground-truth boxes
    recall: list[np.ndarray]  # per class, [D_c]
    precision: list[np.ndarray]  # per class, [D_c]
    tp: list[np.ndarray]  # per class, [D_c] bool in descending-score order
    fp: list[np.ndarray]  # per class, [D_c] bool (both False: matched a difficult box)


def _as_dets(dets: Any, c: int) -> np.ndarray:
    a = np.asarray(dets, dtype=np.float64)
    if a.size == 0:
        return np.zeros((0, 6))
    if a.ndim != 2 or a.shape[1] != 6:
        raise InputError(f"detections of class {c} must be [D, 6] ({', '.join(DET_COLUMNS)}), got {a.shape}")
    if not np.isfinite(a).all():
        raise InputError(f"detections of class {c} contain NaN or infinite values")
    return a


def _best_overlap(boxes: np.ndarray, img: np.ndarray, gt_boxes: np.ndarray,
                  gt_img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Max IoU of each detection with the same-image ground truth of its class, and which box.

    ``jmax`` is -1 where the image has no ground truth of the class.
    """
    from torchvision.ops import box_iou

    ovmax = np.full(len(boxes), -np.inf)
    jmax = np.full(len(boxes), -1, np.int64)
    if len(gt_boxes) == 0:
        return ovmax, jmax
    g = torch.from_numpy(gt_boxes)
    for s in range(0, len(boxes), _IOU_CHUNK):
        iou = box_iou(torch.from_numpy(boxes[s:s + _IOU_CHUNK]), g).numpy()
        iou[img[s:s + _IOU_CHUNK, None] != gt_img[None, :]] = -np.inf
        jmax[s:s + _IOU_CHUNK] = iou.argmax(1)  # first maximum, as MATLAB's max and np.argmax
        ovmax[s:s + _IOU_CHUNK] = iou.max(1)
    jmax[~np.isfinite(ovmax)] = -1
    return ovmax, jmax


def match_class(dets: np.ndarray, gt_boxes: np.ndarray, gt_image_index: np.ndarray, gt_difficult: np.ndarray,
                iou: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy VOC matching of one class's detections.

    Detections are taken by descending score (stable sort: ties keep their input order).
    Each one's best-overlapping ground-truth box of the same image is found (over all boxes,
    difficult and already matched ones included, as the devkit does); at IoU ``>= iou`` it is
    a TP if that box is not difficult and not yet matched, a FP if already matched (a
    duplicate), and neither if the box is difficult; below ``iou`` it is a FP.

    Vectorised: the best box of a detection does not depend on earlier matches, so the TPs
    are exactly the first detection (in score order) of each matched non-difficult box.

    Returns
    -------
    order, tp, fp : ``[D]`` the score order, and bool TP / FP flags in that order.
    """
    order = np.argsort(-dets[:, 1], kind="stable")
    d = dets[order]
    ovmax, jmax = _best_overlap(d[:, 2:6], d[:, 0].astype(np.int64), gt_boxes, gt_image_index)
    hit = ovmax >= iou
    diff_hit = hit & gt_difficult[np.maximum(jmax, 0)] if len(gt_boxes) else np.zeros(len(d), bool)
    cand = np.flatnonzero(hit & ~diff_hit)
    tp = np.zeros(len(d), bool)
    if len(cand):
        _, first = np.unique(jmax[cand], return_index=True)
        tp[cand[first]] = True
    fp = ~tp & ~diff_hit
    return order, tp, fp


def evaluate_detections(dets_per_class: Sequence[Any], gt_boxes: Any, gt_labels: Any, gt_difficult: Any,
                        gt_image_index: Any, iou: float = 0.5, use_07_metric: bool = True) -> DetectionEvalResult:
    """VOC 2007 detection AP per class and mAP.

    Reproduces: PASCAL-DET evaluation (VOC 2007 devkit ``VOCevaldet``; R-CNN ``voc_eval.py``).

    Parameters
    ----------
    dets_per_class : sequence of ``[D_c, 6]`` arrays, one per class
        Columns ``(image_index, score, x1, y1, x2, y2)``; an empty array for no detections.
    gt_boxes : ``[B, 4]`` float, pixel-edge boxes (see the module docstring)
    gt_labels : ``[B]`` int class of each box, in ``[0, C)``
    gt_difficult : ``[B]`` bool; difficult boxes are not counted as positives and a detection
        matched to one is neither a TP nor a FP
    gt_image_index : ``[B]`` int image of each box
    iou : float
        Overlap needed for a match (0.5 in VOC); the test is ``IoU >= iou`` as the devkit's.
    use_07_metric : bool
        11-point interpolated AP (VOC 2007, the paper's) or the all-points area.

    Returns
    -------
    DetectionEvalResult
        Precision is ``tp / max(tp + fp, eps)`` as in ``voc_eval.py``.
    """
    boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(gt_labels, dtype=np.int64).ravel()
    difficult = np.asarray(gt_difficult, dtype=bool).ravel()
    img = np.asarray(gt_image_index, dtype=np.int64).ravel()
    if not len(boxes) == len(labels) == len(difficult) == len(img):
        raise InputError(f"ground truth arrays differ in length: boxes {len(boxes)}, labels {len(labels)}, "
                         f"difficult {len(difficult)}, image_index {len(img)}")
    num_classes = len(dets_per_class)
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise InputError(f"ground-truth labels must lie in [0, {num_classes}) (one detection array per class)")
    if not 0 < iou <= 1:
        raise InputError(f"iou must be in (0, 1], got {iou}")
    aps, npos, recs, precs, tps, fps = [], [], [], [], [], []
    for c in range(num_classes):
        dets = _as_dets(dets_per_class[c], c)
        m = labels == c
        _, tp, fp = match_class(dets, boxes[m], img[m], difficult[m], iou)
        n = int((~difficult[m]).sum())
        ctp, cfp = np.cumsum(tp), np.cumsum(fp)
        rec = ctp / n if n else np.full(len(tp), np.nan)
        prec = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
        aps.append(voc_ap(rec, prec, use_07_metric) if n else np.nan)
        npos.append(n), recs.append(rec), precs.append(prec), tps.append(tp), fps.append(fp)
    ap = np.asarray(aps, dtype=np.float64)
    mean = float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan")
    return DetectionEvalResult(ap, mean, np.asarray(npos, np.int64), recs, precs, tps, fps)
