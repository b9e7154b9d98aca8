"""Detection with detectron2 (ViTDet Mask R-CNN): converter, training, evaluation, resume, errors."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mim.data.synth import write_coco
from mim.encoder_file import save_encoder
from mim.engine import RunConfig
from mim.errors import MimError
from mim.vit import ViTConfig, ViTEncoder
from stages.common import load as load_section

ROOT = Path(__file__).resolve().parents[1]
HAVE_D2 = importlib.util.find_spec("detectron2") is not None
needs_d2 = pytest.mark.skipif(not HAVE_D2, reason="detectron2 not installed: run `bash scripts/install_detectron2.sh .venv`")
TINY = ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)


def make_coco(root: Path, n_train: int = 2, n_val: int = 2, size: int = 64) -> Path:
    """The embedded COCO stand-in (prepare-data's generator), at its smallest."""
    write_coco(root, classes=3, train_images=n_train, val_images=n_val, image_size=size, objects=(1, 3), seed=0)
    return root


def test_missing_detectron2_names_the_install_command(monkeypatch):
    from downstream.det_install import require_detectron2

    monkeypatch.setitem(sys.modules, "detectron2.modeling.backbone.vit", None)  # import fails
    with pytest.raises(MimError, match="install_detectron2.sh"):
        require_detectron2()


def _vit(enc: ViTConfig, img_size: int):
    from detectron2.modeling import ViT

    from downstream.vitdet_convert import vit_kwargs

    return ViT(**vit_kwargs(enc, img_size=img_size, window_size=0, global_blocks=(), use_rel_pos=False, drop_path=0.0))


@pytest.mark.detectron2
@needs_d2
@pytest.mark.parametrize("layer_scale", [None, 0.1])
def test_converted_vit_computes_the_encoder(layer_scale):
    """Every encoder weight lands in detectron2's ViT: same features on the same grid."""
    from downstream.vitdet_convert import load_into_vit

    torch.manual_seed(0)
    cfg = ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, layer_scale=layer_scale)
    enc = ViTEncoder(cfg).eval()
    for p in enc.parameters():  # no zero biases or unit gammas that could hide a missed key
        p.data.add_(torch.randn_like(p) * 0.05)
    vit = _vit(cfg, 32).eval()
    report = load_into_vit(vit, enc.state_dict())
    assert sorted(report.dropped) == ["cls_token", "norm.bias", "norm.weight"]
    assert len(report.folded) == (4 if layer_scale else 0) and not report.fresh
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours = enc.forward_blocks(enc.embed(x))  # (N, L, D) patch tokens, no cls (ViTDet has none)
        theirs = vit(x)["last_feat"].flatten(2).transpose(1, 2)  # (N, D, h, w) -> (N, L, D)
    assert torch.allclose(ours, theirs, atol=1e-5)  # the same LayerNorm eps (1e-6) as the encoder
    assert all(m.eps == 1e-6 for m in vit.modules() if isinstance(m, torch.nn.LayerNorm))


@pytest.mark.detectron2
@needs_d2
def test_beit_encoder_converts_exactly_but_its_relative_bias():
    """A BEiT-layout encoder (per-layer relative bias, q/v biases, gamma_1/2, no pos_embed): LayerScale
    folded and q/v biases fused exactly, so with the relative tables zeroed (the one part dropped)
    detectron2's ViT (its rel_pos_h/w zero at init) computes the same features."""
    from detectron2.modeling import ViT

    from downstream.vitdet_convert import load_into_vit, vit_kwargs
    from mim.vit import per_layer_state

    torch.manual_seed(0)
    cfg = dataclasses.replace(TINY, layer_scale=0.1, abs_pos=False, rel_pos_bias="shared")
    enc = ViTEncoder(cfg).eval()
    for p in enc.parameters():  # no zero q/v biases or unit gammas that could hide a missed key
        p.data.add_(torch.randn_like(p) * 0.05)
    cfg, state = per_layer_state(cfg, enc.state_dict())  # the layout of the encoder file
    vit = ViT(**vit_kwargs(cfg, img_size=32, window_size=0, global_blocks=(), use_rel_pos=True, drop_path=0.0)).eval()
    assert vit.pos_embed is None  # the encoder has no absolute table to give it
    report = load_into_vit(vit, state)
    tables = ["blocks.0.attn.relative_position_bias_table", "blocks.1.attn.relative_position_bias_table"]
    assert sorted(report.dropped) == sorted(["cls_token", "norm.bias", "norm.weight", *tables])
    assert len(report.folded) == 4 and len(report.fused) == 4 and all(k.endswith(("rel_pos_h", "rel_pos_w")) for k in report.fresh)
    assert torch.equal(vit.state_dict()["blocks.1.attn.qkv.bias"][32:64], torch.zeros(32))  # BEiT's k bias
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        theirs = vit(x)["last_feat"].flatten(2).transpose(1, 2)  # (N, L, D)
        ours = enc.patch_embed(x)
        for blk in enc.blocks:  # without cls and with the relative bias at zero: nothing dropped matters
            blk.attn.relative_position_bias_table = None
            ours = blk(ours)
        assert torch.allclose(ours, theirs, atol=1e-5)
        enc.blocks[0].gamma_1.mul_(2)  # the gammas are really used
        mine = enc.patch_embed(x)
        for blk in enc.blocks:
            mine = blk(mine)
        assert not torch.allclose(mine, theirs, atol=1e-3)
    with pytest.raises(MimError, match="use_rel_pos"):
        vit_kwargs(cfg, img_size=32, use_rel_pos=False)


