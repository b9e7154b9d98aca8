"""Image transforms shared by several stages: MAE's pretraining crop and the evaluation view.

Method-specific augmentations stay with their method (DINO's multi-crop in mim/teacher/dino.py,
BEiT's paired views in mim/methods/beit.py, timm's fine-tuning recipe in mim/eval/finetune.py).
"""
from __future__ import annotations

from torchvision import transforms as T


def pretrain_transform(img_size: int, crop_scale: tuple[float, float]) -> T.Compose:
    """MAE pretraining augmentation: RandomResizedCrop(scale) + horizontal flip, nothing else
    (MAE main_pretrain.py; Img2Vec uses the same)."""
    return T.Compose(
        [
            T.RandomResizedCrop(img_size, scale=crop_scale, interpolation=T.InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip(),
            T.PILToTensor(),  # uint8: normalised on the device (mim/data/device.py)
        ]
    )


def eval_transform(img_size: int) -> T.Compose:
    """Resize to img_size / 0.875 and centre-crop (MAE / DINO evaluation view)."""
    return T.Compose(
        [
            T.Resize(int(img_size / 0.875), interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(img_size),
            T.PILToTensor(),  # uint8: normalised on the device (mim/data/device.py)
        ]
    )
