"""Student encoders on disk: safetensors with timm `VisionTransformer` key names.

The file's metadata holds the architecture ("vit" -> JSON of ViTConfig fields), so any
stage (fine-tune, detection, segmentation, token diversity) rebuilds the encoder from the
file alone.  Keys: cls_token, pos_embed, patch_embed.proj.*, blocks.N.*, norm.* — exactly
timm's, so `timm.create_model("vit_base_patch16_224", num_classes=0)` loads them strictly.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from mim.checkpoint import save_safetensors
from mim.config import from_dict
from mim.errors import MimError
from mim.vit import ViTConfig, ViTEncoder

def save_encoder(path: Path, encoder: ViTEncoder, extra: dict[str, str] | None = None) -> None:
    meta = {"format": "mimrepro-vit-encoder/1", "vit": json.dumps(dataclasses.asdict(encoder.cfg)), **(extra or {})}
    save_safetensors(Path(path), encoder.state_dict(), meta)  # detaches and copies to CPU itself

def read_encoder(path: Path) -> tuple[ViTConfig, dict[str, torch.Tensor], dict[str, str]]:
    """(config, state_dict, metadata) of an encoder file, with clear errors for bad files."""
    path = Path(path)
    if not path.is_file():
        raise MimError(f"encoder file not found: {path}")
    try:

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise MimError(f"cannot read encoder {path}: {e}") from None
    if "vit" not in meta:
        raise MimError(f"{path} has no 'vit' architecture metadata; was it written by mimrepro?")
    cfg = from_dict(ViTConfig, json.loads(meta["vit"]), where=f"{path}: vit metadata")
    return cfg, state, meta


def load_encoder(path: Path, **overrides: object) -> ViTEncoder:
    """Rebuild the encoder (optionally with e.g. drop_path=0.1) and load its weights strictly."""
    cfg, state, _ = read_encoder(path)
    enc = ViTEncoder(dataclasses.replace(cfg, **overrides))  # type: ignore[arg-type]
    enc.load_state_dict(state, strict=True)
    return enc
