"""`mimrepro prepare-data`: the embedded synthetic datasets (or checked real paths) and data/manifest.json."""
from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from pathlib import Path

import click

from stages.common import dir_option, load, params_option


@click.command("prepare-data")
@params_option
@dir_option("--out", "Folder to (re)write: generated datasets and manifest.json.", output=True)
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the scans of the datasets' files are kept: an unchanged folder is not decoded again.")
def prepare_data(params_path: Path, out: Path, cache: Path | None) -> None:
    """Generate the embedded ImageNet/COCO/ADE20K stand-ins (or check the real paths set in
    `data.*.root`) and write <out>/manifest.json, which every later stage is given as --data."""
    from tqdm import tqdm

    from mim.data.prepare import DatasetsConfig, write_data

    cfg = load(params_path, "data", DatasetsConfig)  # every key's range is checked here
    where = f"{params_path}: data"

    def progress(it: Iterable[int], total: int, desc: str) -> Iterable[int]:
        return tqdm(it, total=total, desc=desc, unit="img", file=sys.stderr, leave=False,
                    dynamic_ncols=True, disable=None)  # no bars when stderr is not a terminal

    t0 = time.perf_counter()
    m = write_data(cfg, out, progress, where, cache)
    for name in ("imagenet", "coco", "ade20k"):
        root = getattr(m, name)
        counts = ", ".join(f"{k.split('/')[1]} {n}" for k, n in m.images.items() if k.startswith(name + "/"))
        kind = "generated" if name in m.embedded else "real"
        skipped = f" ({len(m.skipped[name])} unusable files skipped)" if m.skipped.get(name) else ""
        click.echo(f"{name:8s} {kind:9s} {getattr(m, name + '_classes')} classes, {counts} images{skipped}: {root}")
    click.echo(f"wrote {out / 'manifest.json'} in {time.perf_counter() - t0:.1f} s")
