"""A mimrepro student encoder as a segmentation backbone: multi-level NCHW features of a ViT.

`MimViT` rebuilds the encoder from the student's encoder file (mim/encoder_file.py),
interpolates its position embedding to the crop size, and returns the outputs of the chosen
blocks (1-based, e.g. 4/6/8/12 of 12) as (N, D, H/p, W/p) maps, before any final norm, as
BEiT's and MAE's segmentation backbones do.  mmseg's `Feature2Pyramid` neck (BEiT/MAE's
fpn1-4: deconvolutions up, max-pooling down) then resamples them to strides 4/8/16/32.

mmseg's MAE backbone (mmseg/models/backbones/mae.py, the 48.1 mIoU config) is BEiT's with the
absolute position table kept, and two options here reproduce it:
* `rel_pos_bias`: each block gets its own BEiT relative position bias table
  `blocks.N.attn.relative_position_bias_table`, ((2w-1)^2 + 3, heads) for the crop's w x w patch
  window (three rows for cls->patch, patch->cls, cls->cls), zero-initialised (mae.py
  MAEAttention.init_weights; BEiT draws it from trunc_normal instead).  The bias is gathered per
  block and passed to timm's attention as its additive `attn_mask`;
* `layer_scale`: timm's LayerScale (`blocks.N.ls1.gamma`, `ls2.gamma`, learnable) at this init
  for an encoder that has none (mmseg MAE `init_values=1.0`); an encoder trained with LayerScale
  (BEiT) keeps its own gammas.
Both start as the identity: at init the backbone computes exactly the plain ViT.  The q/k/v
bias stays one `qkv.bias` (mmseg MAE builds its layers with `bias=True`, not BEiT's q/v bias;
a k bias adds the same amount to every key's logit, so softmax ignores it anyway).

A student file in timm's BEiT layout (mim/encoder_file.py: `rel_pos_bias` per_layer, usually no
`pos_embed`) loads into the same plain-ViT blocks exactly, as mmseg's BEiT backbone would run it
(mmseg/models/backbones/beit.py, which has no absolute position table; unilm/beit's ADE20K configs
`use_abs_pos_emb=False`): no position table is added when the file has none;
`attn.q_bias`/`attn.v_bias` become `attn.qkv.bias` = [q, 0, v] (timm beit.py Attention: a zero
k bias), `gamma_1`/`gamma_2` become `ls1.gamma`/`ls2.gamma` (the encoder's own LayerScale; then
`layer_scale` is not used), and each block's table, ((2g-1)^2 + 3, heads) for the pretraining
window g x g, is resized to the crop's window by `resize_rel_table`.  Such a file always uses its
tables, whatever `rel_pos_bias` says (the load report says so).

This module imports no mmseg: `downstream.seg` registers `MimViT` in mmseg's MODELS.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch
from timm.layers import resample_abs_pos_embed, resize_rel_pos_bias_table
from torch import nn

from mim.encoder_file import EncoderFile
from mim.errors import MimError
from mim.vit import ViTConfig, ViTEncoder, per_layer_state

# Feature strides the UperNet head expects, relative to the input image (ViT-B/16 recipes).
PYRAMID_STRIDES = (4, 8, 16, 32)


def pyramid_rescales(patch_size: int) -> list[float]:
    """Feature2Pyramid factors taking stride-`patch_size` ViT maps to strides 4/8/16/32."""
    rescales = [patch_size / s for s in PYRAMID_STRIDES]
    supported = ({4, 2, 1, 0.5}, {2, 1, 0.5, 0.25})  # what Feature2Pyramid implements
    if set(rescales) not in supported:
        raise MimError(f"segmentation supports ViT patch sizes 8 and 16 (strides 4/8/16/32), got {patch_size}")
    return rescales


def rel_pos_index(grid: tuple[int, int], window: tuple[int, int]) -> torch.Tensor:
    """(1+h*w, 1+h*w) rows of a (2Wh-1)(2Ww-1)+3 table for the patches of an (h, w) grid inside an
    (Wh, Ww) window, cls token first: entry (i, j) is the row of token i's offset from token j;
    the cls entries are the table's last three rows, cls->patch, patch->cls, cls->cls (microsoft/unilm
    beit/semantic_segmentation/backbone/beit.py; mmseg beit.py BEiTAttention._init_rel_pos_embedding).
    A grid smaller than the window (a slide window at an image edge) uses the same table rows."""
    (h, w), (wh, ww) = grid, window
    if h > wh or w > ww:
        raise MimError(f"a {h}x{w} patch grid exceeds the {wh}x{ww} relative position window (the crop): "
                       "use slide inference (segment.test_mode: slide) or, for an encoder without its own "
                       "tables (not BEiT's), segment.rel_pos_bias: false")
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    coords = torch.stack([rows.flatten(), cols.flatten()])  # (2, L)
    rel = coords[:, :, None] - coords[:, None, :]  # (2, L, L): query minus key
    n = (2 * wh - 1) * (2 * ww - 1)  # rows for patch pairs
    index = torch.empty(h * w + 1, h * w + 1, dtype=torch.long)
    index[1:, 1:] = (rel[0] + wh - 1) * (2 * ww - 1) + rel[1] + ww - 1
    index[0, :] = n  # cls -> patch
    index[:, 0] = n + 1  # patch -> cls
    index[0, 0] = n + 2  # cls -> cls
    return index


def resize_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(1, 1+g*g, D) -> (1, 1+h*w, D): bicubic on the patch part, cls entry kept (MAE's recipe)."""
    return resample_abs_pos_embed(pos_embed, list(grid), num_prefix_tokens=1, interpolation="bicubic", antialias=False)


