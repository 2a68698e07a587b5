"""Every ``FILTERSCOPE_*`` setting, named, documented and read here, at call time.

Settings come from environment variables so that the app, the CLI and Ray workers
(which receive :func:`worker_environment`) agree. Nothing else in the project reads
``os.environ`` for them: callers ask this module, and pass what they got on as plain
arguments. Read at call time, so the CLI's ``--profile`` (which sets
``FILTERSCOPE_DEMO``) and a test's ``monkeypatch.setenv`` take effect at once.

=============================  ====================================================================
variable                       meaning
=============================  ====================================================================
``FILTERSCOPE_CACHE``          cache folder (features, results, demo build); default ``<repo>/cache``
``FILTERSCOPE_CACHE_GB``       size limit of the result cache in GiB (default 8)
``FILTERSCOPE_MEMORY_GB``      memory budget of an analysis in GiB (default 1): larger layers are streamed
``FILTERSCOPE_DEMO``           demo profile: ``full`` (default), ``tiny`` (tests) or ``fashion``
``FILTERSCOPE_SOURCE_WEIGHTS`` folder of the shipped source networks (default ``<repo>/weights/demo``)
``FILTERSCOPE_FASHION_MNIST``  Fashion-MNIST folder (default ``/usr/share/datasets/fashion-mnist``)
``FILTERSCOPE_MODELS``         comma-separated model ids shown in the app (``tv:alexnet@/w.pth,...``)
``FILTERSCOPE_VOC``            folder holding ``VOCdevkit/VOC2007``: the CLS, DET-GT and DET tasks
``FILTERSCOPE_VOC_2012``       ``1``: train detection on VOC 2007 + 2012 trainval (PASCAL-DET+DATA)
``FILTERSCOPE_SUN397``         SUN397 folder: the SUN-CLS task
``FILTERSCOPE_IMAGEFOLDER``    an ImageFolder tree ``<root>/train`` and ``<root>/test``: one task
``FILTERSCOPE_COMPUTE_LOG``    file to append one JSON line per computed result (an audit; tests)
``FILTERSCOPE_VALIDATE_FIGURES`` ``1``: plotly validates every figure property (the test suite)
=============================  ====================================================================
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

from core.errors import InputError

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Setting:
    """One ``FILTERSCOPE_*`` variable: its name, default (as text) and what it means."""

    name: str
    default: str
    doc: str


SETTINGS: dict[str, Setting] = {s.name: s for s in (
    Setting("FILTERSCOPE_CACHE", "", "cache folder; empty: <repo>/cache"),
    Setting("FILTERSCOPE_CACHE_GB", "8", "size limit of the result cache, GiB"),
    Setting("FILTERSCOPE_MEMORY_GB", "1", "memory budget of an analysis, GiB: larger layers are streamed"),
    Setting("FILTERSCOPE_DEMO", "full", "demo profile: full, tiny or fashion"),
    Setting("FILTERSCOPE_SOURCE_WEIGHTS", "", "folder of the shipped source networks; empty: <repo>/weights/demo"),
    Setting("FILTERSCOPE_FASHION_MNIST", "", "Fashion-MNIST folder; empty: Debian's dataset-fashion-mnist"),
    Setting("FILTERSCOPE_MODELS", "", "comma-separated model ids shown in the app"),
    Setting("FILTERSCOPE_VOC", "", "folder holding VOCdevkit/VOC2007"),
    Setting("FILTERSCOPE_VOC_2012", "", "1: detection also trains on VOC 2012 trainval"),
    Setting("FILTERSCOPE_SUN397", "", "SUN397 folder"),
    Setting("FILTERSCOPE_IMAGEFOLDER", "", "ImageFolder tree with train/ and test/"),
    Setting("FILTERSCOPE_COMPUTE_LOG", "", "file receiving one JSON line per computed result"),
    Setting("FILTERSCOPE_VALIDATE_FIGURES", "", "1: plotly validates every figure property"),
)}

#: The settings a Ray worker needs to find the same cache, demo and data as the driver.
WORKER_SETTINGS = ("FILTERSCOPE_CACHE", "FILTERSCOPE_CACHE_GB", "FILTERSCOPE_MEMORY_GB", "FILTERSCOPE_DEMO",
                   "FILTERSCOPE_SOURCE_WEIGHTS",
                   "FILTERSCOPE_FASHION_MNIST")

#: The settings that name the user's own models and data (``core.service.catalog`` registers them).
USER_DATA_SETTINGS = ("FILTERSCOPE_MODELS", "FILTERSCOPE_VOC", "FILTERSCOPE_VOC_2012", "FILTERSCOPE_SUN397",
                      "FILTERSCOPE_IMAGEFOLDER")


def get(name: str, environ: Mapping[str, str] | None = None) -> str:
    """The value of setting ``name`` now (its default when unset or empty)."""
    setting = SETTINGS[name]  # KeyError: not a Filterscope setting
    value = (os.environ if environ is None else environ).get(name, "")
    return value if value != "" else setting.default


def _path(name: str, default: Path) -> Path:
    value = get(name)
    return Path(value).expanduser() if value else default


def cache_path() -> Path:
    """The cache directory: ``$FILTERSCOPE_CACHE`` if set, else ``<repo>/cache`` (not created)."""
    return _path("FILTERSCOPE_CACHE", PROJECT_ROOT / "cache")


def cache_root() -> Path:
    """:func:`cache_path`, created if missing."""
    root = cache_path()
    root.mkdir(parents=True, exist_ok=True)
    return root


def cache_size_limit() -> int:
    """Size limit of the result cache in bytes (``$FILTERSCOPE_CACHE_GB`` GiB, 8 by default)."""
    value = get("FILTERSCOPE_CACHE_GB")
    try:
        gib = float(value)
    except ValueError:
        raise InputError(f"FILTERSCOPE_CACHE_GB={value!r} is not a number of GiB; set it to e.g. 8, or unset it") \
            from None
    return int(gib * 2**30)


def memory_budget() -> int:
    """Bytes an analysis may hold at once (``$FILTERSCOPE_MEMORY_GB`` GiB, 1 by default): a layer whose
    working copy would exceed it is read in row blocks instead of whole (``core.service.analyses``)."""
    value = get("FILTERSCOPE_MEMORY_GB")
    try:
        gib = float(value)
    except ValueError:
        gib = -1.0
    if not gib > 0 or gib != gib or gib == float("inf"):
        raise InputError(f"FILTERSCOPE_MEMORY_GB={value!r} is not a positive number of GiB; set it to e.g. 1 "
                         "(or 0.25 on a small machine), or unset it")
    return int(gib * 2**30)


def demo_profile() -> str:
    """The demo profile's name as set (``$FILTERSCOPE_DEMO``, ``full`` by default; not validated here)."""
    return get("FILTERSCOPE_DEMO")


