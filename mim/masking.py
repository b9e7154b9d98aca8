"""Which patches a student sees: plain functions, one per masking scheme.

Every function returns a float mask `(N, L)` with 1 = masked, 0 = visible
(MAE's convention), plus whatever index tensors its model needs.
"""
from __future__ import annotations

import torch

from mim.errors import MimError


def random_mask_ids(
    n: int, length: int, ratio: float, device: torch.device | str = "cpu", generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MAE random masking as indices: (ids_keep (N, K), mask (N, L), ids_restore (N, L)).

    Patches are shuffled by argsort of uniform noise; the first K = round(L * (1 - ratio))
    are kept.  ids_restore = argsort(ids_shuffle) undoes the shuffle.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    keep = round(length * (1 - ratio))
    noise = torch.rand(n, length, device=device, generator=generator)  # (N, L)
    ids_shuffle = torch.argsort(noise, dim=1)  # ascending: small noise is kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :keep]  # (N, K)
    mask = torch.ones(n, length, device=device)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)  # (N, L) in patch order, 1 = masked
    return ids_keep, mask, ids_restore


def gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """(N, L, D) tokens, (N, K) indices -> (N, K, D)."""
    return torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def random_masking(x: torch.Tensor, ratio: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """MAE's random_masking on tokens (N, L, D): (x_masked (N, K, D), mask, ids_restore, ids_keep)."""
    n, length, _ = x.shape
    ids_keep, mask, ids_restore = random_mask_ids(n, length, ratio, x.device)
    return gather_tokens(x, ids_keep), mask, ids_restore, ids_keep


def block_masking(
    n: int, grid: int, block: int, ratio: float, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Img2Vec masking: whole `block` x `block` patch squares aligned to the grid (32 px at 224/16).

    Exactly round(ratio * num_blocks) blocks per sample are masked, picked by argsort of uniform
    noise (MAE's shuffle, at block level). Returns, at patch level (L = grid**2, row-major):
      ids_keep (N, L_keep) visible patches in raster order, mask (N, L) 1 = masked,
      ids_restore (N, L) that unshuffles [visible, masked] back to raster order (MAE).
    """
    if block < 1 or grid % block:
        raise MimError(f"mask block of {block} patches does not tile the {grid}x{grid} patch grid")
    nb = grid // block
    num_blocks = nb * nb
    num_masked = round(ratio * num_blocks)
    if not 0 < num_masked < num_blocks:
        raise MimError(f"mask ratio {ratio} masks {num_masked} of {num_blocks} blocks; need at least one masked and one visible")
    noise = torch.rand(n, num_blocks, device=device)  # (N, B)
    ids_shuffle = torch.argsort(noise, dim=1)  # lowest noise first = kept (MAE)
    block_mask = torch.ones(n, num_blocks, device=device)
    block_mask[:, : num_blocks - num_masked] = 0
    block_mask = torch.gather(block_mask, 1, torch.argsort(ids_shuffle, dim=1))  # (N, B) raster order
    mask = block_mask.view(n, nb, 1, nb, 1).expand(n, nb, block, nb, block).reshape(n, grid * grid)  # (N, L)
    ids_patch = torch.argsort(mask, dim=1, stable=True)  # visible first, each part in raster order
    ids_restore = torch.argsort(ids_patch, dim=1)
    ids_keep = ids_patch[:, : (num_blocks - num_masked) * block * block]  # (N, L_keep)
    return ids_keep, mask, ids_restore


def patches_to_blocks(x: torch.Tensor, grid: int, block: int) -> torch.Tensor:
    """(N, L, ...) patch-level values in raster order -> (N, B, block*block, ...) grouped by block."""
    n, rest = x.shape[0], x.shape[2:]
    nb = grid // block
    x = x.reshape(n, nb, block, nb, block, *rest).transpose(2, 3)  # (N, nb, nb, block, block, ...)
    return x.reshape(n, nb * nb, block * block, *rest)
