"""The training loop shared by every stage: set-up, schedules, AMP, accumulation, checkpoint/resume, logs.

A method builds a `Task` with `make_task` (the set-up every method shares: the batch check,
the deterministic per-epoch loader, weight-decay groups, seeding before the model is built)
and the stage hands it to `fit`, which owns the rest so every stage resumes the same way:

* the checkpoint (state_dicts + the resolved config as plain data) is written atomically at
  the end of every epoch; it loads with `torch.load(weights_only=True)`;
* on start, a checkpoint whose config equals the current one is resumed from the next
  epoch; one with another config is ignored (and replaced), so a changed param never mixes
  two runs;
* every epoch reseeds torch from (seed, epoch) and the loader is seeded from the epoch too,
  so a run killed at any point and resumed ends with the same weights as an uninterrupted one.
"""
from __future__ import annotations

import collections
import contextlib
import hashlib
import math
import os
import signal
import statistics
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset

from mim.checkpoint import load_checkpoint, save_checkpoint
from mim.config import Betas, Check, Momentum, NonNegFloat, NonNegInt, PosFloat, PosInt
from mim.data.device import to_device
from mim.data.loaders import TrainLoader, seed_everything, step_seed
from mim.dist import all_sum, is_main, rank, world_size
from mim.errors import MimError
from mim.files import RunLock, atomic_write, write_json
from mim.lars import LARS
from mim.param_groups import weight_decay_groups
from mim.schedules import Budget, cosine_schedule, length_problems, resolve


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """Optimizer and schedule.  lr = base_lr * effective_batch / 256 (MAE/DINO convention).

    The run's length is `epochs` or `steps` (optimizer steps), exactly one; the warm-up
    `warmup_epochs` or `warmup_steps` (neither: none).  `budget` resolves them against the data
    (mim/schedules.py): the schedules span the total steps either way."""

    epochs: PosInt | None = None  # passes over the data: the cost grows with the dataset
    steps: PosInt | None = None  # optimizer steps: the cost stays put; the last epoch is cut short
    batch_size: PosInt  # images per optimizer step (the global batch), summed over processes and accumulation steps
    base_lr: PosFloat
    optimizer: Literal["adamw", "sgd", "lars"] = "adamw"  # lars: mim/lars.py (DINO's ResNet-50 recipe)
    min_lr: NonNegFloat = 0.0
    warmup_epochs: NonNegFloat | None = None  # linear warm-up in epochs, or
    warmup_steps: NonNegInt | None = None  # in optimizer steps (at most one; neither = no warm-up)
    weight_decay: NonNegFloat = 0.05
    weight_decay_end: NonNegFloat | None = None  # cosine wd schedule (DINO); None = constant
    betas: Betas = (0.9, 0.95)
    momentum: Momentum = 0.9  # SGD and LARS
    clip_grad: PosFloat | None = None  # None = no clipping
    clip_mode: Literal["global", "per_param"] = "global"  # global: the norm of all gradients together (torch
    # clip_grad_norm_); per_param: each parameter's gradient norm on its own (DINO utils.py clip_gradients)

    def problems(self) -> list[tuple[str, str]]:
        return length_problems(self.epochs, self.steps, self.warmup_epochs, self.warmup_steps)

    def budget(self, steps_per_epoch: int) -> Budget:
        """Epochs, total and warm-up steps when an epoch is `steps_per_epoch` optimizer steps (Task.steps_per_epoch)."""
        return resolve(max(1, steps_per_epoch), epochs=self.epochs, steps=self.steps,
                       warmup_epochs=self.warmup_epochs, warmup_steps=self.warmup_steps)


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """How a run executes: the `run` params section.

    `seed` and `amp` (bf16 on CUDA) change what a training stage produces, so training stages
    depend on them in dvc.yaml; `threads`, `num_workers` (augmentation is seeded per image,
    mim/data/loaders.py), `device_batch`, `log_every`, `checkpoint_every` and `compile` only change how it runs
    (`device_batch` sets the accumulation steps: a model with BatchNorm then normalises over fewer
    images per forward, as it does on fewer GPUs).
    """

    seed: NonNegInt = 0
    num_workers: NonNegInt = 0
    amp: bool = True  # bf16 autocast on CUDA; CPU runs stay in fp32 for determinism
    threads: NonNegInt = 0  # torch CPU threads; 0 = leave torch's default
    divergence: Annotated[float, Check(lambda k: k == 0 or k > 1, "must be 0 (off) or above 1")] = 0.0  # stop when the
    # loss exceeds this many times its running median (a diverging run); 0 = off. Changes no result it lets finish.
    device_batch: NonNegInt = 0  # most images per process in one forward; the global batch is kept by accumulating
    # batch_size / (processes x device_batch) micro-steps (rounded up to a divisor); 0 = no limit (no accumulation)
    log_every: PosInt = 1  # optimizer steps between host syncs: loss check, divergence guard, progress, preemption
    checkpoint_every: PosInt = 1  # epochs between resume checkpoints (the last epoch and a stop signal always write one)
    compile: bool = False  # torch.compile the training step's model (kernel fusion: the same math, rounded differently)


