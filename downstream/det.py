"""COCO detection + instance segmentation with detectron2's ViTDet Mask R-CNN on a student ViT.

The model is detectron2's own `common/models/mask_rcnn_vitdet.py` (ViT + SimpleFeaturePyramid +
Mask R-CNN) and the recipe is that of `projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py`
(LSJ, AdamW with layer-wise lr decay, step schedule); both form a LazyConfig built here from
`DetectConfig`; the backbone is the student's encoder converted by `downstream/vitdet_convert.py`.
Training runs detectron2's trainer and hooks: `DetectionCheckpointer` checkpoints and resumes,
`COCOEvaluator` scores bbox and segm on val2017.  Import this module only after
`downstream.det_install.require_detectron2()`.
"""
from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from detectron2 import model_zoo
from detectron2.checkpoint import DetectionCheckpointer  # subclassed: SafeCheckpointer
from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig, instantiate
from detectron2.data import (
    DatasetCatalog,
    DatasetMapper,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.data import transforms as T
from detectron2.data.datasets import register_coco_instances
from detectron2.engine import AMPTrainer, SimpleTrainer, create_ddp_model, hooks, launch
from detectron2.evaluation import COCOEvaluator, inference_on_dataset
from detectron2.layers import ShapeSpec
from detectron2.modeling import ViT
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from detectron2.modeling.backbone.vit import get_vit_lr_decay_rate
from detectron2.solver import WarmupParamScheduler
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import CommonMetricPrinter, EventWriter, JSONWriter, get_event_storage
from detectron2.utils.logger import setup_logger
from fvcore.common.param_scheduler import MultiStepParamScheduler
from omegaconf import DictConfig, OmegaConf

from downstream.det_config import DetectConfig
from downstream.vitdet_convert import load_into_vit, vit_kwargs
from mim.checkpoint import load_error
from mim.config import to_dict
from mim.encoder_file import EncoderFile
from mim.engine import RunConfig, setup
from mim.errors import DataError, MimError
from mim.files import claim_run_dir, write_json
from mim.vit import ViTConfig

TASKS = ("bbox", "segm")
AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
TRAIN_NAME, VAL_NAME = "mimrepro_coco_train2017", "mimrepro_coco_val2017"


@dataclass(frozen=True, kw_only=True)
class CocoPaths:
    """A COCO-layout root: {train2017,val2017}/ images and annotations/instances_*.json (or, when
    prepare-data left bad entries out, the instances_*.json it wrote in `annotations_dir`)."""

    root: Path
    annotations_dir: Path | None = None

    def images(self, split: str) -> Path:
        return self.root / split

    def annotations(self, split: str) -> Path:
        return (self.annotations_dir or self.root / "annotations") / f"instances_{split}.json"

    def check(self) -> None:
        for split in ("train2017", "val2017"):
            for p in (self.images(split), self.annotations(split)):
                if not p.exists():
                    raise DataError(f"COCO layout incomplete under {self.root}: {p} is missing")


@dataclass(frozen=True, kw_only=True)
class DetectJob:
    """Everything one `mimrepro detect` run needs, plain and picklable (for `launch`)."""

    student: str
    encoder: Path
    coco: CocoPaths
    det: DetectConfig
    run: RunConfig
    checkpoint_dir: Path
    log_dir: Path


class SafeCheckpointer(DetectionCheckpointer):
    """detectron2's checkpointer that resumes only what `torch.load(weights_only=True)` accepts.

    detectron2 unpickles a `.pkl` named in `last_checkpoint` with plain `pickle.load`, which runs
    code stored in the file; here only `.pth` files inside the run's checkpoint folder load, with
    `weights_only=True`, and anything else is a one-line error saying how to start over.
    """

    def _load_file(self, filename: str) -> dict[str, Any]:
        path, folder = Path(filename).resolve(), Path(self.save_dir).resolve()
        again = f"delete {self.save_dir} to start this run over"
        if path.suffix != ".pth" or folder not in path.parents:
            raise MimError(f"refusing to resume from {filename}: not a .pth checkpoint inside {self.save_dir} "
                           f"(named by its last_checkpoint); {again}")
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a pickle with code, a truncated or foreign file
            raise MimError(f"cannot resume safely from {filename} ({load_error(e, path)}); {again}") from None
        return loaded if isinstance(loaded, dict) and "model" in loaded else {"model": loaded}


class LevelMaxPool(LastLevelMaxPool):
    """detectron2's LastLevelMaxPool with a configurable input level (its own always reads p5)."""

    def __init__(self, in_feature: str = "p5") -> None:
        super().__init__()
        self.in_feature = in_feature


class DvcLiveWriter(EventWriter):
    """Training losses and lr from detectron2's event storage into dvclive (in the run folder, as every stage)."""

    def __init__(self, log_dir: Path, resume: bool, window: int = 20) -> None:
        from dvclive import Live  # lazy: dvclive imports dvc

        self.live = Live(str(log_dir), resume=resume, save_dvc_exp=False, dvcyaml=None)
        self.window = window

    def write(self) -> None:
        storage = get_event_storage()
        self.live.step = storage.iter
        for name, (value, _) in storage.latest_with_smoothing_hint(self.window).items():
            if name == "lr" or "loss" in name:
                self.live.log_metric(f"train/{name}", value)
        self.live.next_step()

    def close(self) -> None:
        self.live.end()


def vit_layer_decay(rate: float, num_layers: int) -> Callable[[str], float]:
    """lr factor per parameter name (ViTDet's layer-wise decay; the heads get factor 1)."""

    def factor(name: str) -> float:
        return get_vit_lr_decay_rate(name, lr_decay_rate=rate, num_layers=num_layers)

    return factor


def num_classes(coco: CocoPaths) -> int:
    """Categories of the dataset (train and val must agree)."""
    cats = {}
    for split in ("train2017", "val2017"):
        path = coco.annotations(split)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read {path}: {e}") from None
        cats[split] = sorted(c["id"] for c in data.get("categories", []))
    if not cats["val2017"] or cats["train2017"] != cats["val2017"]:
        raise DataError(f"{coco.root}: train2017 and val2017 must list the same, non-empty categories")
    return len(cats["val2017"])


def register(coco: CocoPaths) -> None:
    """(Re-)register the train/val splits under fixed names in detectron2's catalogs."""
    for name, split in ((TRAIN_NAME, "train2017"), (VAL_NAME, "val2017")):
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_coco_instances(name, {}, str(coco.annotations(split)), str(coco.images(split)))


def pyramid(patch_size: int, scale_factors: tuple[float, ...]) -> tuple[list[str], list[int]]:
    """Names and strides of the simple feature pyramid levels plus the max-pooled top level."""
    strides = [int(patch_size / s) for s in scale_factors]
    strides.append(strides[-1] * 2)  # LastLevelMaxPool
    for s in strides:
        if s < 1 or 2 ** round(math.log2(s)) != s:
            raise MimError(f"detect.scale_factors {list(scale_factors)} give stride {s} with patch {patch_size}; need powers of 2")
    return [f"p{int(math.log2(s))}" for s in strides], strides


def build_config(job: DetectJob, enc_cfg: ViTConfig, classes: int) -> DictConfig:
    """The LazyConfig of this run: model, dataloaders, evaluator, optimizer, schedule, train."""
    det = job.det
    names, strides = pyramid(enc_cfg.patch_size, det.scale_factors)

    model = model_zoo.get_config("common/models/mask_rcnn_vitdet.py").model
    bb = model.backbone
    bb.net = L(ViT)(
        **vit_kwargs(
            enc_cfg,
            img_size=det.img_size,
            window_size=det.window_size,
            global_blocks=det.global_blocks,
            use_rel_pos=det.use_rel_pos,
            drop_path=det.drop_path,
        )
    )
    bb.in_feature = "last_feat"
    bb.scale_factors = list(det.scale_factors)
    bb.square_pad = det.img_size
    bb.out_channels = det.fpn_channels
    if names[-2] != "p5":  # a non-stock pyramid (e.g. patch 8): pool the actual last level
        bb.top_block = L(LevelMaxPool)(in_feature=names[-2])
    rpn = model.proposal_generator
    rpn.in_features = names
    rpn.head.in_channels = det.fpn_channels
    rpn.anchor_generator.sizes = [[det.anchor_scale * s] for s in strides]
    rpn.anchor_generator.strides = strides
    rpn.post_nms_topk = (1000, det.test_proposals)
    heads = model.roi_heads
    heads.num_classes = classes
    heads.batch_size_per_image = det.roi_batch_per_image
    heads.box_in_features = heads.mask_in_features = names[:-1]
    heads.box_pooler.scales = heads.mask_pooler.scales = [1.0 / s for s in strides[:-1]]
    heads.box_head.input_shape = ShapeSpec(channels=det.fpn_channels, height=7, width=7)
    heads.mask_head.input_shape = ShapeSpec(channels=det.fpn_channels, height=14, width=14)
    heads.box_head.conv_dims = list(det.box_head_convs)
    heads.box_head.fc_dims = list(det.box_head_fcs)
    heads.box_predictor.input_shape = ShapeSpec(channels=det.box_head_fcs[-1])
    heads.box_predictor.test_score_thresh = det.test_score_thresh
    heads.mask_head.conv_dims = list(det.mask_head_dims)

    lo, hi = det.lsj_scale
    train_mapper = L(DatasetMapper)(
        is_train=True,
        augmentations=[
            L(T.RandomFlip)(horizontal=True),
            L(T.ResizeScale)(min_scale=lo, max_scale=hi, target_height=det.img_size, target_width=det.img_size),
            L(T.FixedSizeCrop)(crop_size=(det.img_size, det.img_size), pad=False),
        ],
        image_format="RGB",
        use_instance_mask=True,
        recompute_boxes=True,  # masks are cropped, so boxes follow them
    )
    test_mapper = L(DatasetMapper)(
        is_train=False,
        augmentations=[L(T.ResizeShortestEdge)(short_edge_length=det.img_size, max_size=det.img_size)],
        image_format="RGB",
    )
    dataloader = OmegaConf.create()
    dataloader.train = L(build_detection_train_loader)(
        dataset=L(get_detection_dataset_dicts)(names=TRAIN_NAME),
        mapper=train_mapper,
        total_batch_size=det.batch_size,
        num_workers=job.run.num_workers,
    )
    dataloader.test = L(build_detection_test_loader)(
        dataset=L(get_detection_dataset_dicts)(names=VAL_NAME, filter_empty=False),
        mapper=test_mapper,
        num_workers=job.run.num_workers,
    )
    dataloader.evaluator = L(COCOEvaluator)(
        dataset_name=VAL_NAME,
        tasks=list(TASKS),
        use_fast_impl=False,  # the fast evaluator is compiled into detectron2._C
        output_dir=str(job.log_dir / "inference"),
    )

    optimizer = model_zoo.get_config("common/optim.py").AdamW
    optimizer.lr = det.lr
    optimizer.betas = list(det.betas)
    optimizer.weight_decay = det.weight_decay
    optimizer.params.lr_factor_func = L(vit_layer_decay)(rate=det.layer_decay, num_layers=enc_cfg.depth)
    optimizer.params.overrides = {"pos_embed": {"weight_decay": 0.0}}

    steps = [s for s in det.lr_steps if s < det.max_iter]
    lr_multiplier = L(WarmupParamScheduler)(
        scheduler=L(MultiStepParamScheduler)(
            values=[0.1**i for i in range(len(steps) + 1)], milestones=steps, num_updates=det.max_iter
        ),
        warmup_length=min(det.warmup_iters / det.max_iter, 1.0),
        warmup_factor=0.001,
    )
    train = dict(
        student=job.student,
        encoder=str(job.encoder),
        datasets={TRAIN_NAME: str(job.coco.root / "train2017"), VAL_NAME: str(job.coco.root / "val2017")},
        output_dir=str(job.checkpoint_dir),
        max_iter=det.max_iter,
        amp=dict(enabled=job.run.amp and torch.cuda.is_available()),  # fp16 AMP (ViTDet)
        checkpointer=dict(period=det.checkpoint_period, max_to_keep=2),
        log_period=det.log_period,
        device="cuda" if torch.cuda.is_available() else "cpu",
        seed=job.run.seed,
    )
    return OmegaConf.create(
        dict(model=model, dataloader=dataloader, optimizer=optimizer, lr_multiplier=lr_multiplier, train=train)
    )


# Settings that do not change the trained weights: a finished run re-evaluates instead of retraining.
NOT_TRAINING = ("test_proposals", "test_score_thresh", "checkpoint_period", "log_period")


def run_key(job: DetectJob, classes: int) -> dict[str, Any]:
    """What must be identical for a checkpoint to be resumed: the recipe, the data, the weights."""
    return {
        "detect": {k: v for k, v in to_dict(job.det).items() if k not in NOT_TRAINING},
        "seed": job.run.seed,
        "coco": str(job.coco.root),
        **({"annotations": str(job.coco.annotations_dir)} if job.coco.annotations_dir else {}),
        "classes": classes,
        "encoder_sha256": EncoderFile.read(job.encoder).sha256,
    }


def flat_metrics(results: dict[str, dict[str, float]]) -> dict[str, float | None]:
    """{'bbox': {'AP': ..}, 'segm': ..} -> {'bbox_AP': .., 'segm_APl': ..}; NaN -> None."""
    out: dict[str, float | None] = {}
    for task in TASKS:
        for key in AP_KEYS:
            v = results.get(task, {}).get(key, float("nan"))
            out[f"{task}_{key}"] = None if v is None or not math.isfinite(v) else round(float(v), 4)
    return out


def _prepare_checkpoint_dir(job: DetectJob, key: dict[str, Any], log: logging.Logger) -> None:
    """Keep checkpoints only when they were made with the same run key; else start afresh."""
    if claim_run_dir(job.checkpoint_dir, key):
        log.info("%s holds a run with another config, data or encoder: starting afresh", job.checkpoint_dir)
        (job.log_dir / "events.json").unlink(missing_ok=True)


def train_and_evaluate(job: DetectJob, classes: int) -> dict[str, float | None]:
    """Train (or resume) and evaluate in this process; returns flat metrics on the main process."""
    setup(job.run, process_group=False)  # threads, in each of detectron2's worker processes
    log = setup_logger(str(job.log_dir), distributed_rank=comm.get_rank(), name="detectron2", abbrev_name="d2")
    seed_all_rng(job.run.seed + comm.get_rank())
    register(job.coco)
    enc = EncoderFile.read(job.encoder)
    cfg = build_config(job, enc.config, classes)
    key = run_key(job, classes)
    if comm.is_main_process():
        job.log_dir.mkdir(parents=True, exist_ok=True)
        LazyConfig.save(cfg, str(job.log_dir / "config.yaml"))
        _prepare_checkpoint_dir(job, key, log)
    comm.synchronize()

    model = instantiate(cfg.model).to(cfg.train.device)
    report = load_into_vit(model.backbone.net, enc.state)
    log.info("backbone from %s: %s", job.encoder, report.summary())
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    loader = instantiate(cfg.dataloader.train)
    ddp = create_ddp_model(model, broadcast_buffers=False, fp16_compression=cfg.train.amp.enabled)
    trainer = (AMPTrainer if cfg.train.amp.enabled else SimpleTrainer)(ddp, loader, optimizer)
    checkpointer = SafeCheckpointer(model, str(job.checkpoint_dir), trainer=trainer)
    max_iter = cfg.train.max_iter
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            hooks.PeriodicCheckpointer(checkpointer, cfg.train.checkpointer.period, max_iter=max_iter, max_to_keep=2)
            if comm.is_main_process()
            else None,
            hooks.PeriodicWriter(
                [
                    CommonMetricPrinter(max_iter),
                    JSONWriter(str(job.log_dir / "events.json")),
                    DvcLiveWriter(job.log_dir, resume=checkpointer.has_checkpoint()),
                ],
                period=cfg.train.log_period,
            )
            if comm.is_main_process()
            else None,
        ]
    )
    start_iter = 0
    if checkpointer.has_checkpoint():
        checkpointer.resume_or_load("", resume=True)
        start_iter = trainer.iter + 1
        log.info("resumed from %s at iteration %d/%d", checkpointer.get_checkpoint_file(), start_iter, max_iter)
    if start_iter < max_iter:
        try:
            trainer.train(start_iter, max_iter)
        except FloatingPointError as e:  # detectron2: "Loss became infinite or NaN at iteration=..."
            raise MimError(f"detect: {e}; the checkpoints in {job.checkpoint_dir} are kept. Lower detect.lr") from None

    model.eval()
    results = inference_on_dataset(model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator))
    comm.synchronize()
    return flat_metrics(results) if comm.is_main_process() else {}


def _worker(job: DetectJob, classes: int, out: Path) -> None:
    metrics = train_and_evaluate(job, classes)
    if comm.is_main_process():
        write_json(out, metrics)


def run_detect(job: DetectJob, metrics_path: Path, num_gpus: int) -> dict[str, float | None]:
    """Train and evaluate on `num_gpus` GPUs (detectron2's launcher) or the CPU; write metrics."""
    classes = num_classes(job.coco)  # once: COCO's train json takes seconds to parse
    if num_gpus > 1:
        launch(_worker, num_gpus, dist_url="auto", args=(job, classes, metrics_path))
    else:
        _worker(job, classes, metrics_path)
    return json.loads(metrics_path.read_text())
