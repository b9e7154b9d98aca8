"""The mini profile (params/mini.yaml: ImageNet-100, ViT-S/16, one GPU) and the class list it reads
(data.imagenet.class_list: prepare-data checks it, records it, and every dataset reader keeps to it)."""
from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path

import pytest
import timm
import torch
import yaml
from click.testing import CliRunner

from imagefolders import make_imagenet
from mim.data.images import DataRoot, open_dataset
from mim.data.manifest import read_class_list, read_manifest
from mim.errors import DataError
from stages.cli import PROFILES, main
from stages.common import load

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT / "params" / "mini.yaml"
PAPER = ROOT / "params" / "paper.yaml"
IN100 = ROOT / "mim" / "data" / "imagenet100.txt"
WNIDS = ("n01000001", "n01000002", "n01000003", "n01000004", "n01000005")


def _keys(d: dict, pre: str = "") -> set[str]:
    out = set()
    for k, v in d.items():
        out.add(pre + k)
        if isinstance(v, dict):
            out |= _keys(v, f"{pre}{k}.")
    return out


def wnid_root(path: Path, wnids: tuple[str, ...] = WNIDS, train: int = 4, val: int = 2, size: int = 36) -> Path:
    """An ImageNet-layout root whose class folders are wnids (tests/imagefolders.py's striped classes)."""
    make_imagenet(path, classes=len(wnids), train=train, val=val, size=size)
    for split in ("train", "val"):
        for i, w in enumerate(wnids):
            (path / split / f"class{i}").rename(path / split / w)
    (path / "LOC_synset_mapping.txt").write_text("".join(f"{w} thing {i}, other name\n" for i, w in enumerate(wnids)))
    return path


def one_line_error(res, pattern: str) -> str:
    assert res.exit_code != 0, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


# --- the profile ----------------------------------------------------------------------------------
def test_mini_profile_is_checked_selectable_and_has_every_paper_key(tmp_path, monkeypatch):
    res = CliRunner().invoke(main, ["check-params", "--params", str(MINI), "--out", str(tmp_path / "cp.json")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "cp.json").read_text()) == {"valid": True}
    paper, mini = yaml.safe_load(PAPER.read_text()), yaml.safe_load(MINI.read_text())
    assert _keys(paper) - _keys(mini) == set()  # every section and key of the paper profile: every stage runs
    assert _keys(mini) - _keys(paper) == {"data.imagenet.class_list"}
    assert "accum_steps" not in MINI.read_text()
    assert mini["data"]["imagenet"]["class_list"] == "mim/data/imagenet100.txt"
    assert "mini" in PROFILES
    monkeypatch.chdir(tmp_path)  # `mimrepro profile` writes params/profile.yaml of the working directory
    res = CliRunner().invoke(main, ["profile", "mini"])
    assert res.exit_code == 0, res.output
    assert yaml.safe_load((tmp_path / "params" / "profile.yaml").read_text()) == {"profile": "mini"}


