"""`mimrepro token-diversity`: token diversity of one teacher over the val images."""
from __future__ import annotations

import time
from pathlib import Path

import click

from stages.common import data_option, file_option, load, params_option


@click.command("token-diversity")
@params_option
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Teacher file: our DINO backbone, a mimrepro ViT encoder, or timm weights (.safetensors).")
@click.option("--arch", default=None, help="timm model name, for weights files without mimrepro metadata.")
@data_option()
@file_option("--metrics", "Where the teacher's diversity goes (.json).", output=True)
def token_diversity(params_path: Path, weights: Path, arch: str | None, data: Path, metrics: Path) -> None:
    """Score a teacher's token diversity (1 - mean pairwise cosine of an image's output tokens,
    Img2Vec) over the images of params `diversity`; writes --metrics."""
    from mim.data.images import open_dataset
    from mim.engine import device, is_main
    from mim.eval.diversity import DiversityConfig, diversity
    from mim.files import write_json
    from mim.teacher.frozen import load_teacher
    from stages.run import start

    cfg = load(params_path, "diversity", DiversityConfig)
    run = start(params_path)
    teacher = load_teacher(weights, arch)
    t0 = time.time()
    ds = open_dataset(data, run.num_workers or None)
    out = {**diversity(teacher, ds, cfg, device(), run.num_workers), "skipped_images": len(ds.skipped)}
    if not is_main():
        return
    write_json(metrics, out)  # results only: the wall time is printed, not kept where `dvc metrics diff` looks
    click.echo(f"{metrics.stem}: diversity {out['diversity']:.4f} ± {out['std']:.4f} over {out['num_images']} images, "
               f"{out['tokens_per_image']} tokens each at {out['img_size']} px ({time.time() - t0:.1f} s)")
