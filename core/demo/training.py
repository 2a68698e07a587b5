"""Supervised pretraining, snapshots and fine-tuning of the demo network (paper Sec. 2.3, 3).

Pretraining plays ImageNet's role (many source classes); fine-tuning follows the
paper's recipe scaled down: the classifier is replaced by a new randomly initialised
layer and SGD with momentum runs at a fixed lr, divided by 10 at fixed steps (the
schedules and their deviations are in :class:`core.demo.build.DemoConfig`). Variants: full
fine-tuning (ft), fc-only fine-tuning (fc-ft: conv1-5 frozen) and training from scratch
on the target task. Fixed iteration counts, deterministic for a seed on the CPU.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from core.store.extraction import uint8_to_input
from core.data.models import DemoAlexNet

log = logging.getLogger(__name__)

#: A run's stored loss curve keeps about this many values (every ``loss_curve_step``-th step).
LOSS_CURVE_POINTS = 200


def loss_curve_step(iterations: int) -> int:
    """Every how many steps a run of ``iterations`` steps keeps its loss in the stored curve."""
    return max(1, iterations // LOSS_CURVE_POINTS)
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class TrainConfig:
    """One training run. ``lr_steps``: iterations at which lr is divided by 10."""

    iterations: int
    batch_size: int = 128
    lr: float = 0.01
    lr_steps: tuple[int, ...] = ()
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    freeze_conv: bool = False
    flip: bool = True
    snapshots: tuple[int, ...] = field(default=())
    optimizer: str = "sgd"  # "sgd" (paper) or "adamw"


def init_weights(net: nn.Module, seed: int) -> None:
    """Deterministic Kaiming init for convs/linears (zero biases)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * np.sqrt(2.0 / fan_in))
                if m.bias is not None:
                    m.bias.zero_()


def _optimizer(net: DemoAlexNet, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.freeze_conv:
        for name in ("conv1", "conv2", "conv3", "conv4", "conv5"):
            for p in getattr(net, name).parameters():
                p.requires_grad_(False)
    params = [p for p in net.parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def train(net: DemoAlexNet, images: np.ndarray, labels: np.ndarray, cfg: TrainConfig, *,
          mean: Sequence[float], std: Sequence[float],
          on_snapshot: Callable[[int, DemoAlexNet], None] | None = None,
          progress: Progress | None = None, desc: str = "training") -> dict:
    """Softmax-cross-entropy SGD on uint8 ``[N, H, W, 3]`` images with int labels.

    Calls ``on_snapshot(iteration, net)`` at each iteration listed in ``cfg.snapshots``
    (0 = before the first step). Returns metrics: final loss, loss curve, img/s.
    """
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    net = net.to(memory_format=torch.channels_last)
    opt = _optimizer(net, cfg)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(cfg.lr_steps), gamma=0.1)
    loss_fn = nn.CrossEntropyLoss()
    y_all = torch.as_tensor(labels, dtype=torch.long)
    size = images.shape[1]
    curve: list[float] = []
    t0 = time.perf_counter()
    order = rng.permutation(len(images))
    pos = 0
    for it in range(cfg.iterations + 1):
        if on_snapshot and it in cfg.snapshots:
            on_snapshot(it, net)
        if it == cfg.iterations:
            break
        if pos + cfg.batch_size > len(order):
            order, pos = rng.permutation(len(images)), 0
        idx = np.sort(order[pos:pos + cfg.batch_size])
        pos += cfg.batch_size
        x = uint8_to_input(images[idx], mean, std, size)
        if cfg.flip:
            flip = torch.from_numpy(rng.random(len(idx)) < 0.5)
            x[flip] = x[flip].flip(-1)
        net.train()
        if cfg.freeze_conv:  # frozen conv layers stay in eval mode (no dropout there anyway)
            for name in ("conv1", "conv2", "conv3", "conv4", "conv5"):
                getattr(net, name).eval()
        loss = loss_fn(net(x.contiguous(memory_format=torch.channels_last)), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        curve.append(float(loss.detach()))
        if progress and (it % 10 == 0 or it == cfg.iterations - 1):
            progress(it + 1, cfg.iterations, f"{desc}: loss {np.mean(curve[-20:]):.3f}")
    net.eval()
    elapsed = time.perf_counter() - t0
    return {"iterations": cfg.iterations, "final_loss": float(np.mean(curve[-20:])) if curve else None,
            "loss_curve": [float(v) for v in np.asarray(curve).reshape(-1)[:: loss_curve_step(len(curve))]],
            "seconds": elapsed, "img_per_s": cfg.iterations * cfg.batch_size / max(elapsed, 1e-9)}


@torch.inference_mode()
def predict(net: nn.Module, images: np.ndarray, *, mean: Sequence[float], std: Sequence[float],
            batch_size: int = 256) -> np.ndarray:
    """Softmax probabilities ``[N, num_classes]`` of the network on uint8 images."""
    net.eval()
    out = []
    for s in range(0, len(images), batch_size):
        x = uint8_to_input(images[s:s + batch_size], mean, std, images.shape[1])
        out.append(torch.softmax(net(x), dim=1).numpy())
    return np.concatenate(out).astype(np.float64)


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float((probs.argmax(1) == labels).mean())
