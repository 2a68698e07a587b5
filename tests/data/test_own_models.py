"""Your own network (#29): py: model files, timm: models (CNN, ViT, Swin), any layer, tokens as spatial
samples. Offline, random init, small. Extracted features are held against each module's own output
taken with a forward hook written here, and the token layout against hand-computed indices."""
from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from core.data.datasets import ArrayImageSet
from core.data.layers import TokenLayout, unit_view
from core.data.models import get_model
from core.data.timm_models import build_timm
from core.data.user_models import parse_id
from core.errors import InputError
from core.service import catalog  # noqa: F401  (registers the timm: and py: model kinds)
from core.store import extraction

USER_FILE = '''
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return torch.relu(x + self.conv2(torch.relu(self.conv1(x))))


class Net(nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.stage = nn.Sequential(Block(8), Block(8))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(8, classes)

    def forward(self, x):
        return self.head(self.pool(self.stage(torch.relu(self.stem(x)))).flatten(1))


def build():
    torch.manual_seed(0)
    return Net(), {"input_size": 32, "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25),
                   "layers": ["stem", "stage"]}


def plain():
    return Net()


def not_a_module():
    return 42


def wrong_size():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 30 * 30, 2)), {"input_size": 64}
'''


@pytest.fixture()
def user_file(tmp_path):
    path = tmp_path / "mynet.py"
    path.write_text(textwrap.dedent(USER_FILE))
    return path


def _images(n: int, size: int, seed: int = 0) -> ArrayImageSet:
    rng = np.random.default_rng(seed)
    return ArrayImageSet("rand", rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), np.arange(n) % 3,
                         ["a", "b", "c"])


def _hooked(lm, module_path: str, data: ArrayImageSet) -> torch.Tensor:
    """The module's own output on the model's input batch, taken with a hook registered here."""
    got = {}
    handle = lm.net.get_submodule(module_path).register_forward_hook(lambda m, i, o: got.setdefault("o", o))
    try:
        x = torch.stack([lm.spec.transform()(Image.fromarray(im)) for im in data.images])
        with torch.no_grad():
            lm.net(x)
    finally:
        handle.remove()
    return got["o"]


# --------------------------------------------------------------------------- py:
def test_py_model_any_layer_and_provenance(user_file, tmp_path):
    lm = get_model(f"py:{user_file}:build")
    assert list(lm.spec.layers) == ["stem", "stage"] and lm.spec.input_size == 32
    assert lm.spec.extra["code_sha256"] and lm.spec.extra["source_file"] == str(user_file.resolve())
    assert lm.spec.num_classes == 5 and lm.spec.weights.source == "random init"
    data = _images(6, 32)
    out = extraction.extract(lm, data, ["stage.1.conv2", "stem"], device="cpu", batch_size=4, root=tmp_path)
    want = _hooked(lm, "stage.1.conv2", data)
    got = out["stage.1.conv2"].array()
    assert got.shape == tuple(want.shape) == (6, 8, 16, 16)
    np.testing.assert_allclose(got.astype(np.float32), want.numpy(), rtol=1e-2, atol=1e-2)  # stored as float16
    # an edited file is another model: its features get another key
    before = extraction.model_key(lm)
    user_file.write_text(user_file.read_text() + "\n# edited\n")
    assert extraction.model_key(get_model(f"py:{user_file}:build")) != before


def test_py_fine_tuned_head_of_another_size(user_file, tmp_path):
    net = get_model(f"py:{user_file}:plain").net
    state = {k: v.clone() for k, v in net.state_dict().items()}
    state["head.weight"], state["head.bias"] = torch.randn(20, 8), torch.randn(20)
    ckpt = tmp_path / "ft.pth"
    torch.save(state, ckpt)
    lm = get_model(f"py:{user_file}:plain@{ckpt}")
    assert lm.spec.num_classes == 20 and lm.spec.extra["replaced_heads"] == ["head"]
    assert lm.spec.weights.source == "user file" and len(lm.spec.weights.sha256) == 64
    torch.testing.assert_close(lm.net.head.weight, state["head.weight"])
    assert lm.spec.input_size == 224 and lm.spec.mean == (0.485, 0.456, 0.406)  # the documented defaults


