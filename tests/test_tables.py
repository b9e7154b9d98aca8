import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from pngs import not_blank

from mim.data.manifest import read_manifest
from mim.report.reference import REFERENCES
from mim.report.tables import (
    COLUMNS,
    PAPER_DATASETS,
    Column,
    build_table,
    dataset_names,
    deviations_note,
    find_students,
    sources_note,
    to_csv,
    to_latex,
    to_markdown,
)
from stages.cli import main

ROOT = Path(__file__).resolve().parents[1]
MAE = {"mae": REFERENCES["mae"]}
EMBEDDED = {"imagenet": "embedded 10-class", "coco": "embedded COCO-layout", "ade20k": "embedded ADE20K-layout"}


def write(root, task, student, data):
    (root / task).mkdir(parents=True, exist_ok=True)
    (root / task / f"{student}.json").write_text(json.dumps(data))


def write_manifest(path, real=(), classes=None):
    """A data/manifest.json as prepare-data writes it: embedded datasets, or real roots for those in `real`."""
    classes = {"imagenet": 10, "coco": 10, "ade20k": 10, **(classes or {})}
    embedded_root = {"imagenet": "imagenet", "coco": "coco", "ade20k": "ade20k/ADEChallengeData2016"}
    ds = {
        d: {"root": f"/datasets/{real[d]}" if d in real else embedded_root[d], "embedded": d not in real,
            "classes": classes[d], "class_names": [f"c{i}" for i in range(classes[d])], "images": {"train": 40, "val": 8}}
        for d in ("imagenet", "coco", "ade20k")
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": 2, "seed": 0, **ds}))
    return path


def test_rows_columns_and_missing_cells(tmp_path):
    m = tmp_path / "metrics"
    write(m, "finetune", "mae", {"top1": 61.25, "top5": 90.0})
    write(m, "finetune", "scratch", {"top1": 40.0})
    write(m, "probe", "mae", {"linear_top1": 33.333, "knn_top1": 30.0})
    write(m, "probe", "zeta", {"knn_top1": 1.0})
    pretrain = {"pretrain": {"mae": {"epochs": 40}, "scratch": {"epochs": 0}}}  # encoder_values: zeta has no encoder
    header, rows = build_table(m, EMBEDDED, extra=pretrain)
    assert to_markdown(header, rows) == (
        "| student | pretrain epochs | embedded 10-class top-1 (fine-tune) | embedded 10-class linear | embedded 10-class k-NN"
        " | embedded COCO-layout AP box | embedded COCO-layout AP mask | embedded ADE20K-layout mIoU |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|\n"
        "| scratch | 0 | 40.0 | not run | not run | not run | not run | not run |\n"
        "| mae | 40 | 61.2 | 33.3 | 30.0 | not run | not run | not run |\n"
        "| zeta | not run | not run | n/a | 1.0 | not run | not run | not run |\n"  # its probe file has k-NN only
    )
    assert to_csv(header, rows).splitlines()[1:] == [
        "scratch,0,40.0,not run,not run,not run,not run,not run",
        "mae,40,61.2,33.3,30.0,not run,not run,not run",
        "zeta,not run,not run,n/a,1.0,not run,not run,not run",
    ]
    full = to_csv(*build_table(m, EMBEDDED, full=True, extra=pretrain))
    assert full.splitlines()[2] == "mae,40,61.25,33.333,30.0,not run,not run,not run"
    extra = COLUMNS + [Column("detect", "bbox_AP50", "AP50 box", dataset="coco")]  # one line adds a column
    assert build_table(m, EMBEDDED, extra)[0][-1] == "embedded COCO-layout AP50 box"
    write(m, "detect", "mae", {"bbox_AP": 12.5, "segm_AP": 10.0, "bbox_AP50": 20.0})
    assert build_table(m, EMBEDDED, extra)[1][1][-1] == "20.0"
    assert build_table(m, EMBEDDED)[1][1][5:7] == ["12.5", "10.0"]
    write(m, "segment", "mae", {"mIoU": 38.04, "mAcc": 50.0, "aAcc": 70.0})  # written by `mimrepro segment`
    assert build_table(m, EMBEDDED)[1][1][-1] == "38.0"


def test_no_metrics_at_all_still_has_every_column(tmp_path):
    header, rows = build_table(tmp_path / "metrics", EMBEDDED)  # the folder does not exist either
    assert header == ["student", *[c.title(EMBEDDED) for c in COLUMNS]] and rows == []


def test_paper_columns_and_delta_on_the_papers_datasets_only(tmp_path):
    m = tmp_path / "metrics"
    write(m, "finetune", "mae", {"top1": 80.0})
    write(m, "finetune", "toy", {"top1": 50.0})
    header, rows = build_table(m, PAPER_DATASETS, paper=MAE, extra={"pretrain": {"mae": {"epochs": 1600}}})
    i = header.index("ImageNet-1k top-1 (fine-tune) paper")
    assert rows[0][0] == "mae" and rows[0][i : i + 2] == ["83.6", "-3.6"]
    assert rows[1][0] == "toy" and rows[1][i : i + 2] == ["n/a", "n/a"]  # a method without reported numbers
    j = header.index("ADE20K mIoU paper")
    assert rows[0][j - 1 : j + 2] == ["not run", "48.1", "not run"]  # segment not run: no delta either
    note = sources_note(MAE, PAPER_DATASETS, epochs={"mae": 1600})
    assert "mae/ADE20K mIoU: 48.1 (ViT-B/16, 1600 ep): MAE (He et al." in note and "arXiv 2111.06377), Table 5" in note
    assert "papers.md" not in note and "83.3" not in note  # only the references the table printed
    assert build_table(m, PAPER_DATASETS)[0] == ["student", *[c.title(PAPER_DATASETS) for c in COLUMNS]]  # no paper values
    # on other data a delta against the papers would compare different datasets: none, and no sources
    mixed = {**PAPER_DATASETS, "imagenet": "embedded 10-class"}
    header = build_table(m, mixed, paper=MAE)[0]
    assert not [h for h in header if h.startswith("embedded") and h.endswith(("paper", "delta"))]
    assert "COCO AP box paper" in header and "ADE20K mIoU delta" in header
    assert "top-1" not in sources_note(MAE, mixed) and sources_note(MAE, EMBEDDED) == ""


def test_references_compare_like_with_like(tmp_path):
    """The reference at the student's own pretraining epochs: 800-epoch MAE gets the 800-epoch reproduction
    for fine-tune, and "no reference at 800 ep" where the papers report 1600 epochs only."""
    m = tmp_path / "metrics"
    write(m, "finetune", "mae", {"top1": 83.0})
    write(m, "segment", "mae", {"mIoU": 47.0})
    write(m, "finetune", "img2vec", {"top1": 84.0})  # Img2Vec's 85.1: epochs not stated
    pretrain = {"mae": {"epochs": 800}, "img2vec": {"epochs": 800}}
    header, rows = build_table(m, PAPER_DATASETS, paper={**MAE, "img2vec": REFERENCES["img2vec"]}, extra={"pretrain": pretrain})
    cells = {r[0]: dict(zip(header, r, strict=True)) for r in rows}
    assert cells["mae"]["ImageNet-1k top-1 (fine-tune) paper"] == "83.3" and cells["mae"]["ImageNet-1k top-1 (fine-tune) delta"] == "-0.3"
    assert cells["mae"]["ADE20K mIoU paper"] == "no reference at 800 ep" and cells["mae"]["ADE20K mIoU delta"] == "n/a"
    assert cells["img2vec"]["ImageNet-1k top-1 (fine-tune) paper"] == "85.1"
    note = sources_note({**MAE, "img2vec": REFERENCES["img2vec"]}, PAPER_DATASETS, epochs={s: v["epochs"] for s, v in pretrain.items()})
    assert "83.3 (ViT-B/16, 800 ep, reproduction): open-mmlab/mmselfsup" in note and "85.1 (ViT-B/16, epochs not stated)" in note
    assert "83.6" not in note


def test_a_cell_measured_with_another_protocol_is_marked(tmp_path):
    m = tmp_path / "metrics"
    write(m, "probe", "mae", {"linear_top1": 60.0, "knn_top1": 50.0, "linear_protocol": "cached"})
    write(m, "probe", "beit", {"linear_top1": 55.0, "knn_top1": 40.0, "linear_protocol": "augmented"})
    header, rows = build_table(m, EMBEDDED, marks=True)
    i = header.index("embedded 10-class linear")
    assert [r[i] for r in rows] == ["60.0†", "55.0"] and rows[0][i + 1] == "50.0"
    assert deviations_note(rows).startswith("† linear probe on centre-crop features computed once")
    assert build_table(m, EMBEDDED)[1][0][i] == "60.0" and deviations_note(build_table(m, EMBEDDED)[1]) == ""
    tex = to_latex(header, rows)
    assert "\\bfseries 60.0\\textsuperscript{\\dag}" in tex  # still the column's best


def test_rows_in_the_given_order_then_sorted(tmp_path):
    m = tmp_path / "metrics"
    for s in ("zeta", "mae", "alpha", "scratch"):
        write(m, "probe", s, {"knn_top1": 1.0})
    assert find_students(m) == ["scratch", "mae", "alpha", "zeta"]
    assert find_students(m, first=("zeta",)) == ["zeta", "alpha", "mae", "scratch"]


def test_dataset_names_follow_the_manifest(tmp_path):
    assert dataset_names(read_manifest(write_manifest(tmp_path / "a.json"))) == EMBEDDED
    full = write_manifest(tmp_path / "b.json", real={"imagenet": "imagenet", "coco": "coco", "ade20k": "ADEChallengeData2016"},
                          classes={"imagenet": 1000, "coco": 80, "ade20k": 150})
    assert dataset_names(read_manifest(full)) == {"imagenet": "ImageNet-1k", "coco": "COCO", "ade20k": "ADE20K"}
    subset = write_manifest(tmp_path / "c.json", real={"imagenet": "imagenette", "coco": "mini"}, classes={"coco": 5})
    assert dataset_names(read_manifest(subset)) == {"imagenet": "imagenette 10-class", "coco": "mini 5-class",
                                                    "ade20k": "embedded ADE20K-layout"}


FINETUNE = "finetune: {labels_per_class: 8, optim: {epochs: 4, batch_size: 8, base_lr: 0.001}}\n"
ARGS = ["tables", "--params", "p.yaml", "--metrics", "metrics", "--models", "models", "--data", "data/manifest.json",
        "--out", "results"]


def write_encoder(models, student, pretrain_epochs):
    """A student's encoder file as far as the tables read it: the header's `pretrain_epochs`."""
    import torch

    from mim.checkpoint import save_safetensors

    (models / student).mkdir(parents=True, exist_ok=True)
    save_safetensors(models / student / "encoder.safetensors", {"w": torch.zeros(1)}, {"pretrain_epochs": str(pretrain_epochs)})


def test_tables_stage_regenerates_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "metrics", "finetune", "mae", {"top1": 55.0, "top5": 90.0})
    write(tmp_path / "metrics", "finetune", "scratch", {"top1": 45.0, "top5": 80.0})
    write(tmp_path / "metrics", "finetune", "beit", {"top1": 50.0, "top5": 85.0})
    write_encoder(tmp_path / "models", "mae", 40)
    write_encoder(tmp_path / "models", "beit", "official")  # mim/methods/official.py: the schedule is not known
    (tmp_path / "p.yaml").write_text("tables: {paper_values: false}\n" + FINETUNE)
    write_manifest(tmp_path / "data/manifest.json", real={"imagenet": "imagenette"})
    res = CliRunner().invoke(main, ARGS)
    assert res.exit_code == 0, res.output
    md = (tmp_path / "results/results.md").read_text()
    assert "| scratch | not run | 45.0 | not run | not run | not run | not run | not run |" in md  # no encoder file
    assert "| mae | 40 | 55.0 | not run | not run | not run | not run | not run |" in md  # from its encoder's header
    assert "| beit | n/a | 50.0 | not run | not run | not run | not run | not run |" in md
    assert "(classification: imagenette 10-class)" in md and "`/datasets/imagenette`, 10 classes, 40 train / 8 val images" in md
    assert "fine-tune 4 epochs on 8 labelled images per class" in md and "`p.yaml`" in md and "commit" in md
    assert (tmp_path / "results/results.csv").read_text().splitlines() == [
        "student,pretrain epochs,imagenette 10-class top-1 (fine-tune),imagenette 10-class linear,imagenette 10-class k-NN,"
        "embedded COCO-layout AP box,embedded COCO-layout AP mask,embedded ADE20K-layout mIoU",
        "scratch,not run,45.0,not run,not run,not run,not run,not run",
        "mae,40,55.0,not run,not run,not run,not run,not run",
        "beit,n/a,50.0,not run,not run,not run,not run,not run",
    ]
    # every output of the stage is written, the teacher table too (token-diversity has not run)
    assert "token-diversity not run" in (tmp_path / "results/teachers.md").read_text()
    assert (tmp_path / "results/teachers.csv").read_text().startswith("teacher,")
    assert (tmp_path / "results/plots/teacher_diversity.png").read_bytes()[:4] == b"\x89PNG"
    not_blank(tmp_path / "results/plots/main_table.png")
    (tmp_path / "data/manifest.json").unlink()
    res = CliRunner().invoke(main, ARGS)
    assert res.exit_code == 1 and "dataset manifest not found: data/manifest.json" in res.output


