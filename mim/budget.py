"""`mimrepro budget`'s table: the optimizer steps of each training stage on the configured data.

A `Row` per stage (its training images, batch, steps per epoch, epochs, total steps and what the
params fix: epochs, which grow with the data, or steps / iterations, which do not), from the
same `OptimConfig.budget` the engine runs (mim/schedules.py `resolve`), on any number of processes; `table`
lays them out.  stages/budget.py reads the params and the manifest.
"""
from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mim.data.manifest import IMAGE_SUFFIXES
from mim.schedules import Budget

if TYPE_CHECKING:
    from mim.engine import OptimConfig


def optimizer_steps(images: int, batch_size: int) -> int:
    """Optimizer steps per epoch (mim.engine.make_task: full global batches only), on any number of processes."""
    return images // batch_size


def class_counts(folder: Path, exclude: Collection[Path] = ()) -> tuple[int, ...]:
    """Images in each class folder of `folder` (sorted), less `exclude`: what mim.data.images.ImageFolder reads."""
    skip = {str(Path(p)) for p in exclude}
    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir())
    return tuple(sum(1 for e in os.scandir(Path(folder) / c) if e.name.lower().endswith(IMAGE_SUFFIXES)
                     and str(Path(e.path)) not in skip) for c in classes)


# --- the printout ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    """One training stage's budget for the configured data."""

    stage: str
    images: int  # training images it reads
    batch: int  # images per optimizer step (iteration)
    steps_per_epoch: int  # optimizer steps (iterations) per pass over the images
    epochs: float  # passes over the images
    total: int  # optimizer steps (iterations)
    set_as: str  # what the params file fixes: "40 epochs" (grows with the data), "600 steps", "8 iterations"
    note: str = ""


def epoch_row(stage: str, images: int, optim: OptimConfig, note: str = "") -> Row:
    """A stage trained by the engine over `images` for `optim`'s epochs or steps (one process)."""
    set_as = _count(optim.epochs, "epoch") if optim.epochs is not None else _count(optim.steps, "step")
    steps = optimizer_steps(images, optim.batch_size)
    if steps < 1:  # make_task refuses it
        fails = "fewer images than one step: it fails"
        return Row(stage, images, optim.batch_size, 0, 0.0, 0, set_as, f"{fails}; {note}" if note else fails)
    return budget_row(stage, images, optim.batch_size, optim.budget(steps), set_as, note)


def budget_row(stage: str, images: int, batch: int, b: Budget, set_as: str, note: str = "") -> Row:
    return Row(stage, images, batch, b.steps_per_epoch, b.total_steps / b.steps_per_epoch, b.total_steps, set_as, note)


def iteration_row(stage: str, images: int, batch: int, iterations: int, note: str = "") -> Row:
    """A stage trained for a fixed number of iterations (detectron2's, mmseg's): its epochs follow from the data."""
    per_epoch = images // batch if images else 0
    return Row(stage, images, batch, per_epoch, iterations * batch / images if images else 0.0, iterations,
               _count(iterations, "iteration"), note)


def table(rows: list[Row], title: str) -> str:
    """The rows as a fixed-width text table under `title`."""
    head = ("stage", "images", "batch", "steps/epoch", "epochs", "total steps", "set as", "")
    cells = [head] + [(r.stage, str(r.images), str(r.batch), str(r.steps_per_epoch), _epochs(r.epochs), str(r.total),
                       r.set_as, r.note) for r in rows]
    width = [max(len(c[i]) for c in cells) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i in (0, 6, 7) else c.rjust(w) for i, (c, w) in enumerate(zip(row, width))).rstrip()
             for row in cells]
    return "\n".join([title, *lines])


def _epochs(e: float) -> str:
    return str(int(e)) if float(e).is_integer() else f"{e:.2f}"


def _count(n: int | None, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"
