"""ADE20K semantic segmentation of a student encoder: UperNet + auxiliary FCN head in mmsegmentation.

`segment(...)` builds one explicit mmseg config (no `_base_` inheritance; the resolved config is
saved beside the metrics), trains it with mmengine's Runner (iteration-based, auto-resume from
the work dir), evaluates single-scale mIoU with mmseg's IoUMetric, and returns the metrics.
The model is BEiT/MAE's segmentation recipe (mmseg's MAE backbone: per-block relative position
bias and LayerScale, downstream/seg_backbone.py): ViT blocks 4/6/8/12 -> Feature2Pyramid (deconv /
identity / max-pool to strides 4/8/16/32) -> UPerHead, FCNHead on the third level (weight 0.4),
AdamW with layer-wise lr decay, linear warm-up then poly decay.

Dataset discovery and the config builder import no mmseg; `segment` does (downstream/seg_mm.py).
"""
from __future__ import annotations

import csv
import math
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mim.checkpoint import load_error
from mim.config import Betas, DropRate, LayerDecay, NonNegFloat, NonNegInt, PosFloat, PosInt, Ratios
from mim.data.images import IMAGENET_MEAN, IMAGENET_STD
from mim.data.manifest import locate, read_manifest, validate_ade20k
from mim.data.scan import ade20k_problems, report
from mim.encoder_file import EncoderFile
from mim.engine import RunConfig, setup
from mim.errors import MimError
from mim.vit import ViTConfig


@dataclass(frozen=True, kw_only=True)
class SegmentConfig:
    """UperNet fine-tuning of a ViT student on an ADE20K-layout dataset (iteration based)."""

    out_blocks: tuple[PosInt, ...] = (4, 6, 8, 12)  # 1-based blocks whose outputs feed the pyramid
    crop_size: PosInt = 512
    img_scale: tuple[PosInt, PosInt] = (2048, 512)  # (long, short) resize target before cropping / for eval
    ratio_range: Ratios = (0.5, 2.0)  # random rescale range around img_scale (training)
    iters: PosInt = 160_000
    batch_size: PosInt = 16  # images per iteration, summed over GPUs
    lr: PosFloat = 1e-4
    betas: Betas = (0.9, 0.999)
    weight_decay: NonNegFloat = 0.05
    layer_decay: LayerDecay = 0.65
    warmup_iters: NonNegInt = 1500
    poly_power: PosFloat = 1.0
    drop_path: DropRate = 0.1
    rel_pos_bias: bool = True  # a relative position bias table per block, zero-initialised (mmseg MAE backbone)
    layer_scale: PosFloat | None = 1.0  # LayerScale init for an encoder without one (mmseg MAE init_values); None = off
    head_channels: PosInt = 768  # UPerHead width
    aux_channels: PosInt = 256  # FCN auxiliary head width
    aux_weight: NonNegFloat = 0.4
    test_mode: Literal["slide", "whole"] = "slide"
    slide_stride: PosInt = 256  # slide window stride (single scale): mmseg MAE test_cfg stride=(256, 256) with 512 crops
    val_interval: PosInt = 16_000  # also evaluated after the last iteration
    checkpoint_interval: PosInt = 16_000
    log_interval: PosInt = 50

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if len(self.out_blocks) != 4:
            out.append(("out_blocks", f"{list(self.out_blocks)} needs 4 blocks (one per pyramid level, strides 4/8/16/32)"))
        elif list(self.out_blocks) != sorted(self.out_blocks):
            out.append(("out_blocks", f"{list(self.out_blocks)} must be non-decreasing"))
        if self.warmup_iters >= self.iters:
            out.append(("warmup_iters", f"{self.warmup_iters} must be below iters {self.iters}"))
        if self.rel_pos_bias and self.test_mode == "whole":
            out.append(("rel_pos_bias", "needs test_mode: slide (the bias table covers crop_size windows, as in mmseg MAE)"))
        if self.slide_stride > self.crop_size:
            out.append(("slide_stride", f"{self.slide_stride} exceeds crop_size {self.crop_size}: windows would leave gaps"))
        return out

    def check_encoder(self, enc: ViTConfig) -> list[tuple[str, str]]:
        """Checks against the student encoder (the `encoder` params section or an encoder file)."""
        out = []
        if self.out_blocks and self.out_blocks[-1] > enc.depth:
            out.append(("out_blocks", f"{list(self.out_blocks)} reach past the encoder's {enc.depth} blocks"))
        if self.crop_size % enc.patch_size:
            out.append(("crop_size", f"{self.crop_size} is not a multiple of the patch size {enc.patch_size}"))
        return out


