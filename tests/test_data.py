import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from mim.data import synth
from mim.data.manifest import locate, read_manifest, validate_ade20k, validate_coco, validate_imagenet
from mim.data.prepare import DatasetsConfig, ImageNetData, SceneData, write_data
from mim.errors import DataError

MICRO = DatasetsConfig(
    seed=0,
    imagenet=ImageNetData(classes=3, train_per_class=3, val_per_class=2, image_size=32),
    coco=SceneData(classes=3, train_images=4, val_images=2, image_size=64, objects=(2, 4)),
    ade20k=SceneData(classes=3, train_images=4, val_images=2, image_size=64, objects=(2, 4)),
)


@pytest.fixture(scope="module")
def micro(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gen") / "data"
    write_data(MICRO, out)
    return out


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_differs(micro, tmp_path):
    write_data(MICRO, tmp_path / "again")
    a, b = files(micro), files(tmp_path / "again")
    assert len(a) == 3 * 5 + 6 + 2 + 6 * 2 + 1 + 1  # imagenet + synsets, coco imgs + jsons, ade, manifest
    assert a == b
    other = DatasetsConfig(**{**MICRO.__dict__, "seed": 1})
    write_data(other, tmp_path / "other")
    c = files(tmp_path / "other")
    assert c.keys() == a.keys()
    images = [k for k in a if k.endswith((".JPEG", ".jpg", ".png"))]
    assert all(a[k] != c[k] for k in images)
    assert not list(tmp_path.glob(".*"))  # no temporary folders left behind


def test_manifest_fingerprints_generated_files(micro, tmp_path):
    import shutil

    from mim.data.prepare import tree_sha256

    doc = json.loads((micro / "manifest.json").read_text())
    for name, rel in (("imagenet", "imagenet"), ("coco", "coco"), ("ade20k", "ade20k/ADEChallengeData2016")):
        assert doc[name]["sha256"] == tree_sha256(micro / rel), name
    copy = tmp_path / "imagenet"
    shutil.copytree(micro / "imagenet", copy)
    assert tree_sha256(copy) == doc["imagenet"]["sha256"]
    one = sorted(copy.rglob("*.JPEG"))[0]
    one.write_bytes(one.read_bytes() + b"\0")  # one changed image changes the manifest
    assert tree_sha256(copy) != doc["imagenet"]["sha256"]


def test_manifest_roots_and_counts(micro):
    m = read_manifest(micro / "manifest.json")
    assert m.imagenet == micro / "imagenet" and (m.imagenet / "train").is_dir()
    assert m.coco == micro / "coco" and m.ade20k == micro / "ade20k" / "ADEChallengeData2016"
    assert (m.imagenet_classes, m.coco_classes, m.ade20k_classes) == (3, 3, 3)
    assert m.images == {"imagenet/train": 9, "imagenet/val": 6, "coco/train": 4, "coco/val": 2,
                        "ade20k/train": 4, "ade20k/val": 2}
    assert m.embedded == ("imagenet", "coco", "ade20k")
    assert m.class_names["imagenet"] == ("disc", "square", "triangle")


def test_imagenet_layout_reads_with_image_folder(micro):
    from mim.data.images import ImageFolder

    ds = ImageFolder(micro / "imagenet" / "train")
    assert ds.classes == ["n00000001", "n00000002", "n00000003"] and len(ds) == 9
    img, label = ds[4]
    assert img.size == (32, 32) and label == 1
    val = ImageFolder(micro / "imagenet" / "val")
    assert val.classes == ds.classes and len(val) == 6


def test_coco_json_through_pycocotools(micro):
    from pycocotools.coco import COCO

    for split in ("train2017", "val2017"):
        coco = COCO(str(micro / "coco" / "annotations" / f"instances_{split}.json"))
        assert sorted(coco.getCatIds()) == [1, 2, 3]
        assert [c["name"] for c in coco.loadCats([1, 2, 3])] == ["disc", "square", "triangle"]
        anns = coco.loadAnns(coco.getAnnIds())
        assert len({a["id"] for a in anns}) == len(anns) >= len(coco.getImgIds()) * 2 - 2
        for a in anns:
            info = coco.loadImgs(a["image_id"])[0]
            assert (micro / "coco" / split / info["file_name"]).is_file()
            x, y, w, h = a["bbox"]
            assert 0 <= x and 0 <= y and x + w <= info["width"] and y + h <= info["height"] and w > 2 and h > 2
            mask = coco.annToMask(a)
            assert mask.shape == (info["height"], info["width"])
            assert abs(int(mask.sum()) - a["area"]) <= 0.15 * a["area"] + 6
            assert a["iscrowd"] == 0 and len(a["segmentation"][0]) >= 6
    ids = [COCO(str(micro / "coco/annotations" / f"instances_{s}.json")).getImgIds() for s in ("train2017", "val2017")]
    assert not set(ids[0]) & set(ids[1])  # image ids unique across splits, as in COCO


def test_polygon_mask_matches_drawn_object():
    from pycocotools import mask as mask_util

    rng = np.random.default_rng(0)
    img, drawn = synth.scene_image(rng, [0, 1, 2, 3, 4], 96, overlap=False)
    assert len(drawn) >= 4
    for d in drawn:
        rle = mask_util.merge(mask_util.frPyObjects([d.polygon.reshape(-1).tolist()], 96, 96))
        m = mask_util.decode(rle).astype(bool)
        drawn_mask = d.alpha >= 0.5
        iou = (m & drawn_mask).sum() / (m | drawn_mask).sum()
        assert iou > (0.95 if m.sum() > 300 else 0.85), (d.label, iou)  # boundary pixels only


def test_ade_labels(micro):
    root = micro / "ade20k" / "ADEChallengeData2016"
    seen = set()
    for split, tag in (("training", "train"), ("validation", "val")):
        imgs = sorted((root / "images" / split).glob("*.jpg"))
        assert [p.name for p in imgs][:1] == [f"ADE_{tag}_00000001.jpg"]
        for p in imgs:
            lab = Image.open(root / "annotations" / split / f"{p.stem}.png")
            assert lab.mode == "L" and lab.size == Image.open(p).size
            a = np.asarray(lab)
            assert a.dtype == np.uint8 and a.max() <= 3
            assert (a == 0).mean() > 0.2  # background stays "other"
            seen |= set(np.unique(a).tolist())
    assert seen == {0, 1, 2, 3}


def test_classification_images_vary_and_colour_is_not_the_class():
    # Mean colour per class over a few images: classes must not be separable by colour.
    means = np.array([[np.asarray(synth.classification_image(synth._rng(5, c, j), c, 4, 48), np.float32).mean((0, 1))
                       for j in range(12)] for c in range(4)])  # (class, image, 3)
    spread_within = means.std(1).mean()
    spread_between = means.mean(1).std(0).mean()
    assert spread_within > 15 and spread_between < spread_within


def _tilt_of_arrow(polygon: np.ndarray) -> float:
    """Angle (degrees) of an arrow polygon's tip, seen from its vertex centroid; 0 = pointing right."""
    tip = polygon[3]  # the vertex at (1, 0) of the unit arrow
    d = tip - polygon.mean(0)
    return math.degrees(math.atan2(d[1], d[0]))


@pytest.mark.parametrize("max_rotation", [0.0, 20.0, 180.0])
def test_objects_tilt_within_max_rotation(max_rotation):
    arrow = synth.SHAPE_NAMES.index("arrow")
    tilts = []
    for i in range(40):
        _, drawn = synth.scene_image(synth._rng(3, i), [arrow], 96, overlap=False, max_rotation=max_rotation)
        tilts += [_tilt_of_arrow(d.polygon) for d in drawn]
    tilts = np.abs(np.array(tilts))
    assert len(tilts) >= 30
    assert tilts.max() <= max_rotation + 6  # stretch bends the centroid->tip direction a few degrees
    if max_rotation == 180:
        assert tilts.max() > 150  # every orientation occurs
    if max_rotation == 20:
        assert tilts.max() > 12


def test_all_shapes_are_simple_polygons_of_unit_radius():
    for name in synth.SHAPE_NAMES:
        p = synth.unit_shape(name)
        assert p.shape[1] == 2 and len(p) >= 3
        assert math.isclose(np.linalg.norm(p, axis=1).max(), 1.0)
        assert synth.polygon_area(p) > 0.3, name
    assert len(set(synth.SHAPE_NAMES)) == len(synth.SHAPE_NAMES) >= 20


def test_real_path_validation_errors(tmp_path, micro):
    with pytest.raises(DataError, match=r"COCO root .*: missing train2017/, val2017/, annotations/instances_train"):
        validate_coco(tmp_path)
    coco = tmp_path / "coco"
    for d in ("train2017", "val2017", "annotations"):
        (coco / d).mkdir(parents=True)
    (coco / "annotations/instances_train2017.json").write_text("{}")
    with pytest.raises(DataError, match=r"^COCO root .*coco: missing annotations/instances_val2017\.json$"):
        validate_coco(coco)
    with pytest.raises(DataError, match=r"ImageNet root .*nowhere: not a directory"):
        validate_imagenet(tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"ImageNet root .*: missing val/"):
        (tmp_path / "in" / "train" / "n1").mkdir(parents=True)
        validate_imagenet(tmp_path / "in")
    ade = micro / "ade20k" / "ADEChallengeData2016"
    assert validate_ade20k(ade, classes=3)["images"] == {"train": 4, "val": 2}
    with pytest.raises(DataError, match=r"ADE20K root .*: missing images/training/"):
        validate_ade20k(tmp_path)


def test_real_paths_only_write_the_manifest(tmp_path, micro):
    cfg = DatasetsConfig(imagenet=ImageNetData(root=str(micro / "imagenet")), coco=SceneData(root=str(micro / "coco")),
                     ade20k=SceneData(root=str(micro / "ade20k/ADEChallengeData2016")))
    m = write_data(cfg, tmp_path / "data")
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["manifest.json"]
    assert m.embedded == () and m.imagenet == micro / "imagenet" and m.coco_classes == 3
    assert m.ade20k_classes == 150  # real ADE20K without objectInfo150.txt: the benchmark's 150
    bad = DatasetsConfig(coco=SceneData(root=str(tmp_path / "missing")))
    with pytest.raises(DataError, match="COCO root .*missing: not a directory"):
        write_data(bad, tmp_path / "data")
    assert read_manifest(tmp_path / "data" / "manifest.json") == m  # failed run left the old data alone


def test_corrupt_image_is_a_data_error(tmp_path):
    from mim.data.images import open_rgb

    p = tmp_path / "broken.JPEG"
    p.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(DataError, match="cannot read image .*broken.JPEG"):
        open_rgb(p)


def test_manifest_errors(tmp_path):
    with pytest.raises(DataError, match="dataset manifest not found: .*prepare-data"):
        read_manifest(tmp_path / "manifest.json")
    (tmp_path / "manifest.json").write_text(json.dumps({"imagenet": {"root": "x"}}))
    with pytest.raises(DataError, match="not a valid dataset manifest"):
        read_manifest(tmp_path / "manifest.json")


@pytest.mark.parametrize(
    "section, msg",
    [
        ("data: {imagenet: {classes: 99}}", r"bad\.yaml: data\.imagenet\.classes: 99 is outside \[2, 20\]"),
        ("data: {coco: {train_imgs: 3}}", r"bad\.yaml: data\.coco: unknown key\(s\) train_imgs"),
        ("data: {ade20k: {objects: [3, 1]}}", r"bad\.yaml: data\.ade20k\.objects: \[3, 1\] must be"),
        ("data: {seed: x}", r"bad\.yaml: data\.seed: expected an integer"),
        ("data: {imagenet: {max_rotation: 200}}", r"bad\.yaml: data\.imagenet\.max_rotation: 200(\.0)? is outside \[0, 180\]"),
        ("data: {coco: {root: " + "/no/such/coco}}", r"COCO root /no/such/coco: not a directory"),
    ],
)
def test_cli_rejects_bad_params_in_one_line(tmp_path, section, msg):
    from stages.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text(section + "\n")
    result = CliRunner().invoke(main, ["prepare-data", "--params", str(bad), "--out", str(tmp_path / "data")])
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    import re

    assert re.search(msg, lines[0]), lines[0]
    assert not (tmp_path / "data").exists()


def test_cli_writes_micro_data(tmp_path):
    from stages.cli import main

    params = tmp_path / "p.yaml"
    params.write_text("data:\n  imagenet: {classes: 2, train_per_class: 2, val_per_class: 1, image_size: 32}\n"
                      "  coco: {classes: 2, train_images: 2, val_images: 1, image_size: 48}\n"
                      "  ade20k: {classes: 2, train_images: 2, val_images: 1, image_size: 48}\n")
    result = CliRunner().invoke(main, ["prepare-data", "--params", str(params), "--out", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    assert "imagenet generated 2 classes" in result.output
    assert read_manifest(tmp_path / "d" / "manifest.json").images["coco/train"] == 2


def test_locate_reads_the_manifest_or_takes_a_folder(micro, tmp_path):
    assert locate(micro / "manifest.json", "imagenet") == micro / "imagenet"
    assert locate(micro / "manifest.json", "ade20k") == micro / "ade20k" / "ADEChallengeData2016"
    assert locate(micro / "imagenet", "imagenet") == micro / "imagenet"  # a dataset folder given directly
    with pytest.raises(DataError, match="manifest not found.*prepare-data"):
        locate(tmp_path / "none.json", "coco")
    with pytest.raises(DataError, match="not a dataset folder either"):
        locate(tmp_path / "no_such_folder", "imagenet")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="neither a dataset folder nor a manifest"):
        locate(tmp_path / "notes.txt", "imagenet")
    with pytest.raises(DataError, match="no dataset 'cifar'"):
        locate(micro / "manifest.json", "cifar")
