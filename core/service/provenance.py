"""Provenance stamps of results, and the disk cache every analysis goes through."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from core.store.cache import default_cache
from core.hashing import code_version
from core.store.extraction import Progress
from core.service.catalog import model_info


@dataclass(frozen=True)
class Provenance:
    model: dict
    dataset: str
    layer: str
    params: dict
    code_version: str
    computed: str

    def stamp(self) -> str:
        """One line for figure captions and exports."""
        w = (self.model.get("weights_sha256") or "none")[:12]
        params = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return (f"model {self.model.get('name')} (weights {w}) · data {self.dataset} · layer {self.layer}"
                f"{' · ' + params if params else ''} · code {self.code_version} · {self.computed}")


def _prov(model_id: str, dataset: str, layer: str, params: dict) -> Provenance:
    return Provenance(model_info(model_id), dataset, layer, dict(params), code_version(),
                      time.strftime("%Y-%m-%d %H:%M"))


def _cached(request: Any, fingerprints: Sequence[str], compute: Callable[[], Any],
            progress: Progress | None = None) -> Any:
    """The cached result of ``request`` on inputs ``fingerprints``, else ``compute()`` (once,
    across threads and processes). ``progress`` hears about it only when there is work to do."""
    on_miss = None
    if progress is not None:
        what = " ".join(str(v) for v in (type(request).__name__.removesuffix("Request").lower(),
                                         getattr(request, "model", ""), getattr(request, "layer", "")) if v)
        on_miss = lambda: progress(0, 1, f"computing {what}")  # noqa: E731
    return default_cache().get_or_compute(request, fingerprints, compute, on_miss=on_miss)
