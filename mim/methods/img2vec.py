"""Img2Vec student (Pan et al. 2023): predict a frozen high token-diversity teacher's features.

No official code exists; this follows ../shared/papers.md (Img2Vec) and the review it cites.
Where the sources are silent, the choice is marked INTERPRETATION below.

* Masking: 60% of the image in whole blocks of the teacher's output stride (32 px = 2x2
  patches of 16 for a ResNet-50 teacher at 224), MAE-style: the encoder sees visible patches.
* Targets: the frozen teacher (eval, no_grad) sees the full, same augmented image. Its token
  grid is aligned 1:1 with the block grid: one teacher token per block.
  - `teacher_img_size`: the teacher input is the student image resized to this size, so that
    teacher_img_size / teacher.stride = blocks per side. 0 = automatic: blocks per side x
    stride for a CNN (224 at 224/16 with 32 px blocks; 128 px for the 64 px smoke student
    with 2x2-patch blocks), the ViT's own img_size for a ViT teacher (its position embedding
    is fixed). INTERPRETATION: when the teacher grid is finer than the block grid (a ViT
    teacher with blocks larger than its patches), its tokens are average-pooled to blocks.
* Student: ViT encoder on the visible patches. Multi-block feature learning: the encoder
  representation is the mean of the outputs of ALL encoder blocks (on cls + visible tokens),
  then the encoder's final LayerNorm; this `latent` enters the decoder and the global loss
  (`multi_block: false` = last block only, as MAE). Light MAE decoder (mask tokens, sin-cos
  position embedding, depth 2 for ViT-B), then a projection head (Linear-ReLU-Linear) to the
  teacher width.
* Block alignment (INTERPRETATION; papers.md says each masked block has one teacher token
  and the block's 2x2 patch outputs are merged to predict it, which is our reading, not a
  quote). Three readings, identical for 1-patch blocks (ViT teachers: per-patch regression
  as in MAE):
  - `merge: mean` (default) = the mean of the block's b x b decoder outputs goes through the
    projection head: one prediction per teacher token, b^2 fewer head FLOPs than a per-patch
    head (the 2048-wide head is the costliest part of a small student).
  - `merge: concat` = the block's decoder outputs concatenated (b^2 * decoder_dim) into the
    head, which keeps where in the block each patch sits.
  - `merge: per_patch` = no merge: every patch's decoder output goes through the head and
    regresses its block's teacher token (the token repeated b x b times, `patch_targets`).
* Patch loss: smooth-L1 (beta = 2), mean over channels, then the mean over the masked
  predictions: masked blocks (mean, concat) or masked patches (per_patch, b^2 per masked
  block). Every masked block has b^2 patches, so both weigh every masked block alike.
  Global loss: smooth-L1 (same beta; INTERPRETATION) between the global average pool of the
  student over the visible patches (the review's "V") and the pool of all K teacher tokens.
  INTERPRETATION: the student side is the encoder latent (the review: "aggregate the student
  encoder's output") pooled over visible patches, through its own projection head
  (`global_source: encoder`); `global_source: decoder` pools the head's predictions over the
  visible blocks (patches for per_patch) instead; the target is the same for all merges.
  loss = patch + lambda * global, lambda = 0.5 (`global_weight`, 0 = off).
* Targets are not normalised by default (the sources name none); `target_norm: layernorm`
  applies a LayerNorm without affine per teacher token.
* Targets are recomputed every step (no on-disk cache), in float32 even under bf16 autocast
  (`run.amp`, CUDA): the teacher forward runs with autocast off, and the smooth-L1 compares
  fp32 predictions with fp32 targets. Measured on CPU (torch.autocast("cpu", bf16), timm
  resnet50 randomly initialised with / without zero_init_last, 4 images of 224 px, 7x7x2048
  tokens): the bf16 teacher forward is off by a median 0.5% / 1.0% per token (relative L2,
  max 0.6% / 1.2%; per element median 0.5% / 1.0%, far more near zero); fp32 targets
  rounded to bf16 (the former `target.to(pred.dtype)`) by 0.17%. For a prediction = fp32
  target + 0.1 std of noise, the smooth-L1 moves by 0.4% / 1.5% with the bf16 teacher (0.04%
  with rounded targets); with 1 std of noise by 0.004% / 0.012%. On CUDA, cuDNN may still run
  the fp32 convolutions in TF32 (torch's default `cudnn.allow_tf32`): 10 mantissa bits, bf16 7.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from mim.config import NonNegFloat, NonNegInt, OpenFraction, PosFloat, PosInt, Scale
from mim.data.transforms import pretrain_transform
from mim.decoder import MAEDecoder, decoder_problems
from mim.engine import OptimConfig, RunConfig, Task, make_task
from mim.errors import MimError
from mim.masking import block_masking, patches_to_blocks
from mim.methods import Inputs
from mim.param_groups import VIT_TOKENS
from mim.teacher.frozen import Teacher, load_teacher
from mim.vit import ViTConfig, ViTEncoder, init_module


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    mask_ratio: OpenFraction = 0.6  # fraction of blocks masked
    block_size: NonNegInt = 0  # patches per block side; 0 = teacher stride / patch size
    teacher_img_size: NonNegInt = 0  # teacher input size; 0 = automatic (see module doc)
    decoder_dim: PosInt = 512
    decoder_depth: NonNegInt = 2
    decoder_heads: PosInt = 16
    head_hidden: NonNegInt = 0  # projection head hidden width; 0 = teacher width
    merge: Literal["mean", "concat", "per_patch"] = "mean"  # a block's decoder outputs -> head (see module doc)
    multi_block: bool = True  # average all encoder blocks (False: last block, as MAE)
    beta: PosFloat = 2.0  # smooth-L1 beta
    global_weight: NonNegFloat = 0.5  # lambda; 0 = no global loss
    global_source: Literal["encoder", "decoder"] = "encoder"
    target_norm: Literal["none", "layernorm"] = "none"

    def problems(self) -> list[tuple[str, str]]:
        return decoder_problems(self.decoder_dim, self.decoder_heads)


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    crop_scale: Scale = (0.2, 1.0)  # RandomResizedCrop scale (MAE's augmentation)


@dataclass(frozen=True, kw_only=True)
class Config:
    """The `img2vec` params section."""

    model: ModelConfig
    optim: OptimConfig
    data: DataConfig = field(default_factory=DataConfig)


INPUT = "the frozen teacher's weights (a timm CNN backbone or a student encoder, .safetensors)"


@dataclass(frozen=True)
class Geometry:
    """How the student patch grid, the mask blocks and the teacher token grid line up."""

    grid: int  # student patches per side
    block: int  # patches per block side
    teacher_img_size: int  # pixels per side the teacher sees
    pool: int  # teacher tokens per block side (1 = one token per block)

    @property
    def blocks_per_side(self) -> int:
        return self.grid // self.block


def check(cfg: Config, enc: ViTConfig) -> list[tuple[str, str]]:
    """Checks against the `encoder` section (before any work); the teacher's stride is checked when it loads."""
    b = cfg.model.block_size
    if b and enc.grid % b:
        return [("model.block_size", f"{b} does not tile the {enc.grid}x{enc.grid} patch grid")]
    return []


