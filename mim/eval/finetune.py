"""End-to-end fine-tuning of a student encoder on labelled images (MAE's recipe).

Layer-wise lr decay, drop path, RandAugment + random erasing (timm's `create_transform`),
Mixup/CutMix with label smoothing (timm's `Mixup` + `SoftTargetCrossEntropy`), global
average pooling of the patch tokens followed by `fc_norm`, and a head initialised with
std 2e-5 (MAE `main_finetune.py`).  The same recipe fine-tunes every student and the
random-init `scratch` baseline, so the table compares pretraining only; the paper profile gives
BEiT its own recipe (section `finetune_beit`, unilm/beit get_started_for_image_classification.md),
chosen per student in dvc.yaml and read by `mimrepro finetune --section`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import torch
from timm.data import Mixup, create_transform
from timm.data.random_erasing import RandomErasing
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torch import nn
from torch.utils.data import Dataset

from mim import dist
from mim.config import DropRate, Fraction, LayerDecay, NonNegFloat, NonNegInt, PosInt, Scale, to_dict
from mim.data.device import to_device
from mim.data.images import DataRoot
from mim.data.loaders import eval_loader
from mim.encoder_file import EncoderFile
from mim.engine import OptimConfig, RunConfig, Task, device, fit, is_main, make_task, require_finite
from mim.errors import MimError
from mim.param_groups import layer_decay_groups
from mim.vit import ViTEncoder

RAND_KEYS = re.compile(r"^(t.+|(mstd|mmax|inc|m|n|p)\d.*)$")  # the sections timm's rand_augment_transform reads


def auto_augment_problem(spec: str) -> str | None:
    """Why timm cannot build `spec`, or would silently ignore part of it (its parser skips unknown
    RandAugment sections without a number, e.g. "rand-zz" is plain "rand")."""
    from timm.data.auto_augment import augment_and_mix_transform, auto_augment_transform, rand_augment_transform

    if spec == "":
        return "is empty (use null for no auto-augmentation)"
    parts = spec.split("-")
    if spec.startswith("rand"):
        unknown = [p for p in parts[1:] if not RAND_KEYS.match(p)] + ([parts[0]] if parts[0] != "rand" else [])
        if unknown:
            return f"{spec!r}: timm ignores or rejects {', '.join(unknown)} (RandAugment: rand-m<int>-n<int>-mstd<float>-inc<0|1>...)"
    build = rand_augment_transform if spec.startswith("rand") else augment_and_mix_transform if spec.startswith("augmix") \
        else auto_augment_transform
    try:
        build(spec, {"translate_const": 100, "img_mean": (124, 116, 104)})
    except Exception as e:  # timm asserts, KeyErrors and ValueErrors for a bad spec
        return f"{spec!r} is not a timm auto-augment spec ({type(e).__name__}: {e})"
    return None


@dataclass(frozen=True)
class TimmAugment:
    """The config rule for auto_augment (mim/config.py calls `problem` on Annotated rules)."""

    def problem(self, spec: str) -> str | None:
        return auto_augment_problem(spec)


AutoAugment = Annotated[str, TimmAugment()]


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    """The `finetune` params section."""

    optim: OptimConfig
    layer_decay: LayerDecay = 0.75
    drop_path: DropRate = 0.1
    mixup: NonNegFloat = 0.8
    cutmix: NonNegFloat = 1.0
    label_smoothing: DropRate = 0.1
    auto_augment: AutoAugment | None = "rand-m9-mstd0.5-inc1"  # timm RandAugment(9, 0.5)
    reprob: Fraction = 0.25  # random erasing probability (MAE repo default)
    crop_scale: Scale = (0.08, 1.0)  # RandomResizedCrop area range (timm/MAE default)
    global_pool: bool = True  # mean of patch tokens + fc_norm (MAE); False = cls token after norm
    labels_per_class: NonNegInt = 0  # fine-tune on the first N images of each class; 0 = all
    eval_batch_size: PosInt = 256
    eval_every: NonNegInt = 0  # evaluate every N epochs (always after the last); 0 = last only


class ViTClassifier(nn.Module):
    """Encoder + (global pool, fc_norm | cls token) + linear head."""

    def __init__(self, encoder: ViTEncoder, num_classes: int, global_pool: bool = True, head_std: float = 2e-5) -> None:
        super().__init__()
        self.encoder = encoder
        # MAE fine-tunes the position embedding: models_vit.VisionTransformer (timm's) holds it as a
        # learnable Parameter, loaded from the pretrained fixed sin-cos table (facebookresearch/mae
        # main_finetune.py + models_vit.py); no weight decay on it (mim/param_groups.py).  A BEiT
        # encoder has none: its per-layer relative position tables are learnable Parameters already.
        if self.encoder.pos_embed is not None:
            self.encoder.pos_embed.requires_grad_(True)
        self.global_pool = global_pool
        dim = encoder.cfg.embed_dim
        if global_pool:
            self.encoder.norm = nn.Identity()  # MAE drops the final norm and norms the pooled feature
            self.fc_norm: nn.Module = nn.LayerNorm(dim, eps=1e-6)
        else:
            self.fc_norm = nn.Identity()
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=head_std)
        nn.init.zeros_(self.head.bias)

    def features(self, imgs: torch.Tensor) -> torch.Tensor:
        x = self.encoder.forward_features(imgs)  # (N, 1+L, D)
        x = x[:, 1:].mean(dim=1) if self.global_pool else x[:, 0]  # (N, D)
        return self.fc_norm(x)

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(imgs))  # (N, classes)


def finetune_transforms(img_size: int, cfg: FinetuneConfig) -> tuple[Any, Any]:
    """(train, eval) transforms, to uint8 tensors (normalised on the device: mim/data/device.py): RandAug
    for training (its random erasing is `random_erasing`, on the device), resize + centre crop (0.875) for
    eval.  timm's `use_prefetcher=True` recipe, which its PrefetchLoader completes (timm/data/loader.py)."""
    train = create_transform(img_size, is_training=True, scale=cfg.crop_scale, auto_augment=cfg.auto_augment,
                             interpolation="bicubic", use_prefetcher=True)
    _clamp_posterize(train)
    val = create_transform(img_size, is_training=False, interpolation="bicubic", crop_pct=0.875, use_prefetcher=True)
    return train, val


