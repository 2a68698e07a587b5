"""The Ray backend (core.store.ray_backend) and the shard-reducing analyses (core.analysis.sharded).

Fast tests build sharded stores and shard lists without Ray; the Ray tests start a local
Ray (2 CPUs) once for the module and hold everything bit for bit against the local path.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from core import analysis
from core.store import ray_backend as distributed
from core.store import extraction
from core.analysis import sharded
from core.data.datasets import ArrayImageSet
from core.errors import InputError
from core.data.models import build_demo

N, CLASSES = 150, 3


def _responses(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """ReLU-like float16 responses with many exact ties and zeros."""
    rng = np.random.default_rng(seed)
    x = np.maximum(rng.normal(size=shape), 0).astype(np.float16)
    x[rng.random(shape) < 0.15] = np.float16(0.5)
    return x


def _blocks(x: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    cuts = np.cumsum(sizes)[:-1]
    return np.split(x, cuts)


# --------------------------------------------------------------------------- no Ray
@pytest.mark.parametrize("shape", [(N, 8, 4, 4), (N, 12), (N, 6, 16, 16)])
@pytest.mark.parametrize("sizes", [[64, 64, 22], [37, 1, 112]])
def test_shard_reducers_equal_whole_array(shape, sizes):
    """Sharded entropy/AuE/AP/sparsity/ablations equal the single-array functions.

    (N, 6, 16, 16) has 38400 samples per filter, so the local entropy uses its float16
    lookup-table path; the others its float64 path.
    """
    x = _responses(shape, seed=len(shape) + sizes[0])
    lab = np.random.default_rng(5).integers(0, CLASSES, N)
    blocks = _blocks(x, sizes)
    assert np.array_equal(sharded.entropy_curves_sharded(blocks, lab, CLASSES, 40),
                          analysis.entropy_curves(x, lab, CLASSES, 40))
    assert np.array_equal(sharded.aue_sharded(blocks, lab, CLASSES, 40), analysis.aue(x, lab, CLASSES, 40))
    scores = analysis.spatial_max(x).astype(np.float32) if x.ndim == 4 else x
    ap = sharded.class_filter_ap_sharded(blocks, lab, CLASSES)
    assert np.array_equal(ap, analysis.class_filter_ap(scores, lab, CLASSES))
    for c, f in [(0, 0), (2, scores.shape[1] - 1)]:   # and scikit-learn, independently
        assert abs(ap[c, f] - average_precision_score(lab == c, scores[:, f].astype(np.float64))) <= 1e-12
    assert np.array_equal(sharded.nonzero_fraction_sharded(blocks), analysis.nonzero_fraction(x))
    got, want = sharded.sparsity_summary_sharded(blocks), analysis.sparsity_summary(x)
    assert abs(got["mean"] - want["mean"]) <= 1e-12 and abs(got["std"] - want["std"]) <= 1e-12
    np.testing.assert_allclose(sharded.class_nonzero_fraction_sharded(blocks, lab, CLASSES),
                               analysis.class_nonzero_fraction(x, lab, CLASSES), rtol=0, atol=1e-12)
    for name, fn in analysis.ablation_transforms(x.ndim).items():
        assert np.array_equal(sharded.ablation_features_sharded(blocks, name, seed=3), fn(x, 3)), name


def test_sparsity_moments_against_hand_computed():
    """Two shards of known fractions: 0/4, 2/4 | 4/4 -> mean 0.5, population std sqrt(1/6)."""
    a = np.array([[0, 0, 0, 0], [1, 0, 2, 0]], dtype=np.float16)
    b = np.array([[1, 1, 1, 1]], dtype=np.float16)
    s = sharded.sparsity_summary_sharded([a, b])
    assert s["mean"] == pytest.approx(0.5, abs=1e-15) and s["std"] == pytest.approx(np.sqrt(1 / 6), abs=1e-15)


def test_multilabel_ap_and_missing_class():
    x = _responses((N, 10), seed=9)
    rng = np.random.default_rng(2)
    labels = rng.random((N, 4)) < 0.3
    labels[:, 3] = False                                   # no positives: AP 0 with a warning
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        got = sharded.class_filter_ap_sharded([(0, x[:70]), (70, x[70:])], labels)
    assert any("No positive class" in str(m.message) for m in w)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert np.array_equal(got, analysis.class_filter_ap(x, labels))
    assert np.all(got[3] == 0.0)


def test_bad_shards_are_input_errors():
    x = _responses((20, 3), seed=1)
    lab = np.zeros(20, dtype=int)
    with pytest.raises(InputError, match="consecutive"):
        sharded.entropy_curves_sharded([(0, x[:10]), (12, x[10:])], lab, 2)
    with pytest.raises(InputError, match="no shards"):
        sharded.aue_sharded([], lab, 2)
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(InputError, match="NaN"):
        sharded.entropy_curves_sharded([bad[:10], bad[10:]], lab, 2)
    with pytest.raises(InputError, match="unknown ablation"):
        sharded.ablation_features_sharded([x], "blur")
    with pytest.raises(InputError, match="sp-shuffle needs conv maps"):
        sharded.ablation_features_sharded([x], "sp-shuffle")
    with pytest.raises(InputError, match="labels must have shape"):
        sharded.aue_sharded([x[:10], x[10:]], lab[:5], 2)


def test_missing_ray_is_an_input_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)          # import ray -> ImportError
    with pytest.raises(InputError, match="pip install"):
        distributed.require_ray()


def test_unreachable_cluster_fails_fast():
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("a Ray session is already open in this process")
    with pytest.raises(InputError, match="no Ray cluster answers at '127.0.0.1:1'"):
        with distributed.ray_session("127.0.0.1:1"):
            pass


@pytest.fixture(scope="module")
def small():
    """A seeded random demo net (3 classes) and 150 random 64x64 images."""
    torch.manual_seed(0)
    lm = build_demo(num_classes=CLASSES)
    rng = np.random.default_rng(0)
    data = ArrayImageSet("gen-ray", rng.integers(0, 256, (N, 64, 64, 3), dtype=np.uint8),
                         rng.integers(0, CLASSES, N), ["a", "b", "c"])
    return lm, data


def test_sharded_store_without_ray(small, tmp_path):
    """Shards written by the actor's code path read back as the local store, and heal when damaged."""
    lm, data = small
    layers = ["conv2", "fc7"]
    local = extraction.extract(lm, data, layers, root=tmp_path / "local", batch_size=32)
    directory = extraction.features_dir(lm, data, tmp_path / "sharded")
    directory.mkdir(parents=True)
    rows = []
    for a, b in distributed.shard_ranges(N, 64):
        shapes = distributed.write_shard(lm, data, layers, directory, a, b, torch.device("cpu"), 32)
        rows.append({"start": a, "stop": b, "shapes": json.dumps(shapes), "device": "cpu"})
    out = distributed.write_manifests(lm, data, layers, directory, rows, {"test": True})
    for layer in layers:
        f = extraction.open_layer(directory, layer)
        assert f.sharded and f.shape == local[layer].shape and f.fingerprint == local[layer].fingerprint
        assert np.array_equal(f.array(), local[layer].array()) and f.array().dtype == np.float16
        assert np.array_equal(f.maxima(), local[layer].maxima()) and f.layout == local[layer].layout
        assert [s for s, _ in f.shards()] == [0, 64, 128]
        assert [len(a) for _, a in f.shards()] == [64, 64, 22]
        assert all(isinstance(a, np.memmap) for _, a in f.shards())
        assert set(local[layer].manifest) <= set(f.manifest)
        assert out[layer].manifest == f.manifest
    assert sorted(p.name for p in (directory / "fc7.shards").iterdir()) == ["0-64.npy", "128-150.npy", "64-128.npy"]
    assert [s for s, _ in local["fc7"].shards()] == [0]                 # a local layer is one shard
    # the local backend sees the sharded layer as present and does not re-extract it
    again = extraction.extract(lm, data, layers, root=tmp_path / "sharded")
    assert again["fc7"].sharded
    # a truncated shard: the layer is dropped (manifest and shards), to be re-extracted
    (directory / "fc7.shards" / "64-128.npy").write_bytes(b"\x93NUMPY")
    assert extraction.open_layer(directory, "fc7") is None
    assert not (directory / "fc7.json").exists() and not (directory / "fc7.shards").exists()
    assert extraction.open_layer(directory, "conv2").sharded


