"""What a real dataset root holds, as one hash: data/manifest.json changes exactly when its files do.

Two modes (params `data.fingerprint`), both over the files a dataset is read from (`PARTS`), in
path order:
- `listing` (default): sha256 of (path relative to the root, size, mtime_ns) of every file; one
  stat per file, nothing read: 0.25 s per 100k files here (benchmarks/fingerprint.py).
- `content`: sha256 of (path, sha256 of its bytes); a file is read again only when its size,
  mtime, ctime or inode differ from the last call's (the `cache` file), as DVC's state database
  does, so a `touch` or a copy that keeps the bytes reruns prepare-data but no later stage.

`trigger` is what the always-changed stage `fingerprint-data` (fingerprint/dvc.yaml) writes on
every `dvc repro` and prepare-data depends on: the listing with ctime_ns too, so that a file
replaced with the same size and mtime (`cp -p`) still reruns prepare-data, which then records
the listing or the content hash in the manifest that every later stage depends on.

Standard library only: the stage runs on every `dvc repro` and must not import numpy or torch.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from mim.errors import DataError

# What prepare-data and the stages read of each dataset (mim/data/manifest.py): other files under a
# root (ImageNet's test/, COCO's caption annotations, a .tar beside them) change nothing.
PARTS: dict[str, tuple[str, ...]] = {
    "imagenet": ("LOC_synset_mapping.txt", "train", "val"),
    "coco": ("annotations/instances_train2017.json", "annotations/instances_val2017.json", "train2017", "val2017"),
    "ade20k": ("annotations", "images", "objectInfo150.txt"),
}


def imagenet_parts(wnids: Iterable[str]) -> tuple[str, ...]:
    """The parts of an ImageNet root read when only classes `wnids` are used (data.imagenet.class_list)."""
    return ("LOC_synset_mapping.txt", *(f"{split}/{w}" for split in ("train", "val") for w in sorted(wnids)))


def real_root(root: str) -> Path:
    """A `data.*.root` as prepare-data records it: user-expanded and absolute."""
    return Path(os.path.abspath(os.path.expanduser(root)))


Stat = os.stat_result | None
_BY_FD = os.scandir in os.supports_fd  # Linux, macOS


def files(root: Path, parts: tuple[str, ...]) -> Iterator[tuple[str, Stat]]:
    """(path relative to `root`, its stat) of every file under root/<part>, in path order (by
    components); the stat is None for a broken link (the scan reports it).  Links to files and
    folders are followed, as the loaders do."""
    for batch in _batches(Path(root), parts):
        yield from batch


def _batches(root: Path, parts: tuple[str, ...]) -> Iterator[list[tuple[str, Stat]]]:
    for part in sorted(parts):
        path = root / part
        if path.is_dir():
            yield from _walk(str(path), f"{part}/")
        elif path.is_file() or path.is_symlink():
            yield [(part, _stat(str(path)))]


def _walk(top: str, rel: str) -> Iterator[list[tuple[str, Stat]]]:
    """The files of folder `top` in name order, in runs between its subfolders (each walked in its place)."""
    fd = os.open(top, os.O_RDONLY) if _BY_FD else None  # stat by name in the open folder: no path walk per file
    try:
        with os.scandir(top if fd is None else fd) as it:
            entries = sorted(it, key=lambda e: e.name)
        run: list[tuple[str, Stat]] = []
        for e in entries:
            if e.is_dir():
                if run:
                    yield run
                    run = []
                yield from _walk(os.path.join(top, e.name), f"{rel}{e.name}/")
            else:
                try:
                    run.append((rel + e.name, e.stat()))
                except OSError:
                    run.append((rel + e.name, None))
        if run:
            yield run
    finally:
        if fd is not None:
            os.close(fd)



def _stat(path: str) -> Stat:
    try:
        return os.stat(path)
    except OSError:
        return None


def samples_fingerprint(rows: Iterable[tuple[Path, int, int]]) -> str:
    """16 hex digits of a sha256 of (path, size, label) of a reader's every image (ImageFolder's and
    PackedImages' `fingerprint`: the same images give the same digits from either reader)."""
    h = hashlib.sha256()
    for path, size, label in rows:
        h.update(f"{path}\t{size}\t{label}\n".encode())
    return h.hexdigest()[:16]