def resize_rel_table(table: torch.Tensor, src: tuple[int, int], dst: tuple[int, int]) -> torch.Tensor:
    """((2Sh-1)(2Sw-1)+3, heads) table of an (Sh, Sw) window -> the (Dh, Dw) window's, the 3 cls rows kept.
    timm.layers.resize_rel_pos_bias_table, as timm beit.py checkpoint_filter_fn loads BEiT weights at
    another size: unilm/beit's geometric-sequence source offsets (dense near 0, sparse at the edges;
    run_class_finetuning.py), read off by linear interpolation.  unilm beit/semantic_segmentation
    mmcv_custom/checkpoint.py and mmseg beit.py `resize_rel_pos_embed` interpolate the same points
    with scipy's cubic `interp2d`, which SciPy 1.14 removed, so mmseg's BEiT cannot resize here."""
    rows = (2 * src[0] - 1) * (2 * src[1] - 1) + 3
    if table.shape[0] != rows:
        raise MimError(f"a relative position table of {table.shape[0]} rows does not fit the encoder's "
                       f"{src[0]}x{src[1]} window ({rows} rows)")
    if src == dst:
        return table
    shape = ((2 * dst[0] - 1) * (2 * dst[1] - 1) + 3, table.shape[1])
    return resize_rel_pos_bias_table(table, new_window_size=dst, new_bias_shape=shape, old_window_size=src)


def vit_block_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """timm beit.Block keys -> timm vision_transformer.Block keys (and the keys converted):
    `attn.q_bias` + `attn.v_bias` -> `attn.qkv.bias` = [q, 0, v] (timm beit.py Attention.forward's
    zero k bias), `gamma_1`/`gamma_2` -> `ls1.gamma`/`ls2.gamma`; the rest unchanged."""
    out, converted = {}, []
    for k, v in state.items():
        pre = k[: -len("q_bias")]
        if k.endswith(".attn.q_bias") and pre + "v_bias" in state:
            out[pre + "qkv.bias"] = torch.cat([v, torch.zeros_like(v), state[pre + "v_bias"]])  # (3D,)
        elif k.endswith(".attn.v_bias") and pre + "q_bias" in state:
            pass  # in qkv.bias
        elif k.endswith((".gamma_1", ".gamma_2")):
            out[f"{k[:-len('gamma_1')]}ls{k[-1]}.gamma"] = v
        else:
            out[k] = v
            continue
        converted.append(k)
    return out, sorted(converted)


