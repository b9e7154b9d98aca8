"""How a training stage's command runs: in this process, under torchrun, or as a Slurm job (submitit).

The params section `launch` picks it, per profile; the commands in dvc.yaml stay the same.  A
training command calls `relaunch(params)` first: under `local` it returns False and the command
runs here; otherwise the same command line is handed to PyTorch's launcher (torchrun, one process
per GPU) or submitted to Slurm through submitit (one task per GPU), and this process blocks until
it ends, printing its log, as `dvc repro` needs.  The processes it starts see `LOCAL_RANK`
(torchrun) or `MIMREPRO_WORKER` (Slurm) and run the command themselves.

`launch` is how a stage runs, never what it produces (the global batch, the data order and each
image's augmentation are the same under any number of processes: mim/data/loaders.py), so no stage
depends on it and switching it reruns nothing.  A stop signal (SIGTERM, SIGUSR1, or the SIGUSR2
submitit asks Slurm to send `signal_delay_s` before the time limit or a preemption) makes the
engine checkpoint and exit; under Slurm the job is then requeued (submitit's checkpointing,
`SlurmTask.checkpoint`) and resumes from the run folder.
"""
from __future__ import annotations

import importlib
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mim.config import NonNegInt, PosInt
from mim.errors import MimError

WORKER = "MIMREPRO_WORKER"  # set in the processes a launcher started: they run the command, never relaunch it


@dataclass(frozen=True, kw_only=True)
class TorchrunConfig:
    """`torchrun` (torch.distributed.run) on this machine: one process per GPU."""

    nproc_per_node: PosInt = 1
    nnodes: PosInt = 1  # more than 1: run the same `dvc repro` on every node (or use mode slurm)
    rdzv_endpoint: str = ""  # host:port of the rendezvous, required with nnodes > 1
    rdzv_id: str = "mimrepro"
    max_restarts: NonNegInt = 0

    def problems(self) -> list[tuple[str, str]]:
        if self.nnodes > 1 and not self.rdzv_endpoint:
            return [("rdzv_endpoint", f"is required with nnodes {self.nnodes} (host:port of the rendezvous node)")]
        return []


@dataclass(frozen=True, kw_only=True)
class SlurmConfig:
    """A Slurm job through submitit: `nodes` x `gpus_per_node` tasks, one GPU each."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    nodes: PosInt = 1
    gpus_per_node: PosInt = 8
    cpus_per_task: PosInt = 10  # loader workers per GPU: set run.num_workers to match
    mem_gb: PosInt | None = None
    time_min: PosInt = 4320  # the job's time limit; a longer stage is requeued and resumes
    signal_delay_s: PosInt = 120  # SIGUSR2 this long before the limit: the engine checkpoints and the job requeues
    max_requeues: NonNegInt = 3  # submitit's timeout countdown (preemptions do not count)
    folder: str = "runs/slurm"  # submitit's job files and each task's log
    setup: tuple[str, ...] = ()  # shell lines run before the job (e.g. "module load cuda/12.4")
    poll_s: PosInt = 5  # how often the command prints the job's new log lines


@dataclass(frozen=True, kw_only=True)
class LaunchConfig:
    """The `launch` params section."""

    mode: Literal["local", "torchrun", "slurm"] = "local"
    torchrun: TorchrunConfig = field(default_factory=TorchrunConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)


def read_launch(params: Path) -> LaunchConfig:
    """The `launch` section of a params file (absent: local).  Read without the params log of
    stages/common.py `section`: it is not a dependency of any stage (module docstring)."""
    from mim.config import from_dict
    from stages.common import read_yaml

    data = read_yaml(params).get("launch", {})
    return from_dict(LaunchConfig, data or {}, where=f"{params}: launch")


def is_worker() -> bool:
    return bool(os.environ.get(WORKER)) or "LOCAL_RANK" in os.environ


def relaunch(params: Path, argv: list[str] | None = None) -> bool:
    """Run this command under the profile's launcher; False (nothing done) when it runs here."""
    if is_worker():
        return False
    cfg = read_launch(params)
    if cfg.mode == "local":
        return False
    args = list(sys.argv[1:] if argv is None else argv)  # the subcommand and its options, as given
    if cfg.mode == "torchrun":
        run_torchrun(cfg.torchrun, args)
    else:
        run_slurm(cfg.slurm, args)
    return True


# --- torchrun ------------------------------------------------------------------------------------
def torchrun_command(cfg: TorchrunConfig, args: list[str]) -> list[str]:
    """The torchrun command line that does what `run_torchrun` does (printed for the user)."""
    cmd = ["torchrun", f"--nproc-per-node={cfg.nproc_per_node}", f"--max-restarts={cfg.max_restarts}"]
    if cfg.nnodes == 1:
        cmd.append("--standalone")
    else:
        cmd += [f"--nnodes={cfg.nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={cfg.rdzv_endpoint}", f"--rdzv-id={cfg.rdzv_id}"]
    return [*cmd, "-m", "stages.cli", *args]