def test_every_student_of_dvc_yaml_has_a_mini_section(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    import dvc_deps
    from mim.methods import METHODS

    env = dvc_deps.variables(yaml.safe_load((ROOT / "dvc.yaml").read_text()), ROOT)
    mini = yaml.safe_load(MINI.read_text())
    for group in ("students", "sweep"):
        for student, item in env[group].items():
            assert item["method"] in mini and item["finetune"] in mini, student
    assert set(METHODS) <= mini.keys()


def test_imagenet100_is_cmcs_list():
    text = IN100.read_text()
    assert "HobbitLong/CMC" in text and "imagenet100.txt" in text and "solo-learn" in text
    wnids = read_class_list(IN100)
    assert len(wnids) == len(set(wnids)) == 100
    assert (wnids[0], wnids[1], wnids[-1]) == ("n02869837", "n01749939", "n02090622")  # CMC's order
    # the sorted set, so that an edit of any wnid fails here (sha256 of the 100 sorted wnids, one a line)
    digest = hashlib.sha256("\n".join(sorted(wnids)).encode()).hexdigest()
    assert digest == "d61d354b64beb3ce2c2c9cf04a874298362dc9fcd589e15ee34c5e4592145746"


def test_mini_profile_builds_its_models_on_meta():
    """ViT-S/16 (timm vit_small_patch16_224, DeiT-S) and every model built around it, at full size."""
    from mim.eval.finetune import ViTClassifier
    from mim.methods import beit, img2vec, mae
    from mim.teacher import dino
    from mim.teacher.frozen import Teacher
    from mim.tokenizer import vqvae
    from mim.vit import ViTConfig, ViTEncoder, vit_config

    def count(m: torch.nn.Module, trainable: bool = True) -> int:
        return sum(p.numel() for p in m.parameters() if p.requires_grad or not trainable)

    enc = load(MINI, "encoder", ViTConfig)
    assert enc == vit_config("small", img_size=224, patch_size=16) and enc.grid == 14
    with torch.device("meta"):
        vit_s = ViTEncoder(enc)
        timm_s = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0)
    assert count(vit_s, trainable=False) == count(timm_s) == 21_665_664  # timm's 22.05M less its 1000-class head
    assert abs(count(vit_s) / 1e6 - 21.59) < 0.01  # less the fixed sin-cos table (197 x 384)

    # MAE: the 4 x 256 decoder (8 heads) on ViT-S
    cfg = load(MINI, "mae", mae.Config)
    assert (cfg.model.mask_ratio, cfg.model.decoder_dim, cfg.model.decoder_depth, cfg.model.decoder_heads) == (0.75, 256, 4, 8)
    with torch.device("meta"):
        model = mae.MAE(enc, cfg.model)
    d = 256
    decoder = 384 * d + d + d + 4 * (12 * d * d + 13 * d) + 2 * d + d * 16 * 16 * 3 + 16 * 16 * 3  # embed, mask token, blocks, norm, pred
    assert count(model.encoder) == count(vit_s) and count(model) - count(model.encoder) == decoder
    assert cfg.optim.batch_size == 1024 and cfg.optim.epochs == 100

    # BEiT: ViT-S in BEiT's layout = timm's beit_base_patch16_224 at ViT-S's width, name by name
    cfg = load(MINI, "beit", beit.Config)
    benc = beit.encoder_config(cfg, enc)
    assert beit.num_masked(cfg.model, enc.grid) == 75
    with torch.device("meta"):
        model = beit.BEiT(benc, 8192)
        theirs = timm.create_model("beit_base_patch16_224", pretrained=False, num_classes=0, use_fc_norm=False,
                                   embed_dim=384, num_heads=6, use_abs_pos_emb=False, use_rel_pos_bias=False,
                                   use_shared_rel_pos_bias=True, init_values=0.1)
    assert {k: v.shape for k, v in model.encoder.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    assert count(model) - count(model.encoder) == 384 + 384 * 8192 + 8192  # mask token, the 8192-word head

    # Img2Vec on the DINO RN-50 teacher: 7x7 blocks of 2x2 patches, the 2 x 256 decoder
    cfg = load(MINI, "img2vec", img2vec.Config)
    with torch.device("meta"):
        r50 = Teacher(torch.nn.Identity(), stride=32, dim=2048, name="dino_rn50")
        geo = img2vec.resolve_geometry(cfg.model, enc, r50)
        model = img2vec.Img2Vec(enc, cfg.model, geo, 2048)
    assert (geo.block, geo.blocks_per_side, geo.teacher_img_size) == (2, 7, 224)
    assert count(model.encoder) == count(vit_s) and len(model.decoder.blocks) == 2

    # the DINO teacher: ResNet-50 (timm, 23.5M without its fc) and the 60000-prototype head
    cfg = load(MINI, "dino", dino.Config)
    with torch.device("meta"):
        model = dino.DINO(cfg.model, cfg.data)
        r50_timm = timm.create_model("resnet50", pretrained=False, num_classes=0)
    assert count(model.student.backbone) == count(r50_timm) == 23_508_032
    assert (cfg.optim.batch_size, cfg.optim.epochs, cfg.data.n_local) == (256, 40, 8)

    # BEiT's tokenizer: DALL-E's 8192 words on a 112 px view = the student's 14x14 grid
    tok = load(MINI, "tokenizer", vqvae.Config)
    assert tok.mode == "dalle" and tok.model.image_size // 8 == enc.grid and tok.model.vocab_size == 8192

    # fine-tuning: ViT-S + a 100-class head (the class list's length)
    with torch.device("meta"):
        clf = ViTClassifier(ViTEncoder(enc), len(read_class_list(IN100)), global_pool=True)
    assert clf.head.out_features == 100 and count(clf) - count(clf.encoder) == 2 * 384 + 384 * 100 + 100  # fc_norm + head


@pytest.mark.detectron2
@pytest.mark.skipif(not __import__("importlib").util.find_spec("detectron2"), reason="detectron2 not installed")
def test_mini_detect_is_vitdet_with_a_vit_s(tmp_path):
    from downstream.det import CocoPaths, DetectConfig, DetectJob, build_config
    from mim.engine import RunConfig
    from mim.vit import ViTConfig

    det, enc = load(MINI, "detect", DetectConfig), load(MINI, "encoder", ViTConfig)
    job = DetectJob(student="mae", encoder=tmp_path / "e", coco=CocoPaths(root=tmp_path), det=det, run=RunConfig(),
                    checkpoint_dir=tmp_path / "c", log_dir=tmp_path / "l")
    cfg = build_config(job, enc, classes=80)
    net = cfg.model.backbone.net
    assert (net.embed_dim, net.depth, net.num_heads, net.img_size, net.window_size) == (384, 12, 6, 512, 14)
    assert list(net.window_block_indexes) == [i for i in range(12) if i not in (2, 5, 8, 11)]
    assert cfg.train.max_iter == 10000 and cfg.dataloader.train.total_batch_size == 16


# --- every method trains a few steps on CPU with the mini recipe at a tiny size ---------------------------
def tiny(params: dict, root: Path, class_list: Path) -> dict:
    """The mini profile with sizes (images, widths, depths, batches, lengths) cut to CPU seconds; every
    recipe value (learning rates, decays, masks, optimizers, schedules' shapes) stays mini's."""
    p = copy.deepcopy(params)
    p["run"].update(num_workers=0, threads=2)
    p["data"]["imagenet"].update(root=str(root), class_list=str(class_list))
    scene = {"root": None, "classes": 2, "train_images": 2, "val_images": 1, "image_size": 64, "objects": [1, 2]}
    p["data"]["coco"], p["data"]["ade20k"] = dict(scene), dict(scene)
    p["encoder"].update(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
    p["dino"]["model"]["arch"] = "resnet18"
    p["dino"]["model"]["head"].update(out_dim=64, hidden_dim=32, bottleneck_dim=16)
    p["dino"]["data"].update(global_size=32, local_size=16, n_local=2)
    p["dino"]["knn"].update(train_per_class=4, every=1)
    p["tokenizer"]["mode"] = "train"  # DALL-E's weights are a download; mode train exercises the same stage
    p["tokenizer"]["model"].update(image_size=16, vocab_size=32, downsample=4, code_dim=8, hidden=16, res_blocks=1)
    p["mae"]["model"].update(decoder_dim=32, decoder_depth=1, decoder_heads=2)
    p["beit"]["model"].update(min_num_patches=2)  # 6 of the 16 patches masked
    p["img2vec"]["model"].update(block_size=2, decoder_dim=32, decoder_depth=1, decoder_heads=2, head_hidden=32)
    for section in ("dino", "tokenizer", "mae", "beit", "img2vec", "finetune", "finetune_beit"):
        optim = p[section]["optim"]
        optim.pop("epochs"), optim.pop("warmup_epochs", None)
        optim.update(steps=2, warmup_steps=1, batch_size=4)
    for section in ("finetune", "finetune_beit"):
        p[section]["eval_batch_size"] = 8
    p["probe"]["batch_size"] = 8
    p["probe"]["linear"].update(epochs=1, batch_size=4, warmup_epochs=0)
    p["diversity"].update(img_size=32, batch_size=8, limit_per_class=2)
    p["detect"].update(img_size=64, global_blocks=[1])  # not run here (detectron2); checked against the tiny encoder
    p["segment"].update(out_blocks=[1, 1, 2, 2], crop_size=32, slide_stride=16)  # likewise (mmseg)
    return p


def test_every_mini_method_trains_on_cpu(tmp_path, monkeypatch):
    root = wnid_root(tmp_path / "imagenet", train=6, val=2, size=32)
    (tmp_path / "three.txt").write_text("# three of the five\n" + "\n".join(WNIDS[1:4]) + "\n")
    params = tiny(yaml.safe_load(MINI.read_text()), root, tmp_path / "three.txt")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params))

    def invoke(*args: str) -> None:
        res = CliRunner().invoke(main, [*args, "--params", "p.yaml"])
        assert res.exit_code == 0, (args, res.output, res.exception)

    invoke("check-params", "--out", "runs/check-params.json")
    invoke("prepare-data", "--out", "data")
    m = read_manifest("data/manifest.json")
    assert m.imagenet_wnids == WNIDS[1:4] and m.images["imagenet/train"] == 18
    data = ["--data", "data/manifest.json"]
    invoke("pretrain-teacher", *data, "--name", "dino_rn50", "--out", "models/teacher/backbone.safetensors",
           "--metrics", "metrics/teacher/dino_rn50.json", "--run", "runs/teacher/dino_rn50")
    teacher = json.loads(Path("metrics/teacher/dino_rn50.json").read_text())
    assert (teacher["train_images"], teacher["val_images"]) == (18, 6)  # the listed 3 of the 5 classes
    invoke("tokenizer", *data, "--out", "models/tokenizer/tokenizer.safetensors", "--metrics", "metrics/tokenizer/tokenizer.json",
           "--run", "runs/tokenizer")
    inputs = {"scratch": "data/manifest.json", "mae": "data/manifest.json", "beit": "models/tokenizer/tokenizer.safetensors",
              "img2vec": "models/teacher/backbone.safetensors"}
    for method, given in inputs.items():
        invoke("pretrain-student", "--method", method, "--name", method, *data, "--input", given,
               "--out", f"models/{method}/encoder.safetensors", "--run", f"runs/pretrain/{method}")
        assert Path(f"models/{method}/encoder.safetensors").is_file()
    for student, section in (("mae", "finetune"), ("beit", "finetune_beit")):
        invoke("finetune", "--encoder", f"models/{student}/encoder.safetensors", *data, "--metrics", f"metrics/finetune/{student}.json",
               "--run", f"runs/finetune/{student}", "--section", section)
        assert 0 <= json.loads(Path(f"metrics/finetune/{student}.json").read_text())["top1"] <= 100
        state = torch.load(f"runs/finetune/{student}/checkpoint.pt", weights_only=True)
        assert state["model"]["head.weight"].shape == (3, 32)  # a head for the 3 listed classes
        assert state["config"]["finetune"]["optim"]["base_lr"] == params[section]["optim"]["base_lr"]  # mini's recipe
    invoke("probe", "--encoder", "models/mae/encoder.safetensors", *data, "--metrics", "metrics/probe/mae.json", "--run", "runs/probe/mae")
    assert Path("metrics/probe/mae.json").is_file()


