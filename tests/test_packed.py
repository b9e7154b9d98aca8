"""The packed reader (mim/data/packed.py): written by prepare-data, it yields exactly the samples of the folder reader."""
from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from test_mini_profile import WNIDS, wnid_root

from mim.data.images import DataRoot, ImageFolder, open_dataset
from mim.data.loaders import TrainLoader, eval_loader
from mim.data.packed import PackedImages, pack
from mim.data.transforms import eval_transform, pretrain_transform
from mim.errors import DataError
from stages.cli import main


def prepare(tmp: Path, imagenet: str) -> object:
    scene = "{root: null, classes: 2, train_images: 2, val_images: 1, image_size: 48}"
    (tmp / "p.yaml").write_text(f"data:\n  on_bad_file: skip\n  imagenet: {imagenet}\n  coco: {scene}\n  ade20k: {scene}\n")
    return CliRunner().invoke(main, ["prepare-data", "--params", str(tmp / "p.yaml"), "--out", str(tmp / "data"),
                                     "--cache", str(tmp / "cache")])


def batches(loader, epochs=(0, 1)) -> list[torch.Tensor]:
    return [x for e in epochs for b in loader(e) for x in b]


def test_the_packed_reader_yields_the_folder_readers_samples(tmp_path):
    root = wnid_root(tmp_path / "in", train=5, val=2, size=40)
    (root / "train" / WNIDS[2] / "3.png").write_bytes(b"not an image")  # skipped by the check, so neither reads it
    res = prepare(tmp_path, f"{{root: {root}, packed: {tmp_path / 'packed'}}}")
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "data" / "manifest.json").read_text())["imagenet"]
    assert doc["packed"] == str(tmp_path / "packed") and set(doc["packed_fingerprint"]) == {"train", "val"}
    packed = open_dataset(tmp_path / "data" / "manifest.json")
    folder = DataRoot(packed.root, packed.skipped, packed.classes)  # the same dataset read as files
    assert packed.packed is not None and folder.packed is None
    tf = pretrain_transform(32, (0.2, 1.0))  # random crops and flips: the same draws, from the same bytes
    a, b = packed.images("train", tf), folder.images("train", tf)
    assert isinstance(a, PackedImages) and isinstance(b, ImageFolder) and len(a) == len(b) == 24
    assert a.samples == b.samples and a.fingerprint() == b.fingerprint()
    ours, theirs = TrainLoader(a, 8, 2, seed=3, num_workers=2), TrainLoader(b, 8, 2, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(batches(ours), batches(theirs), strict=True))
    for limit in (0, 2):
        a, b = packed.images("val", eval_transform(32), limit), folder.images("val", eval_transform(32), limit)
        assert all(torch.equal(x, y) for x, y in zip(next(iter(eval_loader(a, 99))), next(iter(eval_loader(b, 99)))))

    # a second prepare-data keeps the shards; a changed image repacks
    shard = tmp_path / "packed" / "train" / "shard-00000.tar"
    before = shard.stat().st_mtime_ns
    assert prepare(tmp_path, f"{{root: {root}, packed: {tmp_path / 'packed'}}}").exit_code == 0
    assert shard.stat().st_mtime_ns == before
    (root / "train" / WNIDS[0] / "0.png").write_bytes((root / "train" / WNIDS[0] / "1.png").read_bytes())
    assert prepare(tmp_path, f"{{root: {root}, packed: {tmp_path / 'packed'}}}").exit_code == 0
    assert shard.stat().st_mtime_ns != before
    assert torch.equal(packed.images("train", eval_transform(32))[0][0], folder.images("train", eval_transform(32))[0][0])


def test_shards_are_plain_tar_and_damage_is_a_one_line_error(tmp_path):
    root = wnid_root(tmp_path / "in", wnids=WNIDS[:2], train=3, val=1)
    f = ImageFolder(root / "train")
    pack(f.samples, f.classes, tmp_path / "p", f.fingerprint(), root / "train", shard_bytes=4000)
    shards = sorted((tmp_path / "p").glob("shard-*.tar"))
    assert len(shards) > 1
    names = [n for s in shards for n in tarfile.open(s).getnames()]
    assert names[:2] == ["00000000.png", "00000000.cls"] and len(names) == 12  # WebDataset's <key>.<ext> members
    p = PackedImages(tmp_path / "p")
    with open(shards[-1], "r+b") as fh:
        fh.truncate(700)
    with pytest.raises(DataError, match=r"^cannot read image .*2\.png from .*shard \d+: truncated"):
        p[len(p) - 1]
    os.remove(shards[0])
    with pytest.raises(DataError, match=r"cannot open .*shard-00000\.tar .*rerun prepare-data to repack"):
        PackedImages(tmp_path / "p")[0]
    res = prepare(tmp_path, "{packed: somewhere}")
    assert res.exit_code == 1 and "data.imagenet.packed: packs a real root; set root" in res.output
