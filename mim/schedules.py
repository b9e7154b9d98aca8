"""Per-step schedules as precomputed arrays (DINO style): index with the optimizer step."""
from __future__ import annotations

import numpy as np


def cosine_schedule(base: float, final: float, total_steps: int, warmup_steps: int = 0, start_warmup: float = 0.0) -> np.ndarray:
    """Linear warm-up from start_warmup to base over warmup_steps, then cosine from base to final."""
    warmup_steps = min(warmup_steps, total_steps)
    warm = np.linspace(start_warmup, base, warmup_steps, endpoint=False) if warmup_steps else np.zeros(0)
    t = np.arange(total_steps - warmup_steps)
    n = max(total_steps - warmup_steps, 1)
    cos = final + 0.5 * (base - final) * (1 + np.cos(np.pi * t / n))
    out = np.concatenate([warm, cos])
    assert len(out) == total_steps
    return out
