"""Every file of a dataset decoded once, before any stage trains on it; and images of any mode as RGB.

One policy for bad files, set by `data.on_bad_file`: `fail` (default) stops prepare-data with the
list, `skip` leaves the files out and records them (and their count) in data/manifest.json, where
every stage reads them.  A stage given a dataset folder directly (`--data DIR`) scans it the same
way and fails on a bad file.  The scan runs in parallel for large sets and is cached by the folder
listing (path, size, mtime of every file): an unchanged dataset is not decoded again.

`to_rgb` turns any image mode PIL opens into 8-bit RGB, correctly: 16-bit and 32-bit grayscale
are scaled (PIL's own conversion saturates them to white), float images in [0, 1] are scaled,
palette and alpha images go through RGBA (the alpha is dropped, as torchvision's and timm's
loaders do), CMYK uses PIL's conversion.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mim.errors import DataError

RGB_MODES = ("RGB", "L", "1", "CMYK", "YCbCr", "P", "PA", "LA", "La", "RGBA", "RGBa", "RGBX", "I;16", "I;16L", "I;16B", "I;16N",
             "I", "F")
PARALLEL_FROM = 2000  # files: below this, one process is faster than starting a pool


def to_rgb(im: Image.Image) -> Image.Image:
    """Any mode PIL opens -> 8-bit RGB (see the module doc); DataError for a mode it cannot convert."""
    mode = im.mode
    if mode == "RGB":
        return im.convert("RGB")  # a copy, detached from the file
    if mode.startswith("I;16") or mode == "I":  # 16-bit PNG/TIFF grayscale (I;16) or 32-bit ints holding 16-bit values
        a = np.asarray(im).astype(np.int64)
        top = 65535 if mode.startswith("I;16") or a.max(initial=0) <= 65535 else int(a.max())
        return Image.fromarray((np.clip(a, 0, top) * 255 // max(top, 1)).astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        a = np.nan_to_num(np.asarray(im, dtype=np.float64))
        a = a * 255 if a.max(initial=0) <= 1.0 else a
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode in ("P", "PA", "LA", "La", "RGBa"):
        return im.convert("RGBA").convert("RGB")
    if mode in RGB_MODES:
        return im.convert("RGB")
    raise DataError(f"unsupported image mode {mode}")


def check_image(path: Path) -> str | None:
    """Why `path` is not a usable image (it cannot be opened, decoded or converted), or None."""
    try:
        with Image.open(path) as im:
            im.load()  # the whole file: a truncated JPEG fails here, not mid-training
            if im.width < 1 or im.height < 1:
                return "empty image"
            to_rgb(im)
    except Exception as e:  # PIL raises many types for broken files (OSError, SyntaxError, ValueError, DecompressionBomb...)
        return f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else 'unreadable'}"
    return None


def check_label(path: Path, image: Path, classes: int) -> str | None:
    """Why an ADE20K label PNG cannot go with `image` (0 = other, 1..classes), or None."""
    try:
        with Image.open(path) as lab, Image.open(image) as im:
            if lab.mode not in ("L", "P", "I;16", "I"):
                return f"label mode {lab.mode}: expected one 8-bit (or 16-bit) channel of class ids"
            if lab.size != im.size:
                return f"label size {lab.size[0]}x{lab.size[1]} differs from its image's {im.size[0]}x{im.size[1]}"
            top = int(np.asarray(lab).max(initial=0))
            if top > classes:
                return f"label value {top} above the {classes} classes (0 = other, 1..{classes})"
    except Exception as e:
        return f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else 'unreadable'}"
    return None


def _check(job: tuple[str, str, str | None, int]) -> str | None:
    kind, path, other, classes = job
    return check_image(Path(path)) if kind == "image" else check_label(Path(path), Path(other or ""), classes)


def listing_sha256(files: Iterable[Path], root: Path) -> str:
    """sha256 of (path relative to root, size, mtime) of every file: what the scan cache is keyed by."""
    h = hashlib.sha256()
    for p in sorted(files):
        try:
            st = p.stat()
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:  # a broken link: the scan reports it
            size, mtime = -1, -1
        h.update(f"{p.relative_to(root).as_posix()}\t{size}\t{mtime}\n".encode())
    return h.hexdigest()


def scan(images: list[Path], root: Path, labels: dict[Path, Path] | None = None, classes: int = 0,
         workers: int | None = None, cache: Path | None = None) -> dict[str, str]:
    """Decode `images` (and check `labels`: label -> its image) under `root`: {relative path: reason} of bad files.

    With `cache` (a JSON file), an unchanged listing returns the last result without decoding.
    """
    labels = labels or {}
    key = listing_sha256([*images, *labels], root) if cache is not None else ""
    if cache is not None and cache.is_file():
        try:
            saved = json.loads(cache.read_text())
            if saved.get("listing") == key and saved.get("classes") == classes:
                return dict(saved["bad"])
        except (ValueError, KeyError, TypeError):
            pass  # a damaged cache: scan again
    jobs = [("image", str(p), None, 0) for p in images] + [("label", str(lab), str(img), classes) for lab, img in labels.items()]
    workers = workers or os.cpu_count() or 1
    if len(jobs) >= PARALLEL_FROM and workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            reasons = list(pool.map(_check, jobs, chunksize=256))
    else:
        reasons = [_check(j) for j in jobs]
    bad = {Path(j[1]).relative_to(root).as_posix(): r for j, r in zip(jobs, reasons) if r}
    if cache is not None:
        from mim.files import write_json  # noqa: PLC0415  (light; keeps this module importable alone)

        write_json(cache, {"listing": key, "classes": classes, "bad": bad})
    return bad


def report(bad: dict[str, str], root: Path, what: str, hint: str) -> DataError:
    """The one-line error for bad files: how many, the first few with their reason, what to do."""
    shown = "; ".join(f"{p} ({r})" for p, r in sorted(bad.items())[:5])
    more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
    return DataError(f"{len(bad)} unusable {what} under {root}: {shown}{more}; {hint}")


# --- the three datasets: {path relative to the root (or "<split>: annotation <id>"): reason} -----------
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


def imagenet_problems(root: Path, workers: int | None = None, cache: Path | None = None,
                      classes: Iterable[str] | None = None) -> tuple[dict[str, str], int]:
    """Bad images of `<root>/{train,val}/<class>/*` (the `classes` folders only, when given) and how many were checked."""
    folders = [root / split for split in ("train", "val")] if classes is None else \
        [root / split / c for split in ("train", "val") for c in sorted(classes)]
    files = [p for d in folders for p in sorted(d.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES]
    return scan(files, root, workers=workers, cache=cache), len(files)


def ade20k_problems(root: Path, classes: int, workers: int | None = None,
                    cache: Path | None = None) -> tuple[dict[str, str], dict[Path, Path]]:
    """Bad images and label maps of an ADEChallengeData2016 folder (a bad label map also marks its image),
    and the pairs checked (label -> image)."""
    pairs = {}
    for split in ("training", "validation"):
        for img in sorted((root / "images" / split).iterdir()):
            if img.suffix.lower() in IMAGE_SUFFIXES:
                pairs[root / "annotations" / split / f"{img.stem}.png"] = img
    bad = scan(list(pairs.values()), root, labels=pairs, classes=classes, workers=workers, cache=cache)
    for lab, img in pairs.items():
        rel = lab.relative_to(root).as_posix()
        if rel in bad:
            bad.setdefault(img.relative_to(root).as_posix(), f"its label map: {bad[rel]}")
    return bad, pairs


def coco_problems(root: Path, workers: int | None = None,
                  cache: Path | None = None) -> tuple[dict[str, str], dict[str, dict[str, Any]], int]:
    """Bad entries of both COCO splits' annotations and bad or missing images they list, the parsed
    annotation files, and how many images were checked."""
    from mim.data.manifest import check_coco  # noqa: PLC0415  (manifest's layout checks build on this module)

    bad: dict[str, str] = {}
    anns, images = {}, []
    for split in ("train2017", "val2017"):
        path = root / "annotations" / f"instances_{split}.json"
        try:
            anns[split] = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise DataError(f"COCO root {root}: cannot read {path}: {e}") from None
        bad.update({f"{split}: {k}": r for k, r in check_coco(anns[split], str(path)).items()})
        for im in anns[split].get("images", []):
            p = root / split / str(im.get("file_name", ""))
            if p.is_file():
                images.append(p)
            else:
                bad[p.relative_to(root).as_posix()] = "listed in the annotations but missing"
    bad.update(scan(images, root, workers=workers, cache=cache))
    return bad, anns, len(images)
