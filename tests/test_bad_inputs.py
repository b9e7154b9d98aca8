"""The bad-input catalog: what a user can get wrong, each answered by one line naming the file or
key and what to do (or, where the policy says so, skipped and counted), never a traceback, never
a silent wrong result, never code run from a file.

Cases go through the `mimrepro` commands as a user types them (click's CliRunner, in process),
on the micro profile and on small datasets written here.  Groups: params; images; dataset layouts;
COCO annotations; ADE20K label maps; weights and checkpoints (other architecture, other size,
truncated, malicious pickles for every loader, detectron2's and mmengine's included); output
paths; numerical faults.
"""
from __future__ import annotations

import copy
import io
import json
import os
import pickle
import re
import shutil
import struct
import types
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner, Result
from PIL import Image

from mim.data.prepare import DatasetsConfig, ImageNetData, SceneData, write_data
from mim.encoder_file import save_encoder
from mim.errors import MimError
from mim.teacher.frozen import save_timm_backbone, timm_backbone
from mim.vit import ViTConfig, ViTEncoder
from stages.cli import main

ROOT = Path(__file__).resolve().parents[1]
MICRO = yaml.safe_load((ROOT / "params" / "micro.yaml").read_text())
ENC = ViTConfig(**MICRO["encoder"])


# --- helpers ---------------------------------------------------------------------------------------
def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line(res: Result, pattern: str) -> str:
    """The command failed with exactly one `Error:` line, its last, matching `pattern`; no traceback."""
    lines = res.output.strip().splitlines()
    assert res.exit_code != 0, res.output
    assert isinstance(res.exception, SystemExit), f"{type(res.exception).__name__}: {res.exception}\n{res.output}"
    assert "Traceback" not in res.output, res.output
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], res.output
    assert re.search(pattern, errors[0]), errors[0]
    return errors[0]


def params(tmp: Path, changes: dict[str, object] | None = None, name: str = "p.yaml") -> Path:
    """micro.yaml with dotted keys set (value DELETE removes the key)."""
    doc = copy.deepcopy(MICRO)
    for key, value in (changes or {}).items():
        node = doc
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
    (tmp / name).write_text(yaml.safe_dump(doc, sort_keys=False))
    return Path(os.path.relpath(tmp / name))  # as a user names it, from the working folder


DELETE = object()


