"""ViT encoder shared by every student: patchify, fixed 2-D sin-cos position embedding, cls token.

Built from timm's `PatchEmbed` and `Block` (attention through scaled_dot_product_attention),
with the same parameter names as timm's `VisionTransformer`, so an encoder state_dict loads
into `timm.create_model("vit_*_patch16_224")` unchanged (see mim/encoder_file.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block
from torch import nn

from mim.config import DropRate, NonNegInt, PosFloat, PosInt


@dataclass(frozen=True, kw_only=True)
class ViTConfig:
    img_size: PosInt = 224
    patch_size: PosInt = 16
    embed_dim: PosInt = 768
    depth: NonNegInt = 12
    num_heads: PosInt = 12
    mlp_ratio: PosFloat = 4.0
    drop_path: DropRate = 0.0
    layer_scale: PosFloat | None = None  # LayerScale init (BEiT: 0.1); None = off
    in_chans: PosInt = 3

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if self.img_size % self.patch_size:
            out.append(("img_size", f"{self.img_size} is not a multiple of patch_size {self.patch_size}"))
        if self.embed_dim % self.num_heads:
            out.append(("num_heads", f"{self.num_heads} does not divide embed_dim {self.embed_dim}"))
        if self.embed_dim % 4:
            out.append(("embed_dim", f"{self.embed_dim} is not a multiple of 4 (the 2-D sin-cos position embedding)"))
        return out

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid**2


# Named sizes (ViT paper / timm): width, depth, heads.
VIT_SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
    "large": dict(embed_dim=1024, depth=24, num_heads=16),
}


def vit_config(size: str, **overrides: object) -> ViTConfig:
    if size not in VIT_SIZES:
        raise KeyError(f"unknown ViT size {size!r}; choose from {', '.join(VIT_SIZES)}")
    return ViTConfig(**{**VIT_SIZES[size], **overrides})  # type: ignore[arg-type]


def sincos_pos_embed(dim: int, grid: int, cls_token: bool = True) -> np.ndarray:
    """Fixed 2-D sin-cos embedding (MAE): half the channels encode rows, half columns."""
    assert dim % 4 == 0, "embed dim must be divisible by 4 for 2-D sin-cos"
    gh, gw = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64), indexing="xy")

    def one_axis(pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)  # (M, D/4)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)  # (M, D/2)

    emb = np.concatenate([one_axis(gw), one_axis(gh)], axis=1)  # (grid*grid, D)
    if cls_token:
        emb = np.concatenate([np.zeros((1, dim)), emb], axis=0)
    return emb.astype(np.float32)


class ViTEncoder(nn.Module):
    """ViT with cls token; `forward_features(x, ids_keep)` encodes only the kept patches (MAE)."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg.img_size, cfg.patch_size, cfg.in_chans, cfg.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches + 1, cfg.embed_dim), requires_grad=False)
        dpr = [cfg.drop_path * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]  # stochastic depth rule
        self.blocks = nn.ModuleList(
            Block(
                cfg.embed_dim,
                cfg.num_heads,
                cfg.mlp_ratio,
                qkv_bias=True,
                init_values=cfg.layer_scale,
                drop_path=dpr[i],
            )
            for i in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        if not self.pos_embed.is_meta:  # meta-device builds only count parameters
            pe = sincos_pos_embed(self.cfg.embed_dim, self.cfg.grid)
            self.pos_embed.data.copy_(torch.from_numpy(pe).unsqueeze(0))
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # as a Linear layer (MAE)
        nn.init.normal_(self.cls_token, std=0.02)
        self.apply(init_module)

    # --- patches ---------------------------------------------------------------------------
    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, L, p*p*C), patches in row-major order."""
        p, c = self.cfg.patch_size, imgs.shape[1]
        n, _, h, w = imgs.shape
        x = imgs.reshape(n, c, h // p, p, w // p, p)
        x = torch.einsum("nchpwq->nhwpqc", x)
        return x.reshape(n, (h // p) * (w // p), p * p * c)

    def unpatchify(self, x: torch.Tensor, channels: int | None = None) -> torch.Tensor:
        """(N, L, p*p*C) -> (N, C, H, W)."""
        p = self.cfg.patch_size
        c = channels or self.cfg.in_chans
        n, length, _ = x.shape
        g = int(length**0.5)
        assert g * g == length, "unpatchify needs a square grid"
        x = x.reshape(n, g, g, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(n, c, g * p, g * p)

    # --- encoding --------------------------------------------------------------------------
    def embed(self, imgs: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, L, D) patch tokens with position embedding, no cls."""
        return self.patch_embed(imgs) + self.pos_embed[:, 1:, :]

    def add_cls(self, x: torch.Tensor) -> torch.Tensor:
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        return torch.cat([cls, x], dim=1)  # (N, 1+L, D)

    def forward_blocks(self, x: torch.Tensor, return_all: bool = False) -> torch.Tensor | list[torch.Tensor]:
        """Run the blocks on (N, 1+L', D); with return_all, every block's output (before norm)."""
        outs = []
        for blk in self.blocks:
            x = blk(x)
            if return_all:
                outs.append(x)
        return outs if return_all else x

    def forward_features(self, imgs: torch.Tensor, ids_keep: torch.Tensor | None = None) -> torch.Tensor:
        """Encode; ids_keep (N, L_keep) selects visible patches. Returns normed (N, 1+L_keep, D)."""
        x = self.embed(imgs)  # (N, L, D)
        if ids_keep is not None:
            x = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # (N, L_keep, D)
        x = self.forward_blocks(self.add_cls(x))
        return self.norm(x)

    def forward_with_mask_token(self, imgs: torch.Tensor, mask: torch.Tensor, mask_token: torch.Tensor) -> torch.Tensor:
        """Encode every position, the masked ones (mask (N, L), 1 = masked) replaced by `mask_token`
        (1, 1, D) before the position embedding is added (BEiT; MAE's "encoder w/ [M]" baseline).
        Returns normed (N, 1+L, D)."""
        x = self.patch_embed(imgs)  # (N, L, D)
        w = mask.unsqueeze(-1).to(x.dtype)  # (N, L, 1)
        x = x * (1 - w) + mask_token.to(x.dtype) * w + self.pos_embed[:, 1:, :]
        return self.norm(self.forward_blocks(self.add_cls(x)))  # (N, 1+L, D)

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        return self.forward_features(imgs)


def init_module(m: nn.Module) -> None:
    """MAE's init of a decoder or head layer: xavier-uniform Linear weights, zero biases, unit norms."""
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def vit_tiny(**kw: object) -> ViTEncoder:
    return ViTEncoder(vit_config("tiny", **kw))


def vit_small(**kw: object) -> ViTEncoder:
    return ViTEncoder(vit_config("small", **kw))


def vit_base(**kw: object) -> ViTEncoder:
    return ViTEncoder(vit_config("base", **kw))


def vit_large(**kw: object) -> ViTEncoder:
    return ViTEncoder(vit_config("large", **kw))
