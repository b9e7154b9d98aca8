"""Loader throughput per CPU core: the folder reader against the packed one (mim/data/packed.py).

Writes an ImageNet-like tree of JPEGs (500x375, quality 90, grain: about 70 KB each, where ImageNet's
train JPEGs average about 110 KB), packs it, then reads both through each pretraining transform in one process at 1 thread,
alternating folder and packed batch by batch, and prints images/s and their ratio; also the
memory each reader's list of images costs per image (tracemalloc), and what shipping uint8 saves
(mim/data/device.py): the bytes per sample through the worker queue, and the worker time of the
old float32 path (the same transform, normalised in the worker), alternated with the others.

    python benchmarks/data_speed.py                  # 256 images, batches of 32, MAE and DINO transforms
    python benchmarks/data_speed.py --images 1024 --root /fast/disk/tmp

The page cache holds this tree after the first pass, so what differs is the per-file open and stat
of the folder reader against one pread: on a network filesystem (where ImageNet usually is) that
difference grows, and decoding (the same in both) shrinks in share.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mim.data.device import to_device
from mim.data.images import ImageFolder
from mim.data.packed import PackedImages, pack
from mim.data.transforms import pretrain_transform
from mim.teacher.dino import DataConfig, MultiCropAugmentation


def write_tree(root: Path, n: int, classes: int = 8) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        d = root / "train" / f"n{i % classes:08d}"
        d.mkdir(parents=True, exist_ok=True)
        smooth = rng.normal(0, 1, (47, 63, 3)).cumsum(0).cumsum(1)
        base = np.asarray(Image.fromarray(((smooth - smooth.min()) / np.ptp(smooth) * 255).astype(np.uint8)).resize((500, 375)))
        img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)  # grain: photo-like JPEG sizes
        Image.fromarray(img).save(d / f"{i:06d}.JPEG", quality=90)


def list_bytes(make) -> tuple[object, float]:
    make()  # once before: imports and codecs it loads the first time are not the reader's
    tracemalloc.start()
    ds = make()
    size, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return ds, size / len(ds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--root", type=Path, default=None, help="where to write the tree (default: a temporary folder)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(dir=args.root) as tmp:
        root = Path(tmp)
        write_tree(root, args.images)
        folder = ImageFolder(root / "train")
        pack(folder.samples, folder.classes, root / "packed", folder.fingerprint(), root / "train")
        mb = sum(p.stat().st_size for p in (root / "train").rglob("*.JPEG")) / 2**20
        print(f"{args.images} JPEGs of 500x375 ({mb / args.images * 1024:.0f} KB each), {args.threads} thread(s), "
              f"batches of {args.batch}, alternating folder, packed, ...")
        _, per_folder = list_bytes(lambda: ImageFolder(root / "train"))
        _, per_packed = list_bytes(lambda: PackedImages(root / "packed"))
        print(f"the reader's own memory: folder {per_folder:.0f} B/image (a list of paths, copied into each worker), "
              f"packed {per_packed:.0f} B/image (numpy arrays, shared by forked workers)")
        transforms = {"MAE (RandomResizedCrop 224 + flip)": pretrain_transform(224, (0.2, 1.0)),
                      "DINO multi-crop (2x224 + 8x96)": MultiCropAugmentation(DataConfig())}
        cpu = torch.device("cpu")
        for name, tf in transforms.items():
            in_worker = lambda img, tf=tf: to_device(tf(img), cpu)  # noqa: E731  the float32 path: normalised in the worker
            readers = {"folder": ImageFolder(root / "train", tf), "packed": PackedImages(root / "packed", tf),
                       "packed, float32 in the worker": PackedImages(root / "packed", in_worker)}
            times: dict[str, list[float]] = {k: [] for k in readers}
            for start in range(0, args.images - args.batch + 1, args.batch):
                for key, ds in readers.items():
                    t = time.process_time()
                    for i in range(start, start + args.batch):
                        ds[i]
                    times[key].append(time.process_time() - t)
            rate = {k: args.batch / statistics.median(v) for k, v in times.items()}
            ratios = [f / p for f, p in zip(times["folder"], times["packed"])]
            print(f"{name}: folder {rate['folder']:.0f} img/s per core, packed {rate['packed']:.0f} img/s per core; "
                  f"packed/folder {statistics.median(ratios):.2f}x (min-max {min(ratios):.2f}-{max(ratios):.2f}, {len(ratios)} batches)")
            sample = readers["packed"][0][0]
            views = sample if isinstance(sample, list) else [sample]
            nbytes = sum(v.numel() * v.element_size() for v in views)
            floats = [f / u for f, u in zip(times["packed, float32 in the worker"], times["packed"])]
            print(f"  uint8 from the workers: {nbytes / 1024:.0f} KB per sample instead of {4 * nbytes / 1024:.0f} KB (float32); "
                  f"the float32 path costs the worker {statistics.median(floats):.2f}x the uint8 one "
                  f"({rate['packed, float32 in the worker']:.0f} img/s per core)")


if __name__ == "__main__":
    main()