# --- dataset ---------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class SegData:
    root: Path  # the ADEChallengeData2016 folder
    classes: tuple[str, ...]  # label k (1..K in the PNGs) is classes[k-1]; 0 = other/ignore
    splits: Path | None = None  # training.txt / validation.txt: the image stems to use (prepare-data skipped the others)


def find_data(data: Path) -> SegData:
    """The ADE20K root and its K class names: from data/manifest.json (written by prepare-data), or
    from an ADEChallengeData2016 folder itself (objectInfo150.txt, else 150 unnamed classes), whose
    images and label maps are then checked one by one (mim/data/scan.py) before any training."""
    data = Path(data)
    root = locate(data, "ade20k")
    info = validate_ade20k(root)  # the layout, and a label PNG for every image (DataError otherwise)
    splits = None
    if data.is_dir():
        k, names = int(info["classes"]), list(info["class_names"])
        bad, _ = ade20k_problems(root, k)
        if bad:
            raise report(bad, root, "ADE20K files", "fix or remove them (or prepare the dataset with data.on_bad_file: skip)")
    else:
        m = read_manifest(data)
        k = m.ade20k_classes
        names = list(m.class_names.get("ade20k", ()))[:k]
        splits = m.ade20k_splits
    names += [f"class_{i}" for i in range(len(names) + 1, k + 1)]  # real ADE20K without objectInfo150.txt
    return SegData(root=root, classes=tuple(names), splits=splits)


def split_list(data: SegData, split: str) -> dict[str, str]:
    """mmseg's `ann_file`: a text file of image stems, read instead of listing the folder (BaseSegDataset)."""
    return {} if data.splits is None else {"ann_file": str((data.splits / f"{split}.txt").resolve())}


# --- the mmseg config ---------------------------------------------------------------------------
def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", 1))


