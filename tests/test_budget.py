"""`mimrepro budget` (and prepare-data's line about it): the optimizer steps per training stage on the data."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from mim.data.prepare import DatasetsConfig, ImageNetData, SceneData, write_data
from stages.cli import main

PARAMS = """
dino:
  data: {limit_per_class: 4}
  optim: {epochs: 3, batch_size: 4, base_lr: 0.03}
tokenizer:
  optim: {steps: 7, batch_size: 8, base_lr: 0.004}
mae:
  model: {}
  optim: {epochs: 2, batch_size: 8, base_lr: 1.5e-3}
finetune:
  labels_per_class: 6
  optim: {steps: 10, batch_size: 4, base_lr: 4.0e-3, warmup_steps: 2}
probe:
  linear: {protocol: cached, epochs: 5, batch_size: 256, warmup_epochs: 1}
  knn: {}
detect: {batch_size: 2, max_iter: 6}
segment: {batch_size: 4, iters: 10, warmup_iters: 2}
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes of 6 train images, one of them skipped (as data.on_bad_file: skip records it); 5 COCO and 4 ADE20K train images."""
    root = tmp_path_factory.mktemp("budget")
    write_data(DatasetsConfig(imagenet=ImageNetData(classes=3, train_per_class=6, val_per_class=1, image_size=16),
                              coco=SceneData(classes=2, train_images=5, val_images=1, image_size=32, objects=(1, 1)),
                              ade20k=SceneData(classes=2, train_images=4, val_images=1, image_size=32, objects=(1, 1))), root / "data")
    manifest = root / "data" / "manifest.json"
    m = json.loads(manifest.read_text())
    first = sorted((root / "data" / m["imagenet"]["root"] / "train").iterdir())[0]
    m["imagenet"]["skipped"] = {f"train/{first.name}/{sorted(first.iterdir())[0].name}": "cannot decode"}
    manifest.write_text(json.dumps(m))
    (root / "params.yaml").write_text(PARAMS)
    return root


def test_budget_prints_each_stages_steps_for_the_data(data):
    res = CliRunner().invoke(main, ["budget", "--params", str(data / "params.yaml"), "--data", str(data / "data" / "manifest.json")])
    assert res.exit_code == 0, res.output
    rows = {line.split("  ")[0].strip(): line.split() for line in res.output.splitlines()[2:]}
    # (stage, images, batch, steps/epoch, epochs, total steps, set as ...)
    assert rows["pretrain-teacher: dino"][2:] == ["12", "4", "3", "3", "9", "3", "epochs"]  # 4 per class, none skipped in them
    assert rows["tokenizer"][1:] == ["17", "8", "2", "3.50", "7", "7", "steps"]  # 18 less the skipped one; 7 steps of 2 per epoch
    assert rows["pretrain: mae"][2:] == ["17", "8", "2", "2", "4", "2", "epochs"]  # 2 full batches of 8
    assert rows["finetune: finetune"][2:] == ["17", "4", "4", "2.50", "10", "10", "steps", "each", "student"]  # 5 + 6 + 6 labels
    assert rows["probe: linear (cached)"][3:] == ["17", "17", "1", "5", "5", "5", "epochs", "each", "student"]  # one batch of all
    assert rows["detect"][1:] == ["5", "2", "2", "2.40", "6", "6", "iterations", "each", "student"]
    assert rows["segment"][1:] == ["4", "4", "1", "10", "10", "10", "iterations", "each", "student"]
    assert "pretrain: beit" not in rows  # no section, no row


def test_a_step_budget_stays_put_while_an_epoch_budget_grows_with_the_data(data, tmp_path):
    from stages.budget import budget_rows

    manifest = json.loads((data / "data" / "manifest.json").read_text())
    manifest["imagenet"]["images"]["train"] *= 4  # as a 4x larger dataset reads (counts only: no limit per class below)
    (tmp_path / "m.json").write_text(json.dumps({**manifest, "imagenet": {**manifest["imagenet"], "root": str(
        data / "data" / manifest["imagenet"]["root"])}}))
    small, _ = budget_rows(data / "params.yaml", data / "data" / "manifest.json")
    large, _ = budget_rows(data / "params.yaml", tmp_path / "m.json")
    total = {r.stage: r.total for r in small}, {r.stage: r.total for r in large}
    assert (total[0]["pretrain: mae"], total[1]["pretrain: mae"]) == (4, 16)  # 2 epochs of 71 // 4 // 2 = 8 steps
    assert total[0]["tokenizer"] == total[1]["tokenizer"] == 7  # steps: the same budget


def test_prepare_data_says_how_to_print_the_budget(tmp_path):
    params = tmp_path / "p.yaml"
    params.write_text("data:\n  imagenet: {classes: 2, train_per_class: 1, val_per_class: 1, image_size: 16}\n"
                      "  coco: {classes: 2, train_images: 1, val_images: 1, image_size: 32, objects: [1, 1]}\n"
                      "  ade20k: {classes: 2, train_images: 1, val_images: 1, image_size: 32, objects: [1, 1]}\n")
    res = CliRunner().invoke(main, ["prepare-data", "--params", str(params), "--out", str(tmp_path / "d")])
    assert res.exit_code == 0, res.output
    assert res.output.splitlines()[-1] == (f"optimizer steps per training stage on this data: mimrepro budget --params {params} "
                                           f"--data {tmp_path / 'd' / 'manifest.json'}")  # not a terminal: the table is not run
