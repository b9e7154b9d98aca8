"""Frozen-encoder evaluation: linear probe (MAE) and weighted k-NN (DINO, mim/eval/knn.py).

The linear probe is BatchNorm1d(affine=False) + Linear on the cls token after the final norm
(MAE `main_linprobe.py` with `--cls_token`, its FINETUNE.md command), trained with LARS
and a per-step warm-up + cosine lr. `probe.linear.protocol` says what it trains on:

* `augmented`, MAE's protocol: every epoch the frozen encoder (eval mode, no gradient) embeds
  fresh RandomResizedCrop + flip views of the training images and the head trains on them,
  through the engine (`make_task` / `fit`: per-epoch resumable checkpoints of the head, dvclive
  logs in the run folder, bf16 autocast on CUDA like MAE's fp16 autocast); val is the centre crop;
* `cached`: centre-crop features are extracted once and the head trains on that cache (fast on
  CPU; not MAE's protocol, and the metrics say which one produced them: `linear_protocol`).

The k-NN classifier votes over the k nearest centre-crop training features by cosine similarity
with weights exp(sim / T) (DINO `eval_knn.py`: features extracted once, centre crop).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from mim import dist
from mim.config import Momentum, NonNegFloat, NonNegInt, PosFloat, PosInt, to_dict
from mim.data.device import to_device
from mim.data.images import DataRoot
from mim.data.loaders import eval_loader
from mim.data.transforms import eval_transform
from mim.encoder_file import EncoderFile
from mim.engine import OptimConfig, RunConfig, Task, device, fit, make_task, require_finite
from mim.errors import MimError
from mim.eval.knn import knn_classify, topk_accuracy
from mim.lars import LARS
from mim.schedules import cosine_schedule
from mim.vit import ViTEncoder

Protocol = Literal["augmented", "cached"]


@dataclass(frozen=True, kw_only=True)
class LinearProbeConfig:
    protocol: Protocol = "augmented"  # augmented: MAE main_linprobe.py; cached: centre-crop features once (module docstring)
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
    batch_size: PosInt = 256  # feature extraction (and the augmented probe's val pass)


@torch.no_grad()
def extract_features(encoder: ViTEncoder, dataset: Dataset, batch_size: int, amp: bool = False,
                     num_workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, D): cls token after the final norm, labels (N,)) of the whole dataset in its order,
    on the encoder's device; `amp`: bf16 autocast on CUDA.  Under torchrun each process embeds its
    shard and every process gets all rows (mim/dist.py gather_rows)."""
    encoder.eval()
    dev = next(encoder.parameters()).device
    feats, labels = [], []
    for imgs, y in eval_loader(dataset, batch_size, num_workers=num_workers):
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp and dev.type == "cuda"):
            x = encoder.forward_features(to_device(imgs, dev))[:, 0]  # (N, D)
        feats.append(require_finite(x.float(), "the encoder's features"))
        labels.append(y.to(dev))
    return dist.gather_rows(torch.cat(feats)), dist.gather_rows(torch.cat(labels))


def linear_head(dim: int, num_classes: int) -> nn.Sequential:
    """BatchNorm1d without affine parameters, then Linear with weight ~ trunc_normal(std 0.01) and bias 0
    (MAE main_linprobe.py: "hack: revise model's head with BN", init following MoCo v3)."""
    head = nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=1e-6), nn.Linear(dim, num_classes))
    nn.init.trunc_normal_(head[1].weight, std=0.01)
    nn.init.zeros_(head[1].bias)
    return head


DIVERGED = 4.0  # the last epoch's mean loss over the first's (or ln C) that counts as divergence


def check_divergence(epoch_loss: list[float], num_classes: int) -> None:
    """The head starts near chance (loss ~ ln C); ending far above where it started is divergence, not learning."""
    if epoch_loss[-1] > DIVERGED * max(epoch_loss[0], math.log(num_classes)):
        raise MimError(f"the linear probe diverged (train loss rose from {epoch_loss[0]:.3g} in epoch 1 to {epoch_loss[-1]:.3g} "
                       f"in epoch {len(epoch_loss)}); lower probe.linear.base_lr")


