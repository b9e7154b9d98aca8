"""`mimrepro budget`: the optimizer steps each training stage runs on the configured data.

A report, not a DVC stage: it reads every training section of the params file and the counts
in data/manifest.json (train images, less the skipped files and the per-class limits: DINO's
`data.limit_per_class`, fine-tuning's `labels_per_class`) and prints, per stage, the images,
the batch, the steps per epoch, the epochs and the total steps, on one process.  A budget set in
`epochs` grows with the dataset; one set in `steps` (and detect's / segment's iterations) stays.
prepare-data prints the same table when its output is a terminal (stages/prepare_data.py says why
it runs this command in a process of its own).
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

import click

from stages.common import file_option, finetune_sections, load, params_option, read_yaml

if TYPE_CHECKING:
    from mim.budget import Row


@click.command("budget")
@params_option
@file_option("--data", "data/manifest.json written by prepare-data.")
def budget(params_path: Path, data: Path) -> None:
    """Print the optimizer steps per training stage for the configured data (writes nothing)."""
    click.echo(budget_table(params_path, data))


def budget_table(params: Path, manifest: Path) -> str:
    from mim.budget import table

    rows, notes = budget_rows(params, manifest)
    return "\n".join([table(rows, f"optimizer steps per training stage on one process ({params}, {manifest}):"), *notes,
                      "a budget set as epochs grows with the data; one set as steps (optim.steps) or iterations does not"])


def budget_rows(params: Path, manifest: Path) -> tuple[list[Row], list[str]]:
    """A row per training stage in the params file, and notes on the stages that train nothing."""
    from downstream.det_config import DetectConfig
    from downstream.seg import SegmentConfig
    from mim import methods
    from mim.budget import budget_row, class_counts, epoch_row, iteration_row
    from mim.data.manifest import read_manifest
    from mim.eval.finetune import FinetuneConfig
    from mim.eval.probe import ProbeConfig
    from mim.schedules import resolve
    from mim.teacher import dino
    from mim.tokenizer import vqvae

    m = read_manifest(manifest)
    present = set(read_yaml(params))
    skipped = [s for s in m.skipped.get("imagenet", ()) if s.startswith("train/")]
    train = m.images["imagenet/train"] - len(skipped)

    @functools.cache
    def per_class() -> tuple[int, ...]:
        return class_counts(m.imagenet / "train", {m.imagenet / s for s in skipped})

    def images(limit: int) -> int:  # mim.data.images.ImageFolder: the first `limit` usable files of each class
        return sum(min(n, limit) for n in per_class()) if limit else train

    rows, notes = [], []
    if "dino" in present:
        cfg = load(params, "dino", dino.Config)
        if cfg.source == "import":
            notes.append("pretrain-teacher: dino.source import: the official weights, nothing trained")
        else:
            rows.append(epoch_row("pretrain-teacher: dino", images(cfg.data.limit_per_class), cfg.optim))
    if "tokenizer" in present:
        tok = load(params, "tokenizer", vqvae.Config)
        if tok.optim is None or tok.mode != "train":
            notes.append(f"tokenizer: tokenizer.mode {tok.mode}: nothing trained")
        else:
            rows.append(epoch_row("tokenizer", train, tok.optim))
    for name in methods.METHODS:
        module = methods.load(name)
        if module.Config is None or name not in present:
            continue
        cfg = load(params, name, module.Config)
        rows.append(epoch_row(f"pretrain: {name}", train, cfg.optim))
    for name in finetune_sections(params):
        ft = load(params, name, FinetuneConfig)
        rows.append(epoch_row(f"finetune: {name}", images(ft.labels_per_class), ft.optim, "each student"))
    if "probe" in present:
        lin = load(params, "probe", ProbeConfig).linear
        batch = min(lin.batch_size, train) if lin.protocol == "cached" else lin.batch_size  # mim/eval/probe.py
        stage, per_epoch = f"probe: linear ({lin.protocol})", train // batch if batch else 0
        if per_epoch:
            b = resolve(per_epoch, epochs=lin.epochs, warmup_epochs=lin.warmup_epochs)
            rows.append(budget_row(stage, train, batch, b, f"{lin.epochs} epoch{'' if lin.epochs == 1 else 's'}", "each student"))
        else:
            notes.append(f"{stage}: {train} images, fewer than one batch of {lin.batch_size}: it fails")
    if "detect" in present:
        det = load(params, "detect", DetectConfig)
        n = m.images["coco/train"] - sum(1 for s in m.skipped.get("coco", ()) if s.startswith("train"))
        rows.append(iteration_row("detect", n, det.batch_size, det.max_iter, "each student"))
    if "segment" in present:
        seg = load(params, "segment", SegmentConfig)
        bad = {Path(s).stem for s in m.skipped.get("ade20k", ()) if "/training/" in f"/{s}"}
        rows.append(iteration_row("segment", m.images["ade20k/train"] - len(bad), seg.batch_size, seg.iters, "each student"))
    return rows, notes
