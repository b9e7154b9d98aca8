"""BEiT's visual tokenizer trained here: a small VQ-VAE, as a pipeline stage (`mimrepro tokenizer`).

Why a VQ-VAE and not DALL-E's Gumbel-softmax dVAE: the dVAE needs a long temperature anneal
(DALL-E: tau 1 -> 1/16 over 150k updates) before its relaxed training samples match the argmax
ids the student consumes, and it collapses easily on a short schedule; a VQ-VAE with an EMA
codebook (van den Oord et al. 2017, appendix; Razavi et al. 2019), data-initialised codes and
dead-code restarts (Dhariwal et al. 2020, Jukebox) yields sharp, well-used codes within a few
hundred updates.  Codebook usage and perplexity are logged every epoch so a collapse is visible.

The `tokenizer` params section has the shape of every method (`model`, `data`, `optim`), plus
`mode`: `train` (this VQ-VAE) or `dalle` (BEiT's DALL-E encoder, mim/tokenizer/official_dalle.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from mim import dist as procs
from mim.config import Momentum, NonNegFloat, NonNegInt, PosInt, Range, Scale
from mim.data.images import DataRoot
from mim.data.loaders import eval_loader
from mim.engine import OptimConfig, RunConfig, Task, make_task, require_finite
from mim.errors import MimError
from mim.tokenizer.frozen import Tokenizer, vqvae_tokenizer


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    image_size: PosInt = 32  # tokenizer input (BEiT: the 112 px second view)
    downsample: PosInt = 4  # pixels per token side, a power of 2 (DALL-E: 8)
    vocab_size: Annotated[int, Range(2)] = 512
    code_dim: PosInt = 32
    hidden: PosInt = 64
    res_blocks: NonNegInt = 1
    ema_decay: Momentum = 0.99
    commitment: NonNegFloat = 0.25  # beta of the commitment loss (van den Oord et al.)
    dead_threshold: NonNegFloat = 1.0  # restart codes whose EMA count of vectors per step falls below

    @property
    def grid(self) -> int:
        return self.image_size // self.downsample

    def problems(self) -> list[tuple[str, str]]:
        d = self.downsample
        if d & (d - 1):
            return [("downsample", f"{d} is not a power of 2")]
        if self.image_size % d:
            return [("image_size", f"{self.image_size} is not divisible by downsample {d}")]
        return []

    def check(self) -> None:
        for key, message in self.problems():
            raise MimError(f"tokenizer.model.{key}: {message}")


class ResBlock(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class EMAQuantizer(nn.Module):
    """Nearest-code quantizer whose codebook is an EMA of the vectors assigned to each code."""

    def __init__(self, vocab_size: int, dim: int, decay: float, dead_threshold: float, eps: float = 1e-5) -> None:
        super().__init__()
        self.decay, self.dead_threshold, self.eps = decay, dead_threshold, eps
        self.register_buffer("codebook", torch.zeros(vocab_size, dim))
        self.register_buffer("cluster_size", torch.zeros(vocab_size))
        self.register_buffer("embed_sum", torch.zeros(vocab_size, dim))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.register_buffer("restarts", torch.zeros((), dtype=torch.long))  # codes restarted so far

    def ids(self, flat: torch.Tensor) -> torch.Tensor:
        """(M, d) -> (M,) index of the nearest code (squared Euclidean)."""
        dist2 = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.codebook.t() + self.codebook.pow(2).sum(1)  # (M, K)
        return dist2.argmin(1)

    @torch.no_grad()
    def update(self, flat: torch.Tensor, ids: torch.Tensor) -> None:
        """EMA step on a training batch, then restart dead codes from random batch vectors."""
        k = self.codebook.shape[0]
        if not bool(self.initialized):  # data init: codes = random encoder outputs
            self._restart(torch.ones(k, dtype=torch.bool, device=flat.device), flat, count=self.dead_threshold)
            self.initialized.fill_(True)
            return
        counts = torch.bincount(ids, minlength=k).to(flat.dtype)  # (K,)
        sums = torch.zeros_like(self.embed_sum).index_add_(0, ids, flat)  # (K, d)
        if dist.is_initialized():
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + k * self.eps) * n  # Laplace smoothing
        self.codebook.copy_(self.embed_sum / smoothed.unsqueeze(1))
        dead = self.cluster_size < self.dead_threshold
        if dead.any():
            self._restart(dead, flat, count=self.dead_threshold)

    def _restart(self, which: torch.Tensor, flat: torch.Tensor, count: float) -> None:
        n = int(which.sum())
        pick = torch.randint(len(flat), (n,), device=flat.device)
        new = flat[pick].clone()  # (n, d)
        if dist.is_initialized():
            dist.broadcast(new, 0)
        self.codebook[which] = new
        self.cluster_size[which] = count
        self.embed_sum[which] = new * count
        self.restarts.add_(n)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, d, h, w) -> quantized (N, d, h, w) with straight-through gradient, ids (N, h, w)."""
        n, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d).float()  # (M, d)
        if self.training:
            self.update(flat.detach(), self.ids(flat.detach()))
        ids = self.ids(flat.detach())  # (M,)
        q = self.codebook[ids].view(n, h, w, d).permute(0, 3, 1, 2).to(z.dtype)  # (N, d, h, w)
        return z + (q - z).detach(), ids.view(n, h, w)


