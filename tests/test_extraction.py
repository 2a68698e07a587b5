"""Extraction equals a direct forward pass; hooks are removed; store is atomic and self-healing."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from core import extraction, models
from PIL import Image

from core.datasets import ArrayImageSet, ImageSet
from core.errors import InputError


def _direct(lm, images):
    """Independent reference: run the layers by hand, module by module."""
    x = extraction.uint8_to_input(images, lm.spec.mean, lm.spec.std, lm.spec.input_size)
    outs = {}
    with torch.no_grad():
        for name in models.PAPER_LAYERS:
            x = getattr(lm.net, name)(x)
            outs[name] = x.numpy().copy()
    return outs


def _count_hooks(net):
    return sum(len(m._forward_hooks) for m in net.modules())


def test_extraction_matches_direct_forward(tmp_path, tiny_images):
    images, labels = tiny_images
    torch.manual_seed(1)
    lm = models.build_demo(num_classes=3)
    ds = ArrayImageSet("tiny", images, labels, ["a", "b", "c"])
    got = extraction.extract(lm, ds, list(models.PAPER_LAYERS), device="cpu", batch_size=8, root=tmp_path)
    ref = _direct(lm, images)
    for layer in models.PAPER_LAYERS:
        arr = got[layer].array()
        assert arr.dtype == np.float16 and arr.shape == ref[layer].shape
        np.testing.assert_allclose(arr.astype(np.float32), ref[layer], rtol=2e-3, atol=2e-3 * np.abs(ref[layer]).max())
    assert _count_hooks(lm.net) == 0


class _PilSet(ImageSet):
    """Same images served as PIL files would be: forces the DataLoader + transform path."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels
        self.name, self.class_names, self.fingerprint = "pil", ("a", "b", "c"), "pil-fp"

    def image(self, i):
        return Image.fromarray(self.images[i])


def test_pil_path_matches_array_path(tmp_path, tiny_images):
    images, labels = tiny_images
    lm = models.build_demo(num_classes=3)
    fast = extraction.extract(lm, ArrayImageSet("tiny", images, labels, ["a", "b", "c"]), ["conv2", "fc7"],
                              device="cpu", root=tmp_path / "a")
    slow = extraction.extract(lm, _PilSet(images, labels), ["conv2", "fc7"], device="cpu", batch_size=10,
                              num_workers=0, root=tmp_path / "b")
    for layer in ("conv2", "fc7"):
        np.testing.assert_allclose(fast[layer].array().astype(np.float32), slow[layer].array().astype(np.float32),
                                   atol=5e-3)


def test_hooks_removed_on_error(tiny_images):
    lm = models.build_demo(num_classes=3)
    with pytest.raises(RuntimeError):
        with extraction.capture_layers(lm, ["conv1", "fc7"]):
            assert _count_hooks(lm.net) == 2
            raise RuntimeError("boom")
    assert _count_hooks(lm.net) == 0


def test_store_reuse_manifest_and_corruption(tmp_path, tiny_images):
    images, labels = tiny_images
    lm = models.build_demo(num_classes=3)
    ds = ArrayImageSet("tiny", images, labels, ["a", "b", "c"])
    first = extraction.extract(lm, ds, ["conv5"], device="cpu", root=tmp_path)["conv5"]
    man = first.manifest
    assert man["model"]["arch"] == "demo-alexnet" and man["dataset"]["fingerprint"] == ds.fingerprint
    assert man["layer"] == "conv5" and man["shape"] == [37, 64, 4, 4] and "code_version" in man
    mtime = first.path.stat().st_mtime_ns
    again = extraction.extract(lm, ds, ["conv5"], device="cpu", root=tmp_path)["conv5"]
    assert again.path.stat().st_mtime_ns == mtime  # served from the store
    # corrupt the file: it is detected, dropped and re-extracted
    first.path.write_bytes(first.path.read_bytes()[:100])
    assert extraction.load_features(lm, ds, "conv5", root=tmp_path) is None
    healed = extraction.extract(lm, ds, ["conv5"], device="cpu", root=tmp_path)["conv5"]
    assert healed.array().shape == (37, 64, 4, 4)
    # no temp files left behind
    assert not [p for p in healed.path.parent.iterdir() if ".tmp-" in p.name]
    assert json.loads(healed.path.with_suffix(".json").read_text())["shape"] == [37, 64, 4, 4]


def test_bad_requests(tmp_path, tiny_images):
    images, labels = tiny_images
    lm = models.build_demo(num_classes=3)
    ds = ArrayImageSet("tiny", images, labels, ["a", "b", "c"])
    with pytest.raises(InputError, match="no layer"):
        extraction.extract(lm, ds, ["conv9"], device="cpu", root=tmp_path)
    with pytest.raises(InputError):
        extraction.extract(lm, ds, [], device="cpu", root=tmp_path)
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA"):
            extraction.resolve_device("cuda")
