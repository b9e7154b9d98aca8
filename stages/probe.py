"""`mimrepro probe`: linear probe and k-NN on a frozen student encoder."""
from __future__ import annotations

import time
from pathlib import Path

import click

from stages.common import data_option, encoder_option, file_option, load, params_option


@click.command("probe")
@encoder_option
@data_option()
@file_option("--metrics", "Linear-probe and k-NN top-1/top-5 on val (.json).", output=True)
@params_option
def probe(encoder: Path, data: Path, metrics: Path, params_path: Path) -> None:
    """Linear probe (MAE) and k-NN (DINO) on frozen features of --encoder; writes --metrics."""
    from mim.data.images import open_dataset
    from mim.encoder_file import EncoderFile
    from mim.engine import device
    from mim.eval.probe import ProbeConfig
    from mim.eval.probe import probe as run_probe
    from mim.files import write_json
    from stages.run import start

    cfg = load(params_path, "probe", ProbeConfig)
    run = start(params_path)
    enc = EncoderFile.read(encoder)
    t0 = time.perf_counter()
    ds = open_dataset(data, run.num_workers or None)
    out = {**run_probe(enc.build().to(device()), ds, cfg, seed=run.seed), "skipped_images": len(ds.skipped)}
    write_json(metrics, out)
    name = enc.metadata.get("student", encoder.parent.name)
    click.echo(f"{name}: linear top-1 {out['linear_top1']:.2f}  k-NN top-1 {out['knn_top1']:.2f}  ({time.perf_counter() - t0:.1f} s)")