Batch = Any
StepFn = Callable[[nn.Module, Batch], tuple[torch.Tensor, dict[str, "torch.Tensor | float"]]]


@dataclass
class Task:
    """What a method hands the engine.  `optim` None: nothing to train (the model is used as built)."""

    model: nn.Module
    optim: OptimConfig | None
    step: StepFn | None = None
    # (epoch, start, stop) -> this process's micro-batches of optimizer steps [start, stop) of the epoch
    # (stop None: to its end); deterministic given the epoch (mim/data/loaders.py TrainLoader)
    loader: Callable[[int, int, int | None], Iterable[Batch]] | None = None
    steps_per_epoch: int = 0  # optimizer steps in an epoch (global batches in the data: the same on any world size)
    accum_steps: int = 1  # micro-batches per optimizer step on each process (mim.engine.accumulation)
    param_groups: list[dict[str, Any]] = field(default_factory=list)  # may carry "lr_scale" and "weight_decay"
    on_epoch: Callable[[int], None] | None = None  # called with the epoch before its loader is made
    after_step: Callable[[int], None] | None = None  # called with the optimizer step index
    evaluate: Callable[[int], dict[str, float]] | None = None  # epoch -> metrics (on every process: it may gather)
    extra_state: dict[str, Any] = field(default_factory=dict)  # objects with state_dict()
    info: dict[str, str] = field(default_factory=dict)  # facts about the run, recorded with its outputs

    @property
    def micro_batch(self) -> int:
        """Images in one forward on each process: the global batch over processes and micro-steps."""
        if self.optim is None:
            raise MimError("the task has no optimizer: nothing to train")
        return self.optim.batch_size // (world_size() * self.accum_steps)

    @property
    def budget(self) -> Budget:
        """The run's epochs and optimizer steps on this data (what `fit` runs)."""
        if self.optim is None:
            raise MimError("the task has no optimizer: nothing to train")
        return self.optim.budget(self.steps_per_epoch)


def scaled_lr(cfg: OptimConfig) -> float:
    return cfg.base_lr * cfg.batch_size / 256  # the global batch, whatever the processes and accumulation


# --- processes, threads, randomness ---------------------------------------------------------
def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def setup(run: RunConfig, process_group: bool = True) -> None:
    """Once per process, before any work: CPU threads, and (unless a launcher of another library
    does it, as detectron2's does) the process group under torchrun."""
    if run.threads:
        torch.set_num_threads(run.threads)
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True  # fixed input sizes: pick the fastest convolution once (DINO's ResNet)
    if process_group and int(os.environ.get("WORLD_SIZE", 1)) > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(device())
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


