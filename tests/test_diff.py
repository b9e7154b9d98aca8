"""`mimrepro diff`: the moved cells and the differing params between results folders, git revisions
and DVC experiments (a one-stage DVC project made here, so the test takes seconds)."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from pngs import not_blank

from mim.report.diff import Side, compare, depends_on, group_by, params_diff, pool, render, render_many
from mim.report.flat import flatten
from stages.cli import main

ROOT = Path(__file__).resolve().parents[1]
BASE = {"finetune/mae/top1": 16.9, "finetune/scratch/top1": 11.6, "probe/mae/knn_top1": 12.2, "diversity/dino_rn50/diversity": 0.0876}


def checkout(root: Path, values: dict[str, float], mask_ratio: float = 0.75, profile: str = "micro") -> Path:
    """A folder laid out like a checkout: results/results.json and the active profile's params."""
    (root / "results").mkdir(parents=True, exist_ok=True)
    (root / "params").mkdir(exist_ok=True)
    (root / "results" / "results.json").write_text(json.dumps(values))
    (root / "params" / "profile.yaml").write_text(f"profile: {profile}\n")
    params = f"mae:\n  model:\n    mask_ratio: {mask_ratio}\n  norm_pix_loss: true\nrun:\n  seed: 0\n"
    (root / "params" / f"{profile}.yaml").write_text(params)
    return root


def cli(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(main, ["diff", *args])
    return r.exit_code, r.output


def test_flatten_and_params_diff():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}}) == {"a.b": 1, "a.c.d": [1, 2], "e": {}}
    a, b = Side("a", {}, {"x": 1, "y": 2}), Side("b", {}, {"x": 1, "y": 3, "z": 0})
    assert params_diff(a, b) == [("y", 2, 3), ("z", "-", 0)]


def test_one_moved_cell_is_the_only_one_listed():
    a = Side("A", BASE, {"mae.model.mask_ratio": 0.75})
    b = Side("B", {**BASE, "finetune/mae/top1": 17.4}, {"mae.model.mask_ratio": 0.6})
    tables = compare(a, b)
    assert list(tables) == ["main table (results/results.md)", "teacher table (results/teachers.md)"]
    moved = [c.key for cells in tables.values() for c in cells if c.moved(0.0)]
    assert moved == ["finetune/mae/top1"]
    out = render(a, b)
    assert "finetune/mae/top1" in out and "+0.5" in out and "*" in out
    assert "finetune/scratch/top1" not in out and "1 of 3 cells moved; 2 did not" in out
    assert "0 of 1 cells moved" in out  # the teacher table
    assert "mae.model.mask_ratio" in out and "0.75" in out and "0.6" in out
    assert "finetune/scratch/top1" in render(a, b, all_cells=True)


def test_threshold_and_one_sided_cells():
    a = Side("A", BASE)
    b = Side("B", {k: v + 0.05 for k, v in BASE.items() if k != "probe/mae/knn_top1"} | {"segment/mae/mIoU": 3.0})
    out = render(a, b, threshold=0.1)
    assert "probe/mae/knn_top1 (only in A)" in out and "segment/mae/mIoU (only in B)" in out
    assert "finetune/mae/top1" not in out.split("On one side only")[0].split("change")[-1]  # within the threshold
    md = render(a, b, threshold=0.1, markdown=True)
    assert "## main table (results/results.md)" in md and "| cell | A | B | change | moved |" in md


def test_identical_sides_say_so():
    out = render(Side("A", BASE, {"k": 1}), Side("B", dict(BASE), {"k": 1}))
    assert "No cell moved." in out and "params that differ\nnone" in out


def test_many_sides_one_row_each_sorted_by_a_cell():
    sides = [Side("base", BASE, {"m": 0.75}), Side("mr06", {**BASE, "finetune/mae/top1": 18.0}, {"m": 0.6}),
             Side("mr09", {**BASE, "finetune/mae/top1": 15.0}, {"m": 0.9})]
    lines = render_many(sides, sort_by="finetune/mae/top1").splitlines()
    assert lines[0].split() == ["experiment", "m", "finetune/mae/top1"]
    assert [ln.split()[0] for ln in lines[1:4]] == ["mr06", "base", "mr09"]


def test_two_results_folders(tmp_path):
    a = checkout(tmp_path / "a", BASE)
    b = checkout(tmp_path / "b", {**BASE, "finetune/mae/top1": 15.0}, mask_ratio=0.6)
    code, out = cli(str(a), str(b))
    assert code == 0, out
    assert "finetune/mae/top1" in out and "-1.9" in out and "mae.model.mask_ratio" in out
    assert "finetune/scratch/top1" not in out and "run.seed" not in out
    code, out = cli(str(a / "results"), str(b / "results"))  # the results folders alone: no params to compare
    assert code == 0 and "finetune/mae/top1" in out, out


@pytest.mark.parametrize("spec", ["no-such-thing", "HEAD~99"])
def test_an_unknown_side_is_one_line(tmp_path, spec, monkeypatch):
    checkout(tmp_path, BASE)
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    code, out = cli(spec, str(tmp_path), "--repo", str(tmp_path))
    assert code == 1 and "is not a results folder, a git revision or a DVC experiment" in out, out
    assert "Traceback" not in out and len(out.strip().splitlines()) == 1


