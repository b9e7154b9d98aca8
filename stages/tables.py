"""`mimrepro tables`: regenerate the results tables from metrics/, and the teacher table.

results.md (rounded, for reading), results.csv (the same cells, every digit), results.tex (booktabs,
best per column in bold), plots/main_table.png (one bar panel per column) and results.json: every number of both tables under a flat key
(`finetune/mae/top1`, `diversity/dino_rn50/diversity`), full precision, DVC's metric for
`dvc exp show` / `dvc metrics diff` and what `mimrepro diff` compares.  Runs with whatever metrics
exist (a stage not run yet leaves `not run` cells, and no key in results.json); the headers name
the datasets that data/manifest.json records."""
from __future__ import annotations

from pathlib import Path

import click

from stages.common import dir_option, file_option, finetune_sections, load, params_option, section


@click.command("tables")
@dir_option("--metrics", "Folder of <task>/<student>.json metrics files.", dest="metrics_dir")
@dir_option("--models", "Folder of <student>/encoder.safetensors: the pretrain epochs each records.", dest="models_dir")
@dir_option("--out", "Where results.md, .csv, .tex, .json and the teacher table go.", dest="out_dir", output=True)
@file_option("--data", "data/manifest.json written by prepare-data: the datasets the headers name.")
@params_option
def tables(metrics_dir: Path, models_dir: Path, out_dir: Path, data: Path, params_path: Path) -> None:
    """Results table (students x classification top-1, detection AP, segmentation mIoU) and the teacher table."""
    from mim.data.manifest import read_manifest
    from mim.files import atomic_write, write_json
    from mim.report import tables as t
    from mim.report.reference import REFERENCES

    cfg = load(params_path, "tables", t.TablesConfig)
    manifest = read_manifest(data)
    names = t.dataset_names(manifest)
    students = t.find_students(metrics_dir, first=cfg.first)
    # The papers' numbers of each method (mim/report/reference.py), for the student named after it.
    paper = {s: REFERENCES[s] for s in students if s in REFERENCES} if cfg.paper_values else None
    extra = {"pretrain": t.encoder_values(models_dir, students)}
    header, rows = t.build_table(metrics_dir, names, paper=paper, students=students, marks=True, extra=extra)
    caption = finetune_caption(params_path)
    provenance = f"Produced from `{params_path}` (profile `{Path(params_path).stem}`) at commit `{t.git_revision()}`."
    md = (f"# Results\n\nTop-1 accuracy (%) on val (classification: {names['imagenet']}), box and mask AP (detection: "
          f"{names['coco']}), mIoU (segmentation: {names['ade20k']}). " + (caption + ". " if caption else ""))
    md += "Same fine-tune budget for every row; `scratch` is the random-init encoder.\n\n" + t.to_markdown(header, rows)
    md += (f"\n`{t.NOT_RUN}`: that stage has not run for the student (no metrics file); `{t.NO_VALUE}`: it ran and reports no "
           "such value. results.csv has the same cells with every digit, results.tex the LaTeX table, results.json every "
           "number (`mimrepro diff` compares them).\n")
    md += "\n" + t.datasets_note(manifest, names) + "\n\n" + provenance + "\n"
    epochs = {s: v.get("epochs") for s, v in extra["pretrain"].items()}
    for note in (t.deviations_note(rows), t.sources_note(paper, names, epochs=epochs)):
        if note:
            md += "\n" + note + "\n"
    atomic_write(out_dir / "results.md", lambda tmp: tmp.write_text(md))
    latex_caption = (f"Top-1 (%) on {names['imagenet']}, box and mask AP on {names['coco']}, mIoU on {names['ade20k']}"
                     + (f"; {caption}" if caption else "") + ".")
    full = t.build_table(metrics_dir, names, paper=paper, students=students, full=True, extra=extra)
    atomic_write(out_dir / "results.csv", lambda tmp: tmp.write_text(t.to_csv(*full)))
    atomic_write(out_dir / "results.tex", lambda tmp: tmp.write_text(t.to_latex(header, rows, caption=latex_caption)))
    from mim.report.plots import bar_chart

    bar_chart(*full, out_dir / "plots" / "main_table.png", title=f"results/results.md ({Path(params_path).stem} profile)")
    click.echo(md)
    from mim.report.teachers import markdown, teacher_values, write_teacher_table

    # Always written (they are outputs of the stage): no rows until token-diversity has run.
    teacher_rows = write_teacher_table(metrics_dir, out_dir, names["imagenet"])
    values = {**t.results_values(metrics_dir, students=students, extra=extra), **teacher_values(teacher_rows)}
    write_json(out_dir / "results.json", values)
    click.echo(markdown(teacher_rows, names["imagenet"]))


def finetune_caption(params_path: Path) -> str:
    """The fine-tune recipes of the params file, in words: one when every section has the same length
    and labels, else each with the sections that use it.

    Three plain keys of each section, not mim.eval.finetune.FinetuneConfig: that module brings torch,
    timm and the engine (about 5 s here, and every one of their files as a code dep of this stage).
    check-params, upstream of this stage, has validated the sections against FinetuneConfig."""
    regimes: dict[str, list[str]] = {}
    for name in finetune_sections(params_path):
        ft = section(params_path, name)
        epochs, steps = ft["optim"].get("epochs"), ft["optim"].get("steps")  # OptimConfig: exactly one is set
        labels = ft.get("labels_per_class", 0)  # FinetuneConfig's default, 0: every label
        length = f"{epochs} epoch{'' if epochs == 1 else 's'}" if epochs else f"{steps} steps"
        on = f"{labels} labelled images per class (low-label regime)" if labels else "all labelled images"
        regimes.setdefault(f"fine-tune {length} on {on}", []).append(name)
    if len(regimes) == 1:
        return next(iter(regimes))
    return "; ".join(f"{text} (`{'`, `'.join(names)}`)" for text, names in regimes.items())
