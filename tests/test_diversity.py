import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from imagefolders import make_imagenet
from mim.encoder_file import save_encoder
from mim.errors import MimError
from mim.eval.diversity import DiversityMeter, token_diversity
from mim.report.teachers import write_teacher_table
from mim.teacher.frozen import save_timm_backbone, timm_backbone
from mim.vit import ViTConfig, ViTEncoder


def reference_diversity(tokens: torch.Tensor) -> list[float]:
    """Slow double loop over token pairs i != k, straight from the Img2Vec formula."""
    out = []
    for img in tokens.double():
        k = img.shape[0]
        total = 0.0
        for i in range(k):
            for j in range(k):
                if i != j:
                    total += float(torch.nn.functional.cosine_similarity(img[i], img[j], dim=0))
        out.append(1.0 - total / (k * (k - 1)))
    return out


def test_identical_tokens_have_zero_diversity():
    t = torch.randn(3, 1, 16).expand(3, 9, 16)
    assert torch.allclose(token_diversity(t), torch.zeros(3, dtype=torch.float64), atol=1e-12)


def test_orthogonal_tokens_have_diversity_one():
    t = torch.eye(8).unsqueeze(0) * torch.tensor([1.0, 3.0]).view(2, 1, 1)  # (2, 8, 8), any scale
    assert torch.allclose(token_diversity(t), torch.ones(2, dtype=torch.float64))


def test_matches_double_loop_reference():
    torch.manual_seed(0)
    t = torch.randn(4, 7, 5) + 0.5
    assert np.allclose(token_diversity(t).numpy(), reference_diversity(t), atol=1e-10)


def test_meter_streams_mean_and_std():
    torch.manual_seed(1)
    t = torch.randn(10, 2, 3, 6)  # grids (N, h, w, C)
    meter = DiversityMeter()
    for chunk in t.split(3):
        meter.update(chunk)
    per_image = torch.tensor(reference_diversity(t.flatten(1, 2)))
    r = meter.result()
    assert r["num_images"] == 10 and r["tokens_per_image"] == 6
    assert np.isclose(r["diversity"], per_image.mean().item()) and np.isclose(r["std"], per_image.std(unbiased=False).item())
    with pytest.raises(MimError, match="at least 2 tokens"):
        token_diversity(torch.randn(2, 1, 4))


PARAMS = """
run: {seed: 0, num_workers: 0, amp: false, threads: 0}
diversity: {img_size: 64, batch_size: 4, split: val, limit_per_class: 0}
"""


def test_stage_scores_cnn_and_vit_teachers(tmp_path, monkeypatch):
    from stages.cli import main

    make_imagenet(tmp_path / "img", classes=2, train=1, val=3, size=40)
    (tmp_path / "p.yaml").write_text(PARAMS)
    save_timm_backbone(tmp_path / "cnn.safetensors", timm_backbone("test_resnet"), "test_resnet")
    save_encoder(tmp_path / "vit.safetensors", ViTEncoder(ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2)))
    save_timm_backbone(tmp_path / "tvit.safetensors", timm_backbone("test_vit"), "test_vit")
    monkeypatch.chdir(tmp_path)
    # CNN at img_size 64 -> 2x2; our ViT at its own 32 px -> 4x4; timm ViT at its 160 px -> 10x10, no cls
    for name, n_tok in (("cnn", 4), ("vit", 16), ("tvit", 100)):
        args = ["token-diversity", "--params", "p.yaml", "--data", "img", "--metrics", f"{name}.json", "--weights", f"{name}.safetensors"]
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 0, res.output
        m = json.loads(Path(f"{name}.json").read_text())
        assert m["num_images"] == 6 and m["tokens_per_image"] == n_tok and 0 <= m["diversity"] <= 2 and m["params_m"] > 0
    args = ["token-diversity", "--params", "p.yaml", "--data", "img", "--metrics", "x.json", "--weights", "none.st"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 1 and "not found" in res.output


def test_teacher_table(tmp_path):
    m = tmp_path / "metrics"
    (m / "diversity").mkdir(parents=True)
    (m / "finetune").mkdir()
    (m / "diversity" / "dino_rn50.json").write_text(
        json.dumps({"diversity": 0.6, "std": 0.05, "params_m": 23.5, "tokens_per_image": 49, "num_images": 10}))
    (m / "diversity" / "mae_vit.json").write_text(
        json.dumps({"diversity": 0.3, "std": 0.02, "params_m": 85.8, "tokens_per_image": 196, "num_images": 10}))
    (m / "finetune" / "img2vec-mae_vit.json").write_text(json.dumps({"top1": 71.25}))
    rows = write_teacher_table(m, tmp_path / "results")
    assert [r["teacher"] for r in rows] == ["dino_rn50", "mae_vit"]
    md = (tmp_path / "results" / "teachers.md").read_text()
    assert "| dino_rn50 | 23.5 | 49 | 0.600 ± 0.050 | not run |" in md and "| mae_vit | 85.8 | 196 | 0.300 ± 0.020 | 71.2 |" in md
    csv = (tmp_path / "results" / "teachers.csv").read_text().splitlines()
    assert csv[0].startswith("teacher,params_m") and csv[2].endswith(",71.25") and csv[1].endswith(",not run")
    assert (tmp_path / "results" / "plots" / "teacher_diversity.png").read_bytes()[:4] == b"\x89PNG"
    (m / "finetune" / "img2vec.json").write_text(json.dumps({"acc1": 60.0}))  # default teacher's student
    assert write_teacher_table(m, tmp_path / "results")[0]["student_top1"] == 60.0
