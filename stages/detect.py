"""`mimrepro detect`: COCO detection + instance segmentation (ViTDet Mask R-CNN) of a student encoder."""
from __future__ import annotations

from pathlib import Path

import click

from stages.common import data_option, encoder_option, file_option, load, params_option, run_option


@click.command("detect")
@encoder_option
@data_option("COCO-layout root with train2017/, val2017/, annotations/")
@file_option("--metrics", "Box and mask AP on val2017 (.json).", output=True)
@run_option
@click.option("--num-gpus", type=click.IntRange(min=0), default=None,
              help="Processes for detectron2's launcher, one per GPU (default: every visible GPU; none = CPU).")
@params_option
def detect(encoder: Path, data: Path, metrics: Path, run_dir: Path, num_gpus: int | None, params_path: Path) -> None:
    """Train ViTDet Mask R-CNN from --encoder on COCO train2017; val2017 box and mask AP to --metrics
    (resumes from --run, where detectron2's checkpoints, logs and config go)."""
    from downstream.det_install import hide_known_warnings, require_detectron2

    hide_known_warnings()
    require_detectron2()
    import torch

    from downstream.det import CocoPaths, DetectJob, run_detect
    from downstream.det_config import DetectConfig
    from mim.data.manifest import open_coco
    from mim.encoder_file import EncoderFile
    from mim.engine import RunConfig
    from mim.errors import ConfigError, MimError
    from mim.files import RunLock

    det = load(params_path, "detect", DetectConfig)
    run = load(params_path, "run", RunConfig)  # set up in detectron2's worker processes
    enc = EncoderFile.read(encoder)  # a clear error for a missing or bad file
    for key, message in det.check_encoder(enc.config):
        raise ConfigError(f"{params_path}: detect.{key}: {message} (the encoder {encoder})")
    name = enc.metadata.get("student", encoder.parent.name)
    root, annotations = open_coco(data)  # a COCO folder given directly is checked file by file first
    paths = CocoPaths(root=root, annotations_dir=None if annotations == root / "annotations" else annotations)
    paths.check()
    gpus = torch.cuda.device_count() if num_gpus is None else num_gpus
    if gpus > torch.cuda.device_count():
        raise MimError(f"--num-gpus {gpus}: only {torch.cuda.device_count()} GPU(s) visible")
    job = DetectJob(student=name, encoder=encoder, coco=paths, det=det, run=run,
                    checkpoint_dir=run_dir / "checkpoints", log_dir=run_dir)
    with RunLock.beside(run_dir):  # a second detect of this student refuses instead of sharing the checkpoints
        m = run_detect(job, metrics, gpus)

    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2f}"

    click.echo(f"{name}: COCO val2017 AP box {fmt(m['bbox_AP'])}  AP mask {fmt(m['segm_AP'])}  "
               f"({metrics}, config {run_dir / 'config.yaml'})")
