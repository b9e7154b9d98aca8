"""Frozen-encoder evaluation: linear probe (MAE) and weighted k-NN (DINO, mim/eval/knn.py) on cached features.

Features are extracted once (cls token after the final norm, centre-crop view) and both
protocols run on them: the linear probe is BatchNorm1d(affine=False) + Linear trained with
LARS (MAE `main_linprobe.py`), the k-NN classifier votes over the k nearest training
features by cosine similarity with weights exp(sim / T) (DINO `eval_knn.py`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.utils.data import Dataset

from mim.config import Momentum, NonNegFloat, NonNegInt, PosFloat, PosInt
from mim.data.images import DataRoot, make_loader
from mim.data.transforms import eval_transform
from mim.engine import require_finite
from mim.errors import MimError
from mim.eval.knn import knn_classify, topk_accuracy
from mim.schedules import cosine_schedule
from mim.vit import ViTEncoder


@dataclass(frozen=True, kw_only=True)
class LinearProbeConfig:
    epochs: PosInt = 90
    batch_size: PosInt = 16384
    base_lr: PosFloat = 0.1  # lr = base_lr * batch_size / 256
    warmup_epochs: NonNegInt = 10
    weight_decay: NonNegFloat = 0.0
    momentum: Momentum = 0.9
    optimizer: Literal["lars", "sgd"] = "lars"

    def problems(self) -> list[tuple[str, str]]:
        if self.warmup_epochs > self.epochs:
            return [("warmup_epochs", f"{self.warmup_epochs} is longer than the probe's {self.epochs} epochs")]
        return []


@dataclass(frozen=True, kw_only=True)
class KNNConfig:
    k: PosInt = 20
    temperature: PosFloat = 0.07


@dataclass(frozen=True, kw_only=True)
class ProbeConfig:
    """The `probe` params section."""

    linear: LinearProbeConfig
    knn: KNNConfig
    batch_size: PosInt = 256  # feature extraction


@torch.no_grad()
def extract_features(encoder: ViTEncoder, dataset: Dataset, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, D): cls token after the final norm, labels (N,)) in dataset order."""
    encoder.eval()
    dev = next(encoder.parameters()).device
    feats, labels = [], []
    for imgs, y in make_loader(dataset, batch_size, epoch=0, seed=0, shuffle=False, drop_last=False):
        feats.append(require_finite(encoder.forward_features(imgs.to(dev))[:, 0].float(), "the encoder's features").cpu())
        labels.append(y)
    return torch.cat(feats), torch.cat(labels)


class LARS(torch.optim.Optimizer):
    """LARS (You et al.) as MAE's linear probe uses it: trust ratio and wd on matrices only."""

    def __init__(self, params, lr: float, weight_decay: float = 0.0, momentum: float = 0.9, trust_coefficient: float = 0.001):  # type: ignore[no-untyped-def]
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, trust_coefficient=trust_coefficient))

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[no-untyped-def, override]
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                dp = p.grad
                if p.ndim > 1:  # biases and norms: plain momentum SGD
                    dp = dp.add(p, alpha=g["weight_decay"])
                    p_norm, u_norm = torch.norm(p), torch.norm(dp)
                    q = torch.where((p_norm > 0) & (u_norm > 0), g["trust_coefficient"] * p_norm / u_norm, torch.ones_like(p_norm))
                    dp = dp.mul(q)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(g["momentum"]).add_(dp)
                p.add_(mu, alpha=-g["lr"])


DIVERGED = 4.0  # the last epoch's mean loss over the first's (or ln C) that counts as divergence


def linear_probe(
    train_feats: torch.Tensor, train_labels: torch.Tensor, val_feats: torch.Tensor, val_labels: torch.Tensor,
    num_classes: int, cfg: LinearProbeConfig, seed: int = 0,
) -> dict[str, float]:
    """Train BatchNorm1d(affine=False) + Linear on frozen features; top-1/top-5 (%) on val."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    dim = train_feats.shape[1]
    head = nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=1e-6), nn.Linear(dim, num_classes))
    nn.init.trunc_normal_(head[1].weight, std=0.01)
    nn.init.zeros_(head[1].bias)
    batch = min(cfg.batch_size, len(train_feats))
    steps = len(train_feats) // batch
    lr = cfg.base_lr * batch / 256
    sched = cosine_schedule(lr, 0.0, cfg.epochs * steps, cfg.warmup_epochs * steps)
    if cfg.optimizer == "lars":
        opt: torch.optim.Optimizer = LARS(head.parameters(), lr=lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum)
    else:
        opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    head.train()
    epoch_loss = []
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(train_feats), generator=g)
        total = 0.0
        for i in range(steps):
            idx = order[i * batch : (i + 1) * batch]
            for group in opt.param_groups:
                group["lr"] = float(sched[epoch * steps + i])
            loss = loss_fn(head(train_feats[idx]), train_labels[idx])
            if not math.isfinite(loss.item()):
                raise MimError(f"the linear probe diverged (loss {loss.item()} at epoch {epoch + 1}); lower probe.linear.base_lr")
            total += loss.item()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        epoch_loss.append(total / steps)
    # the head starts near chance (loss ~ ln C); ending far above where it started is divergence, not learning
    if epoch_loss[-1] > DIVERGED * max(epoch_loss[0], math.log(num_classes)):
        raise MimError(f"the linear probe diverged (train loss rose from {epoch_loss[0]:.3g} in epoch 1 to {epoch_loss[-1]:.3g} "
                       f"in epoch {cfg.epochs}); lower probe.linear.base_lr")
    head.eval()
    with torch.no_grad():
        scores = require_finite(head(val_feats), "the linear probe's logits")
    return {"top1": topk_accuracy(scores, val_labels, 1), "top5": topk_accuracy(scores, val_labels, 5)}


def probe(encoder: ViTEncoder, data: DataRoot, cfg: ProbeConfig, seed: int) -> dict[str, float]:
    """Linear probe and k-NN of a frozen `encoder` (on its device): `<root>/train` -> `<root>/val`."""
    tf = eval_transform(encoder.cfg.img_size)
    train, val = data.images("train", tf), data.images("val", tf)
    x_train, y_train = extract_features(encoder, train, cfg.batch_size)
    x_val, y_val = extract_features(encoder, val, cfg.batch_size)
    n_cls = len(train.classes)
    scores = knn_classify(x_train, y_train, x_val, n_cls, cfg.knn.k, cfg.knn.temperature)
    lin = linear_probe(x_train, y_train, x_val, y_val, n_cls, cfg.linear, seed=seed)
    return {
        "linear_top1": lin["top1"], "linear_top5": lin["top5"],
        "knn_top1": topk_accuracy(scores, y_val, 1), "knn_top5": topk_accuracy(scores, y_val, 5),
    }