# --------------------------------------------------------------------------- Ray (local)
@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200_000_000, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_extraction_bit_identical_and_sharded_analyses(small, ray_local, tmp_path):
    """Ray actors (2) write features equal bit for bit to the local backend's; sharded
    analyses on them (per-shard Ray tasks) equal the local analyses on the local store."""
    lm, data = small
    layers = list(lm.spec.layers)
    local = extraction.extract(lm, data, layers, root=tmp_path / "local", batch_size=32)
    remote = distributed.extract_ray(lm, data, layers, root=tmp_path / "ray", num_actors=2,
                                     batch_size=32, shard_size=64)
    for layer in layers:
        r, l = remote[layer], local[layer]
        assert r.sharded and r.manifest["backend"] == "ray"
        assert r.array().dtype == np.float16 and np.array_equal(r.array(), l.array()), layer
        assert r.fingerprint == l.fingerprint and r.shape == l.shape
        assert [(s["start"], s["stop"]) for s in r.manifest["shards"]] == [(0, 64), (64, 128), (128, 150)]
        assert set(l.manifest) <= set(r.manifest)
    lab, on_ray = np.asarray(data.labels), distributed.map_shards_ray   # one Ray task per shard
    for layer in ("conv1", "conv5", "fc7"):
        whole = local[layer].array()
        assert np.array_equal(sharded.entropy_curves_sharded(remote[layer], lab, CLASSES, 50, map_shards=on_ray),
                              analysis.entropy_curves(whole, lab, CLASSES, 50))
        assert np.array_equal(sharded.aue_sharded(remote[layer], lab, CLASSES, map_shards=on_ray),
                              analysis.aue(whole, lab, CLASSES))
        scores = analysis.spatial_max(whole).astype(np.float32) if whole.ndim == 4 else whole
        assert np.array_equal(sharded.class_filter_ap_sharded(remote[layer], lab, CLASSES, map_shards=on_ray),
                              analysis.class_filter_ap(scores, lab, CLASSES))
        got, want = sharded.sparsity_summary_sharded(remote[layer], map_shards=on_ray), analysis.sparsity_summary(whole)
        assert abs(got["mean"] - want["mean"]) <= 1e-12 and abs(got["std"] - want["std"]) <= 1e-12
    # a sharded layer read back through open_layer works with the existing analyses
    back = extraction.load_features(lm, data, "conv5", root=tmp_path / "ray")
    assert np.array_equal(analysis.aue(back.array(), lab, CLASSES), analysis.aue(local["conv5"].array(), lab, CLASSES))


