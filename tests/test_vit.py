import dataclasses
import json

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file

from mim.encoder_file import EncoderFile, save_encoder
from mim.errors import MimError
from mim.vit import ViTConfig, ViTEncoder, per_layer_state, sincos_pos_embed, vit_base, vit_large, vit_tiny


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
    the first half of the channels encodes the patch's column, the second its row, as MAE's
    util/pos_embed.py does (its `emb_h` is computed from `grid[0]` of `np.meshgrid(grid_w, grid_h)`)."""
    s1, s01, c1, c01 = np.sin(1.0), np.sin(0.01), np.cos(1.0), np.cos(0.01)
    axis0, axis1 = [0, 0, 1, 1], [s1, s01, c1, c01]  # position 0 and position 1 of one axis
    expected = np.array([
        [0.0] * 8,  # cls
        axis0 + axis0,  # row 0, column 0
        axis1 + axis0,  # row 0, column 1: the column half first
        axis0 + axis1,  # row 1, column 0
        axis1 + axis1,  # row 1, column 1
    ], dtype=np.float32)
    assert np.allclose(sincos_pos_embed(8, 2), expected, atol=1e-7)
    assert np.allclose(sincos_pos_embed(8, 2, cls_token=False), expected[1:], atol=1e-7)
    assert not small().pos_embed.requires_grad and torch.allclose(small().pos_embed[0], torch.from_numpy(sincos_pos_embed(32, 4)))


def test_sincos_equals_mae_table_at_vit_b():
    """ViT-B/16 at 224 (768 channels, 14x14): MAE's get_2d_sincos_pos_embed, written out step by
    step as in facebookresearch/mae util/pos_embed.py, gives the same table."""
    dim, size = 768, 14
    grid = np.stack(np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32)), axis=0).reshape(2, 1, size, size)

    def one_d(d: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    mae = np.concatenate([np.zeros([1, dim]), np.concatenate([one_d(dim // 2, grid[0]), one_d(dim // 2, grid[1])], axis=1)], axis=0)
    assert np.allclose(sincos_pos_embed(dim, size), mae, atol=1e-6)


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


# --- timm equivalence (issue 17 item 8) and BEiT's relative position bias ----------------------
def _perturbed(enc: ViTEncoder) -> ViTEncoder:
    """No zero biases, unit gammas or zero tables that could hide a misplaced weight."""
    g = torch.Generator().manual_seed(1)
    for p in enc.parameters():
        p.data.add_(torch.randn(p.shape, generator=g) * 0.05)
    return enc.eval()


SMALL = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
BEIT = ViTConfig(**SMALL, layer_scale=0.1, abs_pos=False, rel_pos_bias="shared")


@pytest.mark.parametrize("layer_scale", [None, 0.1])
def test_vit_equals_timm_vision_transformer(tmp_path, layer_scale):
    enc = _perturbed(ViTEncoder(ViTConfig(**SMALL, layer_scale=layer_scale)))
    save_encoder(tmp_path / "e.safetensors", enc)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, init_values=layer_scale, **SMALL).eval()
    missing, unexpected = model.load_state_dict(load_file(tmp_path / "e.safetensors"), strict=True)
    assert not missing and not unexpected
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.forward_features(x), enc(x), atol=1e-5)


def test_beit_encoder_equals_timm_beit(tmp_path):
    """The shared-bias encoder is written per layer and timm's Beit (abs pos off, per-layer rel pos,
    LayerScale: beit_base_patch16_224's settings at a small size) loads it strictly, with equal outputs;
    timm's shared-bias Beit loads the in-memory weights, also with equal outputs."""
    enc = _perturbed(ViTEncoder(BEIT))
    save_encoder(tmp_path / "e.safetensors", enc)
    state = load_file(tmp_path / "e.safetensors")
    assert "rel_pos_bias.relative_position_bias_table" not in state and "pos_embed" not in state
    x = torch.randn(2, 3, 32, 32)
    per_layer = timm.create_model("beit_base_patch16_224", pretrained=False, num_classes=0, use_fc_norm=False, **SMALL).eval()
    per_layer.load_state_dict(state, strict=True)
    shared = timm.create_model("beit_base_patch16_224", pretrained=False, num_classes=0, use_fc_norm=False, **SMALL,
                               use_rel_pos_bias=False, use_shared_rel_pos_bias=True).eval()
    shared.load_state_dict(enc.state_dict(), strict=True)
    with torch.no_grad():
        ours = enc(x)
        assert torch.allclose(per_layer.forward_features(x), ours, atol=1e-5)
        assert torch.allclose(shared.forward_features(x), ours, atol=1e-5)
        assert not torch.allclose(ViTEncoder(dataclasses.replace(BEIT, rel_pos_bias="none", abs_pos=True)).eval()(x), ours)