# --- cached: centre-crop features extracted once --------------------------------------------------
def linear_probe(
    train_feats: torch.Tensor, train_labels: torch.Tensor, val_feats: torch.Tensor, val_labels: torch.Tensor,
    num_classes: int, cfg: LinearProbeConfig, seed: int = 0,
) -> dict[str, float]:
    """The cached protocol: train the head on frozen features; top-1/top-5 (%) on val."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = linear_head(train_feats.shape[1], num_classes).to(train_feats.device)  # on the features' device (the GPU)
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
            value = loss.item()
            if not math.isfinite(value):
                raise MimError(f"the linear probe diverged (loss {value} at epoch {epoch + 1}); lower probe.linear.base_lr")
            total += value
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        epoch_loss.append(total / steps)
    check_divergence(epoch_loss, num_classes)
    head.eval()
    with torch.no_grad():
        scores = require_finite(head(val_feats), "the linear probe's logits")
    return {"top1": topk_accuracy(scores, val_labels, 1), "top5": topk_accuracy(scores, val_labels, 5)}


# --- augmented: fresh views through the frozen encoder every epoch (MAE's protocol) -------------
class RandomResizedCrop(T.RandomResizedCrop):
    """MAE's linear-probe crop (util/crop.py, after BYOL's TF code): one draw of the area and the
    log aspect ratio, the box clamped to the image; torchvision's retries up to 10 times and falls
    back to a centre crop."""

    @staticmethod
    def get_params(img: Any, scale: list[float], ratio: list[float]) -> tuple[int, int, int, int]:  # type: ignore[override]
        _, height, width = TF.get_dimensions(img)
        area = height * width * torch.empty(1).uniform_(scale[0], scale[1]).item()
        lo, hi = math.log(ratio[0]), math.log(ratio[1])
        aspect = math.exp(torch.empty(1).uniform_(lo, hi).item())
        w = min(int(round(math.sqrt(area * aspect))), width)
        h = min(int(round(math.sqrt(area / aspect))), height)
        top = int(torch.randint(0, height - h + 1, size=(1,)).item())
        left = int(torch.randint(0, width - w + 1, size=(1,)).item())
        return top, left, h, w


def linprobe_transform(img_size: int) -> T.Compose:
    """MAE main_linprobe.py's training view ("weak augmentation"): RandomResizedCrop (bicubic) + flip."""
    return T.Compose([
        RandomResizedCrop(img_size, interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(),
        T.PILToTensor(),  # uint8: normalised on the device (mim/data/device.py)
    ])


class EpochLosses:
    """Mean training loss of each finished epoch (for the divergence check; resumed with the checkpoint)."""

    def __init__(self) -> None:
        self.means: list[float] = []
        self._sum: torch.Tensor | float = 0.0
        self._n = 0

    def add(self, loss: torch.Tensor) -> None:
        self._sum = self._sum + loss.detach().float()
        self._n += 1

    def end_epoch(self) -> None:
        self.means.append(float(self._sum) / max(self._n, 1))
        self._sum, self._n = 0.0, 0

    def state_dict(self) -> dict[str, Any]:  # with the running sum: a mid-epoch checkpoint resumes it
        return {"means": list(self.means), "sum": float(self._sum), "n": self._n}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.means = [float(v) for v in state["means"]]
        self._sum, self._n = float(state.get("sum", 0.0)), int(state.get("n", 0))


def augmented_task(encoder: ViTEncoder, train: Dataset, val: Dataset, num_classes: int, cfg: ProbeConfig, run: RunConfig) -> Task:
    """The head (the engine's model) trained on the frozen `encoder`'s features of `train`'s views
    (its transform draws them); `evaluate` scores `val` after the last epoch."""
    lin = cfg.linear
    optim = OptimConfig(epochs=lin.epochs, batch_size=lin.batch_size, base_lr=lin.base_lr, warmup_epochs=lin.warmup_epochs,
                        weight_decay=lin.weight_decay, momentum=lin.momentum, optimizer=lin.optimizer)
    encoder.requires_grad_(False).eval().to(device())  # MAE freezes all but the head; eval: no drop path
    losses = EpochLosses()

    def step(head: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        imgs, labels = batch
        with torch.no_grad():
            x = require_finite(encoder.forward_features(imgs)[:, 0].float(), "the encoder's features")  # (N, D)
        loss = F.cross_entropy(head(x), labels)
        losses.add(loss)
        return loss, {}

    t = make_task(lambda: linear_head(encoder.cfg.embed_dim, num_classes), train, optim, run, step)
    head = t.model

    def evaluate(epoch: int) -> dict[str, float]:
        losses.end_epoch()
        if epoch + 1 < lin.epochs:
            return {}
        check_divergence(losses.means, num_classes)
        x_val, y_val = extract_features(encoder, val, cfg.batch_size, amp=run.amp, num_workers=run.num_workers)
        head.eval()
        dist.broadcast_buffers(head)  # BatchNorm's running statistics of rank 0 (each process's last step updated its own)
        with torch.no_grad():
            scores = require_finite(head(x_val.to(next(head.parameters()).device)).float(), "the linear probe's logits")
        return {"val/top1": topk_accuracy(scores, y_val, 1), "val/top5": topk_accuracy(scores, y_val, 5)}

    t.evaluate = evaluate
    t.extra_state = {"losses": losses}
    return t


# --- both probes ---------------------------------------------------------------------------------
def probe(encoder: EncoderFile, data: DataRoot, cfg: ProbeConfig, run: RunConfig, *, checkpoint: Path | None = None,
          log_dir: Path | None = None, desc: str = "probe") -> dict[str, float | str]:
    """Linear probe and k-NN of a frozen `encoder`: `<root>/train` -> `<root>/val`.  The augmented
    protocol resumes from `checkpoint` and logs to `log_dir` (mim.engine.fit)."""
    enc = encoder.build().to(device())
    tf = eval_transform(enc.cfg.img_size)
    train, val = data.images("train", tf), data.images("val", tf)
    x_train, y_train = extract_features(enc, train, cfg.batch_size, num_workers=run.num_workers)
    x_val, y_val = extract_features(enc, val, cfg.batch_size, num_workers=run.num_workers)
    n_cls = len(train.classes)
    scores = knn_classify(x_train, y_train, x_val, n_cls, cfg.knn.k, cfg.knn.temperature)
    if cfg.linear.protocol == "cached":
        lin = linear_probe(x_train, y_train, x_val, y_val, n_cls, cfg.linear, seed=run.seed)
    else:
        if checkpoint is None or log_dir is None:
            raise MimError("probe.linear.protocol augmented trains through the engine and needs a run folder (--run)")
        task = augmented_task(enc, data.images("train", linprobe_transform(enc.cfg.img_size)), val, n_cls, cfg, run)
        config = {"probe": to_dict(cfg), "seed": run.seed, "data": str(data.root),
                  "encoder_sha256": encoder.sha256}  # a new encoder restarts the run
        m = fit(task, run, checkpoint=checkpoint, log_dir=log_dir, config=config, desc=desc)
        lin = {"top1": m["val/top1"], "top5": m["val/top5"]}
    return {
        "linear_top1": lin["top1"], "linear_top5": lin["top5"],
        "knn_top1": topk_accuracy(scores, y_val, 1), "knn_top5": topk_accuracy(scores, y_val, 5),
        "linear_protocol": cfg.linear.protocol,
    }
