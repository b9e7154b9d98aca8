"""`official`: a student whose encoder is an official pretrained checkpoint, imported, not trained.

Its `--input` is a local checkpoint; the encoder keeps the checkpoint's own architecture,
whatever the `encoder` params section says.  One line under `students` in dvc.yaml, e.g.
`mae_official: {method: official, input: /models/mae_pretrain_vit_base.pth, finetune: finetune}`, runs
fine-tune, probe, detection and segmentation on the published weights, so their numbers can be
compared with the papers' before a pretraining run is paid for (README, "Check the downstream
stages with official weights").  DVC depends on the checkpoint file: replacing it reruns them.
`mimrepro import-student` does the same conversion outside the pipeline.  The conversion lives
in this one file so that the pretrain stage's code dependency on `mim/methods/${item.method}.py`
covers it, and editing it reruns the imported students only.

Layouts accepted, all read with `torch.load(weights_only=True)`:

* **mae**: facebookresearch/mae `mae_pretrain_vit_base.pth` (`{"model": <encoder state_dict>}`,
  timm `VisionTransformer` key names, fixed sin-cos `pos_embed`; models_vit.py), or a full MAE
  pretraining checkpoint (`model` also holds `mask_token` and `decoder_*`, dropped here);
* **dino**: facebookresearch/dino `dino_vit{small,base}{16,8}_pretrain.pth` (a bare state_dict,
  the key names of its vision_transformer.py = timm's, learned `pos_embed`), or a full DINO
  checkpoint (`{"teacher": ..., "student": ...}` with `module.` / `backbone.` prefixes; the
  teacher is taken, the DINO head dropped);
* **beit**: microsoft/unilm beit checkpoints: `beit_base_patch16_224_pt22k.pth`-style
  pretraining files (`{"model": ...}`, one relative position table shared by the blocks,
  LayerScale `gamma_1/2`, q/v biases, `mask_token` and `lm_head` dropped) and per-layer-table
  files (fine-tuning layout); an encoder with a shared table is written per layer (timm Beit's
  keys, mim/encoder_file.py).  A BEiT checkpoint's table also gives the number of heads.

The architecture is read from the tensors' shapes (width, depth, patch size, grid, MLP ratio);
the number of heads is not in the weights, so it follows the ViT sizes (width 192/384/768/1024/
1280 -> 3/6/12/16/16 heads, ViT and DeiT papers; MAE's ViT-H/14 has 16) unless given.
"""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mim.checkpoint import load_error, load_strict
from mim.engine import Task
from mim.errors import MimError
from mim.files import file_sha256
from mim.methods import Inputs
from mim.vit import SHARED_TABLE, ViTConfig, ViTEncoder

Config = None  # no params section
INPUT = "the official checkpoint (MAE, DINO or BEiT layout)"
LAYOUTS = ("mae", "dino", "beit")
HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}
_DROP = ("decoder_", "mask_token", "head.", "fc_norm.", "lm_head.")  # pretraining-only or classifier tensors


@dataclass(frozen=True)
class Official:
    """An official checkpoint converted: the layout found, the encoder config and its weights."""

    layout: str
    config: ViTConfig
    state: dict[str, torch.Tensor]

    def build(self) -> ViTEncoder:
        enc = ViTEncoder(self.config)
        load_strict(enc, self.state, f"the {self.layout} checkpoint does not fit a ViT of its own shapes")
        return enc


def read(path: Path) -> dict[str, object]:
    path = Path(path)
    if not path.is_file():
        raise MimError(f"official checkpoint not found: {path}")
    try:  # MAE's and DINO's full checkpoints also pickle their argparse.Namespace of arguments
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise MimError(f"cannot read official checkpoint {path}: {load_error(e, path)}") from None
    if not isinstance(obj, dict):
        raise MimError(f"{path}: expected a state_dict or a checkpoint dict, got {type(obj).__name__}")
    return obj


def detect(obj: dict[str, object]) -> tuple[str, dict[str, torch.Tensor]]:
    """(layout, the encoder's tensors with their original names) of a loaded checkpoint."""
    if isinstance(obj.get("teacher"), dict):  # full DINO checkpoint
        return "dino", _tensors({k.removeprefix("module.").removeprefix("backbone."): v for k, v in obj["teacher"].items()  # type: ignore[union-attr]
                                 if not k.removeprefix("module.").startswith("head.")})
    for wrapper in ("model", "module", "state_dict"):
        if isinstance(obj.get(wrapper), dict):
            state = _tensors(obj[wrapper])  # type: ignore[arg-type]
            break
    else:
        state = _tensors(obj)
    if any(k.endswith(("attn.q_bias", "relative_position_bias_table")) or ".gamma_1" in k for k in state):
        return "beit", state
    if "blocks.0.attn.qkv.weight" not in state or "patch_embed.proj.weight" not in state:
        raise MimError("not a ViT checkpoint in the MAE, DINO or BEiT layout (no patch_embed.proj.weight / "
                       "blocks.0.attn.qkv.weight)")
    return ("mae" if obj.get("model") is not None or "decoder_embed.weight" in state else "dino"), state


