"""`mimrepro tables`: regenerate results/results.md and results/results.csv from metrics/."""
from __future__ import annotations

from pathlib import Path

import click

from stages.common import dir_option, load, params_option


def RUNTIME_IMPORTS(args: dict[str, str]) -> list[str]:  # noqa: N802  (read by scripts/dvc_deps.py)
    """Every method's module, for the papers' numbers (dvc.yaml: the folder mim/methods covers them)."""
    from mim.methods import METHODS

    return list(METHODS.values())


@click.command("tables")
@dir_option("--metrics", "Folder of <task>/<student>.json metrics files.", dest="metrics_dir")
@dir_option("--out", "Where results.md, results.csv and the teacher table go.", dest="out_dir", output=True)
@params_option
def tables(metrics_dir: Path, out_dir: Path, params_path: Path) -> None:
    """Results table (students x IN fine-tune/linear/k-NN, COCO AP, ADE20K mIoU) and the teacher table."""
    from mim import methods
    from mim.files import atomic_write
    from mim.report.tables import TablesConfig, build_table, find_students, git_revision, read_metrics, sources_note, to_csv, to_markdown

    cfg = load(params_path, "tables", TablesConfig)
    students = find_students(metrics_dir, first=cfg.first)
    # The papers' numbers of each method (its module's PAPER), for the student named after it.
    paper = {s: methods.load(s).PAPER for s in students if s in methods.METHODS} if cfg.paper_values else None
    header, rows = build_table(metrics_dir, paper=paper, students=students)
    ft = {r[0]: read_metrics(metrics_dir, "finetune", r[0]) for r in rows}
    regimes = sorted({(int(m.get("epochs", 0)), int(m.get("labels_per_class", 0))) for m in ft.values() if m})
    caption = "; ".join(
        f"fine-tune {e} epochs on " + (f"{n} labelled images per class (low-label regime)" if n else "all labelled images")
        for e, n in regimes
    )
    provenance = f"Produced from `{params_path}` (profile `{Path(params_path).stem}`) at commit `{git_revision()}`."
    md = "# Results\n\nImageNet-layout classification, top-1 accuracy (%) on val. " + (caption + ". " if caption else "")
    md += "Same fine-tune budget for every row; `scratch` is the random-init encoder.\n\n" + to_markdown(header, rows)
    md += "\n" + provenance + "\n"
    note = sources_note(paper)
    if note:
        md += "\n" + note + "\n"
    atomic_write(out_dir / "results.md", lambda tmp: tmp.write_text(md))
    atomic_write(out_dir / "results.csv", lambda tmp: tmp.write_text(to_csv(header, rows)))
    click.echo(md)
    if (metrics_dir / "diversity").is_dir():
        from mim.report.teachers import markdown, write_teacher_table

        click.echo(markdown(write_teacher_table(metrics_dir, out_dir)))
