"""Deterministic synthetic stand-ins for ImageNet, COCO and ADE20K, written in the real formats.

The classes are shapes (disc, square, triangle, star, ...).  Colour, texture, scale, tilt and
background are drawn independently of the class, so only the outline tells classes apart.
Objects stand roughly upright (tilt within +-`max_rotation` degrees), as things do in photos;
with full rotation a ViT needs far more than CPU minutes to learn the classes.
Backgrounds are crops of scikit-image's bundled sample photos (public domain / CC0) blended with
procedural noise and gradients.  Every image draws from its own RNG seeded by
(seed, dataset, split, index) and files are encoded with fixed settings, so the same seed gives
byte-identical files.

Polygons are kept in COCO's continuous pixel coordinates (pixel i covers [i, i + 1)) and drawn
exactly from those vertices, so a COCO polygon's `annToMask` matches the drawn object.
"""
from __future__ import annotations

import colorsys
import importlib.util
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

JPEG_QUALITY = 90
SUPERSAMPLE = 4  # polygons are drawn at 4x and box-filtered: antialiased edges
# Sample photos bundled in the scikit-image wheel (public domain or CC0, see skimage/data).
PHOTOS = (
    "astronaut.png", "brick.png", "camera.png", "chelsea.png", "coffee.png", "coins.png",
    "grass.png", "gravel.png", "hubble_deep_field.jpg", "moon.png", "rocket.jpg", "text.png",
)
IMAGENET, COCO, ADE20K = 0, 1, 2  # dataset ids in the RNG seed
TRAIN, VAL = 0, 1


# ---------------------------------------------------------------- shapes (unit polygons)
def _arc(r: float, a0: float, a1: float, n: int, cx: float = 0.0, cy: float = 0.0) -> np.ndarray:
    t = np.linspace(a0, a1, n)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)


def _ellipse(ry: float) -> np.ndarray:
    return _arc(1.0, 0, 2 * math.pi, 48, 0, 0)[:-1] * [1.0, ry]


def _regular(n: int, phase: float = 0.0) -> np.ndarray:
    return _arc(1.0, phase, phase + 2 * math.pi, n + 1)[:-1]


def _star(points: int, inner: float) -> np.ndarray:
    t = np.arange(2 * points) * math.pi / points - math.pi / 2
    r = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


def _horseshoe() -> np.ndarray:  # a ring with a gap: a simple polygon (COCO polygons have no holes)
    gap = math.radians(35)
    return np.concatenate([_arc(1.0, gap, 2 * math.pi - gap, 32), _arc(0.55, 2 * math.pi - gap, gap, 24)])


def _crescent() -> np.ndarray:  # unit disc minus a disc of radius r centred at (c, 0)
    c, r = 0.5, 0.85
    x = (1 + c * c - r * r) / (2 * c)
    y = math.sqrt(1 - x * x)
    outer = math.atan2(y, x)
    inner = math.atan2(y, x - c)
    return np.concatenate([_arc(1.0, outer, 2 * math.pi - outer, 32), _arc(r, 2 * math.pi - inner, inner, 24, c)])


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return np.stack([x, y], 1)


def _poly(*xy: float) -> np.ndarray:
    return np.array(xy, dtype=np.float64).reshape(-1, 2)