def random_erasing(cfg: FinetuneConfig, dev: torch.device) -> RandomErasing | None:
    """The recipe's random erasing (MAE main_finetune.py: reprob, mode pixel, count 1) of a normalised batch
    on `dev`, as timm's PrefetchLoader applies it: after normalisation, before mixup.  It draws from python's
    and torch's streams, which the engine seeds per micro-step (mim/data/loaders.step_seed)."""
    return RandomErasing(cfg.reprob, mode="pixel", max_count=1, device=str(dev)) if cfg.reprob > 0 else None


def _clamp_posterize(transform: Any) -> None:
    """timm's increasing Posterize reaches 0 bits at magnitude 10 (m9 + mstd noise), which
    Pillow >= 13 rejects; keep at least 1 bit (0 bits only ever blanked the image)."""
    for t in getattr(transform, "transforms", []):
        for op in getattr(t, "ops", []):
            if op.name.startswith("Posterize") and op.level_fn is not None:
                op.level_fn = lambda level, hp, fn=op.level_fn: (max(1, fn(level, hp)[0]),)


@torch.no_grad()
def accuracy(model: nn.Module, dataset: Dataset, batch_size: int, topk: tuple[int, ...] = (1, 5),
             num_workers: int = 0) -> dict[str, float]:
    """Top-k accuracy in percent over a dataset of (image, label).  Under torchrun each process
    counts its shard (every image once) and the counts are summed: the same number as one process."""
    was_training = model.training
    model.eval()
    dist.broadcast_buffers(model)
    dev = next(model.parameters()).device
    correct = {k: 0 for k in topk}
    total = 0
    for imgs, labels in eval_loader(dataset, batch_size, num_workers=num_workers):
        logits = require_finite(model(to_device(imgs, dev)).float(), "the fine-tuned classifier's logits")
        labels = labels.to(dev)
        top = logits.topk(min(max(topk), logits.shape[1]), dim=1).indices  # (N, k)
        hit = top == labels[:, None]
        for k in topk:
            correct[k] += int(hit[:, :k].any(dim=1).sum())
        total += len(labels)
    model.train(was_training)
    *hits, total = dist.all_sum([correct[k] for k in topk] + [total])
    return {f"top{k}": 100.0 * h / max(total, 1) for k, h in zip(topk, hits)}


