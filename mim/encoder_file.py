"""Student encoders on disk: safetensors with timm's key names.

The file's metadata holds the architecture ("vit" -> JSON of ViTConfig fields), so any stage
(fine-tune, probe, detection, segmentation, token diversity) rebuilds the encoder from the file
alone.  Two layouts (mim/vit.py):

* absolute position (MAE, Img2Vec): cls_token, pos_embed, patch_embed.proj.*, blocks.N.*, norm.*,
  timm `VisionTransformer`'s keys: `timm.create_model("vit_base_patch16_224", num_classes=0)`
  loads them strictly;
* relative position bias (BEiT): always written per layer (`"rel_pos_bias": "per_layer"`), a
  table shared in pretraining copied into every block as unilm/beit run_class_finetuning.py does
  before fine-tuning: cls_token, patch_embed.proj.*, blocks.N.{norm1, attn.qkv.weight,
  attn.q_bias, attn.v_bias, attn.relative_position_bias_table, attn.proj.*, norm2, mlp.*,
  gamma_1, gamma_2}, norm.*, timm `Beit`'s keys:
  `timm.create_model("beit_base_patch16_224", num_classes=0, use_fc_norm=False)` loads them
  strictly (use_fc_norm=False keeps timm's final `norm`, which the encoder has; timm's default
  mean pooling swaps it for an `fc_norm` after pooling, as the fine-tune head here does).

`EncoderFile.read(path)` reads a file once into one object (config, weights, metadata, sha256);
reading the same unchanged file again in the same process returns that object.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from mim.checkpoint import SafetensorsFile, load_strict, read_safetensors, save_safetensors
from mim.config import from_dict
from mim.errors import MimError
from mim.vit import ViTConfig, ViTEncoder, per_layer_state

FORMAT = "mimrepro-vit-encoder/1"


@dataclass(frozen=True, eq=False)
class EncoderFile:
    path: Path
    config: ViTConfig
    state: dict[str, torch.Tensor]
    metadata: dict[str, str]
    sha256: str

    @classmethod
    def read(cls, path: Path) -> EncoderFile:
        path = Path(path)
        key = _key(path)
        if key is not None and _last.get("key") == key:
            return _last["file"]
        out = cls.parse(read_safetensors(path, "encoder"))
        _last.update(key=key, file=out)  # one file held: the last one read
        return out

    @classmethod
    def parse(cls, f: SafetensorsFile) -> EncoderFile:
        """An encoder from a safetensors file already read (e.g. one that may hold a teacher)."""
        if "vit" not in f.metadata:
            kind = f" (its format is {f.metadata['format']!r})" if "format" in f.metadata else ""
            raise MimError(f"{f.path} is not a student encoder{kind}: it has no 'vit' architecture metadata "
                           "(encoders are written by pretrain-student)")
        try:
            arch = json.loads(f.metadata["vit"])
        except ValueError as e:
            raise MimError(f"{f.path}: unreadable 'vit' metadata: {e}") from None
        return cls(f.path, from_dict(ViTConfig, arch, where=f"{f.path}: vit metadata"), f.state, f.metadata, f.sha256)

    def build(self, **overrides: object) -> ViTEncoder:
        """A fresh encoder (optionally with e.g. drop_path=0.1) holding these weights, loaded strictly."""
        enc = ViTEncoder(dataclasses.replace(self.config, **overrides))  # type: ignore[arg-type]
        load_strict(enc, self.state, f"{self.path} does not fit its own 'vit' metadata")
        return enc


_last: dict[str, object] = {}


def _key(path: Path) -> tuple[str, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (str(path.resolve()), st.st_mtime_ns, st.st_size)


def save_encoder(path: Path, encoder: ViTEncoder, extra: dict[str, str] | None = None) -> None:
    """Write `encoder`; a shared relative position bias is written per layer (the same function)."""
    cfg, state = per_layer_state(encoder.cfg, encoder.state_dict())
    meta = {"format": FORMAT, "vit": json.dumps(dataclasses.asdict(cfg)), **(extra or {})}
    save_safetensors(Path(path), state, meta)  # detaches and copies to CPU itself
