from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

from imagefolders import make_imagenet
from mim.checkpoint import load_checkpoint
from mim.encoder_file import EncoderFile, save_encoder
from mim.engine import OptimConfig, RunConfig, fit
from mim.errors import MimError
from mim.masking import blockwise_mask
from mim.methods import Inputs, beit
from mim.methods.beit import BEiT, Config, DataConfig, ModelConfig, check_config, num_masked
from mim.tokenizer.frozen import save_tokenizer, vqvae_tokenizer
from mim.tokenizer.vqvae import VQVAE
from mim.tokenizer.vqvae import ModelConfig as VQVAEConfig
from mim.vit import ViTConfig

ENC = ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)


@pytest.mark.parametrize("grid,count,min_patches", [(14, 75, 16), (8, 26, 4), (4, 15, 2)])
def test_blockwise_mask_exact_count_and_block_shapes(grid, count, min_patches):
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        m = blockwise_mask(grid, grid, count, min_num_patches=min_patches, min_aspect=0.3, generator=g)
        assert m.mask.shape == (grid, grid) and int(m.mask.sum()) == count
        union = torch.zeros_like(m.mask)
        for top, left, h, w in m.blocks:
            assert h * w >= min_patches and 0.3 <= h / w <= 1 / 0.3
            assert top >= 0 and left >= 0 and top + h <= grid and left + w <= grid
            union[top : top + h, left : left + w] = True
        assert (m.mask | union).equal(m.mask) and int(union.sum()) + m.filled == count  # fills only outside blocks


def test_blockwise_mask_is_blockwise_and_seeded():
    a = blockwise_mask(14, 14, 75, generator=torch.Generator().manual_seed(1))
    b = blockwise_mask(14, 14, 75, generator=torch.Generator().manual_seed(1))
    assert a.mask.equal(b.mask) and a.blocks == b.blocks
    assert len(a.blocks) <= 75 // 16 + 4  # a handful of blocks, not scattered patches
    with pytest.raises(ValueError):
        blockwise_mask(4, 4, 17)


def test_mask_embedding_only_at_masked_positions():
    torch.manual_seed(0)
    model = BEiT(ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=0, num_heads=2), vocab_size=16).eval()
    imgs = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[0, 1, 2] = mask[1, 0, :] = True
    feats = model.forward_encoder(imgs, mask)[:, 1:]  # (N, L, D), depth 0: per-position
    plain = model.encoder.forward_features(imgs)[:, 1:]
    m = mask.flatten(1)
    assert torch.allclose(feats[~m], plain[~m], atol=1e-6)
    pos = model.encoder.pos_embed[0, 1:].expand(2, -1, -1)[m]
    expected = model.encoder.norm(model.mask_token[0] + pos)
    assert torch.allclose(feats[m], expected, atol=1e-6)
    assert not torch.allclose(feats[m], plain[m])


def test_loss_ignores_unmasked_positions():
    torch.manual_seed(0)
    model = BEiT(ENC, vocab_size=16).eval()
    imgs = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[:, :2, :2] = True
    ids = torch.randint(16, (2, 4, 4))
    loss, logs = model(imgs, ids, mask)
    other = ids.clone()
    other[~mask] = (other[~mask] + 1) % 16
    assert torch.equal(model(imgs, other, mask)[0], loss)
    feats = model.forward_encoder(imgs, mask)[:, 1:]
    manual = F.cross_entropy(model.head(feats[mask.flatten(1)]), ids[mask])
    assert torch.allclose(loss, manual, atol=1e-6) and 0 <= float(logs["mask_acc"]) <= 1
    other = ids.clone()
    other[0, 0, 0] = (other[0, 0, 0] + 1) % 16
    assert not torch.equal(model(imgs, other, mask)[0], loss)


def test_mask_ratio_is_a_fraction_rounded_to_a_count():
    assert num_masked(ModelConfig(mask_ratio=0.383), 14) == 75  # BEiT's 75 of 196
    assert num_masked(ModelConfig(mask_ratio=0.4), 8) == 26  # smoke: 26 of 64
    cfg = Config(model=ModelConfig(mask_ratio=0.0, min_num_patches=1), optim=OptimConfig(epochs=1, batch_size=4, base_lr=1e-3))
    tok = vqvae_tokenizer(VQVAE(VQVAEConfig(image_size=16, downsample=4, vocab_size=32, code_dim=8, hidden=16)))
    with pytest.raises(MimError, match="masks 0 of 16 patches"):
        check_config(cfg, ENC, tok)


