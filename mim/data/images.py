"""Image datasets in the ImageNet folder layout (`<root>/<split>/<class>/*.JPEG`) and loaders.

The same code reads the embedded synthetic dataset and real ImageNet; a missing folder or
a corrupt image is a `DataError` naming the path, never a bare PIL traceback.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from mim.data.manifest import locate, read_manifest, validate_imagenet
from mim.data.scan import imagenet_problems, report, to_rgb
from mim.errors import DataError

IMG_EXTENSIONS = (".jpeg", ".jpg", ".png")
# ImageNet statistics (used by every paper here, and kept for the embedded data).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def open_rgb(path: Path) -> Image.Image:
    """The image at `path` as 8-bit RGB, whatever its mode (mim/data/scan.py `to_rgb`)."""
    try:
        with Image.open(path) as im:
            return to_rgb(im)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"cannot read image {path}: {e}") from None


class ImageFolder(Dataset):
    """`<root>/<class>/<image>` with classes sorted by name -> label index."""

    def __init__(self, root: Path, transform: Callable[[Image.Image], Any] | None = None, limit_per_class: int = 0,
                 exclude: Collection[Path] = ()) -> None:
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"image folder not found: {root}")
        self.root = root
        skip = set(exclude)
        self.classes = sorted(d.name for d in root.iterdir() if d.is_dir())
        if not self.classes:
            raise DataError(f"{root} has no class sub-folders (expected <class>/<image>.JPEG)")
        self.samples: list[tuple[Path, int]] = []
        for label, cls in enumerate(self.classes):
            files = sorted(p for p in (root / cls).iterdir() if p.suffix.lower() in IMG_EXTENSIONS and p not in skip)
            if limit_per_class:
                files = files[:limit_per_class]
            self.samples += [(p, label) for p in files]
        if not self.samples:
            raise DataError(f"{root} holds no images ({', '.join(IMG_EXTENSIONS)})")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def fingerprint(self) -> str:
        """Hash of (path, size, label) of every image: regenerated data never resumes an old run."""
        h = hashlib.sha256()
        for path, label in self.samples:
            h.update(f"{path}\t{path.stat().st_size}\t{label}\n".encode())
        return h.hexdigest()[:16]

    def __getitem__(self, i: int) -> tuple[Any, int]:
        path, label = self.samples[i]
        img = open_rgb(path)
        return (self.transform(img) if self.transform else img), label


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch: the run seed and the epoch number, nothing else (resumable runs)."""
    return seed * 100_003 + epoch


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    epoch: int,
    seed: int,
    shuffle: bool = True,
    drop_last: bool = True,
    num_workers: int = 0,
    collate_fn: Callable[..., Any] | None = None,
) -> DataLoader:
    """A loader whose order and augmentation depend only on (seed, epoch): resumable runs."""
    g = torch.Generator()
    g.manual_seed(epoch_seed(seed, epoch))
    sampler = None
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
        sampler.set_epoch(epoch)
        shuffle = False
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=num_workers,
        generator=g,
        collate_fn=collate_fn,
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
    )


@dataclass(frozen=True)
class DataRoot:
    """An ImageNet-layout dataset: its root, and the files prepare-data left out (data.on_bad_file: skip)."""

    root: Path
    skipped: frozenset[str] = frozenset()  # paths relative to root

    def images(self, split: str, transform: Callable[[Image.Image], Any] | None = None, limit_per_class: int = 0) -> ImageFolder:
        return ImageFolder(self.root / split, transform, limit_per_class, exclude={self.root / s for s in self.skipped})


def open_dataset(data: str | Path, workers: int | None = None) -> DataRoot:
    """The ImageNet-layout dataset `--data` names: from data/manifest.json (checked by prepare-data, with
    its skipped files), or a dataset folder, whose layout and every image are checked here first."""
    data = Path(data)
    if not data.is_dir():
        root = locate(data, "imagenet")  # one-line errors for a missing or broken manifest
        return DataRoot(root, frozenset(read_manifest(data).skipped.get("imagenet", ())))
    validate_imagenet(data)  # train/ and val/ with the same, non-empty class folders
    bad, _ = imagenet_problems(data, workers)
    if bad:
        raise report(bad, data, "images", "fix or remove them (or prepare the dataset with data.on_bad_file: skip)")
    return DataRoot(data)