# --- building a task --------------------------------------------------------------------------
def accumulation(global_batch: int, device_batch: int = 0, processes: int | None = None) -> int:
    """Micro-steps per optimizer step so that each process's forward holds at most `device_batch`
    images (0: no limit) and processes x micro-steps x per-forward = global_batch exactly."""
    w = world_size() if processes is None else processes
    if global_batch % w:
        raise MimError(f"batch_size {global_batch} does not split over {w} processes; choose a multiple of {w}")
    per = global_batch // w
    if not device_batch or per <= device_batch:
        return 1
    return next(a for a in range(math.ceil(per / device_batch), per + 1) if per % a == 0)


def make_task(
    build: Callable[[], nn.Module],
    dataset: Dataset,
    optim: OptimConfig,
    run: RunConfig,
    step: StepFn,
    *,
    collate_fn: Callable[..., Any] | None = None,
    param_groups: Callable[[nn.Module], list[dict[str, Any]]] | None = None,
    no_decay: Iterable[str] = (),
) -> Task:
    """The set-up every method shares.

    Checks that `dataset` holds at least one optimizer step, seeds every generator with
    `run.seed` and calls `build()` (so the initial weights depend on the seed only), and makes
    the deterministic per-epoch loader.  Param groups: `param_groups(model)`, or by default
    weight decay on matrices only, with the parameters named in `no_decay` undecayed too.
    """
    accum = accumulation(optim.batch_size, run.device_batch)
    steps = len(dataset) // optim.batch_size  # type: ignore[arg-type]
    if steps < 1:
        where = getattr(dataset, "root", "the dataset")
        raise MimError(
            f"{where} has {len(dataset)} images, fewer than one optimizer step of {optim.batch_size}; lower batch_size"  # type: ignore[arg-type]
        )
    seed_everything(run.seed)
    model = build()

    loader = TrainLoader(dataset, optim.batch_size, accum, seed=run.seed, num_workers=run.num_workers, collate_fn=collate_fn)
    groups = param_groups(model) if param_groups else weight_decay_groups(model, optim.weight_decay, no_decay)
    return Task(model, optim, step, loader, steps, accum, groups)


# --- training ---------------------------------------------------------------------------------
def fit(task: Task, run: RunConfig, *, checkpoint: Path, log_dir: Path, config: dict[str, Any], desc: str,
        lock: RunLock | None = None) -> dict[str, float]:
    """Train `task` for its budget (task.optim's epochs or steps); returns the last epoch's metrics.

    The run's state is held with `lock` (default: a lock file beside the checkpoint) while it trains,
    so a second run of the same stage refuses instead of writing the same checkpoint."""
    if task.optim is None or task.step is None or task.loader is None:
        raise MimError(f"{desc}: nothing to train (the task has no optimizer, step or loader)")
    lock = lock or RunLock(Path(checkpoint).with_name(Path(checkpoint).name + ".lock"))
    with lock if is_main() else contextlib.nullcontext():
        return _fit(task, run, Path(checkpoint), Path(log_dir), config, desc)


