"""Images leave the loader workers as uint8 and are normalised on the device.

timm's fast path (timm/data/loader.py `PrefetchLoader`, `create_transform(use_prefetcher=True)`):
a worker ships an image as the uint8 tensor torchvision's `PILToTensor` makes, a quarter of the
bytes of float32 through the worker queue, the pinned copy and the host-to-device transfer, and
the float maths runs on the accelerator instead of in the workers.

The contract: in a batch from a loader, a uint8 tensor (..., 3, H, W) is an image in [0, 255].
`to_device` moves a batch (tensors, lists, tuples, dicts) to the device and turns each such tensor
into float32 `(x / 255 - mean) / std` with the ImageNet statistics, in the order torchvision's
`ToTensor` + `Normalize` compute them, so the result is bit-identical to the float path's on the
same device (tests/test_device_inputs.py).  Every other tensor moves as it is: labels, masks, and
views with their own scaling (BEiT's tokenizer view stays float in [0, 1]).
"""
from __future__ import annotations

from typing import Any

import torch

from mim.data.images import IMAGENET_MEAN, IMAGENET_STD

_STATS: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def is_image(x: torch.Tensor) -> bool:
    """A worker's image batch or image: uint8 with 3 channels before the last two dims."""
    return x.dtype == torch.uint8 and x.dim() >= 3 and x.shape[-3] == 3


def normalize(x: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3, H, W) in [0, 255] -> float32 (x / 255 - mean) / std, where `x` is (no copy back to the host)."""
    if x.device not in _STATS:
        _STATS[x.device] = tuple(torch.tensor(v, dtype=torch.float32, device=x.device).view(-1, 1, 1)
                                 for v in (IMAGENET_MEAN, IMAGENET_STD))  # type: ignore[assignment]
    mean, std = _STATS[x.device]
    return x.to(torch.float32).div(255).sub_(mean).div_(std)  # torchvision: ToTensor's div(255), Normalize's sub_, div_


def to_device(batch: Any, dev: torch.device) -> Any:
    """`batch` on `dev`, every uint8 image in it normalised there (the module docstring's contract)."""
    if isinstance(batch, torch.Tensor):
        x = batch.to(dev, non_blocking=True)
        return normalize(x) if is_image(x) else x
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, dev) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, dev) for k, v in batch.items()}
    return batch
