"""Similarity of representations: linear CKA (biased and debiased), minibatch CKA, unit matching.

Reproduces: Kornblith, Norouzi, Lee & Hinton, ICML 2019 ("Similarity of neural network
representations revisited": linear CKA); Nguyen, Raghu & Kornblith, ICLR 2021 ("Do wide and
deep networks learn the same things?": debiased and minibatch CKA with the unbiased HSIC of
Song et al., JMLR 2012); Li, Yosinski, Clune, Lipson & Hopcroft, ICLR 2016 ("Convergent
learning": one-to-one unit matching by correlation). None of these is in Agrawal, Girshick &
Malik (ECCV 2014); they compare the layers and units of two networks (e.g. pre-trained vs.
fine-tuned, or two training runs) on the same items, next to the paper's per-unit measures.

Every function takes numpy arrays or torch tensors (any device; rows are items, the same
items in the same order for both networks), computes in float64 torch on the device of the
first tensor given (float16 input is cast first, so every sum accumulates in float64) and
returns numpy or Python floats.

Linear HSIC is computed in the cheaper of two equal forms: with ``Xc`` the column-centred
features, ``<HKH, HLH> = ||Yc^T Xc||_F^2`` (feature space, used when a layer has fewer
features than items, ``P < N``) or the inner product of the centred ``N x N`` Grams
``Xc Xc^T`` (otherwise). For centred features ``K 1 = 0``, which turns the unbiased HSIC of
Song et al. into ``[<Kc, Lc> - n/(n-2) d.e + (sum d)(sum e)/((n-1)(n-2))] / (n(n-3))`` with
``d, e`` the diagonals of the centred Grams; the estimator is invariant to shifting the
features, so centring first changes nothing but the rounding (it avoids cancellation).
"""
from __future__ import annotations

from typing import Any, Iterable, NamedTuple, Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from core.analysis._common import as_numpy, as_torch, check_finite, device_of
from core.errors import InputError

POOLS = (None, "max", "mean")


# --------------------------------------------------------------------------- layer preparation
#: :func:`cka_matrix` keeps every layer as its ``N x N`` Gram up to this many items (128 MiB a layer).
GRAM_ALL_ITEMS = 4096


def _check_pool(pool: Any) -> None:
    if pool not in POOLS:
        raise InputError(f"pool must be None (flatten conv maps), 'max' or 'mean', got {pool!r}")


def _layer(x: Any, name: str, pool: str | None, device: torch.device) -> torch.Tensor:
    """``x`` as float64 ``[N, P]`` on ``device``: 2-D as is, ``[N, C, H, W]`` flattened or pooled."""
    t = as_torch(x, device=device, name=name)
    if t.ndim not in (2, 4):
        raise InputError(f"{name} must have shape [N, P] (features) or [N, C, H, W] (conv maps), "
                         f"got shape {tuple(t.shape)}")
    if t.shape[0] == 0 or any(s == 0 for s in t.shape[1:]):
        raise InputError(f"{name} must hold at least one item and one feature, got shape {tuple(t.shape)}")
    if t.ndim == 4:
        if pool == "max" and t.is_floating_point():
            t = t.amax(dim=(2, 3))                       # exact in any float dtype
        elif pool is not None:
            t = t.to(torch.float64)
            t = t.amax(dim=(2, 3)) if pool == "max" else t.mean(dim=(2, 3))
        else:
            t = t.reshape(t.shape[0], -1)
    t = t.to(torch.float64)
    check_finite(t, name)
    return t


class _Rep(NamedTuple):
    """A layer ready for linear HSIC: centred features (``P < N``) or their centred Gram."""

    feat: torch.Tensor | None     # [N, P] column-centred features, when P < N
    gram: torch.Tensor | None     # [N, N] centred Gram Xc Xc^T, otherwise
    diag: torch.Tensor            # [N] diagonal of the centred Gram
    varies: bool                  # not every row is the same


def _rep(t: torch.Tensor) -> _Rep:
    n, p = t.shape
    varies = n > 1 and bool((t != t[:1]).any())          # exact: no rounding of a mean involved
    xc = t - t.mean(0, keepdim=True)
    if p < n:
        return _Rep(xc, None, xc.square().sum(1), varies)
    g = _gram(xc)
    return _Rep(None, g, g.diagonal(), varies)