class Payload:
    """Unpickling this runs `touch marker`: what a crafted checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def malicious(path: Path, marker: Path, kind: str = "torch") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    obj = {"model": Payload(marker), "teacher": Payload(marker)}
    if kind == "torch":
        torch.save(obj, path)
    else:
        path.write_bytes(pickle.dumps(obj))
    return path


def truncated(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(data[: len(data) // 2])
    return dst


def unwritable_dir(tmp: Path) -> Path:
    """A folder this process cannot create files in (as root, chmod does not stop it: /sys does)."""
    d = tmp / "locked"
    d.mkdir()
    d.chmod(0o500)
    try:
        (d / "probe").touch()
    except OSError:
        return d
    (d / "probe").unlink()
    if Path("/sys").is_dir():
        try:
            (Path("/sys") / "mimrepro-probe").touch()
        except OSError:
            return Path("/sys/mimrepro-test")
    pytest.skip("no unwritable folder on this machine")


# --- datasets --------------------------------------------------------------------------------------
TINY = DatasetsConfig(
    imagenet=ImageNetData(classes=3, train_per_class=4, val_per_class=2, image_size=32),
    coco=SceneData(classes=3, train_images=3, val_images=2, image_size=64, objects=(1, 2)),
    ade20k=SceneData(classes=3, train_images=3, val_images=2, image_size=64, objects=(1, 2)),
)


@pytest.fixture(scope="module")
def gen(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gen") / "data"
    write_data(TINY, out)
    return out


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("enc") / "encoder.safetensors"
    save_encoder(path, ViTEncoder(ENC))
    return path


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def copy_of(gen: Path, name: str, tmp: Path) -> Path:
    src = gen / ("ade20k/ADEChallengeData2016" if name == "ade20k" else name)
    dst = tmp / name
    shutil.copytree(src, dst)
    return dst


def prepare(tmp: Path, gen: Path, on_bad_file: str = "fail", cache: Path | None = None, **roots: Path) -> Result:
    """prepare-data with real roots: the given ones, else the clean generated datasets."""
    default = {"imagenet": gen / "imagenet", "coco": gen / "coco", "ade20k": gen / "ade20k/ADEChallengeData2016"}
    changes: dict[str, object] = {f"data.{k}.root": str(roots.get(k, v)) for k, v in default.items()}
    changes["data.on_bad_file"] = on_bad_file
    return invoke("prepare-data", "--params", params(tmp, changes, "data.yaml"), "--out", tmp / "data",
                  *(["--cache", cache] if cache else []))


def first_image(root: Path, split: str = "train") -> Path:
    return sorted((root / split).rglob("*.JPEG"))[0]


# ===================================================================================================
# params: every section is checked by check-params (the first DVC stage) and by the stage reading it
PARAM_CASES = [
    ("mae.model.mask_ratio", 1.2, r"mae\.model\.mask_ratio: 1\.2 is outside \(0, 1\)"),
    ("mae.model.mask_ratio", 0, r"mae\.model\.mask_ratio: 0\.0 is outside \(0, 1\)"),
    ("mae.model.mask_ratio", 1.0, r"mae\.model\.mask_ratio: 1\.0 is outside \(0, 1\)"),
    ("mae.optim.base_lr", -1, r"mae\.optim\.base_lr: -1\.0 is outside \(0, inf\)"),
    ("mae.optim.base_lr", 0, r"mae\.optim\.base_lr: 0\.0 is outside \(0, inf\)"),
    ("mae.optim.epochs", 0, r"mae\.optim\.epochs: 0 is outside \[1, inf\)"),
    ("mae.optim.epochs", -3, r"mae\.optim\.epochs: -3 is outside \[1, inf\)"),
    ("mae.optim.batch_size", "big", r"mae\.optim\.batch_size: expected an integer, got 'big'"),
    ("mae.optim.betas", [0.9], r"mae\.optim\.betas: expected 2 items, got 1"),
    ("mae.optim.clip_grad", -1, r"mae\.optim\.clip_grad: -1\.0 is outside \(0, inf\)"),
    ("mae.model.mask_ration", 0.75, r"mae\.model: unknown key\(s\) mask_ration; valid keys: .*mask_ratio"),
    ("probe.linear.batch_size", 0, r"probe\.linear\.batch_size: 0 is outside \[1, inf\)"),
    ("probe.knn.k", 0, r"probe\.knn\.k: 0 is outside \[1, inf\)"),
    ("finetune.optim.epochs", 0, r"finetune\.optim\.epochs: 0 is outside \[1, inf\)"),
    ("finetune.optim.warmup_epochs", 5, r"finetune\.optim\.warmup_epochs: 5 is longer than the run's 1 epochs"),
    ("finetune.layer_decay", 1.5, r"finetune\.layer_decay: 1\.5 is outside \(0, 1\]"),
    ("finetune.mixup", -0.1, r"finetune\.mixup: -0\.1 is outside \[0, inf\)"),
    ("finetune.auto_augment", "rand-zz", r"finetune\.auto_augment: 'rand-zz': timm ignores or rejects zz"),
    ("finetune.auto_augment", "bogus", r"finetune\.auto_augment: 'bogus' is not a timm auto-augment spec"),
    ("beit.model.min_num_patches", 100, r"beit\.model\.min_num_patches: 100 exceeds the 6 patches masked"),
    ("img2vec.model.mask_ratio", 1.5, r"img2vec\.model\.mask_ratio: 1\.5 is outside \(0, 1\)"),
    ("img2vec.model.block_size", 3, r"img2vec\.model\.block_size: 3 does not tile the 4x4 patch grid"),
    ("img2vec.model.merge", "max", r"img2vec\.model\.merge: 'max' is not one of 'mean', 'concat'"),
    ("img2vec.model.beta", 0, r"img2vec\.model\.beta: 0\.0 is outside \(0, inf\)"),
    ("dino.data.n_global", 1, None),  # valid with local crops; with none the next case applies
    ("dino.model.arch", "resnet7", r"dino\.model\.arch: 'resnet7' is not a timm model"),
    ("dino.optim.optimizer", "adam", r"dino\.optim\.optimizer: 'adam' is not one of 'adamw', 'sgd'"),
    ("encoder.patch_size", 5, r"encoder\.img_size: 32 is not a multiple of patch_size 5"),
    ("encoder.num_heads", 3, r"encoder\.num_heads: 3 does not divide embed_dim 64"),
    ("tokenizer.mode", "dall-e", r"tokenizer\.mode: 'dall-e' is not one of 'train', 'dalle'"),
    ("tokenizer.model.image_size", 30, r"tokenizer\.model\.image_size: 30 is not divisible by downsample 4"),
    ("data.imagenet.classes", 99, r"data\.imagenet\.classes: 99 is outside \[2, 20\]"),
    ("data.imagenet.root", "", r"data\.imagenet\.root: '' is an empty path \(use null"),
    ("data.on_bad_file", "ignore", r"data\.on_bad_file: 'ignore' is not one of 'fail', 'skip'"),
    ("run.divergence", 0.5, r"run\.divergence: 0\.5 must be 0 \(off\) or above 1"),
    ("run.num_workers", -1, r"run\.num_workers: -1 is outside \[0, inf\)"),
    ("diversity.split", "test", r"diversity\.split: 'test' is not one of 'train', 'val'"),
    ("segment.out_blocks", [1, 2, 2], r"segment\.out_blocks: \[1, 2, 2\] needs 4 blocks"),
    ("segment.out_blocks", [1, 1, 2, 9], r"segment\.out_blocks: \[1, 1, 2, 9\] reach past the encoder's 2 blocks"),
    ("segment.crop_size", 60, r"segment\.crop_size: 60 is not a multiple of the patch size 8"),
    ("detect.global_blocks", [5], r"detect\.global_blocks: \[5\] out of range for an encoder of depth 2"),
    ("detect.img_size", 60, r"detect\.img_size: 60 is not a multiple of the patch size 8"),
    ("tables.paper_values", "yes", r"tables\.paper_values: expected true/false, got 'yes'"),
    ("probe", DELETE, r"p\.yaml: missing section 'probe'"),
]


@pytest.mark.parametrize("key,value,pattern", PARAM_CASES, ids=[f"{k}={v!r}"[:60] for k, v, _ in PARAM_CASES])
def test_params_are_checked_before_any_work(work, key, value, pattern):
    res = invoke("check-params", "--params", params(work, {key: value}), "--out", "ok.json")
    if pattern is None:
        assert res.exit_code == 0, res.output
        return
    line = one_line(res, pattern)
    assert line.startswith("Error: p.yaml: ") and not (work / "ok.json").exists()


def test_dino_needs_two_crops(work):
    one_line(invoke("check-params", "--params", params(work, {"dino.data.n_global": 1, "dino.data.n_local": 0}), "--out", "o"),
             r"dino\.data\.n_local: 0 with n_global 1: DINO needs at least 2 crops")


def test_exponent_floats_are_numbers(work):
    res = invoke("check-params", "--params", params(work, {"mae.optim.base_lr": "1e-3"}), "--out", "ok.json")
    assert res.exit_code == 0, res.output  # PyYAML reads 1e-3 as a string; accepted as the number it means


@pytest.mark.parametrize("text,pattern", [
    ("mae: [1, 2\n", r"p\.yaml: .*YAML"),
    ("- a\n- b\n", r"p\.yaml: .*mapping"),
    ("", r"p\.yaml: .*(empty|mapping|missing section)"),
])
def test_unreadable_params_files(work, text, pattern):
    (work / "p.yaml").write_text(text)
    one_line(invoke("check-params", "--params", "p.yaml", "--out", "o"), pattern)


def test_a_typo_in_the_profile_names_the_profiles(work):
    (work / "params").mkdir()
    shutil.copy(ROOT / "params/micro.yaml", work / "params/micro.yaml")
    (work / "params/profile.yaml").write_text("profile: mircro\n")
    one_line(invoke("check-params", "--out", "o"), r"params file not found: params/mircro\.yaml .*names profile 'mircro'; "
                                                   r"the profiles are micro")


def test_stages_check_their_own_sections_before_work(work, gen, encoder):
    one_line(invoke("pretrain-student", "--method", "mae", "--name", "m", "--data", gen / "manifest.json", "--out", "m.st",
                    "--run", "r", "--params", params(work, {"mae.model.mask_ratio": 1.2})), r"mae\.model\.mask_ratio")
    one_line(invoke("probe", "--encoder", encoder, "--data", gen / "manifest.json", "--metrics", "m.json",
                    "--params", params(work, {"probe.linear.batch_size": 0})), r"probe\.linear\.batch_size: 0")
    assert not (work / "r").exists() and not (work / "m.json").exists()


# ===================================================================================================
# images: prepare-data decodes every file; a bad one fails with the list, or is skipped and counted
def _png_header_claiming(path: Path, width: int, height: int) -> None:
    """A 1x1 PNG whose header says width x height (a decompression bomb's header)."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8 + 8  # signature, then length + "IHDR"
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[12 : ihdr + 13]))
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    path.write_bytes(bytes(data))


