"""Import the official DINO ResNet-50 weights (a local file; nothing is downloaded).

Two layouts of facebookresearch/dino are accepted:

* `dino_resnet50_pretrain.pth`: a plain torchvision ResNet-50 state_dict (`conv1.weight`,
  `layer1.0.bn1.running_mean`, ..., no `fc`), the released teacher backbone;
* the full training checkpoint: `{"teacher": ..., "student": ..., ...}` whose keys carry
  `module.` (DDP) and `backbone.` / `head.` prefixes; the teacher (or student) backbone is taken.

torchvision and timm name ResNet-50 parameters identically, so conversion strips prefixes,
drops the DINO head and any classifier, and loads strictly into timm `resnet50`.

`import_teacher` is the backend of both `mimrepro import-teacher` (ad hoc) and the
pretrain-teacher stage with `dino.source: import` (the params switch `dvc repro` follows).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from mim.checkpoint import load_error, load_strict
from mim.errors import MimError
from mim.files import file_sha256
from mim.teacher.frozen import save_timm_backbone, timm_backbone

DROP_PREFIXES = ("head.", "fc.")


def read_official(path: Path) -> dict[str, object]:
    """torch.load with weights_only; the full checkpoint also pickles an argparse.Namespace."""
    path = Path(path)
    if not path.is_file():
        raise MimError(f"DINO checkpoint not found: {path} (download dino_resnet50_pretrain.pth from the DINO README yourself)")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, not a torch file, other pickled objects
        raise MimError(f"cannot read DINO checkpoint {path}: {load_error(e, path)}") from None
    if not isinstance(obj, dict):
        raise MimError(f"{path}: expected a state_dict or a DINO checkpoint dict, got {type(obj).__name__}")
    return obj


def convert_state_dict(obj: dict[str, object], which: str = "teacher") -> dict[str, torch.Tensor]:
    """Official DINO ResNet-50 (plain or full checkpoint) -> timm resnet50 backbone keys."""
    if which not in ("teacher", "student"):
        raise MimError(f"which must be 'teacher' or 'student', got {which!r}")
    if which in obj and isinstance(obj[which], dict):
        obj = obj[which]  # full checkpoint
    elif "teacher" in obj or "student" in obj:
        raise MimError(f"checkpoint has no {which!r} entry (entries: {', '.join(sorted(map(str, obj)))})")
    state = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise MimError(f"entry {key!r} is not a tensor; is this a DINO ResNet-50 checkpoint?")
        k = key.removeprefix("module.")
        if k.startswith(DROP_PREFIXES):
            continue
        state[k.removeprefix("backbone.")] = value
    return state


def load_official_resnet50(path: Path, which: str = "teacher") -> torch.nn.Module:
    """timm resnet50 backbone holding the official weights; strict, with a clear mismatch error."""
    state = convert_state_dict(read_official(path), which)
    model = timm_backbone("resnet50")
    load_strict(model, state, f"{path} does not match timm resnet50")
    return model


def import_teacher(src: Path, out: Path, which: str = "teacher", name: str = "dino_rn50") -> dict[str, str | float]:
    """Write the official DINO ResNet-50 weights as our teacher backbone file; returns what was
    measured of them (the source file's sha256, the backbone's parameters in millions)."""
    model = load_official_resnet50(src, which)
    sha = file_sha256(Path(src))
    save_timm_backbone(out, model, "resnet50", extra={"name": name, "source": f"official DINO ({which}): {Path(src).name}",
                                                      "source_sha256": sha})
    return {"checkpoint_sha256": sha, "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2)}
