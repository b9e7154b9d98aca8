"""Processes: rank and world size, and the collectives an evaluation needs to give the same number
under torchrun with any world size as in one process.

An evaluation shards its dataset into contiguous, unpadded slices (`shard`: rank r reads items
[r*n//W, (r+1)*n//W)), so no item is counted twice; counts are summed (`all_sum`) and features or
per-item values are gathered back in dataset order (`gather_rows`), so whatever follows (a k-NN, a
linear probe, a mean over images) sees exactly the rows one process would.  Without a process
group every function is the identity.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def shard(n: int) -> range:
    """This process's contiguous slice of n items (every item in exactly one slice, none padded)."""
    r, w = rank(), world_size()
    return range(r * n // w, (r + 1) * n // w)


def all_sum(values: list[int] | list[float], device: torch.device | None = None) -> list[float]:
    """Element-wise sum over processes (float64: integer counts up to 2**53 stay exact)."""
    t = torch.tensor(values, dtype=torch.float64, device=device or _device())
    if active():
        dist.all_reduce(t)
    return t.tolist()


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every process's rows in rank order (their shards in dataset order); rows may differ in number."""
    if not active():
        return x
    dev = _device()  # NCCL gathers CUDA tensors, gloo CPU ones
    local = x.to(dev).contiguous()
    sizes = [torch.zeros(1, dtype=torch.int64, device=dev) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([len(local)], dtype=torch.int64, device=dev))
    counts = [int(s) for s in sizes]
    pad = torch.zeros((max(counts) - len(local), *local.shape[1:]), dtype=local.dtype, device=dev)
    parts = [torch.empty((max(counts), *local.shape[1:]), dtype=local.dtype, device=dev) for _ in counts]
    dist.all_gather(parts, torch.cat([local, pad]))
    return torch.cat([p[:c] for p, c in zip(parts, counts)]).to(x.device)


def broadcast_buffers(model: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every process, before an evaluation: each
    process's last training forward updated its own."""
    if active():
        for b in model.buffers():
            dist.broadcast(b, 0)


def _device() -> torch.device:
    if active() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