def test_results_json_csv_and_latex_keep_every_digit(tmp_path, monkeypatch):
    """results.json: flat keys, full precision, no key for a cell not run; the CSV keeps 0.0155 (the
    Markdown shows 0.0); the LaTeX is a booktabs tabular with the best of each column in bold."""
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "metrics", "finetune", "mae", {"top1": 16.93})
    write(tmp_path / "metrics", "finetune", "scratch_v2", {"top1": 11.6})
    write_encoder(tmp_path / "models", "mae", 40)
    write_encoder(tmp_path / "models", "scratch_v2", 0)
    write(tmp_path / "metrics", "detect", "mae", {"bbox_AP": 0.0155, "segm_AP": 0.004})
    write(tmp_path / "metrics", "diversity", "dino_rn50", {"diversity": 0.0876, "std": 0.026, "num_images": 40})
    (tmp_path / "p.yaml").write_text("tables: {paper_values: false}\n" + FINETUNE)
    write_manifest(tmp_path / "data/manifest.json")
    res = CliRunner().invoke(main, ARGS)
    assert res.exit_code == 0, res.output
    values = json.loads((tmp_path / "results/results.json").read_text())
    assert values == {
        "finetune/mae/top1": 16.93, "pretrain/mae/epochs": 40, "detect/mae/bbox_AP": 0.0155, "detect/mae/segm_AP": 0.004,
        "finetune/scratch_v2/top1": 11.6, "pretrain/scratch_v2/epochs": 0,
        "diversity/dino_rn50/diversity": 0.0876, "diversity/dino_rn50/diversity_std": 0.026,
    }
    assert "| mae | 40 | 16.9 | not run | not run | 0.0 | 0.0 | not run |" in (tmp_path / "results/results.md").read_text()
    csv_rows = (tmp_path / "results/results.csv").read_text().splitlines()
    assert csv_rows[1] == "mae,40,16.93,not run,not run,0.0155,0.004,not run"
    tex = (tmp_path / "results/results.tex").read_text()
    body = tex[tex.index("\\begin{tabular}"):tex.index("\\end{tabular}")]
    assert body.startswith("\\begin{tabular}{lrrrrrrr}\n\\toprule\nstudent & pretrain epochs &")
    assert "\\midrule" in body and tex.count("\\bottomrule") == 1 and "\\caption{" in tex
    rows = body.split("\\midrule\n")[1].split("\\bottomrule")[0].strip().splitlines()
    assert len(rows) == 2 and all(r.endswith("\\\\") and r.count("&") == 7 for r in rows)
    assert rows[0].startswith("mae & 40 & \\bfseries 16.9 &")  # the best top-1; pretrain epochs are never bold
    assert rows[1].startswith("scratch\\_v2 & 0 & 11.6 & not run")  # escaped; "not run" spelled out


