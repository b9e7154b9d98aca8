"""Packed ImageNet: the images' own JPEG bytes in large tar shards, read by offset.

A folder of 1.28M files costs a directory walk, an open and a stat per image and per epoch, and a
Python list of paths copied into every loader worker (about 7 us and 331 bytes a file).  Packed,
a split is `shard-NNNNN.tar` files of about 1 GB (plain tar: `tar tf` lists them, and their member
names, `<key>.jpg` + `<key>.cls`, are WebDataset's convention) plus `index.npz` (shard, offset,
size and label of every image, as numpy arrays: 24 bytes an image, shared copy-on-write by forked
workers) and `meta.json` (classes, each image's path and size in the source folder, the source's
fingerprint).  Reading an image is one `os.pread` of its bytes from a shard opened once per
process, then the same decoding as the folder reader.

The bytes are copied unchanged, in the folder reader's order, so `PackedImages(split)[i]` is
`ImageFolder(split)[i]` bit for bit, whatever the transform: a packed run reads exactly the
samples a folder run reads for the same seed and epoch (tests/test_packed.py).

Why not WebDataset's reader: it streams shards in order (shuffling in a buffer), so it cannot
yield the folder reader's samples for a seed, nor resume at a step (mim/data/loaders.py); its
`wids` random-access reader would, but adds a dependency for what is 40 lines here.  The shards
stay WebDataset-readable.  FFCV and DALI decode faster but store their own formats (FFCV
re-encodes; DALI needs CUDA); LitData streams chunks, like WebDataset.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from mim.data.fingerprint import samples_fingerprint
from mim.data.scan import to_rgb
from mim.errors import DataError

FORMAT = 1
SHARD_BYTES = 1 << 30  # about 1 GB a shard


def pack(samples: list[tuple[Path, int]], classes: list[str], out: Path, fingerprint: str, source: Path,
         shard_bytes: int = SHARD_BYTES, progress: Callable[[Iterable[int], int, str], Iterable[int]] | None = None) -> None:
    """Write `samples` ((path, label) in the folder reader's order) as tar shards + index under `out`.
    Built in a temporary sibling and renamed into place: an interrupted pack leaves no half shard set."""
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shard_of, offset, size, label = (np.zeros(len(samples), dtype=t) for t in (np.int32, np.int64, np.int64, np.int32))
    paths, sizes = [], []
    shard, tar, written = -1, None, shard_bytes
    steps = range(len(samples)) if progress is None else progress(range(len(samples)), len(samples), f"pack {source}")
    try:
        for i in steps:
            path, lab = samples[i]
            data = Path(path).read_bytes()
            if written >= shard_bytes:
                if tar is not None:
                    tar.close()
                shard, written = shard + 1, 0
                tar = tarfile.open(tmp / f"shard-{shard:05d}.tar", "w", format=tarfile.USTAR_FORMAT)
            assert tar is not None
            key = f"{i:08d}"
            for name, payload in ((f"{key}{Path(path).suffix.lower()}", data), (f"{key}.cls", str(lab).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                start = tar.offset
                tar.addfile(info, io.BytesIO(payload))  # a 512-byte USTAR header (names are short), then the bytes
                if payload is data:
                    shard_of[i], offset[i], size[i], label[i] = shard, start + tarfile.BLOCKSIZE, len(data), lab
            written = tar.offset
            paths.append(str(Path(path).relative_to(source)))
            sizes.append(len(data))
    finally:
        if tar is not None:
            tar.close()
    np.savez(tmp / "index.npz", shard=shard_of, offset=offset, size=size, label=label)
    meta = {"format": FORMAT, "source": str(source), "classes": classes, "paths": paths, "sizes": sizes, "fingerprint": fingerprint}
    (tmp / "meta.json").write_text(json.dumps(meta))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def packed_fingerprint(out: Path) -> str | None:
    """The source fingerprint a packed split was written from (None: absent, unreadable or another format)."""
    try:
        meta = json.loads((Path(out) / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    ok = meta.get("format") == FORMAT and (Path(out) / "index.npz").is_file()
    return meta.get("fingerprint") if ok else None


class PackedImages(Dataset):
    """A packed split (`pack`): the same items, labels, order and filtering as mim.data.images.ImageFolder
    of its source folder (`limit_per_class`, `exclude`: paths relative to the split, `classes`)."""

    def __init__(self, root: Path, transform: Callable[[Image.Image], Any] | None = None, limit_per_class: int = 0,
                 exclude: Collection[str] = (), classes: Collection[str] | None = None) -> None:
        self.root = Path(root)
        try:
            meta = json.loads((self.root / "meta.json").read_text())
            index = np.load(self.root / "index.npz")
            self.shard, self.offset, self.size, labels = (index[k] for k in ("shard", "offset", "size", "label"))
        except (OSError, ValueError, KeyError) as e:
            raise DataError(f"packed images {self.root}: unreadable ({type(e).__name__}: {e}); rerun prepare-data to repack") from None
        if meta.get("format") != FORMAT:
            raise DataError(f"packed images {self.root}: format {meta.get('format')}, not {FORMAT}; rerun prepare-data to repack")
        self.source = Path(meta["source"])
        names: list[str] = meta["classes"]
        self.classes = names if classes is None else sorted(classes)
        relabel = {names.index(c): new for new, c in enumerate(self.classes) if c in names}
        if len(relabel) != len(self.classes):
            raise DataError(f"packed images {self.root}: holds classes {names[:3]}..., not the dataset's class list; rerun prepare-data")
        skip, taken = set(exclude), dict.fromkeys(relabel, 0)
        keep = []
        for i, (path, lab) in enumerate(zip(meta["paths"], labels.tolist())):
            if lab in relabel and path not in skip and not (limit_per_class and taken[lab] >= limit_per_class):
                keep.append(i)
                taken[lab] += 1
        if not keep:
            raise DataError(f"packed images {self.root} hold no images")
        # numpy arrays only (28 bytes an image with the index): forked loader workers share their pages,
        # where a list of paths is copied into each (its reference counts write to every page)
        self.items = np.asarray(keep, dtype=np.int64)
        self.labels = np.asarray([relabel[int(labels[i])] for i in keep], dtype=np.int32)
        self.transform = transform
        self._files: dict[int, int] = {}
        self._pid = -1

    def __len__(self) -> int:
        return len(self.items)

    def _rows(self) -> list[tuple[Path, int, int]]:
        """(source path, size, label) of every item, read from meta.json when asked (not kept: module docstring)."""
        meta = json.loads((self.root / "meta.json").read_text())
        return [(self.source / meta["paths"][i], meta["sizes"][i], int(lab)) for i, lab in zip(self.items.tolist(), self.labels.tolist())]

    @property
    def samples(self) -> list[tuple[Path, int]]:
        """(source path, label) of every item, as ImageFolder.samples."""
        return [(path, label) for path, _, label in self._rows()]

    def fingerprint(self) -> str:
        """ImageFolder.fingerprint of the same samples (its source paths and sizes): a run resumes across the two readers."""
        return samples_fingerprint(self._rows())

    def _fd(self, shard: int) -> int:
        if self._pid != os.getpid():  # a forked loader worker opens its own descriptors
            self._files, self._pid = {}, os.getpid()
        if shard not in self._files:
            path = self.root / f"shard-{shard:05d}.tar"
            try:
                self._files[shard] = os.open(path, os.O_RDONLY)
            except OSError as e:
                raise DataError(f"packed images: cannot open {path} ({e.strerror}); rerun prepare-data to repack") from None
        return self._files[shard]

    def __getitem__(self, i: int) -> tuple[Any, int]:
        j = int(self.items[i])
        data = os.pread(self._fd(int(self.shard[j])), int(self.size[j]), int(self.offset[j]))
        try:
            if len(data) != int(self.size[j]):
                raise OSError("truncated shard")
            with Image.open(io.BytesIO(data)) as im:
                img = to_rgb(im)
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise DataError(f"cannot read image {self.samples[i][0]} from {self.root} shard {int(self.shard[j])}: {e}") from None  # noqa: E501
        return (self.transform(img) if self.transform else img), int(self.labels[i])

    def __getstate__(self) -> dict[str, Any]:  # workers started by spawn open their own descriptors too
        return {**self.__dict__, "_files": {}, "_pid": -1}
