"""Loaders: what each process reads, in which order, with which augmentation randomness.

Training (`TrainLoader`): an epoch is a permutation of the dataset drawn from (seed, epoch) only;
optimizer step k consumes items perm[k*B:(k+1)*B] of the global batch B, whatever the number of
processes W and accumulation steps A: micro-step m of rank r reads the slice (m*W + r) of B/(W*A)
items.  So a run resumed at step k under another world size (same global batch) reads exactly the
items an uninterrupted run would, and splitting a global batch over processes or micro-steps
changes no sample.

Augmentation: every item is transformed right after seeding `random`, torch and numpy from
(seed, epoch, item) (`SeededItems`), so an image's crops, flips and colour jitter in an epoch do
not depend on the loader's workers, on the process that reads it, or on where a run resumed.
Randomness drawn in the training step (masks, Mixup, drop path) comes from each process's own
streams, reseeded by the engine after each micro-batch is drawn from (seed, epoch, step, micro-step,
rank) (`step_seed`):
different on every rank (the official MAE and BEiT seed each process with seed + rank), and the
same again when a run resumes at that step.

Evaluation (`eval_loader`): each process reads its contiguous, unpadded shard (mim/dist.py
`shard`), in dataset order; the evaluation gathers or sums what it computed.

A training run keeps one loader (`TrainLoader`) whose workers persist across epochs; they are
seeded per item, so nothing depends on their number or lifetime.
"""
from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from mim import dist
from mim.errors import MimError


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's order: the run seed and the epoch, nothing else (resumable runs)."""
    return seed * 100_003 + epoch


def item_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of dataset item `index` in `epoch` (any process, any worker)."""
    return _hash(seed, epoch, index)


def step_seed(seed: int, epoch: int, step: int, micro: int = 0, rank: int = 0) -> int:
    """The seed of one process's streams (masks, Mixup, dropout) at one micro-step of an optimizer step:
    a run stopped at any step resumes with the same draws, and every rank draws its own."""
    return _hash(seed, epoch, step, micro, rank)


def _hash(*parts: int) -> int:
    """63 bits of a hash of `parts` (torch.manual_seed takes a signed 64-bit integer)."""
    digest = hashlib.blake2b(",".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def seed_everything(seed: int) -> None:
    """python's, numpy's and torch's streams (CPU, and CUDA once it is in use) from `seed`."""
    seed_cpu(seed)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.manual_seed_all(seed)


def seed_cpu(seed: int) -> None:
    """The CPU streams only: what a transform draws from (1 us each; torch.manual_seed's checks of
    every backend cost 110 us, paid per image)."""
    random.seed(seed)  # timm's transforms (RandomResizedCrop, RandAugment, Mixup) draw from `random`
    torch.default_generator.manual_seed(seed)
    np.random.seed(seed % 2**32)


class SeededItems(Dataset):
    """`dataset[index]` transformed under the seed `item_seed(seed, epoch, index)`; keys are (index, seed).
    Without workers this reseeds the main process's streams: the engine reseeds them for the step
    after each batch is drawn (mim.engine: `step_seed`), so the step's draws never depend on the loader's."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        seed_cpu(seed)
        return self.dataset[index]


class GlobalBatches(Sampler[list[tuple[int, int]]]):
    """This process's micro-batches of (index, item seed) for optimizer steps [start, stop) of one epoch."""

    def __init__(self, n: int, global_batch: int, accum: int, *, seed: int, epoch: int, start: int = 0,
                 stop: int | None = None, rank: int | None = None, world: int | None = None) -> None:
        self.n, self.batch, self.accum, self.seed, self.epoch = n, global_batch, accum, seed, epoch
        self.rank = dist.rank() if rank is None else rank
        self.world = dist.world_size() if world is None else world
        self.per = global_batch // (self.world * accum)
        if self.per * self.world * accum != global_batch:
            raise ValueError(f"global batch {global_batch} does not split into {self.world} processes x {accum} micro-steps")
        self.set(epoch, start, stop)

    def set(self, epoch: int, start: int = 0, stop: int | None = None) -> None:
        """Read optimizer steps [start, stop) of `epoch` next (the loader's workers stay)."""
        full = self.n // self.batch
        self.epoch, self.start, self.stop = epoch, start, full if stop is None else min(stop, full)

    def __len__(self) -> int:
        return max(0, self.stop - self.start) * self.accum

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))  # the same order on every rank
        perm = torch.randperm(self.n, generator=g).tolist()
        for step in range(self.start, self.stop):
            chunk = perm[step * self.batch : (step + 1) * self.batch]
            for m in range(self.accum):
                lo = (m * self.world + self.rank) * self.per
                yield [(i, item_seed(self.seed, self.epoch, i)) for i in chunk[lo : lo + self.per]]


class TrainLoader:
    """One DataLoader for the whole run, its workers persistent across epochs (their start-up is paid
    once); `loader(epoch, start, stop)` yields this process's micro-batches of optimizer steps
    [start, stop) of `epoch` (module docstring).  Items are seeded per item, so reusing workers
    changes no sample."""

    def __init__(self, dataset: Dataset, global_batch: int, accum: int, *, seed: int, num_workers: int = 0,
                 collate_fn: Callable[..., Any] | None = None) -> None:
        self.sampler = GlobalBatches(len(dataset), global_batch, accum, seed=seed, epoch=0)  # type: ignore[arg-type]
        # its own generator: a new epoch's iterator draws the workers' base seed from it (unused: items
        # are seeded) and not from the process's stream, which the step's masks draw from
        self.loader = DataLoader(SeededItems(dataset), batch_sampler=self.sampler, num_workers=num_workers, collate_fn=collate_fn,
                                 pin_memory=torch.cuda.is_available(), persistent_workers=num_workers > 0,
                                 generator=torch.Generator())

    def __call__(self, epoch: int, start: int = 0, stop: int | None = None) -> DataLoader:
        self.sampler.set(epoch, start, stop)
        return self.loader


def eval_loader(dataset: Dataset, batch_size: int, *, num_workers: int = 0, collate_fn: Callable[..., Any] | None = None) -> DataLoader:
    """This process's shard of `dataset` in order, every item once (no padding, no shuffling)."""
    if len(dataset) < dist.world_size():  # type: ignore[arg-type]
        raise MimError(f"{getattr(dataset, 'root', 'the dataset')} has {len(dataset)} images, fewer than the "  # type: ignore[arg-type]
                       f"{dist.world_size()} processes evaluating it")
    part = dataset if dist.world_size() == 1 else Subset(dataset, list(dist.shard(len(dataset))))  # type: ignore[arg-type]
    return DataLoader(part, batch_size=batch_size, shuffle=False, drop_last=False, num_workers=num_workers,
                      collate_fn=collate_fn, pin_memory=torch.cuda.is_available())
