"""`prepare-data`: the `data` params section, the embedded datasets and the manifest that records them.

Each dataset is either generated (root null: mim/data/synth.py writes the embedded stand-in under
`data/`) or real (root set: its layout is checked, mim/data/manifest.py, and its path, counts and
fingerprint are recorded, mim/data/fingerprint.py, so a changed file reruns every later stage).
`write_data` builds into a temporary sibling folder and swaps it in, so a crash never leaves a
half-written `data/`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from mim.config import Check, NonNegInt, PosInt, Range
from mim.data import synth
from mim.data.fingerprint import fingerprint, imagenet_parts, real_root
from mim.data.manifest import (
    MANIFEST,
    Manifest,
    read_class_list,
    read_manifest,
    validate_ade20k,
    validate_coco,
    validate_imagenet,
)
from mim.data.scan import ade20k_problems, coco_problems, imagenet_problems, report
from mim.errors import DataError
from mim.files import remove_stale_temps, umask_mode

Progress = Callable[[Iterable[int], int, str], Iterable[int]]

SHAPES = len(synth.SHAPE_NAMES)  # the generator draws this many classes at most
Root = Annotated[str, Check(lambda r: r.strip() != "", "is an empty path (use null to generate the embedded data)")]
ImageSize = Annotated[int, Range(16, 1024)]
Tilt = Annotated[float, Range(0, 180)]  # degrees


@dataclass(frozen=True, kw_only=True)
class ImageNetData:
    """ImageNet-1k in class-folder layout; root=None generates the embedded stand-in."""

    root: Root | None = None  # <root>/train/<wnid>/*.JPEG and <root>/val/<wnid>/*.JPEG
    # A real root's classes to use: a file of wnids, one a line (`#` comments; e.g. mim/data/imagenet100.txt),
    # relative to the working directory; null = every class folder.  Labels are the listed wnids in sorted order.
    class_list: Root | None = None
    # A folder (outside data/, on a fast disk) where prepare-data packs the images it checked into tar
    # shards of their own bytes (mim/data/packed.py), and every stage then reads: the same samples,
    # without a file open per image.  Repacked when the images change; null = read the folders.
    packed: Root | None = None
    classes: Annotated[int, Range(2, SHAPES)] = 10  # generator only (like every field below)
    train_per_class: PosInt = 100
    val_per_class: PosInt = 20
    image_size: ImageSize = 64
    max_rotation: Tilt = 180.0  # objects tilt within +-this many degrees (180 = any orientation)

    def problems(self) -> list[tuple[str, str]]:
        if self.class_list is not None and self.root is None:
            return [("class_list", "selects classes of a real root; set root (the generated data's classes are `classes`)")]
        if self.packed is not None and self.root is None:
            return [("packed", "packs a real root; set root (the generated data is small enough to read as files)")]
        return []


@dataclass(frozen=True, kw_only=True)
class SceneData:
    """COCO or ADE20K; root=None generates the embedded stand-in with several objects per image."""

    root: Root | None = None
    classes: Annotated[int, Range(2, SHAPES)] = 10
    train_images: PosInt = 48
    val_images: PosInt = 8
    image_size: ImageSize = 128
    objects: Annotated[tuple[int, int], Check(lambda o: 1 <= o[0] <= o[1] <= 12,
                                              "must be [min, max] with 1 <= min <= max <= 12")] = (2, 5)  # objects per image
    max_rotation: Tilt = 180.0  # objects tilt within +-this many degrees (180 = any orientation)


@dataclass(frozen=True, kw_only=True)
class DatasetsConfig:
    """The `data` params section."""

    seed: NonNegInt = 0
    on_bad_file: Literal["fail", "skip"] = "fail"  # an unreadable image or a bad annotation: stop, or leave it out and count it
    # what a real root's fingerprint in the manifest hashes: each file's (path, size, mtime), or its bytes
    # (read once, then again only when its stat changes; a touched file then reruns no training stage)
    fingerprint: Literal["listing", "content"] = "listing"
    imagenet: ImageNetData = field(default_factory=ImageNetData)
    coco: SceneData = field(default_factory=SceneData)
    ade20k: SceneData = field(default_factory=SceneData)


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




def _silent(it: Iterable[int], total: int, desc: str) -> Iterable[int]:
    return it


def build(cfg: DatasetsConfig, out: Path, progress: Progress = _silent, where: str = "data", cache: Path | None = None,
          workers: int | None = None) -> dict[str, Any]:
    """Generate the embedded datasets under `out` (or check the real ones) and return the manifest.

    Every image, label map and COCO annotation is then checked (mim/data/scan.py; `cache` keeps the
    scans of unchanged folders) and data.on_bad_file decides.  `where` names the params section in
    error messages (e.g. "params/paper.yaml: data").
    """
    out = Path(out)
    ds: dict[str, Any] = {}
    # Real paths first: a wrong path fails before minutes of generating.
    real = {"imagenet": validate_imagenet, "coco": validate_coco, "ade20k": validate_ade20k}
    errors = []
    wnids = None
    if cfg.imagenet.class_list is not None:
        if cfg.imagenet.root is None:
            raise DataError(f"{where}.imagenet.class_list selects classes of a real root; set {where}.imagenet.root")
        try:
            wnids = read_class_list(cfg.imagenet.class_list)
        except DataError as e:
            raise DataError(f"{e} (set in {where}.imagenet.class_list)") from None
    for name, check in real.items():
        root = getattr(cfg, name).root
        if root is not None:
            path = real_root(root)
            try:
                if name == "imagenet" and wnids is not None:
                    ds[name] = {"root": str(path), "embedded": False, **validate_imagenet(path, wnids, cfg.imagenet.class_list),
                                "class_list": cfg.imagenet.class_list, "wnids": sorted(wnids)}
                else:
                    ds[name] = {"root": str(path), "embedded": False, **check(path)}
            except DataError as e:
                keys = "root and .class_list" if name == "imagenet" and wnids is not None else "root"
                errors.append(f"{e} (set in {where}.{name}.{keys})")
    if errors:
        raise DataError("; ".join(errors))
    for name in ds:  # before the scan: a file changed while it runs reruns prepare-data next time
        content_cache = None if cache is None else Path(cache) / f"content-{name}.json"
        ds[name]["fingerprint"] = fingerprint(name, Path(ds[name]["root"]), cfg.fingerprint, content_cache,
                                              parts=imagenet_parts(wnids) if name == "imagenet" and wnids else None)

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
    for name in ("imagenet", "coco", "ade20k"):
        root = Path(ds[name]["root"]) if not ds[name]["embedded"] else out / ds[name]["root"]
        ds[name].update(check_files(name, root, ds[name]["classes"], cfg, out, where, cache, workers, ds[name].get("wnids")))
    if cfg.imagenet.packed is not None:  # after the check: the files it skipped are not packed
        ds["imagenet"].update(pack_imagenet(ds["imagenet"], real_root(cfg.imagenet.packed), progress))
    # the generating params: a regenerated dataset changes the manifest, so training stages restart
    # (not `fingerprint`: it changes a real dataset's fingerprint entry instead, and no generated file;
    # nor a null class_list, so that manifests written before the key existed stay the same bytes)
    params = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "fingerprint"}
    for key in ("class_list", "packed"):
        if getattr(cfg.imagenet, key) is None:
            del params["imagenet"][key]
    manifest = {"version": 2, "seed": cfg.seed, "params": params, **ds}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def pack_imagenet(info: dict[str, Any], dest: Path, progress: Progress = _silent) -> dict[str, Any]:
    """Pack the checked train and val images (mim/data/packed.py) into `dest`/<split> unless the pack
    there was written from exactly these files (their paths, sizes and labels); the manifest's additions."""
    from mim.data.images import ImageFolder
    from mim.data.packed import pack, packed_fingerprint

    root = Path(info["root"])
    skipped = {root / s for s in info.get("skipped", {})}
    prints = {}
    for split in ("train", "val"):
        folder = ImageFolder(root / split, exclude=skipped, classes=info.get("wnids"))
        prints[split] = folder.fingerprint()
        if packed_fingerprint(dest / split) != prints[split]:
            pack(folder.samples, folder.classes, dest / split, prints[split], root / split, progress=progress)
    return {"packed": str(dest), "packed_fingerprint": prints}


