"""`launch`: a stage's command run under torchrun or as a Slurm job (stages/launch.py), on CPU.

torchrun: the real launcher with 2 gloo processes.  Slurm: the sbatch script submitit writes for the
configured job (a stand-in `srun` on PATH, no cluster), and the job itself run by submitit's local
executor with 2 tasks, each a rank of the process group.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from imagefolders import make_imagenet
from stages.launch import SlurmConfig, read_launch, run_slurm, slurm_executor

ROOT = Path(__file__).parents[1]
PARAMS = """
run: {seed: 0, num_workers: 0, amp: true, threads: 1}
encoder: {img_size: 32, patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2}
mae:
  model: {mask_ratio: 0.75, decoder_dim: 32, decoder_depth: 1, decoder_heads: 2, norm_pix: true}
  optim: {epochs: 2, batch_size: 4, base_lr: 1.0e-3, warmup_epochs: 1}
"""


def args(data: Path) -> list[str]:
    return ["pretrain-student", "--method", "mae", "--name", "mae", "--data", str(data), "--params", "p.yaml",
            "--out", "models/mae/encoder.safetensors", "--run", "runs/mae"]


def cli(cwd: Path, argv: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("LOCAL_RANK", None)
    return subprocess.run([sys.executable, "-m", "stages.cli", *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_torchrun_runs_the_unchanged_command_in_two_processes(tmp_path):
    data = make_imagenet(tmp_path / "data", classes=2, train=4)
    (tmp_path / "p.yaml").write_text(PARAMS + "launch: {mode: torchrun, torchrun: {nproc_per_node: 2}}\n")
    res = cli(tmp_path, args(data))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "launch: torchrun --nproc-per-node=2 --max-restarts=0 --standalone -m stages.cli pretrain-student" in res.stderr
    assert "pretrain mae: global batch 4 = 2 processes x 1 micro-steps x 2 images" in res.stderr
    assert res.stdout.count("mae: encoder written to") == 1  # rank 0 alone writes
    assert load_file(tmp_path / "models/mae/encoder.safetensors")

    res = cli(tmp_path, [*args(tmp_path / "missing.json")[:-4], "--out", "models/x.safetensors", "--run", "runs/x"])
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1] == ("Error: pretrain-student under torchrun (2 processes) exited with status 1; "
                                                   "its output is above")


def test_the_launch_section_is_checked(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("launch: {mode: srun}\n")
    from mim.errors import ConfigError

    with pytest.raises(ConfigError, match=r"launch\.mode: 'srun' is not one of 'local', 'torchrun', 'slurm'"):
        read_launch(p)
    p.write_text("launch: {mode: torchrun, torchrun: {nnodes: 2}}\n")
    with pytest.raises(ConfigError, match=r"launch\.torchrun\.rdzv_endpoint: is required with nnodes 2"):
        read_launch(p)
    p.write_text("run: {}\n")
    assert read_launch(p).mode == "local"


def test_the_slurm_job_is_the_configured_one(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("srun", "sbatch"):  # submitit looks for them; nothing is submitted
        (bin_dir / tool).write_text("#!/bin/sh\nexit 1\n")
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    cfg = SlurmConfig(partition="gpu", account="lab", nodes=4, gpus_per_node=8, cpus_per_task=12, time_min=600,
                      signal_delay_s=90, setup=("module load cuda/12.4",), folder=str(tmp_path / "slurm"))
    ex = slurm_executor(cfg, "mimrepro-pretrain-student")
    script = ex._executor._make_submission_file_text("CMD", "uid")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --account=lab", "#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=8",
                 "#SBATCH --gpus-per-node=8", "#SBATCH --cpus-per-task=12", "#SBATCH --time=600",
                 "#SBATCH --signal=USR2@90", "module load cuda/12.4", "#SBATCH --job-name=mimrepro-pretrain-student"):
        assert line in script, (line, script)


def test_a_slurm_job_runs_the_stage_as_two_ranks(tmp_path, monkeypatch, capfd):
    """submitit's local executor stands in for Slurm: 2 tasks, the process group from submitit's environment."""
    data = make_imagenet(tmp_path / "data", classes=2, train=4)
    (tmp_path / "p.yaml").write_text(PARAMS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    run_slurm(SlurmConfig(gpus_per_node=2, folder=str(tmp_path / "slurm"), poll_s=1), args(data), cluster="local")
    out, err = capfd.readouterr()
    assert "launch: local job" in err and "(1 x 2 tasks)" in err
    assert "pretrain mae: global batch 4 = 2 processes x 1 micro-steps x 2 images" in out + err  # rank 0's log, streamed
    assert load_file(tmp_path / "models/mae/encoder.safetensors")