def _gram(xc: torch.Tensor) -> torch.Tensor:
    """``xc @ xc.T``; on the CPU by BLAS's symmetric rank-k update (``dsyrk``: half the products of a
    general matrix product, the same sums), its upper triangle mirrored."""
    if xc.device.type != "cpu":
        return xc @ xc.T
    from scipy.linalg.blas import dsyrk

    up = torch.from_numpy(dsyrk(1.0, xc.numpy().T, trans=1))   # (xc^T)^T (xc^T), no copy of xc
    return torch.triu(up) + torch.triu(up, 1).T


def _inner(a: _Rep, b: _Rep) -> torch.Tensor:
    """``<Kc_a, Kc_b>_F``, the Frobenius inner product of the two centred Grams."""
    if a.gram is not None and b.gram is not None:
        return torch.dot(a.gram.reshape(-1), b.gram.reshape(-1))
    if a.feat is not None and b.feat is not None:
        return (b.feat.T @ a.feat).square().sum()         # ||Yc^T Xc||_F^2
    gram, feat = (a.gram, b.feat) if a.gram is not None else (b.gram, a.feat)
    return ((gram @ feat) * feat).sum()                  # <Kc, Yc Yc^T> without the Gram of Y


def _hsic(a: _Rep, b: _Rep, n: int, debiased: bool) -> torch.Tensor:
    """Biased ``tr(K H L H) / (n-1)^2`` or unbiased HSIC_1 of Song et al. (see module doc)."""
    ip = _inner(a, b)
    if not debiased:
        return ip / (n - 1) ** 2
    de = torch.dot(a.diag, b.diag)
    return (ip + a.diag.sum() * b.diag.sum() / ((n - 1) * (n - 2)) - de * (n / (n - 2))) / (n * (n - 3))


def _ratio(hxy: np.ndarray, hxx: np.ndarray, hyy: np.ndarray) -> np.ndarray:
    """``hxy / sqrt(hxx hyy)`` elementwise, 0 where the product is not positive."""
    prod = hxx * hyy
    with np.errstate(invalid="ignore", divide="ignore"):
        out = hxy / np.sqrt(np.where(prod > 0, prod, 1.0))
    return np.where(prod > 0, out, 0.0)


def _check_items(n: int, debiased: bool, what: str, fix: str = "pass more items or debiased=False") -> None:
    if debiased and n < 4:
        raise InputError(f"debiased CKA needs at least 4 items (the unbiased HSIC divides by "
                         f"n(n-3)), {what} has {n}; {fix}")
    if n < 2:
        raise InputError(f"CKA needs at least 2 items, {what} has {n}")


def _no_variance(name: str) -> InputError:
    return InputError(f"{name} has no variance across items (every row is the same), so CKA is "
                      f"undefined; drop that layer or check that its features come from different inputs")


# --------------------------------------------------------------------------- full-data CKA
def linear_cka(x: Any, y: Any, *, debiased: bool = False, pool: str | None = None) -> float:
    """Linear centred kernel alignment (CKA) between two representations of the same items.

    ``CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))`` with the linear kernels
    ``K = X X^T`` and ``L = Y Y^T``: 1 for representations equal up to an orthogonal
    transform and an isotropic scaling, near 0 for unrelated ones.

    Reproduces: Kornblith et al., ICML 2019, linear CKA (biased HSIC
    ``tr(K H L H) / (n-1)^2``, ``H = I - 11^T / n``); ``debiased=True`` is the debiased CKA
    of Nguyen et al., ICLR 2021, built on the unbiased HSIC_1 of Song et al., JMLR 2012.
    Deviations: none in the estimates; where ``HSIC(K, K) HSIC(L, L) <= 0`` (possible only
    for the unbiased estimator of a degenerate representation) we return 0.0 instead of
    NaN, and a representation without any variance is rejected (CKA is undefined there).

    Parameters
    ----------
    x : array or tensor, ``[N, P1]`` or ``[N, C1, H1, W1]``
        One network's features, one row per item.
    y : array or tensor, ``[N, P2]`` or ``[N, C2, H2, W2]``
        The other's, the same items in the same order.
    debiased : bool, default False
        Use the unbiased HSIC_1 (needs ``N >= 4``). The biased estimate drifts up with
        the feature count when ``N`` is small; the unbiased one does not, and it may be
        slightly negative for unrelated features.
    pool : None, "max" or "mean"
        How conv maps ``[N, C, H, W]`` become rows: ``None`` flattens them to
        ``[N, C*H*W]``; "max" / "mean" pool each channel spatially to ``[N, C]``.
        2-D inputs are used as they are.

    Returns
    -------
    float
        CKA in ``[-1, 1]`` (``[0, 1]`` for the biased estimator), up to rounding.

    Raises
    ------
    InputError
        Different numbers of rows, NaN/inf, a shape other than 2-D/4-D, a bad ``pool``,
        fewer than 4 items with ``debiased=True``, or an input whose rows are all equal.

    Notes
    -----
    Computed in feature space (``||Yc^T Xc||_F^2``) when a layer has fewer features than
    items, otherwise through the ``N x N`` centred Gram; both give the same value.
    """
    _check_pool(pool)
    dev = device_of(x, y)
    tx, ty = _layer(x, "x", pool, dev), _layer(y, "y", pool, dev)
    if tx.shape[0] != ty.shape[0]:
        raise InputError(f"x and y must hold the same items (one row each): x has {tx.shape[0]} rows, "
                         f"y has {ty.shape[0]}")
    n = tx.shape[0]
    _check_items(n, debiased, "x")
    rx = _rep(tx)
    if not rx.varies:
        raise _no_variance("x")
    del tx
    ry = _rep(ty)
    if not ry.varies:
        raise _no_variance("y")
    del ty
    h = torch.stack([_hsic(rx, ry, n, debiased), _hsic(rx, rx, n, debiased), _hsic(ry, ry, n, debiased)])
    hxy, hxx, hyy = as_numpy(h).tolist()
    return float(_ratio(np.float64(hxy), np.float64(hxx), np.float64(hyy)))