def build_config(
    cfg: SegmentConfig, run: RunConfig, data: SegData, encoder: Path, work_dir: Path, *, cuda: bool
) -> dict[str, Any]:
    """The complete mmseg/mmengine config as a plain dict."""
    from downstream.seg_backbone import pyramid_rescales  # noqa: PLC0415  (torch, timm: no mmseg)

    vit = EncoderFile.read(encoder).config
    if cfg.batch_size % world_size():
        raise MimError(f"segment.batch_size {cfg.batch_size} is not divisible by the {world_size()} processes")
    for key, message in cfg.check_encoder(vit):  # SegmentConfig checked its own keys when it was read
        raise MimError(f"segment.{key}: {message}")
    crop = (cfg.crop_size, cfg.crop_size)
    num_classes = len(data.classes)
    dim = vit.embed_dim
    norm = dict(type="SyncBN", requires_grad=True)  # mmengine turns it into BN when not distributed
    loss = dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0)
    model = dict(
        type="EncoderDecoder",
        data_preprocessor=dict(
            type="SegDataPreProcessor",
            mean=[255 * m for m in IMAGENET_MEAN],
            std=[255 * s for s in IMAGENET_STD],
            bgr_to_rgb=True,
            pad_val=0,
            seg_pad_val=255,
            size=crop,
        ),
        backbone=dict(type="MimViT", encoder=str(encoder), out_blocks=list(cfg.out_blocks), img_size=cfg.crop_size,
                      drop_path=cfg.drop_path, rel_pos_bias=cfg.rel_pos_bias, layer_scale=cfg.layer_scale),
        neck=dict(type="Feature2Pyramid", embed_dim=dim, rescales=pyramid_rescales(vit.patch_size), norm_cfg=norm),
        decode_head=dict(
            type="UPerHead",
            in_channels=[dim] * 4,
            in_index=[0, 1, 2, 3],
            pool_scales=(1, 2, 3, 6),
            channels=cfg.head_channels,
            dropout_ratio=0.1,
            num_classes=num_classes,
            norm_cfg=norm,
            align_corners=False,
            loss_decode=loss,
        ),
        auxiliary_head=dict(
            type="FCNHead",
            in_channels=dim,
            in_index=2,
            channels=cfg.aux_channels,
            num_convs=1,
            concat_input=False,
            dropout_ratio=0.1,
            num_classes=num_classes,
            norm_cfg=norm,
            align_corners=False,
            loss_decode={**loss, "loss_weight": cfg.aux_weight},
        ),
        train_cfg=dict(),
        test_cfg=dict(mode="slide", crop_size=crop, stride=(cfg.slide_stride,) * 2) if cfg.test_mode == "slide" else dict(mode="whole"),
    )
    dataset = dict(
        type="BaseSegDataset",
        data_root=str(data.root),
        metainfo=dict(classes=list(data.classes)),
        img_suffix=".jpg",
        seg_map_suffix=".png",
        reduce_zero_label=True,  # ADE: 0 = other -> ignored (255); label k -> class k-1
    )
    train_pipeline = [
        dict(type="LoadImageFromFile"),
        dict(type="LoadAnnotations"),  # reduce_zero_label comes from the dataset
        dict(type="RandomResize", scale=tuple(cfg.img_scale), ratio_range=tuple(cfg.ratio_range), keep_ratio=True),
        dict(type="RandomCrop", crop_size=crop, cat_max_ratio=0.75),
        dict(type="RandomFlip", prob=0.5),
        dict(type="PhotoMetricDistortion"),
        dict(type="PackSegInputs"),
    ]
    test_pipeline = [
        dict(type="LoadImageFromFile"),
        dict(type="Resize", scale=tuple(cfg.img_scale), keep_ratio=True),
        dict(type="LoadAnnotations"),  # after Resize: metrics are computed at the original size
        dict(type="PackSegInputs"),
    ]
    workers = dict(num_workers=run.num_workers, persistent_workers=run.num_workers > 0)
    train_dataloader = dict(
        batch_size=cfg.batch_size // world_size(),
        sampler=dict(type="InfiniteSampler", shuffle=True),
        dataset=dict(**dataset, **split_list(data, "training"),
                     data_prefix=dict(img_path="images/training", seg_map_path="annotations/training"), pipeline=train_pipeline),
        **workers,
    )
    val_dataloader = dict(
        batch_size=1,
        sampler=dict(type="DefaultSampler", shuffle=False),
        dataset=dict(**dataset, **split_list(data, "validation"),
                     data_prefix=dict(img_path="images/validation", seg_map_path="annotations/validation"), pipeline=test_pipeline),
        **workers,
    )
    schedulers = [
        dict(type="PolyLR", eta_min=0.0, power=cfg.poly_power, begin=cfg.warmup_iters, end=cfg.iters, by_epoch=False),
    ]
    if cfg.warmup_iters:
        schedulers.insert(0, dict(type="LinearLR", start_factor=1e-6, by_epoch=False, begin=0, end=cfg.warmup_iters))
    amp = run.amp and cuda
    return dict(
        default_scope="mmseg",
        work_dir=str(work_dir),
        model=model,
        train_dataloader=train_dataloader,
        val_dataloader=val_dataloader,
        val_evaluator=dict(type="PerClassIoUMetric", iou_metrics=["mIoU"]),
        train_cfg=dict(type="IterBasedTrainLoop", max_iters=cfg.iters, val_interval=min(cfg.val_interval, cfg.iters)),
        val_cfg=dict(type="ValLoop"),
        optim_wrapper=dict(
            type="AmpOptimWrapper" if amp else "OptimWrapper",
            **(dict(dtype="bfloat16") if amp else {}),
            optimizer=dict(type="AdamW", lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay),
            constructor="LayerDecayConstructor",
            paramwise_cfg=dict(layer_decay=cfg.layer_decay),
        ),
        param_scheduler=schedulers,
        default_hooks=dict(
            timer=dict(type="IterTimerHook"),
            logger=dict(type="LoggerHook", interval=cfg.log_interval, log_metric_by_epoch=False),
            param_scheduler=dict(type="ParamSchedulerHook"),
            checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=cfg.checkpoint_interval, max_keep_ckpts=1, save_last=True),
            sampler_seed=dict(type="DistSamplerSeedHook"),
        ),
        custom_hooks=[dict(type="FiniteHook")],  # downstream/seg_mm.py: a NaN loss stops before it is checkpointed
        env_cfg=dict(
            cudnn_benchmark=cuda,
            mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
            dist_cfg=dict(backend="nccl" if cuda else "gloo"),
        ),
        launcher="pytorch" if world_size() > 1 else "none",
        randomness=dict(seed=run.seed),
        log_processor=dict(by_epoch=False),
        log_level="INFO",
        resume=True,  # continue from work_dir/last_checkpoint when present
        load_from=None,
    )


