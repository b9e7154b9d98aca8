"""`mimrepro pretrain-teacher` (DINO, ResNet-50 by default; or, with `dino.source: import`, the
official weights) and `mimrepro import-teacher` (the same import, ad hoc)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from stages.common import data_option, file_option, load, params_option, run_option

if TYPE_CHECKING:
    from mim.teacher.dino import Config


@click.command("pretrain-teacher")
@params_option
@data_option()
@click.option("--name", default="dino_rn50", show_default=True, help="Teacher name (progress output, the file's metadata).")
@file_option("--out", "The teacher backbone (.safetensors, timm key names).", output=True)
@file_option("--metrics", "Summary metrics (.json): k-NN top-1, teacher entropy, KL, sizes.", output=True)
@run_option
def pretrain_teacher(params_path: Path, data: Path, name: str, out: Path, metrics: Path, run_dir: Path) -> None:
    """Pretrain the DINO teacher (params `dino`; ResNet-50 by default) and export its backbone
    with timm key names; logs k-NN top-1, teacher entropy and student-teacher KL per epoch.
    With `dino.source: import` nothing is trained: the official checkpoint `dino.checkpoint` is
    converted to --out and --metrics says so."""
    from mim.config import to_dict
    from mim.data.images import open_dataset
    from mim.engine import is_main
    from mim.files import write_json
    from mim.teacher import dino
    from mim.teacher.frozen import save_timm_backbone
    from stages.run import fit_in, start

    cfg = load(params_path, "dino", dino.Config)
    if cfg.source == "import":
        _import(cfg, name, out, metrics, run_dir)
        return
    run = start(params_path)
    ds = open_dataset(data, run.num_workers or None)
    t = dino.task(cfg, run, ds)
    config = {"dino": to_dict(cfg), "seed": run.seed, "data": str(ds.root), "train_files": t.info["train_files"]}
    t0 = time.time()
    result = fit_in(t, run, run_dir, config, desc=f"dino {name}")
    if not is_main():
        return
    backbone = t.model.teacher.backbone.cpu()
    save_timm_backbone(out, backbone, cfg.model.arch, extra={"name": name, "params": str(params_path)})
    summary = {
        "train_images": int(t.info["train_images"]),
        "val_images": int(t.info["val_images"]),
        "params_m": round(sum(p.numel() for p in backbone.parameters()) / 1e6, 2),
        "skipped_images": len(ds.skipped),
        **{k.removeprefix("train/"): v for k, v in result.items()},
    }
    write_json(metrics, summary)
    click.echo(f"{name}: k-NN top-1 {summary.get('knn_top1', float('nan')):.2f}%, teacher entropy "
               f"{summary.get('teacher_entropy', float('nan')):.3f}, KL {summary.get('kl', float('nan')):.3f} "
               f"in {time.time() - t0:.0f} s -> {out}")


def _import(cfg: Config, name: str, out: Path, metrics: Path, run_dir: Path) -> None:
    """The official weights as the stage's outputs: the teacher file, metrics of what was measured
    (no training numbers), and the run folder (left as it is, with no checkpoint added)."""
    from mim.files import write_json
    from mim.teacher.official_dino import import_teacher as convert

    assert cfg.checkpoint is not None  # Config.problems: source import needs it
    src = Path(cfg.checkpoint)
    measured = convert(src, out, "teacher", name)
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    write_json(metrics, measured)  # what was measured; where the weights came from is in the params
    click.echo(f"{name}: imported the official DINO ResNet-50 {src} (nothing trained) -> {out}")


@click.command("import-teacher")
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--which", type=click.Choice(["teacher", "student"]), default="teacher", show_default=True,
              help="Network to take from a full DINO training checkpoint.")
@file_option("--out", "Where to write the teacher backbone (e.g. models/teacher/backbone.safetensors).", output=True)
def import_teacher(checkpoint: Path, which: str, out: Path) -> None:
    """Use the official DINO ResNet-50 weights (local dino_resnet50_pretrain.pth or a full
    checkpoint) as the teacher instead of pretraining: writes timm resnet50 keys to --out."""
    from mim.teacher.official_dino import import_teacher as convert

    convert(checkpoint, out, which)
    click.echo(f"imported {checkpoint} ({which}) -> {out}")
