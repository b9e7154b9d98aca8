"""Helpers shared by the benchmark scripts (not a benchmark itself).

* `alternate`: time several step functions in turn, one step each (A, B, A, B, ...), so that load
  from other work on a shared machine falls on every variant alike;
* `pair_ratios` / `fmt_ratio`: the per-pair ratios of two variants, as median and min-max;
* `train_flops`: fwd+bwd FLOPs of a model, counted with torch.utils.flop_counter on the meta
  device (no memory, no compute);
* `section`: a params section of params/<profile>.yaml as its config dataclass (mim.config.from_dict);
* `make_optimizer`: the optimizer an `OptimConfig` names, as mim/engine.py builds it.

The scripts run as `python benchmarks/<name>.py`, which puts this folder on sys.path.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")


def set_threads(n: int) -> int:
    """torch CPU threads (0 = leave torch's default); returns the count in use."""
    if n > 0:
        torch.set_num_threads(n)
    return torch.get_num_threads()


@dataclass
class Timing:
    wall: list[float] = field(default_factory=list)  # seconds per timed step
    cpu: list[float] = field(default_factory=list)  # process CPU seconds (all threads) per timed step

    @property
    def wall_median(self) -> float:
        return statistics.median(self.wall)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu)


def alternate(steps: dict[str, Callable[[], Any]], n: int, warmup: int, sync: Callable[[], None] = lambda: None) -> dict[str, Timing]:
    """`warmup` untimed rounds, then `n` timed rounds; each round runs every step once, in order."""
    for _ in range(warmup):
        for fn in steps.values():
            fn()
            sync()
    out = {k: Timing() for k in steps}
    for _ in range(n):
        for k, fn in steps.items():
            sync()
            t, c = time.perf_counter(), time.process_time()
            fn()
            sync()
            out[k].wall.append(time.perf_counter() - t)
            out[k].cpu.append(time.process_time() - c)
    return out


def pair_ratios(num: Iterable[float], den: Iterable[float]) -> tuple[float, float, float]:
    """(median, min, max) of num[i] / den[i] over the rounds."""
    r = [a / b for a, b in zip(num, den)]
    return statistics.median(r), min(r), max(r)


def fmt_ratio(stats: tuple[float, float, float]) -> str:
    med, lo, hi = stats
    return f"{med:.2f}x (min-max {lo:.2f}-{hi:.2f})"


def train_flops(build: Callable[[], nn.Module], inputs: Callable[[], Any], loss: Callable[[nn.Module, Any], torch.Tensor]) -> float:
    """fwd+bwd FLOPs of loss(build(), inputs()), everything built on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = build()
        x = inputs()
    with FlopCounterMode(display=False) as counter:
        loss(model, x).backward()
    return float(counter.get_total_flops())


def params_file(profile: str) -> dict[str, Any]:
    import yaml

    return yaml.safe_load((ROOT / "params" / f"{profile}.yaml").read_text())


def section(profile: str, name: str, cls: type[T]) -> T:
    """params/<profile>.yaml's section `name` as `cls` (checked as the stages check it)."""
    from mim.config import from_dict

    return from_dict(cls, params_file(profile)[name], where=f"params/{profile}.yaml: {name}")


def make_optimizer(params: Any, cfg: Any) -> torch.optim.Optimizer:
    """The optimizer of an `OptimConfig` at its scaled lr (base_lr x batch / 256), as mim/engine.py makes it."""
    lr = cfg.base_lr * cfg.batch_size / 256
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "lars":
        from mim.lars import LARS

        return LARS(params, lr=lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")


def clip(model: nn.Module, max_norm: float | None, mode: str = "global") -> None:
    """Gradient clipping as the engine does it (global norm, or each parameter's norm: DINO's)."""
    if not max_norm:
        return
    if mode == "global":
        nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        return
    for p in model.parameters():
        if p.grad is not None:
            p.grad.mul_((max_norm / (p.grad.norm(2) + 1e-6)).clamp(max=1.0))


def count_params(model: nn.Module) -> tuple[int, int]:
    """(all parameters, trainable ones)."""
    ps = list(model.parameters())
    return sum(p.numel() for p in ps), sum(p.numel() for p in ps if p.requires_grad)
