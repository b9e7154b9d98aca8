"""Optimizer parameter groups: weight decay on matrices only, and layer-wise lr decay for ViTs.

Layer-wise decay follows MAE's `util/lr_decay.py` (`param_groups_lrd`, `get_layer_id_for_vit`):
the embeddings are layer 0, block i is layer i + 1, everything after the blocks (norm, head,
decoder heads) is layer depth + 1, and a parameter of layer l gets lr x decay ** (depth + 1 - l).
Fine-tuning (mim/eval/finetune.py) and the segmentation backbone (downstream/seg_mm.py) both use
`layer_decay_groups`; detection uses detectron2's own rule (`get_vit_lr_decay_rate`).
BEiT's own rule (unilm/beit optim_factory.py `get_num_layer_for_vit`) is the same and puts the
shared `rel_pos_bias.*` table after the blocks too; a per-layer table of block N
(`attn.relative_position_bias_table`) is in layer N + 1 and, being 2-D, weight-decayed, as in
BEiT's pretraining and fine-tuning (`--disable_weight_decay_on_rel_pos_bias` is off by default).
timm's `param_groups_layer_decay` is not used: it groups by timm's own module names and cannot
see a ViT nested under another prefix (`encoder.`, `backbone.vit.`).
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

# The ViT's learned tokens and position table, never decayed (MAE's and BEiT's no_weight_decay);
# DINO decays everything but biases and norms.
VIT_TOKENS = ("cls_token", "pos_embed", "mask_token")


def weight_decay_groups(model: nn.Module, weight_decay: float, no_decay: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Two groups: weights decayed; biases, norms (1-D) and the named tokens not decayed.

    `no_decay` holds full parameter names or last components (`mask_token`, `pos_embed`).
    """
    skip = set(no_decay)
    decay, no = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(".bias") or name in skip or name.split(".")[-1] in skip:
            no.append(p)
        else:
            decay.append(p)
    return [{"params": no, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def vit_layer_id(name: str, depth: int, prefix: str = "") -> int:
    """Layer of parameter `name` for a ViT whose parameters sit under `prefix` (e.g. "encoder.")."""
    if not name.startswith(prefix):
        return depth + 1  # heads, necks: after the last block
    rest = name.removeprefix(prefix)
    if rest in ("cls_token", "pos_embed") or rest.startswith("patch_embed."):
        return 0
    if rest.startswith("blocks."):
        return int(rest.split(".")[1]) + 1
    return depth + 1  # norm, and a shared rel_pos_bias table (unilm/beit optim_factory.py)


def layer_decay_groups(
    model: nn.Module, weight_decay: float, layer_decay: float, depth: int, prefix: str = ""
) -> list[dict[str, Any]]:
    """One group per (layer, decayed?) with "lr_scale" = layer_decay ** (depth + 1 - layer) and the
    parameter "names"; no weight decay on 1-D parameters, cls_token and pos_embed (MAE)."""
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        layer = vit_layer_id(name, depth, prefix)
        decay = not (p.ndim == 1 or name.endswith(("cls_token", "pos_embed")))
        g = groups.setdefault(
            (layer, decay),
            {"params": [], "names": [], "weight_decay": weight_decay if decay else 0.0, "lr_scale": layer_decay ** (depth + 1 - layer)},
        )
        g["params"].append(p)
        g["names"].append(name)
    return [groups[k] for k in sorted(groups)]
