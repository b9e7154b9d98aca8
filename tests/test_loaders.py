"""mim/data/loaders.py: which items each process reads, and their augmentation randomness."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from mim.data.loaders import GlobalBatches, TrainLoader


class Drawn(Dataset):
    """Item i with a draw of each stream a transform uses (python, numpy, torch)."""

    def __len__(self) -> int:
        return 20

    def __getitem__(self, i: int):
        return torch.tensor([float(i), random.random(), float(np.random.rand()), float(torch.rand(()))])


@pytest.mark.parametrize("world,accum", [(1, 1), (1, 4), (2, 1), (2, 2), (4, 1)])
def test_an_optimizer_step_reads_the_same_items_on_any_split(world, accum):
    ref = [[i for i, _ in b] for b in GlobalBatches(20, 8, 1, seed=3, epoch=1, rank=0, world=1)]
    split = [list(GlobalBatches(20, 8, accum, seed=3, epoch=1, rank=r, world=world)) for r in range(world)]
    for k in range(2):  # 20 // 8 = 2 full steps; the rest is dropped
        items = [i for r in range(world) for b in split[r][k * accum : (k + 1) * accum] for i, _ in b]
        assert sorted(items) == sorted(ref[k]) and len(items) == 8
    seeds = {i: s for r in range(world) for b in split[r] for i, s in b}
    assert all(s == seeds[i] for b in GlobalBatches(20, 8, 1, seed=3, epoch=1, rank=0, world=1) for i, s in b)  # per item


def test_resuming_at_a_step_reads_what_the_uninterrupted_epoch_reads_from_it():
    full = list(GlobalBatches(20, 4, 2, seed=0, epoch=2))
    assert list(GlobalBatches(20, 4, 2, seed=0, epoch=2, start=3, stop=4)) == full[6:8]


def test_augmentation_depends_on_the_item_not_on_workers_or_the_order_of_epochs():
    main = TrainLoader(Drawn(), 4, 1, seed=1, num_workers=0)
    workers = TrainLoader(Drawn(), 4, 1, seed=1, num_workers=2)  # persistent across the epochs below
    for epoch in (0, 1, 0):
        a = torch.cat(list(main(epoch)))
        b = torch.cat(list(workers(epoch)))
        assert torch.equal(a, b)
    assert not torch.equal(torch.cat(list(main(0))), torch.cat(list(main(1))))  # a new epoch: new order, new draws
    torch.manual_seed(5)
    a = torch.rand(3)
    torch.manual_seed(6)
    list(main(0))  # a new epoch's iterator draws nothing from the process's stream (its own generator)...
    list(main(1))
    torch.manual_seed(5)
    assert torch.equal(torch.rand(3), a)