# --- the class list: prepare-data checks and records it; every reader keeps to it -----------------------
def prepare(tmp_path: Path, imagenet: str) -> object:
    tiny_scene = "{root: null, classes: 2, train_images: 2, val_images: 1, image_size: 48}"
    (tmp_path / "p.yaml").write_text(f"data:\n  imagenet: {imagenet}\n  coco: {tiny_scene}\n  ade20k: {tiny_scene}\n")
    return CliRunner().invoke(main, ["prepare-data", "--params", str(tmp_path / "p.yaml"), "--out", str(tmp_path / "data"),
                                     "--cache", str(tmp_path / "cache")])


def test_class_list_keeps_its_classes_in_every_reader(tmp_path):
    from mim.data import fingerprint as fp

    root = wnid_root(tmp_path / "in")
    listed = (WNIDS[3], WNIDS[0], WNIDS[2])  # unsorted in the file: labels follow the sorted wnids
    (tmp_path / "three.txt").write_text("# a subset\n\n" + "\n".join(f"  {w}  " for w in listed) + "\n# end\n")
    (root / "train" / WNIDS[1] / "0.png").write_bytes(b"broken, but not a listed class")  # never decoded
    res = prepare(tmp_path, f"{{root: {root}, class_list: {tmp_path / 'three.txt'}}}")
    assert res.exit_code == 0, res.output
    assert "imagenet real      3 classes, train 12, val 6 images" in res.output
    doc = json.loads((tmp_path / "data" / "manifest.json").read_text())["imagenet"]
    assert doc["wnids"] == sorted(listed) and doc["class_list"] == str(tmp_path / "three.txt")
    assert doc["classes"] == 3 and doc["images"] == {"train": 12, "val": 6} and doc["checked"] == 18
    assert doc["class_names"] == ["thing 0", "thing 2", "thing 3"]
    m = read_manifest(tmp_path / "data" / "manifest.json")
    assert m.imagenet_classes == 3 and m.imagenet_wnids == tuple(sorted(listed))

    data = open_dataset(tmp_path / "data" / "manifest.json")
    assert data == DataRoot(root, frozenset(), tuple(sorted(listed)))
    for split, n in (("train", 4), ("val", 2)):
        images = data.images(split)
        assert images.classes == sorted(listed) and len(images) == 3 * n
        assert [(p.parent.name, label) for p, label in images.samples] == [
            (w, i) for i, w in enumerate(sorted(listed)) for _ in range(n)]
    assert len(data.images("train", limit_per_class=1)) == 3
    with pytest.raises(DataError, match=rf"1 unusable images .*train/{WNIDS[1]}/0.png"):
        open_dataset(root)  # a folder given directly: every class, every image checked
    (root / "train" / WNIDS[1] / "0.png").write_bytes((root / "train" / WNIDS[1] / "1.png").read_bytes())
    assert open_dataset(root).classes is None and len(open_dataset(root).images("val").classes) == 5

    # fingerprints cover the listed classes only: an unlisted class changes nothing, a listed one does
    assert doc["fingerprint"]["files"] == 1 + 18  # LOC_synset_mapping.txt and the listed images
    trigger = fp.trigger({"imagenet": str(root)}, str(tmp_path / "three.txt"))
    assert trigger["imagenet"]["files"] == 19 and "classes" in trigger["imagenet"]
    assert "classes" not in fp.trigger({"imagenet": str(root)})["imagenet"]
    (root / "val" / WNIDS[4] / "9.png").write_bytes(b"new file, unlisted class")
    assert fp.trigger({"imagenet": str(root)}, str(tmp_path / "three.txt")) == trigger
    (tmp_path / "two.txt").write_text("\n".join(listed[:2]) + "\n")
    assert fp.trigger({"imagenet": str(root)}, str(tmp_path / "two.txt"))["imagenet"]["classes"] != trigger["imagenet"]["classes"]
    (root / "val" / listed[0] / "9.png").write_bytes((root / "val" / listed[0] / "0.png").read_bytes())
    assert fp.trigger({"imagenet": str(root)}, str(tmp_path / "three.txt"))["imagenet"]["listing"] != trigger["imagenet"]["listing"]


