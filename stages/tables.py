"""`mimrepro tables`: regenerate results/results.md and results/results.csv from metrics/."""
from __future__ import annotations

from pathlib import Path

import click

from stages.common import params_option


@click.command("tables")
@click.option("--metrics", "metrics_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("metrics"),
              show_default=True, help="Folder of metrics/<task>/<student>.json.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("results"),
              show_default=True, help="Where results.md and results.csv go.")
@params_option
def tables(metrics_dir: Path, out_dir: Path, params_path: Path) -> None:
    """Results table (students x IN fine-tune/linear/k-NN, COCO AP, ADE20K mIoU) and the teacher table."""
    from mim.checkpoint import atomic_write
    from mim.config import load_section
    from mim.tables import TablesConfig, build_table, git_revision, read_metrics, sources_note, to_csv, to_markdown

    cfg = load_section(params_path, "tables", TablesConfig)
    header, rows = build_table(metrics_dir, paper=cfg.paper_values)
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
    note = sources_note(cfg.paper_values)
    if note:
        md += "\n" + note + "\n"
    atomic_write(out_dir / "results.md", lambda tmp: tmp.write_text(md))
    atomic_write(out_dir / "results.csv", lambda tmp: tmp.write_text(to_csv(header, rows)))
    click.echo(md)
    if (metrics_dir / "diversity").is_dir():
        from mim.teacher_report import markdown, write_teacher_table

        click.echo(markdown(write_teacher_table(metrics_dir, out_dir)))