def test_tables_with_only_classification_metrics(tmp_path, monkeypatch):
    """The issue's case: fine-tune and probes done, detect/segment/token-diversity not: classification
    columns filled, `not run` everywhere else, and headers naming the embedded data."""
    monkeypatch.chdir(tmp_path)
    for s, top1 in (("scratch", 11.6), ("mae", 16.6)):
        write(tmp_path / "metrics", "finetune", s, {"top1": top1})
        write(tmp_path / "metrics", "probe", s, {"linear_top1": top1 + 1, "knn_top1": top1 - 1})
        write_encoder(tmp_path / "models", s, 40)
    (tmp_path / "p.yaml").write_text("tables: {paper_values: true}\n" + FINETUNE)  # no paper columns: not the papers' data
    write_manifest(tmp_path / "data/manifest.json")
    res = CliRunner().invoke(main, ARGS)
    assert res.exit_code == 0, res.output
    table = [r for r in (tmp_path / "results/results.md").read_text().splitlines() if r.startswith("|")]
    assert table == [
        "| student | pretrain epochs | embedded 10-class top-1 (fine-tune) | embedded 10-class linear | embedded 10-class k-NN"
        " | embedded COCO-layout AP box | embedded COCO-layout AP mask | embedded ADE20K-layout mIoU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        "| scratch | 40 | 11.6 | 12.6 | 10.6 | not run | not run | not run |",
        "| mae | 40 | 16.6 | 17.6 | 15.6 | not run | not run | not run |",
    ]
    assert "Paper values" not in (tmp_path / "results/results.md").read_text()