def _random_bytes(p: Path) -> None:
    p.write_bytes(np.random.default_rng(0).bytes(500))


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])


def _empty(p: Path) -> None:
    p.write_bytes(b"")


def _text(p: Path) -> None:
    p.write_text("not an image\n")


def _bomb(p: Path) -> None:
    _png_header_claiming(p, 100_000, 100_000)


@pytest.mark.parametrize("damage,reason", [
    (_random_bytes, r"UnidentifiedImageError|cannot identify"),
    (_truncate, r"(?i)truncated"),
    (_empty, r"UnidentifiedImageError|cannot identify"),
    (_text, r"UnidentifiedImageError|cannot identify"),
    (_bomb, r"DecompressionBomb|exceeds limit|could be decompression bomb"),
])
def test_unreadable_images_fail_prepare_data_with_the_list(work, gen, damage, reason):
    root = copy_of(gen, "imagenet", work)
    bad = first_image(root)
    damage(bad)
    line = one_line(prepare(work, gen, imagenet=root),
                    rf"1 unusable imagenet files under .*imagenet: {bad.relative_to(root).as_posix()} \(")
    assert re.search(reason, line) and "on_bad_file: skip" in line
    assert not (work / "data").exists()  # nothing half-written


def _save(mode_image: Image.Image, p: Path, fmt: str) -> None:
    mode_image.save(p, fmt)


@pytest.mark.parametrize("mode", ["I;16", "L", "1", "P", "LA", "RGBA", "CMYK"])
def test_images_of_any_mode_become_the_right_rgb(work, gen, mode):
    from mim.data.images import open_rgb

    root = copy_of(gen, "imagenet", work)
    target = first_image(root)
    grey = np.full((8, 8), 0.5)
    if mode == "I;16":  # 16-bit grayscale PNG (PIL's own convert("RGB") saturates it to white)
        im, expect = Image.fromarray((grey * 65535).astype(np.uint16)), 127
        assert im.mode == "I;16"
    elif mode == "1":
        im, expect = Image.new("1", (8, 8), 1), 255
    elif mode == "CMYK":
        im, expect = Image.new("CMYK", (8, 8), (0, 0, 0, 128)), 127
    elif mode == "P":
        im = Image.new("P", (8, 8), 0)
        im.putpalette([128, 128, 128] * 256)
        im.info["transparency"] = 0  # a palette with a transparent entry goes through RGBA
        expect = 128
    else:
        im, expect = Image.new(mode, (8, 8), (128,) * len(mode)), 128
    path = target.with_suffix(".jpg" if mode == "CMYK" else ".png")
    target.unlink()
    im.save(path)
    rgb = np.asarray(open_rgb(path))
    assert rgb.shape == (8, 8, 3) and abs(int(rgb.mean()) - expect) <= 2, (mode, rgb.mean())  # not saturated white
    res = prepare(work, gen, imagenet=root)
    assert res.exit_code == 0, res.output


