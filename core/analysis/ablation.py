"""Feature magnitude and location ablations, and the runner of Tables 7-8.

Reproduces: Sec. 5.1 (binarize), Sec. 5.2 (sp-max, sp-shuffle), Fig. 6, Tables 7-8.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch

from core.analysis._common import (as_numpy, as_torch, check_ndim, cpu_generator,
                                   plan_chunks, positives_matrix)
from core.analysis.precision_recall import _group_ends
from core.analysis.svm_ranking import SVMConfig, linear_map
from core.errors import InputError

if TYPE_CHECKING:
    import pandas as pd


def binarize(x: Any) -> np.ndarray:
    """Set every response to 1 where it is positive and to 0 elsewhere.

    Reproduces: Sec. 5.1 (magnitude ablation), Fig. 6.

    Parameters
    ----------
    x : array or tensor, any shape

    Returns
    -------
    numpy.ndarray
        ``(x > 0)`` as float, same shape; the input's floating dtype is kept
        (float32 for integer or bool input) so large feature maps stay compact.
    """
    t = as_torch(x, name="x")
    dtype = t.dtype if t.is_floating_point() else torch.float32
    return as_numpy((t > 0).to(dtype))


def _conv(x: Any, name: str = "x") -> torch.Tensor:
    t = as_torch(x, name=name)
    check_ndim(t, (4,), name, "[N, C, H, W] (a convolutional feature map)")
    return t


def spatial_max(x: Any) -> np.ndarray:
    """Collapse each channel's spatial map to its maximum ("sp-max").

    Reproduces: Sec. 5.2 (sp-max), Sec. 4 (conv-5 pooled to a 256-D vector), Fig. 6.

    Parameters
    ----------
    x : array or tensor, ``[N, C, H, W]``

    Returns
    -------
    numpy.ndarray, ``[N, C]``, the input's dtype
    """
    return as_numpy(_conv(x).amax(dim=(2, 3)))


def shuffle_permutations(n: int, locations: int, seed: int) -> torch.Tensor:
    """The ``[n, locations]`` spatial permutations :func:`spatial_shuffle` applies to ``n`` images:
    image ``i`` gets the ``i``-th ``torch.randperm(locations)`` of a CPU generator seeded with ``seed``."""
    g = cpu_generator(seed)
    return torch.stack([torch.randperm(locations, generator=g) for _ in range(n)])


def spatial_shuffle(x: Any, seed: int = 0) -> np.ndarray:
    """Randomly permute the spatial locations of each image ("sp-shuffle").

    Reproduces: Sec. 5.2 (sp-shuffle), Fig. 6.

    Parameters
    ----------
    x : array or tensor, ``[N, C, H, W]``
    seed : int
        Permutations come from a CPU ``torch.Generator`` seeded with ``seed``, so the
        result does not depend on the device.

    Returns
    -------
    numpy.ndarray, ``[N, C, H, W]``, the input's dtype
        Image ``i`` gets the ``i``-th ``torch.randperm(H*W)`` drawn from the generator,
        ``perm``, and ``out[i, :, p] = x[i, :, perm[p]]`` over flattened locations: all
        channels of an image share it, so columns of responses move together and each
        channel's multiset of values is preserved.
    """
    t = _conv(x)
    n, c, h, w = t.shape
    perm = shuffle_permutations(n, h * w, seed).to(t.device)
    flat = t.reshape(n, c, h * w)
    out = torch.gather(flat, 2, perm[:, None, :].expand(n, c, h * w))
    return as_numpy(out.reshape(n, c, h, w))


def _flatten(x: np.ndarray) -> np.ndarray:
    return x.reshape(x.shape[0], -1)


def ablation_transforms(ndim: int) -> dict[str, Callable[[np.ndarray, int], np.ndarray]]:
    """The ablations of Table 7 that apply to features of ``ndim`` dimensions.

    Reproduces: the columns of Table 7 (and Table 8's conv-5 row).

    Parameters
    ----------
    ndim : int
        4 for conv maps ``[N, C, H, W]``: original, binarize, sp-shuffle, sp-max;
        2 for fc features ``[N, F]``: original and binarize only ("-" in Table 7).

    Returns
    -------
    dict
        ``name -> f(features, seed)`` returning an ``[N, D]`` feature matrix.
    """
    if ndim == 2:
        return {"original": lambda x, s: x, "binarize": lambda x, s: binarize(x)}
    if ndim != 4:
        raise InputError(f"features must be [N, F] (fc) or [N, C, H, W] (conv), got {ndim}-D")
    return {"original": lambda x, s: _flatten(x),
            "binarize": lambda x, s: _flatten(binarize(x)),
            "sp-shuffle": lambda x, s: _flatten(spatial_shuffle(x, s)),
            "sp-max": lambda x, s: spatial_max(x)}


def resplit_indices(labels: np.ndarray, n_test: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices ``(train, test)`` of a stratified (single-label) or plain (multi-label) random split
    of pooled data with ``n_test`` test rows, in the order scikit-learn's ``train_test_split`` draws."""
    from sklearn.model_selection import train_test_split
    y = np.asarray(labels)
    idx = np.arange(len(y))
    strat = y if y.ndim == 1 and np.unique(y, return_counts=True)[1].min() >= 2 else None
    try:
        tr, te = train_test_split(idx, test_size=n_test, random_state=seed, stratify=strat)
    except ValueError:  # a class too small to stratify
        tr, te = train_test_split(idx, test_size=n_test, random_state=seed)
    return tr, te


def _resplit(x: np.ndarray, y: np.ndarray, n_test: int, seed: int,
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Stratified (single-label) or plain (multi-label) random split of pooled data."""
    tr, te = resplit_indices(y, n_test, seed)
    return x[tr], y[tr], x[te], y[te]


def bootstrap_map(test_scores: Any, test_labels: Any, num_classes: int | None = None, *,
                  n_bootstrap: int = 1000, seed: int = 0) -> np.ndarray:
    """mAP of bootstrap resamples of a test set.

    Reproduces: nothing in the paper (it reports mean ± std over runs); used for the
    95% confidence intervals of :func:`ablation_study`.

    Parameters
    ----------
    test_scores : ``[N, C]`` classifier scores
    test_labels : ``[N]`` ints or ``[N, C]`` bool
    n_bootstrap : int
    seed : int

    Returns
    -------
    numpy.ndarray, float64, ``[n_bootstrap]``
        Mean over the classes that have a positive in the resample of the AP.
    """
    s = as_torch(test_scores, name="test_scores", dtype=torch.float64)
    check_ndim(s, (2,), "test_scores", "[N, C]")
    n, c = s.shape
    pos = positives_matrix(test_labels, n, num_classes or c, s.device)
    idx = torch.randint(n, (n, n_bootstrap), generator=cpu_generator(seed)).to(s.device)
    aps = torch.zeros(n_bootstrap, dtype=torch.float64, device=s.device)
    has = torch.zeros(n_bootstrap, dtype=torch.float64, device=s.device)
    for sl in plan_chunks(n_bootstrap, 2 * n):
        w = torch.zeros(n, sl.stop - sl.start, dtype=torch.float64, device=s.device)
        w.scatter_add_(0, idx[:, sl], torch.ones_like(w))   # copies of each image per resample
        for cl in range(c):
            ap, present = _weighted_ap(s[:, cl], pos[:, cl], w)
            aps[sl] += ap
            has[sl] += present
    return as_numpy(aps / has.clamp_min(1.0))


def _weighted_ap(scores: torch.Tensor, pos: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """AP of one score column on ``B`` resamples given as copy counts ``w [N, B]``.

    A resample holding image ``i`` ``w[i]`` times has the AP of scikit-learn's
    ``average_precision_score`` on the resampled arrays: the copies share one score, so
    one sort of the ``N`` originals serves every resample and ties (copies included)
    still form one threshold. Returns (AP ``[B]``, 1.0 where the resample has a positive).
    """
    sv, order = torch.sort(scores, descending=True, stable=True)
    ws = w[order]
    tp = (ws * pos[order, None].to(ws.dtype)).cumsum(0)
    seen = ws.cumsum(0)
    ends = _group_ends(sv[:, None])[:, 0]                        # last index of each tie group
    precision = tp[ends] / seen[ends].clamp_min(1.0)
    total = tp[-1]
    ap = (ws * pos[order, None] * precision).sum(0) / total.clamp_min(1.0)
    return ap, (total > 0).to(ws.dtype)


@dataclasses.dataclass(frozen=True, eq=False)  # holds arrays: compare fields
class AblationResult:
    """Outcome of :func:`ablation_study`.

    ``runs``: one dict per (ablation, seed) with ``map`` and per-class ``ap``.
    ``summary``: one dict per ablation with ``mean``, ``std`` (over runs, ddof=1;
    0 for one run), ``ci_low``/``ci_high`` (bootstrap 95% CI of the mean mAP over
    runs, resampling test images) and ``n_runs``. All mAP values are fractions.
    """

    runs: tuple[dict, ...]
    summary: tuple[dict, ...]

    def to_frame(self) -> "pd.DataFrame":
        """The summary as a pandas DataFrame indexed by ablation."""
        import pandas as pd
        return pd.DataFrame(list(self.summary)).set_index("ablation")

    def runs_frame(self) -> "pd.DataFrame":
        """One row per (ablation, seed) with its mAP."""
        import pandas as pd
        return pd.DataFrame([{k: v for k, v in r.items() if k != "ap"} for r in self.runs])


def _summarise(name: str, maps: list[float], boots: list[np.ndarray]) -> dict:
    m = np.asarray(maps)
    lo, hi = np.percentile(np.mean(boots, axis=0), [2.5, 97.5])
    return {"ablation": name, "mean": float(m.mean()),
            "std": float(m.std(ddof=1)) if m.size > 1 else 0.0,
            "ci_low": float(lo), "ci_high": float(hi), "n_runs": int(m.size)}


def ablation_study(train_x: Any, train_y: Any, test_x: Any, test_y: Any, *,
                   num_classes: int | None = None, seeds: Sequence[int] = (0, 1, 2),
                   resplit: bool = True, n_bootstrap: int = 500,
                   config: SVMConfig = SVMConfig()) -> AblationResult:
    """Linear-classifier mAP of original and ablated features over several runs.

    Reproduces: Sec. 5, Table 7 (PASCAL-CLS column set) and the conv-5 row of Table 8.

    Parameters
    ----------
    train_x, test_x : ``[N, C, H, W]`` conv maps (original / binarize / sp-shuffle /
        sp-max) or ``[N, F]`` fc features (original / binarize)
    train_y, test_y : ``[N]`` ints or ``[N, C]`` bool
    seeds : one run per seed; the seed drives the re-split, the sp-shuffle
        permutations, the validation split and the bootstrap
    resplit : if True each run re-splits the pooled train+test at random (stratified
        for single-label data) keeping the test size; if False only seeds vary
    n_bootstrap : resamples of the test set for the 95% CI

    Returns
    -------
    AblationResult
        ``to_frame()`` gives mean ± std and CI per ablation.

    Notes
    -----
    Deviation: per-class one-vs-rest linear SVMs on standardised features with a
    validation-chosen C (:func:`linear_map`), scored by mAP also for single-label data.
    """
    x_tr, x_te = as_numpy(as_torch(train_x)), as_numpy(as_torch(test_x))
    y_tr, y_te = as_numpy(as_torch(train_y)), as_numpy(as_torch(test_y))
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise InputError(f"train and test features differ in shape: {x_tr.shape[1:]} "
                         f"vs {x_te.shape[1:]}")
    transforms = ablation_transforms(x_tr.ndim)
    runs: list[dict] = []
    for seed in seeds:
        split = (x_tr, y_tr, x_te, y_te)
        if resplit:
            split = _resplit(np.concatenate([x_tr, x_te]), np.concatenate([y_tr, y_te]),
                             len(x_te), seed)
        runs += _one_run(split, transforms, seed, num_classes, n_bootstrap, config)
    summary = tuple(_summarise(name, [r["map"] for r in runs if r["ablation"] == name],
                               [r["boot"] for r in runs if r["ablation"] == name])
                    for name in transforms)
    return AblationResult(tuple({k: v for k, v in r.items() if k != "boot"} for r in runs),
                          summary)


def _one_run(split: tuple, transforms: dict, seed: int, num_classes: int | None,
             n_bootstrap: int, config: SVMConfig) -> list[dict]:
    tr_x, tr_y, te_x, te_y = split
    cfg = dataclasses.replace(config, seed=int(seed))
    rows = []
    for name, fn in transforms.items():
        res = linear_map(fn(tr_x, seed), tr_y, fn(te_x, seed + 1_000_003), te_y,
                         num_classes=num_classes, config=cfg)
        boot = bootstrap_map(res.test_scores, te_y, res.ap.shape[0],
                             n_bootstrap=n_bootstrap, seed=seed)
        rows.append({"ablation": name, "seed": int(seed), "map": res.map,
                     "ap": res.ap, "boot": boot})
    return rows


__all__ = ["binarize", "spatial_max", "spatial_shuffle", "ablation_transforms",
           "bootstrap_map", "AblationResult", "ablation_study"]
