"""Integration: `dvc repro` of the whole DAG on the micro profile in a temp copy of the repo."""
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
        if src.is_file() and not rel.startswith(("results/", "data/")):
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    (dst / "params" / "profile.yaml").write_text("profile: micro\n")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(dst),
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
    }
    sh(["git", "init", "-q"], dst, env)
    sh(["git", "add", "-A"], dst, env)
    sh(["git", "commit", "-qm", "copy"], dst, env)
    return dst, env


def test_repro_runs_every_stage_then_is_a_noop(repo):
    dst, env = repo
    stages = yaml.safe_load((dst / "dvc.yaml").read_text())["stages"]
    assert stages, "dvc.yaml has no stages"
    t0 = time.time()
    sh(["dvc", "repro"], dst, env)
    took = time.time() - t0
    assert (dst / "data" / "manifest.json").is_file()
    manifest = json.loads((dst / "data" / "manifest.json").read_text())
    assert {"imagenet", "coco", "ade20k"} <= set(manifest)
    lock = yaml.safe_load((dst / "dvc.lock").read_text())["stages"]
    expected = set(sh(["dvc", "stage", "list", "--name-only"], dst, env).stdout.split())
    assert len(expected) >= 20, expected  # foreach/matrix stages expanded
    assert expected <= set(lock), f"stages not run: {sorted(expected - set(lock))}"
    print(f"micro dvc repro: {took:.1f}s for {len(lock)} stages")
    again = sh(["dvc", "repro"], dst, env)
    assert "Data and pipelines are up to date" in again.stdout
    st = sh(["dvc", "status"], dst, env)
    assert "up to date" in st.stdout