@pytest.mark.parametrize("rel_pos", ["shared", "none"])
def test_pretrain_resumes_identically_and_exports_timm_keys(tmp_path, rel_pos):
    """BEiT's official position (shared relative bias, no absolute table: the default) and the
    sin-cos one (smoke/micro) both train, resume bit-identically and export timm's keys."""
    torch.manual_seed(0)
    tok = vqvae_tokenizer(VQVAE(VQVAEConfig(image_size=16, downsample=4, vocab_size=32, code_dim=8, hidden=16)))
    save_tokenizer(tmp_path / "tok.safetensors", tok)
    model = ModelConfig(mask_ratio=0.4, min_num_patches=2) if rel_pos == "shared" else \
        ModelConfig(mask_ratio=0.4, min_num_patches=2, rel_pos_bias="none", abs_pos=True)
    cfg = Config(model=model, data=DataConfig(), optim=OptimConfig(epochs=2, batch_size=4, base_lr=1e-3, betas=(0.9, 0.999)))
    run = RunConfig(seed=2)
    data = make_imagenet(tmp_path / "imgs", classes=2, train=4, val=1, size=40)
    inputs = Inputs(encoder=ENC, run=run, data=data, input=tmp_path / "tok.safetensors")

    def train(where: Path, crash: bool = False):
        task = beit.task(cfg, inputs)
        if crash:
            task.evaluate = lambda epoch: (_ for _ in ()).throw(KeyboardInterrupt) if epoch == 1 else {}
        metrics = fit(task, run, checkpoint=where / "b.pt", log_dir=where / "logs", config={"c": 1}, desc="b")
        return task, metrics

    full, metrics = train(tmp_path / "a")
    assert "train/mask_acc" in metrics and metrics["train/loss"] > 0
    assert full.info == {"tokenizer": "vqvae"}
    no_decay = {id(p) for g in full.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert id(full.model.mask_token) in no_decay and id(full.model.encoder.cls_token) in no_decay
    assert id(full.model.head.weight) not in no_decay
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "b", crash=True)
    assert load_checkpoint(tmp_path / "b" / "b.pt")["epoch"] == 0
    resumed, _ = train(tmp_path / "b")
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    trained = full.model.encoder
    assert trained.cfg.rel_pos_bias == rel_pos and (trained.pos_embed is None) == (rel_pos == "shared")
    if rel_pos == "shared":  # the shared table trained (zero at init, unilm/beit) and is weight-decayed (2-D, as BEiT's)
        table = trained.rel_pos_bias.relative_position_bias_table
        assert table.abs().sum() > 0 and id(table) not in no_decay
    save_encoder(tmp_path / "enc.safetensors", trained)
    enc = EncoderFile.read(tmp_path / "enc.safetensors").build().eval()
    assert enc.cfg.layer_scale == 0.1
    small = dict(pretrained=False, num_classes=0, img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
    if rel_pos == "shared":
        assert enc.cfg.rel_pos_bias == "per_layer" and not enc.cfg.abs_pos
        vit = timm.create_model("beit_base_patch16_224", use_fc_norm=False, **small)
    else:
        vit = timm.create_model("vit_tiny_patch16_224", init_values=0.1, **small)
    vit.load_state_dict(enc.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(vit.eval().forward_features(x), trained.eval()(x), atol=1e-5)


def test_tokenizer_grid_must_match_the_patch_grid():
    tok = vqvae_tokenizer(VQVAE(VQVAEConfig(image_size=32, downsample=4, vocab_size=32, code_dim=8, hidden=16)))
    cfg = Config(model=ModelConfig(mask_ratio=0.4, min_num_patches=2), optim=OptimConfig(epochs=1, batch_size=4, base_lr=1e-3))
    with pytest.raises(MimError, match="tokenizer.model.image_size = 16"):
        check_config(cfg, ENC, tok)


def test_mask_embedding_without_absolute_position():
    """BEiT's official input (unilm/beit modeling_pretrain.py): mask embedding, no position table added."""
    torch.manual_seed(0)
    enc = ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, abs_pos=False, rel_pos_bias="shared")
    model = BEiT(enc, vocab_size=16).eval()
    assert model.encoder.pos_embed is None
    imgs = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[0, 1, 2] = True
    with torch.no_grad():
        x = model.encoder.patch_embed(imgs)
        x[0, 6] = model.mask_token[0, 0]
        x = torch.cat([model.encoder.cls_token.expand(2, -1, -1), x], dim=1)
        expected = model.encoder.norm(model.encoder.blocks[0](x, shared_rel_pos_bias=model.encoder.rel_pos_bias()))
        assert torch.allclose(model.forward_encoder(imgs, mask), expected, atol=1e-6)


def test_position_defaults_are_beits_and_profiles_choose():
    """The defaults are BEiT's pretraining (shared relative bias, no absolute table, LayerScale 0.1);
    the paper profile keeps them, smoke and micro keep the sin-cos encoder; no position at all is refused."""
    from stages.common import load

    root = Path(__file__).resolve().parents[1]
    m = ModelConfig()
    assert (m.rel_pos_bias, m.abs_pos, m.layer_scale) == ("shared", False, 0.1)
    for profile, want in (("paper", ("shared", False)), ("smoke", ("none", True)), ("micro", ("none", True))):
        cfg = load(root / f"params/{profile}.yaml", "beit", Config)
        enc = beit.encoder_config(cfg, load(root / f"params/{profile}.yaml", "encoder", ViTConfig))
        assert (enc.rel_pos_bias, enc.abs_pos) == want, profile
    bad = Config(model=ModelConfig(rel_pos_bias="none", abs_pos=False), optim=OptimConfig(epochs=1, batch_size=4, base_lr=1e-3))
    assert beit.check(bad, ViTConfig())[0][0] == "model.abs_pos"


def test_the_fixed_shape_gather_is_the_boolean_gather():
    """BEiT(num_masked=K) gathers K positions per image (no host sync, one shape): the same loss and
    accuracy, bit for bit, as indexing with the boolean mask."""
    torch.manual_seed(0)
    model = BEiT(ENC, vocab_size=16).eval()
    fixed = BEiT(ENC, vocab_size=16, num_masked=5).eval()
    fixed.load_state_dict(model.state_dict())
    g = torch.Generator().manual_seed(3)
    mask = torch.stack([blockwise_mask(4, 4, 5, generator=g).mask for _ in range(3)])  # 5 of 16 in each
    imgs, ids = torch.randn(3, 3, 32, 32), torch.randint(16, (3, 4, 4))
    a, b = model(imgs, ids, mask), fixed(imgs, ids, mask)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["mask_acc"], b[1]["mask_acc"])