def _reps(layers: Sequence[Any], name: str, pool: str | None, device: torch.device,
          n: int | None) -> tuple[list[_Rep], int]:
    reps = []
    for i, x in enumerate(layers):
        t = _layer(x, f"{name}[{i}]", pool, device)
        if n is None:
            n = t.shape[0]
        elif t.shape[0] != n:
            raise InputError(f"every layer must hold the same items (one row each): {name}[{i}] has "
                             f"{t.shape[0]} rows, the first layer {n}")
        reps.append(_rep(t))
        del t
    return reps, n


def _layer_list(layers: Any, name: str) -> list[Any]:
    if isinstance(layers, (np.ndarray, torch.Tensor)) or not isinstance(layers, Sequence) or not layers:
        raise InputError(f"{name} must be a non-empty list of layers (one array per layer)")
    return list(layers)


def cka_matrix(xs: Sequence[Any], ys: Sequence[Any], *, debiased: bool = False,
               pool: str | None = None) -> np.ndarray:
    """Linear CKA between every layer of one network and every layer of another, on all items.

    Reproduces: Kornblith et al., ICML 2019 (layer-by-layer CKA matrices, Figs. 4-5) with
    linear CKA as in :func:`linear_cka`; ``debiased=True`` as in Nguyen et al., ICLR 2021.
    Deviations: as :func:`linear_cka` (0.0 where the self-similarity product is <= 0).

    Parameters
    ----------
    xs : list of arrays or tensors, each ``[N, P_i]`` or ``[N, C_i, H_i, W_i]``
        The layers of network X, all on the same ``N`` items.
    ys : list of arrays or tensors, each ``[N, Q_j]`` or ``[N, C_j, H_j, W_j]``
        The layers of network Y, the same items. Pass the same list object as ``xs`` to
        compare a network with itself: each layer is then prepared once and the result is
        exactly symmetric, with ones on the diagonal.
    debiased, pool
        As in :func:`linear_cka`.

    Returns
    -------
    numpy.ndarray, float64, ``[len(xs), len(ys)]``
        Entry ``[i, j]`` equals ``linear_cka(xs[i], ys[j])`` (to rounding).

    Notes
    -----
    Each layer's centred features (``P < N``) or centred ``N x N`` Gram (``P >= N``) is
    computed once and kept for all pairs, so memory is at most that of the inputs in
    float64; with up to :data:`GRAM_ALL_ITEMS` items and any Gram among the layers, every
    layer is kept as its Gram (``N x N``), which makes each pair one dot product. For data
    that does not fit, see :class:`MinibatchCKA`.
    """
    _check_pool(pool)
    same = ys is xs
    xs = _layer_list(xs, "xs")
    ys = xs if same else _layer_list(ys, "ys")
    dev = device_of(*xs, *ys)
    rx, n = _reps(xs, "xs", pool, dev, None)
    _check_items(n, debiased, "xs[0]")
    for i, r in enumerate(rx):
        if not r.varies:
            raise _no_variance(f"xs[{i}]")
    ry = rx if same else _reps(ys, "ys", pool, dev, n)[0]
    for j, r in enumerate(ry):
        if not r.varies:
            raise _no_variance(f"ys[{j}]")
    if n <= GRAM_ALL_ITEMS and any(r.gram is not None for r in rx + ry):
        # a narrow layer against a Gram costs N^2 P per pair; its own Gram, once, makes each pair a dot
        rx = [r if r.gram is not None else r._replace(feat=None, gram=_gram(r.feat)) for r in rx]
        ry = rx if same else [r if r.gram is not None else r._replace(feat=None, gram=_gram(r.feat)) for r in ry]
    sx = torch.stack([_hsic(r, r, n, debiased) for r in rx])
    sy = sx if same else torch.stack([_hsic(r, r, n, debiased) for r in ry])
    cross = torch.empty(len(rx), len(ry), dtype=torch.float64, device=dev)
    for i, a in enumerate(rx):
        for j, b in enumerate(ry):
            if same and j < i:
                cross[i, j] = cross[j, i]
            elif same and j == i:
                cross[i, j] = sx[i]
            else:
                cross[i, j] = _hsic(a, b, n, debiased)
    sx, sy = as_numpy(sx), as_numpy(sy)
    return _ratio(as_numpy(cross), sx[:, None], sy[None, :])


