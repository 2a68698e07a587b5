"""SUN-CLS protocol (core.analysis.scene_cls), the SUN397 loader on a tree written here, and the
scene task through the service on the tiny demo."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.analysis import scene_cls
from core.data.datasets import SUNImageSet, load_dataset, sun397, sun397_partitions
from core.errors import DataMissingError, InputError


# --------------------------------------------------------------------------- protocol
def test_stratified_split_fractions_per_class():
    labels = np.repeat([0, 1, 2], [20, 40, 10])
    part = scene_cls.stratified_split(labels, seed=3)
    for c, n in ((0, 20), (1, 40), (2, 10)):
        m = labels == c
        # 50% / 10% / 40%, rounded down for train and val
        assert (part[m] == 0).sum() == n // 2
        assert (part[m] == 1).sum() == n // 10
        assert (part[m] == 2).sum() == n - n // 2 - n // 10
    assert not np.array_equal(part, scene_cls.stratified_split(labels, seed=4))
    np.testing.assert_array_equal(part, scene_cls.stratified_split(labels, seed=3))
    with pytest.raises(InputError, match="fractions"):
        scene_cls.stratified_split(labels, 0, (0.5, 0.5, 0.5))


def test_mean_class_accuracy_by_hand():
    y = np.array([0, 0, 0, 0, 1, 1, 2])
    p = np.array([0, 0, 0, 1, 1, 0, 2])
    # class 0: 3/4, class 1: 1/2, class 2: 1/1 -> (0.75 + 0.5 + 1) / 3 = 0.75; plain accuracy would be 5/7
    assert scene_cls.mean_class_accuracy(p, y, 3) == pytest.approx(0.75)
    assert scene_cls.mean_class_accuracy(p, y, 4) == pytest.approx(0.75)  # absent class 3 skipped


def test_ridge_primal_matches_sklearn_ridge():
    from sklearn.linear_model import Ridge

    rng = np.random.default_rng(0)
    x, xe = rng.normal(size=(60, 5)), rng.normal(size=(7, 5))
    y = np.eye(3)[rng.integers(0, 3, 60)]
    got = scene_cls.ridge_scores(x, y, xe, [0.5, 5.0])  # 60 > 5: primal path
    for i, lam in enumerate((0.5, 5.0)):
        ref = Ridge(alpha=lam, fit_intercept=True).fit(x, y * 2 - 1).predict(xe)
        np.testing.assert_allclose(got[i], ref, atol=1e-9)
    wide = rng.normal(size=(6, 20))
    got = scene_cls.ridge_scores(wide, y[:6], wide[:2], [1.0])  # 6 <= 20: dual path
    ref = Ridge(alpha=1.0, fit_intercept=True).fit(wide, y[:6] * 2 - 1).predict(wide[:2])
    np.testing.assert_allclose(got[0], ref, atol=1e-8)


def test_scene_classification_separable_and_chance():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(4), 30)
    centres = np.eye(4) * 10
    x = centres[labels] + rng.normal(0, 0.5, (120, 4))
    r = scene_cls.scene_classification(x, labels, 4, seeds=range(3))
    assert r.mean == 1.0 and r.std == 0.0 and len(r.accuracies) == 3 and r.seeds == (0, 1, 2)
    noise = rng.normal(size=(120, 4))
    r = scene_cls.scene_classification(noise, labels, 4, seeds=range(5))
    assert 0.0 <= r.mean < 0.6 and r.std > 0  # near chance (0.25), varies over splits


def test_scene_classification_with_given_partitions():
    labels = np.array([0, 0, 1, 1, 0, 1])
    x = np.array([[0.0], [0.1], [5.0], [5.1], [0.2], [4.9]])
    part = np.array([0, 0, 0, 0, 2, 2])
    r = scene_cls.scene_classification(x, labels, 2, partitions=[part, part])
    assert r.mean == 1.0 and len(r.accuracies) == 2
    with pytest.raises(InputError, match="training and test"):
        scene_cls.scene_classification(x, labels, 2, partitions=[np.zeros(6, int)])


# --------------------------------------------------------------------------- SUN397 loader
@pytest.fixture
def sun_root(tmp_path: Path) -> Path:
    d = tmp_path / "SUN397"
    classes = ["/a/abbey", "/b/beach", "/b/bedroom"]
    (d).mkdir()
    (d / "ClassName.txt").write_text("".join(c + "\n" for c in classes))
    rng = np.random.default_rng(0)
    for k, c in enumerate(classes):
        (d / c.lstrip("/")).mkdir(parents=True)
        for j in range(4):
            a = np.full((24, 32, 3), 60 * k, np.uint8) + rng.integers(0, 20, (24, 32, 3), dtype=np.uint8)
            Image.fromarray(a).save(d / c.lstrip("/") / f"sun_{k}{j}.jpg")
    parts = tmp_path / "Partitions"
    parts.mkdir()
    (parts / "Training_01.txt").write_text("".join(f"{c}/sun_{k}{j}.jpg\n" for k, c in enumerate(classes) for j in (0, 1)))
    (parts / "Testing_01.txt").write_text("".join(f"{c}/sun_{k}{j}.jpg\n" for k, c in enumerate(classes) for j in (2,)))
    return tmp_path


def test_sun397_loader_and_partitions(sun_root):
    s = sun397(sun_root)
    assert isinstance(s, SUNImageSet) and len(s) == 12 and s.class_names == ("abbey", "beach", "bedroom")
    assert s.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert s.rel_paths[0] == "/a/abbey/sun_00.jpg"
    assert s.image(5).size == (32, 24)
    assert sun397(sun_root / "SUN397").fingerprint == s.fingerprint
    assert load_dataset(f"sun397:{sun_root}").fingerprint == s.fingerprint
    parts = sun397_partitions(sun_root, s)
    assert len(parts) == 1
    p = parts[0]
    assert (p == 0).sum() == 6 and (p == 2).sum() == 3 and (p == -1).sum() == 3
    assert p[list(s.rel_paths).index("/b/beach/sun_12.jpg")] == 2


def test_sun397_missing_and_bad_partition(tmp_path, sun_root):
    with pytest.raises(DataMissingError, match="ClassName.txt"):
        sun397(tmp_path / "empty")
    (sun_root / "Partitions" / "Testing_01.txt").write_text("/a/abbey/sun_missing.jpg\n")
    with pytest.raises(DataMissingError, match="not found"):
        sun397_partitions(sun_root, sun397(sun_root))
    s = sun397(sun_root)
    for f in (sun_root / "Partitions").iterdir():
        f.unlink()
    assert sun397_partitions(sun_root, s) == []


# --------------------------------------------------------------------------- the demo's scene task
def test_demo_scene_accuracy_and_paper_table(demo_env):
    from core import service

    r = service.scene_accuracy("demo:finetuned", "demo-scene", "fc7", seeds=range(3))
    assert len(r["accuracies"]) == 3 and 0 <= r["mean"] <= 1
    assert r["std"] == pytest.approx(float(np.std(r["accuracies"])))
    assert r["protocol"].startswith("seeded")
    # by hand from the stored features: pool train+test, the same three splits
    f_tr = service.features("demo:finetuned", "demo:scene-train", "fc7").array()
    f_te = service.features("demo:finetuned", "demo:scene-test", "fc7").array()
    x = np.concatenate([f_tr, f_te]).astype(np.float32)
    y = np.concatenate([service.load_set("demo:scene-train").labels, service.load_set("demo:scene-test").labels])
    for s, acc in zip(range(3), r["accuracies"]):
        part = scene_cls.stratified_split(y, s)
        assert acc == pytest.approx(scene_cls.split_accuracy(x, y, part, service.load_set("demo:scene-train").num_classes))
    t1 = service.paper_table(1, "scene")
    col = service.paper_column(service.task("demo-scene"))
    assert list(t1["setting"]) == ["scratch", "pre-train", "fine-tune"]
    assert list(t1[col]) == ["40.4 ± 0.2", "53.1 ± 0.2", "56.8 ± 0.2"]
    assert "SUN-CLS" in col and "paper" in col
    assert all("±" in v for v in t1["measured (%)"])
    with pytest.raises(InputError, match="Table 8"):
        service.paper_table(8, "scene")


def test_register_sun397_uses_official_partitions(sun_root, tmp_cache):
    from core import service

    t = service.register_sun397(str(sun_root))
    assert service.task("sun397").kind == "scene" and t.paper == "SUN-CLS"
    parts = service.scene_tasks._scene_partitions(t, 12)
    assert parts is not None and len(parts) == 1 and (parts[0] == 2).sum() == 3
