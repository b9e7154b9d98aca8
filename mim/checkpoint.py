"""Files on disk: atomic writes (a crash never leaves a half-written output), resume checkpoints
that load with `torch.load(weights_only=True)`, and deterministic safetensors files read in one pass."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from mim.errors import MimError


def atomic_write(path: Path, write: Any) -> None:
    """Call write(tmp_path), then rename tmp_path over `path` (same directory, same filesystem)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_sha256(path: Path) -> str:
    """sha256 of a file, streamed: put in a run's config so new input weights never resume an old run."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def claim_run_dir(folder: Path, key: dict[str, Any], stamp: str = "run.json") -> bool:
    """Keep `folder` (another library's checkpoints) only if it was made by a run with this key.

    Training stages that resume through detectron2 or mmengine cannot tell whether the
    checkpoints in a persisted folder came from the same encoder, data and recipe.  The key
    (plain data) is stamped into the folder; a different stamp empties it.  Returns True when
    the folder was emptied.
    """
    folder = Path(folder)
    path = folder / stamp
    if path.is_file():
        stale = json.loads(path.read_text()) != key
    else:  # checkpoints nobody stamped cannot be trusted either
        stale = folder.is_dir() and any(folder.iterdir())
    if stale:
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not path.is_file():
        path.write_text(json.dumps(key, indent=2, sort_keys=True) + "\n")
    return stale


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """state: tensors, numbers, strings, lists and dicts only (loads with weights_only=True)."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise MimError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, wrong format, pickled objects
        raise MimError(f"cannot load checkpoint {path}: {e}") from None


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
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + n]) if 8 + n <= len(data) else None
        if not isinstance(header, dict):
            raise ValueError("no safetensors header")
        state = safetensors.torch.load(data)
    except Exception as e:  # truncated file, not a safetensors file, corrupt header
        raise MimError(f"cannot read {what} {path}: {e}") from None
    meta = header.get("__metadata__") or {}
    return SafetensorsFile(path, state, {str(k): str(v) for k, v in meta.items()}, hashlib.sha256(data).hexdigest())


def save_safetensors(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Atomically write a deterministic safetensors file (loads with safetensors' `load_file`)."""
    data = safetensors_bytes(state, metadata)
    atomic_write(Path(path), lambda tmp: tmp.write_bytes(data))


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n"))