def _fit(task: Task, run: RunConfig, checkpoint: Path, log_dir: Path, config: dict[str, Any], desc: str) -> dict[str, float]:
    optim = task.optim
    assert optim is not None and task.step is not None and task.loader is not None
    dev = device()
    model = task.model.to(dev)
    ddp: nn.parallel.DistributedDataParallel | None = None
    if dist.is_initialized():
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=[dev] if dev.type == "cuda" else None)
    train_model: nn.Module = ddp or model
    if run.compile:  # after DDP, so its bucketed all-reduce stays outside the graphs (DDPOptimizer)
        train_model = torch.compile(train_model)
    accum = task.accum_steps

    opt = _make_optimizer(task.param_groups, optim, fused=dev.type == "cuda")
    budget = task.budget  # epochs, or steps: the last epoch stops at the budget
    updates_per_epoch, total, epochs = budget.steps_per_epoch, budget.total_steps, budget.epochs
    lr_sched = cosine_schedule(scaled_lr(optim), optim.min_lr, total, budget.warmup_steps)
    wd_end = optim.weight_decay if optim.weight_decay_end is None else optim.weight_decay_end
    wd_sched = cosine_schedule(optim.weight_decay, wd_end, total, 0)

    # Resume only the same run: same config, same library code, same dataset manifest. DVC reruns a
    # stage when its code or data change; a finished checkpoint of the old run must not be reused then.
    # The world size is not part of it: the global batch, the data order and the per-image
    # augmentation are the same under any number of processes (mim/data/loaders.py).
    config = {**config, "fingerprint": inputs_fingerprint()}
    start_epoch, start_step = 0, 0
    partial: dict[str, Any] | None = None
    hint = "it is this run's resume checkpoint: move it away (or delete it) to start the run afresh"
    state = load_checkpoint(checkpoint, hint) if checkpoint.is_file() else None
    if state is not None and state.get("config") == config and state["epoch"] + 1 <= epochs:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        for name, obj in task.extra_state.items():
            obj.load_state_dict(state["extra"][name])
        start_epoch = state["epoch"] + 1
        partial = state.get("partial")
        if partial is not None and partial["epoch"] == start_epoch and start_epoch < epochs:
            start_step = int(partial["step"])
            _say(f"{desc}: resuming from {checkpoint} at epoch {start_epoch + 1}/{epochs}, "
                 f"step {start_step}/{budget.steps_in(start_epoch)}")
        else:
            partial = None
            _say(f"{desc}: resuming from {checkpoint} after epoch {start_epoch}/{epochs}")
    elif state is not None:
        _say(f"{desc}: {checkpoint} holds another config; starting afresh")

    if world_size() > 1 or accum > 1:
        _say(f"{desc}: global batch {optim.batch_size} = {world_size()} processes x {accum} micro-steps x "
             f"{task.micro_batch} images")
    if start_epoch > 0 and is_main():
        rollback_logs(log_dir, start_epoch - 1, state.get("metrics", {}) if state else {})
    live = _live(log_dir, resume=start_epoch > 0)
    if live is not None:
        live.step = start_epoch  # dvclive resumes a summary of step 0 at step 0 again (its "nothing logged yet")
    metrics: dict[str, float] = dict(state.get("metrics", {})) if start_epoch > 0 and state else {}
    use_amp = run.amp and dev.type == "cuda"
    guard = DivergenceGuard(run.divergence)
    last_good = f"the checkpoint of epoch {start_epoch} is kept" if start_epoch else "no checkpoint was written"

    def snapshot(epoch: int, extra: dict[str, Any]) -> dict[str, Any]:
        return {"model": model.state_dict(), "optimizer": opt.state_dict(),
                "extra": {k: v.state_dict() for k, v in task.extra_state.items()},
                "epoch": epoch, "config": config, "metrics": metrics, **extra}

    with StopSignal() as stop:
        for epoch in range(start_epoch, epochs):
            n_steps = budget.steps_in(epoch)  # optimizer steps: fewer in a step budget's last epoch
            first = start_step if epoch == start_epoch else 0
            model.train()
            sums: dict[str, torch.Tensor] = {}
            n = 0
            if epoch == start_epoch and partial is not None:
                sums, n = {k: v.to(dev) for k, v in partial["sums"].items()}, int(partial["n"])
            if task.on_epoch is not None:
                task.on_epoch(epoch)
            progress = _progress(task.loader(epoch, first, n_steps), total=(n_steps - first) * accum,
                                 desc=f"{desc} {epoch + 1}/{epochs}")
            batches = iter(progress)  # no batch drawn past the budget (nor its augmentation)
            pending: list[torch.Tensor] = []  # losses since the last host sync
            for k in range(first, n_steps):
                it = epoch * updates_per_epoch + k
                for m in range(accum):
                    batch = next(batches)
                    seed_everything(step_seed(run.seed, epoch, k, m, rank()))  # after the loader drew (its items seed it)
                    sync = m + 1 == accum  # DDP all-reduces the gradients on the last micro-step only
                    with ddp.no_sync() if ddp is not None and not sync else contextlib.nullcontext():
                        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp):
                            loss, logs = task.step(train_model, to_device(batch, dev))  # uint8 images normalised there
                        (loss / accum).backward()
                    pending.append(loss.detach().float())
                    for key, v in {"loss": loss, **logs}.items():
                        v = v.detach().float() if isinstance(v, torch.Tensor) else torch.tensor(float(v), device=dev)
                        sums[key] = sums[key] + v if key in sums else v
                    n += 1
                for g in opt.param_groups:
                    g["lr"] = float(lr_sched[it]) * g.get("lr_scale", 1.0)
                    g["weight_decay"] = float(wd_sched[it]) * g["wd_scale"]
                if optim.clip_grad:
                    clip_gradients(model, optim.clip_grad, optim.clip_mode)
                opt.step()
                opt.zero_grad(set_to_none=True)
                if task.after_step is not None:
                    task.after_step(it)
                if (k + 1) % run.log_every and k + 1 != n_steps:
                    continue
                # the host sync of the log interval: every loss since the last one, checked in order
                for j, value in enumerate(torch.stack(pending).tolist()):
                    i = n - len(pending) + j  # the micro-batch's index in the epoch
                    if not math.isfinite(value):
                        raise MimError(f"{desc}: loss is {value} at epoch {epoch + 1}, batch {i}; {last_good}. "
                                       "Lower the lr or check the data")
                    if guard.diverged(value):
                        raise MimError(f"{desc}: loss {value:.3g} at epoch {epoch + 1}, batch {i} is over {run.divergence:g}x its "
                                       f"running median {guard.median:.3g} (run.divergence); {last_good}. Lower the lr")
                pending.clear()
                if hasattr(progress, "set_postfix"):
                    progress.set_postfix(loss=f"{value:.4f}", lr=f"{lr_sched[it]:.2e}", refresh=False)  # mininterval governs
                if stop.requested() and k + 1 < n_steps:  # a stop at an epoch's end is the epoch checkpoint's
                    state = snapshot(epoch - 1, {"partial": {"epoch": epoch, "step": k + 1, "n": n,
                                                            "sums": {key: v.cpu() for key, v in sums.items()}}})
                    _save(state, checkpoint, desc, f"at epoch {epoch + 1}, step {k + 1}", last_good)
                    stop.exit(f"{desc}: stopped by {stop.name} at epoch {epoch + 1}, step {k + 1}/{n_steps}; {checkpoint} "
                              "holds the run: rerun the stage (`dvc repro`) to resume it")
            keys = sorted(sums)
            totals = all_sum([float(sums[key]) for key in keys] + [n])  # over every process's micro-batches
            metrics = {f"train/{key}": v / max(totals[-1], 1) for key, v in zip(keys, totals)}
            metrics["lr"] = float(lr_sched[min((epoch + 1) * updates_per_epoch, total) - 1])
            if task.evaluate is not None:
                metrics.update(task.evaluate(epoch))
            if live is not None:
                for key, v in metrics.items():
                    live.log_metric(key, v)
                live.next_step()
            if (epoch + 1) % run.checkpoint_every == 0 or epoch + 1 == epochs or stop.requested():
                _save(snapshot(epoch, {}), checkpoint, desc, f"after epoch {epoch + 1}", last_good)
                last_good = f"the checkpoint of epoch {epoch + 1} is kept"
                if stop.requested() and epoch + 1 < epochs:
                    stop.exit(f"{desc}: stopped by {stop.name} after epoch {epoch + 1}; {checkpoint} holds the run: "
                              "rerun the stage (`dvc repro`) to resume it")
    if live is not None:
        live.end()
    return metrics


