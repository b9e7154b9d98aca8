"""A tiny COCO-layout dataset (squares and discs on noise) for the detection tests."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CATEGORIES = [{"id": 1, "name": "square", "supercategory": "shape"}, {"id": 3, "name": "disc", "supercategory": "shape"}]


def _shape(rng: np.random.Generator, size: int, cat: int) -> list[float]:
    r = float(rng.uniform(0.12, 0.25) * size)
    cx, cy = rng.uniform(r, size - r, 2)
    if cat == 1:
        return [cx - r, cy - r, cx + r, cy - r, cx + r, cy + r, cx - r, cy + r]
    return [v for a in np.linspace(0, 2 * math.pi, 16, endpoint=False) for v in (cx + r * math.cos(a), cy + r * math.sin(a))]


def make_coco(root: Path, n_train: int = 8, n_val: int = 4, size: int = 128, seed: int = 0) -> Path:
    """Write root/{train2017,val2017}/*.png and root/annotations/instances_*.json; returns root."""
    rng = np.random.default_rng(seed)
    ann_id = 1
    for split, n in (("train2017", n_train), ("val2017", n_val)):
        (root / split).mkdir(parents=True, exist_ok=True)
        images, anns = [], []
        for i in range(n):
            img_id = i + 1 + (1000 if split == "val2017" else 0)
            pixels = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
            img = Image.fromarray(pixels)
            draw = ImageDraw.Draw(img)
            for _ in range(int(rng.integers(1, 3))):
                cat = int(rng.choice([1, 3]))
                poly = _shape(rng, size, cat)
                draw.polygon(poly, fill=(230, 60, 60) if cat == 1 else (60, 230, 60))
                xs, ys = poly[0::2], poly[1::2]
                x0, y0 = min(xs), min(ys)
                w, h = max(xs) - x0, max(ys) - y0
                anns.append(dict(id=ann_id, image_id=img_id, category_id=cat, segmentation=[poly],
                                 bbox=[x0, y0, w, h], area=w * h * (1.0 if cat == 1 else math.pi / 4), iscrowd=0))
                ann_id += 1
            name = f"{img_id:012d}.png"
            img.save(root / split / name)
            images.append(dict(id=img_id, file_name=name, width=size, height=size))
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"instances_{split}.json").write_text(
            json.dumps(dict(images=images, annotations=anns, categories=CATEGORIES))
        )
    return root
