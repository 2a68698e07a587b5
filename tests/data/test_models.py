"""Model registry, checkpoint loading and the demo network."""
from __future__ import annotations

import hashlib
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from core.data import models
from core.store import extraction
from core.errors import InputError


def test_fast_lrn_matches_torch_lrn():
    x = torch.randn(4, 12, 7, 7).abs() * 3
    for size in (3, 4, 5):
        ref = nn.LocalResponseNorm(size, alpha=0.36, beta=0.75, k=2.0)(x)
        got = models.FastLRN(12, size=size, alpha=0.36, beta=0.75, k=2.0)(x)
        assert torch.allclose(ref, got, atol=1e-6), size


def test_demo_layer_shapes_and_names():
    lm = models.build_demo(num_classes=7)
    shapes = extraction.layer_shapes(lm)
    assert list(shapes) == list(models.PAPER_LAYERS)
    assert shapes["conv1"] == (32, 16, 16) and shapes["conv5"] == (64, 4, 4) and shapes["fc7"] == (256,)
    assert lm.spec.weights.source == "random init"


def test_paper_layer_placement_demo():
    """conv1 output = after pool+LRN; conv3 = after ReLU (non-negative); fc7 = ReLU output."""
    lm = models.build_demo(num_classes=3)
    assert isinstance(lm.net.conv1[-1], models.FastLRN) and isinstance(lm.net.conv1[-2], nn.MaxPool2d)
    assert isinstance(lm.net.conv3[-1], nn.ReLU) and isinstance(lm.net.fc7[-1], nn.ReLU)
    assert isinstance(lm.net.conv5[-1], nn.MaxPool2d)


def test_checkpoint_roundtrip_and_provenance(tmp_path):
    lm = models.build_demo(num_classes=5)
    path = tmp_path / "w.pt"
    torch.save(lm.net.state_dict(), path)
    lm2 = models.build_demo(num_classes=5, weights=path)
    assert lm2.spec.weights.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    for (k, a), (_, b) in zip(lm.net.state_dict().items(), lm2.net.state_dict().items()):
        assert torch.equal(a, b), k


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize("case", ["missing", "empty", "truncated", "text", "pickle", "not_tensors", "wrong_arch"])
def test_bad_checkpoints_raise_input_error(tmp_path, case):
    path = tmp_path / "bad.pt"
    good = models.build_demo(num_classes=5).net.state_dict()
    if case == "empty":
        path.write_bytes(b"")
    elif case == "truncated":
        torch.save(good, path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif case == "text":
        path.write_text("this is not a checkpoint")
    elif case == "pickle":
        path.write_bytes(pickle.dumps({"a": Evil()}))
    elif case == "not_tensors":
        torch.save({"a": 1, "b": "x"}, path)
    elif case == "wrong_arch":
        torch.save(models.build_demo(num_classes=9).net.state_dict(), path)
    with pytest.raises(InputError) as exc:
        models.build_demo(num_classes=5, weights=path)
    assert str(path) in str(exc.value) or path.name in str(exc.value)
    assert isinstance(exc.value, ValueError)


def test_pickle_payload_inside_torch_zip_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(1), "x": Evil()}, path)
    with pytest.raises(InputError, match="not a plain state dict"):
        models.load_checkpoint(path)


def test_torchvision_alexnet_layers_and_local_weights(tmp_path):
    lm = models.build_torchvision("alexnet", use_hub_cache=False)
    assert lm.spec.layers == models.ALEXNET_LAYERS
    assert lm.spec.weights.source == "random init"
    shapes = extraction.layer_shapes(lm)
    assert shapes["conv1"] == (64, 27, 27) and shapes["conv5"] == (256, 6, 6) and shapes["fc7"] == (4096,)
    path = tmp_path / "alex.pt"
    torch.save(lm.net.state_dict(), path)
    lm2 = models.build_torchvision("alexnet", weights=path)
    assert lm2.spec.weights.source == "user file" and lm2.spec.weights.path == str(path)


def test_torchvision_hub_cache_is_used_without_download(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    net = models.build_torchvision("resnet18", use_hub_cache=False).net
    url = __import__("torchvision").models.get_model_weights("resnet18").DEFAULT.url
    (tmp_path / "checkpoints").mkdir()
    torch.save(net.state_dict(), tmp_path / "checkpoints" / url.rsplit("/", 1)[1])
    lm = models.build_torchvision("resnet18")
    assert lm.spec.weights.source == "torch hub cache"
    assert set(lm.spec.layers) == {"layer1", "layer2", "layer3", "layer4", "avgpool"}
    assert len(lm.spec.class_names) == 1000


def test_unknown_model_and_layer():
    with pytest.raises(InputError, match="unknown torchvision"):
        models.build_torchvision("not_a_model")
    with pytest.raises(InputError, match="no layer"):
        models.build_demo(num_classes=2).module("conv9")


def test_batched_normalisation_equals_torchvision_per_image():
    """Extraction on the CPU resizes/crops image by image and normalises the batch at once;
    the result must be torchvision's own per-image transform, bit for bit."""
    from PIL import Image

    rng = np.random.default_rng(5)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
              for h, w in [(300, 400), (256, 256), (90, 170)]]
    for spec in (models.build_torchvision("alexnet", use_hub_cache=False).spec, models.build_demo(num_classes=3).spec):
        reference = torch.stack([spec.transform()(im) for im in images])
        geometric = spec.geometric_transform()
        batched = spec.normalize_batch(torch.stack([geometric(im) for im in images]))
        assert batched.dtype == torch.float32 and torch.equal(batched, reference)
        # a list of crops (channels-last views of the decoded images) into a larger reused buffer
        out = torch.full((5, 3, spec.input_size, spec.input_size), float("nan"))
        listed = spec.normalize_batch([geometric(im) for im in images], out=out)
        assert listed.data_ptr() == out.data_ptr() and torch.equal(listed, reference)
        with pytest.raises(ValueError, match="contiguous float32"):
            spec.normalize_batch([geometric(im) for im in images], out=out[:2])