def test_py_errors(user_file, tmp_path):
    with pytest.raises(InputError, match="not found"):
        get_model(f"py:{tmp_path / 'nope.py'}:build")
    bad = tmp_path / "broken.py"
    bad.write_text("import torch\nraise RuntimeError('boom at import')\n")
    with pytest.raises(InputError, match=r"raised RuntimeError on import \(line 2 of broken.py\): boom"):
        get_model(f"py:{bad}:build")
    with pytest.raises(InputError, match="has no callable 'missing'; it defines: .*build"):
        get_model(f"py:{user_file}:missing")
    with pytest.raises(InputError, match="returned int, not a torch.nn.Module"):
        get_model(f"py:{user_file}:not_a_module")
    with pytest.raises(InputError, match="forward pass fails on a batch of 2 RGB images of 64x64"):
        get_model(f"py:{user_file}:wrong_size")
    with pytest.raises(InputError, match="py:<path/to/file.py>:<callable>"):
        parse_id("just-a-file.py")
    other = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1, 1, 1, 1)}, other)
    with pytest.raises(InputError, match="do not fit this architecture"):
        get_model(f"py:{user_file}:plain@{other}")
    lm = get_model(f"py:{user_file}:build")
    with pytest.raises(InputError, match=r"no layer 'stage.2'.*closest module paths: .*stage\.[01]"):
        lm.module("stage.2")


# --------------------------------------------------------------------------- timm:
def test_timm_cnn_weights_file_and_fine_tuned_head(tmp_path):
    from safetensors.torch import save_file

    base = build_timm("test_resnet")
    assert base.spec.weights.source == "random init" and base.spec.extra["timm_version"]
    import timm

    cfg = timm.data.resolve_data_config({}, model=base.net)  # timm's own eval transform for the model
    assert (base.spec.input_size, base.spec.interpolation, base.spec.mean) == (cfg["input_size"][-1],
                                                                               cfg["interpolation"], cfg["mean"])
    assert base.spec.resize == int(cfg["input_size"][-1] / cfg["crop_pct"])
    state = {k: v.clone() for k, v in base.net.state_dict().items()}
    state["fc.weight"], state["fc.bias"] = torch.randn(20, state["fc.weight"].shape[1]), torch.randn(20)
    for path, save in ((tmp_path / "ft.pth", lambda s, p: torch.save(s, p)),
                       (tmp_path / "ft.safetensors", lambda s, p: save_file(s, str(p)))):
        save(state, path)
        lm = get_model(f"timm:test_resnet@{path}")
        assert lm.spec.num_classes == 20 and lm.spec.weights.path == str(path)
        torch.testing.assert_close(lm.net.fc.weight, state["fc.weight"])
    assert set(base.spec.layers) >= {"layer1", "layer4"}  # the stages of timm's feature_info
    data = _images(3, 64)
    out = extraction.extract(base, data, ["layer3.0.conv2"], device="cpu", root=tmp_path)
    want = _hooked(base, "layer3.0.conv2", data).numpy()
    np.testing.assert_allclose(out["layer3.0.conv2"].array().astype(np.float32), want, rtol=1e-2, atol=1e-2)


def test_timm_unknown_name_lists_the_closest():
    with pytest.raises(InputError, match="unknown timm model 'vit_tiny_patch16_22'; closest: vit_tiny_patch16_224"):
        get_model("timm:vit_tiny_patch16_22")


