import pytest
import torch

from mim.encoder_file import save_encoder
from mim.errors import MimError
from mim.teacher.frozen import load_teacher, save_timm_backbone, timm_backbone
from mim.vit import ViTConfig, ViTEncoder


def test_resnet_teacher_tokens_grid_and_frozen(tmp_path):
    model = timm_backbone("resnet18")
    save_timm_backbone(tmp_path / "t.safetensors", model, "resnet18")
    t = load_teacher(tmp_path / "t.safetensors")
    t.train()
    assert not t.training and not any(p.requires_grad for p in t.parameters())
    tok = t.tokens(torch.randn(2, 3, 64, 64))
    assert t.stride == 32 and tok.shape == (2, 2, 2, 512) and t.dim == 512


def test_vit_teacher_drops_cls(tmp_path):
    enc = ViTEncoder(ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2))
    save_encoder(tmp_path / "v.safetensors", enc)
    t = load_teacher(tmp_path / "v.safetensors")
    x = torch.randn(1, 3, 32, 32)
    tok = t.tokens(x)
    assert tok.shape == (1, 4, 4, 32)
    assert torch.allclose(tok.reshape(1, 16, 32), enc.eval().forward_features(x)[:, 1:])


def test_teacher_errors(tmp_path):
    with pytest.raises(MimError, match="not found"):
        load_teacher(tmp_path / "none.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"xx")
    with pytest.raises(MimError, match="cannot read teacher"):
        load_teacher(tmp_path / "bad.safetensors")


def test_teacher_table_cells_say_why_they_are_empty(tmp_path):
    """results/teachers.{md,csv}: `not run` for a teacher whose Img2Vec student has no fine-tune
    metrics yet, `n/a` for a value its diversity file lacks; numbers where they exist."""
    import json

    from mim.report.teachers import write_teacher_table

    m = tmp_path / "metrics"
    (m / "diversity").mkdir(parents=True)
    (m / "finetune").mkdir()
    (m / "diversity" / "dino_rn50.json").write_text(json.dumps({"diversity": 0.6, "std": 0.05, "tokens_per_image": 49}))
    (m / "diversity" / "mae_vit.json").write_text(
        json.dumps({"diversity": 0.3, "std": 0.02, "params_m": 85.8, "tokens_per_image": 196, "num_images": 10}))
    (m / "finetune" / "img2vec-mae_vit.json").write_text(json.dumps({"top1": 71.25}))
    write_teacher_table(m, tmp_path / "results", "embedded 10-class")
    md = (tmp_path / "results" / "teachers.md").read_text()
    assert "| dino_rn50 | n/a | 49 | 0.600 ± 0.050 | not run |" in md and "| mae_vit | 85.8 | 196 | 0.300 ± 0.020 | 71.2 |" in md
    assert "with that teacher on embedded 10-class" in md
    assert (tmp_path / "results" / "teachers.csv").read_text().splitlines() == [
        "teacher,params_m,tokens_per_image,diversity,diversity_std,num_images,student_top1",
        "dino_rn50,n/a,49,0.6,0.05,n/a,not run",
        "mae_vit,85.8,196,0.3,0.02,10,71.25",
    ]


def test_teacher_table_before_token_diversity_has_run(tmp_path):
    """The tables stage writes all its outputs whatever has run: no diversity metrics, no rows."""
    from mim.report.teachers import write_teacher_table

    assert write_teacher_table(tmp_path / "metrics", tmp_path / "results") == []
    md = (tmp_path / "results" / "teachers.md").read_text().splitlines()
    assert md[-3:] == ["|---|---:|---:|---:|---:|", "", "token-diversity not run: no metrics/diversity/<teacher>.json yet."]
    assert (tmp_path / "results" / "teachers.csv").read_text() == (
        "teacher,params_m,tokens_per_image,diversity,diversity_std,num_images,student_top1\n")
    assert (tmp_path / "results" / "plots" / "teacher_diversity.png").read_bytes()[:4] == b"\x89PNG"
