"""MAE (He et al. 2021): encode the visible 25% of patches, reconstruct the masked pixels.

The split follows the reference implementation: `forward_encoder` (visible patches only,
no mask tokens), `forward_decoder` (shared learned mask token, unshuffle, own sin-cos
position embedding), `forward_loss` (MSE on per-patch normalised pixels, masked patches
only).  `MAEWithMaskTokensInEncoder` is the paper's slower baseline (Table 1c, "w/ [M]"),
kept for benchmarks/mae_speed.py only.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.models.vision_transformer import Block
from torch import nn

from mim.masking import random_mask_ids
from mim.vit import ViTConfig, ViTEncoder, _init_module, sincos_pos_embed


@dataclass(frozen=True, kw_only=True)
class MAEConfig:
    mask_ratio: float = 0.75
    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    norm_pix: bool = True  # targets normalised per patch (mean/var over the patch, eps 1e-6)


class MAE(nn.Module):
    def __init__(self, encoder_cfg: ViTConfig, cfg: MAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = ViTEncoder(encoder_cfg)
        p, num_patches = encoder_cfg.patch_size, encoder_cfg.num_patches
        self.decoder_embed = nn.Linear(encoder_cfg.embed_dim, cfg.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, cfg.decoder_dim), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(
            Block(cfg.decoder_dim, cfg.decoder_heads, encoder_cfg.mlp_ratio, qkv_bias=True) for _ in range(cfg.decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(cfg.decoder_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(cfg.decoder_dim, p * p * encoder_cfg.in_chans)
        self._init_decoder()

    def _init_decoder(self) -> None:
        if not self.decoder_pos_embed.is_meta:
            pe = sincos_pos_embed(self.cfg.decoder_dim, self.encoder.cfg.grid)
            self.decoder_pos_embed.data.copy_(torch.from_numpy(pe).unsqueeze(0))
        nn.init.normal_(self.mask_token, std=0.02)
        for m in (self.decoder_embed, self.decoder_blocks, self.decoder_norm, self.decoder_pred):
            m.apply(_init_module)

    def no_weight_decay(self) -> set[str]:
        return {"encoder.cls_token", "encoder.pos_embed", "mask_token", "decoder_pos_embed"}

    # --- the three parts ---------------------------------------------------------------------
    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode the visible patches only: (latent (N, 1+K, D), mask (N, L), ids_restore (N, L))."""
        n, length = imgs.shape[0], self.encoder.cfg.num_patches
        ids_keep, mask, ids_restore = random_mask_ids(n, length, mask_ratio, imgs.device)
        latent = self.encoder.forward_features(imgs, ids_keep)  # (N, 1+K, D)
        return latent, mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """(N, 1+K, D) visible latents -> (N, L, p*p*C) pixel predictions for every patch."""
        x = self.decoder_embed(latent)  # (N, 1+K, Dd)
        n, length = ids_restore.shape
        masks = self.mask_token.expand(n, length + 1 - x.shape[1], -1)  # (N, L-K, Dd)
        patches = torch.cat([x[:, 1:], masks], dim=1)  # (N, L, Dd), shuffled order
        patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # unshuffle
        x = torch.cat([x[:, :1], patches], dim=1) + self.decoder_pos_embed  # (N, 1+L, Dd)
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]  # (N, L, p*p*C), cls dropped

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error per patch, averaged over masked patches (mask == 1) only."""
        target = self.encoder.patchify(imgs)  # (N, L, p*p*C)
        if self.cfg.norm_pix:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        loss = (pred.float() - target.float()).pow(2).mean(dim=-1)  # (N, L)
        return (loss * mask).sum() / mask.sum()

    def forward(self, imgs: torch.Tensor, mask_ratio: float | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        ratio = self.cfg.mask_ratio if mask_ratio is None else mask_ratio
        latent, mask, ids_restore = self.forward_encoder(imgs, ratio)
        pred = self.forward_decoder(latent, ids_restore)
        return self.forward_loss(imgs, pred, mask), {}


class MAEWithMaskTokensInEncoder(MAE):
    """Baseline "encoder w/ [M]": masked patches become a learned token *inside* the encoder,
    which then runs on all L patches; the decoder gets the full sequence as is."""

    def __init__(self, encoder_cfg: ViTConfig, cfg: MAEConfig) -> None:
        super().__init__(encoder_cfg, cfg)
        self.encoder_mask_token = nn.Parameter(torch.zeros(1, 1, encoder_cfg.embed_dim))
        nn.init.normal_(self.encoder_mask_token, std=0.02)

    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        enc = self.encoder
        n, length = imgs.shape[0], enc.cfg.num_patches
        _, mask, ids_restore = random_mask_ids(n, length, mask_ratio, imgs.device)
        x = enc.patch_embed(imgs)  # (N, L, D)
        w = mask.unsqueeze(-1).to(x.dtype)
        x = x * (1 - w) + self.encoder_mask_token.to(x.dtype) * w + enc.pos_embed[:, 1:, :]
        latent = enc.norm(enc.forward_blocks(enc.add_cls(x)))  # (N, 1+L, D)
        return latent, mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        x = self.decoder_embed(latent) + self.decoder_pos_embed  # (N, 1+L, Dd), already in order
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]


def mae_model(encoder_cfg: ViTConfig, cfg: MAEConfig, mask_tokens_in_encoder: bool = False) -> MAE:
    return (MAEWithMaskTokensInEncoder if mask_tokens_in_encoder else MAE)(encoder_cfg, cfg)