def finetune_task(encoder: EncoderFile, data: DataRoot, cfg: FinetuneConfig, run: RunConfig) -> Task:
    """Classifier on `<root>/train` (optionally N labels per class), evaluated on `<root>/val`."""
    train_tf, val_tf = finetune_transforms(encoder.config.img_size, cfg)
    train = data.images("train", train_tf, limit_per_class=cfg.labels_per_class)
    val = data.images("val", val_tf)
    if val.classes != train.classes:
        raise MimError(f"{data.root}: train and val have different classes")
    mixup = None
    if cfg.mixup > 0 or cfg.cutmix > 0:
        mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.label_smoothing, num_classes=len(train.classes))
        criterion: nn.Module = SoftTargetCrossEntropy()
    elif cfg.label_smoothing > 0:
        criterion = LabelSmoothingCrossEntropy(cfg.label_smoothing)
    else:
        criterion = nn.CrossEntropyLoss()

    erase = random_erasing(cfg, device())

    def step(m: nn.Module, b: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        imgs, labels = b
        if erase is not None:
            imgs = erase(imgs)  # in place, on the normalised batch
        if mixup is not None:
            imgs, labels = mixup(imgs, labels)  # soft targets (N, classes)
        return criterion(m(imgs), labels), {}

    def groups(model: nn.Module) -> list[dict[str, Any]]:
        out = layer_decay_groups(model, cfg.optim.weight_decay, cfg.layer_decay, encoder.config.depth, prefix="encoder.")
        for g in out:
            g.pop("names")
        return out

    def build() -> ViTClassifier:  # seeded: the head's init (after the encoder's, whose weights are then loaded)
        return ViTClassifier(encoder.build(drop_path=cfg.drop_path), len(train.classes), cfg.global_pool)

    t = make_task(build, train, cfg.optim, run, step, param_groups=groups)
    model, epochs = t.model, t.budget.epochs

    def evaluate(epoch: int) -> dict[str, float]:
        last = epoch + 1 == epochs
        if not last and not (cfg.eval_every and (epoch + 1) % cfg.eval_every == 0):
            return {}
        return {f"val/{k}": v for k, v in accuracy(model, val, cfg.eval_batch_size, num_workers=run.num_workers).items()}

    t.evaluate = evaluate
    return t


def finetune(encoder: EncoderFile, data: DataRoot, cfg: FinetuneConfig, run: RunConfig, *,
             checkpoint: Path, log_dir: Path, desc: str) -> dict[str, float]:
    """Fine-tune `encoder` on an ImageNet-layout dataset; returns the metrics the stage writes."""
    t = finetune_task(encoder, data, cfg, run)
    config = {"finetune": to_dict(cfg), "seed": run.seed, "data": str(data.root),
              "encoder_sha256": encoder.sha256}  # a new encoder restarts the run
    metrics = fit(t, run, checkpoint=checkpoint, log_dir=log_dir, config=config, desc=desc)
    if not is_main():
        return {}
    # Results only: the recipe (epochs, labels per class) is in the params and the run's config, the
    # pretraining epochs in the encoder file (the tables stage reads both).
    return {"top1": metrics["val/top1"], "top5": metrics["val/top5"]}