def test_a_broken_link_is_an_unusable_file(work, gen):
    root = copy_of(gen, "imagenet", work)
    bad = first_image(root)
    bad.unlink()
    bad.symlink_to(work / "gone.JPEG")
    for _ in range(2):  # the scan and its cache (keyed by each file's size and mtime) take a link to nowhere
        one_line(prepare(work, gen, cache=work / "cache", imagenet=root),
                 rf"1 unusable imagenet files under .*: {bad.relative_to(root).as_posix()} \(")


def test_skipped_images_are_counted_in_the_manifest_and_the_stage_metrics(work, gen, encoder):
    root = copy_of(gen, "imagenet", work)
    for p in sorted((root / "train").rglob("*.JPEG"))[:2]:
        _random_bytes(p)
    res = prepare(work, gen, on_bad_file="skip", imagenet=root)
    assert res.exit_code == 0 and "(2 unusable files skipped)" in res.output, res.output
    manifest = json.loads((work / "data/manifest.json").read_text())
    assert len(manifest["imagenet"]["skipped"]) == 2 and manifest["imagenet"]["checked"] == 18
    res = invoke("probe", "--encoder", encoder, "--data", work / "data/manifest.json", "--metrics", "m.json",
                 "--params", params(work))
    assert res.exit_code == 0, res.output
    assert json.loads((work / "m.json").read_text())["skipped_images"] == 2


def test_a_stage_given_a_folder_checks_its_images(work, gen, encoder):
    root = copy_of(gen, "imagenet", work)
    _truncate(first_image(root, "val"))
    one_line(invoke("probe", "--encoder", encoder, "--data", root, "--metrics", "m.json", "--params", params(work)),
             r"1 unusable images under .*imagenet: val/.*(?i:truncated).*on_bad_file: skip")
    assert not (work / "m.json").exists()


# ===================================================================================================
# dataset layouts
def _no_val(root: Path) -> None:
    shutil.rmtree(root / "val")


def _val_classes_differ(root: Path) -> None:
    (root / "val" / "n00000003").rename(root / "val" / "n00000009")


def _empty_class(root: Path) -> None:
    for p in (root / "val" / "n00000002").iterdir():
        p.unlink()


def _no_classes(root: Path) -> None:
    for d in (root / "train").iterdir():
        shutil.rmtree(d)


@pytest.mark.parametrize("damage,pattern", [
    (_no_val, r"ImageNet root .*imagenet: missing val/ \(set in .*data\.imagenet\.root\)"),
    (_val_classes_differ, r"val/ class folders differ from train/ \(e\.g\. n00000003, n00000009\)"),
    (_empty_class, r"val/n00000002/ holds no images"),
    (_no_classes, r"train/ has no class folders"),
])
def test_imagenet_layout_problems(work, gen, damage, pattern):
    root = copy_of(gen, "imagenet", work)
    damage(root)
    one_line(prepare(work, gen, imagenet=root), pattern)


@pytest.mark.parametrize("damage,pattern", [
    (_val_classes_differ, r"val/ class folders differ from train/"),
    (_empty_class, r"val/n00000002/ holds no images"),
])
def test_a_stage_given_a_folder_checks_its_layout(work, gen, encoder, damage, pattern):
    root = copy_of(gen, "imagenet", work)
    damage(root)
    one_line(invoke("probe", "--encoder", encoder, "--data", root, "--metrics", "m.json", "--params", params(work)), pattern)
    one_line(invoke("finetune", "--encoder", encoder, "--data", root, "--metrics", "m.json", "--run", "r",
                    "--params", params(work)), pattern)


def test_missing_and_wrong_dataset_paths(work, gen):
    one_line(prepare(work, gen, imagenet=work / "nowhere"), r"ImageNet root .*nowhere: not a directory")
    (work / "file").write_text("x")
    one_line(prepare(work, gen, imagenet=work / "file"), r"ImageNet root .*file: not a directory")


@pytest.mark.parametrize("text,pattern", [
    (None, r"manifest.*not found|no such|does not exist|not found"),
    ("{not json", r"not a valid dataset manifest"),
    ('{"imagenet": {}}', r"not a valid dataset manifest \(KeyError"),
])
def test_broken_manifests(work, encoder, text, pattern):
    path = work / "data" / "manifest.json"
    if text is not None:
        path.parent.mkdir()
        path.write_text(text)
    one_line(invoke("probe", "--encoder", encoder, "--data", path, "--metrics", "m.json", "--params", params(work)), pattern)


