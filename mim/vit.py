"""ViT encoder shared by every student: patchify, position signal, cls token.

Two layouts, both with timm's parameter names so an encoder state_dict loads into timm unchanged
(see mim/encoder_file.py):

* `rel_pos_bias: none` (MAE, Img2Vec): fixed 2-D sin-cos absolute position embedding and
  timm's `vision_transformer.Block`, the keys of `timm.create_model("vit_*_patch16_224")`;
* `rel_pos_bias: shared | per_layer` (BEiT): timm's `beit.Block` (q and v biases with a zero k
  bias, LayerScale as `gamma_1`/`gamma_2`) with BEiT's relative position bias, either one table
  shared by every block (`rel_pos_bias.relative_position_bias_table`, BEiT pretraining,
  unilm/beit modeling_pretrain.py `use_shared_rel_pos_bias`) or one per block
  (`blocks.N.attn.relative_position_bias_table`, BEiT fine-tuning, modeling_finetune.py
  `use_rel_pos_bias`); usually without absolute position (`abs_pos: false`, unilm/beit
  run_beit_pretraining.py).  The keys of `timm.create_model("beit_base_patch16_224")`.
  `per_layer_state` turns a shared table into the per-layer one, as unilm/beit
  run_class_finetuning.py does before fine-tuning.

Attention goes through scaled_dot_product_attention in both (timm's fused path).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from timm.layers import PatchEmbed
from timm.models import beit as timm_beit
from timm.models.vision_transformer import Block
from torch import nn

from mim.config import DropRate, NonNegInt, PosFloat, PosInt
from mim.errors import MimError

RelPosBias = Literal["none", "shared", "per_layer"]
SHARED_TABLE = "rel_pos_bias.relative_position_bias_table"


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
    abs_pos: bool = True  # fixed 2-D sin-cos absolute position embedding (MAE); false = none (BEiT)
    rel_pos_bias: RelPosBias = "none"  # BEiT's relative position bias: one table "shared" by all blocks, or "per_layer"

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if self.img_size % self.patch_size:
            out.append(("img_size", f"{self.img_size} is not a multiple of patch_size {self.patch_size}"))
        if self.embed_dim % self.num_heads:
            out.append(("num_heads", f"{self.num_heads} does not divide embed_dim {self.embed_dim}"))
        if self.abs_pos and self.embed_dim % 4:
            out.append(("embed_dim", f"{self.embed_dim} is not a multiple of 4 (the 2-D sin-cos position embedding)"))
        if not self.abs_pos and self.rel_pos_bias == "none":
            out.append(("abs_pos", "false with rel_pos_bias none leaves the encoder no position signal"))
        return out

    @property
    def beit_blocks(self) -> bool:
        """Blocks in timm's BEiT layout (the relative position bias needs them)."""
        return self.rel_pos_bias != "none"

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
    """Fixed 2-D sin-cos embedding in MAE's layout (facebookresearch/mae util/pos_embed.py,
    `get_2d_sincos_pos_embed`): the first half of the channels encodes the column of a patch, the
    second half its row, each as [sin | cos] of D/4 frequencies; patches in row-major order, a zero
    row for the cls token.  MAE's checkpoints and decoders use this exact table."""
    assert dim % 4 == 0, "embed dim must be divisible by 4 for 2-D sin-cos"
    cols, rows = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64), indexing="xy")

    def one_axis(pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)  # (M, D/4)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)  # (M, D/2)

    emb = np.concatenate([one_axis(cols), one_axis(rows)], axis=1)  # (grid*grid, D): MAE's emb_h is its grid[0], the columns
    if cls_token:
        emb = np.concatenate([np.zeros((1, dim)), emb], axis=0)
    return emb.astype(np.float32)


