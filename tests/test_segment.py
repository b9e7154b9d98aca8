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
    assert len(data.classes) == 4 and model.decode_head.num_classes == 4  # read from the manifest

    loader = ConsoleRunner.build_dataloader(cfg.train_dataloader, seed=0)
    batch = next(iter(loader))
    model.train()
    losses = [sum(v for k, v in model.train_step(batch, optim).items() if "loss" in k).item() for _ in range(8)]
    assert losses[-1] < 0.8 * losses[0], losses


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
    if profile == "paper":
        assert (cfg.out_blocks, cfg.crop_size, cfg.iters, cfg.batch_size, cfg.lr, cfg.layer_decay, cfg.warmup_iters) == (
            (4, 6, 8, 12), 512, 160_000, 16, 1e-4, 0.65, 1500
        )
