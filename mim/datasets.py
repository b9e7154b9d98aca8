"""Where the datasets live: the `data` params section, real-path checks and `data/manifest.json`.

`prepare-data` either generates the embedded synthetic ImageNet / COCO / ADE20K (mim/synth.py)
under `data/`, or, for a dataset whose `root` is set, checks the real folder's layout and only
records its path.  Every later stage reads the roots from the manifest (`read_manifest`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from mim import synth
from mim.config import ConfigError
from mim.errors import DataError

MANIFEST = "manifest.json"
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
ADE20K_CLASSES = 150  # ADEChallengeData2016 (SceneParsing benchmark)


@dataclass(frozen=True, kw_only=True)
class ImageNetData:
    """ImageNet-1k in class-folder layout; root=None generates the embedded stand-in."""

    root: str | None = None  # <root>/train/<wnid>/*.JPEG and <root>/val/<wnid>/*.JPEG
    classes: int = 10  # generator only (like every field below)
    train_per_class: int = 100
    val_per_class: int = 20
    image_size: int = 64
    max_rotation: float = 180.0  # objects tilt within +-this many degrees (180 = any orientation)


@dataclass(frozen=True, kw_only=True)
class SceneData:
    """COCO or ADE20K; root=None generates the embedded stand-in with several objects per image."""

    root: str | None = None
    classes: int = 10
    train_images: int = 48
    val_images: int = 8
    image_size: int = 128
    objects: tuple[int, int] = (2, 5)  # objects per image, min and max
    max_rotation: float = 180.0  # objects tilt within +-this many degrees (180 = any orientation)


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """The `data` params section."""

    seed: int = 0
    imagenet: ImageNetData = field(default_factory=ImageNetData)
    coco: SceneData = field(default_factory=SceneData)
    ade20k: SceneData = field(default_factory=SceneData)


def check_config(cfg: DataConfig, where: str = "data") -> None:
    """Range checks that types alone do not catch; errors name the dotted key."""
    n_shapes = len(synth.SHAPE_NAMES)

    def need(ok: bool, key: str, msg: str) -> None:
        if not ok:
            raise ConfigError(f"{where}.{key}: {msg}")

    parts: list[tuple[str, Any]] = [("imagenet", cfg.imagenet), ("coco", cfg.coco), ("ade20k", cfg.ade20k)]
    for name, d in parts:
        if d.root is not None:
            need(d.root.strip() != "", f"{name}.root", "empty path (use null to generate the embedded data)")
            continue
        need(2 <= d.classes <= n_shapes, f"{name}.classes", f"{d.classes} is outside 2..{n_shapes} (the generator's shapes)")
        need(16 <= d.image_size <= 1024, f"{name}.image_size", f"{d.image_size} is outside 16..1024")
        need(0 <= d.max_rotation <= 180, f"{name}.max_rotation", f"{d.max_rotation} is outside 0..180 degrees")
        if isinstance(d, ImageNetData):
            need(d.train_per_class >= 1, f"{name}.train_per_class", "must be >= 1")
            need(d.val_per_class >= 1, f"{name}.val_per_class", "must be >= 1")
        else:
            need(d.train_images >= 1, f"{name}.train_images", "must be >= 1")
            need(d.val_images >= 1, f"{name}.val_images", "must be >= 1")
            need(1 <= d.objects[0] <= d.objects[1] <= 12, f"{name}.objects", f"{list(d.objects)} must be [min, max] with 1 <= min <= max <= 12")


# ---------------------------------------------------------------- real-path validation
def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _require(root: Path, what: str, rel: Iterable[str]) -> None:
    if not root.is_dir():
        raise DataError(f"{what} root {root}: not a directory")
    missing = [r for r in rel if not (root / r).exists()]
    if missing:
        raise DataError(f"{what} root {root}: missing {', '.join(missing)}")


def validate_imagenet(root: Path) -> dict[str, Any]:
    """Check `<root>/{train,val}/<wnid>/*.JPEG`; return class names and image counts."""
    root = Path(root)
    _require(root, "ImageNet", ("train/", "val/"))
    train = sorted(d.name for d in (root / "train").iterdir() if d.is_dir())
    val = sorted(d.name for d in (root / "val").iterdir() if d.is_dir())
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


def tree_sha256(root: Path) -> str:
    """sha256 over every file under `root`: relative path and content, in sorted order.

    Recorded in the manifest for generated data, so stages can depend on data/manifest.json
    alone (DVC then need not walk the image folders on every `dvc repro`) and still rerun
    whenever any generated file changes, e.g. after an edit of the generator.
    """
    h = hashlib.sha256()
    for p in sorted(q for q in Path(root).rglob("*") if q.is_file()):
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


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


def read_manifest(path: str | Path = Path("data") / MANIFEST) -> Manifest:
    """Read a manifest written by `prepare-data`; embedded roots resolve next to the manifest."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"dataset manifest not found: {path} (run `mimrepro prepare-data` or `dvc repro prepare-data`)")
    try:
        ds = json.loads(path.read_text())
        roots = {k: Path(ds[k]["root"]) for k in ("imagenet", "coco", "ade20k")}
        return Manifest(
            **{k: (r if r.is_absolute() else path.parent / r) for k, r in roots.items()},
            imagenet_classes=int(ds["imagenet"]["classes"]),
            coco_classes=int(ds["coco"]["classes"]),
            ade20k_classes=int(ds["ade20k"]["classes"]),
            class_names={k: tuple(ds[k]["class_names"]) for k in roots},
            images={f"{k}/{s}": int(n) for k in roots for s, n in sorted(ds[k]["images"].items())},
            embedded=tuple(k for k in roots if ds[k]["embedded"]),
        )
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path}: not a valid dataset manifest ({type(e).__name__}: {e})") from None


