"""Results tables regenerated from `metrics/<task>/<student>.json`.

Rows are students, columns come from `COLUMNS` (one `Column` per metric: one line adds one).
A missing metrics file or key leaves an empty cell.  Given the papers' numbers (each method's
`PAPER`, mim/methods/), every column with a reference value gets a "paper" and a "delta"
column next to it.
"""
from __future__ import annotations

import csv
import io
import subprocess
from dataclasses import dataclass
from pathlib import Path

from mim.config import read_mapping

Paper = dict[str, dict[str, tuple[float, str]]]  # student -> "<task>/<key>" -> (value, source)


@dataclass(frozen=True, kw_only=True)
class TablesConfig:
    """The `tables` params section."""

    paper_values: bool = False  # add the papers' numbers and the delta (paper profile)
    first: tuple[str, ...] = ("scratch", "mae", "beit", "img2vec")  # rows in this order; other students follow, sorted


@dataclass(frozen=True)
class Column:
    task: str  # metrics/<task>/<student>.json
    key: str  # key inside that JSON
    header: str
    decimals: int = 1

    @property
    def id(self) -> str:
        return f"{self.task}/{self.key}"


COLUMNS: list[Column] = [
    Column("finetune", "pretrain_epochs", "pretrain epochs", decimals=0),
    Column("finetune", "top1", "IN top-1 (fine-tune)"),
    Column("probe", "linear_top1", "IN linear"),
    Column("probe", "knn_top1", "IN k-NN"),
    Column("detect", "bbox_AP", "COCO AP box"),
    Column("detect", "segm_AP", "COCO AP mask"),
    Column("segment", "mIoU", "ADE20K mIoU"),
]

def find_students(metrics_dir: Path, columns: list[Column] = COLUMNS, first: tuple[str, ...] = TablesConfig.first) -> list[str]:
    """Students with a metrics file under any column's task: `first` in its order, then the rest sorted."""
    found = {p.stem for c in {c.task for c in columns} for p in (metrics_dir / c).glob("*.json")}
    known = [s for s in first if s in found]
    return known + sorted(found - set(known))


def read_metrics(metrics_dir: Path, task: str, student: str) -> dict[str, float]:
    path = metrics_dir / task / f"{student}.json"
    return read_mapping(path, "metrics file") if path.is_file() else {}


def build_table(
    metrics_dir: Path, columns: list[Column] = COLUMNS, paper: Paper | None = None, students: list[str] | None = None
) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of formatted cells; numbers with 1 decimal, missing -> ''."""
    students = students if students is not None else find_students(metrics_dir, columns)
    with_paper = {c.id for refs in (paper or {}).values() for c in columns if c.id in refs}
    header = ["student"]
    for c in columns:
        header.append(c.header)
        if c.id in with_paper:
            header += [f"{c.header} paper", f"{c.header} delta"]
    rows = []
    for s in students:
        row = [s]
        for c in columns:
            value = read_metrics(metrics_dir, c.task, s).get(c.key)
            row.append(_fmt(value, decimals=c.decimals))
            if c.id in with_paper:
                ref = (paper or {}).get(s, {}).get(c.id)
                row.append(_fmt(ref[0]) if ref else "")
                row.append(_fmt(value - ref[0], signed=True) if ref and value is not None else "")
        rows.append(row)
    return header, rows


def _fmt(x: float | None, signed: bool = False, decimals: int = 1) -> str:
    if x is None:
        return ""
    return f"{x:+.{decimals}f}" if signed else f"{x:.{decimals}f}"


def to_markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def to_csv(header: list[str], rows: list[list[str]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


# What the pipeline itself rewrites: not a sign that the code or params differ from the commit.
GENERATED = (":(exclude)dvc.lock", ":(exclude)results")


def git_revision(cwd: Path = Path(".")) -> str:
    """Short commit hash, '+dirty' when tracked code/params differ from it; 'unknown' outside git."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *GENERATED],
                               cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


def sources_note(paper: Paper | None, columns: list[Column] = COLUMNS) -> str:
    if not paper:
        return ""
    headers = {c.id: c.header for c in columns}
    srcs = sorted({f"{s}/{headers.get(k, k)}: {src}" for s, refs in paper.items() for k, (_, src) in refs.items()})
    return "Paper values: " + "; ".join(srcs) + "."
