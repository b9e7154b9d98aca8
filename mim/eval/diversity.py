"""Token diversity of a teacher (Img2Vec, papers.md): how different an image's output tokens are.

For an image with K output tokens t_1..t_K (ResNet: the last-stage map, 7x7 at 224 px; ViT:
patch tokens, no cls), TS = 1/(K(K-1)) * sum_{i != k} cos(t_i, t_k) and diversity = 1 - TS.
Reported: the mean over images and the (population) std over images.

Vectorised: l2-normalise, one batched Gram matrix, subtract its diagonal.  `DiversityMeter`
streams over batches holding only running sums, so memory stays bounded on any image count.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from mim.config import NonNegInt, PosInt
from mim.data.device import to_device
from mim.data.images import DataRoot
from mim.data.loaders import eval_loader
from mim.data.transforms import eval_transform
from mim.dist import gather_rows
from mim.engine import require_finite
from mim.errors import MimError
from mim.teacher.frozen import Teacher, describe
from mim.vit import ViTEncoder


@dataclass(frozen=True, kw_only=True)
class DiversityConfig:
    """The `diversity` params section."""

    img_size: PosInt = 224  # CNN teachers' input size (ResNet-50: 7x7 tokens); ViT encoders use their own
    batch_size: PosInt = 32
    split: Literal["train", "val"] = "val"  # which split of the dataset is scored
    limit_per_class: NonNegInt = 0  # images per class (0 = all)


def token_similarity(tokens: torch.Tensor) -> torch.Tensor:
    """(N, K, C) -> (N,) mean pairwise cosine similarity over token pairs i != k."""
    n, k, _ = tokens.shape
    if k < 2:
        raise MimError(f"token diversity needs at least 2 tokens per image, got {k}: raise diversity.img_size "
                       "(a CNN teacher of stride 32 needs 64 or more)")
    t = F.normalize(tokens.double(), dim=-1)  # (N, K, C)
    gram = t @ t.transpose(1, 2)  # (N, K, K) cosines
    off_diag = gram.sum(dim=(1, 2)) - gram.diagonal(dim1=1, dim2=2).sum(dim=1)  # (N,)
    return off_diag / (k * (k - 1))


def token_diversity(tokens: torch.Tensor) -> torch.Tensor:
    """(N, K, C) -> (N,) per-image diversity 1 - mean_{i != k} cos(t_i, t_k)."""
    return 1.0 - token_similarity(tokens)


class DiversityMeter:
    """Mean / std of per-image diversity: one float64 per image is kept (8 bytes: 10 MB for ImageNet's
    1.28M), so that under torchrun the values of every process's shard are gathered in dataset order
    and summed as one process sums them (the same number, not one within rounding)."""

    def __init__(self) -> None:
        self.values: list[torch.Tensor] = []
        self.tokens_per_image = 0

    def update(self, tokens: torch.Tensor) -> None:
        """tokens (N, K, C) or a grid (N, h, w, C)."""
        if tokens.ndim == 4:
            tokens = tokens.flatten(1, 2)  # (N, h*w, C)
        self.values.append(token_diversity(tokens))  # (N,) float64, on the tokens' device
        self.tokens_per_image = tokens.shape[1]

    def result(self) -> dict[str, float]:
        d = gather_rows(torch.cat(self.values)) if self.values else torch.zeros(0, dtype=torch.float64)
        if len(d) == 0:
            raise ValueError("no images scored")
        mean = float(d.sum()) / len(d)
        var = max(float((d * d).sum()) / len(d) - mean * mean, 0.0)
        return {"diversity": mean, "std": math.sqrt(var), "num_images": len(d), "tokens_per_image": self.tokens_per_image}


@torch.no_grad()
def score_teacher(teacher: Teacher, batches: Iterable[torch.Tensor | tuple[torch.Tensor, ...]], device: torch.device) -> dict[str, float]:
    """Diversity of `teacher` over image batches ((B, 3, H, W) or (images, labels))."""
    teacher.to(device)
    meter = DiversityMeter()
    for batch in batches:
        imgs = batch[0] if isinstance(batch, (tuple, list)) else batch
        meter.update(require_finite(teacher.tokens(to_device(imgs, device)).float(), f"teacher {teacher.name}'s tokens"))  # (B, h, w, C)
    return meter.result()


def teacher_input_size(teacher: Teacher, cnn_size: int) -> int:
    """ViTs run at the size their position embedding was built for; CNNs at `cnn_size`."""
    backbone = teacher.backbone
    if isinstance(backbone, ViTEncoder):
        return backbone.cfg.img_size
    patch_embed = getattr(backbone, "patch_embed", None)  # timm ViT
    if patch_embed is not None and getattr(patch_embed, "img_size", None):
        return int(patch_embed.img_size[0])
    return cnn_size


def diversity(teacher: Teacher, data: DataRoot, cfg: DiversityConfig, device: torch.device, num_workers: int = 0) -> dict[str, float]:
    """Token diversity of `teacher` over `<root>/<cfg.split>`, with its size and input resolution."""
    size = teacher_input_size(teacher, cfg.img_size)
    images = data.images(cfg.split, eval_transform(size), cfg.limit_per_class)
    batches = eval_loader(images, cfg.batch_size, num_workers=num_workers)
    info = describe(teacher)
    return {**score_teacher(teacher, batches, device), "params_m": info["params_m"], "img_size": size, "stride": info["stride"]}
