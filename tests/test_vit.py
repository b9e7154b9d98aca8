import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file

from mim.encoder_file import EncoderFile, save_encoder
from mim.errors import MimError
from mim.vit import ViTConfig, ViTEncoder, sincos_pos_embed, vit_base, vit_large, vit_tiny


def small() -> ViTEncoder:
    return ViTEncoder(ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2))


def test_patchify_roundtrip_and_order():
    enc = small()
    x = torch.randn(2, 3, 32, 32)
    patches = enc.patchify(x)  # (N, L, p*p*C)
    assert patches.shape == (2, 16, 8 * 8 * 3)
    assert torch.equal(enc.unpatchify(patches), x)
    # patch 1 is the second patch of the first row, channels last
    assert torch.equal(patches[0, 1].view(8, 8, 3), x[0, :, 0:8, 8:16].permute(1, 2, 0))


def test_sincos_known_values():
    """dim 8 on a 2x2 grid: per axis, frequencies 1 and 1/100 (10000 ** -(i / 2)), [sin, sin, cos, cos];
    the first half of the channels encodes the patch's row, the second its column.  (MAE's
    util/pos_embed.py puts the column first: the same table with the halves swapped, statistically
    equivalent for a model trained here, and a checkpoint brings its own table.)"""
    s1, s01, c1, c01 = np.sin(1.0), np.sin(0.01), np.cos(1.0), np.cos(0.01)
    axis0, axis1 = [0, 0, 1, 1], [s1, s01, c1, c01]  # position 0 and position 1 of one axis
    expected = np.array([
        [0.0] * 8,  # cls
        axis0 + axis0,  # row 0, column 0
        axis0 + axis1,  # row 0, column 1
        axis1 + axis0,  # row 1, column 0
        axis1 + axis1,  # row 1, column 1
    ], dtype=np.float32)
    assert np.allclose(sincos_pos_embed(8, 2), expected, atol=1e-7)
    assert np.allclose(sincos_pos_embed(8, 2, cls_token=False), expected[1:], atol=1e-7)
    assert not small().pos_embed.requires_grad and torch.allclose(small().pos_embed[0], torch.from_numpy(sincos_pos_embed(32, 4)))


def test_keep_subset_equals_full_on_kept_when_depth_zero():
    enc = ViTEncoder(ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=0, num_heads=2)).eval()
    x = torch.randn(2, 3, 32, 32)
    ids = torch.tensor([[0, 5, 7], [3, 2, 15]])
    full = enc.forward_features(x)[:, 1:]
    part = enc.forward_features(x, ids)[:, 1:]
    assert torch.allclose(part, torch.gather(full, 1, ids.unsqueeze(-1).expand(-1, -1, 32)), atol=1e-6)


def test_export_loads_into_timm_strictly(tmp_path):
    enc = vit_tiny().eval()
    save_encoder(tmp_path / "e.safetensors", enc)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0).eval()
    missing, unexpected = model.load_state_dict(load_file(tmp_path / "e.safetensors"), strict=True)
    assert not missing and not unexpected
    x = torch.randn(1, 3, 224, 224)
    assert torch.allclose(model.forward_features(x), enc(x), atol=1e-5)
    f = EncoderFile.read(tmp_path / "e.safetensors")
    assert torch.equal(f.build().eval()(x), enc(x))
    assert f.config == enc.cfg and f.metadata["format"].startswith("mimrepro-vit-encoder")
    import hashlib

    assert f.sha256 == hashlib.sha256((tmp_path / "e.safetensors").read_bytes()).hexdigest()
    assert EncoderFile.read(tmp_path / "e.safetensors") is f  # read once: the same unchanged file is not read again
    assert f.build(drop_path=0.2).cfg.drop_path == 0.2


def test_bad_encoder_file_is_clear(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(MimError, match="cannot read encoder"):
        EncoderFile.read(bad)
    with pytest.raises(MimError, match="not found"):
        EncoderFile.read(tmp_path / "missing.safetensors")


@pytest.mark.parametrize("ctor, millions", [(vit_base, 85.8), (vit_large, 303.1)])
def test_paper_sizes_param_counts_on_meta(ctor, millions):
    with torch.device("meta"):
        enc = ctor()
    n = sum(p.numel() for p in enc.parameters() if p.requires_grad)
    assert abs(n / 1e6 - millions) < 0.2, n