def test_shared_bias_expanded_per_layer_is_the_same_function(tmp_path):
    enc = _perturbed(ViTEncoder(BEIT))
    table = enc.rel_pos_bias.relative_position_bias_table
    assert table.shape == ((2 * 4 - 1) ** 2 + 3, 2)  # (2g-1)^2 offsets + cls->token, token->cls, cls->cls; per head
    cfg, state = per_layer_state(enc.cfg, enc.state_dict())
    assert cfg.rel_pos_bias == "per_layer" and all(
        torch.equal(state[f"blocks.{i}.attn.relative_position_bias_table"], table) for i in range(2))
    expanded = ViTEncoder(cfg).eval()
    expanded.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, 3:9] = True
    token = torch.randn(1, 1, 32)
    same = dict(atol=1e-5, rtol=0)  # the same function; SDPA rounds a (1, H, N, N) and an (H, N, N) bias apart by an ulp
    with torch.no_grad():
        assert torch.allclose(expanded(x), enc(x), **same)
        assert torch.allclose(expanded.forward_with_mask_token(x, mask, token), enc.forward_with_mask_token(x, mask, token), **same)
        a, b = expanded.forward_blocks(expanded.add_cls(expanded.embed(x)), return_all=True), enc.forward_blocks(
            enc.add_cls(enc.embed(x)), return_all=True)
        assert len(a) == 2 and all(torch.allclose(u, v, **same) for u, v in zip(a, b))
        table.add_(torch.randn(table.shape, generator=torch.Generator().manual_seed(2)))  # the bias is used: another table, other outputs
        assert not torch.allclose(expanded(x), enc(x))


def test_rel_pos_encoder_file_round_trips(tmp_path):
    enc = _perturbed(ViTEncoder(BEIT))
    save_encoder(tmp_path / "e.safetensors", enc)
    f = EncoderFile.read(tmp_path / "e.safetensors")
    assert f.config == dataclasses.replace(BEIT, rel_pos_bias="per_layer")
    assert json.loads(f.metadata["vit"])["rel_pos_bias"] == "per_layer" and json.loads(f.metadata["vit"])["abs_pos"] is False
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(f.build().eval()(x), enc(x), atol=1e-5, rtol=0)
    built = f.build(drop_path=0.1)
    assert built.pos_embed is None and built.cfg.drop_path == 0.1 and built.blocks[1].drop_path1.drop_prob == 0.1


def test_position_signal_rules():
    assert ("abs_pos", "false with rel_pos_bias none leaves the encoder no position signal") in \
        ViTConfig(**SMALL, abs_pos=False).problems()
    assert not ViTConfig(**{**SMALL, "embed_dim": 30}, abs_pos=False, rel_pos_bias="per_layer").problems()  # no sin-cos: any width
    enc = ViTEncoder(BEIT)
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(MimError, match="token dropping"):
        enc.forward_features(x, torch.tensor([[0, 1, 2]]))
    with pytest.raises(MimError, match="sees every patch"):
        enc.forward_blocks(enc.add_cls(enc.embed(x)[:, :3]))


def test_beit_b_has_timm_beit_base_keys_on_meta():
    """ViT-B/16 with BEiT's position (per layer, as written to disk) has exactly the parameters of
    timm's beit_base_patch16_224 (86M, unilm/beit README), name by name and shape by shape."""
    with torch.device("meta"):
        ours = vit_base(layer_scale=0.1, abs_pos=False, rel_pos_bias="per_layer").state_dict()
        shared = vit_base(layer_scale=0.1, abs_pos=False, rel_pos_bias="shared").state_dict()
        theirs = timm.create_model("beit_base_patch16_224", pretrained=False, num_classes=0, use_fc_norm=False).state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    assert abs(sum(v.numel() for v in ours.values()) / 1e6 - 85.76) < 0.01
    assert set(per_layer_state(vit_base().cfg, shared)[1]) != set(ours)  # a plain config leaves the state alone
    cfg = dataclasses.replace(vit_base().cfg, layer_scale=0.1, abs_pos=False, rel_pos_bias="shared")
    assert set(per_layer_state(cfg, shared)[1]) == set(ours)
