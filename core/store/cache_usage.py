"""What the cache folder holds, and pruning of what no live demo build references.

``python -m core cache info`` lists sizes per kind (features, results, demo builds,
detection proposals); ``python -m core cache prune`` removes stale items only:

- a feature folder (``features/<model>/<dataset>``) of a *demo* network whose weights are
  in no built demo (``demo/<profile>/models/*.pt``), or computed on a demo dataset of a
  build that is no longer there (its fingerprint names the build);
- a half-built demo (``demo/<profile>.partial-*``) that no running build holds (its lock).

Features of other models (torchvision, your checkpoints) are never pruned: nothing here
knows whether you still need them. The results database (diskcache) bounds itself (least
recently stored out first) and is left alone. A demo rebuild prunes what it replaced.
"""
from __future__ import annotations

import fcntl
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from core.config import cache_root
from core.hashing import stable_hash
from core.data.models import sha256_file
from core.demo.profiles import DEMO_SETS

log = logging.getLogger(__name__)


@dataclass
class Item:
    """One folder of the cache: its kind, size in bytes, whether it is live and why."""

    kind: str
    path: Path
    bytes: int
    live: bool
    why: str


@dataclass
class Usage:
    root: Path
    items: list[Item] = field(default_factory=list)

    def total(self, kind: str | None = None, live: bool | None = None) -> int:
        return sum(i.bytes for i in self.items if (kind is None or i.kind == kind)
                   and (live is None or i.live == live))

    def table(self) -> list[dict]:
        """Per kind: bytes in all, live and stale, and the number of items."""
        kinds = dict.fromkeys(i.kind for i in self.items)
        return [{"kind": k, "items": sum(i.kind == k for i in self.items), "bytes": self.total(k),
                 "live_bytes": self.total(k, True), "stale_bytes": self.total(k, False)} for k in kinds]


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _locked(lock: Path) -> bool:
    """True when a demo build holds ``lock`` (its ``flock``), in this process or another."""
    if not lock.exists():
        return False
    with open(lock, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


def _live_demo(root: Path) -> tuple[set[str], set[str], list[Item]]:
    """Weights hashes of the built demos' networks, fingerprints of their datasets, and the builds."""
    shas, prints, items = set(), set(), []
    for d in sorted((root / "demo").glob("*")) if (root / "demo").is_dir() else []:
        if not d.is_dir():
            continue
        if ".partial" in d.name:
            profile = d.name.split(".partial")[0]
            if _locked(root / "demo" / f".{profile}.lock"):
                items.append(Item("demo builds", d, _size(d), True, "a build of this profile is running"))
            else:
                items.append(Item("demo builds", d, _size(d), False, "half-built demo (no build running)"))
            continue
        try:
            man = json.loads((d / "manifest.json").read_text())
            profile, built = man["profile"], man["built"]
        except (OSError, ValueError, KeyError, TypeError):
            items.append(Item("demo builds", d, _size(d), False, "no valid manifest.json"))
            continue
        shas |= {sha256_file(p) for p in (d / "models").glob("*.pt")}
        prints |= {stable_hash("demo", profile, built, name) for name in DEMO_SETS}
        items.append(Item("demo builds", d, _size(d), True, f"profile {profile}, built {built}"))
    return shas, prints, items


def _feature_item(folder: Path, shas: set[str], prints: set[str]) -> Item:
    """A ``features/<model>/<dataset>`` folder, judged by the provenance of its first layer manifest."""
    size = _size(folder)
    man = None
    for f in sorted(folder.glob("*.json")):
        try:
            man = json.loads(f.read_text())
            break
        except (OSError, ValueError):
            continue
    if not isinstance(man, dict) or "model" not in man:
        return Item("features", folder, size, True, "no readable layer manifest: kept")
    model, data = man.get("model", {}), man.get("dataset", {})
    if not str(model.get("name", "")).startswith("demo:"):
        return Item("features", folder, size, True, f"{model.get('name')}: not a demo network, kept")
    if model.get("weights_sha256") not in shas:
        return Item("features", folder, size, False, f"{model.get('name')} of a demo build that is gone")
    sources = {data.get("fingerprint"), *data.get("derived_from", [])}   # region crops: the split they come from
    if str(data.get("name", "")).startswith("demo:") and not sources & prints:
        return Item("features", folder, size, False, f"{data.get('name')} of a demo build that is gone")
    return Item("features", folder, size, True, f"{model.get('name')} on {data.get('name')}")


def usage(root: Path | None = None) -> Usage:
    """Every item of the cache folder with its size and whether a live demo build references it."""
    root = Path(root or cache_root())
    out = Usage(root)
    shas, prints, builds = _live_demo(root)
    feats = root / "features"
    for model_dir in sorted(feats.glob("*")) if feats.is_dir() else []:
        for folder in sorted(p for p in model_dir.glob("*") if p.is_dir()):
            out.items.append(_feature_item(folder, shas, prints))
    out.items += builds
    for kind, name in (("results", "results"), ("detection proposals", "proposals")):
        if (root / name).exists():
            out.items.append(Item(kind, root / name, _size(root / name), True, "kept (bounded by itself)"))
    return out


def prune(root: Path | None = None, dry_run: bool = False) -> list[Item]:
    """Remove the stale items of :func:`usage` (see the module doc); returns what was removed."""
    gone = []
    for item in usage(root).items:
        if item.live:
            continue
        if not dry_run:
            shutil.rmtree(item.path, ignore_errors=True)
            parent = item.path.parent
            if item.kind == "features" and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
        gone.append(item)
    if gone and not dry_run:
        log.info("pruned %d stale cache item(s), %.1f MB", len(gone), sum(i.bytes for i in gone) / 1e6)
    return gone
