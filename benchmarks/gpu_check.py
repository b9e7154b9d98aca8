"""One prepared GPU check: MAE throughput and MFU, one step of every stage, DDP equivalence.

    bash benchmarks/gpu_check.sh                               # one GPU machine, at most 8 minutes -> benchmarks/RESULTS.md
    bash benchmarks/gpu_check.sh --dry --out /tmp/RESULTS.md   # CPU, tiny sizes, fp32, 1 step each, < 60 s

What it runs and prints (and writes to `--out` as Markdown, after each part, so a run cut short
keeps what it measured):
1. machine: GPU name(s) and memory, driver, CUDA, cuDNN, torch, timm, CPU count, commit;
2. MAE pretraining, ViT-B/16 at 224 with the 8 x 512 decoder (params/paper.yaml), bf16 autocast as
   mim/engine.py trains on CUDA, batch `--batch` (256): images/s, step time and MFU = images/s x
   fwd+bwd FLOPs per image (torch.utils.flop_counter on the meta device) / the GPU's peak dense bf16
   FLOP/s (PEAK_BF16, keyed by torch.cuda.get_device_name(); 'unknown peak' otherwise), eager and
   with torch.compile (compile time included in its warm-up, reported apart);
3. one step of every method (mae, beit, img2vec, scratch, the DINO teacher), of fine-tune and the
   linear probe, and of the downstream stages (COCO detection: detectron2's ViTDet Mask R-CNN;
   ADE20K segmentation: mmseg's UperNet), on the paper profile's models (params/paper.yaml) with
   random data at the real sizes and per-GPU batches (STAGE_BATCH): the second step's time, images/s
   and the peak memory of the stage (torch.cuda.max_memory_allocated, reset before each stage: model,
   optimizer state, activations); a downstream stage whose library (detectron2, mmseg) does not
   import is skipped, with the reason;
4. with two GPUs or more, DDP equivalence: `torchrun --nproc_per_node=2` of this file's worker,
   one step of a small MAE (the smoke profile's) under DDP with the batch split in two vs one
   process on the whole batch (same weights, same masks, fp32): max abs diff of the gradients and
   of the updated weights.
`--dry` runs it all on the CPU at tiny sizes in fp32 (torch.compile skipped, with the reason; the
DDP check on 2 CPU processes over gloo), to test this script, not to measure; without `--out` it
writes to the temp folder, never over benchmarks/RESULTS.md.  A part that fails (an OOM, a compile
error) is reported as failed and the rest still runs; the exit status is 1 then.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import datetime
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from bench_util import ROOT, count_params, make_optimizer, params_file, section, train_flops
from torch import nn

# Peak dense bf16 tensor FLOP/s (no sparsity), from NVIDIA's data sheets.
PEAK_BF16 = {"H100 SXM": 989.4e12, "H100 PCIe": 756e12, "H200": 989.4e12, "A100": 312e12, "L40S": 362e12}

# Per-GPU batch of each stage at the paper's sizes: the paper batch over its GPUs.
STAGE_BATCH = {
    "mae": 64,  # MAE PRETRAIN.md: 4096 = 64 x 8 GPUs x 8 nodes
    "beit": 128,  # BEiT: 2048 over 16 GPUs
    "img2vec": 64,  # MAE's recipe (params/paper.yaml img2vec.optim)
    "scratch": 64,  # no training step: one forward of the encoder
    "dino": 51,  # params/paper.yaml dino.optim: 4080 = 51 x 80 GPUs
    "finetune": 32,  # MAE FINETUNE.md: 1024 = 32 x 8 GPUs x 4 nodes
    "probe": 512,  # MAE FINETUNE.md linear probing: 16384 = 512 x 8 GPUs x 4 nodes
    "detect": 1,  # detectron2 projects/ViTDet/README.md: batch 64 on 64 GPUs (params/paper.yaml detect.batch_size 64)
    "segment": 2,  # params/paper.yaml segment.batch_size 16 = 2 x 8 GPUs (mmseg MAE 8xb2)
}
START = time.monotonic()


def peak_for(name: str) -> tuple[str, float] | None:
    """(table key, peak bf16 FLOP/s) of a torch.cuda.get_device_name(), or None."""
    n = name.upper()
    if "H200" in n:
        return "H200", PEAK_BF16["H200"]
    if "H100" in n:
        if "PCIE" in n:
            return "H100 PCIe", PEAK_BF16["H100 PCIe"]
        if "NVL" not in n:  # "NVIDIA H100 80GB HBM3" is the SXM part
            return "H100 SXM", PEAK_BF16["H100 SXM"]
        return None
    for key in ("A100", "L40S"):
        if key in n:
            return key, PEAK_BF16[key]
    return None


def left(budget: float) -> float:
    return budget - (time.monotonic() - START)


def say(msg: str) -> None:
    print(f"[{time.monotonic() - START:6.1f}s] {msg}", flush=True)


# --- sizes ---------------------------------------------------------------------------------------
@dataclass
class Sizes:
    """The paper profile's models (or tiny ones for --dry) and the batches."""

    enc: Any
    mae: Any
    beit: Any
    img2vec: Any
    dino: Any
    finetune: Any
    probe: Any
    detect: Any  # DetectConfig: its img_size is the LSJ crop
    segment: Any  # SegmentConfig: its crop_size is the training crop
    tokenizer: dict[str, int]
    classes: int
    det_classes: int  # COCO
    seg_classes: int  # ADE20K
    batch: dict[str, int]
    mae_batch: int
    smoke_enc: Any = None  # the DDP check's model
    smoke_mae: Any = None


