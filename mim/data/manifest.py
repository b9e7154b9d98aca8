"""Where the datasets live: `data/manifest.json`, the real-layout checks, and `locate`.

`prepare-data` (mim/data/prepare.py) either generates the embedded synthetic ImageNet / COCO /
ADE20K under `data/`, or, for a dataset whose `root` is set, checks the real folder's layout
with the functions here and records its path, counts and fingerprint (mim/data/fingerprint.py).
Every later stage is given `--data` and finds a dataset one way, `locate`: the root recorded in
that manifest, or `--data` itself when it is a dataset folder.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mim.errors import DataError

MANIFEST = "manifest.json"
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
ADE20K_CLASSES = 150  # ADEChallengeData2016 (SceneParsing benchmark)
WNID = re.compile(r"n\d{8}")  # a WordNet synset id, ImageNet's class folder names


def read_class_list(path: str | Path) -> tuple[str, ...]:
    """The wnids of a class-list file (`data.imagenet.class_list`): one per line, blank lines and
    `#` comments skipped; a malformed or repeated wnid is a one-line DataError naming file and line."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"class list {path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    seen: dict[str, int] = {}
    for i, line in enumerate(lines, 1):
        w = line.split("#", 1)[0].strip()
        if not w:
            continue
        if not WNID.fullmatch(w):
            raise DataError(f"class list {path}, line {i}: {w!r} is not a wnid (n followed by 8 digits)")
        if w in seen:
            raise DataError(f"class list {path}, line {i}: {w} repeats line {seen[w]}")
        seen[w] = i
    if not seen:
        raise DataError(f"class list {path}: lists no wnid")
    return tuple(seen)


# ---------------------------------------------------------------- real-path validation
def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _require(root: Path, what: str, rel: Iterable[str]) -> None:
    if not root.is_dir():
        raise DataError(f"{what} root {root}: not a directory")
    missing = [r for r in rel if not (root / r).exists()]
    if missing:
        raise DataError(f"{what} root {root}: missing {', '.join(missing)}")


def validate_imagenet(root: Path, classes: Sequence[str] | None = None, source: str = "the class list") -> dict[str, Any]:
    """Check `<root>/{train,val}/<wnid>/*.JPEG`; return class names and image counts.

    `classes` (wnids read from `source`, a class-list file) keeps only those classes: each must be a
    folder of train/ and of val/; the others are not looked at."""
    root = Path(root)
    _require(root, "ImageNet", ("train/", "val/"))
    if classes is not None:
        for w in classes:
            for split in ("train", "val"):
                if not (root / split / w).is_dir():
                    raise DataError(f"ImageNet root {root}: class {w} of {source} is missing from {split}/")
    train = sorted(d.name for d in (root / "train").iterdir() if d.is_dir()) if classes is None else sorted(classes)
    val = sorted(d.name for d in (root / "val").iterdir() if d.is_dir()) if classes is None else train
    if not train:
        raise DataError(f"ImageNet root {root}: train/ has no class folders (expected train/<wnid>/*.JPEG)")
    if val != train:
        extra = sorted(set(val) ^ set(train))[:3]
        raise DataError(
            f"ImageNet root {root}: val/ class folders differ from train/ (e.g. {', '.join(extra) or 'none'}); "
            "val must be in class-folder layout val/<wnid>/*.JPEG"
        )
    counts = {}
    for split in ("train", "val"):
        n = 0
        for c in train:
            k = sum(1 for e in os.scandir(root / split / c) if e.name.lower().endswith(IMAGE_SUFFIXES))
            if k == 0:
                raise DataError(f"ImageNet root {root}: {split}/{c}/ holds no images")
            n += k
        counts[split] = n
    names = dict.fromkeys(train, "")
    mapping = root / "LOC_synset_mapping.txt"
    if mapping.is_file():
        for line in mapping.read_text().splitlines():
            wnid, _, name = line.partition(" ")
            if wnid in names:
                names[wnid] = name.split(",")[0].strip()
    return {"classes": len(train), "class_names": [names[w] or w for w in train], "images": counts}


def validate_coco(root: Path) -> dict[str, Any]:
    """Check `<root>/{train2017,val2017}/` and `annotations/instances_{train,val}2017.json`."""
    root = Path(root)
    _require(root, "COCO", ("train2017/", "val2017/", "annotations/instances_train2017.json",
                            "annotations/instances_val2017.json"))
    val_json = root / "annotations" / "instances_val2017.json"
    try:
        cats = json.loads(val_json.read_text())["categories"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"COCO root {root}: cannot read categories from {val_json}: {e}") from None
    cats = sorted(cats, key=lambda c: c["id"])
    counts = {s: sum(1 for e in os.scandir(root / f"{s}2017") if e.name.lower().endswith(IMAGE_SUFFIXES))
              for s in ("train", "val")}
    return {"classes": len(cats), "class_names": [c["name"] for c in cats], "images": counts}


def validate_ade20k(root: Path, classes: int | None = None) -> dict[str, Any]:
    """Check the ADEChallengeData2016 layout: every image has its label PNG."""
    root = Path(root)
    dirs = [f"{k}/{s}/" for k in ("images", "annotations") for s in ("training", "validation")]
    _require(root, "ADE20K", dirs)
    counts = {}
    for split, tag in (("training", "train"), ("validation", "val")):
        imgs = _images(root / "images" / split)
        if not imgs:
            raise DataError(f"ADE20K root {root}: images/{split}/ holds no images")
        labels = {p.stem for p in (root / "annotations" / split).glob("*.png")}
        missing = [p.stem for p in imgs if p.stem not in labels]
        if missing:
            raise DataError(f"ADE20K root {root}: missing annotations/{split}/{missing[0]}.png"
                            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        counts[tag] = len(imgs)
    names: list[str] = []
    info = root / "objectInfo150.txt"
    if info.is_file():  # Idx  Ratio  Train  Val  Name (tab-separated, with a header line)
        names = [line.split("\t")[-1].split(";")[0].split(",")[0].strip()
                 for line in info.read_text().splitlines()[1:] if line.strip()]
    n = classes or len(names) or ADE20K_CLASSES
    return {"classes": n, "class_names": names[:n], "images": counts}



# ---------------------------------------------------------------- manifest
@dataclass(frozen=True, kw_only=True)
class Manifest:
    """What `data/manifest.json` says; roots are absolute or relative to the working directory."""

    imagenet: Path  # train/<wnid>/*.JPEG, val/<wnid>/*.JPEG
    coco: Path  # {train,val}2017/*.jpg, annotations/instances_{train,val}2017.json
    ade20k: Path  # images/{training,validation}/*.jpg, annotations/<same>/*.png (0 = other, 1..K)
    imagenet_classes: int
    coco_classes: int  # categories in the COCO json (ids 1..K for embedded data)
    ade20k_classes: int  # K: label values 1..K; 0 is "other" (mmseg reduce_zero_label=True)
    class_names: dict[str, tuple[str, ...]]  # per dataset (may be empty for real ADE20K)
    images: dict[str, int]  # "imagenet/train", "coco/val", "ade20k/train", ... -> image count
    embedded: tuple[str, ...]  # datasets generated by prepare-data (the others are real paths)
    skipped: dict[str, tuple[str, ...]] = field(default_factory=dict)  # dataset -> files left out (on_bad_file: skip)
    coco_annotations: Path | None = None  # instances_*.json without the skipped entries (None: <coco>/annotations)
    ade20k_splits: Path | None = None  # <split>.txt lists of the usable image stems (None: every image)
    imagenet_wnids: tuple[str, ...] | None = None  # the classes read (data.imagenet.class_list), sorted; None: every folder
    imagenet_packed: Path | None = None  # the packed copy of the images (data.imagenet.packed, mim/data/packed.py)


def read_manifest(path: str | Path = Path("data") / MANIFEST) -> Manifest:
    """Read a manifest written by `prepare-data`; embedded roots resolve next to the manifest."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"dataset manifest not found: {path} (run `mimrepro prepare-data` or `dvc repro prepare-data`)")
    try:
        ds = json.loads(path.read_text())
        roots = {k: Path(ds[k]["root"]) for k in ("imagenet", "coco", "ade20k")}

        def beside(key: str, rel: str | None) -> Path | None:
            return None if rel is None else (Path(rel) if Path(rel).is_absolute() else path.parent / rel)

        return Manifest(
            **{k: (r if r.is_absolute() else path.parent / r) for k, r in roots.items()},
            imagenet_classes=int(ds["imagenet"]["classes"]),
            coco_classes=int(ds["coco"]["classes"]),
            ade20k_classes=int(ds["ade20k"]["classes"]),
            class_names={k: tuple(ds[k]["class_names"]) for k in roots},
            images={f"{k}/{s}": int(n) for k in roots for s, n in sorted(ds[k]["images"].items())},
            embedded=tuple(k for k in roots if ds[k]["embedded"]),
            skipped={k: tuple(ds[k].get("skipped", {})) for k in roots},
            coco_annotations=beside("coco", ds["coco"].get("annotations")),
            ade20k_splits=beside("ade20k", ds["ade20k"].get("splits")),
            imagenet_wnids=None if ds["imagenet"].get("wnids") is None else tuple(ds["imagenet"]["wnids"]),
            imagenet_packed=None if ds["imagenet"].get("packed") is None else Path(ds["imagenet"]["packed"]),
        )
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path}: not a valid dataset manifest ({type(e).__name__}: {e})") from None


DATASETS = ("imagenet", "coco", "ade20k")


def locate(data: str | Path, name: str) -> Path:
    """Root of dataset `name`: the one recorded in a manifest (a .json file written by prepare-data),
    or `data` itself when it is a folder (a dataset root given on the command line)."""
    if name not in DATASETS:
        raise DataError(f"no dataset {name!r}; choose {', '.join(DATASETS)}")
    data = Path(data)
    if data.is_dir():
        return data
    if not data.exists():
        hint = "run `mimrepro prepare-data` or `dvc repro prepare-data`" if data.suffix == ".json" else "not a dataset folder either"
        raise DataError(f"dataset manifest not found: {data} ({hint})")
    if data.suffix != ".json":
        raise DataError(f"{data}: neither a dataset folder nor a manifest (.json) written by prepare-data")
    return Path(getattr(read_manifest(data), name))


def check_coco(ann: dict[str, Any], source: str) -> dict[str, str]:
    """The unusable entries of a COCO instances JSON: {"annotation <id>" | "image <file>": reason}.

    Raises DataError when the file as a whole is not COCO (no categories, duplicate ids)."""
    try:
        cats = [c["id"] for c in ann["categories"]]
        images = {im["id"]: im for im in ann["images"]}
        annotations = ann["annotations"]
    except (KeyError, TypeError) as e:
        raise DataError(f"{source}: not a COCO instances file (missing {e})") from None
    if not cats or len(set(cats)) != len(cats) or not all(isinstance(c, int) for c in cats):
        raise DataError(f"{source}: categories need unique integer ids, got {cats[:10]}")
    known = set(cats)
    bad: dict[str, str] = {}
    for a in annotations:
        key = f"annotation {a.get('id')}"
        im = images.get(a.get("image_id"))
        box = a.get("bbox")
        if im is None:
            bad[key] = f"image_id {a.get('image_id')} is not in images"
        elif a.get("category_id") not in known:
            bad[key] = f"category_id {a.get('category_id')} is not in categories"
        elif not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) and v == v for v in box)):
            bad[key] = f"bbox {box} is not [x, y, w, h]"
        elif box[2] < 0 or box[3] < 0 or box[0] >= im.get("width", float("inf")) or box[1] >= im.get("height", float("inf")):
            bad[key] = f"bbox {box} is negative or outside its {im.get('width')}x{im.get('height')} image"
        elif not _segmentation_ok(a.get("segmentation")):
            bad[key] = "segmentation is neither polygons of >= 3 points nor an RLE"
    return bad


def _segmentation_ok(seg: Any) -> bool:
    if seg is None:
        return True  # boxes only
    if isinstance(seg, dict):  # RLE
        return "counts" in seg and "size" in seg
    return isinstance(seg, list) and all(
        isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 and all(isinstance(v, (int, float)) and v == v for v in p) for p in seg
    )


def open_coco(data: str | Path, workers: int | None = None) -> tuple[Path, Path]:
    """(images root, annotations folder) of the COCO dataset `--data` names: from data/manifest.json (its
    annotations without skipped entries, when prepare-data skipped some), or a COCO folder, whose
    annotations and images are checked here first."""
    from mim.data.scan import coco_problems, report  # noqa: PLC0415

    data = Path(data)
    if data.is_dir():
        validate_coco(data)
        bad, _, _ = coco_problems(data, workers)
        if bad:
            raise report(bad, data, "COCO files", "fix them (or prepare the dataset with data.on_bad_file: skip)")
        return data, data / "annotations"
    root = locate(data, "coco")
    return root, read_manifest(data).coco_annotations or root / "annotations"