SHAPES: dict[str, Callable[[], np.ndarray]] = {
    "disc": lambda: _ellipse(1.0),
    "square": lambda: _regular(4, math.pi / 4),
    "triangle": lambda: _regular(3, -math.pi / 2),
    "star": lambda: _star(5, 0.42),
    "horseshoe": _horseshoe,
    "cross": lambda: _poly(-.3, -1, .3, -1, .3, -.3, 1, -.3, 1, .3, .3, .3, .3, 1, -.3, 1, -.3, .3, -1, .3, -1, -.3, -.3, -.3),
    "hexagon": lambda: _regular(6),
    "ellipse": lambda: _ellipse(0.5),
    "heart": _heart,
    "arrow": lambda: _poly(-1, -.25, .2, -.25, .2, -.65, 1, 0, .2, .65, .2, .25, -1, .25),
    "crescent": _crescent,
    "l-shape": lambda: _poly(-.6, -1, -.1, -1, -.1, .5, .6, .5, .6, 1, -.6, 1),
    "rhombus": lambda: _poly(0, -1, .55, 0, 0, 1, -.55, 0),
    "semicircle": lambda: _arc(1.0, 0, math.pi, 33),
    "t-shape": lambda: _poly(-1, -1, 1, -1, 1, -.55, .25, -.55, .25, 1, -.25, 1, -.25, -.55, -1, -.55),
    "trapezoid": lambda: _poly(-1, .6, 1, .6, .45, -.6, -.45, -.6),
    "pentagon": lambda: _regular(5, -math.pi / 2),
    "gear": lambda: _star(8, 0.7),
    "hourglass": lambda: _poly(-.8, -1, .8, -1, .15, 0, .8, 1, -.8, 1, -.15, 0),
    "bar": lambda: _poly(-1, -.22, 1, -.22, 1, .22, -1, .22),
}
SHAPE_NAMES = tuple(SHAPES)


@cache
def unit_shape(name: str) -> np.ndarray:
    """Polygon (N, 2) centred on its bounding box, max vertex radius 1."""
    if name not in SHAPES:
        raise ValueError(f"unknown shape {name!r}; valid: {', '.join(SHAPES)}")
    p = SHAPES[name]()
    p = p - (p.min(0) + p.max(0)) / 2
    return p / np.linalg.norm(p, axis=1).max()


def place(name: str, cx: float, cy: float, radius: float, angle: float, stretch: tuple[float, float]) -> np.ndarray:
    """The unit shape stretched, rotated by `angle` and scaled to `radius` px around (cx, cy)."""
    p = unit_shape(name) * stretch  # (N, 2)
    c, s = math.cos(angle), math.sin(angle)
    p = p @ np.array([[c, s], [-s, c]])
    return p * radius + [cx, cy]


# ---------------------------------------------------------------- rendering
@dataclass(frozen=True)
class Drawn:
    """One object as drawn: class index, polygon (COCO pixel coords) and coverage in [0, 1]."""

    label: int
    polygon: np.ndarray  # (N, 2)
    alpha: np.ndarray  # (H, W) float32, antialiased coverage; mask = alpha >= 0.5


def polygon_alpha(polygon: np.ndarray, size: int) -> np.ndarray:
    """Antialiased coverage (H, W) of a polygon given in COCO continuous pixel coordinates."""
    ss = SUPERSAMPLE
    im = Image.new("L", (size * ss, size * ss), 0)
    # PIL puts pixel centres on integer coordinates; COCO puts them on i + 0.5.
    ImageDraw.Draw(im).polygon([tuple(v) for v in (polygon * ss - 0.5).tolist()], fill=255)
    return np.asarray(im.resize((size, size), Image.Resampling.BOX), dtype=np.float32) / 255.0