def test_ade20k_image_without_label_and_coco_without_annotations(work, gen):
    ade = copy_of(gen, "ade20k", work)
    (ade / "annotations/training/ADE_train_00000002.png").unlink()
    one_line(prepare(work, gen, ade20k=ade), r"ADE20K root .*: missing annotations/training/ADE_train_00000002\.png")
    coco = copy_of(gen, "coco", work)
    (coco / "annotations/instances_train2017.json").unlink()
    one_line(prepare(work, gen, coco=coco), r"COCO root .*: missing annotations/instances_train2017\.json")


# ===================================================================================================
# COCO annotations
def _coco(root: Path, split: str = "train2017") -> tuple[Path, dict]:
    path = root / "annotations" / f"instances_{split}.json"
    return path, json.loads(path.read_text())


def _edit(edit):
    def damage(root: Path) -> None:
        path, ann = _coco(root)
        edit(ann)
        path.write_text(json.dumps(ann))
    return damage


@pytest.mark.parametrize("damage,pattern", [
    (_edit(lambda a: a["annotations"][0].update(category_id=99)), r"train2017: annotation 1 \(category_id 99 is not in categories\)"),
    (_edit(lambda a: a["annotations"][0].update(image_id=77)), r"train2017: annotation 1 \(image_id 77 is not in images\)"),
    (_edit(lambda a: a["annotations"][0].update(bbox=[1, 2, -5, 4])), r"annotation 1 \(bbox \[1, 2, -5, 4\] is negative or outside"),
    (_edit(lambda a: a["annotations"][0].update(bbox=[1, 2, 3])), r"annotation 1 \(bbox \[1, 2, 3\] is not \[x, y, w, h\]\)"),
    (_edit(lambda a: a["annotations"][0].update(bbox=[500, 2, 3, 4])),
     r"annotation 1 \(bbox \[500, 2, 3, 4\] is negative or outside its 64x64"),
    (_edit(lambda a: a["annotations"][0].update(segmentation=[[1, 2, 3, 4]])), r"annotation 1 \(segmentation is neither polygons"),
    (_edit(lambda a: a["images"].append({"id": 50, "file_name": "gone.jpg", "width": 64, "height": 64})),
     r"train2017/gone\.jpg \(listed in the annotations but missing\)"),
])
def test_bad_coco_entries_fail_with_the_list(work, gen, damage, pattern):
    root = copy_of(gen, "coco", work)
    damage(root)
    one_line(prepare(work, gen, coco=root), rf"unusable coco files under .*coco: .*{pattern}")


@pytest.mark.parametrize("damage,pattern", [
    (lambda r: (r / "annotations/instances_train2017.json").write_text("{oops"), r"cannot read .*instances_train2017\.json"),
    (_edit(lambda a: a.pop("categories")), r"instances_train2017\.json: not a COCO instances file \(missing 'categories'\)"),
    (_edit(lambda a: a["categories"].append(dict(a["categories"][0]))), r"categories need unique integer ids"),
])
def test_files_that_are_not_coco_fail(work, gen, damage, pattern):
    root = copy_of(gen, "coco", work)
    damage(root)
    one_line(prepare(work, gen, coco=root), pattern)


def test_skipped_coco_entries_leave_a_clean_annotation_file(work, gen):
    root = copy_of(gen, "coco", work)
    _edit(lambda a: a["annotations"][0].update(category_id=99))(root)
    _random_bytes(root / "train2017" / "000000000002.jpg")
    res = prepare(work, gen, on_bad_file="skip", coco=root)
    assert res.exit_code == 0, res.output
    m = json.loads((work / "data/manifest.json").read_text())["coco"]
    assert m["skipped_annotations"] == 1 and list(m["skipped"]) == ["train2017/000000000002.jpg"]
    kept = json.loads((work / "data" / m["annotations"] / "instances_train2017.json").read_text())
    assert 2 not in {im["id"] for im in kept["images"]} and 1 not in {a["id"] for a in kept["annotations"]}
    assert all(a["image_id"] != 2 for a in kept["annotations"])
    from mim.data.manifest import open_coco

    images, annotations = open_coco(work / "data/manifest.json")
    assert images == root and annotations == work / "data" / m["annotations"]


# ===================================================================================================
# ADE20K label maps
def _ade_with_classes(gen: Path, tmp: Path, k: int = 3) -> Path:
    root = copy_of(gen, "ade20k", tmp)
    rows = "".join(f"{i}\t0.1\t1\t1\tname{i}\n" for i in range(1, k + 1))
    (root / "objectInfo150.txt").write_text("Idx\tRatio\tTrain\tVal\tName\n" + rows)
    return root


def _label(root: Path) -> Path:
    return root / "annotations/training/ADE_train_00000001.png"


@pytest.mark.parametrize("damage,pattern", [
    (lambda p: Image.fromarray(np.full((64, 64), 9, np.uint8)).save(p), r"label value 9 above the 3 classes"),
    (lambda p: Image.fromarray(np.zeros((32, 64), np.uint8)).save(p), r"label size 64x32 differs from its image's 64x64"),
    (lambda p: Image.new("RGB", (64, 64)).save(p), r"label mode RGB: expected one 8-bit"),
    (_random_bytes, r"UnidentifiedImageError|cannot identify"),
])
def test_bad_label_maps_fail_with_the_list(work, gen, damage, pattern):
    root = _ade_with_classes(gen, work)
    damage(_label(root))
    one_line(prepare(work, gen, ade20k=root), rf"unusable ade20k files under .*annotations/training/ADE_train_00000001\.png \({pattern}")