def resolve_geometry(cfg: ModelConfig, enc: ViTConfig, teacher: Teacher) -> Geometry:
    if cfg.block_size:
        block = cfg.block_size
    elif teacher.stride % enc.patch_size == 0:
        block = teacher.stride // enc.patch_size
    else:
        raise MimError(
            f"img2vec.model.block_size 0 needs the teacher stride ({teacher.stride}) to be a multiple of the patch size "
            f"({enc.patch_size}); set block_size"
        )
    if enc.grid % block:
        raise MimError(f"img2vec.model.block_size {block} does not tile the {enc.grid}x{enc.grid} patch grid")
    nb = enc.grid // block
    vit_size = teacher.backbone.cfg.img_size if isinstance(teacher.backbone, ViTEncoder) else None
    size = cfg.teacher_img_size or vit_size or nb * teacher.stride
    if vit_size is not None and size != vit_size:
        raise MimError(f"ViT teacher {teacher.name} runs at its own {vit_size} px, not img2vec.model.teacher_img_size {size}; set it to 0")
    th = size // teacher.stride
    if size % teacher.stride or th % nb:
        raise MimError(
            f"teacher at {size} px gives a {th}x{th} token grid (stride {teacher.stride}), not a multiple of the "
            f"{nb}x{nb} mask blocks; set img2vec.model.teacher_img_size to {nb * teacher.stride} (or 0)"
        )
    return Geometry(grid=enc.grid, block=block, teacher_img_size=size, pool=th // nb)


def projection_head(dim_in: int, hidden: int, dim_out: int) -> nn.Sequential:
    """The projection head of Img2Vec's Figure 2: MLP with ReLU."""
    return nn.Sequential(nn.Linear(dim_in, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim_out))


@torch.no_grad()
def teacher_targets(teacher: Teacher, imgs: torch.Tensor, geo: Geometry, target_norm: str = "none") -> torch.Tensor:
    """Teacher tokens of the full image, one per mask block: (N, 3, H, W) -> (N, B, C) float32, raster order.

    Runs in float32 with autocast off, also inside the engine's bf16 autocast (module doc)."""
    with torch.autocast(imgs.device.type, enabled=False):
        x = imgs.float()
        if x.shape[-1] != geo.teacher_img_size:
            x = F.interpolate(x, size=(geo.teacher_img_size,) * 2, mode="bilinear", align_corners=False, antialias=True)
        if not isinstance(teacher.backbone, ViTEncoder):
            x = x.contiguous(memory_format=torch.channels_last)  # ~1.3x faster CNN on CPU (see task)
        tok = teacher.tokens(x).float()  # (N, h, w, C)
        if target_norm == "layernorm":
            tok = F.layer_norm(tok, tok.shape[-1:])
        elif target_norm != "none":
            raise MimError(f"unknown img2vec.model.target_norm {target_norm!r}; choose none or layernorm")
        if geo.pool > 1:
            tok = F.avg_pool2d(tok.permute(0, 3, 1, 2), geo.pool).permute(0, 2, 3, 1)  # (N, nb, nb, C)
        return tok.flatten(1, 2)  # (N, B, C)


def patch_targets(target: torch.Tensor, geo: Geometry) -> torch.Tensor:
    """(N, B, C) one token per block -> (N, L, C) per patch, raster order: each patch gets its block's token."""
    n, nb, b, c = target.shape[0], geo.blocks_per_side, geo.block, target.shape[-1]
    t = target.view(n, nb, 1, nb, 1, c).expand(n, nb, b, nb, b, c)  # (N, block row, row in block, block col, col in block, C)
    return t.reshape(n, geo.grid * geo.grid, c)


def smooth_l1(pred: torch.Tensor, target: torch.Tensor, beta: float) -> torch.Tensor:
    """Elementwise smooth-L1: 0.5 x^2 / beta if |x| < beta else |x| - 0.5 beta."""
    return F.smooth_l1_loss(pred, target, reduction="none", beta=beta)


class Img2Vec(nn.Module):
    def __init__(self, enc_cfg: ViTConfig, cfg: ModelConfig, geo: Geometry, teacher_dim: int) -> None:
        super().__init__()
        self.cfg, self.geo = cfg, geo
        self.encoder = ViTEncoder(enc_cfg)
        d, dd = enc_cfg.embed_dim, cfg.decoder_dim
        hidden = cfg.head_hidden or teacher_dim
        self.decoder = MAEDecoder(d, geo.grid, dd, cfg.decoder_depth, cfg.decoder_heads)
        head_in = dd * geo.block**2 if cfg.merge == "concat" else dd  # mean, per_patch: one decoder output
        self.head = projection_head(head_in, hidden, teacher_dim)
        use_global_head = cfg.global_weight > 0 and cfg.global_source == "encoder"
        self.global_head = projection_head(d, hidden, teacher_dim) if use_global_head else None
        self.decoder.init_layers()
        for m in (self.head, self.global_head):
            if m is not None:
                m.apply(init_module)
        self.decoder.init_mask_token()

    def mask(self, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Block masking: (ids_keep (N, L_keep), mask (N, L) 1 = masked, ids_restore (N, L)), patch level."""
        return block_masking(n, self.geo.grid, self.geo.block, self.cfg.mask_ratio, device)

    def forward_encoder(self, imgs: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """Visible patches -> (N, 1+L_keep, D): mean of every block's output (multi-block), normed."""
        enc = self.encoder
        x = enc.embed(imgs)  # (N, L, D)
        x = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # (N, L_keep, D)
        x = enc.add_cls(x)  # (N, 1+L_keep, D)
        if self.cfg.multi_block:
            x = torch.stack(enc.forward_blocks(x, return_all=True)).mean(0)  # (N, 1+L_keep, D)
        else:
            x = enc.forward_blocks(x)
        return enc.norm(x)

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """(N, 1+L_keep, D) -> (N, L, Dd) decoder outputs for every patch, raster order."""
        return self.decoder(latent, ids_restore)[:, 1:]

    def predict_blocks(self, dec: torch.Tensor) -> torch.Tensor:
        """(N, L, Dd) patch outputs -> (N, B, C) one prediction per block (its teacher token); merge mean or concat."""
        g = patches_to_blocks(dec, self.geo.grid, self.geo.block)  # (N, B, b*b, Dd)
        if self.cfg.merge == "mean":
            return self.head(g.mean(2))
        if self.cfg.merge == "concat":
            return self.head(g.flatten(2))
        raise MimError(f"unknown img2vec.model.merge {self.cfg.merge!r} for block predictions; choose mean or concat")

    def forward_global(self, latent: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(N, C) pooled student output over the visible part; pred (N, K, C), mask (N, K), K = blocks or patches."""
        if self.cfg.global_source == "encoder":
            assert self.global_head is not None
            return self.global_head(latent[:, 1:].mean(1))  # GAP over visible patches, cls excluded
        if self.cfg.global_source == "decoder":
            vis = (1 - mask).unsqueeze(-1)  # (N, K, 1)
            return (pred * vis).sum(1) / vis.sum(1)
        raise MimError(f"unknown img2vec.model.global_source {self.cfg.global_source!r}; choose encoder or decoder")

    def forward_loss(
        self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, g_pred: torch.Tensor | None,
        g_target: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """pred/target (N, K, C), one row per prediction: K = blocks (mean, concat) or patches (per_patch);
        mask (N, K) 1 = masked; g_pred (N, C) or None; g_target (N, C), default target.mean(1). All in fp32."""
        pred, target = pred.float(), target.float()
        per_pred = smooth_l1(pred, target, self.cfg.beta).mean(-1)  # (N, K) mean over channels
        patch = (per_pred * mask).sum() / mask.sum()  # mean over the masked predictions only
        logs = {"patch_loss": patch.detach()}
        loss = patch
        if g_pred is not None:
            g_target = target.mean(1) if g_target is None else g_target.float()  # teacher GAP over all its tokens
            glob = smooth_l1(g_pred.float(), g_target, self.cfg.beta).mean()
            loss = loss + self.cfg.global_weight * glob
            logs["global_loss"] = glob.detach()
        return loss, logs

    def forward(self, imgs: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """imgs (N, 3, H, W), target (N, B, C) from `teacher_targets` -> (loss, logs)."""
        geo = self.geo
        n, nb = imgs.shape[0], geo.blocks_per_side
        ids_keep, mask, ids_restore = self.mask(n, imgs.device)
        block_mask = mask.view(n, nb, geo.block, nb, geo.block)[:, :, 0, :, 0].reshape(n, nb * nb)  # (N, B)
        latent = self.forward_encoder(imgs, ids_keep)
        dec = self.forward_decoder(latent, ids_restore)  # (N, L, Dd)
        target = target.float()  # fp32 targets, never rounded to the autocast dtype
        if self.cfg.merge == "per_patch":  # every patch regresses its block's token
            pred, tgt, m = self.head(dec).float(), patch_targets(target, geo), mask  # (N, L, C), (N, L, C), (N, L)
        else:  # one prediction per block
            pred, tgt, m = self.predict_blocks(dec).float(), target, block_mask  # (N, B, C), (N, B, C), (N, B)
        g_pred = self.forward_global(latent, pred, m) if self.cfg.global_weight > 0 else None
        return self.forward_loss(pred, tgt, m, g_pred, g_target=target.mean(1))  # global target: GAP of the K teacher tokens


def build_model(cfg: ModelConfig, enc_cfg: ViTConfig, teacher: Teacher) -> Img2Vec:
    return Img2Vec(enc_cfg, cfg, resolve_geometry(cfg, enc_cfg, teacher), teacher.dim)


def task(cfg: Config, inputs: Inputs) -> Task:
    """Img2Vec on inputs.train_images(), regressing the teacher in the file inputs.input."""
    if inputs.input is None:
        raise MimError(f"img2vec needs {INPUT} (--input)")
    teacher = load_teacher(Path(inputs.input))
    enc = inputs.encoder
    images = inputs.images(pretrain_transform(enc.img_size, cfg.data.crop_scale))
    t = build_task(cfg, enc, images, teacher, inputs.run)
    t.info["teacher"] = str(inputs.input)
    return t


def build_task(cfg: Config, enc: ViTConfig, images: Dataset, teacher: Teacher, run: RunConfig) -> Task:
    """Batches (imgs, labels) -> teacher targets -> student loss.  The teacher stays outside the model
    (not in checkpoints, no optimizer state), moved to the batch's device on first use."""
    geo = resolve_geometry(cfg.model, enc, teacher)
    if not isinstance(teacher.backbone, ViTEncoder):
        teacher.to(memory_format=torch.channels_last)

    def step(model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        imgs = batch[0] if isinstance(batch, (list, tuple)) else batch
        target = teacher_targets(teacher.to(imgs.device), imgs, geo, cfg.model.target_norm)  # (N, B, C)
        return model(imgs, target)

    t = make_task(lambda: Img2Vec(enc, cfg.model, geo, teacher.dim), images, cfg.optim, run, step, no_decay=VIT_TOKENS)
    t.info = {"teacher_name": teacher.name, "mask_block_patches": str(geo.block), "teacher_img_size": str(geo.teacher_img_size)}
    return t
