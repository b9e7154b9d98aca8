"""The `detect` params section: ViTDet Mask R-CNN fine-tuning (no detectron2 import: checked before it loads).

Defaults are detectron2's projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from mim.config import Betas, DropRate, Fraction, LayerDecay, NonNegFloat, NonNegInt, PosFloat, PosInt, Ratios
from mim.vit import ViTConfig


@dataclass(frozen=True, kw_only=True)
class DetectConfig:
    """ViTDet Mask R-CNN fine-tuning; defaults are mask_rcnn_vitdet_b_100ep (ViTDet, COCO)."""

    img_size: PosInt = 1024  # LSJ crop size, test resize (long side) and square padding
    lsj_scale: Ratios = (0.1, 2.0)  # large-scale jitter range
    window_size: NonNegInt = 14  # window attention in every block but the global ones; 0 = all global
    global_blocks: tuple[NonNegInt, ...] = (2, 5, 8, 11)
    use_rel_pos: bool = True
    drop_path: DropRate = 0.1
    scale_factors: tuple[PosFloat, ...] = (4.0, 2.0, 1.0, 0.5)  # simple feature pyramid, x patch stride
    fpn_channels: PosInt = 256  # width of every pyramid level and of the RPN / RoI head inputs
    anchor_scale: PosFloat = 8.0  # anchor side = anchor_scale * level stride (stock: 32 px at stride 4)
    box_head_convs: tuple[PosInt, ...] = (256, 256, 256, 256)  # 4conv1fc box head
    box_head_fcs: tuple[PosInt, ...] = (1024,)
    mask_head_dims: tuple[PosInt, ...] = (256, 256, 256, 256, 256)  # 4 convs + deconv width (last)
    roi_batch_per_image: PosInt = 512  # sampled RoIs per training image
    test_proposals: PosInt = 1000  # RPN post-NMS proposals per image at test time
    test_score_thresh: Fraction = 0.05  # detections below are dropped (0: always keep the top 100)
    batch_size: PosInt = 64  # images per iteration over all GPUs
    max_iter: PosInt = 184375
    lr: PosFloat = 1e-4
    betas: Betas = (0.9, 0.999)
    weight_decay: NonNegFloat = 0.1
    layer_decay: LayerDecay = 0.7
    warmup_iters: NonNegInt = 250
    lr_steps: tuple[PosInt, ...] = (163889, 177546)  # lr x0.1 at each
    checkpoint_period: PosInt = 5000
    log_period: PosInt = 20

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if not self.box_head_fcs:
            out.append(("box_head_fcs", "needs at least one entry"))
        if not self.mask_head_dims:
            out.append(("mask_head_dims", "needs at least one entry"))
        if not self.scale_factors:
            out.append(("scale_factors", "needs at least one entry"))
        if list(self.lr_steps) != sorted(set(self.lr_steps)):
            out.append(("lr_steps", f"{list(self.lr_steps)} must be increasing"))
        return out

    def check_encoder(self, enc: ViTConfig) -> list[tuple[str, str]]:
        """Checks against the student encoder (the `encoder` params section or an encoder file)."""
        out = []
        bad = [i for i in self.global_blocks if i >= enc.depth]
        if bad:
            out.append(("global_blocks", f"{bad} out of range for an encoder of depth {enc.depth}"))
        if self.img_size % enc.patch_size:
            out.append(("img_size", f"{self.img_size} is not a multiple of the patch size {enc.patch_size}"))
        for f in self.scale_factors:
            s = enc.patch_size / f
            if s < 1 or s != int(s) or 2 ** round(math.log2(s)) != s:
                out.append(("scale_factors", f"{list(self.scale_factors)} give stride {s:g} with patch {enc.patch_size}; "
                                             "need powers of 2"))
                break
        return out
