"""Process set-up and training for the stage commands that run the engine (mim/engine.py)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from mim.engine import RunConfig, Task, fit, setup
from mim.files import RunLock
from stages.common import load


def start(params: Path) -> RunConfig:
    """The `run` section, with the process set up by it (threads, torchrun's process group).
    Under a `launch` mode other than local, the command is first handed to its launcher
    (stages/launch.py), whose processes run it; this process then exits with its success."""
    from stages.launch import relaunch

    if relaunch(params):
        sys.exit(0)
    run = load(params, "run", RunConfig)
    setup(run)
    return run


CHECKPOINT = "checkpoint.pt"  # a run folder's resume state (mim.engine.fit)


def fit_in(task: Task, run: RunConfig, run_dir: Path, config: dict[str, Any], desc: str) -> dict[str, float]:
    """`mim.engine.fit` with the checkpoint and the dvclive logs in the run folder, locked (beside it)."""
    return fit(task, run, checkpoint=Path(run_dir) / CHECKPOINT, log_dir=Path(run_dir), config=config, desc=desc,
               lock=RunLock.beside(run_dir))