def check_files(name: str, root: Path, classes: int, cfg: DatasetsConfig, out: Path, where: str, cache: Path | None,
                workers: int | None, wnids: list[str] | None = None) -> dict[str, Any]:
    """Decode every image (and check ADE20K's label maps, COCO's annotations) of dataset `name`
    (of ImageNet, the classes `wnids` only, when given).

    Returns the manifest's additions: `checked` counts and, with on_bad_file skip, the `skipped`
    files and, for COCO and ADE20K, the annotation files / split lists without them (under `out`)."""
    cache_file = None if cache is None else Path(cache) / f"scan-{name}.json"
    extra: dict[str, Any] = {}
    if name == "imagenet":
        bad, checked = imagenet_problems(root, workers, cache_file, wnids)
    elif name == "ade20k":
        bad, pairs = ade20k_problems(root, classes, workers, cache_file)
        checked = len(pairs)
        if bad and cfg.on_bad_file == "skip":  # mmseg reads these lists (ann_file) instead of every image
            lists = out / "ade20k_splits"
            lists.mkdir(parents=True, exist_ok=True)
            for split in ("training", "validation"):
                good = [img.stem for img in pairs.values() if img.parent.name == split and img.relative_to(root).as_posix() not in bad]
                (lists / f"{split}.txt").write_text("".join(f"{s}\n" for s in good))
            extra["splits"] = "ade20k_splits"
    else:
        bad, anns, checked = coco_problems(root, workers, cache_file)
        if bad and cfg.on_bad_file == "skip":  # annotation files without the bad images and entries, under out/
            folder = out / "coco_annotations"
            folder.mkdir(parents=True, exist_ok=True)
            for split, ann in anns.items():
                drop = {im["id"] for im in ann["images"] if f"{split}/{im.get('file_name')}" in bad}
                kept = dict(ann, images=[im for im in ann["images"] if im["id"] not in drop],
                            annotations=[a for a in ann["annotations"]
                                         if a.get("image_id") not in drop and f"{split}: annotation {a.get('id')}" not in bad])
                (folder / f"instances_{split}.json").write_text(json.dumps(kept))
            extra["annotations"] = "coco_annotations"
    if bad and cfg.on_bad_file == "fail":
        raise report(bad, root, f"{name} files", f"fix or remove them, or set {where}.on_bad_file: skip to leave them out")
    files = {k: r for k, r in bad.items() if ": annotation " not in k}
    return {"checked": checked, "skipped": files, "skipped_annotations": len(bad) - len(files), **extra}


def write_data(cfg: DatasetsConfig, out: Path, progress: Progress = _silent, where: str = "data", cache: Path | None = None,
               workers: int | None = None) -> Manifest:
    """`build` into a temporary sibling folder, then swap it in: a crash leaves no half-written `out`."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out.parent, out.name)  # a build killed before the swap
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}.", suffix=".tmp", dir=out.parent))
    tmp.chmod(umask_mode(0o777))  # mkdtemp makes it private; the data folder is not
    old = out.parent / f".{out.name}.old"
    try:
        build(cfg, tmp, progress, where, cache, workers)
        shutil.rmtree(old, ignore_errors=True)
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return read_manifest(out / MANIFEST)

