import json

from click.testing import CliRunner

from mim.methods import mae
from mim.report.tables import COLUMNS, Column, build_table, find_students, sources_note, to_csv, to_markdown
from stages.cli import main


def write(root, task, student, data):
    (root / task).mkdir(parents=True, exist_ok=True)
    (root / task / f"{student}.json").write_text(json.dumps(data))


def test_rows_columns_and_missing_cells(tmp_path):
    m = tmp_path / "metrics"
    write(m, "finetune", "mae", {"top1": 61.25, "top5": 90.0, "epochs": 5, "labels_per_class": 10, "pretrain_epochs": 40})
    write(m, "finetune", "scratch", {"top1": 40.0, "pretrain_epochs": 0})
    write(m, "probe", "mae", {"linear_top1": 33.333, "knn_top1": 30.0})
    write(m, "probe", "zeta", {"knn_top1": 1.0})
    header, rows = build_table(m)
    assert header == [
        "student", "pretrain epochs", "IN top-1 (fine-tune)", "IN linear", "IN k-NN", "COCO AP box", "COCO AP mask", "ADE20K mIoU"
    ]
    assert rows == [["scratch", "0", "40.0", "", "", "", "", ""], ["mae", "40", "61.2", "33.3", "30.0", "", "", ""],
                    ["zeta", "", "", "", "1.0", "", "", ""]]
    assert to_markdown(header, rows).splitlines()[3] == "| mae | 40 | 61.2 | 33.3 | 30.0 |  |  |  |"
    assert to_csv(header, rows).splitlines()[1] == "scratch,0,40.0,,,,,"
    extra = COLUMNS + [Column("detect", "bbox_AP50", "COCO AP50 box")]  # one line adds a column
    write(m, "detect", "mae", {"bbox_AP": 12.5, "segm_AP": 10.0, "bbox_AP50": 20.0})
    assert build_table(m, extra)[1][1][-1] == "20.0"
    assert build_table(m)[1][1][5:7] == ["12.5", "10.0"]
    write(m, "segment", "mae", {"mIoU": 38.04, "mAcc": 50.0, "aAcc": 70.0})  # written by `mimrepro segment`
    assert build_table(m)[1][1][-1] == "38.0"


def test_paper_columns_and_delta(tmp_path):
    m = tmp_path / "metrics"
    write(m, "finetune", "mae", {"top1": 80.0})
    write(m, "finetune", "toy", {"top1": 50.0})
    header, rows = build_table(m, paper={"mae": mae.PAPER})  # the numbers MAE's module carries
    i = header.index("IN top-1 (fine-tune) paper")
    assert rows[0][0] == "mae" and rows[0][i : i + 2] == ["83.6", "-3.6"]
    assert rows[1][0] == "toy" and rows[1][i : i + 2] == ["", ""]  # a method without reported numbers
    assert "ADE20K mIoU paper" in header and "mae/ADE20K mIoU: papers.md: MAE" in sources_note({"mae": mae.PAPER})
    assert build_table(m)[0] == ["student", *[c.header for c in COLUMNS]]  # no paper values: no extra columns


def test_rows_in_the_given_order_then_sorted(tmp_path):
    m = tmp_path / "metrics"
    for s in ("zeta", "mae", "alpha", "scratch"):
        write(m, "probe", s, {"knn_top1": 1.0})
    assert find_students(m) == ["scratch", "mae", "alpha", "zeta"]
    assert find_students(m, first=("zeta",)) == ["zeta", "alpha", "mae", "scratch"]


def test_tables_stage_regenerates_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "metrics", "finetune", "mae", {"top1": 55.0, "top5": 90.0, "epochs": 4, "labels_per_class": 8})
    write(tmp_path / "metrics", "finetune", "scratch", {"top1": 45.0, "top5": 80.0, "epochs": 4, "labels_per_class": 8})
    (tmp_path / "p.yaml").write_text("tables: {paper_values: false}\n")
    res = CliRunner().invoke(main, ["tables", "--params", "p.yaml", "--metrics", "metrics", "--out", "results"])
    assert res.exit_code == 0, res.output
    md = (tmp_path / "results/results.md").read_text()
    assert "| scratch |  | 45.0 |  |  |" in md and "| mae |  | 55.0 |  |  |" in md
    assert "8 labelled images per class" in md and "`p.yaml`" in md and "commit" in md
    assert (tmp_path / "results/results.csv").read_text().startswith("student,pretrain epochs,IN top-1 (fine-tune)")


def test_git_revision_ignores_pipeline_outputs(tmp_path):
    import subprocess

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
