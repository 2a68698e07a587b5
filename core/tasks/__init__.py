"""The paper's task protocols that run networks end to end, beyond one layer's features.

- :mod:`.rcnn` — PASCAL-DET: R-CNN detection (proposals, warped regions, per-class SVMs with
  hard negatives, NMS, VOC AP) and the registry of detection-annotation loaders
"""
