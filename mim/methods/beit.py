"""BEiT (Bao et al., arXiv 2106.08254): predict the visual-token ids of blockwise-masked patches.

`forward_encoder` replaces the embeddings of masked patches by one learned mask embedding
*before* the encoder (which sees all positions, unlike MAE); `forward_loss` is a linear head
over the tokenizer's vocabulary with cross-entropy on masked positions only (unilm/beit
`modeling_pretrain.py`).  BEiT has no decoder.

Masks are drawn in the data pipeline, one per image, as BEiT's `MaskingGenerator` in
`DataAugmentationForBEiT` does: blockwise masking is a Python loop per image, which loader
workers run in parallel, where MAE's and Img2Vec's masks are batched tensor ops in `forward`.

Position: BEiT's pretraining uses a relative position bias shared by all blocks and no absolute
position embedding (unilm/beit run_beit_pretraining.py: `--rel_pos_bias` on, `--abs_pos_emb`
off; modeling_pretrain.py `use_shared_rel_pos_bias`), with LayerScale 0.1.  `model.rel_pos_bias`
and `model.abs_pos` choose it (the defaults are BEiT's; `none` + `true` is the shared encoder's
fixed sin-cos embedding, which the smoke/micro profiles keep).  The encoder file is written with
the shared table copied into every block (mim/encoder_file.py), the layout BEiT fine-tunes and
timm's `beit_base_patch16_224` loads.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.transforms import ColorJitter, InterpolationMode, RandomResizedCrop
from torchvision.transforms import functional as TF

from mim.config import DropRate, NonNegFloat, OpenFraction, PosFloat, PosInt, Range, Scale
from mim.engine import OptimConfig, Task, make_task
from mim.errors import MimError
from mim.masking import blockwise_mask
from mim.methods import Inputs
from mim.param_groups import VIT_TOKENS
from mim.tokenizer.frozen import Tokenizer, load_tokenizer
from mim.vit import ViTConfig, ViTEncoder


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    mask_ratio: OpenFraction = 0.383  # fraction of the patches masked, rounded to a count (BEiT: 75 of 196)
    min_num_patches: PosInt = 16  # smallest block, in patches
    min_aspect: Annotated[float, Range(0, 1, lo_open=True)] = 0.3  # block aspect ratio in [min_aspect, 1/min_aspect]
    layer_scale: PosFloat = 0.1  # LayerScale init, overrides the encoder section
    drop_path: DropRate = 0.1  # stochastic depth, overrides the encoder section
    init_std: PosFloat = 0.02  # truncated-normal init of linear layers and tokens
    # unilm/beit run_beit_pretraining.py: --rel_pos_bias (shared by the blocks) on, --abs_pos_emb off
    rel_pos_bias: Literal["none", "shared", "per_layer"] = "shared"  # overrides the encoder section
    abs_pos: bool = False  # fixed sin-cos absolute position embedding; overrides the encoder section


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    crop_scale: Scale = (0.08, 1.0)  # RandomResizedCrop area range
    color_jitter: NonNegFloat = 0.4  # brightness/contrast/saturation strength; 0 = off


@dataclass(frozen=True, kw_only=True)
class Config:
    """The `beit` params section."""

    model: ModelConfig
    optim: OptimConfig
    data: DataConfig = field(default_factory=DataConfig)


INPUT = "the tokenizer file (written by `mimrepro tokenizer`)"


def num_masked(cfg: ModelConfig, grid: int) -> int:
    """Patches masked per image: mask_ratio of the grid, rounded (0.383 of 14x14 = 75)."""
    return round(cfg.mask_ratio * grid * grid)


class BEiT(nn.Module):
    def __init__(self, enc_cfg: ViTConfig, vocab_size: int, init_std: float = 0.02, num_masked: int | None = None) -> None:
        """`num_masked`: the patches every mask holds (BEiTTransform's exact count): the loss then gathers
        a fixed (N, num_masked) set of positions, no host sync and no data-dependent shape."""
        super().__init__()
        self.num_masked = num_masked
        self.encoder = ViTEncoder(enc_cfg)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, enc_cfg.embed_dim))
        self.head = nn.Linear(enc_cfg.embed_dim, vocab_size)
        self.init_std = init_std
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """BEiT's init (unilm/beit modeling_pretrain.py): normal truncated at +-1 std (their
        trunc_normal_ passes a=-std, b=std), residual projections of block l scaled by 1/sqrt(2 l)."""
        std = self.init_std
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=std, a=-std, b=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for t in (self.mask_token, self.encoder.cls_token):
            nn.init.trunc_normal_(t, std=std, a=-std, b=std)
        for layer, blk in enumerate(self.encoder.blocks, start=1):
            blk.attn.proj.weight.data.div_(math.sqrt(2.0 * layer))
            blk.mlp.fc2.weight.data.div_(math.sqrt(2.0 * layer))

    def forward_encoder(self, imgs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """imgs (N, 3, H, W), mask (N, h, w) bool -> normed features (N, 1+L, D) at all positions."""
        return self.encoder.forward_with_mask_token(imgs, mask.flatten(1), self.mask_token)

    def forward_loss(self, feats: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Cross-entropy of the token ids at masked positions only; logs the masked-token accuracy."""
        m = mask.flatten(1)  # (N, L)
        if self.num_masked is None:
            logits = self.head(feats[:, 1:][m])  # (M, V), M = masked patches in the batch
            target = ids.flatten(1)[m]  # (M,)
        else:  # the same positions in the same (row-major) order: a stable sort puts the masked ones first
            pos = torch.argsort((~m).to(torch.uint8), dim=1, stable=True)[:, : self.num_masked]  # (N, K)
            x = torch.gather(feats[:, 1:], 1, pos.unsqueeze(-1).expand(-1, -1, feats.shape[-1]))  # (N, K, D)
            logits = self.head(x.flatten(0, 1))  # (N*K, V)
            target = torch.gather(ids.flatten(1), 1, pos).flatten()  # (N*K,)
        loss = F.cross_entropy(logits.float(), target)
        acc = (logits.argmax(-1) == target).float().mean()
        return loss, {"mask_acc": acc.detach()}

    def forward(self, imgs: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """imgs (N, 3, H, W), tokenizer ids (N, h, w), mask (N, h, w) -> (loss, logs)."""
        return self.forward_loss(self.forward_encoder(imgs, mask), ids, mask)


class BEiTTransform:
    """BEiT's two views of one crop: the student's image (bicubic, normalised) and the
    tokenizer's half-resolution image (Lanczos, pixels in [0, 1]), plus a blockwise mask."""

    def __init__(self, cfg: Config, enc_cfg: ViTConfig, tokenizer_size: int) -> None:
        self.cfg, self.size, self.tok_size, self.grid = cfg, enc_cfg.img_size, tokenizer_size, enc_cfg.grid
        self.num_masked = num_masked(cfg.model, enc_cfg.grid)
        j = cfg.data.color_jitter
        self.jitter = ColorJitter(j, j, j) if j > 0 else None

    def __call__(self, img: Image.Image) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.jitter is not None:
            img = self.jitter(img)
        if torch.rand(()) < 0.5:
            img = TF.hflip(img)
        i, j, h, w = RandomResizedCrop.get_params(img, list(self.cfg.data.crop_scale), [3 / 4, 4 / 3])
        view = TF.resized_crop(img, i, j, h, w, [self.size, self.size], InterpolationMode.BICUBIC)
        tok_view = TF.resized_crop(img, i, j, h, w, [self.tok_size, self.tok_size], InterpolationMode.LANCZOS)
        view_t = TF.pil_to_tensor(view)  # uint8: normalised on the device (mim/data/device.py)
        m = self.cfg.model
        mask = blockwise_mask(self.grid, self.grid, self.num_masked, min_num_patches=m.min_num_patches, min_aspect=m.min_aspect).mask
        return view_t, TF.to_tensor(tok_view), mask


def encoder_config(cfg: Config, enc_cfg: ViTConfig) -> ViTConfig:
    """The shared encoder section with BEiT's layer-scale, drop-path and position signal."""
    m = cfg.model
    return dataclasses.replace(enc_cfg, layer_scale=m.layer_scale, drop_path=m.drop_path, rel_pos_bias=m.rel_pos_bias,
                               abs_pos=m.abs_pos)


def check(cfg: Config, enc: ViTConfig) -> list[tuple[str, str]]:
    """Checks against the `encoder` section (before any work): the position signal, the masked count
    and the smallest block."""
    for key, message in encoder_config(cfg, enc).problems():
        if key in ("abs_pos", "rel_pos_bias"):
            return [(f"model.{key}", message)]
    n = num_masked(cfg.model, enc.grid)
    if not 0 < n < enc.num_patches:
        return [("model.mask_ratio", f"{cfg.model.mask_ratio} masks {n} of {enc.num_patches} patches; "
                                     "need at least one masked and one visible")]
    if cfg.model.min_num_patches > n:
        return [("model.min_num_patches", f"{cfg.model.min_num_patches} exceeds the {n} patches masked per image")]
    return []


def check_config(cfg: Config, enc_cfg: ViTConfig, tokenizer: Tokenizer) -> None:
    if tokenizer.grid != enc_cfg.grid:
        raise MimError(
            f"the tokenizer's grid ({tokenizer.grid}x{tokenizer.grid} from {tokenizer.image_size} px / {tokenizer.downsample}) "
            f"differs from the student's patch grid ({enc_cfg.grid}x{enc_cfg.grid}); set tokenizer.model.image_size = "
            f"{enc_cfg.grid * tokenizer.downsample}"
        )
    for key, message in check(cfg, enc_cfg):
        raise MimError(f"beit.{key}: {message}")


def task(cfg: Config, inputs: Inputs) -> Task:
    if inputs.input is None:
        raise MimError(f"beit needs {INPUT} (--input)")
    tokenizer = load_tokenizer(Path(inputs.input))
    enc_cfg = encoder_config(cfg, inputs.encoder)
    check_config(cfg, enc_cfg, tokenizer)
    images = inputs.images(BEiTTransform(cfg, enc_cfg, tokenizer.image_size))

    def step(model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        (imgs, tok_imgs, mask), _ = batch
        ids = tokenizer.to(imgs.device).tokens(tok_imgs)  # (N, h, w), frozen, no grad
        return model(imgs, ids, mask)

    k = num_masked(cfg.model, enc_cfg.grid)  # every mask's exact count (BEiTTransform)
    t = make_task(lambda: BEiT(enc_cfg, tokenizer.vocab_size, cfg.model.init_std, k), images, cfg.optim, inputs.run, step,
                  no_decay=VIT_TOKENS)
    t.info = {"tokenizer": tokenizer.kind}
    return t