def _tensors(d: dict[str, object]) -> dict[str, torch.Tensor]:
    bad = [k for k, v in d.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise MimError(f"entry {bad[0]!r} is not a tensor; is this a model checkpoint?")
    return d  # type: ignore[return-value]


def vit_config(state: dict[str, torch.Tensor], num_heads: int | None = None) -> ViTConfig:
    """The ViT architecture of a state_dict in timm's ViT or BEiT key names, from its shapes."""
    dim, in_chans, patch, _ = state["patch_embed.proj.weight"].shape
    table = state.get(SHARED_TABLE, state.get("blocks.0.attn.relative_position_bias_table"))
    if "pos_embed" in state:
        tokens = state["pos_embed"].shape[1] - 1
        what = f"pos_embed of {tokens} patch positions"
    elif table is not None:  # ((2g-1)^2 + 3, heads): the 3 cls rows of BEiT's table
        side = round((table.shape[0] - 3) ** 0.5)
        tokens = ((side + 1) // 2) ** 2 if side * side == table.shape[0] - 3 and side % 2 else -1
        what = f"a relative position table of {table.shape[0]} rows"
    else:
        raise MimError("the checkpoint has neither a pos_embed nor a relative position table")
    grid = round(max(tokens, 0) ** 0.5)
    if tokens <= 0 or grid * grid != tokens:
        raise MimError(f"{what} is not a square grid")
    depth = 1 + max((int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)
    heads = num_heads or (int(table.shape[1]) if table is not None else HEADS.get(dim))
    if heads is None:
        raise MimError(f"width {dim} is not a standard ViT size; give the number of heads (--num-heads)")
    mlp_ratio = state["blocks.0.mlp.fc1.weight"].shape[0] / dim if depth else 4.0
    rel = "shared" if SHARED_TABLE in state else "per_layer" if "blocks.0.attn.relative_position_bias_table" in state else "none"
    # layer_scale is only an init value: any number builds the gammas the file then fills
    scale = 0.1 if "blocks.0.gamma_1" in state or "blocks.0.ls1.gamma" in state else None
    return ViTConfig(img_size=grid * patch, patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads,
                     mlp_ratio=mlp_ratio, in_chans=in_chans, layer_scale=scale, abs_pos="pos_embed" in state,
                     rel_pos_bias=rel)


def beit_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A unilm/beit checkpoint (modeling_pretrain.py / modeling_finetune.py names, timm Beit's too)
    as our encoder's keys: the index buffers are rebuilt, not loaded; without a relative position
    bias the blocks are plain ViT blocks, so q/v biases become one qkv bias with BEiT's zero k bias
    and gamma_1/gamma_2 become LayerScale's ls1/ls2.gamma."""
    out = {k: v for k, v in state.items() if not k.endswith("relative_position_index")}
    if SHARED_TABLE in out or "blocks.0.attn.relative_position_bias_table" in out:
        return out  # timm Beit blocks: the names are already ours
    for k in [k for k in out if k.endswith("attn.q_bias")]:
        q, v = out.pop(k), out.pop(k.replace("q_bias", "v_bias"))
        out[k.replace("q_bias", "qkv.bias")] = torch.cat([q, torch.zeros_like(q), v])
    for k in [k for k in out if re.search(r"\.gamma_[12]$", k)]:
        out[re.sub(r"gamma_([12])$", r"ls\1.gamma", k)] = out.pop(k)
    return out


def convert(path: Path, layout: str = "auto", num_heads: int | None = None) -> Official:
    """Read an official checkpoint of `layout` ("auto": detected) into our encoder's config and keys."""
    if layout not in ("auto", *LAYOUTS):
        raise MimError(f"unknown layout {layout!r}; choose auto, {', '.join(LAYOUTS)}")
    obj = read(path)
    try:
        found, state = detect(obj)
        if layout != "auto" and layout != found:
            raise MimError(f"it is in the {found} layout, not {layout}")
        state = {k: v for k, v in state.items() if not k.startswith(_DROP)}
        if found == "beit":
            state = beit_state(state)
        return Official(found, vit_config(state, num_heads), state)
    except MimError as e:
        raise MimError(f"{path}: {e}") from None


class Imported(nn.Module):
    """Only the student encoder, holding the official weights."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder


def task(cfg: None, inputs: Inputs) -> Task:
    if inputs.input is None:
        raise MimError(f"official needs {INPUT} (--input)")
    path = Path(inputs.input)
    official = convert(path)
    t = Task(Imported(official.build()), optim=None)
    # Official files do not record their pretraining length; the papers' are in their READMEs.
    t.info = {"official_layout": official.layout, "checkpoint": path.name, "checkpoint_sha256": file_sha256(path),
              "pretrain_epochs": "official"}
    return t