Progress = Callable[[Iterable[int], int, str], Iterable[int]]


def _silent(it: Iterable[int], total: int, desc: str) -> Iterable[int]:
    return it


def build(cfg: DataConfig, out: Path, progress: Progress = _silent, where: str = "data") -> dict[str, Any]:
    """Generate the embedded datasets under `out` (or check the real ones) and return the manifest.

    `where` names the params section in error messages (e.g. "params/paper.yaml: data").
    """
    out = Path(out)
    ds: dict[str, Any] = {}
    # Real paths first: a wrong path fails before minutes of generating.
    real = {"imagenet": validate_imagenet, "coco": validate_coco, "ade20k": validate_ade20k}
    errors = []
    for name, check in real.items():
        root = getattr(cfg, name).root
        if root is not None:
            path = Path(os.path.abspath(os.path.expanduser(root)))
            try:
                ds[name] = {"root": str(path), "embedded": False, **check(path)}
            except DataError as e:
                errors.append(f"{e} (set in {where}.{name}.root)")
    if errors:
        raise DataError("; ".join(errors))

    if cfg.imagenet.root is None:
        c = cfg.imagenet
        synth.write_imagenet(out / "imagenet", classes=c.classes, train_per_class=c.train_per_class,
                             val_per_class=c.val_per_class, image_size=c.image_size, seed=cfg.seed,
                             max_rotation=c.max_rotation, progress=progress)
        ds["imagenet"] = {"root": "imagenet", "embedded": True, "sha256": tree_sha256(out / "imagenet"),
                          **validate_imagenet(out / "imagenet")}
    if cfg.coco.root is None:
        c = cfg.coco
        synth.write_coco(out / "coco", classes=c.classes, train_images=c.train_images, val_images=c.val_images,
                         image_size=c.image_size, objects=c.objects, seed=cfg.seed, max_rotation=c.max_rotation,
                         progress=progress)
        ds["coco"] = {"root": "coco", "embedded": True, "sha256": tree_sha256(out / "coco"), **validate_coco(out / "coco")}
    if cfg.ade20k.root is None:
        c = cfg.ade20k
        rel = "ade20k/ADEChallengeData2016"
        synth.write_ade20k(out / rel, classes=c.classes, train_images=c.train_images, val_images=c.val_images,
                           image_size=c.image_size, objects=c.objects, seed=cfg.seed, max_rotation=c.max_rotation,
                           progress=progress)
        info = validate_ade20k(out / rel, classes=c.classes)
        info["class_names"] = list(synth.SHAPE_NAMES[: c.classes])
        ds["ade20k"] = {"root": rel, "embedded": True, "sha256": tree_sha256(out / rel), **info}
    # the generating params: a regenerated dataset changes the manifest, so training stages restart
    manifest = {"version": 1, "seed": cfg.seed, "params": dataclasses.asdict(cfg), **ds}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def write_data(cfg: DataConfig, out: Path, progress: Progress = _silent, where: str = "data") -> Manifest:
    """`build` into a temporary sibling folder, then swap it in: a crash leaves no half-written `out`."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the data folder is not
    old = out.parent / f".{out.name}.old"
    try:
        build(cfg, tmp, progress, where)
        shutil.rmtree(old, ignore_errors=True)
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return read_manifest(out / MANIFEST)
