"""`mimrepro segment`: ADE20K UperNet fine-tuning and single-scale mIoU of one student encoder."""
from __future__ import annotations

from pathlib import Path

import click

from stages.common import data_option, encoder_option, file_option, load, params_option, run_option


@click.command("segment")
@encoder_option
@data_option("an ADEChallengeData2016 folder")
@file_option("--metrics", "mIoU, mAcc, aAcc on the validation images (.json); the per-class table goes beside it "
                          "(<stem>_per_class.csv), the mmseg config in --run (config.py).", output=True)
@run_option
@params_option
def segment(encoder: Path, data: Path, metrics: Path, run_dir: Path, params_path: Path) -> None:
    """Fine-tune UperNet on --encoder's ViT over ADE20K; write --metrics (mIoU, mAcc, aAcc).

    Resumes from --run (mmengine's work dir); needs mmsegmentation: bash scripts/install_mmseg.sh .venv"""
    from downstream.seg import SegmentConfig, write_per_class
    from downstream.seg import segment as run_segment
    from mim.encoder_file import EncoderFile
    from mim.engine import RunConfig, is_main
    from mim.errors import ConfigError
    from mim.files import RunLock, write_json

    cfg = load(params_path, "segment", SegmentConfig)
    run = load(params_path, "run", RunConfig)  # set up by the segment call (mmengine launches)
    for key, message in cfg.check_encoder(EncoderFile.read(encoder).config):
        raise ConfigError(f"{params_path}: segment.{key}: {message} (the encoder {encoder})")
    with RunLock.beside(run_dir):  # a second segment of this student refuses instead of sharing mmengine's state
        summary, per_class = run_segment(cfg, run, data=data, encoder=encoder, work_dir=run_dir,
                                         config_out=run_dir / "config.py")
    if not is_main() or not per_class:
        return
    write_per_class(metrics.with_name(f"{metrics.stem}_per_class.csv"), per_class)
    out = {k: round(v, 2) for k, v in summary.items()}  # IoUMetric's own rounding (%, 2 decimals)
    write_json(metrics, {**out, "num_classes": len(per_class["class"])})  # results only: the recipe is in --run
    click.echo(f"segment {metrics.stem}: mIoU {summary['mIoU']:.2f}  mAcc {summary['mAcc']:.2f}  aAcc {summary['aAcc']:.2f}"
               f"  ({cfg.iters} iters)")
