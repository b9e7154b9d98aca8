"""BEiT student (Bao et al., arXiv 2106.08254): predict visual-token ids of masked patches.

`forward_encoder` replaces the embeddings of masked patches by one learned mask embedding
*before* the encoder (which sees all positions, unlike MAE), `forward_loss` is a linear head
over the tokenizer's vocabulary with cross-entropy on masked positions only.

Position embedding: BEiT's ViT-B pretraining recipe uses a relative position bias shared
across blocks (official unilm/beit scripts; not listed in papers.md).  We keep the shared
encoder's fixed absolute 2-D sin-cos embedding instead, so the exported encoder has timm
`VisionTransformer` keys that every downstream stage (fine-tune, detection, segmentation,
diversity) loads unchanged, and the students differ only in their pretraining objective.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.transforms import ColorJitter, InterpolationMode, RandomResizedCrop
from torchvision.transforms import functional as TF

from mim.data import IMAGENET_MEAN, IMAGENET_STD, ImageFolder, make_loader
from mim.engine import OptimConfig, RunConfig, Task, local_batch, param_groups_weight_decay, seed_everything, steps_for
from mim.errors import MimError
from mim.export import save_encoder
from mim.masking import blockwise_mask
from mim.tokenizer import Tokenizer
from mim.vit import ViTConfig, ViTEncoder


@dataclass(frozen=True, kw_only=True)
class BEiTConfig:
    optim: OptimConfig
    num_masked: int = 75  # patches masked per image, exactly (BEiT: 75 of 196)
    min_num_patches: int = 16  # smallest block
    min_aspect: float = 0.3  # block aspect ratio in [min_aspect, 1/min_aspect]
    layer_scale: float = 0.1  # LayerScale init, overrides the encoder section
    drop_path: float = 0.1  # stochastic depth, overrides the encoder section
    init_std: float = 0.02  # truncated-normal init of linear layers and tokens
    crop_scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop area range
    color_jitter: float = 0.4  # brightness/contrast/saturation strength; 0 = off


class BEiT(nn.Module):
    def __init__(self, enc_cfg: ViTConfig, vocab_size: int, init_std: float = 0.02) -> None:
        super().__init__()
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
        enc = self.encoder
        x = enc.patch_embed(imgs)  # (N, L, D)
        w = mask.flatten(1).unsqueeze(-1).to(x.dtype)  # (N, L, 1), 1 = masked
        x = x * (1 - w) + self.mask_token.to(x.dtype) * w
        x = x + enc.pos_embed[:, 1:, :]
        x = enc.forward_blocks(enc.add_cls(x))  # (N, 1+L, D)
        return enc.norm(x)

    def forward_loss(self, feats: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy and accuracy of the token ids at masked positions only."""
        m = mask.flatten(1)  # (N, L)
        logits = self.head(feats[:, 1:][m])  # (M, V), M = masked patches in the batch
        target = ids.flatten(1)[m]  # (M,)
        loss = F.cross_entropy(logits.float(), target)
        acc = (logits.argmax(-1) == target).float().mean()
        return loss, acc.detach()

    def forward(self, imgs: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """imgs (N, 3, H, W), tokenizer ids (N, h, w), mask (N, h, w) -> (loss, masked-token accuracy)."""
        return self.forward_loss(self.forward_encoder(imgs, mask), ids, mask)


class BEiTTransform:
    """BEiT's two views of one crop: the student's image (bicubic, normalised) and the
    tokenizer's half-resolution image (Lanczos, pixels in [0, 1]), plus a blockwise mask."""

    def __init__(self, cfg: BEiTConfig, enc_cfg: ViTConfig, tokenizer_size: int) -> None:
        self.cfg, self.size, self.tok_size, self.grid = cfg, enc_cfg.img_size, tokenizer_size, enc_cfg.grid
        j = cfg.color_jitter
        self.jitter = ColorJitter(j, j, j) if j > 0 else None

    def __call__(self, img: Image.Image) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.jitter is not None:
            img = self.jitter(img)
        if torch.rand(()) < 0.5:
            img = TF.hflip(img)
        i, j, h, w = RandomResizedCrop.get_params(img, list(self.cfg.crop_scale), [3 / 4, 4 / 3])
        view = TF.resized_crop(img, i, j, h, w, [self.size, self.size], InterpolationMode.BICUBIC)
        tok_view = TF.resized_crop(img, i, j, h, w, [self.tok_size, self.tok_size], InterpolationMode.LANCZOS)
        view_t = TF.normalize(TF.to_tensor(view), IMAGENET_MEAN, IMAGENET_STD)
        c = self.cfg
        mask = blockwise_mask(self.grid, self.grid, c.num_masked, min_num_patches=c.min_num_patches, min_aspect=c.min_aspect).mask
        return view_t, TF.to_tensor(tok_view), mask


def encoder_config(cfg: BEiTConfig, enc_cfg: ViTConfig) -> ViTConfig:
    """The shared encoder section with BEiT's layer-scale and drop-path."""
    return dataclasses.replace(enc_cfg, layer_scale=cfg.layer_scale, drop_path=cfg.drop_path)


def check_config(cfg: BEiTConfig, enc_cfg: ViTConfig, tokenizer: Tokenizer) -> None:
    if tokenizer.grid != enc_cfg.grid:
        raise MimError(
            f"the tokenizer's grid ({tokenizer.grid}x{tokenizer.grid} from {tokenizer.image_size} px / {tokenizer.downsample}) "
            f"differs from the student's patch grid ({enc_cfg.grid}x{enc_cfg.grid}); set tokenizer.image_size = "
            f"{enc_cfg.grid * tokenizer.downsample}"
        )
    if not 0 < cfg.num_masked < enc_cfg.num_patches:
        raise MimError(f"beit.num_masked={cfg.num_masked} must be in (0, {enc_cfg.num_patches}) for the {enc_cfg.grid}x{enc_cfg.grid} grid")
    if cfg.min_num_patches > cfg.num_masked:
        raise MimError(f"beit.min_num_patches={cfg.min_num_patches} exceeds beit.num_masked={cfg.num_masked}")


def beit_task(cfg: BEiTConfig, enc_cfg: ViTConfig, run: RunConfig, train_root: Path, tokenizer: Tokenizer) -> Task:
    """Everything `mim.engine.fit` needs to pretrain a BEiT student on `train_root` (ImageNet layout)."""
    enc_cfg = encoder_config(cfg, enc_cfg)
    check_config(cfg, enc_cfg, tokenizer)
    seed_everything(run.seed)  # the initial weights depend on the seed only
    model = BEiT(enc_cfg, tokenizer.vocab_size, cfg.init_std)
    dataset = ImageFolder(Path(train_root), transform=BEiTTransform(cfg, enc_cfg, tokenizer.image_size))
    batch = local_batch(cfg.optim)
    if len(dataset) < batch:
        raise MimError(f"{train_root} has {len(dataset)} images, fewer than one batch ({batch})")

    def loader(epoch: int) -> Any:
        return make_loader(dataset, batch, epoch=epoch, seed=run.seed, num_workers=run.num_workers)

    def step(m: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        (imgs, tok_imgs, mask), _ = batch
        ids = tokenizer.to(imgs.device).tokens(tok_imgs)  # (N, h, w), frozen, no grad
        loss, acc = m(imgs, ids, mask)
        return loss, {"mask_acc": acc}

    groups = param_groups_weight_decay(model, cfg.optim.weight_decay, no_decay=("pos_embed", "cls_token", "mask_token"))
    return Task(model, step, loader, steps_for(len(dataset), batch), groups)


def export_beit(model: BEiT, path: Path) -> None:
    """The pretrained encoder (timm VisionTransformer keys); the mask token and head are dropped."""
    save_encoder(Path(path), model.encoder, extra={"method": "beit"})