def test_vit_tokens_on_their_grid(tmp_path):
    lm = build_timm("test_vit")
    lay = lm.spec.tokens
    assert lay.prefix == lm.net.num_prefix_tokens == 1 and lay.grid == tuple(lm.net.patch_embed.grid_size)
    blocks = len(lm.net.blocks)
    assert list(lm.spec.layers) == [f"blocks.{i}" for i in range(blocks)]
    data = _images(2, 48, seed=1)
    out = extraction.extract(lm, data, ["blocks.1"], device="cpu", root=tmp_path)
    raw = _hooked(lm, "blocks.1", data).numpy()  # [N, 1 + h*w, D]
    h, w = lay.grid
    got = out["blocks.1"].array().astype(np.float32)
    assert got.shape == (2, raw.shape[2], h, w)
    for n, d, i, j in ((0, 0, 0, 0), (1, 3, h - 1, 0), (0, raw.shape[2] - 1, 2, w - 1), (1, 5, h - 1, w - 1)):
        np.testing.assert_allclose(got[n, d, i, j], raw[n, 1 + i * w + j, d], rtol=1e-2, atol=1e-2)
    assert extraction.layer_shapes(lm, layers=["blocks.1"])["blocks.1"] == (raw.shape[2], h, w)


def test_swin_channels_last_stages(tmp_path):
    lm = build_timm("swin_tiny_patch4_window7_224")
    assert lm.spec.tokens.nhwc and list(lm.spec.layers) == ["layers.0", "layers.1", "layers.2", "layers.3"]
    data = _images(1, 224, seed=2)
    raw = _hooked(lm, "layers.2", data).numpy()  # [N, H, W, C]
    out = extraction.extract(lm, data, ["layers.2"], device="cpu", root=tmp_path)["layers.2"].array()
    assert out.shape == (1, raw.shape[3], raw.shape[1], raw.shape[2])
    np.testing.assert_allclose(out.astype(np.float32), raw.transpose(0, 3, 1, 2), rtol=1e-2, atol=2e-2)


def test_unit_view_by_hand():
    x = torch.arange(2 * (2 + 12) * 3, dtype=torch.float32).reshape(2, 14, 3)  # 2 prefix tokens, 3x4 grid
    v = unit_view(x, TokenLayout(prefix=2, grid=(3, 4)))
    assert v.shape == (2, 3, 3, 4)
    for n in range(2):
        for d in range(3):
            for i in range(3):
                for j in range(4):
                    assert v[n, d, i, j] == x[n, 2 + 4 * i + j, d]
    assert unit_view(x[:, 2:], TokenLayout(prefix=2, grid=(3, 4))).shape == (2, 3, 3, 4)  # before the prefix
    assert unit_view(x[:, :5], TokenLayout(prefix=2, grid=(3, 4))).shape == (2, 5, 3)  # not a grid: unchanged
    nhwc = torch.randn(2, 5, 6, 7)
    torch.testing.assert_close(unit_view(nhwc, TokenLayout(nhwc=True)), nhwc.permute(0, 3, 1, 2))
    assert unit_view(nhwc, None) is nhwc


def test_tv_any_layer_equals_its_forward_hook(tmp_path):
    lm = get_model("tv:resnet18")
    data = _images(2, 64, seed=3)
    out = extraction.extract(lm, data, ["layer3.1"], device="cpu", root=tmp_path)["layer3.1"].array()
    np.testing.assert_allclose(out.astype(np.float32), _hooked(lm, "layer3.1", data).numpy(), rtol=1e-2, atol=1e-2)


def test_layer_listing_marks_the_defaults(user_file):
    from core import service

    rows = service.model_layers(f"py:{user_file}:build")
    by_path = {r["path"]: r for r in rows}
    assert [r["path"] for r in rows if r["default"]] == ["stem", "stage"]
    assert by_path["stage.1.conv2"]["shape"] == (8, 16, 16) and by_path["head"]["shape"] == (5,)


def test_legend_names_stay_short():
    from core.service import model_label

    assert model_label("demo:fc-finetuned") == "fc-only fine-tuned"
    assert model_label("tv:alexnet@/data/alexnet-owt.pth") == "alexnet @alexnet-owt"
    assert model_label("timm:resnet50@/ckpt/ft_voc.safetensors") == "resnet50 @ft_voc"
    assert model_label("py:/home/me/repo/mynet.py:build@runs/best.pth") == "mynet.py:build @best"
    assert model_label("timm:vit_small_patch16_224") == "vit_small_patch16_224"