# --------------------------------------------------------------------------- minibatch CKA
class MinibatchCKA:
    """Streaming minibatch CKA between every layer of network X and every layer of network Y.

    For each batch ``b`` of ``B`` items, accumulates the unbiased HSIC_1 of every layer pair
    ``(i, j)`` and of every layer with itself; :meth:`result` is
    ``mean_b HSIC_1(K_i, L_j) / sqrt(mean_b HSIC_1(K_i, K_i) mean_b HSIC_1(L_j, L_j))``.

    Reproduces: Nguyen, Raghu & Kornblith, ICLR 2021, Sec. 3.1 (minibatch CKA with the
    unbiased HSIC_1 of Song et al., JMLR 2012). Deviations: 0.0 where the mean self terms'
    product is <= 0 (instead of NaN); a layer whose rows are equal within every batch is
    rejected by :meth:`result`.

    Parameters
    ----------
    n_x, n_y : int
        Number of layers of network X and of network Y.
    pool : None, "max" or "mean"
        As in :func:`linear_cka`, applied to each batch of conv maps.

    Notes
    -----
    Every batch must have the same size ``B >= 4``: the mean of per-batch unbiased
    estimates estimates the same quantity only then (:meth:`update` rejects another size).
    The estimate is over the distribution the batches are drawn from, so feed items in
    random order (Nguyen et al. sample minibatches at random); batches sorted by class
    estimate a within-class similarity instead. Work and memory per batch are one
    ``B x B`` Gram (or ``B x P`` centred features when ``P < B``) per layer; no batch is
    kept after :meth:`update` returns. With a single batch the result equals
    ``linear_cka(x, y, debiased=True)`` on that batch.

    Attributes
    ----------
    batch_size : int or None
        ``B``, fixed by the first batch.
    num_batches : int
        Batches accumulated so far.
    """

    def __init__(self, n_x: int, n_y: int, *, pool: str | None = None):
        for name, v in (("n_x", n_x), ("n_y", n_y)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise InputError(f"{name} must be a positive int (number of layers), got {v!r}")
        _check_pool(pool)
        self.n_x, self.n_y, self.pool = int(n_x), int(n_y), pool
        self.batch_size: int | None = None
        self.num_batches = 0
        self._xy = np.zeros((self.n_x, self.n_y))
        self._xx, self._yy = np.zeros(self.n_x), np.zeros(self.n_y)
        self._varies_x = np.zeros(self.n_x, dtype=bool)
        self._varies_y = np.zeros(self.n_y, dtype=bool)

    @staticmethod
    def _layers(layers: Any, count: int, name: str) -> list[Any]:
        if isinstance(layers, (np.ndarray, torch.Tensor)) or not isinstance(layers, Sequence) \
                or len(layers) != count:
            got = f" of length {len(layers)}" if isinstance(layers, Sequence) else ""
            raise InputError(f"{name} must be a list of {count} arrays (one batch of each layer), "
                             f"got {type(layers).__name__}{got}")
        return list(layers)

    def _batch_reps(self, layers: list[Any], name: str, device: torch.device,
                    size: int | None, size_of: str) -> tuple[list[_Rep], int]:
        """Prepared layers of one batch, all with ``size`` rows (the first layer's when None)."""
        reps = []
        for i, x in enumerate(layers):
            where = f"{name}[{i}] of batch {self.num_batches}"
            t = _layer(x, where, self.pool, device)
            if size is None:
                _check_items(t.shape[0], True, where, "use batches of at least 4 items")
                size, size_of = t.shape[0], f"{name}[{i}] of that batch"
            elif t.shape[0] != size:
                raise InputError(f"{where} has {t.shape[0]} items, but {size_of} has {size}; every "
                                 "batch of every layer must have the same size (the unbiased estimate "
                                 "needs it): drop or fold the last partial batch")
            reps.append(_rep(t))
            del t
        return reps, size

    def update(self, xs: Sequence[Any], ys: Sequence[Any]) -> None:
        """Add one batch: the same ``B`` items seen by every layer of X and of Y.

        Parameters
        ----------
        xs : list of ``n_x`` arrays or tensors, each ``[B, ...]`` (2-D or 4-D)
        ys : list of ``n_y`` arrays or tensors, each ``[B, ...]``; the same list object as
            ``xs`` (with ``n_x == n_y``) compares a network with itself at half the cost.

        Raises
        ------
        InputError
            Wrong number of layers, a batch size other than the first batch's (or below
            4), mismatched rows between layers, NaN/inf, bad shapes. The accumulator is
            unchanged when it raises.
        """
        same = ys is xs and self.n_x == self.n_y
        xs = self._layers(xs, self.n_x, "xs")
        ys = xs if same else self._layers(ys, self.n_y, "ys")
        dev = device_of(*xs, *ys)
        rx, n = self._batch_reps(xs, "xs", dev, self.batch_size, "the first batch")
        ry = rx if same else self._batch_reps(
            ys, "ys", dev, n, "the first batch" if self.batch_size else "xs[0] of that batch")[0]
        sx = torch.stack([_hsic(r, r, n, True) for r in rx])
        sy = sx if same else torch.stack([_hsic(r, r, n, True) for r in ry])
        cross = torch.stack([torch.stack([sx[i] if same and i == j else _hsic(a, b, n, True)
                                          for j, b in enumerate(ry)]) for i, a in enumerate(rx)])
        self._xy += as_numpy(cross)
        self._xx += as_numpy(sx)
        self._yy += as_numpy(sy)
        self._varies_x |= np.array([r.varies for r in rx])
        self._varies_y |= np.array([r.varies for r in ry])
        self.batch_size = n
        self.num_batches += 1

    def result(self) -> np.ndarray:
        """Minibatch CKA ``[n_x, n_y]`` (float64) of the batches so far.

        Raises
        ------
        InputError
            No batch yet, or a layer without variance in any batch.
        """
        if self.num_batches == 0:
            raise InputError("no batch accumulated yet; call update(xs, ys) with at least one batch first")
        for name, varies in (("xs", self._varies_x), ("ys", self._varies_y)):
            if not varies.all():
                raise _no_variance(f"{name}[{int(np.flatnonzero(~varies)[0])}] (in every batch)")
        k = self.num_batches
        return _ratio(self._xy / k, (self._xx / k)[:, None], (self._yy / k)[None, :])


class _Rebatch:
    """Cuts one layer's stream of row blocks into batches of ``size`` rows (views where possible)."""

    def __init__(self, blocks: Iterable[Any], size: int, name: str):
        try:
            self._it = iter(blocks)
        except TypeError:
            raise InputError(f"{name} must be an iterable of row blocks, got {type(blocks).__name__}") from None
        self.size, self.name = size, name
        self._pieces: list[torch.Tensor] = []
        self._have = self.total = 0
        self._done = False

    def next(self) -> torch.Tensor | None:
        """The next full batch, or None when fewer than ``size`` rows are left."""
        while self._have < self.size and not self._done:
            block = next(self._it, _END)
            if block is _END:
                self._done = True
                break
            t = as_torch(block, name=self.name)
            if t.ndim < 2:
                raise InputError(f"each block of {self.name} must be [n, ...] rows of features, "
                                 f"got shape {tuple(t.shape)}")
            if len(t):
                self._pieces.append(t)
                self._have += len(t)
                self.total += len(t)
        if self._have < self.size:
            return None
        out, need = [], self.size
        while need:
            p = self._pieces[0]
            if len(p) <= need:
                out.append(self._pieces.pop(0))
                need -= len(p)
            else:
                out.append(p[:need])
                self._pieces[0] = p[need:]
                need = 0
        self._have -= self.size
        return out[0] if len(out) == 1 else torch.cat(out)


_END = object()


def minibatch_cka_matrix(xs_blocks: Sequence[Iterable[Any]], ys_blocks: Sequence[Iterable[Any]],
                         batch_size: int, *, pool: str | None = None) -> np.ndarray:
    """Minibatch CKA ``[n_x, n_y]`` of two networks' layers streamed as row blocks.

    Cuts each layer's stream into consecutive batches of ``batch_size`` items, feeds them
    to a :class:`MinibatchCKA` and returns its result. The last ``N mod batch_size`` items
    are dropped (a partial batch would break the equal-size requirement).

    Reproduces: Nguyen, Raghu & Kornblith, ICLR 2021, Sec. 3.1 (minibatch CKA), as
    :class:`MinibatchCKA`. Deviations: the batches are consecutive rows, not resampled at
    random: shuffle the items beforehand (the same order for every layer).

    Parameters
    ----------
    xs_blocks : list (one entry per layer of X) of iterables of arrays ``[n_k, ...]``
        Consecutive row blocks of each layer (e.g. feature shards or a data loader's
        outputs); block sizes may differ between blocks and between layers, but every
        layer must cover the same items in the same order.
    ys_blocks : the same for network Y; the same list object as ``xs_blocks`` compares a
        network with itself (each stream is read once).
    batch_size : int
        ``B >= 4`` items per batch.
    pool : None, "max" or "mean"
        As in :func:`linear_cka`.

    Returns
    -------
    numpy.ndarray, float64, ``[len(xs_blocks), len(ys_blocks)]``

    Raises
    ------
    InputError
        Fewer than ``batch_size`` items, layers with different numbers of items, or any
        error of :meth:`MinibatchCKA.update`.

    Notes
    -----
    Per layer at most one batch plus the views of the blocks it is cut from are held.
    """
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 4:
        raise InputError(f"batch_size must be an int >= 4 (the unbiased HSIC needs 4 items), got {batch_size!r}")
    same = ys_blocks is xs_blocks
    if isinstance(xs_blocks, (np.ndarray, torch.Tensor)) or not isinstance(xs_blocks, Sequence) or not xs_blocks \
            or isinstance(ys_blocks, (np.ndarray, torch.Tensor)) or not isinstance(ys_blocks, Sequence) \
            or not ys_blocks:
        raise InputError("xs_blocks and ys_blocks must be non-empty lists with one iterable of row "
                         "blocks per layer")
    streams = [_Rebatch(b, int(batch_size), f"xs_blocks[{i}]") for i, b in enumerate(xs_blocks)]
    ystreams = streams if same else [_Rebatch(b, int(batch_size), f"ys_blocks[{j}]")
                                     for j, b in enumerate(ys_blocks)]
    acc = MinibatchCKA(len(streams), len(ystreams), pool=pool)
    everything = streams if same else streams + ystreams
    while True:
        batches = [s.next() for s in everything]
        full = [b is not None for b in batches]
        if not all(full):
            break
        xs = batches[:len(streams)]
        acc.update(xs, xs if same else batches[len(streams):])
        del xs, batches
    if any(full):
        first = [s.name for s, f in zip(everything, full) if f][0]
        short = [s.name for s, f in zip(everything, full) if not f][0]
        raise InputError(f"every layer must cover the same items: {first} has more rows than {short}")
    totals = {s.total for s in everything}
    if len(totals) > 1:
        raise InputError(f"every layer must cover the same items, got row counts "
                         f"{[s.total for s in everything]}")
    if acc.num_batches == 0:
        raise InputError(f"fewer items ({totals.pop()}) than one batch of {batch_size}; "
                         "pass more items or a smaller batch_size")
    return acc.result()


# --------------------------------------------------------------------------- unit matching
def _units(x: Any, name: str, device: torch.device) -> torch.Tensor:
    t = as_torch(x, device=device, name=name)
    if t.ndim != 2:
        raise InputError(f"{name} must be unit responses [N, F] (pool conv maps to [N, C] first, "
                         f"e.g. spatial max), got shape {tuple(t.shape)}")
    if t.shape[0] < 2 or t.shape[1] == 0:
        raise InputError(f"{name} must hold at least 2 items and 1 unit, got shape {tuple(t.shape)}")
    t = t.to(torch.float64)
    check_finite(t, name)
    return t


def _standardised(t: torch.Tensor) -> torch.Tensor:
    """Columns centred and scaled to unit norm; constant columns (exactly) become zeros."""
    tc = t - t.mean(0, keepdim=True)
    norm = tc.norm(dim=0)
    varies = (t != t[:1]).any(0)
    return torch.where(varies, tc / torch.where(varies, norm, 1.0), 0.0)


def _paired(a: Any, b: Any) -> tuple[torch.Tensor, torch.Tensor]:
    dev = device_of(a, b)
    ta, tb = _units(a, "a", dev), _units(b, "b", dev)
    if ta.shape[0] != tb.shape[0]:
        raise InputError(f"a and b must hold the same items (one row each): a has {ta.shape[0]} rows, "
                         f"b has {tb.shape[0]}")
    return _standardised(ta), _standardised(tb)


def match_units(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching of the units of two networks that maximises the total correlation.

    Computes the Pearson correlation between every unit of ``a`` and every unit of ``b``
    over the items, then the assignment (each unit used at most once) with the largest sum
    of correlations (Hungarian algorithm, :func:`scipy.optimize.linear_sum_assignment`).

    Reproduces: Li, Yosinski, Clune, Lipson & Hopcroft, ICLR 2016 ("Convergent learning"),
    one-to-one unit alignment by bipartite matching of the between-net correlation
    matrix. Deviations: the items are whatever rows the caller passes (Li et al. use every
    spatial position of every image; pass ``x.permute(0, 2, 3, 1).reshape(-1, C)`` for
    that, or spatially pooled responses for one row per image); a unit without variance
    has correlation 0 with every unit (Pearson's r is undefined there).

    Parameters
    ----------
    a : array or tensor, ``[N, F1]``
        Unit responses of network A, one row per item.
    b : array or tensor, ``[N, F2]``
        Unit responses of network B on the same items.

    Returns
    -------
    index : numpy.ndarray, int64, ``[F1]``
        ``index[i]`` is the unit of ``b`` matched to unit ``i`` of ``a``; -1 where
        ``F1 > F2`` leaves unit ``i`` unmatched (``F1 - F2`` of them).
    correlation : numpy.ndarray, float64, ``[F1]``
        Pearson correlation of each matched pair; NaN for unmatched units.

    Notes
    -----
    The correlation matrix is ``F1 x F2`` float64 and the assignment costs
    ``O(F^3)``: seconds for a few thousand units.
    """
    za, zb = _paired(a, b)
    corr = as_numpy((za.T @ zb).clamp_(-1.0, 1.0))
    rows, cols = linear_sum_assignment(corr, maximize=True)
    index = np.full(za.shape[1], -1, dtype=np.int64)
    value = np.full(za.shape[1], np.nan)
    index[rows] = cols
    value[rows] = corr[rows, cols]
    return index, value


def unit_correlation(a: Any, b: Any) -> np.ndarray:
    """Pearson correlation of each unit with the same unit of another network, over the items.

    Reproduces: Li et al., ICLR 2016, the diagonal of the between-net correlation matrix,
    for two networks whose units share identities (e.g. a network before and after
    fine-tuning, the comparison Agrawal et al., ECCV 2014, make with their per-unit
    measures). Deviations: a unit without variance in either network gets correlation 0.

    Parameters
    ----------
    a, b : array or tensor, ``[N, F]``
        Responses of the same ``F`` units on the same ``N`` items.

    Returns
    -------
    numpy.ndarray, float64, ``[F]``
        Entry ``i`` is the correlation of column ``i`` of ``a`` with column ``i`` of ``b``.
    """
    za, zb = _paired(a, b)
    if za.shape[1] != zb.shape[1]:
        raise InputError(f"a and b must hold the same units (columns): a has {za.shape[1]}, b has "
                         f"{zb.shape[1]}; use match_units for networks with different units")
    return as_numpy((za * zb).sum(0).clamp_(-1.0, 1.0))


__all__ = ["linear_cka", "cka_matrix", "MinibatchCKA", "minibatch_cka_matrix", "match_units",
           "unit_correlation"]
