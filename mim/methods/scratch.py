"""`scratch`: the random-init baseline every pretrained student must beat (no pretraining).

The encoder is built from the `encoder` params section with `run.seed` and exported as is, so
the downstream stages compare pretraining objectives against the same architecture untrained.
"""
from __future__ import annotations

from torch import nn

from mim.data.loaders import seed_everything
from mim.engine import Task
from mim.methods import Inputs
from mim.vit import ViTEncoder

Config = None  # no params section
INPUT = None


class Scratch(nn.Module):
    """Only the student encoder, at its initialisation."""

    def __init__(self, encoder: ViTEncoder) -> None:
        super().__init__()
        self.encoder = encoder


def task(cfg: None, inputs: Inputs) -> Task:
    seed_everything(inputs.run.seed)
    return Task(Scratch(ViTEncoder(inputs.encoder)), optim=None)
