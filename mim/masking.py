"""Which patches a student sees: plain functions, one per masking scheme.

Every function returns a float mask `(N, L)` with 1 = masked, 0 = visible
(MAE's convention), plus whatever index tensors its model needs.
"""
from __future__ import annotations

import torch


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
