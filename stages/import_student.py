"""`mimrepro import-student`: an official MAE, DINO (ViT) or BEiT checkpoint -> a student encoder file.

Outside the pipeline (no DVC stage): in `dvc repro`, a `students` line with `method: official`
does the same conversion (mim/methods/official.py).
"""
from __future__ import annotations

from pathlib import Path

import click

from stages.common import file_option


@click.command("import-student")
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--layout", type=click.Choice(["auto", "mae", "dino", "beit"]), default="auto", show_default=True,
              help="Layout of the official checkpoint (auto: detected from its keys).")
@click.option("--num-heads", type=click.IntRange(min=1), default=None,
              help="Attention heads, for a width that is not a standard ViT size (not stored in the weights).")
@click.option("--name", default=None, help="Student name for the file's metadata (default: the checkpoint's file name).")
@file_option("--out", "Where to write the encoder (.safetensors, e.g. models/mae_official/encoder.safetensors).", output=True)
def import_student(checkpoint: Path, layout: str, num_heads: int | None, name: str | None, out: Path) -> None:
    """Convert an official MAE, DINO (ViT) or BEiT checkpoint (a local file) into a student encoder
    file that finetune, probe, detect and segment read. In the pipeline, the `official` method does
    the same from a `students` line of dvc.yaml."""
    from mim.encoder_file import save_encoder
    from mim.files import file_sha256
    from mim.methods.official import convert

    official = convert(checkpoint, layout, num_heads)
    enc = official.build()
    save_encoder(out, enc, extra={"student": name or checkpoint.stem, "method": "official", "official_layout": official.layout,
                                  "checkpoint": checkpoint.name, "checkpoint_sha256": file_sha256(checkpoint),
                                  "pretrain_epochs": "official"})
    c = official.config
    click.echo(f"{checkpoint} ({official.layout}: ViT width {c.embed_dim}, depth {c.depth}, {c.num_heads} heads, "
               f"patch {c.patch_size}, {c.img_size} px) -> {out}")
