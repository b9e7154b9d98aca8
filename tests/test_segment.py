"""ADE20K segmentation glue (downstream/seg*.py): backbone, weights, loss, metric, resume."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from downstream.mmseg_env import MissingDependency, import_mmseg
from mim.engine import RunConfig
from mim.errors import MimError
from mim.encoder_file import save_encoder
from mim.vit import ViTConfig, ViTEncoder

sys.path.insert(0, str(Path(__file__).parent))
from seg_fixtures import make_ade  # noqa: E402

HAVE_MMSEG = importlib.util.find_spec("mmseg") is not None


def needs_mmseg(test):
    """Marked `mmseg`; skipped (with the reason shown) only when mmsegmentation is not installed."""
    skip = pytest.mark.skipif(not HAVE_MMSEG, reason="mmsegmentation not installed: bash scripts/install_mmseg.sh .venv")
    return pytest.mark.mmseg(skip(test))

VIT = ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2)
RUN = RunConfig(seed=0, threads=1)


def tiny_seg_config(**kw: object):
    from downstream.seg import SegmentConfig

    base = dict(
        out_blocks=(1, 2, 3, 4), crop_size=64, img_scale=(256, 64), iters=4, batch_size=2, lr=1e-3, warmup_iters=1,
        head_channels=16, aux_channels=8, slide_stride=48, val_interval=4, checkpoint_interval=2, log_interval=1,
    )
    return SegmentConfig(**{**base, **kw})


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one thread avoids OpenMP spin-waits on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg")
    torch.manual_seed(0)
    enc = ViTEncoder(VIT).eval()
    save_encoder(root / "encoder.safetensors", enc)
    manifest = make_ade(root / "data", n_train=4, n_val=2)
    return {"root": root, "encoder": root / "encoder.safetensors", "enc": enc, "manifest": manifest}


def test_missing_mmseg_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "mmengine", None)  # import mmengine -> ImportError
    with pytest.raises(MissingDependency, match="scripts/install_mmseg.sh"):
        import_mmseg()


@pytest.mark.parametrize("patch, crop", [(8, 64), (16, 64)])
@needs_mmseg
def test_backbone_levels_strides_channels(tmp_path, patch, crop):
    from downstream import seg_mm  # noqa: F401  registers MimViT
    from downstream.seg_backbone import MimViT, pyramid_rescales
    from mmseg.models.necks import Feature2Pyramid

    cfg = dataclasses.replace(VIT, patch_size=patch)
    save_encoder(tmp_path / "e.safetensors", ViTEncoder(cfg))
    backbone = MimViT(str(tmp_path / "e.safetensors"), out_blocks=(1, 2, 4), img_size=crop, drop_path=0.0)
    feats = backbone(torch.randn(2, 3, crop, crop + 32))
    assert [f.shape for f in feats] == [(2, 32, crop // patch, (crop + 32) // patch)] * 3  # NCHW, one per block
    backbone = MimViT(str(tmp_path / "e.safetensors"), out_blocks=(1, 2, 3, 4), img_size=crop, drop_path=0.0)
    neck = Feature2Pyramid(embed_dim=32, rescales=pyramid_rescales(patch), norm_cfg=dict(type="BN"))
    levels = neck(backbone(torch.randn(2, 3, crop, crop)))
    assert [tuple(f.shape) for f in levels] == [(2, 32, crop // s, crop // s) for s in (4, 8, 16, 32)]
    shallow = MimViT(str(tmp_path / "e.safetensors"), out_blocks=(1, 1, 2, 2), img_size=crop)  # 4 levels, 2 blocks
    assert len(shallow(torch.randn(1, 3, crop, crop))) == 4 and len(shallow.vit.blocks) == 2
    with pytest.raises(MimError, match="out_blocks"):
        MimViT(str(tmp_path / "e.safetensors"), out_blocks=(2, 1), img_size=crop)


@needs_mmseg
def test_converted_weights_reproduce_encoder_and_unexpected_keys_fail(files, tmp_path):
    from downstream.seg_backbone import MimViT

    enc = files["enc"]
    backbone = MimViT(str(files["encoder"]), out_blocks=(2, 4), img_size=VIT.img_size, drop_path=0.0).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = enc.forward_blocks(enc.add_cls(enc.embed(x)), return_all=True)
        got = backbone(x)
    for block, feat in zip((2, 4), got):
        want = ref[block - 1][:, 1:].transpose(1, 2).reshape(2, 32, 4, 4)
        assert torch.equal(feat, want)
    assert backbone.load_report["unexpected"] == [] and "norm.weight" in backbone.load_report["unused"]
    big = MimViT(str(files["encoder"]), out_blocks=(2,), img_size=64)  # pos_embed interpolated 4x4 -> 8x8
    assert big.vit.pos_embed.shape == (1, 65, 32) and torch.equal(big.vit.pos_embed[0, 0], enc.pos_embed[0, 0])

    state = {k: v.contiguous() for k, v in enc.state_dict().items()}
    state["head.weight"] = torch.zeros(10, 32)
    save_file(state, str(tmp_path / "extra.safetensors"), metadata={"vit": json.dumps(dataclasses.asdict(VIT))})
    with pytest.raises(MimError, match="unexpected keys.*head.weight"):
        MimViT(str(tmp_path / "extra.safetensors"), out_blocks=(2,), img_size=32)


def _build(files, work_dir: Path, **kw: object):
    from downstream import seg_mm  # noqa: F401
    from downstream.seg import build_config, find_data
    from mmengine.config import Config

    data = find_data(files["manifest"])
    return Config(build_config(tiny_seg_config(**kw), RUN, data, files["encoder"], work_dir, cuda=False)), data


@needs_mmseg
def test_layer_decay_and_a_few_steps_lower_the_loss(files, tmp_path):
    from downstream.seg_mm import ConsoleRunner
    from mmengine.model import revert_sync_batchnorm
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import DefaultScope
    from mmseg.registry import MODELS

    torch.manual_seed(0)
    cfg, data = _build(files, tmp_path)
    DefaultScope.get_instance("test-seg-loss", scope_name="mmseg")
    model = revert_sync_batchnorm(MODELS.build(cfg.model))
    optim = build_optim_wrapper(model, cfg.optim_wrapper)
    lrs = {id(p): g["lr"] for g in optim.optimizer.param_groups for p in g["params"]}
    wds = {id(p): g["weight_decay"] for g in optim.optimizer.param_groups for p in g["params"]}
    block = dict(model.named_parameters())
    assert wds[id(block["backbone.vit.pos_embed"])] == 0 and wds[id(block["backbone.vit.blocks.0.norm1.weight"])] == 0
    assert wds[id(block["backbone.vit.blocks.0.attn.qkv.weight"])] == 0.05
    assert lrs[id(block["backbone.vit.blocks.3.mlp.fc1.weight"])] == pytest.approx(1e-3 * 0.65)
    assert lrs[id(block["backbone.vit.patch_embed.proj.weight"])] == pytest.approx(1e-3 * 0.65**5)
    assert lrs[id(block["decode_head.conv_seg.weight"])] == pytest.approx(1e-3)
    # mmseg LearningRateDecayOptimizerConstructor: a block's table and gammas are its layer; the 2-D table is decayed
    table, gamma = block["backbone.vit.blocks.2.attn.relative_position_bias_table"], block["backbone.vit.blocks.2.ls1.gamma"]
    assert lrs[id(table)] == lrs[id(gamma)] == pytest.approx(1e-3 * 0.65**2)
    assert (wds[id(table)], wds[id(gamma)]) == (0.05, 0.0)
    assert table.shape == ((2 * 8 - 1) ** 2 + 3, 2) and not table.any()  # crop 64 / patch 8: an 8x8 window; zeros
    assert len(data.classes) == 4 and model.decode_head.num_classes == 4  # read from the manifest

    loader = ConsoleRunner.build_dataloader(cfg.train_dataloader, seed=0)
    batch = next(iter(loader))
    model.train()
    losses = [sum(v for k, v in model.train_step(batch, optim).items() if "loss" in k).item() for _ in range(8)]
    assert losses[-1] < 0.8 * losses[0], losses


def test_rel_pos_index_matches_timm_beit():
    from timm.models.beit import gen_relative_position_index

    from downstream.seg_backbone import rel_pos_index

    for window in [(4, 4), (3, 5), (1, 1)]:
        assert torch.equal(rel_pos_index(window, window), gen_relative_position_index(window))
    full = rel_pos_index((4, 4), (4, 4))
    keep = torch.tensor([0] + [1 + r * 4 + c for r in range(2) for c in range(3)])  # cls + a 2x3 corner
    assert torch.equal(rel_pos_index((2, 3), (4, 4)), full[keep][:, keep])  # an edge window: the same offsets
    with pytest.raises(MimError, match="exceeds the 4x4 relative position window"):
        rel_pos_index((5, 4), (4, 4))


def test_zero_bias_and_unit_layer_scale_are_the_plain_backbone(files):
    from downstream.seg_backbone import MimViT

    enc = str(files["encoder"])
    plain = MimViT(enc, out_blocks=(1, 2, 4), img_size=64, drop_path=0.0).eval()
    mae = MimViT(enc, out_blocks=(1, 2, 4), img_size=64, drop_path=0.0, rel_pos_bias=True, layer_scale=1.0).eval()
    assert mae.load_report["added"] == sorted(
        [f"blocks.{i}.{k}" for i in range(4) for k in ("attn.relative_position_bias_table", "ls1.gamma", "ls2.gamma")]
    )
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = plain(x)
        assert all(torch.equal(a, b) for a, b in zip(mae(x), want))  # exact at init
        assert all(torch.equal(a, b) for a, b in zip(mae(x[..., :40, :48]), plain(x[..., :40, :48])))  # edge window
        mae.vit.blocks[1].attn.relative_position_bias_table.normal_()
        got = mae(x)
    assert torch.equal(got[0], want[0]) and not torch.allclose(got[1], want[1], atol=1e-3)  # blocks 2.. change
    half = MimViT(enc, out_blocks=(1,), img_size=64, drop_path=0.0, layer_scale=0.5).eval()
    with torch.no_grad():
        assert not torch.allclose(half(x)[0], want[0], atol=1e-3)


@needs_mmseg
def test_backbone_matches_mmseg_mae_on_the_same_weights(files):
    """mmseg's MAE backbone (relative position bias, LayerScale, abs pos embed resized from the encoder's
    4x4 grid to the crop's 8x8) and MimViT, given the same non-zero tables and gammas, agree."""
    from downstream import seg_mm  # noqa: F401  mmseg set up
    from downstream.seg_backbone import MimViT
    from mmseg.models.backbones import MAE

    torch.manual_seed(1)
    ours = MimViT(str(files["encoder"]), out_blocks=(2, 4), img_size=64, drop_path=0.0, rel_pos_bias=True, layer_scale=1.0)
    ref = MAE(img_size=(64, 64), patch_size=8, embed_dims=32, num_layers=4, num_heads=2, mlp_ratio=4,
              out_indices=[1, 3], init_values=1.0, norm_cfg=dict(type="LN", eps=1e-6))
    resized = ref.resize_abs_pos_embed({"pos_embed": files["enc"].pos_embed.detach().clone()})["pos_embed"]
    torch.testing.assert_close(ours.vit.pos_embed.detach(), resized)  # mmseg MAE resize_abs_pos_embed
    with torch.no_grad():
        for name, p in ours.vit.named_parameters():
            if name.endswith(("relative_position_bias_table", "gamma")):
                p.normal_()
    state = _mmseg_state(ours.vit.state_dict())
    state.update({k: v for k, v in ref.state_dict().items() if k.endswith("relative_position_index")})
    ref.load_state_dict(state, strict=True)
    ours.eval(), ref.eval()  # mmseg's BEiT.train returns None
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(ours(x), ref(x)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


BEIT = dataclasses.replace(VIT, rel_pos_bias="per_layer", abs_pos=False, layer_scale=0.1)  # the exported BEiT layout


@pytest.fixture(scope="module")
def beit(tmp_path_factory):
    """A BEiT-layout encoder file (timm beit.Block keys, a 4x4-window table per block, no pos_embed),
    every weight perturbed so q/v biases, gammas and tables all matter."""
    torch.manual_seed(2)
    enc = ViTEncoder(BEIT).eval()
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(0.2 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("beit") / "encoder.safetensors"
    save_encoder(path, enc)
    return path, enc


def test_beit_layout_file_reproduces_its_encoder(beit):
    from downstream.seg_backbone import MimViT

    path, enc = beit
    assert "blocks.0.gamma_1" in enc.state_dict() and enc.pos_embed is None
    # rel_pos_bias=False and layer_scale=1.0 do not apply: a BEiT file brings its own tables and gammas
    ours = MimViT(str(path), out_blocks=(1, 2, 3, 4), img_size=32, drop_path=0.0, rel_pos_bias=False, layer_scale=1.0)
    ours.eval()
    assert ours.vit.pos_embed is None and ours.load_report["added"] == [] and ours.load_report["resized"] == []
    assert ours.load_report["converted"] == sorted(
        f"blocks.{i}.{k}" for i in range(4) for k in ("attn.q_bias", "attn.v_bias", "gamma_1", "gamma_2")
    )
    src, dst = enc.blocks[1], ours.vit.blocks[1]
    assert torch.equal(dst.attn.qkv.bias, torch.cat([src.attn.q_bias, torch.zeros(32), src.attn.v_bias]))
    assert torch.equal(dst.ls1.gamma, src.gamma_1) and torch.equal(dst.ls2.gamma, src.gamma_2)
    assert torch.equal(dst.attn.relative_position_bias_table, src.attn.relative_position_bias_table)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = enc.forward_blocks(enc.add_cls(enc.embed(x)), return_all=True)  # timm beit.Block
        got = ours(x)
        for block, feat in zip((1, 2, 3, 4), got):
            want = ref[block - 1][:, 1:].transpose(1, 2).reshape(2, 32, 4, 4)
            torch.testing.assert_close(feat, want, atol=1e-5, rtol=1e-5)
        ours.vit.blocks[0].attn.relative_position_bias_table.zero_()  # the tables are used: block 1 changes
        assert not torch.allclose(ours(x)[0], got[0], atol=1e-3)


def test_beit_tables_are_resized_to_the_crop_window(beit):
    from timm.layers import resize_rel_pos_bias_table

    from downstream.seg_backbone import MimViT

    path, enc = beit
    ours = MimViT(str(path), out_blocks=(2,), img_size=64, drop_path=0.0).eval()  # 4x4 -> 8x8 window
    assert ours.load_report["resized"] == [f"blocks.{i}.attn.relative_position_bias_table" for i in range(2)]
    for i in range(2):
        table = enc.blocks[i].attn.relative_position_bias_table.detach()  # (7*7+3, 2)
        got = ours.vit.blocks[i].attn.relative_position_bias_table.detach()  # (15*15+3, 2)
        # timm beit.py checkpoint_filter_fn's call (source window inferred from the square table)
        want = resize_rel_pos_bias_table(table, new_window_size=(8, 8), new_bias_shape=(15 * 15 + 3, 2))
        assert got.shape == (228, 2) and torch.equal(got, want)
        assert torch.equal(got[-3:], table[-3:])  # cls rows kept
        torch.testing.assert_close(got[7 * 15 + 7], table[3 * 7 + 3])  # offset (0, 0): a node of the geometric grid
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert ours(x)[0].shape == (1, 32, 8, 8) and ours(x[..., :40, :48])[0].shape == (1, 32, 5, 6)  # edge window
    with pytest.raises(MimError, match="exceeds the 8x8 relative position window"):
        ours(torch.randn(1, 3, 72, 64))


def _mmseg_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm ViT/BEiT keys -> mmseg BEiT/MAE backbone keys (mmseg beit.py / mae.py module names)."""
    renames = [("blocks.", "layers."), (".norm", ".ln"), (".ls1.gamma", ".gamma_1"), (".ls2.gamma", ".gamma_2"),
               (".mlp.fc1.", ".ffn.layers.0.0."), (".mlp.fc2.", ".ffn.layers.1."), ("patch_embed.proj.", "patch_embed.projection.")]
    out = {}
    for k, v in state.items():
        for old, new in renames:
            k = k.replace(old, new)
        out[k] = v
    return out


@needs_mmseg
def test_beit_backbone_matches_mmseg_beit_on_the_same_weights(beit):
    """mmseg's BEiT backbone (q/v bias, gamma_1/2, per-layer tables, no abs pos embed) given the file's
    own keys and MimViT agree at the pretraining size, and at a larger crop given MimViT's resized
    tables (mmseg's own resize_rel_pos_embed calls scipy's interp2d, gone since SciPy 1.14)."""
    from downstream import seg_mm  # noqa: F401  mmseg set up
    from downstream.seg_backbone import MimViT
    from mim.encoder_file import EncoderFile
    from mmseg.models.backbones import BEiT

    path, _ = beit
    file_state = {k: v for k, v in EncoderFile.read(path).state.items() if not k.startswith("norm.")}
    for crop in (32, 64):
        ours = MimViT(str(path), out_blocks=(2, 4), img_size=crop, drop_path=0.0)
        ref = BEiT(img_size=(crop, crop), patch_size=8, embed_dims=32, num_layers=4, num_heads=2, mlp_ratio=4,
                   out_indices=[1, 3], qv_bias=True, init_values=0.1, norm_cfg=dict(type="LN", eps=1e-6))
        state = _mmseg_state(file_state)  # BEiT's names, not MimViT's: q_bias, v_bias, gamma_1 map as they are
        for i in range(4):
            state[f"layers.{i}.attn.relative_position_bias_table"] = ours.vit.blocks[i].attn.relative_position_bias_table
        state.update({k: v for k, v in ref.state_dict().items() if k.endswith("relative_position_index")})
        ref.load_state_dict(state, strict=True)
        ours.eval(), ref.eval()  # mmseg's BEiT.train returns None
        x = torch.randn(2, 3, crop, crop)
        with torch.no_grad():
            for a, b in zip(ours(x), ref(x), strict=True):
                torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@needs_mmseg
def test_slide_inference_uses_the_configured_stride(files, tmp_path):
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import DefaultScope
    from mmseg.registry import MODELS

    DefaultScope.get_instance("test-seg-slide", scope_name="mmseg")
    ramp = torch.arange(160.0).expand(1, 3, 64, 160)  # pixel value = column: a window's first value is its x1
    meta = [dict(img_shape=(64, 160), ori_shape=(64, 160), pad_shape=(64, 160))]
    for stride, starts in [(48, [0, 48, 96]), (32, [0, 32, 64, 96])]:
        cfg, _ = _build(files, tmp_path, slide_stride=stride)
        assert cfg.model.test_cfg == dict(mode="slide", crop_size=(64, 64), stride=(stride, stride))
        model = revert_sync_batchnorm(MODELS.build(cfg.model)).eval()
        seen: list[tuple[int, int]] = []

        def record(module, args, seen=seen):
            seen.append((int(args[0][0, 0, 0, 0]), args[0].shape[-1]))  # (x1, width) of each window

        model.backbone.register_forward_pre_hook(record)
        with torch.no_grad():
            model.inference(ramp, [dict(m) for m in meta])
        assert seen == [(x1, 64) for x1 in starts]


def test_rel_pos_bias_needs_slide_inference():
    from downstream.seg import SegmentConfig

    assert ("rel_pos_bias", "needs test_mode: slide (the bias table covers crop_size windows, as in mmseg MAE)") in (
        SegmentConfig(test_mode="whole").problems()
    )
    assert SegmentConfig(test_mode="whole", rel_pos_bias=False).problems() == []


@needs_mmseg
def test_iou_metric_on_hand_made_prediction():
    from downstream.seg_mm import PerClassIoUMetric

    gt = torch.tensor([[0, 0, 1], [1, 2, 255]])
    pred = torch.tensor([[0, 1, 1], [1, 2, 2]])  # the 255 pixel is ignored
    metric = PerClassIoUMetric(iou_metrics=["mIoU"])
    metric.dataset_meta = {"classes": ("a", "b", "c")}
    metric.process({}, [{"pred_sem_seg": {"data": pred[None]}, "gt_sem_seg": {"data": gt[None]}}])
    out = metric.evaluate(1)
    # IoU: a 1/2, b 2/3, c 1/1; Acc: a 1/2, b 2/2, c 1/1; 4 of 5 labelled pixels right
    assert out["mIoU"] == pytest.approx(100 * (1 / 2 + 2 / 3 + 1) / 3, abs=0.01)
    assert out["mAcc"] == pytest.approx(100 * (1 / 2 + 1 + 1) / 3, abs=0.01)
    assert out["aAcc"] == pytest.approx(80.0)
    assert metric.per_class["IoU"] == pytest.approx([0.5, 2 / 3, 1.0])


@needs_mmseg
def test_resume_continues_the_iteration_count_with_safe_loading(files, tmp_path):
    from downstream import seg_mm
    from mmengine.hooks import Hook
    from mmseg.registry import HOOKS

    class Stop(Exception):
        pass

    @HOOKS.register_module(force=True)
    class RecordIters(Hook):
        priority = "LOWEST"  # after the checkpoint hook
        seen: list[int] = []

        def __init__(self, stop_at: int = 0) -> None:
            self.stop_at = stop_at

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
            done = runner.iter + 1  # runner.iter counts up after this hook
            RecordIters.seen.append(done)
            if done == self.stop_at:
                raise Stop

    seg_mm.safe_checkpoints()
    cfg, _ = _build(files, tmp_path / "work")
    cfg.custom_hooks = [dict(type="RecordIters", stop_at=2)]
    with pytest.raises(Stop):  # killed right after the iteration-2 checkpoint
        seg_mm.ConsoleRunner.from_cfg(cfg).train()
    assert (tmp_path / "work" / "iter_2.pth").is_file()
    torch.load(tmp_path / "work" / "iter_2.pth", weights_only=True)  # safe loading holds
    RecordIters.seen.clear()
    cfg.custom_hooks = [dict(type="RecordIters")]
    runner = seg_mm.ConsoleRunner.from_cfg(cfg)
    runner.train()
    assert RecordIters.seen == [3, 4] and runner.iter == 4
    assert runner.val_evaluator.metrics[0].summary.keys() == {"aAcc", "mIoU", "mAcc"}


def test_run_key_follows_encoder_data_and_recipe_not_logging(tmp_path):
    import dataclasses

    from downstream.seg import SegmentConfig, run_key
    from mim.engine import RunConfig

    enc, man = tmp_path / "e.safetensors", tmp_path / "manifest.json"
    torch.manual_seed(0)
    one, two = ViTEncoder(VIT), ViTEncoder(VIT)
    save_encoder(enc, one)
    man.write_text("{}")
    cfg, run = SegmentConfig(iters=40), RunConfig(seed=0)
    key = run_key(cfg, run, man, enc)
    assert run_key(dataclasses.replace(cfg, log_interval=7, val_interval=3), run, man, enc) == key
    assert run_key(dataclasses.replace(cfg, iters=41), run, man, enc) != key
    assert run_key(cfg, RunConfig(seed=1), man, enc) != key
    save_encoder(enc, two)  # a retrained student must not resume the old segmenter
    assert run_key(cfg, run, man, enc) != key
    save_encoder(enc, one)
    assert run_key(cfg, run, man, enc) == key
    man.write_text('{"ade20k": 1}')
    assert run_key(cfg, run, man, enc) != key


def test_dataset_root_and_classes_come_from_the_manifest(tmp_path):
    from downstream.seg import find_data
    from mim.data import synth

    manifest = make_ade(tmp_path, n_train=2, n_val=1, classes=3)
    data = find_data(manifest)
    assert data.root == tmp_path / "ade20k" / "ADEChallengeData2016"
    assert data.classes == tuple(synth.SHAPE_NAMES[:3])
    with pytest.raises(MimError, match="manifest not found"):
        find_data(tmp_path / "nope.json")
    (data.root / "annotations" / "validation").rename(tmp_path / "moved")
    with pytest.raises(MimError, match="annotations/validation"):
        find_data(manifest)


@pytest.mark.parametrize("profile", ["smoke", "micro", "paper"])
def test_segment_params_load(profile):
    from downstream.seg import SegmentConfig
    from stages.common import load

    cfg = load(f"params/{profile}.yaml", "segment", SegmentConfig)
    assert len(cfg.out_blocks) == 4 and 0 <= cfg.warmup_iters < cfg.iters
    if profile == "paper":  # mmseg MAE's config (configs/mae/mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py)
        assert (cfg.out_blocks, cfg.crop_size, cfg.iters, cfg.batch_size, cfg.lr, cfg.layer_decay, cfg.warmup_iters) == (
            (4, 6, 8, 12), 512, 160_000, 16, 1e-4, 0.65, 1500
        )
        assert (cfg.rel_pos_bias, cfg.layer_scale, cfg.test_mode, cfg.slide_stride, cfg.drop_path) == (True, 1.0, "slide", 256, 0.1)
    else:  # the plain backbone: fast, outputs as before
        assert (cfg.rel_pos_bias, cfg.layer_scale) == (False, None)
