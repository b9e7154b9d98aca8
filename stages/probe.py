"""`mimrepro probe`: linear probe and k-NN on a frozen student encoder."""
from __future__ import annotations

import time
from pathlib import Path

import click

from stages.common import _output_folder, data_option, encoder_option, file_option, load, params_option


@click.command("probe")
@encoder_option
@data_option()
@file_option("--metrics", "Linear-probe and k-NN top-1/top-5 on val (.json).", output=True)
@click.option("--run", "run_dir", type=click.Path(path_type=Path), default=None, callback=_output_folder,
              help="Folder of the augmented linear probe's run (probe.linear.protocol augmented): its resume checkpoint "
                   "and its logs. Created empty for the cached protocol.")
@params_option
def probe(encoder: Path, data: Path, metrics: Path, run_dir: Path | None, params_path: Path) -> None:
    """Linear probe (MAE) and k-NN (DINO) on frozen features of --encoder; writes --metrics."""
    from mim.data.images import open_dataset
    from mim.encoder_file import EncoderFile
    from mim.engine import is_main
    from mim.errors import MimError
    from mim.eval.probe import ProbeConfig
    from mim.eval.probe import probe as run_probe
    from mim.files import write_json
    from stages.run import CHECKPOINT, start

    cfg = load(params_path, "probe", ProbeConfig)
    if cfg.linear.protocol == "augmented" and run_dir is None:
        raise MimError(f"{params_path}: probe.linear.protocol augmented trains the head through the engine: give --run FOLDER")
    run = start(params_path)
    enc = EncoderFile.read(encoder)
    name = enc.metadata.get("student", encoder.parent.name)
    t0 = time.perf_counter()
    ds = open_dataset(data, run.num_workers or None)
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)  # the logs go there, whichever protocol runs
    out = run_probe(enc, ds, cfg, run, checkpoint=run_dir / CHECKPOINT if run_dir else None, log_dir=run_dir,
                    desc=f"probe {name}")
    if not is_main():
        return
    out = {**out, "skipped_images": len(ds.skipped)}
    write_json(metrics, out)
    click.echo(f"{name}: linear top-1 {out['linear_top1']:.2f} ({cfg.linear.protocol})  k-NN top-1 {out['knn_top1']:.2f}  "
               f"({time.perf_counter() - t0:.1f} s)")