def test_skipped_label_maps_leave_split_lists_the_segment_config_reads(work, gen):
    from downstream.seg import build_config, find_data

    root = _ade_with_classes(gen, work)
    Image.fromarray(np.full((64, 64), 9, np.uint8)).save(_label(root))
    res = prepare(work, gen, on_bad_file="skip", ade20k=root)
    assert res.exit_code == 0, res.output
    data = find_data(work / "data/manifest.json")
    assert (data.splits / "training.txt").read_text().split() == ["ADE_train_00000002", "ADE_train_00000003"]
    assert (data.splits / "validation.txt").read_text().split() == ["ADE_val_00000001", "ADE_val_00000002"]
    from downstream.seg import SegmentConfig
    from mim.config import from_dict
    from mim.engine import RunConfig

    enc = work / "e.safetensors"
    save_encoder(enc, ViTEncoder(ENC))
    cfg = build_config(from_dict(SegmentConfig, MICRO["segment"]), RunConfig(), data, enc, work / "w", cuda=False)
    assert cfg["train_dataloader"]["dataset"]["ann_file"] == str((data.splits / "training.txt").resolve())


def test_segment_given_a_folder_checks_its_label_maps(work, gen, encoder):
    root = _ade_with_classes(gen, work)
    Image.fromarray(np.full((64, 64), 9, np.uint8)).save(_label(root))
    one_line(invoke("segment", "--encoder", encoder, "--data", root, "--metrics", "m.json", "--run", "r",
                    "--params", params(work)), r"unusable ADE20K files .*label value 9 above the 3 classes")


# ===================================================================================================
# weights files and checkpoints
def _teacher_file(path: Path) -> Path:
    save_timm_backbone(path, timm_backbone("resnet18"), "resnet18")
    return path


def test_encoder_files_of_another_kind_size_or_state(work, gen, encoder):
    probe = lambda e: invoke("probe", "--encoder", e, "--data", gen / "manifest.json", "--metrics", "m.json",  # noqa: E731
                             "--params", params(work))
    one_line(probe(work / "missing.safetensors"), r"encoder file not found: .*missing\.safetensors")
    one_line(probe(_teacher_file(work / "teacher.safetensors")),
             r"teacher\.safetensors is not a student encoder \(its format is 'mimrepro-timm-backbone/1'\)")
    one_line(probe(truncated(encoder, work / "half.safetensors")), r"cannot read encoder .*half\.safetensors")
    (work / "junk.safetensors").write_bytes(b"\x10" * 64)
    one_line(probe(work / "junk.safetensors"), r"cannot read encoder .*junk\.safetensors")
    from mim.checkpoint import read_safetensors, save_safetensors

    f = read_safetensors(encoder, "encoder")  # a header that says depth 4 over depth-2 tensors
    vit = json.loads(f.metadata["vit"])
    save_safetensors(work / "lying.safetensors", f.state, {**f.metadata, "vit": json.dumps({**vit, "depth": 4})})
    one_line(probe(work / "lying.safetensors"), r"lying\.safetensors does not fit its own 'vit' metadata: 24 keys missing")
    save_safetensors(work / "wide.safetensors", f.state, {**f.metadata, "vit": json.dumps({**vit, "embed_dim": 128})})
    one_line(probe(work / "wide.safetensors"), r"wide\.safetensors does not fit .* of another shape \(e\.g\. .*: \[64\] in the file, "
                                               r"\[128\] expected\)")
    nan = {k: (torch.full_like(v, float("nan")) if k == "blocks.0.attn.qkv.weight" else v) for k, v in f.state.items()}
    save_safetensors(work / "nan.safetensors", nan, f.metadata)
    one_line(probe(work / "nan.safetensors"), r"/nan\.safetensors: 1 of \d+ tensors hold NaN or Inf \(e\.g\. blocks\.0\.attn\.qkv")
    assert not (work / "m.json").exists()


def test_resume_checkpoints_that_are_truncated_foreign_or_malicious(work, gen):
    train = lambda: invoke("pretrain-student", "--method", "mae", "--name", "mae", "--data", gen / "manifest.json",  # noqa: E731
                           "--out", "enc.safetensors", "--run", "run", "--params", params(work))
    ckpt = work / "run" / "checkpoint.pt"
    torch.save({"epoch": 0, "model": {}}, work / "full.pt")
    truncated(work / "full.pt", ckpt)
    one_line(train(), r"cannot load checkpoint run/checkpoint\.pt: the file is truncated \(its zip directory is missing\); .*"
                      r"move it away \(or delete it\) to start the run afresh")
    torch.save([1, 2, 3], ckpt)
    one_line(train(), r"run/checkpoint\.pt: it holds a list, not a dict")
    marker = work / "ran"
    malicious(ckpt, marker)
    one_line(train(), r"run/checkpoint\.pt: it holds Python objects besides tensors .*refused")
    assert not marker.exists() and not (work / "enc.safetensors").exists()
    torch.load(ckpt, weights_only=False)  # the payload is live: unpickled, it runs
    assert marker.exists()


