"""Student pretraining on unlabelled images: the MAE recipe's data pipeline and `Task`.

Any student whose `forward(imgs) -> (loss, logs)` fits this shape (MAE; BEiT and Img2Vec
may add their own targets in the model) trains through `image_pretrain_task`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision import transforms as T

from mim.data import IMAGENET_MEAN, IMAGENET_STD, ImageFolder, make_loader
from mim.errors import MimError
from mim.engine import OptimConfig, RunConfig, Task, local_batch, param_groups_weight_decay, steps_for
from mim.mae import MAEConfig


@dataclass(frozen=True, kw_only=True)
class MAEPretrainConfig:
    """The `mae` params section: model, augmentation and optimizer of MAE pretraining."""

    model: MAEConfig
    optim: OptimConfig
    crop_scale: tuple[float, float] = (0.2, 1.0)  # RandomResizedCrop scale range (MAE)


def pretrain_transform(img_size: int, crop_scale: tuple[float, float]) -> T.Compose:
    """MAE pretraining augmentation: RandomResizedCrop(scale) + horizontal flip, nothing else."""
    return T.Compose(
        [
            T.RandomResizedCrop(img_size, scale=crop_scale, interpolation=T.InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def image_pretrain_task(
    model: nn.Module, train_root: Path, img_size: int, crop_scale: tuple[float, float], optim: OptimConfig, run: RunConfig
) -> Task:
    """Task over `<train_root>/<class>/*` (labels ignored); wd skips norms, biases and tokens."""
    dataset = ImageFolder(train_root, pretrain_transform(img_size, crop_scale))
    batch = local_batch(optim)
    if len(dataset) < batch * optim.accum_steps:
        raise MimError(f"{train_root} has {len(dataset)} images, fewer than one batch ({optim.batch_size}); lower batch_size")

    def loader(epoch: int) -> Any:
        return make_loader(dataset, batch, epoch=epoch, seed=run.seed, num_workers=run.num_workers)

    def step(m: nn.Module, b: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        imgs, _ = b
        return m(imgs)

    no_decay = getattr(model, "no_weight_decay", lambda: set())()
    groups = param_groups_weight_decay(model, optim.weight_decay, no_decay)
    return Task(model, step, loader, steps_for(len(dataset), batch), groups)
