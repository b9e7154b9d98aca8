"""Which patches a student sees: plain functions, one per masking scheme.

Every function returns a float mask `(N, L)` with 1 = masked, 0 = visible
(MAE's convention), plus whatever index tensors its model needs.  BEiT's blockwise mask is
drawn per image inside the loader: `blockwise_mask(...).mask` is (h, w) bool, True = masked.
All randomness comes from torch's RNG (or a given generator), so the engine's per-epoch
reseeding reproduces every mask on resume.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

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

@dataclass(frozen=True)
class BlockMask:
    """A (h, w) boolean mask and how it was made (for tests and inspection)."""

    mask: torch.Tensor  # (h, w) bool, True = masked
    blocks: list[tuple[int, int, int, int]]  # (top, left, height, width) of every accepted block
    filled: int  # patches masked one by one because no block fitted the remainder


def blockwise_mask(
    height: int,
    width: int,
    num_masked: int,
    *,
    min_num_patches: int = 16,
    min_aspect: float = 0.3,
    max_attempts: int = 300,
    generator: torch.Generator | None = None,
) -> BlockMask:
    """BEiT's blockwise masking (arXiv 2106.08254, Algorithm 1; MaskingGenerator in unilm/beit).

    Repeat: draw a block area s in [min_num_patches, remaining] and an aspect ratio r
    log-uniform in [min_aspect, 1/min_aspect]; h = round(sqrt(s r)), w = round(sqrt(s / r));
    place it at a random position; accept it when its rounded shape still has >= min_num_patches
    patches and an aspect ratio inside the bounds, and it masks between 1 and `remaining`
    *new* patches.  Stops at exactly `num_masked`, never more.  Unlike BEiT's code (which
    may stop short of the target) a remainder that no block fits after `max_attempts` tries
    is filled with random single patches, counted in `filled`.
    """
    total = height * width
    if not 0 <= num_masked <= total:
        raise ValueError(f"num_masked={num_masked} must be within [0, {total}] for a {height}x{width} grid")
    if not 0 < min_aspect <= 1:
        raise ValueError(f"min_aspect={min_aspect} must be in (0, 1]")
    mask = torch.zeros(height, width, dtype=torch.bool)
    blocks: list[tuple[int, int, int, int]] = []
    log_lo, log_hi = math.log(min_aspect), math.log(1 / min_aspect)
    count, misses = 0, 0

    def uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=generator))

    def randint(n: int) -> int:  # 0 <= i < n
        return int(torch.randint(n, (), generator=generator))

    while count < num_masked and misses < max_attempts:
        remaining = num_masked - count
        area = uniform(min_num_patches, max(min_num_patches, remaining))
        aspect = math.exp(uniform(log_lo, log_hi))
        h = int(round(math.sqrt(area * aspect)))
        w = int(round(math.sqrt(area / aspect)))
        if h * w < min_num_patches or not min_aspect <= h / w <= 1 / min_aspect or h > height or w > width:
            misses += 1
            continue
        top, left = randint(height - h + 1), randint(width - w + 1)
        new = int((~mask[top : top + h, left : left + w]).sum())
        if 0 < new <= remaining:
            mask[top : top + h, left : left + w] = True
            blocks.append((top, left, h, w))
            count += new
            misses = 0
        else:
            misses += 1
    filled = num_masked - count
    if filled:
        free = (~mask).flatten().nonzero().squeeze(1)  # (F,)
        pick = free[torch.randperm(len(free), generator=generator)[:filled]]
        mask.view(-1)[pick] = True
    return BlockMask(mask, blocks, filled)