def test_official_teacher_import_refuses_pickles_and_other_architectures(work):
    marker = work / "ran"
    one_line(invoke("import-teacher", malicious(work / "dino.pth", marker), "--out", "t.safetensors"),
             r"cannot read DINO checkpoint .*dino\.pth: it holds Python objects besides tensors")
    torch.save({"teacher": {"backbone.conv1.weight": torch.zeros(64, 3, 7, 7)}}, work / "full.pth")
    one_line(invoke("import-teacher", truncated(work / "full.pth", work / "half.pth"), "--out", "t.safetensors"),
             r"cannot read DINO checkpoint .*half\.pth: the file is truncated")
    torch.save({"student": {}}, work / "student_only.pth")
    one_line(invoke("import-teacher", work / "student_only.pth", "--out", "t.safetensors"), r"no 'teacher' entry")
    vit = {f"backbone.{k}": v for k, v in ViTEncoder(ENC).state_dict().items()}
    torch.save({"teacher": vit}, work / "vit.pth")
    one_line(invoke("import-teacher", work / "vit.pth", "--out", "t.safetensors"),
             r"vit\.pth does not match timm resnet50: \d+ keys missing .*; \d+ unexpected \(e\.g\. blocks\.0")
    assert not marker.exists() and not (work / "t.safetensors").exists()


def test_dalle_conversion_refuses_a_pickle_without_the_flag(work):
    marker = work / "ran"
    for kind in ("torch", "pickle"):  # torch.save's zip, or a bare pickle
        pkl = malicious(work / f"{kind}.pkl", marker, kind=kind)
        one_line(invoke("convert-dalle", pkl, "dalle.safetensors"),
                 rf"convert it once with `mimrepro convert-dalle .*{kind}\.pkl dalle\.safetensors --allow-pickle`")
    half = truncated(work / "torch.pkl", work / "half.pkl")
    one_line(invoke("convert-dalle", half, "dalle.safetensors"), r"cannot read DALL-E encoder .*half\.pkl: the file is truncated")
    torch.save({"blocks.input.w": torch.zeros(8, 3, 7, 7)}, work / "partial.pkl")
    one_line(invoke("convert-dalle", work / "partial.pkl", "dalle.safetensors"), r"not a DALL-E dVAE encoder state_dict \(missing")
    assert not marker.exists() and not (work / "dalle.safetensors").exists()


def test_students_refuse_inputs_of_the_wrong_kind(work, gen, encoder):
    student = lambda method, given: invoke("pretrain-student", "--method", method, "--name", method,  # noqa: E731
                                           "--data", gen / "manifest.json", "--input", given, "--out", "o.safetensors",
                                           "--run", "run", "--params", params(work))
    one_line(student("beit", _teacher_file(work / "teacher.safetensors")), r"teacher\.safetensors.*tokenizer")
    one_line(student("img2vec", truncated(work / "teacher.safetensors", work / "half.safetensors")),
             r"cannot read teacher weights .*half\.safetensors")
    one_line(student("beit", work / "nothing.safetensors"), r"tokenizer file not found: .*nothing\.safetensors")
    (work / "weights.bin").write_bytes(b"\x00" * 100)
    one_line(invoke("token-diversity", "--weights", work / "weights.bin", "--data", gen / "manifest.json",
                    "--metrics", "m.json", "--params", params(work)), r"cannot read teacher weights .*weights\.bin")


def test_detectron2_resume_refuses_pickles_and_files_outside_its_folder(work):
    pytest.importorskip("detectron2")
    from downstream.det import SafeCheckpointer

    marker = work / "ran"
    folder = work / "checkpoints"
    folder.mkdir()
    model = torch.nn.Linear(2, 2)
    for name, kind in (("model_0000001.pkl", "pickle"), ("model_final.pth", "torch")):
        malicious(folder / name, marker, kind)
        (folder / "last_checkpoint").write_text(name)
        with pytest.raises(MimError, match=r"refusing to resume|cannot resume safely") as e:
            SafeCheckpointer(model, str(folder)).resume_or_load("", resume=True)
        assert "\n" not in str(e.value) and f"delete {folder}" in str(e.value)
    torch.save({"model": model.state_dict()}, work / "outside.pth")
    (folder / "last_checkpoint").write_text(str(work / "outside.pth"))
    with pytest.raises(MimError, match=r"not a \.pth checkpoint inside"):
        SafeCheckpointer(model, str(folder)).resume_or_load("", resume=True)
    assert not marker.exists()


def test_mmengine_resume_refuses_pickles_and_files_outside_its_folder(work):
    pytest.importorskip("mmseg")
    import downstream.seg_mm as seg_mm

    marker = work / "ran"
    runner = types.SimpleNamespace(work_dir=str(work / "w"))
    malicious(work / "w" / "iter_2.pth", marker)
    with pytest.raises(MimError, match=r"cannot resume safely from .*iter_2\.pth \(it holds Python objects"):
        seg_mm.ConsoleRunner.resume(runner, str(work / "w" / "iter_2.pth"))
    malicious(work / "elsewhere.pth", marker)
    with pytest.raises(MimError, match=r"refusing to resume from .*elsewhere\.pth: not a \.pth checkpoint inside"):
        seg_mm.ConsoleRunner.resume(runner, str(work / "elsewhere.pth"))
    assert not marker.exists()