def _save(state: dict[str, Any], checkpoint: Path, desc: str, where: str, last_good: str) -> None:
    bad = non_finite(state)
    if bad:  # never saved: the checkpoint on disk stays the last good one
        raise MimError(f"{desc}: {len(bad)} tensors are not finite {where} (e.g. {', '.join(bad[:3])}); "
                       f"{last_good}. Lower the lr or set optim.clip_grad")
    if is_main():
        save_checkpoint(checkpoint, state)


class Stopped(MimError):
    """A stop signal (SIGTERM, SIGUSR1, SIGUSR2: a scheduler's preemption or time limit) ended the run after a checkpoint."""


class StopSignal:
    """While training: SIGTERM, SIGUSR1 and SIGUSR2 set a flag the loop reads at its next host sync
    (every `run.log_every` steps), where every process agrees on it (an all-reduce), writes the
    checkpoint and stops.  Whatever handled the signal before (submitit's requeue, on the SIGUSR2 it
    asks Slurm for) runs after that."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)

    def __init__(self) -> None:
        self.received: int | None = None
        self.previous: dict[int, Any] = {}
        self.agreed = False

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: object) -> None:
        self.received = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received else "a signal"

    def requested(self) -> bool:
        if not self.agreed:
            flag = all_sum([1.0 if self.received is not None else 0.0])[0] if dist.is_initialized() else float(self.received is not None)
            self.agreed = flag > 0
            if self.agreed and self.received is None:
                self.received = signal.SIGTERM  # another process received it
        return self.agreed

    def exit(self, message: str) -> None:
        _say(message)
        previous = self.previous.get(self.received or 0)
        self.__exit__()
        if callable(previous):  # e.g. submitit's handler: requeue the job, then exit
            previous(self.received, None)
        raise Stopped(message)


LIBRARY = Path(__file__).parent  # mim/
PACKAGES = (LIBRARY, LIBRARY.parent / "downstream")  # the code a run's result depends on


def loaded_code(packages: Iterable[Path] = PACKAGES) -> list[Path]:
    """The library files this process has imported: the code the stage runs, and no more."""
    roots = [Path(p).resolve() for p in packages]
    files = {Path(m.__file__).resolve() for m in list(sys.modules.values()) if getattr(m, "__file__", None)}
    return sorted(f for f in files if f.suffix == ".py" and any(r in f.parents for r in roots))


def inputs_fingerprint(manifest: Path = Path("data/manifest.json"), code: Iterable[Path] | None = None) -> str:
    """sha256 of the code the run has imported (mim/ and downstream/ files in sys.modules, or `code`)
    and of the dataset manifest: editing the tables' code does not restart an interrupted pretraining,
    editing the engine does."""
    h = hashlib.sha256()
    for src in sorted(Path(p) for p in (loaded_code() if code is None else code)):
        rel = src.resolve().relative_to(LIBRARY.parent.resolve()) if LIBRARY.parent.resolve() in src.resolve().parents else src
        h.update(Path(rel).as_posix().encode() + b"\0" + src.read_bytes())
    if manifest.is_file():
        h.update(manifest.read_bytes())
    return h.hexdigest()[:16]


class DivergenceGuard:
    """Flags a loss above `factor` times the median of the last `window` losses (after `warmup` steps)."""

    def __init__(self, factor: float, window: int = 200, warmup: int = 20) -> None:
        self.factor, self.warmup = factor, warmup
        self.losses: collections.deque[float] = collections.deque(maxlen=window)
        self.median = float("nan")

    def diverged(self, loss: float) -> bool:
        if self.factor <= 0:
            return False
        if len(self.losses) >= self.warmup:
            self.median = statistics.median(self.losses)
            if self.median > 0 and loss > self.factor * self.median:
                return True
        self.losses.append(loss)
        return False


def require_finite(x: torch.Tensor, what: str) -> torch.Tensor:
    """`x`, or a one-line error when it holds NaN or Inf (an evaluation never reports a number from those)."""
    if not bool(torch.isfinite(x).all()):
        raise MimError(f"{what} are not finite (NaN or Inf): the model or the data is broken")
    return x


def non_finite(state: Any, prefix: str = "") -> list[str]:
    """Names of the floating-point tensors in a (nested) state that hold NaN or Inf."""
    if isinstance(state, torch.Tensor):
        return [prefix or "tensor"] if state.is_floating_point() and not bool(torch.isfinite(state).all()) else []
    if isinstance(state, dict):
        return [n for k, v in state.items() for n in non_finite(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(state, (list, tuple)):
        return [n for i, v in enumerate(state) for n in non_finite(v, f"{prefix}[{i}]")]
    return []


def clip_gradients(model: nn.Module, clip: float, mode: str = "global") -> None:
    """Scale gradients in place so that their norm is at most `clip`: of all gradients together
    (`global`, torch's clip_grad_norm_), or of each parameter's own (`per_param`: facebookresearch/dino
    utils.py clip_gradients, coefficient clip / (norm + 1e-6) where it is below 1)."""
    if mode == "global":
        nn.utils.clip_grad_norm_(model.parameters(), clip)
        return
    if mode != "per_param":
        raise MimError(f"unknown clip_mode {mode!r}; choose global or per_param")
    for p in model.parameters():
        if p.grad is not None:
            coef = clip / (p.grad.detach().norm(2) + 1e-6)
            p.grad.detach().mul_(coef.clamp(max=1.0))  # no host sync per parameter, unlike DINO's `if clip_coef < 1`


def _make_optimizer(groups: list[dict[str, Any]], cfg: OptimConfig, fused: bool = False) -> torch.optim.Optimizer:
    """`fused`: AdamW's one-kernel CUDA step (torch.optim.AdamW fused=True) instead of its per-tensor loop."""
    for g in groups:  # groups created with weight_decay 0 (norms, biases) stay undecayed
        g.setdefault("wd_scale", 1.0 if g.get("weight_decay", cfg.weight_decay) > 0 else 0.0)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=scaled_lr(cfg), betas=cfg.betas, weight_decay=cfg.weight_decay, fused=fused or None)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=scaled_lr(cfg), momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "lars":  # facebookresearch/dino main_dino.py: utils.LARS for convnets and large batches
        return LARS(groups, lr=scaled_lr(cfg), weight_decay=cfg.weight_decay, momentum=cfg.momentum)
    raise MimError(f"unknown optimizer {cfg.optimizer!r}; choose adamw, sgd or lars")