@pytest.mark.detectron2
@needs_d2
def test_pos_embed_is_interpolated_to_the_detection_grid():
    from timm.layers import resample_abs_pos_embed

    from downstream.vitdet_convert import load_into_vit

    enc = ViTEncoder(TINY).eval()
    vit = _vit(TINY, 64).eval()  # 8x8 grid for a 4x4 pretraining grid
    load_into_vit(vit, enc.state_dict())
    big = ViTEncoder(dataclasses.replace(TINY, img_size=64)).eval()
    state = enc.state_dict()
    state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], (8, 8), (4, 4), num_prefix_tokens=1, antialias=False)
    big.load_state_dict(state)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ours = big.forward_blocks(big.embed(x))
        theirs = vit(x)["last_feat"].flatten(2).transpose(1, 2)
    assert torch.allclose(ours, theirs, atol=1e-4)


@pytest.mark.detectron2
@needs_d2
def test_converter_fails_on_unexpected_or_missing_keys():
    from downstream.vitdet_convert import load_into_vit, vit_kwargs

    state = ViTEncoder(TINY).state_dict()
    with pytest.raises(MimError, match="unexpected.*head.weight"):
        load_into_vit(_vit(TINY, 32), {**state, "head.weight": torch.zeros(10, 32)})
    deeper = dataclasses.replace(TINY, depth=3)
    with pytest.raises(MimError, match="missing.*blocks.2"):
        load_into_vit(_vit(deeper, 32), state)
    with pytest.raises(MimError, match="global_blocks"):
        vit_kwargs(TINY, img_size=32, global_blocks=(5,))


def _job(tmp_path: Path, **det_overrides):
    from downstream.det import CocoPaths, DetectConfig, DetectJob

    det = load_section(ROOT / "params/micro.yaml", "detect", DetectConfig)
    det = dataclasses.replace(det, **det_overrides)
    enc = tmp_path / "enc.safetensors"
    torch.manual_seed(0)
    save_encoder(enc, ViTEncoder(TINY))
    coco = CocoPaths(root=make_coco(tmp_path / "coco", n_train=2, n_val=2, size=64))
    return DetectJob(student="t", encoder=enc, coco=coco, det=det, run=RunConfig(threads=2),
                     checkpoint_dir=tmp_path / "ckpt", log_dir=tmp_path / "logs")


@pytest.mark.detectron2
@needs_d2
def test_few_iterations_lower_the_loss_on_a_fixed_batch(tmp_path):
    from detectron2.config import instantiate
    from detectron2.utils.events import EventStorage

    from downstream.det import build_config, register

    job = _job(tmp_path, drop_path=0.0, lr=1e-3, layer_decay=1.0)
    register(job.coco)
    cfg = build_config(job, TINY, classes=3)
    model = instantiate(cfg.model).train()
    cfg.optimizer.params.model = model
    opt = instantiate(cfg.optimizer)
    torch.manual_seed(0)
    batch = next(iter(instantiate(cfg.dataloader.train)))

    def loss() -> torch.Tensor:
        torch.manual_seed(1)  # same RPN / RoI sampling every time
        return sum(model(batch).values())

    with EventStorage(0):
        first = loss()
        for _ in range(6):
            opt.zero_grad()
            loss().backward()
            opt.step()
        last = loss()
    assert last.item() < 0.9 * first.item()


@pytest.mark.detectron2
@needs_d2
def test_detect_stage_writes_all_metrics_and_resumes(tmp_path, monkeypatch):
    from stages.cli import main

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    save_encoder(Path("models/s/encoder.safetensors"), ViTEncoder(load_section(ROOT / "params/micro.yaml", "encoder", ViTConfig)))
    make_coco(tmp_path / "coco", n_train=2, n_val=2, size=64)
    args = ["detect", "--encoder", "models/s/encoder.safetensors", "--data", "coco", "--metrics", "metrics/detect/s.json",
            "--run", "runs/detect-s", "--params", str(ROOT / "params/micro.yaml")]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    metrics = json.loads(Path("metrics/detect/s.json").read_text())
    assert sorted(metrics) == sorted(f"{t}_{k}" for t in ("bbox", "segm") for k in ("AP", "AP50", "AP75", "APs", "APm", "APl"))
    assert all(v is None or 0.0 <= v <= 100.0 for v in metrics.values())
    assert Path("runs/detect-s/checkpoints/model_final.pth").is_file()
    assert "total_loss" in json.loads(Path("runs/detect-s/metrics.json").read_text())["train"]  # dvclive
    from detectron2.config import LazyConfig

    saved = LazyConfig.load("runs/detect-s/config.yaml")  # the config it ran, reloadable
    assert saved.train.max_iter == 2 and saved.model.backbone.net.depth == 2
    assert "COCO val2017 AP box" in first.output

    again = CliRunner().invoke(main, args)  # finished run: resumes at the end, evaluates only
    assert again.exit_code == 0, again.output
    assert "resumed from" in Path("runs/detect-s/log.txt").read_text()
    assert json.loads(Path("metrics/detect/s.json").read_text()) == metrics


