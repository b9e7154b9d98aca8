"""The offline PNGs: the main table as bars, the training curves of the run folders; valid and not blank."""
from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from PIL import Image
from pngs import not_blank

from mim.report.plots import bar_chart, read_curves
from stages.cli import main


def test_bar_chart_of_the_table(tmp_path):
    header = ["student", "pretrain epochs", "x top-1", "y AP box"]
    rows = [["scratch", "0", "11.6", "0.0281"], ["mae", "40", "16.93", "not run"]]
    bar_chart(header, rows, tmp_path / "plots" / "t.png", title="test")
    not_blank(tmp_path / "plots" / "t.png")
    bar_chart(header, [], tmp_path / "empty.png")  # no metrics yet: still a valid PNG
    Image.open(tmp_path / "empty.png").verify()


def write_run(run: Path, loss: list[float], top1: float) -> None:
    (run / "plots/metrics/train").mkdir(parents=True)
    (run / "plots/metrics/val").mkdir(parents=True)
    (run / "plots/metrics/train/loss.tsv").write_text("step\tloss\n" + "".join(f"{i}\t{v}\n" for i, v in enumerate(loss)))
    (run / "plots/metrics/val/top1.tsv").write_text(f"step\ttop1\n{len(loss) - 1}\t{top1}\n")
    (run / "metrics.json").write_text(json.dumps({"train": {"loss": loss[-1]}}))
    (run / "checkpoint.pt").write_bytes(b"not a table")


def test_curves_from_dvclive_logs(tmp_path):
    write_run(tmp_path / "runs/finetune/mae", [2.3, 2.2, 2.0, 1.7], 16.6)
    write_run(tmp_path / "runs/finetune/scratch", [2.3, 2.3, 2.29, 2.29], 11.6)
    write_run(tmp_path / "runs/pretrain/mae", [1.5, 0.9, 0.7], 0.0)
    assert read_curves(tmp_path / "runs/finetune/mae") == {"train/loss": ([0, 1, 2, 3], [2.3, 2.2, 2.0, 1.7]),
                                                           "val/top1": ([3], [16.6])}
    res = CliRunner().invoke(main, ["curves", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "curves")])
    assert res.exit_code == 0, res.output
    assert "finetune: 2 run(s), 2 metric(s)" in res.output and "pretrain: 1 run(s), 2 metric(s)" in res.output
    not_blank(tmp_path / "curves/finetune.png")
    not_blank(tmp_path / "curves/pretrain.png")


def test_curves_without_logs_is_one_line(tmp_path):
    (tmp_path / "runs").mkdir()
    res = CliRunner().invoke(main, ["curves", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "c")])
    assert res.exit_code == 1 and "no dvclive logs" in res.output and len(res.output.strip().splitlines()) == 1
    res = CliRunner().invoke(main, ["curves", "--runs", str(tmp_path / "nope"), "--out", str(tmp_path / "c")])
    assert res.exit_code == 1 and "no such folder" in res.output
