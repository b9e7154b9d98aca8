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
