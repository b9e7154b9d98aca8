"""BEiT's tokenizer: the DALL-E dVAE encoder (papers.md BEiT) from the `dall-e` package
(`dall_e.Encoder`), 8192 words, one token per 8x8 pixels of the 112 px view.

Its official `encoder.pkl` is a pickled module: `convert_dalle` unpickles it once (after a
warning) and writes a plain safetensors state_dict; everything else loads only that file.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from mim.checkpoint import load_error, load_strict, read_safetensors, save_safetensors
from mim.errors import MimError
from mim.tokenizer.frozen import Tokenizer

DALLE_FORMAT = "mimrepro-dalle-encoder/1"


def dalle_encoder(n_hid: int = 256, n_blk_per_group: int = 2, vocab_size: int = 8192, group_count: int = 4) -> nn.Module:
    """`dall_e.Encoder` (the official class, package dall-e 0.1), randomly initialised."""
    try:
        from dall_e import Encoder
    except ImportError:
        raise MimError("the dalle tokenizer needs the `dall-e` package: pip install --no-deps dall-e==0.1") from None
    if group_count != 4:
        raise MimError(f"dall_e.Encoder has 4 groups; this file has {group_count}")
    return Encoder(n_hid=n_hid, n_blk_per_group=n_blk_per_group, vocab_size=vocab_size)


def _dalle_arch(state: dict[str, torch.Tensor]) -> dict[str, int]:
    try:
        return {
            "n_hid": int(state["blocks.input.w"].shape[0]),
            "vocab_size": int(state["blocks.output.conv.w"].shape[0]),
            "n_blk_per_group": len({k.split(".")[2] for k in state if k.startswith("blocks.group_1.block_")}),
            "group_count": len({k.split(".")[1] for k in state if k.startswith("blocks.group_")}),
        }
    except KeyError as e:
        raise MimError(f"not a DALL-E dVAE encoder state_dict (missing {e})") from None


def convert_dalle(pkl: Path, out: Path, allow_pickle: bool = False) -> dict[str, int]:
    """The DALL-E encoder's weights in `pkl` as plain safetensors `out`, once.

    A plain state_dict loads with `weights_only=True`. The official encoder.pkl is a pickled
    module, which only a full unpickle reads, and unpickling runs code stored in the file: that
    needs `allow_pickle` (`mimrepro convert-dalle PKL OUT --allow-pickle`), and is the one place
    mimrepro ever unpickles.
    """
    pkl = Path(pkl)
    if not pkl.is_file():
        raise MimError(f"DALL-E encoder file not found: {pkl}")
    try:
        obj = torch.load(pkl, map_location="cpu", weights_only=True)
    except Exception as e:
        reason = load_error(e, pkl)
        if "Python objects" not in reason:  # truncated, or not a torch/pickle file at all: no flag helps
            raise MimError(f"cannot read DALL-E encoder {pkl}: {reason}") from None
        if not allow_pickle:
            raise MimError(f"{pkl} is not a plain state_dict ({reason}); if it is the official DALL-E "
                           f"encoder.pkl, convert it once with `mimrepro convert-dalle {pkl} {out} --allow-pickle` "
                           "(unpickling runs code stored in the file: only for a file you trust)") from None
        obj = _unpickle(pkl)
    state = obj.state_dict() if isinstance(obj, nn.Module) else obj
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MimError(f"{pkl} holds a {type(obj).__name__}, not the DALL-E encoder module or its state_dict")
    state = {k: v.detach().float().cpu().contiguous() for k, v in state.items()}
    _, arch = dalle_net(state, pkl)  # the layout must be the official one
    meta = {"format": DALLE_FORMAT, **{k: str(v) for k, v in arch.items()}}
    save_safetensors(Path(out), state, meta)
    return arch



def _unpickle(pkl: Path) -> object:
    print(f"WARNING: unpickling {pkl} runs code stored in it (--allow-pickle); afterwards mimrepro loads only "
          "the safetensors output.", file=sys.stderr, flush=True)
    try:  # the pickle references dall_e classes: fail early with the install hint
        import dall_e  # noqa: F401
    except ImportError:
        raise MimError("unpickling encoder.pkl needs the `dall-e` package: pip install --no-deps dall-e==0.1") from None
    try:
        return torch.load(pkl, map_location="cpu", weights_only=False)
    except Exception as e:
        raise MimError(f"cannot unpickle {pkl}: {e}") from None


def dalle_net(state: dict[str, torch.Tensor], path: Path) -> tuple[nn.Module, dict[str, int]]:
    """The DALL-E encoder holding `state` (a state_dict read from `path`), loaded strictly."""
    arch = _dalle_arch(state)
    enc = dalle_encoder(**arch)
    load_strict(enc, state, f"{path} does not fit the DALL-E encoder")
    return enc, arch


def load_dalle(path: Path) -> tuple[nn.Module, dict[str, int]]:
    """The DALL-E encoder from a file written by `convert_dalle` (no unpickling)."""
    f = read_safetensors(Path(path), "DALL-E encoder")
    return dalle_net(f.state, f.path)


def dalle_tokenizer(enc: nn.Module, arch: dict[str, int], image_size: int = 112) -> Tokenizer:
    down = 2 ** (arch["group_count"] - 1)  # a max-pool after each group but the last
    if image_size % down:
        raise MimError(f"tokenizer.image_size={image_size} is not divisible by the DALL-E encoder's stride {down}")
    return Tokenizer("dalle", enc, image_size=image_size, downsample=down, vocab_size=arch["vocab_size"],
                     config={**arch, "image_size": image_size})


