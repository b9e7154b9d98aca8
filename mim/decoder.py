"""MAE's light decoder, shared by every method that decodes from visible-patch latents (MAE, Img2Vec).

Follows facebookresearch/mae `models_mae.py` (`forward_decoder`): a linear embedding of the
encoder latents to the decoder width, one learned mask token appended for every masked patch,
the sequence unshuffled with `ids_restore`, the decoder's own fixed 2-D sin-cos position
embedding, Transformer blocks and a final LayerNorm.  What the tokens are decoded *into* (pixels,
teacher features) is the method's head, not part of this module.
"""
from __future__ import annotations

import torch
from timm.models.vision_transformer import Block
from torch import nn

from mim.vit import init_module, sincos_pos_embed


def decoder_problems(dim: int, heads: int) -> list[tuple[str, str]]:
    """Config checks of a decoder's width: heads divide it, and the 2-D sin-cos table needs 4 | dim."""
    out = []
    if dim % heads:
        out.append(("decoder_heads", f"{heads} does not divide decoder_dim {dim}"))
    if dim % 4:
        out.append(("decoder_dim", f"{dim} is not a multiple of 4 (the 2-D sin-cos position embedding)"))
    return out


class MAEDecoder(nn.Module):
    def __init__(self, in_dim: int, grid: int, dim: int, depth: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.grid = grid
        self.embed = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, dim), requires_grad=False)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, qkv_bias=True) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        if not self.pos_embed.is_meta:  # meta-device builds only count parameters
            pe = sincos_pos_embed(dim, grid)
            self.pos_embed.data.copy_(torch.from_numpy(pe).unsqueeze(0))

    # MAE initialises the mask token and the layers separately, and the methods built on this
    # decoder call the two in their own order (which fixes the random stream of their weights).
    def init_mask_token(self) -> None:
        nn.init.normal_(self.mask_token, std=0.02)

    def init_layers(self) -> None:
        for m in (self.embed, self.blocks, self.norm):
            m.apply(init_module)

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor | None = None) -> torch.Tensor:
        """(N, 1+K, D) latents of the visible patches -> (N, 1+L, Dd) normed decoder tokens, cls first.

        ids_restore (N, L) unshuffles [visible, mask tokens] back to patch order; None when the
        latents already cover all L patches in order (the "encoder w/ [M]" baseline).
        """
        x = self.embed(latent)  # (N, 1+K, Dd)
        if ids_restore is not None:
            n, length = ids_restore.shape
            masks = self.mask_token.expand(n, length + 1 - x.shape[1], -1)  # (N, L-K, Dd)
            patches = torch.cat([x[:, 1:], masks], dim=1)  # (N, L, Dd), shuffled order
            patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # unshuffle
            x = torch.cat([x[:, :1], patches], dim=1)  # (N, 1+L, Dd)
        x = x + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)
