"""Official student checkpoints (MAE, DINO ViT) -> our encoder file: fakes in the official key
layouts (random tensors, built here), checked against timm's VisionTransformer, which is the
architecture both repositories build (MAE models_vit.py subclasses it; DINO's vision_transformer.py
has the same key names)."""
from __future__ import annotations

import argparse

import pytest
import timm
import torch
from click.testing import CliRunner
from timm.models.vision_transformer import VisionTransformer

from mim.encoder_file import EncoderFile
from mim.errors import MimError
from mim.methods.official import convert, vit_config
from stages.cli import main

ARCH = dict(img_size=32, patch_size=8, embed_dim=192, depth=2, num_heads=3)  # ViT-Ti width: 3 heads by the size table


def reference() -> VisionTransformer:
    torch.manual_seed(0)
    ref = VisionTransformer(**ARCH, num_classes=0).eval()
    with torch.no_grad():  # timm initialises some tensors to constants: make every one count
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return ref


def mae_full(ref: VisionTransformer) -> dict:
    """A full MAE pretraining checkpoint: encoder + decoder + mask token, optimizer, args."""
    model = {**ref.state_dict(), "mask_token": torch.zeros(1, 1, 128), "decoder_embed.weight": torch.randn(128, 192),
             "decoder_pos_embed": torch.zeros(1, 17, 128), "decoder_pred.weight": torch.randn(192, 128)}
    return {"model": model, "epoch": 799, "args": argparse.Namespace(model="mae_vit_base_patch16")}


def dino_full(ref: VisionTransformer) -> dict:
    """A full DINO checkpoint: teacher with backbone./head. prefixes, DDP-wrapped student."""
    sd = ref.state_dict()
    return {"teacher": {**{f"backbone.{k}": v for k, v in sd.items()}, "head.mlp.0.weight": torch.randn(8, 192)},
            "student": {f"module.backbone.{k}": v + 1 for k, v in sd.items()}, "epoch": 100,
            "args": argparse.Namespace(arch="vit_tiny")}


LAYOUTS = {
    "mae released": ("mae", lambda ref: {"model": ref.state_dict()}),  # mae_pretrain_vit_base.pth
    "mae full": ("mae", mae_full),
    "dino released": ("dino", lambda ref: ref.state_dict()),  # dino_vitbase16_pretrain.pth
    "dino full": ("dino", dino_full),
}