def test_fingerprint_data_stage_records_the_class_list(tmp_path):
    root = wnid_root(tmp_path / "in", train=1, val=1, size=8)
    (tmp_path / "l.txt").write_text(WNIDS[0] + "\n")
    (tmp_path / "p.yaml").write_text(f"data:\n  imagenet: {{root: {root}, class_list: {tmp_path / 'l.txt'}}}\n")
    res = CliRunner().invoke(main, ["fingerprint-data", "--params", str(tmp_path / "p.yaml"), "--out", str(tmp_path / "fp.json")])
    assert res.exit_code == 0, res.output
    got = json.loads((tmp_path / "fp.json").read_text())["imagenet"]
    assert got["files"] == 1 + 2 and got["classes"] == hashlib.sha256(WNIDS[0].encode()).hexdigest()


def test_embedded_data_has_no_class_list(tmp_path):
    res = prepare(tmp_path, "{root: null, classes: 2, train_per_class: 2, val_per_class: 1, image_size: 16}")
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert "wnids" not in doc["imagenet"] and "class_list" not in doc["imagenet"]
    assert "class_list" not in doc["params"]["imagenet"]  # manifests of the embedded data keep their bytes
    data = open_dataset(tmp_path / "data" / "manifest.json")
    assert data.classes is None and data.images("train").classes == ["n00000001", "n00000002"]


