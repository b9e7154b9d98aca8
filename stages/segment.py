"""`mimrepro segment`: ADE20K UperNet fine-tuning and single-scale mIoU of one student encoder."""
from __future__ import annotations

from pathlib import Path

import click

from stages.common import params_option


@click.command("segment")
@click.option("--student", required=True, help="Student name: reads models/<student>/encoder.safetensors.")
@click.option("--manifest", type=click.Path(dir_okay=False, path_type=Path), default=Path("data/manifest.json"), show_default=True)
@params_option
def segment(student: str, manifest: Path, params_path: Path) -> None:
    """Fine-tune UperNet on the student's ViT over ADE20K; write metrics/segment/<student>.json (mIoU, mAcc, aAcc).

    Resumes from checkpoints/segment/<student>/ (mmengine); needs mmsegmentation: bash scripts/install_mmseg.sh .venv"""
    from mim.checkpoint import write_json
    from mim.config import load_section
    from mim.engine import RunConfig, is_main

    from downstream.seg import SegmentConfig, segment as run_segment, write_per_class

    cfg = load_section(params_path, "segment", SegmentConfig)
    run = load_section(params_path, "run", RunConfig)
    out = Path("metrics/segment")
    summary, per_class = run_segment(
        cfg,
        run,
        manifest=manifest,
        encoder=Path("models") / student / "encoder.safetensors",
        work_dir=Path("checkpoints/segment") / student,
        config_out=out / f"{student}_config.py",
    )
    if not is_main() or not per_class:
        return
    write_per_class(out / f"{student}_per_class.csv", per_class)
    metrics = {k: round(v, 2) for k, v in summary.items()}  # IoUMetric's own rounding (%, 2 decimals)
    write_json(out / f"{student}.json", {**metrics, "num_classes": len(per_class["class"]), "iters": cfg.iters})
    click.echo(f"segment {student}: mIoU {summary['mIoU']:.2f}  mAcc {summary['mAcc']:.2f}  aAcc {summary['aAcc']:.2f}  ({cfg.iters} iters)")
