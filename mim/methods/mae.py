"""MAE (He et al., arXiv 2111.06377): encode the visible 25% of patches, reconstruct the masked pixels.

The split follows facebookresearch/mae `models_mae.py`: `mask` (random masking by argsort of
uniform noise), `forward_encoder` (visible patches only, no mask tokens), `forward_decoder`
(the shared MAE decoder, mim/decoder.py, then a linear head to pixels), `forward_loss` (MSE on
per-patch normalised pixels, masked patches only).  `MAEWithMaskTokensInEncoder` is the paper's
slower baseline (Table 1c, "w/ [M]"), kept for benchmarks/mae_speed.py only.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from mim.config import NonNegInt, OpenFraction, PosInt, Scale
from mim.data.transforms import pretrain_transform
from mim.decoder import MAEDecoder, decoder_problems
from mim.engine import OptimConfig, Task, make_task
from mim.masking import random_mask_ids
from mim.methods import Inputs
from mim.param_groups import VIT_TOKENS
from mim.vit import ViTConfig, ViTEncoder, init_module


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    mask_ratio: OpenFraction = 0.75
    decoder_dim: PosInt = 512
    decoder_depth: NonNegInt = 8
    decoder_heads: PosInt = 16
    norm_pix: bool = True  # targets normalised per patch (mean/var over the patch, eps 1e-6)

    def problems(self) -> list[tuple[str, str]]:
        return decoder_problems(self.decoder_dim, self.decoder_heads)


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    crop_scale: Scale = (0.2, 1.0)  # RandomResizedCrop area range (MAE)


@dataclass(frozen=True, kw_only=True)
class Config:
    """The `mae` params section."""

    model: ModelConfig
    optim: OptimConfig
    data: DataConfig = field(default_factory=DataConfig)


INPUT = None  # pixels are the target


class MAE(nn.Module):
    def __init__(self, encoder_cfg: ViTConfig, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = ViTEncoder(encoder_cfg)
        p, c = encoder_cfg.patch_size, encoder_cfg.in_chans
        self.decoder = MAEDecoder(encoder_cfg.embed_dim, encoder_cfg.grid, cfg.decoder_dim, cfg.decoder_depth, cfg.decoder_heads,
                                  encoder_cfg.mlp_ratio)
        self.decoder_pred = nn.Linear(cfg.decoder_dim, p * p * c)
        self.decoder.init_mask_token()
        self.decoder.init_layers()
        self.decoder_pred.apply(init_module)

    # --- the parts ---------------------------------------------------------------------------
    def mask(self, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Random masking: (ids_keep (N, K), mask (N, L) 1 = masked, ids_restore (N, L))."""
        return random_mask_ids(n, self.encoder.cfg.num_patches, self.cfg.mask_ratio, device)

    def forward_encoder(self, imgs: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """Encode the visible patches only: (N, 3, H, W), (N, K) -> latent (N, 1+K, D)."""
        return self.encoder.forward_features(imgs, ids_keep)

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """(N, 1+K, D) visible latents -> (N, L, p*p*C) pixel predictions for every patch."""
        return self.decoder_pred(self.decoder(latent, ids_restore))[:, 1:]  # cls dropped

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error per patch, averaged over masked patches (mask == 1) only."""
        target = self.encoder.patchify(imgs)  # (N, L, p*p*C)
        if self.cfg.norm_pix:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        loss = (pred.float() - target.float()).pow(2).mean(dim=-1)  # (N, L)
        return (loss * mask).sum() / mask.sum()

    def forward(self, imgs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ids_keep, mask, ids_restore = self.mask(imgs.shape[0], imgs.device)
        latent = self.forward_encoder(imgs, ids_keep)
        pred = self.forward_decoder(latent, ids_restore)
        return self.forward_loss(imgs, pred, mask), {}


class MAEWithMaskTokensInEncoder(MAE):
    """Baseline "encoder w/ [M]": masked patches become a learned token *inside* the encoder,
    which then runs on all L patches; the decoder gets the full sequence as is."""

    def __init__(self, encoder_cfg: ViTConfig, cfg: ModelConfig) -> None:
        super().__init__(encoder_cfg, cfg)
        self.encoder_mask_token = nn.Parameter(torch.zeros(1, 1, encoder_cfg.embed_dim))
        nn.init.normal_(self.encoder_mask_token, std=0.02)

    def forward(self, imgs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        _, mask, _ = self.mask(imgs.shape[0], imgs.device)
        latent = self.encoder.forward_with_mask_token(imgs, mask, self.encoder_mask_token)  # (N, 1+L, D)
        pred = self.decoder_pred(self.decoder(latent))[:, 1:]  # already in patch order
        return self.forward_loss(imgs, pred, mask), {}


def task(cfg: Config, inputs: Inputs) -> Task:
    enc = inputs.encoder
    images = inputs.images(pretrain_transform(enc.img_size, cfg.data.crop_scale))

    def step(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        imgs, _ = batch  # labels unused
        return model(imgs)

    return make_task(lambda: MAE(enc, cfg.model), images, cfg.optim, inputs.run, step, no_decay=VIT_TOKENS)
