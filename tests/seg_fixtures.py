"""A tiny ADE20K-layout dataset (coloured shapes, label = shape colour; 0 = background/other)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = [(220, 40, 40), (40, 200, 60), (50, 80, 230), (230, 210, 40)]  # class k+1 is COLOURS[k]
NAMES = ["red", "green", "blue", "yellow"]


def make_ade(root: Path, n_train: int = 8, n_val: int = 4, size: int = 64, seed: int = 0) -> Path:
    """Write <root>/ade20k/ADEChallengeData2016/{images,annotations}/{training,validation} and <root>/manifest.json."""
    rng = np.random.default_rng(seed)
    ade = root / "ade20k" / "ADEChallengeData2016"
    for split, n in (("training", n_train), ("validation", n_val)):
        (ade / "images" / split).mkdir(parents=True, exist_ok=True)
        (ade / "annotations" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            h, w = size, size + 16 * (i % 2)
            img = rng.integers(90, 140, size=(h, w, 3)).astype(np.uint8)  # grey noise background
            lab = np.zeros((h, w), np.uint8)
            yy, xx = np.mgrid[:h, :w]
            for k in rng.permutation(len(COLOURS))[:3]:
                cy, cx, r = rng.integers(10, h - 10), rng.integers(10, w - 10), rng.integers(8, 16)
                inside = (np.abs(yy - cy) < r) & (np.abs(xx - cx) < r) if k % 2 else (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
                img[inside] = COLOURS[k]
                lab[inside] = k + 1
            name = f"ADE_{split}_{i:08d}"
            Image.fromarray(img).save(ade / "images" / split / f"{name}.jpg", quality=95)
            Image.fromarray(lab).save(ade / "annotations" / split / f"{name}.png")
    manifest = root / "manifest.json"
    # as prepare-data writes it: root relative to the manifest's folder, K classes with labels 1..K
    entry = {"root": "ade20k/ADEChallengeData2016", "classes": len(COLOURS), "class_names": NAMES, "embedded": True}
    manifest.write_text(json.dumps({"version": 1, "ade20k": entry}))
    return manifest