# ===================================================================================================
# output paths: checked before any work
def test_output_paths_are_checked_before_work(work, gen, encoder):
    probe = lambda metrics: invoke("probe", "--encoder", encoder, "--data", gen / "manifest.json", "--metrics", metrics,  # noqa: E731
                                   "--params", params(work))
    (work / "blocker").write_text("a file")
    one_line(probe("blocker/m.json"), r"--metrics blocker/m\.json: blocker is a file, not a folder")
    (work / "adir").mkdir()
    one_line(probe("adir"), r"--metrics adir: is a folder; give the file to write")
    locked = unwritable_dir(work)
    one_line(probe(locked / "m.json"), rf"--metrics {re.escape(str(locked))}/m\.json: cannot write in .*choose another path")
    one_line(invoke("finetune", "--encoder", encoder, "--data", gen / "manifest.json", "--metrics", "m.json",
                    "--run", "blocker", "--params", params(work)), r"--run blocker: is a file; give a folder")
    one_line(invoke("prepare-data", "--params", params(work), "--out", locked / "data"), r"--out .*: cannot write in")
    one_line(invoke("tables", "--params", params(work), "--metrics", "metrics", "--out", locked / "results"),
             r"--out .*: cannot write in")
    one_line(invoke("pretrain-student", "--method", "mae", "--name", "m", "--data", gen / "manifest.json",
                    "--out", locked / "e.safetensors", "--run", "run", "--params", params(work)), r"--out .*: cannot write in")
    assert not (work / "run").exists() and not (work / "m.json").exists()


def test_a_full_disk_is_one_line_and_keeps_the_old_output(work, gen, encoder, monkeypatch):
    import errno

    (work / "m.json").write_text('{"old": 1}')
    real = os.replace

    def full(src, dst):
        if str(dst).endswith("m.json"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", full)
    one_line(invoke("probe", "--encoder", encoder, "--data", gen / "manifest.json", "--metrics", "m.json", "--params", params(work)),
             r"cannot write m\.json: No space left on device; m\.json is unchanged")
    assert json.loads((work / "m.json").read_text()) == {"old": 1} and not list(work.glob(".m.json.*"))


# ===================================================================================================
# numerical faults
def test_a_nan_loss_stops_and_keeps_no_bad_checkpoint(work, gen):
    res = invoke("pretrain-student", "--method", "mae", "--name", "mae", "--data", gen / "manifest.json",
                 "--out", "enc.safetensors", "--run", "run", "--params", params(work, {"mae.optim.base_lr": 1e30, "mae.optim.epochs": 3}))
    one_line(res, r"pretrain mae: loss is nan at epoch 2, batch 0; the checkpoint of epoch 1 is kept\. Lower the lr")
    assert not (work / "enc.safetensors").exists()
    ckpt = work / "run" / "checkpoint.pt"
    if ckpt.exists():  # only a finite one
        state = torch.load(ckpt, weights_only=True)
        assert all(torch.isfinite(t).all() for t in state["model"].values())


def test_the_divergence_guard_stops_a_run_whose_loss_climbs(work):
    from mim.engine import DivergenceGuard

    guard = DivergenceGuard(10.0, warmup=8)
    assert not any(guard.diverged(v) for v in [1.0, 0.9, 1.1, 0.8, 1.0, 0.95, 1.05, 1.0, 9.0])
    assert guard.diverged(50.0) and guard.median == pytest.approx(1.0)


def test_a_diverging_linear_probe_stops(work, gen, encoder):
    res = invoke("probe", "--encoder", encoder, "--data", gen / "manifest.json", "--metrics", "m.json",
                 "--params", params(work, {"probe.linear.base_lr": 1e7, "probe.linear.optimizer": "lars"}))
    one_line(res, r"the linear probe diverged .*lower probe\.linear\.base_lr")
    assert not (work / "m.json").exists()


def test_token_diversity_needs_two_tokens(work, gen):
    res = invoke("token-diversity", "--weights", _teacher_file(work / "t.safetensors"), "--data", gen / "manifest.json",
                 "--metrics", "m.json", "--params", params(work, {"diversity.img_size": 16}))
    one_line(res, r"needs at least 2 tokens per image, got 1: raise diversity\.img_size")


def test_segmentation_stops_at_a_nan_loss_before_mmengine_checkpoints_it(work):
    pytest.importorskip("mmseg")
    from downstream.seg_mm import FiniteHook

    hook, runner = FiniteHook(), types.SimpleNamespace(iter=6, work_dir=str(work))
    hook.after_train_iter(runner, 0, outputs={"loss": torch.tensor(0.5)})
    with pytest.raises(MimError, match=r"segment: loss is nan at iteration 7; the last checkpoint in .* is kept"):
        hook.after_train_iter(runner, 0, outputs={"loss": torch.tensor(float("nan"))})
    with pytest.raises(MimError, match=r"segment: 1 weights are NaN or Inf at iteration 6 \(e\.g\. state\.w\); not checkpointed"):
        hook.before_save_checkpoint(runner, {"state_dict": {"state.w": torch.tensor([1.0, float("inf")])}})
