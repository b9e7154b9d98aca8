import dataclasses

import pytest
import torch
from torch import nn

from mim.checkpoint import load_checkpoint
from mim.engine import OptimConfig, RunConfig, fit
from mim.errors import MimError
from mim.masking import block_masking, patches_to_blocks
from mim.methods.img2vec import (
    Config,
    Geometry,
    ModelConfig,
    build_model,
    build_task,
    patch_targets,
    resolve_geometry,
    smooth_l1,
    teacher_targets,
)
from mim.teacher.frozen import Teacher
from mim.vit import ViTConfig, ViTEncoder

ENC = ViTConfig(img_size=32, patch_size=4, embed_dim=32, depth=3, num_heads=2)  # 8x8 patches
OPTIM = OptimConfig(epochs=2, batch_size=4, base_lr=1e-3, warmup_epochs=1)
CFG = ModelConfig(block_size=2, decoder_dim=32, decoder_heads=2, head_hidden=16)
SECTION = Config(model=CFG, optim=OPTIM)


class GridTeacher(nn.Module):
    """A tiny CNN with stride 8: (N, 3, H, W) -> (N, 6, H/8, W/8), with a BatchNorm to catch train mode."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 8, stride=8)
        self.bn = nn.BatchNorm2d(6)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


def tiny_teacher() -> Teacher:
    torch.manual_seed(1)
    return Teacher(GridTeacher(), stride=8, dim=6, name="grid")


def test_block_masking_whole_aligned_blocks_exact_fraction():
    torch.manual_seed(0)
    grid, block, ratio = 14, 2, 0.6
    ids_keep, mask, ids_restore = block_masking(16, grid, block, ratio)
    nb = grid // block
    m = mask.view(16, nb, block, nb, block)
    assert torch.equal(m.amin((2, 4)), m.amax((2, 4)))  # each 2x2 block all masked or all visible
    assert (m[:, :, 0, :, 0].sum((1, 2)) == round(ratio * nb * nb)).all()  # 29 of 49 blocks per sample
    assert ids_keep.shape == (16, (49 - 29) * 4)
    assert (torch.gather(mask, 1, ids_keep) == 0).all()  # the encoder sees visible patches only
    shuffled = torch.cat([torch.gather(mask, 1, ids_keep), torch.ones(16, 29 * 4)], 1)
    assert torch.equal(torch.gather(shuffled, 1, ids_restore), mask)  # ids_restore unshuffles
    assert not torch.equal(mask[0], mask[1])  # random per sample
    with pytest.raises(MimError, match="tile"):
        block_masking(1, 14, 3, 0.6)


def test_patches_to_blocks_groups_2x2():
    x = torch.arange(16).view(1, 16)  # 4x4 grid
    g = patches_to_blocks(x, 4, 2)
    assert g[0, 0].tolist() == [0, 1, 4, 5] and g[0, 3].tolist() == [10, 11, 14, 15]


def test_geometry_teacher_size_and_errors():
    t = tiny_teacher()
    geo = resolve_geometry(CFG, ENC, t)  # 4x4 blocks of 2x2 patches (8 px) -> teacher at 4 * 8 = 32 px
    assert (geo.block, geo.blocks_per_side, geo.teacher_img_size, geo.pool) == (2, 4, 32, 1)
    auto = resolve_geometry(dataclasses.replace(CFG, block_size=0), ENC, t)  # block = stride / patch = 2
    assert auto.block == 2
    r50 = Teacher(nn.Identity(), stride=32, dim=2048, name="r50")  # smoke: 64 px, patch 8, 2x2-patch blocks
    smoke = resolve_geometry(CFG, ViTConfig(img_size=64, patch_size=8), r50)
    assert smoke.teacher_img_size == 128 and smoke.blocks_per_side == 4
    with pytest.raises(MimError, match="teacher_img_size"):
        resolve_geometry(dataclasses.replace(CFG, teacher_img_size=40), ENC, t)
    vit = ViTEncoder(ViTConfig(img_size=32, patch_size=4, embed_dim=8, depth=1, num_heads=2))
    vt = Teacher(vit, stride=4, dim=8, name="vit")  # 8x8 tokens, pooled 2x2 onto 4x4 blocks
    assert resolve_geometry(CFG, ENC, vt).pool == 2
    with pytest.raises(MimError, match="own 32 px"):
        resolve_geometry(dataclasses.replace(CFG, teacher_img_size=16), ENC, vt)


def test_targets_only_from_masked_blocks():
    torch.manual_seed(0)
    t = tiny_teacher()
    model = build_model(dataclasses.replace(CFG, global_weight=0.0), ENC, t)
    imgs = torch.randn(2, 3, 32, 32)
    target = teacher_targets(t, imgs, model.geo)  # (2, 16, 6)
    assert target.shape == (2, 16, 6)
    torch.manual_seed(5)
    loss, _ = model(imgs, target)
    torch.manual_seed(5)
    _, mask, _ = block_masking(2, 8, 2, 0.6)
    block_mask = mask.view(2, 4, 2, 4, 2)[:, :, 0, :, 0].reshape(2, 16)
    perturbed = target + 100.0 * (1 - block_mask).unsqueeze(-1)  # change the visible blocks' targets
    torch.manual_seed(5)
    assert torch.equal(model(imgs, perturbed)[0], loss)
    perturbed = target + 1.0 * block_mask.unsqueeze(-1)  # change the masked ones
    torch.manual_seed(5)
    assert not torch.equal(model(imgs, perturbed)[0], loss)


def test_targets_are_the_teacher_tokens_of_the_full_image():
    t = tiny_teacher()
    geo = resolve_geometry(CFG, ENC, t)
    imgs = torch.randn(2, 3, 32, 32)
    tok = t.tokens(imgs)  # (2, 4, 4, 6)
    assert torch.equal(teacher_targets(t, imgs, geo), tok.flatten(1, 2))
    small = dataclasses.replace(geo, teacher_img_size=16, pool=1)  # teacher at another size: resized
    assert teacher_targets(t, imgs, small).shape == (2, 4, 6)


def test_vit_teacher_tokens_pooled_onto_blocks():
    vit = ViTEncoder(ViTConfig(img_size=32, patch_size=4, embed_dim=8, depth=1, num_heads=2))
    t = Teacher(vit, stride=4, dim=8, name="vit")
    geo = resolve_geometry(CFG, ENC, t)  # ViT at its own 32 px: 8x8 tokens onto 4x4 blocks
    imgs = torch.randn(2, 3, 32, 32)
    tok = t.tokens(imgs)  # (2, 8, 8, 8)
    target = teacher_targets(t, imgs, geo)
    assert target.shape == (2, 16, 8)
    assert torch.allclose(target[:, 5], tok[:, 2:4, 2:4].mean((1, 2)), atol=1e-6)
    assert torch.allclose(target.mean(1), tok.mean((1, 2)), atol=1e-6)  # global target unchanged by pooling


def test_teacher_frozen_no_grad_eval(tmp_path):
    t = tiny_teacher()
    before = {k: v.clone() for k, v in t.state_dict().items()}  # BatchNorm running stats included
    task = build_task(SECTION, ENC, torch.utils.data.TensorDataset(torch.randn(8, 3, 32, 32)), t, RunConfig())
    task.model.train()
    t.train()
    assert not t.training and not t.backbone.bn.training
    loss, _ = task.step(task.model, [torch.randn(4, 3, 32, 32)])
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in t.parameters())
    assert all(torch.equal(before[k], v) for k, v in t.state_dict().items())
    assert not any(n.startswith("teacher") for n in task.model.state_dict())  # not in checkpoints
    assert any(p.grad is not None for p in task.model.encoder.parameters())


def test_smooth_l1_beta_two_closed_form():
    x = torch.tensor([0.0, 1.0, 1.9, 3.0, -5.0])
    expected = torch.tensor([0.0, 0.25, 0.5 * 1.9**2 / 2, 3.0 - 1.0, 5.0 - 1.0])  # 0.5x^2/b | |x|-b/2
    assert torch.allclose(smooth_l1(x, torch.zeros(5), beta=2.0), expected)
    assert ModelConfig().beta == 2.0  # the paper's default


def test_patch_loss_uses_beta():
    model = build_model(CFG, ENC, tiny_teacher())
    pred, target = torch.zeros(1, 16, 6), torch.full((1, 16, 6), 1.0)
    bm = torch.zeros(1, 16)
    bm[0, :5] = 1
    loss, logs = model.forward_loss(pred, target, bm, None)
    assert torch.isclose(loss, torch.tensor(0.25)) and "global_loss" not in logs  # 0.5 * 1 / 2


def test_global_loss_zero_when_pooled_match_and_lambda_applied():
    model = build_model(CFG, ENC, tiny_teacher())
    target = torch.randn(2, 16, 6)
    pred = torch.randn(2, 16, 6)
    bm = torch.ones(2, 16)
    patch, _ = model.forward_loss(pred, target, bm, None)
    loss, logs = model.forward_loss(pred, target, bm, target.mean(1))  # pooled features match
    assert logs["global_loss"] == 0 and torch.equal(loss, patch)
    g = target.mean(1) + 3.0  # |diff| 3 > beta: smooth-L1 = 3 - 1 = 2
    loss, logs = model.forward_loss(pred, target, bm, g)
    assert torch.isclose(logs["global_loss"], torch.tensor(2.0))
    assert torch.isclose(loss, patch + 0.5 * 2.0)  # lambda = 0.5
    model1 = build_model(dataclasses.replace(CFG, global_weight=1.0), ENC, tiny_teacher())
    assert torch.isclose(model1.forward_loss(pred, target, bm, g)[0], patch + 2.0)


def test_global_loss_off_and_decoder_source():
    t = tiny_teacher()
    imgs = torch.randn(2, 3, 32, 32)
    off = build_model(dataclasses.replace(CFG, global_weight=0.0), ENC, t)
    assert off.global_head is None and "global_loss" not in off(imgs, teacher_targets(t, imgs, off.geo))[1]
    dec = build_model(dataclasses.replace(CFG, global_source="decoder"), ENC, t)
    assert dec.global_head is None and "global_loss" in dec(imgs, teacher_targets(t, imgs, dec.geo))[1]


def test_multi_block_averages_every_block():
    torch.manual_seed(0)
    model = build_model(CFG, ENC, tiny_teacher()).eval()
    imgs = torch.randn(2, 3, 32, 32)
    ids_keep, _, _ = block_masking(2, 8, 2, 0.6)
    enc = model.encoder
    x = enc.add_cls(torch.gather(enc.embed(imgs), 1, ids_keep.unsqueeze(-1).expand(-1, -1, 32)))
    outs, h = [], x
    for blk in enc.blocks:
        h = blk(h)
        outs.append(h)
    manual = enc.norm(sum(outs) / len(outs))
    assert torch.allclose(model.forward_encoder(imgs, ids_keep), manual, atol=1e-6)
    last = build_model(dataclasses.replace(CFG, multi_block=False), ENC, tiny_teacher()).eval()
    last.load_state_dict(model.state_dict())
    assert torch.allclose(last.forward_encoder(imgs, ids_keep), enc.norm(outs[-1]), atol=1e-6)
    assert not torch.allclose(last.forward_encoder(imgs, ids_keep), manual, atol=1e-4)


def test_mean_merge_is_head_of_block_mean():
    model = build_model(CFG, ENC, tiny_teacher())
    dec = torch.randn(2, 64, 32)  # 8x8 patches
    pred = model.predict_blocks(dec)  # (2, 16, 6)
    block0 = dec[:, [0, 1, 8, 9]].mean(1)  # top-left 2x2 patches
    block5 = dec[:, [18, 19, 26, 27]].mean(1)  # second row, second column
    assert torch.allclose(pred[:, 0], model.head(block0), atol=1e-6)
    assert torch.allclose(pred[:, 5], model.head(block5), atol=1e-6)


def test_concat_merge_and_shapes_backward():
    t = tiny_teacher()
    model = build_model(dataclasses.replace(CFG, merge="concat"), ENC, t)
    assert model.head[0].in_features == 32 * 4
    imgs = torch.randn(2, 3, 32, 32)
    loss, logs = model(imgs, teacher_targets(t, imgs, model.geo))
    loss.backward()
    assert torch.isfinite(loss) and model.decoder.mask_token.grad is not None


def test_resume_identical(tmp_path):
    data = torch.utils.data.TensorDataset(torch.randn(8, 3, 32, 32), torch.zeros(8, dtype=torch.long))
    run = RunConfig(seed=1)

    def task_and_fit(where: str, crash_at_epoch: int | None = None) -> dict:
        torch.manual_seed(0)
        task = build_task(SECTION, ENC, data, tiny_teacher(), run)
        real_loader = task.loader

        def loader(epoch: int, start: int = 0, stop: int | None = None):
            if epoch == crash_at_epoch:
                raise KeyboardInterrupt  # killed during epoch 2, after epoch 1 was saved
            return real_loader(epoch, start, stop)

        task.loader = loader
        d = tmp_path / where
        fit(task, run, checkpoint=d / "c.pt", log_dir=d / "logs", config={"x": 1}, desc="i2v")
        return task.model.state_dict()

    full = task_and_fit("full")
    with pytest.raises(KeyboardInterrupt):
        task_and_fit("crash", crash_at_epoch=1)
    assert load_checkpoint(tmp_path / "crash" / "c.pt")["epoch"] == 0
    resumed = task_and_fit("crash")
    assert all(torch.equal(full[k], v) for k, v in resumed.items())


I2V_PARAMS = """
run: {seed: 0, num_workers: 0, amp: true, threads: 1}
encoder: {img_size: 32, patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2}
scratch: {}
img2vec:
  model: {block_size: 1, decoder_dim: 32, decoder_depth: 1, decoder_heads: 2, head_hidden: 16}
  optim: {epochs: 1, batch_size: 4, base_lr: 1.0e-3}
