"""Per-step schedules as precomputed arrays (DINO style): index with the optimizer step.

And the run's length they span: each training section's `optim` gives it as `epochs` (passes
over the data: the cost grows with the dataset) or as `steps` (optimizer steps: the cost stays
put when the dataset grows), exactly one, and its warm-up as `warmup_epochs` or `warmup_steps`
(at most one).  `resolve` turns either form into a `Budget`: the schedules (warm-up + cosine lr,
the weight-decay schedule, DINO's teacher momentum) span its `total_steps`, and with `steps` the
run covers ceil(steps / steps_per_epoch) epochs, the last one cut short at the budget.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mim.errors import MimError


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


# --- the run's length -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Budget:
    """A run's length against its data, in optimizer steps."""

    steps_per_epoch: int  # optimizer steps in a full epoch
    epochs: int  # epochs the run covers; with a step budget the last may be partial
    total_steps: int  # the schedules' length
    warmup_steps: int

    def steps_in(self, epoch: int) -> int:
        """Optimizer steps of epoch `epoch` (from 0): a full epoch's, but in a step budget's last epoch."""
        return max(0, min(self.steps_per_epoch, self.total_steps - epoch * self.steps_per_epoch))


def length_problems(epochs: int | None, steps: int | None, warmup_epochs: float | None,
                    warmup_steps: int | None) -> list[tuple[str, str]]:
    """(key, message) pairs for OptimConfig.problems(): one length, at most one warm-up, the warm-up within the run."""
    out = []
    if epochs is None and steps is None:
        out.append(("epochs", "required key is missing (or give the run's length in optimizer steps as steps)"))
    if epochs is not None and steps is not None:
        out.append(("steps", f"{steps} given with epochs {epochs}: give the run's length as epochs or as steps "
                             "(optimizer steps), not both"))
    if warmup_epochs is not None and warmup_steps is not None:
        out.append(("warmup_steps", f"{warmup_steps} given with warmup_epochs {warmup_epochs:g}: give the warm-up "
                                    "as warmup_epochs or as warmup_steps, not both"))
    if epochs is not None and warmup_epochs is not None and warmup_epochs > epochs:
        out.append(("warmup_epochs", f"{warmup_epochs:g} is longer than the run's {epochs} epochs"))
    if steps is not None and warmup_steps is not None and warmup_steps > steps:
        out.append(("warmup_steps", f"{warmup_steps} is longer than the run's {steps} steps"))
    return out


def resolve(steps_per_epoch: int, *, epochs: int | None = None, steps: int | None = None,
            warmup_epochs: float | None = None, warmup_steps: int | None = None) -> Budget:
    """The run's Budget when an epoch holds `steps_per_epoch` optimizer steps."""
    for key, message in length_problems(epochs, steps, warmup_epochs, warmup_steps):
        raise MimError(f"optim.{key}: {message}")
    if steps_per_epoch < 1:
        raise MimError(f"an epoch of {steps_per_epoch} optimizer steps: the data holds less than one batch")
    if steps is not None:
        total, n_epochs = steps, math.ceil(steps / steps_per_epoch)
    else:
        assert epochs is not None
        total, n_epochs = epochs * steps_per_epoch, epochs
    warm = warmup_steps if warmup_steps is not None else int((warmup_epochs or 0.0) * steps_per_epoch)
    if warm > total:  # a warm-up in epochs against a run in steps (or the reverse): known only here
        raise MimError(f"optim: the warm-up of {warm} steps is longer than the run's {total} steps")
    return Budget(steps_per_epoch, n_epochs, total, warm)