# Settings that do not change the trained weights: a finished run re-evaluates instead of retraining.
NOT_TRAINING = ("test_mode", "slide_stride", "val_interval", "checkpoint_interval", "log_interval")


def run_key(cfg: SegmentConfig, run: RunConfig, data: Path, encoder: Path) -> dict[str, Any]:
    """What must be identical for mmengine to resume the checkpoints in work_dir."""
    import dataclasses  # noqa: PLC0415

    from mim.files import file_sha256  # noqa: PLC0415

    data = Path(data)
    return {
        "segment": {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_TRAINING},
        "seed": run.seed,
        # a manifest of embedded data holds a sha256 of every image; a dataset folder is known by its path
        "data": file_sha256(data) if data.is_file() else str(data.resolve()),
        "encoder_sha256": EncoderFile.read(encoder).sha256,
    }


# --- run -----------------------------------------------------------------------------------------
def segment(
    cfg: SegmentConfig, run: RunConfig, *, data: Path, encoder: Path, work_dir: Path, config_out: Path
) -> tuple[dict[str, float], dict[str, list[Any]]]:
    """Train and evaluate; returns ({mIoU, mAcc, aAcc} in %, per-class {class, IoU, Acc} fractions)."""
    import torch  # noqa: I001  (seg_mm first: it checks the mmseg stack and installs the mmcv._ext stand-in)

    from downstream import seg_mm  # MimError naming the install if absent
    from mmengine.config import Config
    from mim.files import atomic_write, claim_run_dir

    setup(run, process_group=False)  # threads; mmengine's launcher joins the process group
    seg_data = find_data(data)
    mm_cfg = Config(build_config(cfg, run, seg_data, encoder, work_dir, cuda=torch.cuda.is_available()))  # checks the encoder
    if claim_run_dir(work_dir, run_key(cfg, run, data, encoder)):
        print(f"{work_dir} held a run with another config, data or encoder: starting afresh", flush=True)
    atomic_write(config_out, lambda tmp: tmp.write_text(mm_cfg.pretty_text))
    seg_mm.safe_checkpoints()
    seg_mm.quiet_known_warnings()
    runner = seg_mm.ConsoleRunner.from_cfg(mm_cfg)
    try:
        runner.train()  # resumes from work_dir; validates every val_interval and after the last iteration
    except pickle.UnpicklingError as e:
        raise MimError(f"cannot resume safely from {work_dir} ({load_error(e)}); delete that folder to start over") from None
    metric = runner.val_evaluator.metrics[0]
    if not metric.summary:  # resumed after the last iteration: nothing was left to train, evaluate now
        runner.val()
    bad = {k: v for k, v in metric.summary.items() if not math.isfinite(float(v))}
    if bad:  # mIoU is a nan-mean over classes: NaN only when no validation pixel has a label
        raise MimError(f"segment: the evaluation gave {bad}; do the validation label maps hold classes 1..K?")
    return dict(metric.summary), dict(metric.per_class or {})  # per-class: on rank 0 only


def write_per_class(path: Path, per_class: dict[str, list[Any]]) -> None:
    """CSV: class, IoU, Acc in % (empty where the class is absent from the validation labels)."""
    from mim.files import atomic_write  # noqa: PLC0415

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["class", "IoU", "Acc"])
            for name, iou, acc in zip(per_class["class"], per_class["IoU"], per_class["Acc"]):
                w.writerow([name, _pct(iou), _pct(acc)])

    atomic_write(path, write)


def _pct(x: float) -> str:
    return "" if math.isnan(x) else f"{100 * x:.2f}"