@lru_cache(maxsize=1)
def photos() -> tuple[np.ndarray, ...]:
    """The sample photos as uint8 RGB arrays (loaded once, longest side <= 320 px)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("scikit-image is needed for the embedded dataset's backgrounds")
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    out = []
    for name in PHOTOS:
        with Image.open(folder / name) as im:
            im = im.convert("RGB")
            im.thumbnail((320, 320), Image.Resampling.BILINEAR)
            out.append(np.asarray(im))
    return tuple(out)


def _colour(rng: np.random.Generator) -> np.ndarray:
    h, s, v = rng.random(), rng.uniform(0.25, 1.0), rng.uniform(0.25, 1.0)
    return np.array(colorsys.hsv_to_rgb(h, s, v), dtype=np.float32)


def _smooth_noise(rng: np.random.Generator, size: int, channels: int) -> np.ndarray:
    """Low-frequency noise (H, W, C) in [0, 1]: a coarse random grid resized bicubically."""
    g = int(rng.integers(2, 9))
    grid = (rng.random((g, g, 3)) * 255).astype(np.uint8)
    up = Image.fromarray(grid).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(up, dtype=np.float32)[..., :channels] / 255.0


def _coords(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel grid rotated by a random angle: (u, v) each (H, W)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    a = rng.uniform(0, math.pi)
    return x * math.cos(a) + y * math.sin(a), -x * math.sin(a) + y * math.cos(a)


def texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """An (H, W, 3) fill in [0, 1]: solid, stripes, checker, noise or gradient (class-independent)."""
    c1, c2 = _colour(rng), _colour(rng)
    kind = int(rng.choice(5, p=[0.6, 0.1, 0.1, 0.1, 0.1]))  # mostly solid: shape, not texture, is the class
    period = rng.uniform(3.0, 9.0) * size / 64
    if kind == 0:
        w = np.zeros((size, size, 1), np.float32)
    elif kind == 1:
        u, _ = _coords(rng, size)
        w = (np.sin(2 * math.pi * u / period) > 0).astype(np.float32)[..., None]
    elif kind == 2:
        u, v = _coords(rng, size)
        w = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)[..., None]
    elif kind == 3:
        w = _smooth_noise(rng, size, 1)
    else:
        u, _ = _coords(rng, size)
        w = ((u - u.min()) / (np.ptp(u) + 1e-6))[..., None]
    tex = c1 * (1 - w) + c2 * w
    tex *= 1 - 0.25 * _smooth_noise(rng, size, 1)  # shading
    return tex


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """(H, W, 3) in [0, 1]: a random photo crop blended with procedural noise or a gradient."""
    pics = photos()
    pic = pics[int(rng.integers(len(pics)))]
    h, w = pic.shape[:2]
    side = int(rng.uniform(0.2, 0.9) * min(h, w))
    y0, x0 = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
    crop = Image.fromarray(pic[y0:y0 + side, x0:x0 + side]).resize((size, size), Image.Resampling.BILINEAR)
    bg = np.asarray(crop, dtype=np.float32) / 255.0
    bg = bg[:, :, rng.permutation(3)]  # colour variety from grey and colour photos alike
    if rng.random() < 0.5:
        bg = bg[:, ::-1]
    if rng.random() < 0.5:
        proc = _smooth_noise(rng, size, 3)
    else:
        u, _ = _coords(rng, size)
        t = ((u - u.min()) / (np.ptp(u) + 1e-6))[..., None]
        proc = _colour(rng) * (1 - t) + _colour(rng) * t
    mix = rng.uniform(0.5, 0.9)  # mostly smooth: the photo adds clutter, not a second object
    bg = (1 - mix) * bg + mix * proc
    mean = bg.mean((0, 1))
    return mean + (bg - mean) * rng.uniform(0.3, 0.7)


def draw(canvas: np.ndarray, rng: np.random.Generator, label: int, polygon: np.ndarray) -> Drawn:
    """Paint one textured object onto `canvas` (H, W, 3) in place; keep it distinct from what lies below."""
    size = canvas.shape[0]
    alpha = polygon_alpha(polygon, size)
    tex = texture(rng, size)
    inside = alpha > 0.5
    if inside.any() and np.abs(tex[inside].mean(0) - canvas[inside].mean(0)).sum() < 0.3:
        tex = 1.0 - tex  # too close to what lies below: invert so the object stays visible
    canvas *= 1 - alpha[..., None]
    canvas += tex * alpha[..., None]
    return Drawn(label=label, polygon=polygon, alpha=alpha)


def finish(canvas: np.ndarray, rng: np.random.Generator) -> Image.Image:
    noise = rng.normal(0.0, rng.uniform(0.0, 0.03), canvas.shape).astype(np.float32)
    return Image.fromarray((np.clip(canvas + noise, 0, 1) * 255 + 0.5).astype(np.uint8))


def _stretch(rng: np.random.Generator) -> tuple[float, float]:
    return (rng.uniform(0.9, 1.1), rng.uniform(0.9, 1.1))


def _radius_bound(stretch: tuple[float, float]) -> float:
    return max(stretch)


def _tilt(rng: np.random.Generator, max_rotation: float) -> float:
    """A rotation in radians, uniform in +-max_rotation degrees (180 = any orientation)."""
    return math.radians(rng.uniform(-max_rotation, max_rotation))


# ---------------------------------------------------------------- images
def classification_image(
    rng: np.random.Generator, label: int, classes: int, size: int, max_rotation: float = 180.0
) -> Image.Image:
    """One dominant object of class `label`, over 0-2 much smaller distractors of any class."""
    canvas = background(rng, size)
    for _ in range(int(rng.choice(3, p=[0.7, 0.25, 0.05]))):
        other = int(rng.integers(classes))
        poly = place(SHAPE_NAMES[other], rng.uniform(0, size), rng.uniform(0, size),
                     rng.uniform(0.06, 0.13) * size, _tilt(rng, max_rotation), _stretch(rng))
        draw(canvas, rng, other, poly)
    c = size / 2
    poly = place(SHAPE_NAMES[label], c + rng.uniform(-0.15, 0.15) * size, c + rng.uniform(-0.15, 0.15) * size,
                 rng.uniform(0.25, 0.42) * size, _tilt(rng, max_rotation), _stretch(rng))
    draw(canvas, rng, label, poly)
    return finish(canvas, rng)


def scene_image(
    rng: np.random.Generator, labels: Iterable[int], size: int, *, overlap: bool, max_rotation: float = 180.0
) -> tuple[Image.Image, list[Drawn]]:
    """Objects of the given classes, fully inside the frame; later ones occlude earlier ones.

    overlap=False keeps objects apart (bounding circles disjoint), so each COCO polygon is
    exactly its visible mask; an object that finds no free spot in 50 tries is left out.
    """
    canvas = background(rng, size)
    drawn: list[Drawn] = []
    circles: list[tuple[float, float, float]] = []
    for label in labels:
        for _ in range(50):
            stretch = _stretch(rng)
            r = rng.uniform(0.08, 0.22) * size
            rb = r * _radius_bound(stretch) + 1
            if 2 * rb >= size:
                continue
            cx, cy = rng.uniform(rb, size - rb), rng.uniform(rb, size - rb)
            if overlap or all((cx - x) ** 2 + (cy - y) ** 2 > (rb + q) ** 2 for x, y, q in circles):
                break
        else:
            continue
        circles.append((cx, cy, rb))
        poly = place(SHAPE_NAMES[label], cx, cy, r, _tilt(rng, max_rotation), stretch)
        drawn.append(draw(canvas, rng, label, poly))
    return finish(canvas, rng), drawn


def label_map(drawn: list[Drawn], size: int) -> np.ndarray:
    """(H, W) uint8: 0 = background, k + 1 = class k; later objects occlude earlier ones."""
    out = np.zeros((size, size), np.uint8)
    for d in drawn:
        out[d.alpha >= 0.5] = d.label + 1
    return out


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(list(key))


def scene_labels(rng: np.random.Generator, n_images: int, classes: int, objects: tuple[int, int]) -> list[list[int]]:
    """Per image, the classes of its objects: every class equally often (shuffled rounds)."""
    counts = rng.integers(objects[0], objects[1] + 1, n_images)
    rounds = -(-int(counts.sum()) // classes)
    seq = np.concatenate([rng.permutation(classes) for _ in range(rounds)]).tolist()
    out, i = [], 0
    for n in counts.tolist():
        out.append(seq[i:i + n])
        i += n
    return out


# ---------------------------------------------------------------- datasets on disk
def wnid(label: int) -> str:
    return f"n{label + 1:08d}"


def write_imagenet(
    root: Path, *, classes: int, train_per_class: int, val_per_class: int, image_size: int, seed: int,
    max_rotation: float = 180.0, progress: Callable[[Iterable[int], int, str], Iterable[int]] = lambda it, n, d: it,
) -> None:
    """`train/<wnid>/<wnid>_<i>.JPEG`, `val/<wnid>/ILSVRC2012_val_<i>.JPEG`, `LOC_synset_mapping.txt`."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "LOC_synset_mapping.txt").write_text(
        "".join(f"{wnid(c)} {SHAPE_NAMES[c]}\n" for c in range(classes)))
    for split, per_class in ((TRAIN, train_per_class), (VAL, val_per_class)):
        name = ("train", "val")[split]
        jobs = [(c, j) for c in range(classes) for j in range(per_class)]
        for c in range(classes):
            (root / name / wnid(c)).mkdir(parents=True, exist_ok=True)
        for k in progress(range(len(jobs)), len(jobs), f"imagenet {name}"):
            c, j = jobs[k]
            img = classification_image(_rng(seed, IMAGENET, split, c, j), c, classes, image_size, max_rotation)
            fname = f"{wnid(c)}_{j + 1}.JPEG" if split == TRAIN else f"ILSVRC2012_val_{k + 1:08d}.JPEG"
            img.save(root / name / wnid(c) / fname, "JPEG", quality=JPEG_QUALITY)