def test_a_folder_without_results_json(tmp_path):
    (tmp_path / "empty").mkdir()
    code, out = cli(str(tmp_path / "empty"), str(tmp_path / "empty"))
    assert code == 1 and "no results/results.json" in out and len(out.strip().splitlines()) == 1, out


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True).stdout


def test_git_revisions_and_the_workspace(tmp_path):
    repo = checkout(tmp_path, BASE)
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "base")
    checkout(tmp_path, {**BASE, "probe/mae/knn_top1": 14.0}, mask_ratio=0.6)
    git(repo, "commit", "-qam", "mask ratio 0.6")
    checkout(tmp_path, {**BASE, "probe/mae/knn_top1": 14.0, "finetune/scratch/top1": 9.0}, mask_ratio=0.6)
    code, out = cli("HEAD~1", "HEAD", "--repo", str(repo))
    assert code == 0, out
    assert "probe/mae/knn_top1" in out and "+1.8" in out and "mae.model.mask_ratio" in out
    assert "finetune/scratch/top1" not in out
    code, out = cli("--repo", str(repo))  # default: HEAD vs the workspace
    assert code == 0, out
    assert "finetune/scratch/top1" in out and "probe/mae/knn_top1" not in out and "params that differ\nnone" in out


STAGE = """\
import json, pathlib, yaml
p = yaml.safe_load(open("params/micro.yaml"))
r = p["mae"]["model"]["mask_ratio"]
pathlib.Path("results").mkdir(exist_ok=True)
json.dump({"finetune/mae/top1": 10 + 10 * r, "finetune/scratch/top1": 11.6}, open("results/results.json", "w"))
"""


def test_dvc_experiments(tmp_path):
    """Two `dvc exp run`s of a one-stage pipeline shaped like ours (params/<profile>.yaml, results.json metric)."""
    repo = checkout(tmp_path, {})
    (repo / "results" / "results.json").unlink()
    (repo / "stage.py").write_text(STAGE)
    (repo / "dvc.yaml").write_text(
        "stages:\n  tables:\n    cmd: python stage.py\n    deps: [stage.py]\n"
        "    params:\n      - params/micro.yaml:\n          - mae\n"
        "    metrics:\n      - results/results.json:\n          cache: false\n")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    git(repo, "init", "-q")
    subprocess.run(["dvc", "init", "-q"], cwd=repo, env=env, check=True)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "pipeline")
    shutil.copy(ROOT / ".dvc/config", repo / ".dvc/config")  # the project's DVC settings
    git(repo, "commit", "-qam", "the project's DVC config")
    for name, ratio, where in (("base", "0.75", []), ("mr06", "0.6", ["--temp"])):  # --temp: how queued runs run
        subprocess.run(["dvc", "exp", "run", "-q", *where, "-n", name, "-S", f"params/micro.yaml:mae.model.mask_ratio={ratio}"],
                       cwd=repo, env=env, check=True, capture_output=True)
    code, out = cli("base", "mr06", "--repo", str(repo))
    assert code == 0, out
    assert "finetune/mae/top1" in out and "-1.5" in out and "mae.model.mask_ratio" in out, out
    assert "finetune/scratch/top1" not in out
    code, out = cli("--all-experiments", "--sort-by", "finetune/mae/top1", "--repo", str(repo))
    assert code == 0, out
    rows = [ln.split()[0] for ln in out.splitlines()[1:] if ln.strip()]
    assert rows[:2] == ["base", "mr06"] and "mae.model.mask_ratio" in out.splitlines()[0], out
    code, out = cli("--all-experiments", "--plot", str(tmp_path / "exps.png"), "--repo", str(repo))
    assert code == 0 and "1 cells, 2 rows" in out, out
    not_blank(tmp_path / "exps.png", min_size=(300, 150))
    code, out = cli("base", "mr06", "--plot", str(tmp_path / "x.png"), "--repo", str(repo))
    assert code == 1 and "--plot goes with --all-experiments" in out


def seeds(name: str, base: dict[str, float], offsets: list[float], **params) -> list[Side]:
    return [Side(f"{name}-s{i}", {k: v + d for k, v in base.items()}, {"run.seed": i, **params}) for i, d in enumerate(offsets)]


