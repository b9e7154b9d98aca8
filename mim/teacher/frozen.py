"""Frozen teachers: any backbone that maps images to a grid of output tokens.

Token diversity (mim/diversity.py) scores teachers and Img2Vec regresses their tokens, so
both take a `Teacher`: `tokens(imgs) -> (N, h, w, C)` on the teacher's own output grid
(stride `stride` pixels per token).  Two kinds load from local files only:

* a mimrepro ViT encoder (mim/encoder_file.py): patch tokens, no cls, after the final norm;
* a timm CNN (`resnet50` by default, our DINO teacher's export or any local timm weights):
  the last stage's spatial map (7x7 at 224 px for ResNet-50, stride 32).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mim.checkpoint import load_strict, read_safetensors, save_safetensors
from mim.encoder_file import EncoderFile
from mim.errors import MimError
from mim.vit import ViTEncoder

TIMM_FORMAT = "mimrepro-timm-backbone/1"


class Teacher(nn.Module):
    """Frozen, eval-mode feature extractor.  `train()` is a no-op: a teacher never leaves eval."""

    stride: int
    dim: int

    def __init__(self, backbone: nn.Module, stride: int, dim: int, name: str) -> None:
        super().__init__()
        self.backbone = backbone
        self.stride = stride
        self.dim = dim
        self.name = name
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> Teacher:
        return self  # stays in eval mode (BatchNorm statistics and dropout frozen)

    @torch.no_grad()
    def tokens(self, imgs: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, H/stride, W/stride, C) output tokens."""
        if isinstance(self.backbone, ViTEncoder):
            x = self.backbone.forward_features(imgs)[:, 1:]  # (N, L, C), cls dropped
            g = imgs.shape[-1] // self.stride
            return x.reshape(x.shape[0], imgs.shape[-2] // self.stride, g, x.shape[-1])
        fmap = self.backbone.forward_features(imgs)
        if fmap.ndim == 3:  # timm ViT: (N, prefix+L, C), drop cls/register tokens
            x = fmap[:, getattr(self.backbone, "num_prefix_tokens", 1) :]
            return x.reshape(x.shape[0], imgs.shape[-2] // self.stride, imgs.shape[-1] // self.stride, x.shape[-1])
        return fmap.permute(0, 2, 3, 1)  # (N, C, h, w) -> (N, h, w, C)


def save_timm_backbone(path: Path, model: nn.Module, arch: str, extra: dict[str, str] | None = None) -> None:
    """Write a timm model's state_dict (timm key names) with its architecture name."""
    meta = {"format": TIMM_FORMAT, "arch": arch, **(extra or {})}
    save_safetensors(Path(path), model.state_dict(), meta)


def timm_backbone(arch: str, state: dict[str, torch.Tensor] | None = None, **kwargs: object) -> nn.Module:
    """timm model without classifier or pooling; kwargs go to timm.create_model."""
    import timm

    try:
        model = timm.create_model(arch, pretrained=False, num_classes=0, global_pool="", **kwargs)
    except RuntimeError as e:  # timm: "Unknown model"
        raise MimError(f"unknown timm model {arch!r}: {e}") from None
    if state is not None:
        state = {k: v for k, v in state.items() if not k.startswith(("fc.", "head.", "classifier."))}
        load_strict(model, state, f"weights do not fit timm {arch}")
    return model


def load_teacher(path: Path, arch: str | None = None) -> Teacher:
    """Teacher from a local safetensors file: a mimrepro ViT encoder or timm weights.

    `arch` names the timm model for plain timm weights files without our metadata.
    """
    path = Path(path)
    f = read_safetensors(path, "teacher weights")
    if "vit" in f.metadata:
        enc = EncoderFile.parse(f).build()
        return Teacher(enc, enc.cfg.patch_size, enc.cfg.embed_dim, name=f.metadata.get("name", path.stem))
    arch = arch or f.metadata.get("arch")
    if not arch:
        raise MimError(f"{path}: no architecture in its metadata; give the timm model name (e.g. resnet50)")
    model = timm_backbone(arch, f.state)
    stride = int(model.feature_info[-1]["reduction"])
    dim = int(model.num_features)
    return Teacher(model, stride, dim, name=f.metadata.get("name", arch))


def describe(teacher: Teacher) -> dict[str, object]:
    n = sum(p.numel() for p in teacher.parameters())
    return {"name": teacher.name, "params_m": round(n / 1e6, 2), "stride": teacher.stride, "dim": teacher.dim}

