"""Our student encoders (timm `VisionTransformer` or `Beit` keys) -> detectron2's ViTDet `ViT` backbone.

detectron2's ViT uses timm's parameter names for everything it has (`patch_embed.proj`,
`blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}`, `pos_embed`), with the same
shapes and the same fused q/k/v layout, so the mapping is mostly the identity.  Differences:

* `cls_token` and the final `norm` have no counterpart (ViTDet drops the cls token and puts
  LayerNorms in the simple feature pyramid instead): dropped, and reported as such.
* LayerScale (`blocks.N.ls1.gamma`, `ls2.gamma`; BEiT's `gamma_1`, `gamma_2`) does not exist in
  detectron2's Block: it is folded exactly into the linear layer in front of it
  (`gamma * (W x + b) = (diag(gamma) W) x + gamma * b`), so the network computes the same function.
* BEiT's q and v biases (`attn.q_bias`, `attn.v_bias`, the k bias fixed at zero) become the fused
  `attn.qkv.bias` = [q_bias, 0, v_bias], exactly what BEiT's attention adds (unilm/beit
  modeling_finetune.py Attention).
* BEiT's relative position bias (`blocks.N.attn.relative_position_bias_table`, or a shared
  `rel_pos_bias.relative_position_bias_table`) is **dropped**: it is one learned scalar per head
  for each 2-D offset between tokens (and the cls token), which detectron2's decomposed
  relative position (`rel_pos_h/w`: vectors per row and per column offset, multiplied with the
  query) cannot represent.  A BEiT encoder (`abs_pos: false`) then has no absolute table
  either, so its detection backbone is built without one (`use_abs_pos = abs_pos`) and learns
  position through ViTDet's own `rel_pos_h/w` from zero: `detect.use_rel_pos` must be on.  This
  is a deviation from the pretrained network: the blocks' weights are exact, their position
  bias starts over.
* `rel_pos_h/w` (relative position, ViTDet) are new: detectron2 initialises them to zero,
  so at initialisation they change nothing.  They are the only keys allowed to be missing.
* `pos_embed` (when the encoder has one) is copied as is, at the pretraining grid and with its
  cls slot: detectron2's ViT is built with `pretrain_img_size` = the encoder's image size and bicubically
  interpolates the table to the detection grid in every forward (`get_abs_pos`), exactly as
  ViTDet does with MAE's 224-px checkpoints.  The learnable table therefore keeps the
  pretrained resolution instead of becoming a 64x64 parameter at 1024 px.

Any other key, in either direction, is an error: a converter that silently drops weights
would report detection numbers for a half-random backbone.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import nn

from mim.checkpoint import key_mismatch
from mim.errors import MimError
from mim.vit import ViTConfig

DROPPED = ("cls_token", "norm.weight", "norm.bias")  # timm keys with no detectron2 counterpart
REL_POS_TABLE = "relative_position_bias_table"  # BEiT's (suffix): not representable in detectron2, dropped
NEW_OK = ("rel_pos_h", "rel_pos_w")  # detectron2 keys that start fresh (suffixes)
_LAYER_SCALE = {"ls1.gamma": "attn.proj", "ls2.gamma": "mlp.fc2", "gamma_1": "attn.proj", "gamma_2": "mlp.fc2"}
_QV_BIAS = ("attn.q_bias", "attn.v_bias")


@dataclass
class ConversionReport:
    loaded: list[str] = field(default_factory=list)  # detectron2 keys filled from the encoder
    dropped: list[str] = field(default_factory=list)  # encoder keys without a counterpart
    folded: list[str] = field(default_factory=list)  # LayerScale gammas folded into linears
    fused: list[str] = field(default_factory=list)  # BEiT q/v biases fused into qkv.bias
    fresh: list[str] = field(default_factory=list)  # detectron2 keys left at their init (rel pos)

    def summary(self) -> str:
        return (
            f"{len(self.loaded)} tensors loaded, {len(self.folded)} LayerScale folded, {len(self.fused)} q/v biases fused, "
            f"dropped {', '.join(self.dropped) or 'nothing'}, "
            f"fresh {len(self.fresh)} ({', '.join(sorted({k.rsplit('.', 1)[-1] for k in self.fresh})) or 'none'})"
        )


def vit_kwargs(
    enc: ViTConfig,
    *,
    img_size: int,
    window_size: int = 14,
    global_blocks: tuple[int, ...] = (2, 5, 8, 11),
    use_rel_pos: bool = True,
    drop_path: float = 0.1,
) -> dict[str, Any]:
    """Arguments of `detectron2.modeling.ViT` for encoder `enc` at detection size `img_size`.

    window_size 0 = global attention in every block; otherwise every block not listed in
    global_blocks attends within window_size x window_size windows (ViTDet).
    """
    if not enc.abs_pos and not use_rel_pos:
        raise MimError("the encoder has no absolute position embedding (BEiT layout) and its relative position bias "
                       "does not convert to ViTDet: set detect.use_rel_pos: true so the backbone has a position signal")
    bad = [i for i in global_blocks if not 0 <= i < enc.depth]
    if bad:
        raise MimError(f"detect.global_blocks {bad} out of range for an encoder of depth {enc.depth}")
    if img_size % enc.patch_size:
        raise MimError(f"detect.img_size {img_size} is not a multiple of the patch size {enc.patch_size}")
    window = [i for i in range(enc.depth) if i not in global_blocks] if window_size > 0 else []
    return dict(
        img_size=img_size,
        patch_size=enc.patch_size,
        in_chans=enc.in_chans,
        embed_dim=enc.embed_dim,
        depth=enc.depth,
        num_heads=enc.num_heads,
        mlp_ratio=enc.mlp_ratio,
        qkv_bias=True,
        # the encoder's LayerNorm eps (mim/vit.py, timm's ViT); detectron2's ViT defaults to 1e-5, and its
        # stock ViTDet config (detectron2 configs/common/models/mask_rcnn_vitdet.py) sets 1e-6 as here
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        drop_path_rate=drop_path,
        window_size=window_size,
        window_block_indexes=window,
        residual_block_indexes=[],
        use_rel_pos=use_rel_pos,
        use_abs_pos=enc.abs_pos,  # a BEiT encoder has none (module docstring)
        pretrain_img_size=enc.img_size,
        pretrain_use_cls_token=True,
        out_feature="last_feat",
    )


def convert(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """timm-named encoder state -> detectron2 ViT state (no prefix), plus what was done."""
    out: dict[str, torch.Tensor] = {}
    report = ConversionReport()
    gammas: dict[str, torch.Tensor] = {}
    qv: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in DROPPED or key.endswith(REL_POS_TABLE):
            report.dropped.append(key)
        elif _layer_scale_target(key):
            gammas[key] = value
        elif key.endswith(_QV_BIAS):
            qv[key] = value
        else:
            out[key] = value.clone()
    for key in sorted(k for k in qv if k.endswith(".q_bias")):  # blocks.N.attn.{q,v}_bias -> blocks.N.attn.qkv.bias
        attn = key.removesuffix(".q_bias")
        if attn + ".v_bias" not in qv:
            raise MimError(f"encoder has {key} but no {attn}.v_bias")
        q, v = qv.pop(key), qv.pop(attn + ".v_bias")
        out[attn + ".qkv.bias"] = torch.cat([q, torch.zeros_like(q), v])  # (3 D,), k bias zero
        report.fused += [key, attn + ".v_bias"]
    if qv:
        raise MimError(f"encoder has {', '.join(sorted(qv))} without its q_bias")
    for key, gamma in gammas.items():  # blocks.N.ls1.gamma -> blocks.N.attn.proj.{weight,bias}
        target = _layer_scale_target(key)
        if target + ".weight" not in out:
            raise MimError(f"encoder has {key} but no {target}.weight to fold it into")
        out[target + ".weight"] = out[target + ".weight"] * gamma[:, None]  # (D_out, D_in)
        out[target + ".bias"] = out[target + ".bias"] * gamma
        report.folded.append(key)
    return out, report


def _layer_scale_target(key: str) -> str:
    """'blocks.3.ls1.gamma' / 'blocks.3.gamma_1' -> 'blocks.3.attn.proj'; '' for any other key."""
    parts = key.split(".")
    if len(parts) in (3, 4) and parts[0] == "blocks" and ".".join(parts[2:]) in _LAYER_SCALE:
        return f"blocks.{parts[1]}.{_LAYER_SCALE['.'.join(parts[2:])]}"
    return ""


def load_into_vit(vit: nn.Module, state: dict[str, torch.Tensor]) -> ConversionReport:
    """Convert a timm-named encoder state and load it into detectron2 ViT `vit`.

    Raises MimError on any encoder weight that has no place in `vit`, on any `vit` weight
    other than relative position tables that the encoder does not provide, and on shapes.
    """
    converted, report = convert(state)
    own = vit.state_dict()
    missing, unexpected, wrong = key_mismatch(own, converted)
    missing = [k for k in missing if not k.endswith(NEW_OK)]
    problems = []
    if unexpected:
        problems.append(f"unexpected (encoder weights with no place in detectron2's ViT): {', '.join(unexpected)}")
    if missing:
        problems.append(f"missing (detectron2 weights the encoder does not provide): {', '.join(missing)}")
    if wrong:
        problems.append(
            "shape mismatch: " + ", ".join(f"{k} {tuple(converted[k].shape)} vs {tuple(own[k].shape)}" for k in wrong)
        )
    if problems:
        raise MimError("cannot convert encoder to ViTDet: " + "; ".join(problems))
    result = vit.load_state_dict(converted, strict=False)
    assert not result.unexpected_keys  # checked above
    report.loaded = sorted(converted)
    report.fresh = sorted(result.missing_keys)
    return report
