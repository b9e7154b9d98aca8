"""Image datasets in the ImageNet folder layout (`<root>/<split>/<class>/*.JPEG`) and loaders.

The same code reads the embedded synthetic dataset and real ImageNet; a missing folder or
a corrupt image is a `DataError` naming the path, never a bare PIL traceback.
"""
from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from mim.data.fingerprint import samples_fingerprint
from mim.data.manifest import locate, read_manifest, validate_imagenet
from mim.data.packed import PackedImages
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
    """`<root>/<class>/<image>` with classes sorted by name -> label index; `classes` keeps only those
    sub-folders (a class list: data.imagenet.class_list), labelled in their sorted order."""

    def __init__(self, root: Path, transform: Callable[[Image.Image], Any] | None = None, limit_per_class: int = 0,
                 exclude: Collection[Path] = (), classes: Collection[str] | None = None) -> None:
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"image folder not found: {root}")
        self.root = root
        skip = set(exclude)
        if classes is None:
            self.classes = sorted(d.name for d in root.iterdir() if d.is_dir())
        else:
            self.classes = sorted(classes)
            missing = [c for c in self.classes if not (root / c).is_dir()]
            if missing:
                raise DataError(f"{root}: class folder {missing[0]} of the dataset's class list is missing"
                                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "") + "; rerun prepare-data")
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
        return samples_fingerprint((path, path.stat().st_size, label) for path, label in self.samples)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        path, label = self.samples[i]
        img = open_rgb(path)
        return (self.transform(img) if self.transform else img), label


@dataclass(frozen=True)
class DataRoot:
    """An ImageNet-layout dataset: its root, the files prepare-data left out (data.on_bad_file: skip) and
    the classes it uses (data.imagenet.class_list; None = every class folder)."""

    root: Path
    skipped: frozenset[str] = frozenset()  # paths relative to root
    classes: tuple[str, ...] | None = None  # wnids, sorted: label i is classes[i]
    packed: Path | None = None  # the images packed in shards (data.imagenet.packed): read from there instead

    def images(self, split: str, transform: Callable[[Image.Image], Any] | None = None,
               limit_per_class: int = 0) -> ImageFolder | PackedImages:
        """`<root>/<split>` (or its packed copy: the same items in the same order, mim/data/packed.py)."""
        if self.packed is not None:
            skip = {s.removeprefix(f"{split}/") for s in self.skipped if s.startswith(f"{split}/")}
            return PackedImages(self.packed / split, transform, limit_per_class, exclude=skip, classes=self.classes)
        return ImageFolder(self.root / split, transform, limit_per_class, exclude={self.root / s for s in self.skipped},
                           classes=self.classes)


def open_dataset(data: str | Path, workers: int | None = None) -> DataRoot:
    """The ImageNet-layout dataset `--data` names: from data/manifest.json (checked by prepare-data, with
    its skipped files and its class list), or a dataset folder (every class), whose layout and every
    image are checked here first."""
    data = Path(data)
    if not data.is_dir():
        root = locate(data, "imagenet")  # one-line errors for a missing or broken manifest
        m = read_manifest(data)
        return DataRoot(root, frozenset(m.skipped.get("imagenet", ())), m.imagenet_wnids, m.imagenet_packed)
    validate_imagenet(data)  # train/ and val/ with the same, non-empty class folders
    bad, _ = imagenet_problems(data, workers)
    if bad:
        raise report(bad, data, "images", "fix or remove them (or prepare the dataset with data.on_bad_file: skip)")
    return DataRoot(data)
