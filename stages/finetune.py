"""`mimrepro finetune`: fine-tune a student encoder end to end on ImageNet.

The recipe is a params section (`--section`): `finetune` (MAE's) for every student but BEiT, whose
own recipe is `finetune_beit`; dvc.yaml names each student's section in its `students` entry.
"""
from __future__ import annotations

from pathlib import Path

import click

from stages.common import data_option, encoder_option, file_option, load, params_option, run_option


@click.command("finetune")
@encoder_option
@data_option()
@file_option("--metrics", "Top-1/top-5 on val (.json).", output=True)
@run_option
@params_option
@click.option("--section", default="finetune", show_default=True,
              help="Params section of the fine-tune recipe (BEiT's own: finetune_beit).")
def finetune(encoder: Path, data: Path, metrics: Path, run_dir: Path, params_path: Path, section: str) -> None:
    """Fine-tune --encoder on <data>/train, evaluate on <data>/val, write top-1/top-5 to --metrics."""
    from mim.data.images import open_dataset
    from mim.encoder_file import EncoderFile
    from mim.eval.finetune import FinetuneConfig
    from mim.eval.finetune import finetune as run_finetune
    from mim.files import write_json
    from stages.run import CHECKPOINT, start

    cfg = load(params_path, section, FinetuneConfig)
    run = start(params_path)
    enc = EncoderFile.read(encoder)
    name = enc.metadata.get("student", encoder.parent.name)
    ds = open_dataset(data, run.num_workers or None)
    out = run_finetune(enc, ds, cfg, run, checkpoint=run_dir / CHECKPOINT, log_dir=run_dir, desc=f"finetune {name}")
    if out:
        out["skipped_images"] = len(ds.skipped)
        write_json(metrics, out)
        click.echo(f"{name}: fine-tune top-1 {out['top1']:.2f}  top-5 {out['top5']:.2f}")
