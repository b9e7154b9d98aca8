"""A check the PNG tests share: the file is a whole PNG, of a size that holds a figure, and not blank."""
from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageStat


def not_blank(path: Path, min_size: tuple[int, int] = (300, 200)) -> Image.Image:
    img = Image.open(path)
    img.verify()  # a whole, valid PNG
    img = Image.open(path).convert("RGB")
    assert img.size[0] >= min_size[0] and img.size[1] >= min_size[1], img.size
    assert max(ImageStat.Stat(img).stddev) > 10  # not one flat colour
    assert len(img.getcolors(maxcolors=1 << 20) or []) > 20  # bars, text and axes in several colours
    return img