@pytest.mark.parametrize("lines, pattern", [
    (f"{WNIDS[0]}\nn09999999\n", r"ImageNet root .*in: class n09999999 of .*l\.txt is missing from train/ "
                                 r"\(set in .*p\.yaml: data\.imagenet\.root and \.class_list\)$"),
    (f"# header\n{WNIDS[0]}\nn0123\n", r"class list .*l\.txt, line 3: 'n0123' is not a wnid \(n followed by 8 digits\) "
                                       r"\(set in .*p\.yaml: data\.imagenet\.class_list\)$"),
    (f"{WNIDS[0]}\ndog\n", r"class list .*l\.txt, line 2: 'dog' is not a wnid"),
    (f"{WNIDS[0]}\n\n{WNIDS[1]}\n {WNIDS[0]} \n", rf"class list .*l\.txt, line 4: {WNIDS[0]} repeats line 1"),
    ("# nothing\n\n", r"class list .*l\.txt: lists no wnid"),
])
def test_bad_class_list_is_one_line(tmp_path, lines, pattern):
    root = wnid_root(tmp_path / "in", train=1, val=1, size=8)
    (tmp_path / "l.txt").write_text(lines)
    one_line_error(prepare(tmp_path, f"{{root: {root}, class_list: {tmp_path / 'l.txt'}}}"), pattern)
    assert not (tmp_path / "data").exists()


def test_class_list_missing_from_val_or_absent_or_without_root(tmp_path):
    root = wnid_root(tmp_path / "in", train=1, val=1, size=8)
    (root / "val" / WNIDS[2]).rename(tmp_path / "moved")
    (tmp_path / "l.txt").write_text("\n".join(WNIDS[:3]) + "\n")
    one_line_error(prepare(tmp_path, f"{{root: {root}, class_list: {tmp_path / 'l.txt'}}}"),
                   rf"class {WNIDS[2]} of .*l\.txt is missing from val/")
    one_line_error(prepare(tmp_path, f"{{root: {root}, class_list: {tmp_path / 'none.txt'}}}"),
                   r"class list .*none\.txt: cannot read it \(No such file or directory\)")
    one_line_error(prepare(tmp_path, f"{{class_list: {tmp_path / 'l.txt'}}}"),
                   r"p\.yaml: data\.imagenet\.class_list: selects classes of a real root; set root")
    with pytest.raises(DataError, match=rf"class folder {WNIDS[2]} of the dataset's class list is missing"):
        DataRoot(root, classes=WNIDS[:3]).images("val")