def test_pooled_seeds_mean_std_and_noise():
    a = pool("a", seeds("a", {"finetune/mae/top1": 16.0, "finetune/scratch/top1": 11.0}, [-1.0, 0.0, 1.0], m=0.75))
    assert a.values["finetune/mae/top1"] == 16.0 and a.std["finetune/mae/top1"] == 1.0 and a.n["finetune/mae/top1"] == 3
    assert a.params == {"m": 0.75, "run.seed": "varies"} and a.cell("finetune/mae/top1") == "16 ± 1 (3)"
    # +0.5 is within 2 * sqrt(1/3 + 1/3) = 1.63 (seed noise); +5 is not
    b = pool("b", seeds("b", {"finetune/mae/top1": 16.5, "finetune/scratch/top1": 16.0}, [-1.0, 0.0, 1.0], m=0.6))
    cells = {c.key: c for c in compare(a, b)["main table (results/results.md)"]}
    assert cells["finetune/mae/top1"].within_noise() and not cells["finetune/scratch/top1"].within_noise()
    assert math.isclose(cells["finetune/mae/top1"].noise, 2 * math.sqrt(2 / 3))
    lines = {ln.split()[0]: ln for ln in render(a, b).splitlines() if ln.startswith("finetune/")}
    assert lines["finetune/mae/top1"].rstrip().endswith("~") and lines["finetune/scratch/top1"].rstrip().endswith("*")
    assert "16 ± 1 (3)" in lines["finetune/mae/top1"] and "seed noise" in render(a, b)


def test_all_experiments_over_the_seed_pools_rows():
    sides = (seeds("base", {"finetune/mae/top1": 16.0}, [-1.0, 0.0, 1.0], m=0.75)
             + seeds("mr06", {"finetune/mae/top1": 18.0}, [0.0, 2.0], m=0.6))
    groups = group_by(sides, ("run.seed",))
    assert [g.name for g in groups] == ["base-s0 + base-s1 + base-s2", "mr06-s0 + mr06-s1"]
    out = render_many(groups, sort_by="finetune/mae/top1")
    assert out.splitlines()[1].startswith("mr06-s0 + mr06-s1") and "19 ± 1.414 (2)" in out and "16 ± 1 (3)" in out
    # one recipe over seeds is one row: the seed table, the cells the seed moves (not those it leaves)
    one = group_by([Side(f"base-s{i}", {"finetune/mae/top1": 16.0 + d, "probe/mae/knn_top1": 0.0077}, {"m": 0.75, "run.seed": i})
                    for i, d in enumerate((-1.0, 0.0, 1.0))], ("run.seed",))
    table = render_many(one)
    assert len(one) == 1 and "16 ± 1 (3)" in table and "probe/mae/knn_top1" not in table, table


def test_comma_separated_sides_pool_folders(tmp_path):
    dirs = [checkout(tmp_path / f"s{i}", {"finetune/mae/top1": 16.0 + d}) for i, d in enumerate((-1.0, 0.0, 1.0))]
    other = checkout(tmp_path / "o", {"finetune/mae/top1": 20.0}, mask_ratio=0.6)
    code, out = cli(",".join(map(str, dirs)), str(other))
    assert code == 0, out
    assert "16 ± 1 (3)" in out and "+4" in out and "mae.model.mask_ratio" in out, out


LOCK = {
    "prepare-data": {"deps": [{"path": "runs/check-params.json"}], "params": {"params/micro.yaml": {"data": {}}},
                     "outs": [{"path": "data"}]},
    "pretrain@mae": {"deps": [{"path": "data/manifest.json"}], "params": {"params/micro.yaml": {"mae": {}, "run.seed": 0}},
                     "outs": [{"path": "models/mae/encoder.safetensors"}]},
    "pretrain@beit": {"deps": [{"path": "data/manifest.json"}], "params": {"params/micro.yaml": {"beit": {}}},
                      "outs": [{"path": "models/beit/encoder.safetensors"}]},
    "finetune@mae": {"deps": [{"path": "models/mae/encoder.safetensors"}, {"path": "data/manifest.json"}],
                     "params": {"params/micro.yaml": {"finetune": {}}}, "outs": [{"path": "metrics/finetune/mae.json"}]},
    "finetune@beit": {"deps": [{"path": "models/beit/encoder.safetensors"}], "params": {"params/micro.yaml": {"finetune_beit": {}}},
                      "outs": [{"path": "metrics/finetune/beit.json"}]},
}


def test_params_marked_by_whether_the_moved_cells_read_them():
    """Through the DAG in dvc.lock: a moved MAE fine-tune cell reads finetune, and upstream mae, run.seed and data."""
    assert depends_on(LOCK, ["finetune/mae/top1"]) == {"finetune", "mae", "run.seed", "data"}
    assert depends_on(LOCK, ["finetune/beit/top1"]) == {"finetune_beit", "beit", "data"}
    assert depends_on(LOCK, ["segment/mae/mIoU"]) == set()  # no stage writes it in this lock
    assert depends_on(LOCK, ["pretrain/mae/epochs"]) == {"mae", "run.seed", "data"}  # the encoder file's stage
    a = Side("A", {"finetune/mae/top1": 16.0, "finetune/beit/top1": 9.4}, {"mae.model.mask_ratio": 0.75, "beit.model.x": 1}, LOCK)
    b = Side("B", {"finetune/mae/top1": 17.0, "finetune/beit/top1": 9.4}, {"mae.model.mask_ratio": 0.6, "beit.model.x": 2}, LOCK)
    rows = {ln.split()[0]: ln.split() for ln in render(a, b).split("params that differ")[1].splitlines()[2:]}
    assert rows["mae.model.mask_ratio"][-1] == "yes" and rows["beit.model.x"][-1] == "no"
