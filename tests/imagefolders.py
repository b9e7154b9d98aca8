"""Tiny learnable ImageNet-layout folders for tests: each class is a striped pattern."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def make_imagenet(root: Path, classes: int = 3, train: int = 8, val: int = 4, size: int = 36) -> Path:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for split, n in (("train", train), ("val", val)):
        for c in range(classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            ang = c * np.pi / classes
            for i in range(n):
                s = np.sin(2 * np.pi * 3 * (np.cos(ang) * xx + np.sin(ang) * yy) + rng.uniform(0, 6.3))
                img = (0.5 + 0.4 * s[..., None] * rng.uniform(0.3, 1, 3) + rng.normal(0, 0.1, (size, size, 3))).clip(0, 1)
                Image.fromarray((img * 255).astype(np.uint8)).save(d / f"{i}.png")
    return root
