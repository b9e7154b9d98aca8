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
    print_budget(params_path, out / "manifest.json")


def print_budget(params_path: Path, manifest: Path) -> None:
    """The optimizer steps per training stage on this data (`mimrepro budget`), when stdout is a terminal.

    Run as a process of its own: the table reads every training section and imports the training
    code, which prepare-data itself must not (dvc.yaml would have to list them, and every optim or
    engine edit would rerun prepare-data).  It is a report on stdout, not an output.  Elsewhere
    (logs, tests) its ~5 s of imports are spared and one line says how to print it."""
    argv = ["budget", "--params", str(params_path), "--data", str(manifest)]
    if not sys.stdout.isatty():
        import shlex

        click.echo(f"optimizer steps per training stage on this data: mimrepro {shlex.join(argv)}")
        return
    import subprocess

    if subprocess.run([sys.executable, "-m", "stages.cli", *argv], check=False).returncode:
        click.echo("prepare-data is done; only its budget table failed (the error above)")
