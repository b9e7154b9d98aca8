"""Integration: `dvc repro` of the whole DAG on the micro profile in a temp copy of the repo, then a
new method added the way docs/DESIGN.md says (one file, one params section, one dvc.yaml line)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def sh(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
    return out


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    dst = tmp_path_factory.mktemp("repo")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True)
    for rel in files.stdout.splitlines():
        src = ROOT / rel
        if src.is_file() and not rel.startswith(("results/", "data/", "metrics/")):
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    (dst / "params" / "profile.yaml").write_text("profile: micro\n")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(dst),
        "DVC_NO_ANALYTICS": "1",
        "MIMREPRO_PARAMS_LOG": str(dst / "params-read.log"),  # every params section each command reads
        "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
    }
    sh(["git", "init", "-q"], dst, env)
    sh(["git", "add", "-A"], dst, env)
    sh(["git", "commit", "-qm", "copy"], dst, env)
    return dst, env


FINGERPRINT = "fingerprint/dvc.yaml:fingerprint-data"  # runs on every `dvc repro` (always changed)


def lock(dst: Path, name: str = "dvc.lock") -> dict:
    return yaml.safe_load((dst / name).read_text())["stages"]


def test_repro_runs_every_stage_then_is_a_noop(repo):
    dst, env = repo
    t0 = time.time()
    sh(["dvc", "repro"], dst, env)
    took = time.time() - t0
    manifest = json.loads((dst / "data" / "manifest.json").read_text())
    assert {"imagenet", "coco", "ade20k"} <= set(manifest)
    expected = set(sh(["dvc", "stage", "list", "--name-only"], dst, env).stdout.split())
    assert len(expected) >= 25, expected  # foreach stages expanded
    assert expected <= set(lock(dst)), f"stages not run: {sorted(expected - set(lock(dst)))}"
    assert set(lock(dst, "fingerprint/dvc.lock")) == {FINGERPRINT.split(":")[1]}  # `dvc stage list` shows only dvc.yaml's
    print(f"micro dvc repro: {took:.1f}s for {len(lock(dst)) + 1} stages")
    again = sh(["dvc", "repro"], dst, env)  # only the real roots' listing runs (there is none here)
    assert again.stdout.count("Running stage") == 1 and f"Running stage '{FINGERPRINT}'" in again.stdout, again.stdout
    status = sh(["dvc", "status"], dst, env).stdout
    assert status.split() == [f"{FINGERPRINT}:", "always", "changed"], status


def test_each_stage_depends_on_exactly_the_params_sections_it_reads(repo):
    """dvc.yaml's params keys per stage against what its command read (MIMREPRO_PARAMS_LOG).
    A stage that reads a section it does not list would not rerun when that section changes."""
    dst, env = repo
    stages = set(sh(["dvc", "stage", "list", "--name-only"], dst, env).stdout.split())
    read: dict[str, set[str]] = {}
    for line in (dst / "params-read.log").read_text().splitlines():
        argv, section = line.split("\t")
        read.setdefault(f"mimrepro {argv}", set()).add(section.split(".")[0])
    assert read, "no command logged the params it read"
    for name, st in lock(dst).items():
        if name not in stages:
            continue  # the committed dvc.lock may still hold stages of an older dvc.yaml
        declared = {k.split(".")[0] for keys in st.get("params", {}).values() for k in keys}
        got = read.get(st["cmd"], set())  # a stage that reads no params section logs nothing
        if any(d["path"].startswith("params/") for d in st.get("deps", [])):
            continue  # check-params: the whole params file is its dependency
        assert got - {"run"} == declared - {"run"}, (name, sorted(got), sorted(declared))
        assert "run" not in declared or "run" in got, name  # run: only its result keys are listed (test_dvc_yaml)


def test_experiments_hold_every_number_and_apply_cleanly(repo):
    """Issue 13: two `dvc exp run`s (the baseline and a changed student param); `dvc exp show` has every
    table number of both, `mimrepro diff` names exactly the moved cells and the param, and after
    `dvc exp apply` of either the workspace is that experiment's, with nothing left to rerun."""
    dst, env = repo
    if not (dst / "data" / "manifest.json").is_file():  # run alone
        sh(["dvc", "repro"], dst, env)
    sh(["git", "add", "-A"], dst, env)
    sh(["git", "commit", "-qm", "micro baseline"], dst, env)  # metrics/ and results/ are committed
    sh(["dvc", "exp", "run", "-n", "base"], dst, env)
    sh(["dvc", "exp", "run", "-n", "mr06", "-S", "params/micro.yaml:mae.model.mask_ratio=0.6"], dst, env)

    def values(rev: str) -> dict[str, float]:
        return json.loads(sh(["git", "show", f"{rev}:results/results.json"], dst, env).stdout)

    refs = dict(line.split()[::-1] for line in sh(["git", "show-ref"], dst, env).stdout.splitlines() if "refs/exps/" in line)
    ref = {name.rsplit("/", 1)[1]: name for name in refs}
    base, mr06 = values(ref["base"]), values(ref["mr06"])
    assert base == values("HEAD") and base.keys() == mr06.keys() and len(base) >= 30
    moved = sorted(k for k in base if base[k] != mr06[k])
    # MAE's cells and those of what learns from MAE's encoder (the mae_vit teacher, its Img2Vec student)
    assert moved and all(k.split("/")[1] in ("mae", "mae_vit", "img2vec-mae_vit") for k in moved), moved

    show = json.loads(sh(["dvc", "exp", "show", "--json"], dst, env).stdout)
    exps = {e["name"]: e for b in show for x in (b.get("experiments") or []) for e in x["revs"]}
    for name, expect in (("base", base), ("mr06", mr06)):
        got = exps[name]["data"]["metrics"]["results/results.json"]["data"]
        assert got == expect, name

    out = sh(["mimrepro", "diff", "base", "mr06"], dst, env).stdout
    listed = sorted(ln.split()[0] for ln in out.splitlines() if ln.rstrip().endswith("*"))
    assert listed == moved, out
    params = [ln.split() for ln in out.split("params that differ")[1].splitlines()[2:] if ln.strip()]
    assert params == [["mae.model.mask_ratio", "0.75", "0.6", "yes"]], out  # read by the moved cells, via dvc.lock

    for name, expect in (("base", base), ("mr06", mr06), ("base", base)):
        sh(["dvc", "exp", "apply", name], dst, env)
        status = sh(["dvc", "status"], dst, env).stdout
        assert status.split() == [f"{FINGERPRINT}:", "always", "changed"], (name, status)
        assert json.loads((dst / "results/results.json").read_text()) == expect
        mae = json.loads((dst / "metrics/finetune/mae.json").read_text())
        assert mae["top1"] == expect["finetune/mae/top1"], name
    again = sh(["dvc", "repro"], dst, env)
    assert again.stdout.count("Running stage") == 1, again.stdout  # the fingerprint listing only