class VQVAE(nn.Module):
    """Conv encoder (downsample x) -> EMA codebook -> conv decoder; pixels in [0, 1]."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.check()
        self.cfg = cfg
        # van den Oord et al. 2017's layout: stride-2 4x4 convs straight from the pixels, a 3x3
        # conv and residual blocks at the token grid; the decoder mirrors it with transposed convs.
        h, steps = cfg.hidden, int(math.log2(cfg.downsample))
        enc: list[nn.Module] = []
        for i in range(steps):
            enc += [nn.Conv2d(3 if i == 0 else h, h, 4, stride=2, padding=1), nn.ReLU()]
        enc += [nn.Conv2d(3 if steps == 0 else h, h, 3, padding=1)]
        enc += [ResBlock(h) for _ in range(cfg.res_blocks)]
        enc += [nn.ReLU(), nn.Conv2d(h, cfg.code_dim, 1)]
        self.encoder = nn.Sequential(*enc)
        self.quantizer = EMAQuantizer(cfg.vocab_size, cfg.code_dim, cfg.ema_decay, cfg.dead_threshold)
        dec: list[nn.Module] = [nn.Conv2d(cfg.code_dim, h, 3, padding=1)]
        dec += [ResBlock(h) for _ in range(cfg.res_blocks)]
        for i in range(steps):
            dec += [nn.ReLU(), nn.ConvTranspose2d(h, 3 if i == steps - 1 else h, 4, stride=2, padding=1)]
        if steps == 0:
            dec += [nn.ReLU(), nn.Conv2d(h, 3, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    def encode(self, imgs: torch.Tensor) -> torch.Tensor:
        return self.encoder(imgs * 2 - 1)  # (N, d, h, w)

    def encode_ids(self, imgs: torch.Tensor) -> torch.Tensor:
        z = self.encode(imgs)
        n, d, h, w = z.shape
        return self.quantizer.ids(z.permute(0, 2, 3, 1).reshape(-1, d).float()).view(n, h, w)

    def forward(self, imgs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """imgs (N, 3, S, S) in [0, 1] -> reconstruction in [-1, 1], ids (N, h, w), commitment loss."""
        z = self.encode(imgs)
        zq, ids = self.quantizer(z)
        commit = self.cfg.commitment * F.mse_loss(z, zq.detach())
        return self.decoder(zq), ids, commit


def vqvae_loss(model: nn.Module, imgs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Reconstruction MSE (in [-1, 1]) + commitment; logs the batch's code perplexity."""
    recon, ids, commit = model(imgs)
    rec = F.mse_loss(recon.float(), imgs * 2 - 1)
    return rec + commit, {"recon_mse": rec.detach(), "commit": commit.detach(), "perplexity": perplexity(ids)}


def perplexity(ids: torch.Tensor, vocab_size: int | None = None) -> torch.Tensor:
    """exp(entropy) of the code histogram: 1 = collapsed to one code, K = uniform use."""
    counts = torch.bincount(ids.flatten(), minlength=vocab_size or 0).float()
    p = counts[counts > 0] / counts.sum()
    return torch.exp(-(p * p.log()).sum())


def code_stats(ids: torch.Tensor, vocab_size: int) -> dict[str, float]:
    """Usage (fraction of the vocabulary that occurs) and perplexity of a set of ids."""
    used = int(torch.unique(ids).numel())
    return {"codebook_usage": used / vocab_size, "codes_used": float(used), "perplexity": float(perplexity(ids, vocab_size))}


