"""`mimrepro detect --student NAME`: COCO detection + instance segmentation (ViTDet Mask R-CNN)."""
from __future__ import annotations

from pathlib import Path

import click

from stages.common import params_option


@click.command("detect")
@click.option("--student", required=True, help="Student name: reads models/<student>/encoder.safetensors.")
@click.option("--coco", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="COCO-layout root with train2017/, val2017/, annotations/ (default: 'coco' in data/manifest.json).")
@click.option("--num-gpus", type=click.IntRange(min=0), default=None,
              help="Processes for detectron2's launcher, one per GPU (default: every visible GPU; none = CPU).")
@params_option
def detect(student: str, coco: Path | None, num_gpus: int | None, params_path: Path) -> None:
    """Train ViTDet Mask R-CNN from models/<student>/encoder.safetensors on COCO train2017; val2017
    box and mask AP to metrics/detect/<student>.json (resumes from checkpoints/detect-<student>/)."""
    from downstream.det_install import hide_known_warnings, require_detectron2

    hide_known_warnings()
    require_detectron2()
    import torch

    from downstream.det import CocoPaths, DetectConfig, DetectJob, run_detect
    from mim.config import load_section
    from mim.datasets import read_manifest
    from mim.engine import RunConfig
    from mim.errors import MimError
    from mim.export import read_encoder

    det = load_section(params_path, "detect", DetectConfig)
    run = load_section(params_path, "run", RunConfig)
    encoder = Path("models") / student / "encoder.safetensors"
    read_encoder(encoder)  # clear error for a missing or corrupt file
    paths = CocoPaths(root=coco or read_manifest().coco)
    paths.check()
    gpus = torch.cuda.device_count() if num_gpus is None else num_gpus
    if gpus > torch.cuda.device_count():
        raise MimError(f"--num-gpus {gpus}: only {torch.cuda.device_count()} GPU(s) visible")
    run_name = f"detect-{student}"
    job = DetectJob(student=student, encoder=encoder, coco=paths, det=det, run=run,
                    checkpoint_dir=Path("checkpoints") / run_name, log_dir=Path("logs") / run_name)
    m = run_detect(job, Path("metrics/detect") / f"{student}.json", gpus)

    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2f}"

    click.echo(f"{student}: COCO val2017 AP box {fmt(m['bbox_AP'])}  AP mask {fmt(m['segm_AP'])}  "
               f"(metrics/detect/{student}.json, config logs/{run_name}/config.yaml)")