@pytest.mark.slow
def test_ray_shard_size_not_a_multiple_of_the_batch(small, ray_local, tmp_path):
    """A shard size of 48 with batches of 32 is rounded up to 64, so every forward batch is the
    local path's (a last batch of 6 rows instead of 22 gave other float16 bits in fc6 on an
    AMD EPYC machine): the local features, bit for bit."""
    lm, data = small
    local = extraction.extract(lm, data, ["conv3", "fc6"], root=tmp_path / "local", batch_size=32)
    remote = distributed.extract_ray(lm, data, ["conv3", "fc6"], root=tmp_path / "ray", num_actors=2,
                                     batch_size=32, shard_size=48)
    for layer in ("conv3", "fc6"):
        assert [s for s, _ in remote[layer].shards()] == [0, 64, 128]
        assert np.array_equal(remote[layer].array(), local[layer].array()), layer


@pytest.mark.slow
def test_ray_backend_through_the_service(demo_env, ray_local):
    """service.extract_all(backend="ray") with ids (the service builds the demo net, the actors
    get it through the object store); service analyses then read the sharded layer; equal to a
    local extraction's."""
    from core import service

    model, dataset = "demo:scratch", "demo:target-test-detgt"
    lm, data = service.load_model(model), service.load_set(dataset)
    directory = extraction.features_dir(lm, data)
    aside = demo_env / "ray-test-aside"  # local layers other tests extracted: set aside, restored after
    aside.mkdir(exist_ok=True)
    kept = [p for layer in ("conv5", "fc7") for p in directory.glob(f"{layer}.*") if p.is_file()]
    for p in kept:
        shutil.move(str(p), aside / p.name)
    try:
        out = service.extract_all(model, dataset, ["conv5"], backend=service.ComputeBackend("ray", num_actors=2))
        assert out["conv5"].sharded and len(out["conv5"].manifest["shards"]) >= 2
        sel = service.selectivity(model, "demo-detgt", "conv5", shuffles=1)
        local = extraction.extract(lm, data, ["conv5"], root=demo_env / "local-check")["conv5"]
        assert np.array_equal(out["conv5"].array(), local.array())
        assert np.array_equal(sel.aue, analysis.aue(local.array(), data.labels, data.num_classes))
        with service.compute_backend("ray", num_actors=2):          # the app's path: a context
            fc7 = service.features(model, dataset, "fc7")
        assert fc7.sharded
    finally:
        for layer in ("conv5", "fc7"):
            (directory / f"{layer}.json").unlink(missing_ok=True)
            shutil.rmtree(directory / f"{layer}.shards", ignore_errors=True)
        for p in kept:
            shutil.move(str(aside / p.name), p)