# --- the `tokenizer` params section and its training task -----------------------------------
@dataclass(frozen=True, kw_only=True)
class DataConfig:
    crop_scale: Scale = (0.35, 1.0)  # RandomResizedCrop area range of training crops


@dataclass(frozen=True, kw_only=True)
class Config:
    """The `tokenizer` params section."""

    mode: Literal["train", "dalle"] = "train"
    dalle_weights: str = ""  # dalle mode: file written by `mimrepro tokenizer --convert-dalle`
    model: ModelConfig = field(default_factory=ModelConfig)  # image_size / downsample must equal the student's grid
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig | None = None  # required in train mode

    def problems(self) -> list[tuple[str, str]]:
        if self.mode == "train" and self.optim is None:
            return [("optim", "required when tokenizer.mode is train")]
        if self.mode == "dalle" and not self.dalle_weights:
            return [("dalle_weights", "empty in dalle mode: convert encoder.pkl once with `mimrepro convert-dalle PKL OUT --allow-pickle`")]
        return []


def transforms(image_size: int, crop_scale: tuple[float, float]) -> tuple[Any, Any]:
    """(train, val) transforms: PIL image -> (3, S, S) in [0, 1]."""
    from torchvision import transforms as T

    s, lanczos = image_size, T.InterpolationMode.LANCZOS  # BEiT makes the tokenizer view with Lanczos
    train = T.Compose([T.RandomResizedCrop(s, scale=crop_scale, interpolation=lanczos), T.RandomHorizontalFlip(), T.ToTensor()])
    val = T.Compose([T.Resize(s, interpolation=lanczos), T.CenterCrop(s), T.ToTensor()])
    return train, val


@torch.no_grad()
def evaluate_tokenizer(tok: Tokenizer, loader: Any) -> dict[str, float]:
    """Code usage and perplexity over `loader`; for a VQ-VAE also reconstruction MSE and PSNR.
    Under torchrun each process scores its shard (mim/data/loaders.py eval_loader) and the ids and
    per-image errors are gathered in dataset order: the same numbers as one process."""
    dev = next(tok.net.parameters()).device
    all_ids, errors, pixels = [], [], 0
    for imgs, _ in loader:
        imgs = imgs.to(dev)
        all_ids.append(tok.tokens(imgs))
        if tok.kind == "vqvae":
            recon = require_finite(tok.net(imgs)[0], "the tokenizer's reconstructions")
            errors.append(((recon.float().clamp(-1, 1) + 1) / 2 - imgs).pow(2).flatten(1).sum(1).double())  # (B,)
            pixels = imgs[0].numel()
    ids = procs.gather_rows(torch.cat(all_ids))
    out = code_stats(ids.cpu(), tok.vocab_size)
    if tok.kind == "vqvae":
        se = procs.gather_rows(torch.cat(errors))
        mse = float(se.sum()) / (len(se) * pixels)  # pixels in [0, 1]
        out.update(recon_mse=mse, psnr=10 * math.log10(1 / max(mse, 1e-12)))
    return out


def val_loader(data: DataRoot, image_size: int, batch_size: int, run: RunConfig) -> Any:
    _, val_tf = transforms(image_size, (1.0, 1.0))
    return eval_loader(data.images("val", val_tf), batch_size, num_workers=run.num_workers)


def task(cfg: Config, run: RunConfig, data: DataRoot) -> Task:
    """Train the VQ-VAE on `<root>/train`; code usage, perplexity and PSNR on `<root>/val` every epoch."""
    if cfg.optim is None:
        raise MimError("tokenizer.optim is required when tokenizer.mode is 'train'")
    cfg.model.check()
    train_tf, _ = transforms(cfg.model.image_size, cfg.data.crop_scale)
    train = data.images("train", train_tf)

    def step(m: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        imgs, _ = batch
        return vqvae_loss(m, imgs)

    t = make_task(lambda: VQVAE(cfg.model), train, cfg.optim, run, step)
    model: VQVAE = t.model  # type: ignore[assignment]
    tok = vqvae_tokenizer(model, freeze=False)  # a view: evaluation reads the weights being trained
    val = val_loader(data, cfg.model.image_size, t.micro_batch, run)

    def evaluate(epoch: int) -> dict[str, float]:
        model.eval()
        stats = evaluate_tokenizer(tok, val)
        model.train()
        return {**{f"val/{k}": v for k, v in stats.items()}, "restarts": float(model.quantizer.restarts)}

    t.evaluate = evaluate
    return t