def paper_sizes(mae_batch: int) -> Sizes:
    from downstream.det_config import DetectConfig  # no detectron2 import
    from downstream.seg import SegmentConfig  # no mmseg import
    from mim.eval.finetune import FinetuneConfig
    from mim.eval.probe import ProbeConfig
    from mim.methods import beit, img2vec, mae
    from mim.teacher import dino
    from mim.vit import ViTConfig

    tok = params_file("paper")["tokenizer"]
    return Sizes(
        enc=section("paper", "encoder", ViTConfig), mae=section("paper", "mae", mae.Config), beit=section("paper", "beit", beit.Config),
        img2vec=section("paper", "img2vec", img2vec.Config), dino=section("paper", "dino", dino.Config),
        finetune=section("paper", "finetune", FinetuneConfig), probe=section("paper", "probe", ProbeConfig),
        detect=section("paper", "detect", DetectConfig), segment=section("paper", "segment", SegmentConfig),
        tokenizer={"n_hid": 256, "n_blk_per_group": 2, "vocab_size": int(tok["model"]["vocab_size"]),  # dall_e.Encoder's defaults
                   "image_size": int(tok["model"]["image_size"])},
        classes=1000, det_classes=80, seg_classes=150, batch=dict(STAGE_BATCH), mae_batch=mae_batch,
        smoke_enc=section("smoke", "encoder", ViTConfig), smoke_mae=section("smoke", "mae", mae.Config).model,
    )


def dry_sizes() -> Sizes:
    """Tiny models of the same kinds: a 32 px ViT of width 64, depth 2; small heads and crops (detect, segment: 64 px)."""
    s = paper_sizes(4)
    r = dataclasses.replace
    enc = r(s.enc, img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2)
    d = s.dino
    return dataclasses.replace(
        s, enc=enc,
        mae=r(s.mae, model=r(s.mae.model, decoder_dim=32, decoder_depth=1, decoder_heads=2)),
        beit=r(s.beit, model=r(s.beit.model, min_num_patches=2)),
        img2vec=r(s.img2vec, model=r(s.img2vec.model, block_size=2, decoder_dim=32, decoder_depth=1, decoder_heads=2, head_hidden=64)),
        dino=r(d, model=r(d.model, head=r(d.model.head, out_dim=256, hidden_dim=64, bottleneck_dim=32)),
               data=r(d.data, global_size=32, local_size=16, n_local=2)),
        # 8x8 patch grids, narrow heads; pyramid strides 4/8/16 + max-pooled 32 (SimpleFeaturePyramid has no 0.25: params/micro.yaml's)
        detect=r(s.detect, img_size=64, window_size=4, global_blocks=(1,), scale_factors=(2.0, 1.0, 0.5), fpn_channels=32,
                 box_head_convs=(32,), box_head_fcs=(64,), mask_head_dims=(32, 32), roi_batch_per_image=64),
        segment=r(s.segment, crop_size=64, out_blocks=(1, 1, 2, 2), head_channels=32, aux_channels=16, slide_stride=32),
        tokenizer={"n_hid": 64, "n_blk_per_group": 1, "vocab_size": 512, "image_size": enc.grid * 8},  # dall_e.Encoder's minimum
        classes=10, det_classes=3, seg_classes=4, batch={k: 2 for k in STAGE_BATCH},
        smoke_enc=enc, smoke_mae=r(s.mae.model, decoder_dim=32, decoder_depth=1, decoder_heads=2),
    )


# --- device helpers ----------------------------------------------------------------------------------
@dataclass
class Ctx:
    dev: torch.device
    amp: bool  # bf16 autocast

    def sync(self) -> None:
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=self.amp)

    def reset_memory(self) -> None:
        gc.collect()
        if self.dev.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.dev)

    def peak_gib(self) -> float | None:
        return torch.cuda.max_memory_allocated(self.dev) / 2**30 if self.dev.type == "cuda" else None


def gib(x: float | None) -> str:
    return "n/a (CPU)" if x is None else f"{x:.2f}"


# --- 1. machine ----------------------------------------------------------------------------------
def machine() -> dict[str, str]:
    import timm

    out: dict[str, str] = {}
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        mem = torch.cuda.get_device_properties(0).total_memory / 2**30
        out["GPU"] = f"{names[0]} x {len(names)} ({mem:.1f} GiB each)" if len(set(names)) == 1 else ", ".join(names)
        try:
            drv = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=20).stdout.split()
            out["driver"] = drv[0] if drv else "unknown"
        except (OSError, subprocess.SubprocessError):
            out["driver"] = "unknown (no nvidia-smi)"
        peak = peak_for(names[0])
        out["peak bf16 dense"] = f"{peak[1] / 1e12:.1f} TFLOP/s ({peak[0]})" if peak else f"unknown peak ({names[0]})"
    else:
        out["GPU"] = "none (CPU)"
    out["CUDA (torch build)"] = str(torch.version.cuda)
    out["cuDNN"] = str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else "n/a"
    out["torch"] = torch.__version__
    out["timm"] = timm.__version__
    out["python"] = platform.python_version()
    out["CPUs"] = f"{os.cpu_count()} ({len(os.sched_getaffinity(0))} usable)" if hasattr(os, "sched_getaffinity") else str(os.cpu_count())
    out["platform"] = platform.platform()
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=20).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True,
                               timeout=20).stdout.strip()
        out["commit"] = f"{rev}{' (with uncommitted changes)' if dirty else ''}" if rev else "unknown"
    except (OSError, subprocess.SubprocessError):
        out["commit"] = "unknown"
    return out


