import dataclasses
from pathlib import Path

import pytest
import timm
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from imagefolders import make_imagenet
from mim.checkpoint import load_checkpoint, save_checkpoint
from mim.encoder_file import EncoderFile, save_encoder
from mim.engine import OptimConfig
from mim.masking import gather_tokens, random_mask_ids, random_masking
from mim.methods.mae import MAE, Config, MAEWithMaskTokensInEncoder
from mim.methods.mae import ModelConfig as MAEConfig
from mim.vit import ViTConfig, vit_config
from stages.cli import main
from stages.common import load

ENC = ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
SMALL = MAEConfig(decoder_dim=32, decoder_depth=1, decoder_heads=2)


@pytest.mark.parametrize("length, ratio", [(16, 0.75), (196, 0.75), (49, 0.6), (10, 0.33), (4, 0.0)])
def test_masking_keeps_exact_count_and_restore_inverts(length, ratio):
    torch.manual_seed(0)
    ids_keep, mask, ids_restore = random_mask_ids(5, length, ratio)
    keep = round(length * (1 - ratio))
    assert ids_keep.shape == (5, keep)
    assert (mask.sum(1) == length - keep).all() and set(mask.unique().tolist()) <= {0.0, 1.0}
    for n in range(5):  # kept patches are exactly the unmasked ones, no duplicates
        assert sorted(ids_keep[n].tolist()) == torch.nonzero(mask[n] == 0).flatten().tolist()
    x = torch.randn(5, length, 3)
    ids_shuffle = torch.argsort(ids_restore, dim=1)
    assert torch.equal(gather_tokens(gather_tokens(x, ids_shuffle), ids_restore), x)  # restore undoes shuffle
    assert torch.equal(ids_shuffle[:, :keep], ids_keep)


def test_random_masking_tokens_and_bad_ratio():
    x = torch.arange(2 * 8 * 1.0).view(2, 8, 1)
    xm, mask, ids_restore, ids_keep = random_masking(x, 0.5)
    assert xm.shape == (2, 4, 1) and torch.equal(xm[..., 0], torch.gather(x[..., 0], 1, ids_keep))
    with pytest.raises(ValueError, match="mask ratio"):
        random_mask_ids(1, 4, 1.0)


def test_encoder_sees_visible_patches_only_and_decoder_predicts_all():
    model = MAE(ENC, SMALL)
    imgs = torch.randn(2, 3, 32, 32)
    ids_keep, mask, ids_restore = model.mask(2, imgs.device)
    latent = model.forward_encoder(imgs, ids_keep)
    assert latent.shape == (2, 1 + 4, 32)  # cls + 25% of 16 patches, no mask tokens
    assert torch.equal(latent, model.encoder.forward_features(imgs, ids_keep))
    pred = model.forward_decoder(latent, ids_restore)
    assert pred.shape == (2, 16, 8 * 8 * 3)
    loss, _ = model(imgs)
    loss.backward()
    assert model.decoder.mask_token.grad is not None and model.encoder.blocks[0].attn.qkv.weight.grad is not None


def test_loss_ignores_visible_patches():
    model = MAE(ENC, SMALL)
    imgs = torch.randn(2, 3, 32, 32)
    torch.manual_seed(1)
    _, mask, _ = random_mask_ids(2, 16, 0.75)
    pred = torch.randn(2, 16, 192)
    changed = pred.clone()
    changed[mask == 0] += 100.0  # visible patches only
    assert torch.equal(model.forward_loss(imgs, pred, mask), model.forward_loss(imgs, changed, mask))
    changed[mask == 1] += 1.0
    assert not torch.equal(model.forward_loss(imgs, pred, mask), model.forward_loss(imgs, changed, mask))


def test_norm_pix_switch():
    imgs = torch.rand(1, 3, 32, 32) * 5 + 3  # far from zero mean / unit variance
    mask = torch.ones(1, 16)
    raw = MAE(ENC, dataclasses.replace(SMALL, norm_pix=False))
    norm = MAE(ENC, SMALL)
    target = raw.encoder.patchify(imgs)
    assert raw.forward_loss(imgs, target, mask) == 0  # raw pixels are the target
    assert norm.forward_loss(imgs, target, mask) > 1
    normed = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    assert norm.forward_loss(imgs, normed, mask) < 1e-10


def test_mask_tokens_in_encoder_variant_runs_on_all_patches():
    model = MAEWithMaskTokensInEncoder(ENC, SMALL)
    imgs = torch.randn(2, 3, 32, 32)
    _, mask, _ = model.mask(2, imgs.device)
    latent = model.encoder.forward_with_mask_token(imgs, mask, model.encoder_mask_token)
    assert latent.shape == (2, 17, 32) and mask.sum() == 2 * 12  # every patch, 12 of 16 masked
    loss, _ = model(imgs)
    assert torch.isfinite(loss)


def test_checkpoint_round_trip(tmp_path):
    model = MAE(ENC, SMALL)
    save_checkpoint(tmp_path / "c.pt", {"model": model.state_dict(), "config": {"mae": dataclasses.asdict(SMALL)}, "epoch": 3})
    state = load_checkpoint(tmp_path / "c.pt")  # weights_only=True
    other = MAE(ENC, SMALL)
    other.load_state_dict(state["model"])
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
    assert state["config"]["mae"]["mask_ratio"] == 0.75 and state["epoch"] == 3


