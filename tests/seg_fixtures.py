"""A tiny dataset written by prepare-data's own generator (ADE20K-layout scenes + data/manifest.json)."""
from __future__ import annotations

from pathlib import Path

from mim.data.prepare import DatasetsConfig, ImageNetData, SceneData, write_data


def make_ade(root: Path, n_train: int = 8, n_val: int = 4, size: int = 64, classes: int = 4, seed: int = 0) -> Path:
    """<root>/ade20k/ADEChallengeData2016/... (labels 1..classes, 0 = other) and <root>/manifest.json."""
    cfg = DatasetsConfig(
        seed=seed,
        imagenet=ImageNetData(classes=2, train_per_class=1, val_per_class=1, image_size=32),  # unused here
        coco=SceneData(classes=2, train_images=1, val_images=1, image_size=32, objects=(1, 1)),  # unused here
        ade20k=SceneData(classes=classes, train_images=n_train, val_images=n_val, image_size=size, objects=(2, 4)),
    )
    write_data(cfg, root)
    return root / "manifest.json"