TOY_METHOD = '''"""toy: predict the mean colour of each masked patch (added by tests/test_pipeline.py)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from mim.data.transforms import pretrain_transform
from mim.decoder import MAEDecoder
from mim.engine import OptimConfig, Task, make_task
from mim.masking import random_mask_ids
from mim.methods import Inputs
from mim.vit import ViTConfig, ViTEncoder


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    mask_ratio: float = 0.5
    decoder_dim: int = 32


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    crop_scale: tuple[float, float] = (0.5, 1.0)


@dataclass(frozen=True, kw_only=True)
class Config:
    model: ModelConfig
    optim: OptimConfig
    data: DataConfig = field(default_factory=DataConfig)


INPUT = None


class MeanColour(nn.Module):
    def __init__(self, enc: ViTConfig, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = ViTEncoder(enc)
        self.decoder = MAEDecoder(enc.embed_dim, enc.grid, cfg.decoder_dim, depth=1, heads=2)
        self.head = nn.Linear(cfg.decoder_dim, enc.in_chans)

    def forward_encoder(self, imgs: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        return self.encoder.forward_features(imgs, ids_keep)  # (N, 1+K, D)

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        return self.head(self.decoder(latent, ids_restore))[:, 1:]  # (N, L, C)

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        target = self.encoder.patchify(imgs).unflatten(-1, (-1, imgs.shape[1])).mean(2)  # (N, L, C)
        return ((pred - target).pow(2).mean(-1) * mask).sum() / mask.sum()

    def forward(self, imgs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        n, length = imgs.shape[0], self.encoder.cfg.num_patches
        ids_keep, mask, ids_restore = random_mask_ids(n, length, self.cfg.mask_ratio, imgs.device)
        loss = self.forward_loss(imgs, self.forward_decoder(self.forward_encoder(imgs, ids_keep), ids_restore), mask)
        return loss, {"mse": loss.detach()}


def task(cfg: Config, inputs: Inputs) -> Task:
    enc = inputs.encoder
    images = inputs.images(pretrain_transform(enc.img_size, cfg.data.crop_scale))
    return make_task(lambda: MeanColour(enc, cfg.model), images, cfg.optim, inputs.run, lambda m, b: m(b[0]))
'''
TOY_PARAMS = """
toy:
  model: {mask_ratio: 0.5, decoder_dim: 32}
  optim: {epochs: 1, batch_size: 8, base_lr: 1.0e-3}
"""
TOY_STUDENT = "      toy: {method: toy, input: data/manifest.json, finetune: finetune}\n"