def test_git_revision_ignores_pipeline_outputs(tmp_path):
    from mim.report.tables import git_revision

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    for name in ("dvc.lock", "results/results.md", "mim.py"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("a\n")
    git("add", ".")
    git("commit", "-qm", "x")
    rev = git_revision(tmp_path)
    assert len(rev) >= 7 and not rev.endswith("+dirty")
    (tmp_path / "dvc.lock").write_text("b\n")  # the run that makes the table rewrites these
    (tmp_path / "results/results.md").write_text("b\n")
    assert git_revision(tmp_path) == rev
    (tmp_path / "mim.py").write_text("b\n")  # code that differs from the commit does count
    assert git_revision(tmp_path) == rev + "+dirty"


@pytest.mark.slow
def test_dvc_repro_single_stage_tables_with_only_classification_metrics(tmp_path):
    """`dvc repro -s tables` in a copy of the repo (micro profile) where only fine-tune and probe
    metrics exist (metrics/detect, metrics/segment, metrics/diversity missing); the `metrics` dep
    still orders tables after every metrics-writing stage and notices a new or changed metric."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True)
    for rel in files.stdout.splitlines():
        if (ROOT / rel).is_file() and not rel.startswith(("results/", "data/", "metrics/")):
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, tmp_path / rel)
    (tmp_path / "params/profile.yaml").write_text("profile: micro\n")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(tmp_path),
           "DVC_NO_ANALYTICS": "1"}

    def sh(*cmd: str) -> str:
        out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert out.returncode == 0, f"{' '.join(cmd)}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        return out.stdout

    sh("git", "init", "-q")
    write_manifest(tmp_path / "data/manifest.json", classes={"imagenet": 3, "coco": 3, "ade20k": 3})
    for s in ("scratch", "mae"):
        write(tmp_path / "metrics", "finetune", s, {"top1": 30.0})
        write(tmp_path / "metrics", "probe", s, {"linear_top1": 40.0, "knn_top1": 35.0})
        write_encoder(tmp_path / "models", s, 1)
    sh("dvc", "repro", "-s", "tables")
    md = (tmp_path / "results/results.md").read_text()
    assert "| mae | 1 | 30.0 | 40.0 | 35.0 | not run | not run | not run |" in md and "embedded 3-class k-NN" in md
    assert json.loads(sh("dvc", "status", "tables", "--json")) == {}
    write(tmp_path / "metrics", "detect", "mae", {"bbox_AP": 1.0, "segm_AP": 0.5})  # a new metrics folder
    assert "tables" in json.loads(sh("dvc", "status", "tables", "--json"))
    sh("dvc", "repro", "-s", "tables")
    assert "| mae | 1 | 30.0 | 40.0 | 35.0 | 1.0 | 0.5 | not run |" in (tmp_path / "results/results.md").read_text()
    write(tmp_path / "metrics", "probe", "mae", {"linear_top1": 41.0, "knn_top1": 35.0})  # a changed one
    assert "tables" in json.loads(sh("dvc", "status", "tables", "--json"))
    sh("dvc", "repro", "-s", "tables")
    write_encoder(tmp_path / "models", "mae", 2)  # a retrained encoder: its pretrain epochs cell
    assert "tables" in json.loads(sh("dvc", "status", "tables", "--json"))
    sh("dvc", "repro", "-s", "tables")
    assert "| mae | 2 | 30.0 | 41.0 | 35.0 | 1.0 | 0.5 | not run |" in (tmp_path / "results/results.md").read_text()

    from dvc.repo import Repo

    with Repo(str(tmp_path)) as repo:
        graph = repo.index.graph
        tables = next(s for s in graph if s.name == "tables")
        writers = {s.name for s in graph for o in s.outs if o.def_path.startswith("metrics/")}
        upstream = {s.name for s in graph.successors(tables)}  # edges point from a stage to what it needs
    assert {"finetune@mae", "probe@img2vec", "detect@beit", "segment@scratch", "token-diversity@mae_vit",
            "finetune-sweep@img2vec-mae_vit"} <= writers
    assert writers <= upstream and "prepare-data" in upstream  # after every metric and the manifest


def test_caption_names_each_fine_tune_recipe(tmp_path):
    from stages.tables import finetune_caption

    p = tmp_path / "p.yaml"
    p.write_text(FINETUNE + "finetune_beit: {optim: {steps: 30, batch_size: 8, base_lr: 0.001}}\n")
    assert finetune_caption(p) == ("fine-tune 4 epochs on 8 labelled images per class (low-label regime) (`finetune`); "
                                   "fine-tune 30 steps on all labelled images (`finetune_beit`)")
    p.write_text(FINETUNE.replace("epochs: 4", "epochs: 1").replace("labels_per_class: 8", "labels_per_class: 0"))
    assert finetune_caption(p) == "fine-tune 1 epoch on all labelled images"


def test_a_corrupt_encoder_file_is_one_line_error(tmp_path):
    from mim.errors import MimError
    from mim.report.tables import encoder_values

    write_encoder(tmp_path, "mae", 40)
    (tmp_path / "beit").mkdir()
    (tmp_path / "beit/encoder.safetensors").write_bytes(b"\xff" * 20)
    assert encoder_values(tmp_path, ["mae"]) == {"mae": {"epochs": 40}}
    with pytest.raises(MimError, match="cannot read encoder .*beit/encoder.safetensors"):
        encoder_values(tmp_path, ["mae", "beit"])
