"""`mimrepro curves`: training curves of every run folder as PNGs, offline (matplotlib).

Reads the dvclive logs each training stage writes into its run folder (`runs/<task>/<name>/plots/
metrics/**.tsv`) and draws one figure per task (pretrain, finetune, teacher, ...), one panel per
metric, one line per run.  Run folders are not DVC outputs (resume state stays out of the DAG), so
the curves are those of the runs on this disk: the current workspace's, not every experiment's.
"""
from __future__ import annotations

from pathlib import Path

import click

from stages.common import dir_option


@click.command("curves")
@dir_option("--runs", "The run folders (dvc.yaml's --run paths live under it).", dest="runs_dir")
@dir_option("--out", "Where <task>.png go.", dest="out_dir", output=True)
def curves(runs_dir: Path, out_dir: Path) -> None:
    """Training curves (loss, lr, val accuracy) of every run under --runs, one PNG per task."""
    from mim.errors import MimError
    from mim.report.plots import curves_png

    if not runs_dir.is_dir():
        raise MimError(f"--runs {runs_dir}: no such folder (run `dvc repro` first)")
    tasks: dict[str, dict[str, Path]] = {}
    for log in sorted(runs_dir.rglob("plots/metrics")):
        run = log.parent.parent
        rel = run.relative_to(runs_dir).parts
        task, name = (rel[0], "/".join(rel[1:]) or rel[0]) if rel else ("run", run.name)
        tasks.setdefault(task, {})[name] = run
    if not tasks:
        raise MimError(f"--runs {runs_dir}: no dvclive logs (plots/metrics/*.tsv) in any run folder")
    for task, runs in tasks.items():
        n = curves_png(runs, out_dir / f"{task}.png", f"{task}: {len(runs)} run(s) under {runs_dir}")
        click.echo(f"{task}: {len(runs)} run(s), {n} metric(s) -> {out_dir / f'{task}.png'}")
