"""A mimrepro student encoder as a segmentation backbone: multi-level NCHW features of a ViT.

`MimViT` rebuilds the encoder from the student's encoder file (mim/encoder_file.py),
interpolates its position embedding to the crop size, and returns the outputs of the chosen
blocks (1-based, e.g. 4/6/8/12 of 12) as (N, D, H/p, W/p) maps, before any final norm, as
BEiT's and MAE's segmentation backbones do.  mmseg's `Feature2Pyramid` neck (BEiT/MAE's
fpn1-4: deconvolutions up, max-pooling down) then resamples them to strides 4/8/16/32.

This module imports no mmseg: `downstream.seg` registers `MimViT` in mmseg's MODELS.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch
from timm.layers import resample_abs_pos_embed
from torch import nn

from mim.encoder_file import EncoderFile
from mim.errors import MimError
from mim.vit import ViTConfig, ViTEncoder

# Feature strides the UperNet head expects, relative to the input image (ViT-B/16 recipes).
PYRAMID_STRIDES = (4, 8, 16, 32)


def pyramid_rescales(patch_size: int) -> list[float]:
    """Feature2Pyramid factors taking stride-`patch_size` ViT maps to strides 4/8/16/32."""
    rescales = [patch_size / s for s in PYRAMID_STRIDES]
    supported = ({4, 2, 1, 0.5}, {2, 1, 0.5, 0.25})  # what Feature2Pyramid implements
    if set(rescales) not in supported:
        raise MimError(f"segmentation supports ViT patch sizes 8 and 16 (strides 4/8/16/32), got {patch_size}")
    return rescales


def resize_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(1, 1+g*g, D) -> (1, 1+h*w, D): bicubic on the patch part, cls entry kept (MAE's recipe)."""
    return resample_abs_pos_embed(pos_embed, list(grid), num_prefix_tokens=1, interpolation="bicubic", antialias=False)


class MimViT(nn.Module):
    """ViT student encoder -> tuple of block outputs, each (N, D, H/p, W/p)."""

    def __init__(
        self,
        encoder: str,
        out_blocks: tuple[int, ...] | list[int] = (4, 6, 8, 12),
        img_size: int = 512,
        drop_path: float = 0.1,
    ) -> None:
        super().__init__()
        f = EncoderFile.read(Path(encoder))
        cfg, state = f.config, f.state
        out = tuple(int(b) for b in out_blocks)
        if not out or list(out) != sorted(out) or out[0] < 1 or out[-1] > cfg.depth:
            raise MimError(f"segment.out_blocks must be non-decreasing block numbers in 1..{cfg.depth}, got {list(out)}")
        if img_size % cfg.patch_size:
            raise MimError(f"segment crop size {img_size} is not a multiple of the patch size {cfg.patch_size}")
        self.out_blocks = out
        self.source_cfg = cfg
        self.num_layers = out[-1]  # blocks kept (those above the last output are dropped)
        self.embed_dim = cfg.embed_dim
        self.patch_size = cfg.patch_size
        # Build at the crop size with the last output's depth; the drop-path rule spans the kept blocks.
        vit_cfg = dataclasses.replace(cfg, img_size=img_size, drop_path=drop_path, depth=out[-1])
        self.vit = ViTEncoder(vit_cfg)
        del self.vit.norm  # features are raw block outputs (BEiT/MAE segmentation); no final norm
        self.vit.patch_embed.strict_img_size = False  # any size: windows of slide inference, odd test sizes
        self.vit.patch_embed.dynamic_img_pad = True
        self.vit.pos_embed.requires_grad_(True)  # fine-tuned from the pretrained table (MAE fine-tuning)
        self.load_report = self._load(state, cfg, vit_cfg)

    # --- weights ---------------------------------------------------------------------------
    def _load(self, state: dict[str, torch.Tensor], src: ViTConfig, dst: ViTConfig) -> dict[str, list[str]]:
        state = dict(state)
        if dst.grid != src.grid:
            state["pos_embed"] = resize_pos_embed(state["pos_embed"], (dst.grid, dst.grid))
        unused = sorted(k for k in state if k.startswith("norm.") or _block_index(k) >= dst.depth)
        for k in unused:
            del state[k]
        missing, unexpected = self.vit.load_state_dict(state, strict=False)
        report = {"missing": sorted(missing), "unexpected": sorted(unexpected), "unused": unused}
        print(
            f"segment backbone: {len(state)} tensors loaded; pos_embed {src.grid}x{src.grid} -> {dst.grid}x{dst.grid}; "
            f"missing {report['missing'] or 'none'}; unexpected {report['unexpected'] or 'none'}; "
            f"not used (final norm, blocks above {dst.depth}): {len(unused)}",
            file=sys.stderr,
        )
        if missing or unexpected:
            raise MimError(f"encoder does not fit the backbone: missing keys {list(missing)}, unexpected keys {list(unexpected)}")
        return report

    # --- forward ---------------------------------------------------------------------------
    def pos_embed_for(self, grid: tuple[int, int]) -> torch.Tensor:
        """The position table for a (h, w) patch grid; the stored one when it matches."""
        if grid == (self.vit.cfg.grid, self.vit.cfg.grid):
            return self.vit.pos_embed
        return resize_pos_embed(self.vit.pos_embed, grid)  # (1, 1+h*w, D)

    def forward(self, imgs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n, _, h, w = imgs.shape
        p = self.patch_size
        grid = (-(-h // p), -(-w // p))  # patch_embed pads the bottom/right edge
        pos = self.pos_embed_for(grid)
        x = self.vit.patch_embed(imgs) + pos[:, 1:, :]  # (N, L, D)
        cls = (self.vit.cls_token + pos[:, :1, :]).expand(n, -1, -1)
        x = torch.cat([cls, x], dim=1)  # (N, 1+L, D)
        maps = {}
        for i, blk in enumerate(self.vit.blocks, start=1):
            x = blk(x)
            if i in self.out_blocks:
                maps[i] = x[:, 1:, :].transpose(1, 2).reshape(n, self.embed_dim, *grid)  # (N, D, h, w)
        return tuple(maps[b] for b in self.out_blocks)  # a block may feed several levels (shallow ViTs)


def _block_index(key: str) -> int:
    """Block number of a `blocks.N.*` key; -1 for every other key."""
    parts = key.split(".")
    return int(parts[1]) if parts[0] == "blocks" else -1
