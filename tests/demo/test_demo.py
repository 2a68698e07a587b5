"""The embedded demo build: idempotent, resumable, atomic, deterministic, with provenance."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from core import service
from core.demo import build as demo
from core.demo import profiles as demo_profiles
from core.errors import DataMissingError, InputError


def test_build_is_idempotent_and_complete(demo_env):
    first = demo.build("tiny")
    root = demo_profiles.demo_dir("tiny")
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    again = demo.build("tiny")
    assert again["built"] == first["built"]
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == before
    assert not list(root.parent.glob("tiny.partial*"))
    models = service.models()
    for mid in ("demo:pretrained", "demo:finetuned", "demo:fc-finetuned", "demo:scratch"):
        assert mid in models
        lm = service.load_model(mid)
        assert lm.spec.weights.sha256 and lm.spec.weights.source == "demo build"


def test_fc_only_finetuning_kept_conv_layers(demo_env):
    pre = service.load_model("demo:pretrained").net.state_dict()
    fc = service.load_model("demo:fc-finetuned").net.state_dict()
    ft = service.load_model("demo:finetuned").net.state_dict()
    for k in pre:
        if k.startswith("conv"):
            assert torch.equal(pre[k], fc[k]), k  # frozen
    assert any(not torch.equal(pre[k], ft[k]) for k in pre if k.startswith("conv"))  # full ft moved them
    assert not torch.equal(pre["fc7.1.weight"], fc["fc7.1.weight"])


def test_detgt_crops_match_boxes(demo_env):
    """Each DET-GT crop is the R-CNN warp of its box (independent check with PIL)."""
    from PIL import Image

    from core.data.datasets import warp_box
    root = demo_profiles.demo_dir("tiny") / "data"
    crops = np.load(root / "target-test-detgt-images.npy")
    meta = np.load(root / "target-test-boxes.npz")
    images = np.load(root / "target-test-images.npy")
    for j in (0, len(crops) // 2, len(crops) - 1):
        pad = max(1, round(16 * 64 / 227))
        ref = np.asarray(warp_box(Image.fromarray(images[meta["image_index"][j]]), meta["boxes"][j], 64, pad))
        assert np.array_equal(crops[j], ref)
    labels = np.load(root / "target-test-detgt-labels.npy")
    assert np.array_equal(labels, meta["labels"])


def test_killed_build_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("FILTERSCOPE_CACHE", str(tmp_path))
    cfg = demo_profiles.PROFILES["tiny"]
    partial = demo_profiles.demo_dir("tiny").with_name(f"tiny.partial-{demo_profiles.config_hash(cfg)}")
    partial.mkdir(parents=True)
    demo._step_data(cfg, partial, None)
    demo._step_pretrain(cfg, partial, None)
    stamp = (partial / "models" / "pretrained.pt").stat().st_mtime_ns
    (partial / "models" / ".finetuned.pt.tmp-123").write_bytes(b"half-written")  # a killed write
    assert not demo.is_built("tiny")
    with pytest.raises(DataMissingError, match="python -m core demo"):
        demo.manifest("tiny")
    stale = tmp_path / "features" / "demo-finetuned-old" / "demo-target-test-old"   # of a replaced build
    stale.mkdir(parents=True)
    (stale / "conv1.json").write_text(json.dumps({"model": {"name": "demo:finetuned", "weights_sha256": "0" * 64},
                                                 "dataset": {"name": "demo:target-test", "fingerprint": "x"}}))
    mine = tmp_path / "features" / "tv-alexnet-x" / "imagefolder-x"                  # a user's model: kept
    mine.mkdir(parents=True)
    (mine / "conv1.json").write_text(json.dumps({"model": {"name": "tv:alexnet"}, "dataset": {"name": "x"}}))
    man = demo.build("tiny")
    assert not stale.exists() and mine.exists()
    final = demo_profiles.demo_dir("tiny")
    assert (final / "models" / "pretrained.pt").stat().st_mtime_ns == stamp  # not retrained
    assert json.loads((final / "manifest.json").read_text())["built"] == man["built"]
    assert not partial.exists()


def test_unknown_ids_and_profiles(demo_env, monkeypatch):
    with pytest.raises(InputError):
        service.load_model("demo:nope")
    with pytest.raises(InputError):
        service.load_set("demo:nope")
    monkeypatch.setenv("FILTERSCOPE_DEMO", "huge")
    with pytest.raises(InputError, match="FILTERSCOPE_DEMO"):
        demo_profiles.profile_name()


def test_demo_of_another_config_counts_as_not_built(demo_env, monkeypatch):
    """A demo built by older code (other config) is not served: the next build replaces it."""
    from dataclasses import replace

    assert demo.is_built("tiny")
    monkeypatch.setitem(demo_profiles.PROFILES, "tiny", replace(demo_profiles.PROFILES["tiny"], seed=5))
    service.catalog._demo_built_at.cache_clear()  # the service remembers the answer per manifest file
    try:
        assert not demo.is_built("tiny")
        assert "demo:finetuned" not in service.models()
    finally:
        monkeypatch.undo()
        service.catalog._demo_built_at.cache_clear()
    assert "demo:finetuned" in service.models()