# --- 2. MAE throughput ------------------------------------------------------------------------------------
def mae_step(s: Sizes, ctx: Ctx, batch: int, compiled: bool = False) -> tuple[Callable[[], None], nn.Module]:
    """One MAE pretraining step (fwd, bwd, AdamW) on random images: the throughput's and the stage check's."""
    from mim.methods.mae import MAE
    from mim.param_groups import VIT_TOKENS, weight_decay_groups

    model = MAE(s.enc, s.mae.model).to(ctx.dev).train()
    opt = make_optimizer(weight_decay_groups(model, s.mae.optim.weight_decay, VIT_TOKENS), s.mae.optim)
    fwd = torch.compile(model) if compiled else model
    imgs = torch.randn(batch, 3, s.enc.img_size, s.enc.img_size, device=ctx.dev)

    def step() -> None:
        with ctx.autocast():
            loss = fwd(imgs)[0]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, model


def mae_throughput(s: Sizes, ctx: Ctx, steps: int, warmup: int, compiled: bool) -> dict[str, Any]:
    from mim.methods.mae import MAE

    enc, cfg, batch = s.enc, s.mae, s.mae_batch
    flops = train_flops(lambda: MAE(enc, cfg.model), lambda: torch.randn(1, 3, enc.img_size, enc.img_size), lambda m, x: m(x)[0])
    ctx.reset_memory()
    torch.manual_seed(0)
    step, _ = mae_step(s, ctx, batch, compiled)

    t = time.perf_counter()
    for _ in range(warmup):
        step()
    ctx.sync()
    warm_s = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(steps):
        step()
    ctx.sync()
    dt = (time.perf_counter() - t) / steps
    ips = batch / dt
    peak = peak_for(torch.cuda.get_device_name(ctx.dev)) if ctx.dev.type == "cuda" else None
    out = {"variant": "torch.compile" if compiled else "eager", "batch": batch, "steps": steps, "step_ms": 1e3 * dt, "images_s": ips,
           "gflops_img": flops / 1e9, "achieved_tflops": ips * flops / 1e12,
           "mfu": f"{100 * ips * flops / peak[1]:.1f}%" if peak else "unknown peak", "peak_gib": ctx.peak_gib(), "warmup_s": warm_s}
    return out


# --- 3. one step per stage --------------------------------------------------------------------------------
StageFn = Callable[[Sizes, Ctx], tuple[str, int, Callable[[], None], nn.Module]]


class Unavailable(Exception):
    """A downstream stage's library (detectron2, mmseg) does not import: the stage is skipped, not failed."""


def optional(load: Callable[[], Any]) -> Any:
    """load() (imports of an optional library); Unavailable with its one-line reason when they fail."""
    from mim.errors import MimError

    try:
        return load()
    except (ImportError, MimError) as e:  # the install hints of downstream/det_install.py, downstream/mmseg_env.py
        raise Unavailable(str(e).splitlines()[0][:300] if str(e) else type(e).__name__) from None


def stage_mae(s: Sizes, ctx: Ctx) -> tuple[str, int, Callable[[], None], nn.Module]:
    b, m = s.batch["mae"], s.mae.model
    step, model = mae_step(s, ctx, b)
    return f"MAE, decoder {m.decoder_depth}x{m.decoder_dim}, mask {m.mask_ratio}", b, step, model


def stage_beit(s: Sizes, ctx: Ctx) -> tuple[str, int, Callable[[], None], nn.Module]:
    from mim.masking import blockwise_mask
    from mim.methods import beit
    from mim.param_groups import VIT_TOKENS, weight_decay_groups
    from mim.tokenizer.official_dalle import dalle_encoder, dalle_tokenizer

    b, cfg, t = s.batch["beit"], s.beit, s.tokenizer
    enc = beit.encoder_config(cfg, s.enc)
    arch = {"n_hid": t["n_hid"], "n_blk_per_group": t["n_blk_per_group"], "vocab_size": t["vocab_size"], "group_count": 4}
    tok = dalle_tokenizer(dalle_encoder(**arch), arch, image_size=t["image_size"]).to(ctx.dev)  # random DALL-E dVAE encoder
    beit.check_config(cfg, enc, tok)
    model = beit.BEiT(enc, tok.vocab_size, cfg.model.init_std).to(ctx.dev).train()
    opt = make_optimizer(weight_decay_groups(model, cfg.optim.weight_decay, VIT_TOKENS), cfg.optim)
    imgs = torch.randn(b, 3, enc.img_size, enc.img_size, device=ctx.dev)
    tok_imgs = torch.rand(b, 3, t["image_size"], t["image_size"], device=ctx.dev)
    n = beit.num_masked(cfg.model, enc.grid)
    mask = torch.stack([blockwise_mask(enc.grid, enc.grid, n, min_num_patches=cfg.model.min_num_patches,
                                       min_aspect=cfg.model.min_aspect).mask for _ in range(b)]).to(ctx.dev)  # drawn by the loader

    def step() -> None:
        with ctx.autocast():
            ids = tok.tokens(tok_imgs)
            loss = model(imgs, ids, mask)[0]
        loss.backward()
        if cfg.optim.clip_grad:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad)
        opt.step()
        opt.zero_grad(set_to_none=True)

    desc = f"BEiT, rel_pos_bias {enc.rel_pos_bias}, DALL-E tokenizer (random) {t['vocab_size']} words at {t['image_size']}px"
    return desc, b, step, model


