"""The shipped source network: the retrain command on the tiny profile, the manifest held against
independent hashes and accuracies, and a demo build that uses (and checks) the shipped files."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from core.demo import build as demo
from core.demo import profiles as demo_profiles
from core.demo import scenes
from core.demo import source_net
from core.errors import DataMissingError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def shipped(tmp_path_factory) -> Path:
    """``python -m core demo --train-source --profile tiny --out <dir>/tiny``, as a user runs it."""
    root = tmp_path_factory.mktemp("weights")
    env = {**os.environ, "FILTERSCOPE_CACHE": str(root / "cache")}
    out = subprocess.run([sys.executable, "-m", "core", "demo", "--train-source", "--profile", "tiny",
                          "--out", str(root / "tiny")], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Source network of profile tiny written to" in out.stdout
    return root


def test_manifest_lists_every_file_with_its_sha256(shipped):
    d = shipped / "tiny"
    man = json.loads((d / "manifest.json").read_text())
    cfg = demo_profiles.PROFILES["tiny"]
    want = {"pretrained.pt"} | {f"snapshot-{it:05d}.pt" for it in cfg.pretrain.snapshots}
    assert set(man["files"]) == want == {p.name for p in d.glob("*.pt")}
    for name, info in man["files"].items():
        data = (d / name).read_bytes()
        assert info["sha256"] == hashlib.sha256(data).hexdigest() and info["bytes"] == len(data)
    assert man["source_hash"] == source_net.source_hash(cfg)
    assert man["config"]["pretrain"]["iterations"] == cfg.pretrain.iterations
    assert man["wall_seconds"] > 0 and man["code_version"] and len(man["loss_curve"]) > 0
    # float16 weights, loadable with weights_only=True; the final snapshot is the shipped net
    state = torch.load(d / "pretrained.pt", weights_only=True)
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    last = torch.load(d / f"snapshot-{cfg.pretrain.iterations:05d}.pt", weights_only=True)
    assert all(torch.equal(state[k], last[k]) for k in state)
    first = torch.load(d / "snapshot-00000.pt", weights_only=True)
    assert any(not torch.equal(state[k], first[k]) for k in state if state[k].is_floating_point())


def test_snapshot_accuracy_is_measured_on_the_shipped_weights(shipped):
    """Recompute a snapshot's source val accuracy with a plain loop over freshly generated images."""
    cfg = demo_profiles.PROFILES["tiny"]
    man = json.loads((shipped / "tiny" / "manifest.json").read_text())
    xv, yv = scenes.generate_source(cfg.source_val, cfg.seed + 1000, size=cfg.size, config=cfg.source_scenes)
    net = demo_profiles.new_net(cfg, scenes.SOURCE_CLASSES, 0)
    net.load_state_dict(torch.load(shipped / "tiny" / "snapshot-00008.pt", weights_only=True))
    net.eval()
    with torch.no_grad():
        x = (torch.from_numpy(xv.astype(np.float32)).permute(0, 3, 1, 2) / 255 - 0.5) / 0.25
        correct = int((net(x).argmax(1).numpy() == yv).sum())
    assert man["snapshots"]["8"]["source_val_accuracy"] == pytest.approx(correct / len(yv), abs=1e-9)


def test_parallel_generation_equals_one_call():
    cfg = demo_profiles.PROFILES["tiny"]
    x, y = source_net.generate_source_scenes(50, 7, cfg, workers=2, chunk=16)
    rx, ry = scenes.generate_source(50, 7, size=cfg.size, config=cfg.source_scenes)
    assert np.array_equal(x, rx) and np.array_equal(y, ry)


@pytest.fixture
def shipped_tiny(shipped, tmp_path, monkeypatch):
    """The tiny profile switched to the shipped source network in ``shipped``, with its own cache."""
    monkeypatch.setenv("FILTERSCOPE_SOURCE_WEIGHTS", str(shipped))
    monkeypatch.setenv("FILTERSCOPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FILTERSCOPE_DEMO", "tiny")
    monkeypatch.setitem(demo_profiles.PROFILES, "tiny", replace(demo_profiles.PROFILES["tiny"], shipped_source=True))
    return demo_profiles.PROFILES["tiny"]


def test_build_uses_the_shipped_files(shipped, shipped_tiny):
    man = demo.build("tiny")
    ref = json.loads((shipped / "tiny" / "manifest.json").read_text())
    models = demo_profiles.demo_dir("tiny") / "models"
    for name, info in ref["files"].items():
        assert hashlib.sha256((models / name).read_bytes()).hexdigest() == info["sha256"]
    assert man["pretrain"]["source_val_accuracy"] == ref["source_val_accuracy"]
    assert man["pretrain"]["shipped"]["sha256"]["pretrained.pt"] == ref["files"]["pretrained.pt"]["sha256"]
    assert not (demo_profiles.demo_dir("tiny") / "data" / "source-train-images.npy").exists()  # not needed
    from core import service
    lm = service.load_model("demo:pretrained")
    assert lm.spec.weights.sha256 == ref["files"]["pretrained.pt"]["sha256"]


@pytest.mark.parametrize("damage,match", [
    (lambda d: (d / "snapshot-00008.pt").write_bytes(b"x" * 100), "snapshot-00008.pt does not match its SHA-256"),
    (lambda d: (d / "pretrained.pt").unlink(), "pretrained.pt is missing"),
    (lambda d: (d / "manifest.json").write_text("{not json"), "not a valid source-network manifest"),
])
def test_altered_or_missing_files_stop_the_build(shipped, shipped_tiny, tmp_path, monkeypatch, damage, match):
    import shutil

    copy = tmp_path / "weights"
    shutil.copytree(shipped / "tiny", copy / "tiny")
    monkeypatch.setenv("FILTERSCOPE_SOURCE_WEIGHTS", str(copy))
    damage(copy / "tiny")
    with pytest.raises(DataMissingError, match=match) as err:
        demo.build("tiny")
    assert "python -m core demo --train-source --profile tiny" in str(err.value)


def test_weights_of_another_config_are_refused(shipped, shipped_tiny, monkeypatch):
    monkeypatch.setitem(demo_profiles.PROFILES, "tiny", replace(shipped_tiny, seed=3))
    with pytest.raises(DataMissingError, match="trained with another config"):
        source_net.verify(demo_profiles.PROFILES["tiny"])


def test_full_profile_ships_its_source_network():
    """The committed files of the default demo are complete and unaltered."""
    man = source_net.verify(demo_profiles.PROFILES["full"])
    assert len(demo_profiles.PROFILES["full"].pretrain.snapshots) >= 8
    assert sum(f["bytes"] for f in man["files"].values()) < 50e6
