"""Tests of the procedural demo scenes (core/demo/scenes.py)."""
from __future__ import annotations

import itertools
import json
import math
from collections import Counter

import numpy as np
import pytest

from core.demo import scenes as S
from core.errors import InputError


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def target():
    return S.generate_target(300, seed=7)


@pytest.fixture(scope="module")
def source():
    return S.generate_source(600, seed=7)


# --------------------------------------------------------------------------- determinism
def test_same_seed_same_bytes():
    a, la = S.generate_source(6, 3)
    b, lb = S.generate_source(6, 3)
    assert a.tobytes() == b.tobytes() and np.array_equal(la, lb)
    ta, tb = S.generate_target(6, 3), S.generate_target(6, 3)
    assert ta.images.tobytes() == tb.images.tobytes()
    for x, y in zip(ta.boxes, tb.boxes):
        assert x.tobytes() == y.tobytes()
    sa, sb = S.generate_scene_task(6, 3), S.generate_scene_task(6, 3)
    assert sa[0].tobytes() == sb[0].tobytes() and np.array_equal(sa[1], sb[1])


def test_start_offset_is_the_same_item():
    full, lf = S.generate_source(20, 5)
    part, lp = S.generate_source(10, 5, start=5)
    assert np.array_equal(part, full[5:15]) and np.array_equal(lp, lf[5:15])
    tf, tp = S.generate_target(20, 5), S.generate_target(10, 5, start=5)
    assert np.array_equal(tp.images, tf.images[5:15])
    assert np.array_equal(tp.image_labels, tf.image_labels[5:15])
    for i in range(10):
        assert np.array_equal(tp.boxes[i], tf.boxes[5 + i])
        assert np.array_equal(tp.box_labels[i], tf.box_labels[5 + i])
        assert np.array_equal(tp.difficult[i], tf.difficult[5 + i])
    sf, sp = S.generate_scene_task(20, 5), S.generate_scene_task(10, 5, start=5)
    assert np.array_equal(sp[0], sf[0][5:15]) and np.array_equal(sp[1], sf[1][5:15])


def test_different_seeds_and_tasks_differ():
    a, _ = S.generate_source(4, 1)
    b, _ = S.generate_source(4, 2)
    assert not np.array_equal(a, b)
    t = S.generate_target(4, 1)
    assert not np.array_equal(a, t.images)
    # no two items of one batch are the same image
    imgs = S.generate_source(30, 1)[0].reshape(30, -1)
    assert len({row.tobytes() for row in imgs}) == 30


# --------------------------------------------------------------------------- shapes and ranges
@pytest.mark.parametrize("size", [48, 64, 96])
def test_shapes_and_dtypes(size):
    imgs, labels = S.generate_source(5, 0, size=size)
    assert imgs.shape == (5, size, size, 3) and imgs.dtype == np.uint8
    assert labels.shape == (5,) and labels.dtype == np.int64
    t = S.generate_target(5, 0, size=size)
    assert t.images.shape == (5, size, size, 3) and t.images.dtype == np.uint8
    assert len(t) == len(t.boxes) == len(t.box_labels) == len(t.difficult) == 5
    assert t.image_labels.shape == (5, S.TARGET_CLASSES) and t.image_labels.dtype == bool
    for b, lab, dif in zip(t.boxes, t.box_labels, t.difficult):
        assert b.dtype == np.float32 and b.ndim == 2 and b.shape[1] == 4
        assert lab.dtype == np.int64 and dif.dtype == bool and len(b) == len(lab) == len(dif)
    simgs, slabels = S.generate_scene_task(5, 0, size=size)
    assert simgs.shape == (5, size, size, 3) and slabels.dtype == np.int64


def test_labels_in_range(source, target):
    assert source[1].min() >= 0 and source[1].max() < S.SOURCE_CLASSES
    labs = np.concatenate(target.box_labels)
    assert labs.min() >= 0 and labs.max() < S.TARGET_CLASSES
    assert all(1 <= len(b) <= S.DEFAULT_CONFIG.max_objects for b in target.boxes)
    _, sl = S.generate_scene_task(50, 7)
    assert sl.min() >= 0 and sl.max() < S.SCENE_CLASSES


def test_image_labels_match_box_labels(target):
    for i in range(len(target)):
        present = np.zeros(S.TARGET_CLASSES, bool)
        present[target.box_labels[i]] = True
        assert np.array_equal(target.image_labels[i], present)
        easy = set(target.box_labels[i][~target.difficult[i]].tolist())
        for c in np.flatnonzero(present):
            assert target.image_difficult[i, c] == (c not in easy)
        assert not target.image_difficult[i][~present].any()


def test_every_class_appears(source, target):
    assert set(source[1].tolist()) == set(range(S.SOURCE_CLASSES))
    assert set(np.concatenate(target.box_labels).tolist()) == set(range(S.TARGET_CLASSES))
    assert set(S.generate_scene_task(250, 7)[1].tolist()) == set(range(S.SCENE_CLASSES))


def test_images_are_not_degenerate(source, target):
    for imgs in (source[0][:50], target.images[:50]):
        assert imgs.reshape(len(imgs), -1).std(1).min() > 10  # textured, not flat
        assert 40 < imgs.mean() < 215


