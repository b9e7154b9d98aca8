"""The frozen tokenizer BEiT students read: images -> discrete token ids on the student's patch grid.

One interface for both kinds (`Tokenizer.tokens(imgs) -> (N, h, w) int64`, imgs in [0, 1]):
`vqvae`, trained here (mim/tokenizer/vqvae.py), and `dalle`, BEiT's DALL-E dVAE encoder converted
once from its official pickle (mim/tokenizer/official_dalle.py).  `save_tokenizer` writes a plain
safetensors state_dict with the architecture in its metadata; `load_tokenizer` never unpickles.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mim.checkpoint import load_strict, read_safetensors, save_safetensors
from mim.config import from_dict
from mim.errors import MimError

TOKENIZER_FORMAT = "mimrepro-tokenizer/1"
KINDS = ("vqvae", "dalle")


class Tokenizer(nn.Module):
    """Frozen, eval-mode tokenizer.  `tokens(imgs)`: (N, 3, S, S) in [0, 1] -> (N, S/d, S/d) ids."""

    def __init__(
        self, kind: str, net: nn.Module, *, image_size: int, downsample: int, vocab_size: int, config: dict[str, Any], freeze: bool = True
    ) -> None:
        super().__init__()
        if kind not in KINDS:
            raise MimError(f"unknown tokenizer kind {kind!r}; choose from {', '.join(KINDS)}")
        self.kind, self.net = kind, net
        self.image_size, self.downsample, self.vocab_size = image_size, downsample, vocab_size
        self.grid = image_size // downsample
        self.config = config  # architecture as plain data (saved in the file's metadata)
        if freeze:  # False only while the tokenizer itself trains (the stage evaluates through this view)
            self.requires_grad_(False)
            super().train(False)

    def train(self, mode: bool = True) -> Tokenizer:
        return self  # stays in eval mode

    @torch.no_grad()
    def tokens(self, imgs: torch.Tensor) -> torch.Tensor:
        if imgs.ndim != 4 or imgs.shape[1] != 3 or imgs.shape[-2:] != (self.image_size, self.image_size):
            raise MimError(f"tokenizer expects (N, 3, {self.image_size}, {self.image_size}) images, got {tuple(imgs.shape)}")
        with torch.autocast(imgs.device.type, enabled=False):  # ids must not depend on AMP
            x = imgs.float()
            if self.kind == "dalle":
                from dall_e import map_pixels

                return self.net(map_pixels(x)).argmax(1)  # (N, V, h, w) -> (N, h, w)
            return self.net.encode_ids(x)


def vqvae_tokenizer(model: nn.Module, freeze: bool = True) -> Tokenizer:
    """The Tokenizer view of a VQ-VAE (mim/tokenizer/vqvae.py); freeze=False while it trains."""
    c = model.cfg
    return Tokenizer(
        "vqvae", model, image_size=c.image_size, downsample=c.downsample, vocab_size=c.vocab_size, config=dataclasses.asdict(c),
        freeze=freeze,
    )



def save_tokenizer(path: Path, tok: Tokenizer) -> None:
    meta = {"format": TOKENIZER_FORMAT, "kind": tok.kind, "config": json.dumps(tok.config)}
    save_safetensors(Path(path), tok.net.state_dict(), meta)



def load_tokenizer(path: Path) -> Tokenizer:
    """A tokenizer written by `save_tokenizer` (either kind), frozen."""
    f = read_safetensors(Path(path), "tokenizer")
    meta = f.metadata
    if meta.get("format") != TOKENIZER_FORMAT:
        raise MimError(f"{path} is not a mimrepro tokenizer (format {meta.get('format')!r}); run `mimrepro tokenizer`")
    cfg = json.loads(meta["config"])
    if meta["kind"] == "vqvae":
        from mim.tokenizer.vqvae import VQVAE, ModelConfig  # noqa: PLC0415  (vqvae.py builds on this module)

        model = VQVAE(from_dict(ModelConfig, cfg, where=f"{path}: config"))
        load_strict(model, f.state, f"{path} does not fit its own tokenizer config")
        return vqvae_tokenizer(model)
    if meta["kind"] == "dalle":
        from mim.tokenizer.official_dalle import dalle_net, dalle_tokenizer  # noqa: PLC0415

        enc, arch = dalle_net(f.state, f.path)
        return dalle_tokenizer(enc, arch, image_size=int(cfg["image_size"]))
    raise MimError(f"{path}: unknown tokenizer kind {meta['kind']!r}; choose from {', '.join(KINDS)}")