PARAMS = """
run: {seed: 0, num_workers: 0, amp: true, threads: 1, device_batch: 2}
encoder: {img_size: 32, patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2}
scratch: {}
mae:
  model: {mask_ratio: 0.75, decoder_dim: 32, decoder_depth: 1, decoder_heads: 2, norm_pix: true}
  data: {crop_scale: [0.2, 1.0]}
  optim: {epochs: 3, batch_size: 4, base_lr: 1.0e-3, warmup_epochs: 1}
"""


def pretrain_args(data: Path | str, method: str = "mae") -> list[str]:
    return ["pretrain-student", "--method", method, "--name", method, "--data", str(data), "--params", "p.yaml",
            "--out", f"models/{method}/encoder.safetensors", "--run", f"runs/{method}"]


def _pretrain(workdir: Path, data: Path, method: str = "mae") -> object:
    (workdir / "p.yaml").write_text(PARAMS)
    return CliRunner().invoke(main, pretrain_args(data, method))


class Killed(Exception):
    pass


def test_pretrain_resume_after_kill_is_identical(tmp_path, monkeypatch):
    data = make_imagenet(tmp_path / "data", classes=2, train=8)
    full, killed = tmp_path / "full", tmp_path / "killed"
    for d in (full, killed):
        d.mkdir()
    monkeypatch.chdir(full)
    assert _pretrain(full, data).exit_code == 0
    monkeypatch.chdir(killed)
    import mim.engine

    real_save = mim.engine.save_checkpoint
    calls = []

    def save_then_die(path, state):  # killed right after epoch 2's checkpoint
        real_save(path, state)
        calls.append(1)
        if len(calls) == 2:
            raise Killed

    monkeypatch.setattr(mim.engine, "save_checkpoint", save_then_die)
    (killed / "p.yaml").write_text(PARAMS)
    with pytest.raises(Killed):
        CliRunner().invoke(main, pretrain_args(data), catch_exceptions=False)
    assert load_checkpoint(killed / "runs/mae/checkpoint.pt")["epoch"] == 1
    assert not (killed / "models/mae/encoder.safetensors").exists()
    monkeypatch.setattr(mim.engine, "save_checkpoint", real_save)
    assert _pretrain(killed, data).exit_code == 0
    a = load_file(full / "models/mae/encoder.safetensors")
    b = load_file(killed / "models/mae/encoder.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (killed / "runs/mae/metrics.json").is_file()


def test_scratch_and_unknown_method(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = make_imagenet(tmp_path / "data", classes=2, train=2)
    assert _pretrain(tmp_path, data, "scratch").exit_code == 0
    enc = EncoderFile.read(tmp_path / "models/scratch/encoder.safetensors")
    assert enc.config.embed_dim == 32 and enc.metadata["method"] == "scratch"
    assert enc.metadata["pretrain_epochs"] == "0"
    assert (tmp_path / "runs/scratch").is_dir() and not any((tmp_path / "runs/scratch").iterdir())  # nothing trained
    # scratch reads no images: it runs without a manifest
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    (empty / "p.yaml").write_text((tmp_path / "p.yaml").read_text())
    res = CliRunner().invoke(main, pretrain_args("data/manifest.json", "scratch"))
    assert res.exit_code == 0, res.output
    assert (empty / "models/scratch/encoder.safetensors").is_file()
    (empty / "p.yaml").write_text((tmp_path / "p.yaml").read_text().replace("scratch: {}", "scratch: {depth: 3}"))
    res = CliRunner().invoke(main, pretrain_args("data/manifest.json", "scratch"))
    assert res.exit_code == 1 and "scratch takes no params" in res.output
    monkeypatch.chdir(tmp_path)
    res = _pretrain(tmp_path, data, "bert")
    assert res.exit_code != 0 and "'bert' is not one of 'beit', 'img2vec', 'mae', 'official', 'scratch'" in res.output


def test_exported_mae_encoder_loads_into_timm(tmp_path):
    enc_cfg = vit_config("tiny")
    model = MAE(enc_cfg, SMALL)
    save_encoder(tmp_path / "e.safetensors", model.encoder)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10)
    missing, unexpected = vit.load_state_dict(load_file(tmp_path / "e.safetensors"), strict=False)
    assert sorted(missing) == ["head.bias", "head.weight"] and not unexpected


def test_paper_profile_builds_paper_sized_models():
    params = Path(__file__).parents[1] / "params/paper.yaml"
    enc = load(params, "encoder", ViTConfig)
    cfg = load(params, "mae", Config)
    assert (cfg.model.mask_ratio, cfg.model.decoder_depth, cfg.model.decoder_dim) == (0.75, 8, 512)
    assert isinstance(cfg.optim, OptimConfig) and cfg.optim.batch_size == 4096 and cfg.optim.base_lr == 1.5e-4
    with torch.device("meta"):
        model = MAE(enc, cfg.model)
    n_enc = sum(p.numel() for p in model.encoder.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert abs(n_enc / 1e6 - 85.8) < 0.2, n_enc  # ViT-B/16
    assert abs((n_all - n_enc) / 1e6 - 26.0) < 0.5, n_all - n_enc  # 8 x 512 decoder (MAE repo: ~26M)
    from mim.eval.finetune import FinetuneConfig
    from mim.eval.probe import ProbeConfig

    ft = load(params, "finetune", FinetuneConfig)
    assert (ft.optim.epochs, ft.optim.batch_size, ft.layer_decay, ft.drop_path, ft.mixup, ft.cutmix) == (100, 1024, 0.65, 0.1, 0.8, 1.0)
    probe = load(params, "probe", ProbeConfig)
    assert (probe.knn.k, probe.knn.temperature, probe.linear.optimizer) == (20, 0.07, "lars")