def polygon_area(p: np.ndarray) -> float:
    x, y = p[:, 0], p[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def write_coco(
    root: Path, *, classes: int, train_images: int, val_images: int, image_size: int,
    objects: tuple[int, int], seed: int, max_rotation: float = 180.0,
    progress: Callable[[Iterable[int], int, str], Iterable[int]] = lambda it, n, d: it,
) -> None:
    """`{train,val}2017/<id:012d>.jpg` and `annotations/instances_{train,val}2017.json` (polygons)."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    categories = [{"id": c + 1, "name": SHAPE_NAMES[c], "supercategory": "shape"} for c in range(classes)]
    image_id = ann_id = 0
    for split, n in ((TRAIN, train_images), (VAL, val_images)):
        name = ("train2017", "val2017")[split]
        (root / name).mkdir(exist_ok=True)
        plan = scene_labels(_rng(seed, COCO, split), n, classes, objects)
        images, anns = [], []
        for i in progress(range(n), n, f"coco {name}"):
            image_id += 1
            img, drawn = scene_image(_rng(seed, COCO, split, i), plan[i], image_size, overlap=False,
                                    max_rotation=max_rotation)
            fname = f"{image_id:012d}.jpg"
            img.save(root / name / fname, "JPEG", quality=JPEG_QUALITY)
            images.append({"id": image_id, "file_name": fname, "width": image_size, "height": image_size})
            for d in drawn:
                ann_id += 1
                lo, hi = d.polygon.min(0), d.polygon.max(0)
                anns.append({
                    "id": ann_id, "image_id": image_id, "category_id": d.label + 1, "iscrowd": 0,
                    "bbox": [round(float(v), 2) for v in (lo[0], lo[1], hi[0] - lo[0], hi[1] - lo[1])],
                    "area": round(polygon_area(d.polygon), 2),
                    "segmentation": [[round(float(v), 2) for v in d.polygon.reshape(-1)]],
                })
        doc = {
            "info": {"description": "mimrepro embedded synthetic COCO-format data", "version": "1.0",
                     "year": 2017, "contributor": "mimrepro", "url": "", "date_created": ""},
            "licenses": [{"id": 1, "name": "CC0-1.0", "url": ""}],
            "images": images, "annotations": anns, "categories": categories,
        }
        (root / "annotations" / f"instances_{name}.json").write_text(json.dumps(doc, sort_keys=True))


def write_ade20k(
    root: Path, *, classes: int, train_images: int, val_images: int, image_size: int,
    objects: tuple[int, int], seed: int, max_rotation: float = 180.0,
    progress: Callable[[Iterable[int], int, str], Iterable[int]] = lambda it, n, d: it,
) -> None:
    """ADEChallengeData2016 layout: `images/<split>/ADE_*.jpg` and `annotations/<split>/ADE_*.png`."""
    for split, n in ((TRAIN, train_images), (VAL, val_images)):
        name, tag = (("training", "train"), ("validation", "val"))[split]
        (root / "images" / name).mkdir(parents=True, exist_ok=True)
        (root / "annotations" / name).mkdir(parents=True, exist_ok=True)
        plan = scene_labels(_rng(seed, ADE20K, split), n, classes, objects)
        for i in progress(range(n), n, f"ade20k {name}"):
            img, drawn = scene_image(_rng(seed, ADE20K, split, i), plan[i], image_size, overlap=True,
                                    max_rotation=max_rotation)
            stem = f"ADE_{tag}_{i + 1:08d}"
            img.save(root / "images" / name / f"{stem}.jpg", "JPEG", quality=JPEG_QUALITY)
            Image.fromarray(label_map(drawn, image_size)).save(root / "annotations" / name / f"{stem}.png")