def stage_img2vec(s: Sizes, ctx: Ctx) -> tuple[str, int, Callable[[], None], nn.Module]:
    from mim.methods import img2vec
    from mim.param_groups import VIT_TOKENS, weight_decay_groups
    from mim.teacher.frozen import Teacher, timm_backbone

    b, cfg = s.batch["img2vec"], s.img2vec
    net = timm_backbone("resnet50")
    teacher = Teacher(net, int(net.feature_info[-1]["reduction"]), int(net.num_features), name="resnet50 (random)")
    teacher.to(ctx.dev, memory_format=torch.channels_last)
    geo = img2vec.resolve_geometry(cfg.model, s.enc, teacher)
    model = img2vec.Img2Vec(s.enc, cfg.model, geo, teacher.dim).to(ctx.dev).train()
    opt = make_optimizer(weight_decay_groups(model, cfg.optim.weight_decay, VIT_TOKENS), cfg.optim)
    imgs = torch.randn(b, 3, s.enc.img_size, s.enc.img_size, device=ctx.dev)

    def step() -> None:
        with ctx.autocast():
            target = img2vec.teacher_targets(teacher, imgs, geo, cfg.model.target_norm)
            loss = model(imgs, target)[0]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    desc = f"Img2Vec, decoder {cfg.model.decoder_depth}x{cfg.model.decoder_dim}, ResNet-50 teacher (random) at {geo.teacher_img_size}px"
    return desc, b, step, model


def stage_scratch(s: Sizes, ctx: Ctx) -> tuple[str, int, Callable[[], None], nn.Module]:
    from mim.methods.scratch import Scratch
    from mim.vit import ViTEncoder

    b = s.batch["scratch"]
    model = Scratch(ViTEncoder(s.enc)).to(ctx.dev).eval()
    imgs = torch.randn(b, 3, s.enc.img_size, s.enc.img_size, device=ctx.dev)

    def step() -> None:
        with torch.no_grad(), ctx.autocast():
            model.encoder.forward_features(imgs)

    return "no training step (the stage builds and exports the encoder): one encoder forward", b, step, model


def stage_dino(s: Sizes, ctx: Ctx) -> tuple[str, int, Callable[[], None], nn.Module]:
    from mim.param_groups import weight_decay_groups
    from mim.teacher import dino

    b, cfg = s.batch["dino"], s.dino
    d = cfg.data
    model = dino.DINO(cfg.model, d).to(ctx.dev).train()
    opt = make_optimizer(weight_decay_groups(model.student, cfg.optim.weight_decay), cfg.optim)
    crops = [torch.randn(b, 3, d.global_size, d.global_size, device=ctx.dev) for _ in range(d.n_global)]
    crops += [torch.randn(b, 3, d.local_size, d.local_size, device=ctx.dev) for _ in range(d.n_local)]

    def step() -> None:
        with ctx.autocast():
            loss = model(crops)[0]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        model.update_teacher(cfg.model.momentum_teacher)

    h = cfg.model.head
    desc = (f"DINO teacher {cfg.model.arch}, {d.n_global}x{d.global_size} + {d.n_local}x{d.local_size} crops, "
            f"head out {h.out_dim}, {cfg.optim.optimizer}")
    return desc, b, step, model


