"""LARS (You et al., arXiv 1708.03888): momentum SGD with a per-tensor trust ratio.

MAE's linear probe (facebookresearch/mae util/lars.py) and DINO's ResNet-50 pretraining
(facebookresearch/dino utils.py `LARS`, "to use with convnet and large batches") use the same
rule, both taken from facebookresearch/barlowtwins: for each matrix (ndim > 1),

    d = grad + wd * p;  d *= eta * |p| / |d|  (1 where either norm is 0);  mu = m * mu + d;  p -= lr * mu

and biases and norm parameters (1-D) get plain momentum SGD, no weight decay and no trust ratio.
The two differ only for 0-D parameters (MAE tests `ndim > 1`, DINO `ndim != 1`); neither model
has any, and this class follows MAE.  `weight_decay` and `lr` are read from the param groups at
every step, so the engine's per-step schedules apply.
"""
from __future__ import annotations

from collections.abc import Callable

import torch


class LARS(torch.optim.Optimizer):
    """Trust ratio and weight decay on matrices only; eta (`trust_coefficient`) 0.001 as MAE and DINO."""

    def __init__(self, params, lr: float, weight_decay: float = 0.0, momentum: float = 0.9, trust_coefficient: float = 0.001):  # type: ignore[no-untyped-def]
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, trust_coefficient=trust_coefficient))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> None:  # type: ignore[override]
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                dp = p.grad
                if p.ndim > 1:  # biases and norms: plain momentum SGD
                    dp = dp.add(p, alpha=g["weight_decay"])
                    p_norm, u_norm = torch.norm(p), torch.norm(dp)
                    q = torch.where((p_norm > 0) & (u_norm > 0), g["trust_coefficient"] * p_norm / u_norm, torch.ones_like(p_norm))
                    dp = dp.mul(q)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(g["momentum"]).add_(dp)
                p.add_(mu, alpha=-g["lr"])
