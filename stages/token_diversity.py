"""`mimrepro token-diversity`: token diversity of one teacher over the val images."""
from __future__ import annotations

import time
from pathlib import Path

import click

from stages.common import params_option
from stages.pretrain_teacher import imagenet_root


@click.command("token-diversity")
@params_option
@click.option("--teacher", "name", required=True, help="Teacher name: writes metrics/diversity/NAME.json.")
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Teacher file: our DINO backbone, a mimrepro ViT encoder, or timm weights (.safetensors).")
@click.option("--arch", default=None, help="timm model name, for weights files without mimrepro metadata.")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="ImageNet-layout root (default: 'imagenet' in data/manifest.json).")
def token_diversity(params_path: Path, name: str, weights: Path, arch: str | None, data: Path | None) -> None:
    """Score a teacher's token diversity (1 - mean pairwise cosine of an image's output tokens,
    Img2Vec) over the images of params `diversity`; writes metrics/diversity/NAME.json."""
    import torch

    from mim.checkpoint import write_json
    from mim.config import load_section
    from mim.data import ImageFolder, make_loader
    from mim.diversity import DiversityConfig, score_teacher
    from mim.engine import RunConfig, device
    from mim.probe import eval_transform
    from mim.teachers import describe, load_teacher

    cfg = load_section(params_path, "diversity", DiversityConfig)
    run = load_section(params_path, "run", RunConfig)
    if run.threads:
        torch.set_num_threads(run.threads)
    teacher = load_teacher(weights, arch)
    size = teacher_input_size(teacher, cfg.img_size)
    images = ImageFolder((data or imagenet_root()) / cfg.split, eval_transform(size), cfg.limit_per_class)
    batches = make_loader(images, cfg.batch_size, epoch=0, seed=run.seed, shuffle=False, drop_last=False, num_workers=run.num_workers)
    t0 = time.time()
    result = score_teacher(teacher, batches, device())
    info = describe(teacher)
    out = {**result, "params_m": info["params_m"], "img_size": size, "stride": info["stride"], "seconds": round(time.time() - t0, 1)}
    write_json(Path(f"metrics/diversity/{name}.json"), out)
    click.echo(f"{name}: diversity {out['diversity']:.4f} ± {out['std']:.4f} over {out['num_images']} images, "
               f"{out['tokens_per_image']} tokens each at {size} px ({out['seconds']} s)")


def teacher_input_size(teacher: object, cnn_size: int) -> int:
    """ViTs run at the size their position embedding was built for; CNNs at `cnn_size`."""
    from mim.vit import ViTEncoder

    backbone = teacher.backbone  # type: ignore[attr-defined]
    if isinstance(backbone, ViTEncoder):
        return backbone.cfg.img_size
    patch_embed = getattr(backbone, "patch_embed", None)  # timm ViT
    if patch_embed is not None and getattr(patch_embed, "img_size", None):
        return int(patch_embed.img_size[0])
    return cnn_size