"""


def test_pretrain_student_cli_img2vec(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from imagefolders import make_imagenet
    from mim.encoder_file import EncoderFile, save_encoder
    from stages.cli import main

    data = make_imagenet(tmp_path / "data", classes=2, train=4, size=32)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.yaml").write_text(I2V_PARAMS)
    save_encoder(tmp_path / "t.safetensors", ViTEncoder(ViTConfig(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2)))

    def args(method: str) -> list[str]:
        return ["pretrain-student", "--method", method, "--data", str(data), "--params", "p.yaml", "--name", "img2vec-vit",
                "--out", "models/img2vec-vit/encoder.safetensors", "--run", "runs/img2vec-vit"]

    r = CliRunner().invoke(main, args("img2vec") + ["--input", "t.safetensors"])
    assert r.exit_code == 0, r.output
    meta = EncoderFile.read(tmp_path / "models/img2vec-vit/encoder.safetensors").metadata
    assert meta["method"] == "img2vec" and meta["teacher"] == "t.safetensors" and meta["mask_block_patches"] == "1"
    assert len(load_checkpoint(tmp_path / "runs/img2vec-vit/checkpoint.pt")["config"]["input_sha256"]) == 64
    r = CliRunner().invoke(main, args("img2vec"))
    assert r.exit_code != 0 and "--method img2vec needs --input: the frozen teacher's weights" in r.output
    r = CliRunner().invoke(main, args("scratch") + ["--input", "t.safetensors"])
    assert r.exit_code != 0 and "--input applies to methods that learn from another model (beit, img2vec" in r.output
    assert "not scratch" in r.output  # the list may grow (other methods with an input)


def test_paper_profile_geometry_and_recipe():
    from pathlib import Path

    from stages.common import load

    params = Path(__file__).parents[1] / "params/paper.yaml"
    enc = load(params, "encoder", ViTConfig)
    cfg = load(params, "img2vec", Config).model
    assert (cfg.mask_ratio, cfg.decoder_depth, cfg.beta, cfg.global_weight, cfg.multi_block) == (0.6, 2, 2.0, 0.5, True)
    assert cfg.merge == "mean"  # our reading; per_patch and concat are the options
    r50 = resolve_geometry(cfg, enc, Teacher(nn.Identity(), stride=32, dim=2048, name="dino_rn50"))
    assert (r50.block, r50.blocks_per_side, r50.teacher_img_size, r50.pool) == (2, 7, 224, 1)  # 32 px blocks, 7x7 tokens
    with torch.device("meta"):
        vit_b = ViTEncoder(enc)
    vit = resolve_geometry(cfg, enc, Teacher(vit_b, stride=16, dim=768, name="mae_vit"))
    assert (vit.block, vit.teacher_img_size, vit.pool) == (1, 224, 1)  # 16 px blocks for a ViT/16 teacher
    _, mask, _ = block_masking(3, enc.grid, r50.block, cfg.mask_ratio)  # the paper's masks: 29 of 49 32-px blocks
    blocks = mask.view(3, 7, 2, 7, 2)[:, :, 0, :, 0]
    assert blocks.sum((1, 2)).tolist() == [29.0] * 3 and mask.sum(1).tolist() == [29.0 * 4] * 3


def _old_loss(model, imgs, target, seed):
    """The mean/concat forward as it was before per_patch and the fp32 changes (reference)."""
    torch.manual_seed(seed)
    ids_keep, mask, ids_restore = model.mask(imgs.shape[0], imgs.device)
    bm = mask.view(-1, 4, 2, 4, 2)[:, :, 0, :, 0].reshape(-1, 16)
    latent = model.forward_encoder(imgs, ids_keep)
    pred = model.predict_blocks(model.forward_decoder(latent, ids_restore))
    target = target.to(pred.dtype)
    per_block = smooth_l1(pred, target, model.cfg.beta).mean(-1)
    loss = (per_block * bm).sum() / bm.sum()
    if model.cfg.global_source == "encoder":
        g = model.global_head(latent[:, 1:].mean(1))
    else:
        vis = (1 - bm).unsqueeze(-1)
        g = (pred * vis).sum(1) / vis.sum(1)
    return loss + model.cfg.global_weight * smooth_l1(g, target.mean(1), model.cfg.beta).mean()


@pytest.mark.parametrize("merge", ["mean", "concat"])
@pytest.mark.parametrize("source", ["encoder", "decoder"])
def test_mean_and_concat_unchanged(merge, source):
    t = tiny_teacher()
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(CFG, merge=merge, global_source=source), ENC, t)
    imgs = torch.randn(2, 3, 32, 32)
    target = teacher_targets(t, imgs, model.geo)
    torch.manual_seed(3)
    loss, _ = model(imgs, target)
    assert torch.equal(loss, _old_loss(model, imgs, target, 3))  # bitwise, in fp32


def test_patch_targets_repeat_the_block_token():
    geo = Geometry(grid=8, block=2, teacher_img_size=32, pool=1)  # 4x4 blocks of 2x2 patches
    target = torch.randn(2, 16, 6)
    pt = patch_targets(target, geo)  # (2, 64, 6)
    assert pt.shape == (2, 64, 6)
    for i in range(64):
        r, c = divmod(i, 8)
        assert torch.equal(pt[:, i], target[:, (r // 2) * 4 + c // 2])  # every patch of a block: its token
    assert torch.equal(pt[:, [18, 19, 26, 27]], target[:, 5:6].expand(-1, 4, -1))  # block 5 (row 1, col 1)
    assert torch.equal(patches_to_blocks(pt, 8, 2), target.unsqueeze(2).expand(-1, -1, 4, -1))
    one = Geometry(grid=8, block=1, teacher_img_size=32, pool=1)
    x = torch.randn(2, 64, 6)
    assert torch.equal(patch_targets(x, one), x)  # 1-patch blocks: identity


def test_per_patch_loss_hand_computed_tiny():
    model = build_model(dataclasses.replace(CFG, merge="per_patch"), ENC, tiny_teacher())
    geo = Geometry(grid=4, block=2, teacher_img_size=16, pool=1)  # 2x2 blocks of 2x2 patches, C = 1
    target = torch.tensor([[[1.0], [2.0], [0.0], [-1.0]]])  # (1, 4 blocks, 1)
    block_mask = torch.tensor([1.0, 0.0, 0.0, 1.0])  # blocks 0 and 3 masked
    mask = patch_targets(block_mask.view(1, 4, 1), geo)[..., 0]  # (1, 16): patches of blocks 0 and 3
    pred = torch.zeros(1, 16, 1)
    pred[0, [0, 1, 4, 5], 0] = torch.tensor([1.0, 2.0, 4.0, -2.0])  # block 0 (token 1): |diff| 0, 1, 3, 3
    pred[0, [10, 11, 14, 15], 0] = torch.tensor([-1.0, 0.0, -1.5, 5.0])  # block 3 (token -1): 0, 1, 0.5, 6
    loss, logs = model.forward_loss(pred, patch_targets(target, geo), mask, None)
    sl1 = lambda d: 0.5 * d * d / 2 if d < 2 else d - 1  # beta = 2
    hand = sum(sl1(d) for d in [0, 1, 3, 3, 0, 1, 0.5, 6]) / 8  # mean over the 8 masked patch predictions
    assert torch.isclose(loss, torch.tensor(hand)) and "global_loss" not in logs
    g = torch.tensor([[4.0]])  # global target = GAP of the 4 block tokens = 0.5, |diff| 3.5
    loss, logs = model.forward_loss(pred, patch_targets(target, geo), mask, g, g_target=target.mean(1))
    assert torch.isclose(logs["global_loss"], torch.tensor(2.5)) and torch.isclose(loss, torch.tensor(hand + 0.5 * 2.5))


def test_per_patch_forward_equals_explicit_loop():
    torch.manual_seed(0)
    t = tiny_teacher()
    model = build_model(dataclasses.replace(CFG, merge="per_patch"), ENC, t)
    imgs = torch.randn(2, 3, 32, 32)
    target = teacher_targets(t, imgs, model.geo)  # (2, 16, 6)
    torch.manual_seed(5)
    loss, logs = model(imgs, target)
    torch.manual_seed(5)
    ids_keep, mask, ids_restore = block_masking(2, 8, 2, 0.6)
    latent = model.forward_encoder(imgs, ids_keep)
    pred = model.head(model.forward_decoder(latent, ids_restore))  # (2, 64, 6): one prediction per patch
    terms = [smooth_l1(pred[n, i], target[n, (i // 8 // 2) * 4 + i % 8 // 2], 2.0).mean()
             for n in range(2) for i in range(64) if mask[n, i]]
    assert len(terms) == 2 * 10 * 4  # 10 of 16 blocks masked, 4 patches each
    patch = torch.stack(terms).mean()
    glob = smooth_l1(model.global_head(latent[:, 1:].mean(1)), target.mean(1), 2.0).mean()  # unchanged global loss
    assert torch.allclose(logs["patch_loss"], patch, atol=1e-6) and torch.allclose(logs["global_loss"], glob, atol=1e-6)
    assert torch.allclose(loss, patch + 0.5 * glob, atol=1e-6)
    mean = build_model(CFG, ENC, t)
    mean.load_state_dict(model.state_dict())  # same weights, head of the block mean: another loss
    torch.manual_seed(5)
    assert not torch.allclose(mean(imgs, target)[0], loss, atol=1e-4)


@pytest.mark.parametrize("block", [1, 2])
def test_per_patch_shapes_and_backward(block):
    t = tiny_teacher()
    cfg = dataclasses.replace(CFG, merge="per_patch", block_size=block, teacher_img_size=8 * 8 // block)
    model = build_model(cfg, ENC, t)  # block 1: 8x8 blocks (teacher 64 px); block 2: 4x4 (32 px)
    assert model.head[0].in_features == 32
    imgs = torch.randn(2, 3, 32, 32)
    target = teacher_targets(t, imgs, model.geo)
    assert target.shape == (2, (8 // block) ** 2, 6)
    assert model.head(torch.randn(2, 64, 32)).shape == patch_targets(target, model.geo).shape == (2, 64, 6)
    torch.manual_seed(5)
    loss, logs = model(imgs, target)
    loss.backward()
    assert torch.isfinite(loss) and set(logs) == {"patch_loss", "global_loss"}
    assert model.decoder.mask_token.grad is not None and model.head[0].weight.grad is not None
    assert all(p.grad is not None for p in model.encoder.blocks.parameters())
    if block == 1:  # 1-patch blocks: the three readings coincide
        for merge in ("mean", "concat"):
            other = build_model(dataclasses.replace(cfg, merge=merge), ENC, t)
            other.load_state_dict(model.state_dict())
            torch.manual_seed(5)
            assert torch.allclose(other(imgs, target)[0], loss, atol=1e-6)


def test_targets_fp32_under_bf16_autocast():
    t = tiny_teacher()
    geo = resolve_geometry(CFG, ENC, t)
    imgs = torch.randn(2, 3, 32, 32)
    ref = teacher_targets(t, imgs, geo)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert t.tokens(imgs).dtype == torch.bfloat16  # the teacher alone would run in bf16
        target = teacher_targets(t, imgs, geo)
    assert target.dtype == torch.float32 and torch.equal(target, ref)  # the fp32 forward, not rounded


@pytest.mark.parametrize("merge", ["mean", "per_patch"])
def test_loss_fp32_under_bf16_autocast(merge):
    t = tiny_teacher()
    model = build_model(dataclasses.replace(CFG, merge=merge), ENC, t)
    imgs = torch.randn(2, 3, 32, 32)
    target = teacher_targets(t, imgs, model.geo) + 1e-3  # not representable in bf16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(5)
        loss, logs = model(imgs, target)
    assert loss.dtype == torch.float32 and all(v.dtype == torch.float32 for v in logs.values())
    pred = torch.randn(2, 16, 6).bfloat16()
    bm = torch.ones(2, 16)
    exact = model.forward_loss(pred, target, bm, None)[0]  # bf16 predictions against fp32 targets
    assert torch.equal(exact, model.forward_loss(pred.float(), target, bm, None)[0])
    assert not torch.equal(exact, model.forward_loss(pred.float(), target.bfloat16().float(), bm, None)[0])
