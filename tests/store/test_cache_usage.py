"""``python -m core cache info|prune`` on a hand-made cache folder: sizes summed independently,
only what no built demo references removed; a demo build prunes what it replaced."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from core.hashing import stable_hash


def _layer(folder: Path, model: str, sha: str, data: str, fingerprint: str, nbytes: int) -> Path:
    folder.mkdir(parents=True)
    (folder / "conv1.npy").write_bytes(b"\0" * nbytes)
    (folder / "conv1.json").write_text(json.dumps({"model": {"name": model, "weights_sha256": sha},
                                                   "dataset": {"name": data, "fingerprint": fingerprint}}))
    return folder


def _du(path: Path) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("FILTERSCOPE_CACHE", str(root))
    build = root / "demo" / "tiny"
    (build / "models").mkdir(parents=True)
    (build / "models" / "finetuned.pt").write_bytes(b"weights of the live build")
    (build / "manifest.json").write_text(json.dumps({"profile": "tiny", "built": "2026-12-06T06:00:00"}))
    live_sha = hashlib.sha256(b"weights of the live build").hexdigest()
    live_fp = stable_hash("demo", "tiny", "2026-12-06T06:00:00", "target-test")
    f = root / "features"
    paths = {
        "live": _layer(f / "demo-finetuned-aaa" / "demo-target-test-1", "demo:finetuned", live_sha,
                       "demo:target-test", live_fp, 3000),
        "old weights": _layer(f / "demo-finetuned-bbb" / "demo-target-test-2", "demo:finetuned", "0" * 64,
                              "demo:target-test", live_fp, 5000),
        "old data": _layer(f / "demo-finetuned-aaa" / "demo-target-test-3", "demo:finetuned", live_sha,
                           "demo:target-test", "oldprint", 7000),
        "user model": _layer(f / "tv-alexnet-ccc" / "imagefolder-x", "tv:alexnet", "1" * 64,
                             "imagefolder:/data", "fp", 11000),
    }
    paths["partial"] = root / "demo" / "tiny.partial-deadbeef"
    (paths["partial"] / "data").mkdir(parents=True)
    (paths["partial"] / "data" / "x.npy").write_bytes(b"\0" * 13000)
    (root / "results").mkdir()
    (root / "results" / "cache.db").write_bytes(b"\0" * 17000)
    return root, paths


def test_info_sizes_and_liveness(cache, capsys):
    from core.store import cache_usage
    from core.__main__ import main

    root, paths = cache
    use = cache_usage.usage()
    by_path = {i.path: i for i in use.items}
    for name in ("live", "user model"):
        assert by_path[paths[name]].live, name
    for name in ("old weights", "old data", "partial"):
        assert not by_path[paths[name]].live, name
    assert use.total() == _du(root)  # every file of the folder counted once
    assert use.total(live=False) == sum(_du(paths[k]) for k in ("old weights", "old data", "partial"))
    assert main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert "features" in out and "demo builds" in out and "results" in out
    assert f"{use.total(live=False) / 1e6:.1f} MB stale" in out


def test_prune_removes_only_stale_items(cache, capsys):
    from core.__main__ import main

    root, paths = cache
    assert main(["cache", "prune", "--dry-run"]) == 0
    assert all(p.exists() for p in paths.values())
    assert main(["cache", "prune"]) == 0
    out = capsys.readouterr().out
    for name in ("old weights", "old data", "partial"):
        assert not paths[name].exists() and str(paths[name]) in out
    assert not paths["old weights"].parent.exists()  # emptied model folder removed too
    for name in ("live", "user model"):
        assert (paths[name] / "conv1.npy").exists()
    assert (root / "demo" / "tiny" / "models" / "finetuned.pt").exists()
    assert (root / "results" / "cache.db").exists()


def test_a_running_build_keeps_its_partial_folder(cache):
    import fcntl

    from core.store import cache_usage

    root, paths = cache
    with open(root / "demo" / ".tiny.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        assert not any(i.path == paths["partial"] for i in cache_usage.prune())
    assert paths["partial"].exists()


def test_features_of_sets_derived_from_a_live_split_are_live(cache):
    """Region crops of the detection task are a set of their own (their fingerprint is not a demo split's):
    they stay while the split they were cut from is live, and go with it."""
    from core.store import cache_usage

    root, paths = cache
    live_sha = json.loads((paths["live"] / "conv1.json").read_text())["model"]["weights_sha256"]
    live_fp = json.loads((paths["live"] / "conv1.json").read_text())["dataset"]["fingerprint"]
    f = root / "features" / "demo-finetuned-aaa"
    crops = _layer(f / "demo-target-test-crops", "demo:finetuned", live_sha, "demo:target-test[:6]-regions",
                   "cropsprint", 100)
    gone = _layer(f / "demo-target-test-crops-old", "demo:finetuned", live_sha, "demo:target-test[:6]-regions",
                  "cropsprint2", 100)
    for folder, source in ((crops, live_fp), (gone, "oldprint")):
        man = json.loads((folder / "conv1.json").read_text())
        man["dataset"]["derived_from"] = [source]
        (folder / "conv1.json").write_text(json.dumps(man))
    by_path = {i.path: i for i in cache_usage.usage().items}
    assert by_path[crops].live and not by_path[gone].live
