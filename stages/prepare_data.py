"""`mimrepro prepare-data`: the embedded synthetic datasets (or checked real paths) and data/manifest.json."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Iterable

import click

from stages.common import params_option


@click.command("prepare-data")
@params_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("data"), show_default=True,
              help="Folder to (re)write: generated datasets and manifest.json.")
def prepare_data(params_path: Path, out: Path) -> None:
    """Generate the embedded ImageNet/COCO/ADE20K stand-ins (or check the real paths set in
    `data.*.root`) and write <out>/manifest.json, the dataset roots every later stage reads."""
    from tqdm import tqdm

    from mim.config import load_section
    from mim.datasets import DataConfig, check_config, write_data

    cfg = load_section(params_path, "data", DataConfig)
    where = f"{params_path}: data"
    check_config(cfg, where)

    def progress(it: Iterable[int], total: int, desc: str) -> Iterable[int]:
        return tqdm(it, total=total, desc=desc, unit="img", file=sys.stderr, leave=False,
                    dynamic_ncols=True, disable=None)  # no bars when stderr is not a terminal

    start = time.perf_counter()
    m = write_data(cfg, out, progress, where)
    for name in ("imagenet", "coco", "ade20k"):
        root = getattr(m, name)
        counts = ", ".join(f"{k.split('/')[1]} {n}" for k, n in m.images.items() if k.startswith(name + "/"))
        kind = "generated" if name in m.embedded else "real"
        click.echo(f"{name:8s} {kind:9s} {getattr(m, name + '_classes')} classes, {counts} images: {root}")
    click.echo(f"wrote {out / 'manifest.json'} in {time.perf_counter() - start:.1f} s")