def run_torchrun(cfg: TorchrunConfig, args: list[str]) -> None:
    """PyTorch's launcher (torch.distributed.run's elastic agent), called as an API: its command-line
    parser would take the stage's own options (`--run`) for abbreviations of its own."""
    import uuid

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig as ElasticConfig
    from torch.distributed.launcher.api import elastic_launch

    print(f"launch: {shlex.join(torchrun_command(cfg, args))}", file=sys.stderr, flush=True)
    standalone = cfg.nnodes == 1
    config = ElasticConfig(min_nodes=cfg.nnodes, max_nodes=cfg.nnodes, nproc_per_node=cfg.nproc_per_node,
                           rdzv_backend="c10d", rdzv_endpoint="localhost:0" if standalone else cfg.rdzv_endpoint,
                           run_id=str(uuid.uuid4()) if standalone else cfg.rdzv_id, max_restarts=cfg.max_restarts)
    os.environ[WORKER] = "1"  # the processes it starts inherit the environment
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // cfg.nproc_per_node)))
    try:
        elastic_launch(config, sys.executable)("-m", "stages.cli", *args)
    except ChildFailedError as e:
        _, first = e.get_first_failure()  # the others were stopped by the launcher after it
        raise MimError(f"{args[0]} under torchrun ({cfg.nproc_per_node} processes) exited with status {first.exitcode}; "
                       "its output is above") from None
    finally:
        del os.environ[WORKER]


# --- Slurm (submitit) ----------------------------------------------------------------------------
class SlurmTask:
    """What each Slurm task runs: the stage command, in this repository, as one rank of the job.
    submitit calls `checkpoint` on SIGUSR2 (after the engine saved): requeue the same command."""

    def __init__(self, args: list[str], cwd: str) -> None:
        self.args, self.cwd = args, cwd

    def __call__(self) -> int:
        import submitit

        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        os.environ[WORKER] = "1"
        os.chdir(self.cwd)
        # By name: the command it runs is the stage's own (its dependency already); a static import
        # would make every stage depend on every command (scripts/dvc_deps.py follows imports).
        main = importlib.import_module("stages.cli").main
        try:
            main(self.args, standalone_mode=False)
        except SystemExit as e:  # click's exit on an error it printed
            if e.code:
                raise
        return 0

    def checkpoint(self) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(SlurmTask(self.args, self.cwd))


def slurm_executor(cfg: SlurmConfig, name: str, cluster: str | None = None) -> Any:
    """submitit's executor for the job (`cluster`: None = Slurm when sbatch exists; "local"/"debug" in tests)."""
    import submitit

    ex = submitit.AutoExecutor(folder=cfg.folder, cluster=cluster, slurm_max_num_timeout=cfg.max_requeues)
    params: dict[str, Any] = dict(name=name, nodes=cfg.nodes, tasks_per_node=cfg.gpus_per_node, gpus_per_node=cfg.gpus_per_node,
                                  cpus_per_task=cfg.cpus_per_task, timeout_min=cfg.time_min)
    if ex.cluster == "slurm":
        slurm = dict(slurm_partition=cfg.partition, slurm_account=cfg.account, slurm_qos=cfg.qos, slurm_constraint=cfg.constraint,
                     slurm_signal_delay_s=cfg.signal_delay_s, slurm_setup=list(cfg.setup))
        params.update({k: v for k, v in slurm.items() if v not in (None, [])})
        if cfg.mem_gb:
            params["mem_gb"] = cfg.mem_gb
    ex.update_parameters(**params)
    return ex


def run_slurm(cfg: SlurmConfig, args: list[str], cluster: str | None = None) -> None:
    """Submit the command as one job and block until it ends, printing rank 0's log as it grows."""
    ex = slurm_executor(cfg, f"mimrepro-{args[0]}", cluster)
    job = ex.submit(SlurmTask(args, os.getcwd()))
    print(f"launch: {ex.cluster} job {job.job_id} ({cfg.nodes} x {cfg.gpus_per_node} tasks), logs in {cfg.folder}",
          file=sys.stderr, flush=True)
    logs = [Path(job.paths.stdout), Path(job.paths.stderr)]
    offsets = [0, 0]
    while True:
        done = job.done()
        for i, log in enumerate(logs):
            if log.is_file():
                with open(log, "rb") as f:
                    f.seek(offsets[i])
                    chunk = f.read()
                offsets[i] += len(chunk)
                (sys.stdout if i == 0 else sys.stderr).write(chunk.decode(errors="replace"))
        if done:
            break
        time.sleep(cfg.poll_s)
    try:
        job.results()  # every task's (one per GPU)
    except Exception as e:  # submitit's FailedJobError carries the task's traceback: its last line says why
        last = [line for line in str(e).splitlines() if line.strip()][-1:] or [type(e).__name__]
        raise MimError(f"{args[0]}: {ex.cluster} job {job.job_id} failed: {last[0].strip()} (logs: {logs[1]})") from None