def test_difficult_fraction_is_plausible(target):
    flags = np.concatenate(target.difficult)
    assert 0.03 < flags.mean() < 0.6  # VOC 2007 has ~15-20% difficult boxes
    assert target.image_labels.any(1).all()  # every image has an annotated object


# --------------------------------------------------------------------------- boxes
def _tight(mask):
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def test_boxes_are_tight_visible_boxes():
    for index in range(40):
        item = S.render_target_item(3, index)
        size = item["image"].shape[0]
        for j, box in enumerate(item["boxes"]):
            assert 0 <= box[0] < box[2] <= size and 0 <= box[1] < box[3] <= size
            vis = item["owner"] == j
            assert vis.any()
            assert np.array_equal(box, _tight(vis))
        assert set(np.unique(item["owner"]).tolist()) <= set(range(-1, len(item["boxes"])))


@pytest.mark.parametrize("k", range(S.TARGET_CLASSES))
def test_object_box_covers_rendered_pixels(k):
    """Render each class alone on black and on white: the difference gives the object's
    coverage independently of the generator's bookkeeping."""
    cases = [dict(scale=12.0), dict(scale=24.0, rotation=20.0, aspect=1.3),
             dict(scale=40.0, rotation=-25.0, aspect=0.8),
             dict(scale=30.0, center=(3.0, 60.0), rotation=10.0)]  # truncated at the border
    for case in cases:
        black, mask, box = S.render_object(S.TARGET_RECIPES[k], background=(0, 0, 0), seed=k, **case)
        white, _, box_w = S.render_object(S.TARGET_RECIPES[k], background=(255, 255, 255), seed=k, **case)
        assert np.array_equal(box, box_w)
        coverage = 1.0 - (white.astype(float) - black.astype(float)).mean(-1) / 255.0
        assert np.abs(_tight(coverage > 0.5) - box).max() <= 1.0
        assert np.array_equal(_tight(mask), box)  # the box is the mask's tight box
        assert np.abs(_tight(coverage > 0.1) - box).max() <= 2.0  # only anti-aliasing outside
        if "center" not in case:  # untruncated: the box holds the body's scale
            x1, y1, x2, y2 = box
            assert 0.7 * case["scale"] <= max(x2 - x1, y2 - y1) <= 2.2 * case["scale"]


# --------------------------------------------------------------------------- class design
def test_recipes_are_pairwise_distinct_and_confusable():
    for recs in (S.SOURCE_RECIPES, S.TARGET_RECIPES):
        dists = [S.recipe_distance(a, b) for a, b in itertools.combinations(recs, 2)]
        assert min(dists) >= 2  # no two classes differ in a single attribute
        for a in recs:  # ... yet each has a confuser sharing two of four attributes
            assert any(S.recipe_distance(a, b) == 2 for b in recs if b is not a)
    assert min(S.recipe_distance(t, s) for t in S.TARGET_RECIPES for s in S.SOURCE_RECIPES) >= 2
    for t in S.TARGET_RECIPES:  # the target reuses source parts
        assert any(S.recipe_distance(t, s) == 2 for s in S.SOURCE_RECIPES)


def test_no_single_attribute_names_a_target_class():
    for attr in range(4):
        counts = Counter(r.attributes[attr] for r in S.TARGET_RECIPES)
        assert min(counts.values()) >= 2
        source_values = {r.attributes[attr] for r in S.SOURCE_RECIPES}
        assert set(counts) <= source_values


def test_names_and_describe():
    for names, n in ((S.SOURCE_CLASS_NAMES, S.SOURCE_CLASSES), (S.TARGET_CLASS_NAMES, S.TARGET_CLASSES),
                     (S.SCENE_CLASS_NAMES, S.SCENE_CLASSES)):
        assert len(names) == len(set(names)) == n
    info = S.describe()
    json.dumps(info)  # stored in manifests
    assert set(info["target_classes"]) == set(S.TARGET_CLASS_NAMES)
    assert set(info["scene_classes"]) == set(S.SCENE_CLASS_NAMES)
    assert info["design"]["min_distance_within_target"] == 2
    assert info["config_defaults"]["clutter"] == S.DEFAULT_CONFIG.clutter


# --------------------------------------------------------------------------- config and errors
def test_config_changes_images_and_validates():
    a = S.generate_target(3, 0).images
    b = S.generate_target(3, 0, config=S.SceneConfig(clutter=0.0, occlusion=0.0)).images
    assert not np.array_equal(a, b)
    with pytest.raises(InputError):
        S.SceneConfig(min_scale=30.0, max_scale=20.0)
    with pytest.raises(InputError):
        S.SceneConfig(occlusion=1.5)


@pytest.mark.parametrize("kwargs", [dict(n=-1, seed=0), dict(n=2, seed=-3), dict(n=2, seed=0, size=8),
                                    dict(n=2, seed=0, start=-1), dict(n=2.5, seed=0)])
def test_bad_requests_raise_input_error(kwargs):
    with pytest.raises(InputError):
        S.generate_source(**kwargs)


def test_zero_items():
    imgs, labels = S.generate_source(0, 0)
    assert imgs.shape == (0, 64, 64, 3) and labels.shape == (0,)
    t = S.generate_target(0, 0)
    assert len(t) == 0 and t.image_labels.shape == (0, S.TARGET_CLASSES)