@pytest.mark.parametrize("case", list(LAYOUTS))
def test_converted_encoder_gives_timms_features(tmp_path, case):
    layout, make = LAYOUTS[case]
    ref = reference()
    torch.save(make(ref), tmp_path / "official.pth")
    out = tmp_path / "encoder.safetensors"
    result = CliRunner().invoke(main, ["import-student", str(tmp_path / "official.pth"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"({layout}: ViT width 192, depth 2, 3 heads, patch 8, 32 px)" in result.output
    f = EncoderFile.read(out)
    assert f.metadata["official_layout"] == layout and f.metadata["method"] == "official"
    enc = f.build().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(enc.forward_features(x), ref.forward_features(x), atol=1e-5)


def test_vit_b_architecture_is_read_from_the_shapes():
    with torch.device("meta"):
        sd = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0).state_dict()
    cfg = vit_config(sd)
    assert (cfg.img_size, cfg.patch_size, cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.mlp_ratio) == (224, 16, 768, 12, 12, 4.0)
    with torch.device("meta"):
        sd = timm.create_model("vit_large_patch16_224", pretrained=False, num_classes=0).state_dict()
    assert (vit_config(sd).depth, vit_config(sd).num_heads) == (24, 16)


def test_pretrain_student_official_writes_the_same_weights_as_import_student(tmp_path):
    ref = reference()
    torch.save({"model": ref.state_dict()}, tmp_path / "mae.pth")
    params = tmp_path / "p.yaml"
    params.write_text("run: {seed: 0, threads: 1}\nencoder: {img_size: 16, patch_size: 8, embed_dim: 32, depth: 1, num_heads: 2}\n"
                      "official: {}\n")
    runner = CliRunner()
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    r = runner.invoke(main, ["pretrain-student", "--params", str(params), "--method", "official", "--name", "mae_official",
                             "--data", str(tmp_path), "--input", str(tmp_path / "mae.pth"), "--out", str(a),
                             "--run", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    assert runner.invoke(main, ["import-student", str(tmp_path / "mae.pth"), "--out", str(b)]).exit_code == 0
    fa, fb = EncoderFile.read(a), EncoderFile.read(b)
    assert fa.config == fb.config and fa.config.embed_dim == 192  # the checkpoint's own architecture, not the section's
    assert all(torch.equal(fa.state[k], fb.state[k]) for k in fb.state) and set(fa.state) == set(fb.state)
    assert fa.metadata["pretrain_epochs"] == "official" and fa.metadata["student"] == "mae_official"


def test_bad_official_checkpoints_are_one_line(tmp_path):
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), tmp_path / "rn.pth")
    with pytest.raises(MimError, match="not a ViT checkpoint in the MAE, DINO or BEiT layout"):
        convert(tmp_path / "rn.pth")
    with pytest.raises(MimError, match="official checkpoint not found"):
        convert(tmp_path / "missing.pth")
    ref = reference()
    torch.save({"model": ref.state_dict()}, tmp_path / "mae.pth")
    with pytest.raises(MimError, match="it is in the mae layout, not dino"):
        convert(tmp_path / "mae.pth", layout="dino")
    odd = VisionTransformer(img_size=16, patch_size=8, embed_dim=40, depth=1, num_heads=4, num_classes=0)
    torch.save(odd.state_dict(), tmp_path / "odd.pth")
    with pytest.raises(MimError, match="width 40 is not a standard ViT size; give the number of heads"):
        convert(tmp_path / "odd.pth")
    assert convert(tmp_path / "odd.pth", num_heads=4).config.num_heads == 4
    (tmp_path / "cut.pth").write_bytes((tmp_path / "mae.pth").read_bytes()[:200])
    with pytest.raises(MimError, match="cannot read official checkpoint"):
        convert(tmp_path / "cut.pth")


def test_teacher_resnet50_equals_torchvisions_the_architecture_dino_trained(tmp_path):
    """DINO's ResNet-50 is torchvision's (main_dino.py: torchvision_models.resnet50, fc = Identity);
    the teacher file is timm's resnet50: the same weights give the same features."""
    import torchvision

    from mim.teacher.frozen import load_teacher
    from mim.teacher.official_dino import import_teacher

    torch.manual_seed(1)
    tv = torchvision.models.resnet50(weights=None)
    with torch.no_grad():  # non-trivial batch-norm statistics, so eval mode uses them
        for name, buf in tv.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
    tv.fc = torch.nn.Identity()
    torch.save(tv.state_dict(), tmp_path / "dino_resnet50_pretrain.pth")
    import_teacher(tmp_path / "dino_resnet50_pretrain.pth", tmp_path / "t.safetensors")
    ours = load_teacher(tmp_path / "t.safetensors").backbone.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(ours(x).mean((2, 3)), tv.eval()(x), atol=1e-5)


BEIT_LAYOUTS = {  # unilm/beit: pretraining (run_beit_pretraining.py --rel_pos_bias --layer_scale_init_value 0.1),
    "pretraining, shared table": dict(use_shared_rel_pos_bias=True, use_rel_pos_bias=False, use_abs_pos_emb=False),
    "fine-tuning, per-layer tables": dict(use_shared_rel_pos_bias=False, use_rel_pos_bias=True, use_abs_pos_emb=False),
    "absolute position, no table": dict(use_shared_rel_pos_bias=False, use_rel_pos_bias=False, use_abs_pos_emb=True),
}


@pytest.mark.parametrize("case", list(BEIT_LAYOUTS))
def test_beit_checkpoints_give_timms_beit_features(tmp_path, case):
    from timm.models.beit import Beit

    torch.manual_seed(0)
    ref = Beit(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=0, init_values=0.1,
               use_fc_norm=False, **BEIT_LAYOUTS[case]).eval()
    with torch.no_grad():  # tables and gammas start at constants: make every tensor count
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model = dict(ref.state_dict())
    for name, buf in ref.named_buffers():  # unilm saves its index buffers; they are rebuilt, not loaded
        if name.endswith("relative_position_index"):
            model[name] = buf
    model |= {"mask_token": torch.zeros(1, 1, 64), "lm_head.weight": torch.randn(8192, 64), "lm_head.bias": torch.zeros(8192)}
    torch.save({"model": model}, tmp_path / "beit.pth")
    out = tmp_path / "e.safetensors"
    heads = ["--num-heads", "4"] if "absolute" in case else []  # else read from the table: width 64 is no ViT size
    r = CliRunner().invoke(main, ["import-student", str(tmp_path / "beit.pth"), "--out", str(out), *heads])
    assert r.exit_code == 0, r.output
    assert "(beit: ViT width 64, depth 2, 4 heads, patch 8, 32 px)" in r.output
    f = EncoderFile.read(out)
    assert f.config.rel_pos_bias == ("none" if "absolute" in case else "per_layer") and f.config.abs_pos == ("absolute" in case)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(f.build().eval().forward_features(x), ref.forward_features(x), atol=1e-5)
