"""Checkpoint series: the weights of one training run, named by a folder or a glob in a model id.

``timm:resnet50@runs/exp3/ckpt-*.pth`` or ``py:mynet.py:build@runs/exp3/`` names every checkpoint
of a run (a folder: its ``.pt`` / ``.pth`` / ``.bin`` / ``.safetensors`` files), ordered by the step
number in their names: the last integer of the file name (``ckpt-300.pth`` -> 300,
``epoch_12-step_4000.pt`` -> 4000). The series as a model is its last checkpoint; each checkpoint is a
model of its own (``<kind>:<name>@<file>``), so the Training dynamics page and the snapshot tables
(paper Tables 3-4, Fig. 2) measure the run as they measure the demo's pretraining snapshots.
"""
from __future__ import annotations

import glob
import re
from pathlib import Path

from core.errors import InputError

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
_GLOB = re.compile(r"[*?\[]")


def is_series(weights: str) -> bool:
    """True when a model id's weights part names several checkpoints (a glob or a folder)."""
    return bool(weights) and (bool(_GLOB.search(weights)) or Path(weights).expanduser().is_dir())


def step_of(path: Path) -> int | None:
    """The step number in a checkpoint's file name: its last integer (None when it has none)."""
    found = re.findall(r"\d+", Path(path).name.removesuffix(Path(path).suffix))
    return int(found[-1]) if found else None


def expand(weights: str) -> list[tuple[int, Path]]:
    """``(step, file)`` of every checkpoint a folder or glob names, by step; InputError when it names
    none, when a file has no step number, or when two files have the same step."""
    base = Path(weights).expanduser()
    if base.is_dir():
        files = sorted(p for p in base.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    else:
        files = sorted(Path(p) for p in glob.glob(str(base)) if Path(p).is_file())
    if not files:
        raise InputError(f"checkpoint series {weights!r} names no weights file ({', '.join(WEIGHT_SUFFIXES)}): "
                         "give a folder of checkpoints or a glob such as runs/exp3/ckpt-*.pth")
    unnumbered = [p.name for p in files if step_of(p) is None]
    if unnumbered:
        raise InputError(f"checkpoint series {weights!r}: no step number in {', '.join(unnumbered[:3])}; the files "
                         "of a series are ordered by the last number in their names (ckpt-300.pth)")
    steps = sorted((step_of(p), p) for p in files)
    dupes = sorted({s for (s, _), (t, _) in zip(steps, steps[1:]) if s == t})
    if dupes:
        raise InputError(f"checkpoint series {weights!r}: several files have step {dupes[0]}; narrow the glob")
    return steps


def members(model_id: str) -> list[tuple[int, str]]:
    """``(step, model id)`` of each checkpoint of a series id, by step; ``[]`` when the id is not a series."""
    kind, sep, rest = model_id.partition(":")
    head, at, weights = rest.partition("@")
    if not sep or not at or not is_series(weights):
        return []
    return [(step, f"{kind}:{head}@{path}") for step, path in expand(weights)]
