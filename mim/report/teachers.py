"""The teacher table and Img2Vec's Figure 1 (token diversity vs student accuracy).

Reads `metrics/diversity/<teacher>.json` (token-diversity stage) and, when the chain has it,
`metrics/finetune/img2vec-<teacher>.json` (the fine-tune top-1 of the Img2Vec student
trained on that teacher; the default teacher's student is plain `img2vec`).  Writes
`results/teachers.md`, `results/teachers.csv` and `results/plots/teacher_diversity.png`, always (they
are outputs of the `tables` stage): with no diversity metrics yet, a table with no rows that says so.
A cell with no number reads `not run` or `n/a`, as in the results table (mim/report/tables.py).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from mim.config import read_mapping
from mim.errors import MimError
from mim.files import atomic_write
from mim.report.tables import NO_VALUE, NOT_RUN

ACC_KEYS = ("top1", "acc1", "top1_acc", "accuracy")
COLUMNS = ("teacher", "params_m", "tokens_per_image", "diversity", "diversity_std", "num_images", "student_top1")


def student_top1(metrics_dir: Path, teacher: str, default_teacher: str = "dino_rn50") -> float | None:
    names = [f"img2vec-{teacher}"] + (["img2vec"] if teacher == default_teacher else [])
    for name in names:
        path = Path(metrics_dir) / "finetune" / f"{name}.json"
        if path.is_file():
            m = read_mapping(path, "metrics file")
            for key in ACC_KEYS:
                if key in m:
                    return float(m[key])
            raise MimError(f"{path} has none of {', '.join(ACC_KEYS)}")
    return None


def teacher_rows(metrics_dir: Path) -> list[dict[str, Any]]:
    """One row per metrics/diversity/*.json, sorted by diversity (highest first)."""
    rows = []
    for path in sorted((Path(metrics_dir) / "diversity").glob("*.json")):
        m = read_mapping(path, "metrics file")
        rows.append(
            {
                "teacher": path.stem,
                "params_m": m.get("params_m"),
                "tokens_per_image": m.get("tokens_per_image"),
                "diversity": m["diversity"],
                "diversity_std": m["std"],
                "num_images": m.get("num_images"),
                "student_top1": student_top1(metrics_dir, path.stem),
            }
        )
    return sorted(rows, key=lambda r: -r["diversity"])


def teacher_values(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The teacher table's numbers for results/results.json: `diversity/<teacher>/<column>`."""
    keys = ("diversity", "diversity_std", "student_top1")
    return {f"diversity/{r['teacher']}/{k}": r[k] for r in rows for k in keys if r[k] is not None}


def _cell(r: dict[str, Any], key: str, fmt: str = "{}") -> str:
    if r[key] is None:
        return NOT_RUN if key == "student_top1" else NO_VALUE  # no fine-tune metrics / a key the file lacks
    return fmt.format(r[key])


def markdown(rows: list[dict[str, Any]], dataset: str = "ImageNet-layout") -> str:
    """`dataset`: the name of the classification data the students are fine-tuned on (tables.dataset_names)."""
    lines = [
        "# Teachers: token diversity and the Img2Vec student trained on each",
        "",
        "Diversity = 1 - mean pairwise cosine similarity of an image's output tokens (i != k), "
        "mean ± std over images (Img2Vec, Pan et al., arXiv 2304.12535). Student top-1: fine-tune accuracy of "
        f"the Img2Vec student with that teacher on {dataset} (`{NOT_RUN}` until the chain has run it).",
        "",
        "| teacher | params (M) | tokens / image | diversity | student top-1 |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['teacher']} | {_cell(r, 'params_m', '{:.1f}')} | {_cell(r, 'tokens_per_image')} | "
                     f"{r['diversity']:.3f} ± {r['diversity_std']:.3f} | {_cell(r, 'student_top1', '{:.1f}')} |")
    if not rows:
        lines += ["", f"token-diversity {NOT_RUN}: no metrics/diversity/<teacher>.json yet."]
    return "\n".join(lines) + "\n"


def csv_text(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _cell(r, k) for k in COLUMNS})
    return buf.getvalue()


def scatter_png(rows: list[dict[str, Any]], path: Path) -> None:
    """Diversity (x) vs student top-1 (y); teachers without a student yet sit on a bottom rug."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=120)
    if not rows:
        ax.text(0.5, 0.5, f"token-diversity {NOT_RUN}", ha="center", va="center", transform=ax.transAxes, color="0.4")
        ax.set_xticks([])
    done = [r for r in rows if r["student_top1"] is not None]
    todo = [r for r in rows if r["student_top1"] is None]
    if done:
        ax.errorbar([r["diversity"] for r in done], [r["student_top1"] for r in done], xerr=[r["diversity_std"] for r in done],
                    fmt="o", capsize=3)
        for r in done:
            ax.annotate(r["teacher"], (r["diversity"], r["student_top1"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_ylabel("Img2Vec student fine-tune top-1 (%)")
    else:
        ax.set_yticks([])
        ax.set_ylabel("(no student fine-tuned yet)")
    for r in todo:
        ax.axvline(r["diversity"], color="0.6", ls=":", lw=1)
        ax.annotate(r["teacher"], (r["diversity"], 0.02), xycoords=("data", "axes fraction"), rotation=90, fontsize=8, color="0.4")
    ax.set_xlabel("teacher token diversity (1 - mean cosine)")
    ax.set_title("Token diversity vs student accuracy (Img2Vec Fig. 1)", fontsize=9)
    fig.tight_layout()
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def write_teacher_table(metrics_dir: Path, results_dir: Path, dataset: str = "ImageNet-layout") -> list[dict[str, Any]]:
    """results/teachers.md, results/teachers.csv and results/plots/teacher_diversity.png (no rows before token-diversity)."""
    rows = teacher_rows(Path(metrics_dir))
    out = Path(results_dir)
    atomic_write(out / "teachers.md", lambda tmp: tmp.write_text(markdown(rows, dataset)))
    atomic_write(out / "teachers.csv", lambda tmp: tmp.write_text(csv_text(rows)))
    scatter_png(rows, out / "plots" / "teacher_diversity.png")
    return rows