class ViTEncoder(nn.Module):
    """ViT with cls token; `forward_features(x, ids_keep)` encodes only the kept patches (MAE)."""

    pos_embed: nn.Parameter | None
    rel_pos_bias: nn.Module | None

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg.img_size, cfg.patch_size, cfg.in_chans, cfg.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.pos_embed = None
        if cfg.abs_pos:
            self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches + 1, cfg.embed_dim), requires_grad=False)
        window = (cfg.grid, cfg.grid)
        # BEiT's table: zero at init (unilm/beit modeling_finetune.py RelativePositionBias; timm's too)
        self.rel_pos_bias = timm_beit.RelativePositionBias(window, cfg.num_heads) if cfg.rel_pos_bias == "shared" else None
        dpr = [cfg.drop_path * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]  # stochastic depth rule
        if cfg.beit_blocks:
            blocks = (
                timm_beit.Block(
                    cfg.embed_dim,
                    cfg.num_heads,
                    qkv_bias=True,  # q_bias and v_bias, k bias fixed at zero (unilm/beit modeling_finetune.py Attention)
                    mlp_ratio=cfg.mlp_ratio,
                    drop_path=dpr[i],
                    init_values=cfg.layer_scale,
                    window_size=window if cfg.rel_pos_bias == "per_layer" else None,
                )
                for i in range(cfg.depth)
            )
        else:
            blocks = (
                Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, qkv_bias=True, init_values=cfg.layer_scale, drop_path=dpr[i])
                for i in range(cfg.depth)
            )
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        if self.pos_embed is not None and not self.pos_embed.is_meta:  # meta-device builds only count parameters
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
        """(N, C, H, W) -> (N, L, D) patch tokens with position embedding (if any), no cls."""
        x = self.patch_embed(imgs)
        return x if self.pos_embed is None else x + self.pos_embed[:, 1:, :]

    def add_cls(self, x: torch.Tensor) -> torch.Tensor:
        cls = self.cls_token if self.pos_embed is None else self.cls_token + self.pos_embed[:, :1, :]
        return torch.cat([cls.expand(x.shape[0], -1, -1), x], dim=1)  # (N, 1+L, D)

    def forward_blocks(self, x: torch.Tensor, return_all: bool = False) -> torch.Tensor | list[torch.Tensor]:
        """Run the blocks on (N, 1+L', D); with return_all, every block's output (before norm).
        A relative position bias spans the whole grid: L' = L there."""
        kw = {}
        if self.cfg.beit_blocks:
            if x.shape[1] != self.cfg.num_patches + 1:
                raise MimError(f"an encoder with a relative position bias sees every patch ({self.cfg.num_patches} + cls), "
                               f"got {x.shape[1]} tokens; MAE-style token dropping needs encoder.rel_pos_bias: none")
            kw["shared_rel_pos_bias"] = self.rel_pos_bias() if self.rel_pos_bias is not None else None  # (heads, 1+L, 1+L)
        outs = []
        for blk in self.blocks:
            x = blk(x, **kw)
            if return_all:
                outs.append(x)
        return outs if return_all else x

    def forward_features(self, imgs: torch.Tensor, ids_keep: torch.Tensor | None = None) -> torch.Tensor:
        """Encode; ids_keep (N, L_keep) selects visible patches. Returns normed (N, 1+L_keep, D)."""
        x = self.embed(imgs)  # (N, L, D)
        if ids_keep is not None:
            if self.cfg.beit_blocks:
                raise MimError("MAE-style token dropping (ids_keep) needs an encoder without relative position bias "
                               "(encoder.rel_pos_bias: none)")
            x = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # (N, L_keep, D)
        x = self.forward_blocks(self.add_cls(x))
        return self.norm(x)

    def forward_with_mask_token(self, imgs: torch.Tensor, mask: torch.Tensor, mask_token: torch.Tensor) -> torch.Tensor:
        """Encode every position, the masked ones (mask (N, L), 1 = masked) replaced by `mask_token`
        (1, 1, D) before the position embedding is added (BEiT; MAE's "encoder w/ [M]" baseline).
        Returns normed (N, 1+L, D)."""
        x = self.patch_embed(imgs)  # (N, L, D)
        w = mask.unsqueeze(-1).to(x.dtype)  # (N, L, 1)
        x = x * (1 - w) + mask_token.to(x.dtype) * w
        if self.pos_embed is not None:
            x = x + self.pos_embed[:, 1:, :]
        return self.norm(self.forward_blocks(self.add_cls(x)))  # (N, 1+L, D)

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        return self.forward_features(imgs)


def per_layer_state(cfg: ViTConfig, state: dict[str, torch.Tensor]) -> tuple[ViTConfig, dict[str, torch.Tensor]]:
    """A shared-bias encoder as the per-layer one BEiT fine-tunes: the shared table copied into every
    block's `attn.relative_position_bias_table` (unilm/beit run_class_finetuning.py, "Expand the shared
    relative position embedding to each transformer block").  The same function; other configs unchanged."""
    if cfg.rel_pos_bias != "shared":
        return cfg, state
    out = {k: v for k, v in state.items() if k != SHARED_TABLE}
    table = state[SHARED_TABLE]  # ((2g-1)^2 + 3, heads)
    for i in range(cfg.depth):
        out[f"blocks.{i}.attn.relative_position_bias_table"] = table.detach().clone()
    return dataclasses.replace(cfg, rel_pos_bias="per_layer"), out


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