@pytest.mark.slow
def test_cli_backend_ray_matches_local(ray_local, tmp_path, monkeypatch, capsys):
    """`python -m core extract --backend ray` on an ImageFolder (PIL path) with a randomly
    initialised torchvision net: the driver's weights are shipped, features equal local."""
    from PIL import Image

    from core import service
    from core.__main__ import main

    rng = np.random.default_rng(3)
    for c in "ab":
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)).save(tmp_path / "imgs" / c / f"{i}.png")
    monkeypatch.setenv("FILTERSCOPE_CACHE", str(tmp_path / "cache"))
    spec = f"imagefolder:{tmp_path / 'imgs'}"
    assert main(["extract", "--model", "resnet18", "--dataset", spec, "--layers", "layer4,avgpool",
                 "--backend", "ray", "--num-actors", "2", "--shard-size", "8", "--batch-size", "4"]) == 0
    assert "avgpool: (12, 512, 1, 1)" in capsys.readouterr().out
    lm, data = service.load_model("tv:resnet18"), service.load_set(spec)
    remote = {l: extraction.load_features(lm, data, l) for l in ("layer4", "avgpool")}
    local = extraction.extract(lm, data, ["layer4", "avgpool"], root=tmp_path / "local", batch_size=4)
    for layer, f in remote.items():
        assert f.sharded and [s for s, _ in f.shards()] == [0, 8]
        assert np.array_equal(f.array(), local[layer].array()), layer


@pytest.mark.slow
def test_ray_extracts_a_py_model_and_a_vit_like_the_local_backend(ray_local, tmp_path):
    """Your own network on Ray: a py: model file (imported by path, so its classes reach the actors by
    value) at a nested module path, and a timm ViT block (tokens on their grid): equal to local."""
    from core.data.datasets import ArrayImageSet
    from core.data.models import get_model
    from core.service import catalog  # noqa: F401  (registers timm: and py:)
    from core.store.ray_backend import extract_ray

    (tmp_path / "netfile.py").write_text(
        "from torch import nn\n\n\nclass Tiny(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
        "        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 6, 3))\n"
        "        self.head = nn.Linear(6, 2)\n\n    def forward(self, x):\n"
        "        return self.head(self.body(x).mean((2, 3)))\n\n\ndef build():\n    return Tiny(), {'input_size': 24}\n")
    rng = np.random.default_rng(5)
    data = ArrayImageSet("rand", rng.integers(0, 256, (10, 24, 24, 3), dtype=np.uint8), np.arange(10) % 2, ["a", "b"])
    for model_id, layer in ((f"py:{tmp_path / 'netfile.py'}:build", "body.2"), ("timm:test_vit", "blocks.0")):
        lm = get_model(model_id)
        remote = extract_ray(lm, data, [layer], num_actors=2, shard_size=4, batch_size=4,
                             root=tmp_path / "ray")[layer]
        local = extraction.extract(lm, data, [layer], root=tmp_path / "local", batch_size=4)[layer]
        assert remote.sharded and remote.array().shape == local.array().shape
        assert np.array_equal(remote.array(), local.array()), model_id