def stage_finetune(s: Sizes, ctx: Ctx) -> tuple[str, int, Callable[[], None], nn.Module]:
    from timm.data import Mixup
    from timm.loss import SoftTargetCrossEntropy

    from mim.eval.finetune import ViTClassifier
    from mim.param_groups import layer_decay_groups
    from mim.vit import ViTEncoder

    b, cfg = s.batch["finetune"], s.finetune
    enc = dataclasses.replace(s.enc, drop_path=cfg.drop_path)
    model = ViTClassifier(ViTEncoder(enc), s.classes, cfg.global_pool).to(ctx.dev).train()
    groups = layer_decay_groups(model, cfg.optim.weight_decay, cfg.layer_decay, enc.depth, prefix="encoder.")
    for g in groups:
        g.pop("names")
    opt = make_optimizer(groups, cfg.optim)
    mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.label_smoothing, num_classes=s.classes)
    criterion = SoftTargetCrossEntropy()
    imgs = torch.randn(b, 3, enc.img_size, enc.img_size, device=ctx.dev)
    labels = torch.randint(0, s.classes, (b,), device=ctx.dev)

    def step() -> None:
        x, y = mixup(imgs, labels)
        with ctx.autocast():
            loss = criterion(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return f"fine-tune: {s.classes} classes, drop path {cfg.drop_path}, Mixup/CutMix, layer decay {cfg.layer_decay}", b, step, model


def stage_probe(s: Sizes, ctx: Ctx) -> tuple[str, int, Callable[[], None], nn.Module]:
    from mim.eval.probe import linear_head
    from mim.vit import ViTEncoder

    b, lin = s.batch["probe"], s.probe.linear
    encoder = ViTEncoder(s.enc).to(ctx.dev).requires_grad_(False).eval()
    head = linear_head(s.enc.embed_dim, s.classes).to(ctx.dev).train()
    optim = SimpleNamespace(batch_size=lin.batch_size, base_lr=lin.base_lr, weight_decay=lin.weight_decay, momentum=lin.momentum,
                            optimizer=lin.optimizer, betas=(0.9, 0.999))  # the OptimConfig mim/eval/probe.py makes
    opt = make_optimizer(head.parameters(), optim)
    imgs = torch.randn(b, 3, s.enc.img_size, s.enc.img_size, device=ctx.dev)
    labels = torch.randint(0, s.classes, (b,), device=ctx.dev)

    def step() -> None:
        with ctx.autocast():
            with torch.no_grad():
                x = encoder.forward_features(imgs)[:, 0].float()
            loss = nn.functional.cross_entropy(head(x), labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    desc = f"linear probe ({lin.protocol}): frozen encoder forward + BN/linear head, {lin.optimizer}"
    return desc, b, step, nn.ModuleList([encoder, head])


def coco_image(size: int, n_boxes: int, classes: int, dev: torch.device) -> dict[str, Any]:
    """One training image as detectron2's DatasetMapper hands it to the model after ViTDet's LSJ
    (detectron2/data/dataset_mapper.py; projects/ViTDet/configs/common/coco_loader_lsj.py): a size x size
    crop, "image" (3, H, W) uint8 RGB, "instances" with gt_boxes (N, 4) XYXY, gt_classes (N,) and
    gt_masks (N, H, W); random rectangles, each box its mask's extent (recompute_boxes).  COCO's
    polygons come as PolygonMasks; BitMasks give the mask head the same (N, 28, 28) targets."""
    from detectron2.structures import BitMasks, Boxes, Instances

    lo = torch.randint(0, size // 2, (n_boxes, 2))  # (N, 2) x0, y0
    hi = (lo + torch.randint(size // 8, size // 2 + 1, (n_boxes, 2))).clamp(max=size)  # (N, 2) x1, y1
    yy, xx = torch.arange(size)[None, :, None], torch.arange(size)[None, None, :]  # (1, H, 1), (1, 1, W)
    masks = (xx >= lo[:, 0, None, None]) & (xx < hi[:, 0, None, None]) & (yy >= lo[:, 1, None, None]) & (yy < hi[:, 1, None, None])
    inst = Instances((size, size))
    inst.gt_boxes = Boxes(torch.cat([lo, hi], 1).float().to(dev))  # (N, 4)
    inst.gt_classes = torch.randint(0, classes, (n_boxes,), device=dev)  # (N,)
    inst.gt_masks = BitMasks(masks.to(dev))  # (N, H, W) bool
    image = torch.randint(0, 256, (3, size, size), dtype=torch.uint8, device=dev)  # (3, H, W)
    return {"image": image, "height": size, "width": size, "instances": inst}


def stage_detect(s: Sizes, ctx: Ctx) -> tuple[str, int, Callable[[], None], nn.Module]:
    """downstream/det.py's ViTDet Mask R-CNN and layer-decay AdamW (build_config), one SimpleTrainer step
    (detectron2/engine/train_loop.py: the summed losses, backward, step); a random backbone."""

    def load() -> Any:
        from downstream.det_install import hide_known_warnings, require_detectron2

        hide_known_warnings()
        require_detectron2()
        from downstream import det

        return det

    det = optional(load)
    from detectron2.config import instantiate
    from detectron2.utils.events import EventStorage

    from mim.engine import RunConfig

    b, d, k, n_boxes = s.batch["detect"], s.detect, s.det_classes, 8  # COCO train2017: 7.3 instances per image
    unused = Path("gpu-check-unused")  # build_config only names these paths (datasets, outputs); nothing is read or written
    job = det.DetectJob(student="random", encoder=unused / "encoder.safetensors", coco=det.CocoPaths(root=unused), det=d,
                        run=RunConfig(amp=ctx.amp), checkpoint_dir=unused, log_dir=unused)
    cfg = det.build_config(job, s.enc, k)
    model = instantiate(cfg.model).to(ctx.dev).train()
    cfg.optimizer.params.model = model
    opt = instantiate(cfg.optimizer)
    batch = [coco_image(d.img_size, n_boxes, k, ctx.dev) for _ in range(b)]

    def step() -> None:
        with EventStorage(0), ctx.autocast():  # the RPN and RoI heads log into an event storage
            loss = sum(model(batch).values())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    desc = (f"ViTDet Mask R-CNN (detectron2), {d.img_size}px LSJ crops, window {d.window_size} + global blocks "
            f"{list(d.global_blocks)}, {k} classes, {n_boxes} boxes/image, layer decay {d.layer_decay}, AdamW")
    return desc, b, step, model


def stage_segment(s: Sizes, ctx: Ctx) -> tuple[str, int, Callable[[], None], nn.Module]:
    """downstream/seg.py's UperNet + FCN auxiliary head on MimViT and its layer-decay optimizer wrapper
    (build_config), one mmengine train_step (preprocess, loss, summed losses, backward, step); a random
    student written to a temporary encoder file (MimViT reads one)."""

    def load() -> Any:
        from downstream import seg_mm  # import_mmseg() (the mmcv._ext stand-in), registers MimViT, LayerDecayConstructor

        seg_mm.quiet_known_warnings()
        return seg_mm

    optional(load)
    from mmengine.model import revert_sync_batchnorm
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import init_default_scope
    from mmengine.structures import PixelData
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample

    from downstream.seg import SegData, build_config
    from mim.encoder_file import save_encoder
    from mim.engine import RunConfig
    from mim.vit import ViTEncoder

    b, c, k = s.batch["segment"], s.segment, s.seg_classes
    with tempfile.TemporaryDirectory() as tmp:
        enc = Path(tmp) / "encoder.safetensors"
        save_encoder(enc, ViTEncoder(s.enc))
        data = SegData(root=Path(tmp), classes=tuple(f"class_{i}" for i in range(1, k + 1)))
        cfg = build_config(c, RunConfig(amp=ctx.amp), data, enc, Path(tmp) / "work", cuda=ctx.dev.type == "cuda")
        init_default_scope(cfg["default_scope"])  # as mmengine's Runner does
        model = revert_sync_batchnorm(MODELS.build(cfg["model"])).to(ctx.dev).train()  # SyncBN -> BN in one process, as the Runner
    optim = build_optim_wrapper(model, cfg["optim_wrapper"])
    # mmseg's PackSegInputs after RandomResize/RandomCrop (mmseg/datasets/transforms/formatting.py; mmseg/structures/
    # seg_data_sample.py): inputs (3, H, W) uint8, gt_sem_seg (1, H, W) labels 0..K-1 and 255 (ADE's 0, reduce_zero_label)
    crop = c.crop_size
    samples = []
    for _ in range(b):
        labels = torch.randint(0, k + 1, (1, crop, crop), device=ctx.dev)
        labels[labels == k] = 255
        meta = {"img_shape": (crop, crop), "ori_shape": (crop, crop), "pad_shape": (crop, crop), "flip": False, "reduce_zero_label": True}
        samples.append(SegDataSample(gt_sem_seg=PixelData(data=labels), metainfo=meta))
    batch = {"inputs": [torch.randint(0, 256, (3, crop, crop), dtype=torch.uint8, device=ctx.dev) for _ in range(b)],
             "data_samples": samples}

    def step() -> None:
        with ctx.autocast():  # on CUDA the AmpOptimWrapper (bf16) also autocasts
            model.train_step(batch, optim)

    desc = (f"UperNet + FCN aux (mmseg) on MimViT blocks {list(c.out_blocks)}, {crop}px crops, rel pos bias {c.rel_pos_bias}, "
            f"LayerScale {c.layer_scale}, {k} classes, layer decay {c.layer_decay}, {type(optim).__name__} AdamW")
    return desc, b, step, model


STAGES: dict[str, StageFn] = {"mae": stage_mae, "beit": stage_beit, "img2vec": stage_img2vec, "scratch": stage_scratch,
                              "dino": stage_dino, "finetune": stage_finetune, "probe": stage_probe, "detect": stage_detect,
                              "segment": stage_segment}


def run_stage(name: str, fn: StageFn, s: Sizes, ctx: Ctx) -> dict[str, Any]:
    ctx.reset_memory()
    torch.manual_seed(0)
    t = time.perf_counter()
    try:
        desc, batch, step, model = fn(s, ctx)
    except Unavailable as e:
        return {"stage": name, "skipped": f"skipped: {e}"}
    ctx.sync()
    build_s = time.perf_counter() - t
    step()  # the first step: cuDNN autotuning, allocator growth, lazy state
    ctx.sync()
    t = time.perf_counter()
    step()
    ctx.sync()
    dt = time.perf_counter() - t
    n, _ = count_params(model)
    out = {"stage": name, "model": desc, "params_m": n / 1e6, "batch": batch, "build_s": build_s, "step_s": dt, "images_s": batch / dt,
           "peak_gib": ctx.peak_gib()}
    del model, step
    return out


# --- 4. DDP equivalence ---------------------------------------------------------------------------------
def ddp_worker(args: argparse.Namespace) -> None:
    """Under torchrun: one MAE step under DDP (each rank half the batch) vs one process on the whole batch."""
    import torch.distributed as dist

    from mim.masking import random_mask_ids
    from mim.methods.mae import MAE

    cuda = torch.cuda.is_available() and not args.dry
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dev = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(dev)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    dist.init_process_group("nccl" if cuda else "gloo")
    s = dry_sizes() if args.dry else paper_sizes(args.batch)
    enc, cfg = s.smoke_enc, s.smoke_mae
    batch = 4 * world
    torch.manual_seed(0)
    model = MAE(enc, cfg).to(dev).train()
    single = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    imgs = torch.randn(batch, 3, enc.img_size, enc.img_size, generator=g).to(dev)
    keep, mask, restore = (x.to(dev) for x in random_mask_ids(batch, enc.num_patches, cfg.mask_ratio, generator=g))

    def fixed(sl: slice) -> Callable[..., tuple[torch.Tensor, ...]]:
        return lambda n, device: (keep[sl], mask[sl], restore[sl])

    def one_step(m: nn.Module, train: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
        opt = torch.optim.AdamW(m.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
        train(x)[0].backward()
        grads = {k: p.grad.detach().clone() for k, p in m.named_parameters() if p.grad is not None}
        opt.step()
        return grads

    half = batch // world
    sl = slice(rank * half, (rank + 1) * half)
    model.mask = fixed(sl)  # the same masks as the single process draws for these images
    ddp = nn.parallel.DistributedDataParallel(model, device_ids=[dev] if cuda else None)
    g_ddp = one_step(model, ddp, imgs[sl])
    if rank == 0:
        single.mask = fixed(slice(None))
        g_one = one_step(single, single, imgs)
        w_ddp, w_one = dict(model.named_parameters()), dict(single.named_parameters())
        grad_diff = max(float((g_ddp[k] - g_one[k]).abs().max()) for k in g_one)
        grad_max = max(float(v.abs().max()) for v in g_one.values())
        weight_diff = max(float((w_ddp[k] - w_one[k]).abs().max()) for k in w_one)
        Path(args.ddp_json).write_text(json.dumps({
            "world": world, "batch": batch, "backend": dist.get_backend(), "model": f"MAE {enc.embed_dim}x{enc.depth}/{enc.patch_size} "
            f"at {enc.img_size}px, decoder {cfg.decoder_depth}x{cfg.decoder_dim}", "grad_max_abs_diff": grad_diff,
            "grad_max_abs": grad_max, "weight_max_abs_diff": weight_diff, "lr": 1e-4}))
    dist.barrier()
    dist.destroy_process_group()


def ddp_check(args: argparse.Namespace, timeout: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ddp.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(Path(__file__).resolve()),
               "--ddp-worker", "--ddp-json", str(out), "--batch", str(args.batch)] + (["--dry"] if args.dry else [])
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        if p.returncode or not out.is_file():
            raise RuntimeError(f"torchrun exited {p.returncode}: {(p.stderr or p.stdout)[-1500:]}")
        r = json.loads(out.read_text())
    # fp32 on both sides: only the order of the reductions differs.  The gradients are the check of DDP's
    # averaging (AdamW's step is blind to a gradient scale); an updated weight may differ by a fraction of
    # lr where its gradient is near 0 (the step is lr * g / (|g| + eps) there).
    r["equivalent"] = r["grad_max_abs_diff"] <= 1e-4 * max(r["grad_max_abs"], 1e-12) and r["weight_max_abs_diff"] <= 0.5 * r["lr"]
    return r


# --- the report -------------------------------------------------------------------------------------------
@dataclass
class Report:
    path: Path
    dry: bool
    machine: dict[str, str] = field(default_factory=dict)
    mae: list[dict[str, Any]] = field(default_factory=list)
    mae_notes: list[str] = field(default_factory=list)
    stages: list[dict[str, Any]] = field(default_factory=list)
    ddp: dict[str, Any] | str | None = None
    failed: list[str] = field(default_factory=list)

    def write(self, s: Sizes) -> None:
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        e, m = s.enc, s.mae.model
        lines = ["# GPU check results", ""]
        if self.dry:
            lines += ["**DRY RUN** (`--dry`): CPU, tiny models, fp32, to test benchmarks/gpu_check.py; these numbers measure nothing.", ""]
        lines += [f"Written by `bash benchmarks/gpu_check.sh{' --dry' if self.dry else ''}` (benchmarks/gpu_check.py) on {now}, "
                  f"in {time.monotonic() - START:.0f} s.", "", "## Machine", "", "| | |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in self.machine.items()]
        lines += ["", f"## MAE pretraining throughput: ViT {e.embed_dim}x{e.depth}/{e.patch_size} at {e.img_size}px, decoder "
                  f"{m.decoder_depth}x{m.decoder_dim}, mask {m.mask_ratio}, {'bf16 autocast' if not self.dry else 'fp32'}, AdamW", "",
                  "MFU = images/s x fwd+bwd FLOPs per image (torch.utils.flop_counter: matmuls, convolutions, attention) / "
                  "peak dense bf16.",
                  "", "| variant | batch | images/s | step ms | GFLOPs/img | achieved TFLOP/s | MFU | peak memory GiB | warm-up s |",
                  "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['variant']} | {r['batch']} | {r['images_s']:.1f} | {r['step_ms']:.1f} | {r['gflops_img']:.3g} | "
                  f"{r['achieved_tflops']:.2f} | {r['mfu']} | {gib(r['peak_gib'])} | {r['warmup_s']:.1f} |" for r in self.mae]
        lines += [""] + [f"- {n}" for n in self.mae_notes] if self.mae_notes else []
        title = "## One step per stage: params/paper.yaml models, random data at the real sizes" + (" (dry: tiny)" if self.dry else "")
        lines += ["", title,
                  "", "Time of the second step (the first warms up); peak memory from torch.cuda.max_memory_allocated, reset per stage; "
                  "per-GPU batches from STAGE_BATCH in benchmarks/gpu_check.py (the paper's batch over its GPUs); params: trained "
                  "and frozen modules the stage holds (DINO: student + EMA teacher; Img2Vec: without its teacher); detect, segment: "
                  "random backbones, images at detect.img_size (LSJ crops) / segment.crop_size.", "",
                  "| stage | model | params M | batch | step s | images/s | peak memory GiB | build s |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in self.stages:
            if "error" in r or "skipped" in r:
                lines.append(f"| {r['stage']} | {r.get('skipped') or 'FAILED: ' + r['error']} | | | | | | |")
            else:
                lines.append(f"| {r['stage']} | {r['model']} | {r['params_m']:.2f} | {r['batch']} | {r['step_s']:.3f} | "
                             f"{r['images_s']:.1f} | {gib(r['peak_gib'])} | {r['build_s']:.1f} |")
        lines += ["", "## DDP equivalence (2 processes, the batch split, vs 1 process on the whole batch)", ""]
        if isinstance(self.ddp, dict):
            r = self.ddp
            lines += [f"{r['model']}, batch {r['batch']}, backend {r['backend']}, fp32, one AdamW step (lr {r['lr']:g}): max abs diff "
                      f"of the gradients {r['grad_max_abs_diff']:.3g} (largest gradient {r['grad_max_abs']:.3g}), of the updated weights "
                      f"{r['weight_max_abs_diff']:.3g}: {'equivalent' if r['equivalent'] else 'NOT equivalent'}."]
        else:
            lines.append(str(self.ddp or "not run"))
        if self.failed:
            lines += ["", f"**Failed:** {', '.join(self.failed)}"]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("\n".join(lines) + "\n")


def guarded(report: Report, what: str, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception as e:  # an OOM or a compile error fails this part only
        report.failed.append(what)
        say(f"{what} FAILED: {type(e).__name__}: {e}")
        traceback.print_exc(limit=3)
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry", action="store_true", help="CPU, tiny sizes, fp32, no torch.compile: tests the script")
    ap.add_argument("--out", type=Path, default=None, help="the Markdown report (default benchmarks/RESULTS.md; --dry: the temp folder)")
    ap.add_argument("--batch", type=int, default=256, help="batch of the MAE throughput runs")
    ap.add_argument("--steps", type=int, default=20, help="timed steps of the MAE throughput runs")
    ap.add_argument("--budget", type=float, default=450, help="seconds: parts that would not fit are skipped (gpu_check.sh stops at 480)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile run")
    ap.add_argument("--ddp-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--ddp-json", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.ddp_worker:
        ddp_worker(args)
        return
    if not args.dry and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device; run with --dry for the CPU test of this script")
    out = args.out or (Path(tempfile.gettempdir()) / "mimrepro-gpu-check-dry.md" if args.dry else ROOT / "benchmarks" / "RESULTS.md")
    ctx = Ctx(torch.device("cpu"), amp=False) if args.dry else Ctx(torch.device("cuda", 0), amp=True)
    if args.dry:
        torch.set_num_threads(1)  # a shared small CPU: more threads only contend
    s = dry_sizes() if args.dry else paper_sizes(args.batch)
    steps, warmup = (2, 1) if args.dry else (args.steps, 3)
    report = Report(out, args.dry)
    report.machine = machine()
    for k, v in report.machine.items():
        say(f"{k}: {v}")
    report.write(s)

    r = guarded(report, "MAE eager", lambda: mae_throughput(s, ctx, steps, warmup, compiled=False))
    if "error" not in r:
        report.mae.append(r)
        say(f"MAE eager: {r['images_s']:.1f} img/s, {r['step_ms']:.1f} ms/step, MFU {r['mfu']}, peak {gib(r['peak_gib'])} GiB")
    else:
        report.mae_notes.append(f"eager: FAILED {r['error']}")
    report.write(s)

    for name, fn in STAGES.items():
        if left(args.budget) < 20:
            report.stages.append({"stage": name, "skipped": f"skipped: {left(args.budget):.0f} s of the budget left"})
            continue
        r = guarded(report, f"stage {name}", lambda fn=fn, name=name: run_stage(name, fn, s, ctx))
        r.setdefault("stage", name)
        report.stages.append(r)
        if "skipped" in r:
            say(f"{name}: {r['skipped']}")
        elif "error" not in r:
            say(f"{name}: {r['model']}; batch {r['batch']}, {r['step_s']:.3f} s/step, {r['images_s']:.1f} img/s, "
                f"peak {gib(r['peak_gib'])} GiB")
        ctx.reset_memory()
        report.write(s)

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if args.dry or gpus >= 2:
        if left(args.budget) < 60:
            report.ddp = "skipped: out of time"
        else:
            r = guarded(report, "DDP check", lambda: ddp_check(args, timeout=min(180, left(args.budget) - 10)))
            report.ddp = r if "error" not in r else f"FAILED: {r['error']}"
            say(f"DDP: {report.ddp}")
    else:
        report.ddp = f"skipped: {gpus} GPU (needs 2)"
        say(f"DDP check {report.ddp}")
    report.write(s)

    if args.dry:
        note = ("torch.compile: skipped in --dry (on a 2-core CPU its first step of even the tiny MAE took 80 s, "
                "beyond the dry run's minute)")
        report.mae_notes.append(note)
        say(note)
    elif args.no_compile:
        report.mae_notes.append("torch.compile: skipped (--no-compile)")
    elif left(args.budget) < 150:
        report.mae_notes.append(f"torch.compile: skipped, {left(args.budget):.0f} s of the budget left (needs 150)")
        say(report.mae_notes[-1])
    else:
        r = guarded(report, "MAE torch.compile", lambda: mae_throughput(s, ctx, steps, warmup, compiled=True))
        if "error" not in r:
            report.mae.append(r)
            say(f"MAE compiled: {r['images_s']:.1f} img/s, {r['step_ms']:.1f} ms/step, MFU {r['mfu']}, "
                f"warm-up with compile {r['warmup_s']:.0f} s")
        else:
            report.mae_notes.append(f"torch.compile: FAILED {r['error']}")
    report.write(s)
    say(f"wrote {out}")
    if report.failed:
        say(f"failed: {', '.join(report.failed)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
