"""results/plots/main_table.png: the results table as bars, one panel per column.

Columns measure different things on different scales (top-1 %, AP, mIoU), so each gets its own
panel with its own axis; each student is one bar in every panel, in the table's row order.  A
cell with no number gets no bar and says why (`not run`, `n/a`), as in the table.  With `errors`
(per student and column: the std over seeds), the bars carry error bars.
"""
from __future__ import annotations

import math
from pathlib import Path

from mim.files import atomic_write


def bar_chart(header: list[str], rows: list[list[str]], path: Path, title: str = "",
              errors: dict[tuple[str, str], float] | None = None) -> None:
    """Render the (header, rows) of build_table(full=True) (the numbers unrounded) into `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [c for c in header[1:] if c != "pretrain epochs" and not c.endswith((" paper", " delta"))]
    students = [r[0] for r in rows]
    ncol = min(3, max(1, len(columns)))
    nrow = math.ceil(len(columns) / ncol)
    height = max(0.35 * len(students) + 1.0, 2.2)  # inches per panel row
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, height * nrow), dpi=110, squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, col in zip(axes.flat, columns, strict=False):
        i = header.index(col)
        ys = list(range(len(students)))[::-1]
        for y, r, k in zip(ys, rows, range(len(rows)), strict=True):
            try:
                v = float(r[i])
            except ValueError:  # not run / n/a
                ax.text(0.01, y, r[i], va="center", ha="left", fontsize=7, color="0.45", transform=ax.get_yaxis_transform())
                continue
            err = (errors or {}).get((r[0], col))
            ax.barh(y, v, color=colors[k % len(colors)], xerr=err, capsize=2 if err else 0)
            ax.text(v + (err or 0.0), y, f" {v:.1f}" if abs(v) >= 1 else f" {v:.3g}", va="center", ha="left", fontsize=7)
        ax.set_yticks(ys, students, fontsize=7)
        ax.set_title(col, fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        ax.margins(x=0.25)
        if not rows:
            ax.text(0.5, 0.5, "no metrics yet", ha="center", va="center", transform=ax.transAxes, color="0.45")
    for ax in list(axes.flat)[len(columns):]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def read_curves(run_dir: Path) -> dict[str, tuple[list[float], list[float]]]:
    """dvclive's per-step logs of one run: "<metric>" (e.g. train/loss, val/top1, lr) -> (steps, values)."""
    import csv

    root = Path(run_dir) / "plots" / "metrics"
    curves = {}
    for tsv in sorted(root.rglob("*.tsv")):
        with open(tsv, newline="") as f:
            rows = [r for r in csv.reader(f, delimiter="\t")]
        if len(rows) < 2 or len(rows[0]) < 2:
            continue
        try:
            steps = [float(r[0]) for r in rows[1:] if len(r) >= 2]
            values = [float(r[-1]) for r in rows[1:] if len(r) >= 2]
        except ValueError:
            continue  # not a dvclive table
        curves[str(tsv.relative_to(root).with_suffix(""))] = (steps, values)
    return curves


def curves_png(runs: dict[str, Path], path: Path, title: str) -> int:
    """One panel per logged metric, one line per run (`runs`: name -> run folder); returns the panels drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = {name: read_curves(d) for name, d in runs.items()}
    metrics = sorted({m for c in data.values() for m in c}, key=lambda m: (m == "lr", m))
    if not metrics:
        return 0
    ncol = min(3, len(metrics))
    nrow = math.ceil(len(metrics) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.0 * nrow), dpi=110, squeeze=False)
    for ax, metric in zip(axes.flat, metrics, strict=False):
        for name, curves in data.items():
            if metric in curves:
                steps, values = curves[metric]
                ax.plot(steps, values, marker="." if len(steps) < 60 else None, lw=1.2, label=name)
        ax.set_title(metric, fontsize=8)
        ax.set_xlabel("step (dvclive: epoch, or iteration)", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return len(metrics)
