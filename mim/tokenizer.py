"""Visual tokenizers for BEiT: images -> discrete token ids on the student's patch grid.

One interface, two kinds (`Tokenizer.tokens(imgs) -> (N, h, w) int64`, imgs in [0, 1]):

* `vqvae` — a small VQ-VAE trained here as a pipeline stage (smoke default).  Why a VQ-VAE
  and not DALL-E's Gumbel-softmax dVAE: the dVAE needs a long temperature anneal (DALL-E:
  tau 1 -> 1/16 over 150k updates) before its relaxed training samples match the argmax
  ids the student consumes, and it collapses easily on a short schedule; a VQ-VAE with an
  EMA codebook (van den Oord et al. 2017, appendix; Razavi et al. 2019), data-initialised
  codes and dead-code restarts (Dhariwal et al. 2020, Jukebox) yields sharp, well-used
  codes within a few hundred updates.  Codebook usage and perplexity are logged every
  epoch so a collapse is visible.
* `dalle` — the DALL-E dVAE encoder (BEiT's tokenizer, papers.md BEiT) from the `dall-e`
  package (`dall_e.Encoder`), 8192 words, one token per 8x8 pixels of the 112 px view.
  Its official `encoder.pkl` is a pickled module: `convert_dalle` unpickles it once and
  writes a plain safetensors state_dict; everything else loads only that file.
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from mim.checkpoint import save_safetensors
from mim.config import from_dict
from mim.engine import OptimConfig, RunConfig, Task, local_batch, param_groups_weight_decay, seed_everything, steps_for
from mim.errors import MimError

TOKENIZER_FORMAT = "mimrepro-tokenizer/1"
DALLE_FORMAT = "mimrepro-dalle-encoder/1"


# --- VQ-VAE ----------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class VQVAEConfig:
    image_size: int = 32  # tokenizer input (BEiT: the 112 px second view)
    downsample: int = 4  # pixels per token side, a power of 2 (DALL-E: 8)
    vocab_size: int = 512
    code_dim: int = 32
    hidden: int = 64
    res_blocks: int = 1
    ema_decay: float = 0.99
    commitment: float = 0.25  # beta of the commitment loss (van den Oord et al.)
    dead_threshold: float = 1.0  # restart codes whose EMA count of vectors per step falls below

    @property
    def grid(self) -> int:
        return self.image_size // self.downsample

    def check(self) -> None:
        d = self.downsample
        if d < 1 or d & (d - 1):
            raise MimError(f"tokenizer.downsample={d} must be a power of 2")
        if self.image_size % d:
            raise MimError(f"tokenizer.image_size={self.image_size} is not divisible by downsample={d}")


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

    def __init__(self, cfg: VQVAEConfig) -> None:
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


# --- DALL-E dVAE encoder ----------------------------------------------------------------------
def dalle_encoder(n_hid: int = 256, n_blk_per_group: int = 2, vocab_size: int = 8192, group_count: int = 4) -> nn.Module:
    """`dall_e.Encoder` (the official class, package dall-e 0.1), randomly initialised."""
    try:
        from dall_e import Encoder
    except ImportError:
        raise MimError("the dalle tokenizer needs the `dall-e` package: pip install --no-deps dall-e==0.1") from None
    if group_count != 4:
        raise MimError(f"dall_e.Encoder has 4 groups; this file has {group_count}")
    return Encoder(n_hid=n_hid, n_blk_per_group=n_blk_per_group, vocab_size=vocab_size)


def _dalle_arch(state: dict[str, torch.Tensor]) -> dict[str, int]:
    try:
        return {
            "n_hid": int(state["blocks.input.w"].shape[0]),
            "vocab_size": int(state["blocks.output.conv.w"].shape[0]),
            "n_blk_per_group": len({k.split(".")[2] for k in state if k.startswith("blocks.group_1.block_")}),
            "group_count": len({k.split(".")[1] for k in state if k.startswith("blocks.group_")}),
        }
    except KeyError as e:
        raise MimError(f"not a DALL-E dVAE encoder state_dict (missing {e})") from None


def convert_dalle(pkl: Path, out: Path) -> dict[str, int]:
    """Unpickle the official encoder.pkl ONCE and write its weights as plain safetensors."""
    pkl = Path(pkl)
    if not pkl.is_file():
        raise MimError(f"DALL-E encoder file not found: {pkl}")
    print(
        f"WARNING: unpickling {pkl} executes code stored in it. Convert only a file you trust "
        "(the official DALL-E encoder.pkl); afterwards mimrepro loads only the safetensors output.",
        file=sys.stderr,
        flush=True,
    )
    try:  # the pickle references dall_e classes: fail early with the install hint
        import dall_e  # noqa: F401
    except ImportError:
        raise MimError("unpickling encoder.pkl needs the `dall-e` package: pip install --no-deps dall-e==0.1") from None
    try:
        obj = torch.load(pkl, map_location="cpu", weights_only=False)
    except Exception as e:
        raise MimError(f"cannot unpickle {pkl}: {e}") from None
    state = obj.state_dict() if isinstance(obj, nn.Module) else obj
    if not isinstance(state, dict):
        raise MimError(f"{pkl} holds a {type(obj).__name__}, not the DALL-E encoder module or its state_dict")
    state = {k: v.detach().float().cpu().contiguous() for k, v in state.items()}
    arch = _dalle_arch(state)
    dalle_encoder(**arch).load_state_dict(state, strict=True)  # the layout must be the official one
    meta = {"format": DALLE_FORMAT, **{k: str(v) for k, v in arch.items()}}
    save_safetensors(Path(out), state, meta)
    return arch


def load_dalle(path: Path) -> tuple[nn.Module, dict[str, int]]:
    """The DALL-E encoder from a file written by `convert_dalle` (no unpickling)."""
    state, meta = _read(Path(path), "DALL-E encoder")
    arch = _dalle_arch(state)
    enc = dalle_encoder(**arch)
    try:
        enc.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise MimError(f"{path} does not fit the DALL-E encoder: {e}") from None
    return enc, arch


# --- the interface the student uses ---------------------------------------------------------
KINDS = ("vqvae", "dalle")


class Tokenizer(nn.Module):
    """Frozen, eval-mode tokenizer.  `tokens(imgs)`: (N, 3, S, S) in [0, 1] -> (N, S/d, S/d) ids."""

    def __init__(
        self, kind: str, net: nn.Module, *, image_size: int, downsample: int, vocab_size: int, config: dict[str, Any], freeze: bool = True
    ) -> None:
        super().__init__()
        if kind not in KINDS:
            raise MimError(f"unknown tokenizer kind {kind!r}; choose from {', '.join(KINDS)}")
        self.kind, self.net = kind, net
        self.image_size, self.downsample, self.vocab_size = image_size, downsample, vocab_size
        self.grid = image_size // downsample
        self.config = config  # architecture as plain data (saved in the file's metadata)
        if freeze:  # False only while the tokenizer itself trains (the stage evaluates through this view)
            self.requires_grad_(False)
            super().train(False)

    def train(self, mode: bool = True) -> "Tokenizer":
        return self  # stays in eval mode

    @torch.no_grad()
    def tokens(self, imgs: torch.Tensor) -> torch.Tensor:
        if imgs.ndim != 4 or imgs.shape[1] != 3 or imgs.shape[-2:] != (self.image_size, self.image_size):
            raise MimError(f"tokenizer expects (N, 3, {self.image_size}, {self.image_size}) images, got {tuple(imgs.shape)}")
        with torch.autocast(imgs.device.type, enabled=False):  # ids must not depend on AMP
            x = imgs.float()
            if self.kind == "dalle":
                from dall_e import map_pixels

                return self.net(map_pixels(x)).argmax(1)  # (N, V, h, w) -> (N, h, w)
            return self.net.encode_ids(x)


def vqvae_tokenizer(model: VQVAE, freeze: bool = True) -> Tokenizer:
    c = model.cfg
    return Tokenizer(
        "vqvae", model, image_size=c.image_size, downsample=c.downsample, vocab_size=c.vocab_size, config=dataclasses.asdict(c), freeze=freeze
    )


def dalle_tokenizer(enc: nn.Module, arch: dict[str, int], image_size: int = 112) -> Tokenizer:
    down = 2 ** (arch["group_count"] - 1)  # a max-pool after each group but the last
    if image_size % down:
        raise MimError(f"tokenizer.image_size={image_size} is not divisible by the DALL-E encoder's stride {down}")
    return Tokenizer("dalle", enc, image_size=image_size, downsample=down, vocab_size=arch["vocab_size"], config={**arch, "image_size": image_size})


def save_tokenizer(path: Path, tok: Tokenizer) -> None:
    meta = {"format": TOKENIZER_FORMAT, "kind": tok.kind, "config": json.dumps(tok.config)}
    save_safetensors(Path(path), tok.net.state_dict(), meta)


def load_tokenizer(path: Path) -> Tokenizer:
    """A tokenizer written by `save_tokenizer` (either kind), frozen."""
    state, meta = _read(Path(path), "tokenizer")
    if meta.get("format") != TOKENIZER_FORMAT:
        raise MimError(f"{path} is not a mimrepro tokenizer (format {meta.get('format')!r}); run `mimrepro tokenizer`")
    cfg = json.loads(meta["config"])
    if meta["kind"] == "vqvae":
        model = VQVAE(from_dict(VQVAEConfig, cfg, where=f"{path}: config"))
        model.load_state_dict(state, strict=True)
        return vqvae_tokenizer(model)
    if meta["kind"] == "dalle":
        arch = _dalle_arch(state)
        enc = dalle_encoder(**arch)
        enc.load_state_dict(state, strict=True)
        return dalle_tokenizer(enc, arch, image_size=int(cfg["image_size"]))
    raise MimError(f"{path}: unknown tokenizer kind {meta['kind']!r}; choose from {', '.join(KINDS)}")


def _read(path: Path, what: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.is_file():
        raise MimError(f"{what} file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return load_file(str(path)), meta
    except Exception as e:  # corrupt header, not a safetensors file
        raise MimError(f"cannot read {what} {path}: {e}") from None


# --- the `tokenizer` params section and its training task -----------------------------------
@dataclass(frozen=True, kw_only=True)
class TokenizerConfig:
    mode: Literal["train", "dalle"] = "train"
    image_size: int = 32  # tokenizer input; image_size / downsample must equal the student's grid
    dalle_weights: str = ""  # dalle mode: file written by `mimrepro tokenizer --convert-dalle`
    # train mode (VQVAEConfig fields)
    vocab_size: int = 512
    downsample: int = 4
    code_dim: int = 32
    hidden: int = 64
    res_blocks: int = 1
    ema_decay: float = 0.99
    commitment: float = 0.25
    dead_threshold: float = 1.0
    crop_scale: tuple[float, float] = (0.35, 1.0)  # RandomResizedCrop area range of training crops
    optim: OptimConfig | None = None  # required in train mode


def vqvae_config(cfg: TokenizerConfig) -> VQVAEConfig:
    names = {f.name for f in dataclasses.fields(VQVAEConfig)}
    return VQVAEConfig(**{k: v for k, v in dataclasses.asdict(cfg).items() if k in names})


def tokenizer_transforms(cfg: TokenizerConfig) -> tuple[Any, Any]:
    """(train, val) transforms: PIL image -> (3, S, S) in [0, 1]."""
    from torchvision import transforms as T

    s, lanczos = cfg.image_size, T.InterpolationMode.LANCZOS  # BEiT makes the tokenizer view with Lanczos
    train = T.Compose([T.RandomResizedCrop(s, scale=cfg.crop_scale, interpolation=lanczos), T.RandomHorizontalFlip(), T.ToTensor()])
    val = T.Compose([T.Resize(s, interpolation=lanczos), T.CenterCrop(s), T.ToTensor()])
    return train, val


@torch.no_grad()
def evaluate_tokenizer(tok: Tokenizer, loader: Any) -> dict[str, float]:
    """Code usage and perplexity over `loader`; for a VQ-VAE also reconstruction MSE and PSNR."""
    dev = next(tok.net.parameters()).device
    all_ids, se, n = [], 0.0, 0
    for imgs, _ in loader:
        imgs = imgs.to(dev)
        all_ids.append(tok.tokens(imgs).cpu())
        if tok.kind == "vqvae":
            recon, _, _ = tok.net(imgs)
            se += float(((recon.float().clamp(-1, 1) + 1) / 2 - imgs).pow(2).sum())
            n += imgs.numel()
    out = code_stats(torch.cat(all_ids), tok.vocab_size)
    if n:
        mse = se / n  # pixels in [0, 1]
        out.update(recon_mse=mse, psnr=10 * math.log10(1 / max(mse, 1e-12)))
    return out


def tokenizer_task(cfg: TokenizerConfig, run: RunConfig, train_root: Path, val_root: Path) -> tuple[Task, Tokenizer, Any]:
    """Task training a VQ-VAE tokenizer, the Tokenizer view of it, and the val loader."""
    from mim.data import ImageFolder, make_loader

    if cfg.optim is None:
        raise MimError("tokenizer.optim is required when tokenizer.mode is 'train'")
    seed_everything(run.seed)  # the initial weights depend on the seed only
    model = VQVAE(vqvae_config(cfg))
    tok = vqvae_tokenizer(model, freeze=False)
    train_tf, val_tf = tokenizer_transforms(cfg)
    train_set, val_set = ImageFolder(Path(train_root), train_tf), ImageFolder(Path(val_root), val_tf)
    batch = local_batch(cfg.optim)
    if len(train_set) < batch:
        raise MimError(f"{train_root} has {len(train_set)} images, fewer than one batch ({batch})")

    def loader(epoch: int) -> Any:
        return make_loader(train_set, batch, epoch=epoch, seed=run.seed, num_workers=run.num_workers)

    val_loader = make_loader(val_set, batch, epoch=0, seed=run.seed, shuffle=False, drop_last=False, num_workers=run.num_workers)

    def evaluate(epoch: int) -> dict[str, float]:
        model.eval()
        stats = evaluate_tokenizer(tok, val_loader)
        model.train()
        return {**{f"val/{k}": v for k, v in stats.items()}, "restarts": float(model.quantizer.restarts)}

    def step(m: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        imgs, _ = batch
        return vqvae_loss(m, imgs)

    groups = param_groups_weight_decay(model, cfg.optim.weight_decay)
    task = Task(model, step, loader, steps_for(len(train_set), batch), groups, evaluate=evaluate)
    return task, tok, val_loader