@pytest.mark.detectron2
@needs_d2
def test_detect_stage_errors_are_one_line(tmp_path, monkeypatch):
    from stages.cli import main

    monkeypatch.chdir(tmp_path)
    params = ["--params", str(ROOT / "params/micro.yaml")]
    paths = ["--data", "coco", "--metrics", "m.json", "--run", "r"]
    out = CliRunner().invoke(main, ["detect", "--encoder", "models/nope/encoder.safetensors", *paths, *params])
    assert out.exit_code == 1 and "encoder file not found" in out.output
    save_encoder(Path("models/s/encoder.safetensors"), ViTEncoder(TINY))
    (tmp_path / "coco").mkdir()
    out = CliRunner().invoke(main, ["detect", "--encoder", "models/s/encoder.safetensors", *paths, *params])
    assert out.exit_code == 1 and "COCO root coco: missing train2017/" in out.output


@pytest.mark.detectron2
@needs_d2
def test_checkpoints_of_another_run_are_not_resumed(tmp_path):
    import logging

    from downstream.det import _prepare_checkpoint_dir

    job = _job(tmp_path)
    log = logging.getLogger("test")
    _prepare_checkpoint_dir(job, {"encoder_sha256": "a"}, log)
    (job.checkpoint_dir / "model_final.pth").write_bytes(b"x")
    _prepare_checkpoint_dir(job, {"encoder_sha256": "a"}, log)  # same run: kept
    assert (job.checkpoint_dir / "model_final.pth").is_file()
    _prepare_checkpoint_dir(job, {"encoder_sha256": "b"}, log)  # new encoder: afresh
    assert not (job.checkpoint_dir / "model_final.pth").exists()
    assert json.loads((job.checkpoint_dir / "run.json").read_text()) == {"encoder_sha256": "b"}


@pytest.mark.detectron2
@needs_d2
def test_paper_profile_is_detectron2s_vitdet_b_recipe(tmp_path):
    """params/paper.yaml + a ViT-B/16 encoder rebuild detectron2's mask_rcnn_vitdet_b_100ep."""
    from detectron2 import model_zoo

    from downstream.det import CocoPaths, DetectConfig, DetectJob, build_config

    det = load_section(ROOT / "params/paper.yaml", "detect", DetectConfig)
    vit_b = ViTConfig(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12)
    job = DetectJob(student="mae", encoder=tmp_path / "e", coco=CocoPaths(root=tmp_path), det=det, run=RunConfig(),
                    checkpoint_dir=tmp_path / "c", log_dir=tmp_path / "l")
    ours = build_config(job, vit_b, classes=80)
    stock = model_zoo.get_config("common/models/mask_rcnn_vitdet.py").model
    net, ref = ours.model.backbone.net, stock.backbone.net
    for k in ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "drop_path_rate", "window_size",
              "use_rel_pos", "window_block_indexes", "residual_block_indexes"):
        assert _flat(net[k]) == _flat(ref[k]), k
    assert ours.model.backbone.scale_factors == list(stock.backbone.scale_factors)
    assert ours.model.backbone.square_pad == 1024 and ours.model.backbone.top_block == stock.backbone.top_block
    for path in ("proposal_generator.in_features", "proposal_generator.anchor_generator.sizes",
                 "proposal_generator.anchor_generator.strides", "roi_heads.box_in_features",
                 "roi_heads.box_pooler.scales", "roi_heads.box_head.conv_dims", "roi_heads.box_head.fc_dims",
                 "roi_heads.mask_head.conv_dims", "roi_heads.batch_size_per_image", "proposal_generator.post_nms_topk",
                 "roi_heads.box_predictor.test_score_thresh"):
        a, b = ours.model, stock
        for part in path.split("."):
            a, b = a[part], b[part]
        assert _flat(a) == _flat(b), path  # 32.0 == 32
    assert ours.optimizer.lr == 1e-4 and ours.optimizer.weight_decay == 0.1
    assert ours.optimizer.params.lr_factor_func.rate == 0.7
    assert list(ours.lr_multiplier.scheduler.milestones) == [163889, 177546]
    assert ours.train.max_iter == 184375 and ours.dataloader.train.total_batch_size == 64


def _flat(x):
    if isinstance(x, (str, bytes)) or not hasattr(x, "__iter__"):
        return [x]
    return [v for item in x for v in _flat(item)]