def rollback_logs(log_dir: Path, step: int, metrics: dict[str, float]) -> None:
    """Make dvclive's files in `log_dir` what they were when the checkpoint of `step` was written.

    dvclive writes its rows and its summary (metrics.json) before the checkpoint is saved, and not
    atomically: a kill in between leaves rows of an epoch that is trained again (dvclive would log
    it one step later), and a kill during its write leaves a half-written summary that dvclive
    cannot resume from.  Rows after `step` and malformed rows go; the summary is rewritten from
    the checkpoint's metrics."""
    log_dir = Path(log_dir)
    summary: dict[str, Any] = {}
    for key, value in metrics.items():
        *parents, leaf = key.split("/")
        node = summary
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    write_json(log_dir / "metrics.json", {**summary, "step": step})
    for tsv in sorted((log_dir / "plots" / "metrics").rglob("*.tsv")):
        lines = tsv.read_text().splitlines()
        if not lines:
            continue
        header, col = lines[0], lines[0].split("\t").index("step") if "step" in lines[0].split("\t") else 0
        keep = [header]
        for line in lines[1:]:
            cells = line.split("\t")
            if len(cells) == len(header.split("\t")) and cells[col].isdigit() and int(cells[col]) <= step:
                keep.append(line)
        text = "\n".join(keep) + "\n"
        atomic_write(tsv, lambda tmp, text=text: tmp.write_text(text))


def _live(log_dir: Path, resume: bool) -> Any:
    if not is_main():
        return None
    from dvclive import Live  # lazy: dvclive imports dvc

    return Live(str(log_dir), resume=resume, save_dvc_exp=False, dvcyaml=None)


def _progress(it: Iterable[Any], total: int, desc: str) -> Iterable[Any]:
    if not is_main():
        return it
    from tqdm import tqdm

    return tqdm(it, total=total, desc=desc, file=sys.stderr, dynamic_ncols=True, leave=False, mininterval=2.0)


def _say(msg: str) -> None:
    if is_main():
        print(msg, file=sys.stderr, flush=True)