class MimViT(nn.Module):
    """ViT student encoder -> tuple of block outputs, each (N, D, H/p, W/p)."""

    def __init__(
        self,
        encoder: str,
        out_blocks: tuple[int, ...] | list[int] = (4, 6, 8, 12),
        img_size: int = 512,
        drop_path: float = 0.1,
        rel_pos_bias: bool = False,
        layer_scale: float | None = None,
    ) -> None:
        super().__init__()
        f = EncoderFile.read(Path(encoder))
        cfg, state = per_layer_state(f.config, f.state)  # a shared table per block (files are written so already)
        self.beit = cfg.beit_blocks  # timm's BEiT layout: its own relative position tables
        rel_pos_bias = rel_pos_bias or self.beit
        out = tuple(int(b) for b in out_blocks)
        if not out or list(out) != sorted(out) or out[0] < 1 or out[-1] > cfg.depth:
            raise MimError(f"segment.out_blocks must be non-decreasing block numbers in 1..{cfg.depth}, got {list(out)}")
        if img_size % cfg.patch_size:
            raise MimError(f"segment crop size {img_size} is not a multiple of the patch size {cfg.patch_size}")
        self.out_blocks = out
        self.source_cfg = cfg
        self.num_layers = out[-1]  # blocks kept (those above the last output are dropped)
        self.embed_dim = cfg.embed_dim
        self.patch_size = cfg.patch_size
        # Build at the crop size with the last output's depth; the drop-path rule spans the kept blocks.
        ls = cfg.layer_scale if cfg.layer_scale is not None else layer_scale  # an encoder's own LayerScale is loaded
        # Plain timm ViT blocks for either layout; the tables are added below (no pos_embed without abs_pos)
        vit_cfg = dataclasses.replace(cfg, img_size=img_size, drop_path=drop_path, depth=out[-1], layer_scale=ls,
                                      rel_pos_bias="none")
        self.vit = ViTEncoder(vit_cfg)
        self.window = (vit_cfg.grid, vit_cfg.grid) if rel_pos_bias else None
        if self.window is not None:
            rows = (2 * vit_cfg.grid - 1) ** 2 + 3
            for blk in self.vit.blocks:  # zeros (mmseg mae.py MAEAttention); a BEiT file's own are loaded
                blk.attn.relative_position_bias_table = nn.Parameter(torch.zeros(rows, cfg.num_heads))  # (T, heads)
            self.register_buffer("relative_position_index", rel_pos_index(self.window, self.window), persistent=False)
        del self.vit.norm  # features are raw block outputs (BEiT/MAE segmentation); no final norm
        self.vit.patch_embed.strict_img_size = False  # any size: windows of slide inference, odd test sizes
        self.vit.patch_embed.dynamic_img_pad = True
        if self.vit.pos_embed is not None:
            self.vit.pos_embed.requires_grad_(True)  # fine-tuned from the pretrained table (MAE fine-tuning)
        self.load_report = self._load(state, cfg, vit_cfg)

    # --- weights ---------------------------------------------------------------------------
    def _load(self, state: dict[str, torch.Tensor], src: ViTConfig, dst: ViTConfig) -> dict[str, list[str]]:
        state = dict(state)
        unused = sorted(k for k in state if k.startswith("norm.") or _block_index(k) >= dst.depth)
        for k in unused:
            del state[k]
        state, converted = vit_block_state(state) if self.beit else (state, [])
        resized = []
        if "pos_embed" in state and dst.grid != src.grid:
            state["pos_embed"] = resize_pos_embed(state["pos_embed"], (dst.grid, dst.grid))
            resized.append("pos_embed")
        for k in [k for k in state if k.endswith(".relative_position_bias_table")]:
            state[k] = resize_rel_table(state[k], (src.grid, src.grid), (dst.grid, dst.grid))
            resized += [k] if dst.grid != src.grid else []
        missing, unexpected = self.vit.load_state_dict(state, strict=False)
        # tensors the backbone adds to the encoder: the bias tables, LayerScale for an encoder without one
        new = (() if self.beit else (".relative_position_bias_table",)) + ((".gamma",) if src.layer_scale is None else ())
        added = sorted(k for k in missing if k.endswith(new))
        missing = [k for k in missing if k not in added]
        report = {"missing": sorted(missing), "unexpected": sorted(unexpected), "unused": unused, "added": added,
                  "converted": converted, "resized": sorted(resized)}
        layout = ("BEiT layout (q/v bias -> qkv.bias, gamma_1/2 -> ls1/2.gamma; its own relative position tables, "
                  "used whatever segment.rel_pos_bias says); " if self.beit else "")
        pos = f"pos_embed {src.grid}x{src.grid} -> {dst.grid}x{dst.grid}" if "pos_embed" in state else "no pos_embed"
        tables = f"; bias tables {src.grid}x{src.grid} -> {dst.grid}x{dst.grid} windows" if self.beit else ""
        print(
            f"segment backbone: {layout}{len(state)} tensors loaded; {pos}{tables}; "
            f"missing {report['missing'] or 'none'}; unexpected {report['unexpected'] or 'none'}; "
            f"not used (final norm, blocks above {dst.depth}): {len(unused)}; "
            f"added (zero bias tables, LayerScale at {dst.layer_scale}): {len(added)}",
            file=sys.stderr,
        )
        if missing or unexpected:
            raise MimError(f"encoder does not fit the backbone: missing keys {list(missing)}, unexpected keys {list(unexpected)}")
        return report

    # --- forward ---------------------------------------------------------------------------
    def pos_embed_for(self, grid: tuple[int, int]) -> torch.Tensor | None:
        """The position table for a (h, w) patch grid; the stored one when it matches; None without one."""
        if self.vit.pos_embed is None or grid == (self.vit.cfg.grid, self.vit.cfg.grid):
            return self.vit.pos_embed
        return resize_pos_embed(self.vit.pos_embed, grid)  # (1, 1+h*w, D)

    def rel_pos_index_for(self, grid: tuple[int, int]) -> torch.Tensor | None:
        """The table rows for a (h, w) patch grid; None without relative position bias."""
        if self.window is None:
            return None
        if grid == self.window:
            return self.relative_position_index
        return rel_pos_index(grid, self.window).to(self.relative_position_index.device)

    def forward(self, imgs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n, _, h, w = imgs.shape
        p = self.patch_size
        grid = (-(-h // p), -(-w // p))  # patch_embed pads the bottom/right edge
        pos = self.pos_embed_for(grid)
        x = self.vit.patch_embed(imgs)  # (N, L, D)
        cls = self.vit.cls_token
        if pos is not None:
            x, cls = x + pos[:, 1:, :], cls + pos[:, :1, :]
        cls = cls.expand(n, -1, -1)
        x = torch.cat([cls, x], dim=1)  # (N, 1+L, D)
        index = self.rel_pos_index_for(grid)
        maps = {}
        for i, blk in enumerate(self.vit.blocks, start=1):
            x = blk(x, attn_mask=None if index is None else rel_pos_bias(blk.attn.relative_position_bias_table, index))
            if i in self.out_blocks:
                maps[i] = x[:, 1:, :].transpose(1, 2).reshape(n, self.embed_dim, *grid)  # (N, D, h, w)
        return tuple(maps[b] for b in self.out_blocks)  # a block may feed several levels (shallow ViTs)


def rel_pos_bias(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(T, heads) table, (N, N) index -> (1, heads, N, N) additive attention bias."""
    n = index.shape[0]
    return table[index.view(-1)].view(n, n, -1).permute(2, 0, 1).unsqueeze(0)


def _block_index(key: str) -> int:
    """Block number of a `blocks.N.*` key; -1 for every other key."""
    parts = key.split(".")
    return int(parts[1]) if parts[0] == "blocks" else -1