def source_weights_dir() -> Path:
    """Folder of the shipped source networks: ``$FILTERSCOPE_SOURCE_WEIGHTS`` or ``<repo>/weights/demo``."""
    return _path("FILTERSCOPE_SOURCE_WEIGHTS", PROJECT_ROOT / "weights" / "demo")


def fashion_mnist_dir(default: Path) -> Path:
    """The Fashion-MNIST folder: ``$FILTERSCOPE_FASHION_MNIST`` if set, else ``default``."""
    return _path("FILTERSCOPE_FASHION_MNIST", default)


def compute_log() -> Path | None:
    """File receiving one JSON line per computed result (``$FILTERSCOPE_COMPUTE_LOG``), or None."""
    value = get("FILTERSCOPE_COMPUTE_LOG")
    return Path(value) if value else None


def validate_figures() -> bool:
    """True when plotly should validate every property set on a figure (``$FILTERSCOPE_VALIDATE_FIGURES=1``)."""
    return get("FILTERSCOPE_VALIDATE_FIGURES") == "1"


def user_data(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The user's models and data as set: ``{variable: value}`` for :data:`USER_DATA_SETTINGS`."""
    return {k: get(k, environ) for k in USER_DATA_SETTINGS}


def worker_environment() -> dict[str, str]:
    """The settings a Ray worker receives: the cache folder resolved, the others when set."""
    env = {"FILTERSCOPE_CACHE": str(cache_root())}
    env.update({k: os.environ[k] for k in WORKER_SETTINGS if os.environ.get(k) and k not in env})
    return env


@contextlib.contextmanager
def override(**values: str | None) -> Iterator[None]:
    """Set (or, with None, unset) settings for the duration of a ``with`` block.

    >>> with override(FILTERSCOPE_DEMO="tiny"):
    ...     demo_profile()
    'tiny'
    """
    unknown = [k for k in values if k not in SETTINGS]
    if unknown:
        raise KeyError(f"not Filterscope settings: {', '.join(unknown)}")
    old = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        yield
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