def listing_sha256(root: Path, parts: tuple[str, ...], ctime: bool = False) -> tuple[str, int]:
    """(sha256 of "path\\tsize\\tmtime_ns[\\tctime_ns]\\n" of every file, the number of files)."""
    h, n = hashlib.sha256(), 0
    for batch in _batches(Path(root), parts):
        if ctime:
            lines = [f"{r}\t-1\t-1\n" if s is None else f"{r}\t{s.st_size}\t{s.st_mtime_ns}\t{s.st_ctime_ns}\n" for r, s in batch]
        else:
            lines = [f"{r}\t-1\t-1\n" if s is None else f"{r}\t{s.st_size}\t{s.st_mtime_ns}\n" for r, s in batch]
        h.update("".join(lines).encode())
        n += len(batch)
    return h.hexdigest(), n


def content_sha256(root: Path, parts: tuple[str, ...], cache: Path | None = None) -> tuple[str, int]:
    """(sha256 of "path\\tsha256 of the bytes\\n" of every file, the number of files).

    `cache` (a JSON file) keeps each file's digest with its (size, mtime_ns, ctime_ns, inode): only
    the files whose stat changed are read again."""
    root = Path(root)
    old: dict[str, list[Any]] = {}
    if cache is not None and cache.is_file():
        try:
            saved = json.loads(cache.read_text())
            old = saved["files"] if saved.get("root") == str(root) else {}
        except (ValueError, KeyError, TypeError):
            pass  # a damaged cache: read every file again
    h, new, n = hashlib.sha256(), {}, 0
    for rel, st in files(root, parts):
        n += 1
        if st is None:  # a broken link
            h.update(f"{rel}\t-\n".encode())
            continue
        key = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        prev = old.get(rel)
        if prev is not None and prev[:4] == key:
            digest = prev[4]
        else:
            with open(root / rel, "rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
        new[rel] = [*key, digest]
        h.update(f"{rel}\t{digest}\n".encode())
    if cache is not None:
        from mim.files import write_json  # noqa: PLC0415

        write_json(cache, {"root": str(root), "files": new})
    return h.hexdigest(), n


def fingerprint(name: str, root: Path, mode: str, cache: Path | None = None,
                parts: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The manifest's `fingerprint` entry of real dataset `name`: {mode, sha256, files} of its `PARTS`
    (or of `parts`: `imagenet_parts` of a class list)."""
    parts = PARTS[name] if parts is None else parts
    try:
        sha, n = content_sha256(root, parts, cache) if mode == "content" else listing_sha256(root, parts)
    except OSError as e:
        raise DataError(f"{name} root {root}: cannot read {e.filename}: {e.strerror}") from None
    return {"mode": mode, "sha256": sha, "files": n}


def trigger(roots: dict[str, str], class_list: str | None = None) -> dict[str, Any]:
    """What `fingerprint-data` writes: per real dataset (name -> its `data.*.root`), the absolute
    root, the number of files and the listing hash with ctime (see the module doc).  A root that
    does not exist lists no files: prepare-data, next, says what is wrong with it.  With
    `class_list` (data.imagenet.class_list) ImageNet's listing covers those classes only, and the
    hash of the wnids is recorded too: an edited list reruns prepare-data."""
    from mim.data.manifest import read_class_list  # noqa: PLC0415  (standard library only, like this module)

    wnids = read_class_list(class_list) if class_list is not None and "imagenet" in roots else None
    out = {}
    for name, root in sorted(roots.items()):
        path = real_root(root)
        parts = imagenet_parts(wnids) if name == "imagenet" and wnids is not None else PARTS[name]
        try:
            sha, n = listing_sha256(path, parts, ctime=True)
        except OSError as e:
            raise DataError(f"{name} root {path}: cannot list {e.filename}: {e.strerror}") from None
        out[name] = {"root": str(path), "files": n, "listing": sha}
        if name == "imagenet" and wnids is not None:
            out[name]["classes"] = hashlib.sha256("\n".join(sorted(wnids)).encode()).hexdigest()
    return out