def test_a_new_method_is_one_file_one_params_section_one_dvc_line(repo):
    dst, env = repo
    if not (dst / "data" / "manifest.json").is_file():  # run alone (the copied dvc.lock is the checkout's)
        sh(["dvc", "repro"], dst, env)  # the pipeline first
    before = lock(dst)
    (dst / "mim/methods/toy.py").write_text(TOY_METHOD)
    with open(dst / "params/micro.yaml", "a") as f:
        f.write(TOY_PARAMS)
    text = (dst / "dvc.yaml").read_text()
    anchor = "      img2vec: {method: img2vec, input: models/teacher/backbone.safetensors, finetune: finetune}\n"
    assert anchor in text
    (dst / "dvc.yaml").write_text(text.replace(anchor, anchor + TOY_STUDENT))
    sh([sys.executable, "scripts/dvc_deps.py", "--check"], dst, env)  # its code is covered as written

    stale = set(json.loads(sh(["dvc", "status", "--json"], dst, env).stdout)) - {FINGERPRINT}
    # check-params reads every section (the new one too); its output stays {"valid": true}, so
    # prepare-data and everything after it do not rerun
    assert stale == {"check-params", "pretrain@toy", "finetune@toy", "probe@toy", "detect@toy", "segment@toy", "tables"}, stale
    sh(["dvc", "repro"], dst, env)
    after = lock(dst)
    assert all(after[name] == st for name, st in before.items() if name not in ("tables", "check-params"))  # nothing else reran
    assert {"pretrain@toy", "finetune@toy", "probe@toy", "detect@toy", "segment@toy"} <= set(after)
    rows = {r.split("|")[1].strip(): [c.strip() for c in r.split("|")[2:-1]]
            for r in (dst / "results/results.md").read_text().splitlines() if r.startswith("| ")}
    assert "toy" in rows, rows.keys()
    header = rows["student"]
    cells = dict(zip(header, rows["toy"]))
    for column in ("embedded 3-class top-1 (fine-tune)", "embedded 3-class linear", "embedded 3-class k-NN",
                   "embedded COCO-layout AP box", "embedded COCO-layout AP mask", "embedded ADE20K-layout mIoU"):
        assert cells[column] not in ("", "not run", "n/a"), (column, cells)
    assert cells["pretrain epochs"] == "1"


def test_an_official_checkpoint_is_one_dvc_line_and_runs_every_downstream_stage(repo):
    """README "Check the downstream stages with official weights": a fake mae_pretrain_vit_base.pth
    (MAE's layout: {"model": timm ViT keys}, random tensors, ViT-Ti width) as a `method: official`
    student is fine-tuned, probed, detected and segmented, with nothing else rerun."""
    import torch
    from timm.models.vision_transformer import VisionTransformer

    dst, env = repo
    if not (dst / "data" / "manifest.json").is_file():
        sh(["dvc", "repro"], dst, env)
    sh(["dvc", "repro"], dst, env)  # whatever an earlier test added is built first
    before = lock(dst)
    torch.manual_seed(0)
    ref = VisionTransformer(img_size=32, patch_size=8, embed_dim=192, depth=2, num_heads=3, num_classes=0)
    (dst / "official").mkdir()
    torch.save({"model": ref.state_dict()}, dst / "official/mae_pretrain_vit_base.pth")
    text = (dst / "dvc.yaml").read_text()
    anchor = "      img2vec: {method: img2vec, input: models/teacher/backbone.safetensors, finetune: finetune}\n"
    line = "      mae_official: {method: official, input: official/mae_pretrain_vit_base.pth, finetune: finetune}\n"
    (dst / "dvc.yaml").write_text(text.replace(anchor, anchor + line))
    sh([sys.executable, "scripts/dvc_deps.py", "--check"], dst, env)

    stale = set(json.loads(sh(["dvc", "status", "--json"], dst, env).stdout)) - {FINGERPRINT}
    # (tables depends on the metrics folders, which change only once these have run)
    assert stale == {"pretrain@mae_official", "finetune@mae_official", "probe@mae_official", "detect@mae_official",
                     "segment@mae_official"}, stale
    sh(["dvc", "repro"], dst, env)
    after = lock(dst)
    assert all(after[name] == st for name, st in before.items() if name != "tables")
    rows = {r.split("|")[1].strip(): [c.strip() for c in r.split("|")[2:-1]]
            for r in (dst / "results/results.md").read_text().splitlines() if r.startswith("| ")}
    cells = dict(zip(rows["student"], rows["mae_official"]))
    for column in ("embedded 3-class top-1 (fine-tune)", "embedded 3-class linear", "embedded 3-class k-NN",
                   "embedded COCO-layout AP box", "embedded COCO-layout AP mask", "embedded ADE20K-layout mIoU"):
        assert cells[column] not in ("", "not run", "n/a"), (column, cells)
