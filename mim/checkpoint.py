"""Model files on disk: resume checkpoints that load with `torch.load(weights_only=True)` and
deterministic safetensors files read in one pass (written atomically, mim/files.py)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from mim.errors import MimError
from mim.files import atomic_write, safetensors_header


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """state: tensors, numbers, strings, lists and dicts only (loads with weights_only=True)."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path, hint: str = "") -> dict[str, Any]:
    """A checkpoint written by `save_checkpoint` (or any plain-tensor torch file); MimError otherwise,
    with `hint` (what the user can do) appended."""
    path = Path(path)
    if not path.is_file():
        raise MimError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, wrong format, pickled objects
        raise MimError(f"cannot load checkpoint {path}: {load_error(e, path)}{'; ' + hint if hint else ''}") from None
    if not isinstance(state, dict):
        raise MimError(f"cannot load checkpoint {path}: it holds a {type(state).__name__}, not a dict{'; ' + hint if hint else ''}")
    return state


def key_mismatch(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, reshaped) keys of `state` against a model's `expected` state_dict."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    return missing, unexpected, wrong


def load_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Load `state` into `model` exactly; else one MimError, `what` first, naming the missing,
    unexpected and reshaped keys (torch's own message is a line per key)."""
    expected = model.state_dict()
    missing, unexpected, wrong = key_mismatch(expected, state)
    parts = []
    if missing:
        parts.append(f"{len(missing)} key{'s' if len(missing) > 1 else ''} missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
    if wrong:
        k = wrong[0]
        parts.append(f"{len(wrong)} of another shape (e.g. {k}: {list(state[k].shape)} in the file, {list(expected[k].shape)} "
                     "expected)")
    if parts:
        raise MimError(f"{what}: {'; '.join(parts)}")
    model.load_state_dict(state, strict=True)


def load_error(e: BaseException, path: Path | None = None) -> str:
    """torch.load's exception as one short clause (its own messages run to a dozen lines)."""
    import zipfile

    text = str(e)
    if path is not None and Path(path).is_file():
        with open(path, "rb") as f:
            head = f.read(4)
        if head == b"PK\x03\x04" and not zipfile.is_zipfile(path):  # torch.save's format, its end missing
            return "the file is truncated (its zip directory is missing)"
        if not head:
            return "the file is empty"
    if "Weights only load failed" in text or "weights_only" in text:
        return "it holds Python objects besides tensors and containers, refused (unpickling them could run code)"
    if isinstance(e, EOFError) or "failed finding central directory" in text or "PytorchStreamReader" in text:
        return "the file is truncated or not a torch checkpoint"
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(e).__name__}: {first[:200]}"


# torch dtype -> safetensors dtype tag (the format's spec: huggingface/safetensors README).
_ST_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
}


def safetensors_bytes(state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """A safetensors file as bytes, byte-identical for identical inputs.

    `safetensors.torch.save_file` writes the metadata map in hash order, which changes from
    process to process, so equal weights hashed differently in dvc.lock.  Here tensors are
    laid out by name and the header's JSON keys are sorted.
    """
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    chunks, offset = [], 0
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        if t.dtype not in _ST_DTYPES:
            raise MimError(f"cannot write tensor {name!r} of dtype {t.dtype} to safetensors")
        data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": _ST_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the data section starts 8-byte aligned
    return len(head).to_bytes(8, "little") + head + b"".join(chunks)


@dataclass(frozen=True)
class SafetensorsFile:
    """One safetensors file, read once: its tensors, its metadata and the sha256 of its bytes."""

    path: Path
    state: dict[str, torch.Tensor]
    metadata: dict[str, str]
    sha256: str


def read_safetensors(path: Path, what: str) -> SafetensorsFile:
    """Read `path` in one pass; `what` names the file in errors ("encoder", "teacher weights", ...)."""
    path = Path(path)
    if not path.is_file():
        raise MimError(f"{what} file not found: {path}")
    data = path.read_bytes()
    try:
        header = safetensors_header(data)
        state = safetensors.torch.load(data)
    except Exception as e:  # truncated file, not a safetensors file, corrupt header
        raise MimError(f"cannot read {what} {path}: {e}") from None
    bad = [k for k, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:  # mimrepro never writes such a file (mim/engine.py); a foreign or diverged one is refused here
        raise MimError(f"{what} {path}: {len(bad)} of {len(state)} tensors hold NaN or Inf (e.g. {bad[0]}); "
                       "the run that wrote it diverged")
    meta = header.get("__metadata__") or {}
    return SafetensorsFile(path, state, {str(k): str(v) for k, v in meta.items()}, hashlib.sha256(data).hexdigest())


def save_safetensors(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Atomically write a deterministic safetensors file (loads with safetensors' `load_file`)."""
    data = safetensors_bytes(state, metadata)
    atomic_write(Path(path), lambda tmp: tmp.write_bytes(data))


