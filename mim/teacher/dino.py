"""DINO (Caron et al., arXiv 2104.14294): self-distillation with no labels, for the Img2Vec teacher.

The `dino` params section, the model and `task` follow the shape of every method (mim/methods/);
the pieces, in the order of the method (papers.md, "DINO"; facebookresearch/dino main_dino.py):

* `MultiCropAugmentation`: 2 global crops + N local crops of one image, with DINO's flip,
  colour jitter, grayscale, Gaussian blur and solarization;
* `DINOHead`: 3-layer MLP -> bottleneck -> l2-norm -> weight-normalised linear layer to K dims;
* `DINOLoss`: cross-entropy between the centred, sharpened teacher softmax and the student
  log-softmax over every (teacher view, student view) pair of *different* views, with the
  centre an EMA (momentum 0.9) of the teacher's batch output;
* `DINO`: student and EMA teacher (backbone + head each); `forward(crops)` is the training
  step, `update_teacher(m)` the EMA (no gradients ever reach the teacher).

Backbones are timm models (`resnet50` for the Img2Vec teacher, ViTs as an option).  All
randomness comes from torch's global generator, so a resumed epoch sees the same crops.
`task` evaluates the teacher backbone with DINO's weighted k-NN (eval_knn.py) during training.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image, ImageFilter, ImageOps
from torch import nn
from torchvision import transforms as T

from mim.config import DropRate, Fraction, Momentum, NonNegInt, PosFloat, PosInt, Scale
from mim.data.device import to_device
from mim.data.images import DataRoot, ImageFolder
from mim.data.loaders import eval_loader
from mim.data.transforms import eval_transform
from mim.dist import gather_rows
from mim.engine import OptimConfig, RunConfig, Task, device, make_task, require_finite
from mim.eval.knn import knn_classify, topk_accuracy
from mim.param_groups import weight_decay_groups
from mim.schedules import cosine_schedule
from mim.teacher.frozen import timm_backbone


# --- configs ---------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Multi-crop: the teacher sees the global crops only, the student sees all of them."""

    global_size: PosInt = 224
    local_size: PosInt = 96
    n_global: PosInt = 2
    n_local: NonNegInt = 8
    global_scale: Scale = (0.14, 1.0)  # ResNet-50 recipe (ViT: 0.4-1)
    local_scale: Scale = (0.05, 0.14)
    limit_per_class: NonNegInt = 0  # train images per class used for pretraining (0 = all)

    def problems(self) -> list[tuple[str, str]]:
        if self.n_global + self.n_local < 2:  # the loss pairs a teacher view with another view
            return [("n_local", f"{self.n_local} with n_global {self.n_global}: DINO needs at least 2 crops")]
        return []


@dataclass(frozen=True, kw_only=True)
class HeadConfig:
    out_dim: PosInt = 65536  # K
    hidden_dim: PosInt = 2048
    bottleneck_dim: PosInt = 256
    n_layers: PosInt = 3
    use_bn: bool = False
    norm_last_layer: bool = True  # weight-norm g fixed to 1


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    arch: str = "resnet50"  # any timm backbone: resnet50, vit_small_patch16_224, ...
    head: HeadConfig = HeadConfig()
    student_temp: PosFloat = 0.1
    teacher_temp: PosFloat = 0.04
    warmup_teacher_temp: PosFloat = 0.04
    warmup_teacher_temp_epochs: NonNegInt = 0
    center_momentum: Momentum = 0.9
    momentum_teacher: Fraction = 0.996  # -> 1 on a cosine schedule
    freeze_last_layer_epochs: NonNegInt = 1  # no update of the head's last layer at first (DINO)
    drop_path: DropRate = 0.1  # ViT backbones only (DINO's ViT default)

    def problems(self) -> list[tuple[str, str]]:
        import timm

        if not timm.is_model(self.arch):
            return [("arch", f"{self.arch!r} is not a timm model (e.g. resnet50, vit_small_patch16_224)")]
        return []


@dataclass(frozen=True, kw_only=True)
class KNNConfig:
    """The teacher backbone's weighted k-NN top-1 (DINO eval_knn.py), logged during training."""

    k: PosInt = 20
    temperature: PosFloat = 0.07
    train_per_class: NonNegInt = 0  # memory bank images per class (0 = all)
    every: PosInt = 1  # every this many epochs (and after the last)


@dataclass(frozen=True, kw_only=True)
class Config:
    """The `dino` params section.

    `source: import` skips training: the stage converts the official DINO ResNet-50 weights at
    `checkpoint` (a local file: dino_resnet50_pretrain.pth or the full checkpoint; nothing is
    downloaded) into the same teacher file (mim/teacher/official_dino.py).
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig
    knn: KNNConfig = field(default_factory=KNNConfig)
    source: Literal["train", "import"] = "train"
    checkpoint: str | None = None  # the official checkpoint, for source import

    def problems(self) -> list[tuple[str, str]]:
        if self.source != "import":
            return []
        if not self.checkpoint:
            return [("checkpoint", "source import needs the path of the official DINO ResNet-50 checkpoint "
                                   "(dino_resnet50_pretrain.pth, downloaded by you); or set source: train")]
        if self.model.arch != "resnet50":
            return [("model.arch", f"{self.model.arch!r}: source import converts the official ResNet-50 only; set resnet50")]
        return []


# --- multi-crop augmentation --------------------------------------------------------------------
class RandomGaussianBlur:
    """PIL Gaussian blur with radius ~ U(0.1, 2.0), applied with probability p (DINO)."""

    def __init__(self, p: float, radius: tuple[float, float] = (0.1, 2.0)) -> None:
        self.p, self.radius = p, radius

    def __call__(self, img: Image.Image) -> Image.Image:
        if torch.rand(()).item() >= self.p:
            return img
        lo, hi = self.radius
        return img.filter(ImageFilter.GaussianBlur(radius=lo + (hi - lo) * torch.rand(()).item()))


class RandomSolarize:
    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        return ImageOps.solarize(img) if torch.rand(()).item() < self.p else img


class MultiCropAugmentation:
    """PIL image -> list of tensors: n_global global crops, then n_local local crops.

    Global 1: blur always; global 2: blur p=0.1, solarize p=0.2; locals: blur p=0.5 (DINO).
    """

    def __init__(self, cfg: DataConfig) -> None:
        self.cfg = cfg
        flip_jitter = T.Compose(
            [
                T.RandomHorizontalFlip(p=0.5),
                T.RandomApply([T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=0.8),
                T.RandomGrayscale(p=0.2),
            ]
        )
        norm = T.PILToTensor()  # uint8: normalised on the device (mim/data/device.py)
        bicubic = T.InterpolationMode.BICUBIC

        def crop(size: int, scale: tuple[float, float]) -> T.RandomResizedCrop:
            return T.RandomResizedCrop(size, scale=scale, interpolation=bicubic)

        g = (cfg.global_size, cfg.global_scale)
        self.global1 = T.Compose([crop(*g), flip_jitter, RandomGaussianBlur(1.0), norm])
        self.global2 = T.Compose([crop(*g), flip_jitter, RandomGaussianBlur(0.1), RandomSolarize(0.2), norm])
        self.local = T.Compose([crop(cfg.local_size, cfg.local_scale), flip_jitter, RandomGaussianBlur(0.5), norm])

    def __call__(self, img: Image.Image) -> list[torch.Tensor]:
        globals_ = [(self.global1 if i % 2 == 0 else self.global2)(img) for i in range(self.cfg.n_global)]
        return globals_ + [self.local(img) for _ in range(self.cfg.n_local)]


# --- head and backbone --------------------------------------------------------------------------
class DINOHead(nn.Module):
    def __init__(self, in_dim: int, cfg: HeadConfig) -> None:
        super().__init__()
        n = max(cfg.n_layers, 1)
        if n == 1:
            self.mlp: nn.Module = nn.Linear(in_dim, cfg.bottleneck_dim)
        else:
            layers: list[nn.Module] = []
            dims = [in_dim] + [cfg.hidden_dim] * (n - 1)
            for a, b in zip(dims[:-1], dims[1:]):
                layers += [nn.Linear(a, b)] + ([nn.BatchNorm1d(b)] if cfg.use_bn else []) + [nn.GELU()]
            layers.append(nn.Linear(cfg.hidden_dim, cfg.bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        self.apply(_init_linear)
        last = nn.Linear(cfg.bottleneck_dim, cfg.out_dim, bias=False)
        self.last_layer = nn.utils.parametrizations.weight_norm(last)
        g = self.last_layer.parametrizations.weight.original0  # (K, 1) magnitudes
        g.data.fill_(1.0)
        if cfg.norm_last_layer:
            g.requires_grad_(False)

    @property
    def last_layer_direction(self) -> nn.Parameter:
        """The weight-norm direction v: DINO freezes it during the first epoch(s)."""
        return self.last_layer.parametrizations.weight.original1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp(x)  # (N, bottleneck)
        # The weight-normed last layer and the logits in float32 even under autocast: DINO trains
        # under fp16 autocast (main_dino.py) with the loss's softmax in fp32 by autocast's op list; the
        # bf16 autocast the engine uses has 3 mantissa bits fewer than fp16, and the logits are divided
        # by tau_t = 0.04 (x25) before the softmax over K.
        with torch.autocast(x.device.type, enabled=False):
            x = F.normalize(x.float(), dim=-1, p=2)
            return self.last_layer(x)  # (N, K) float32


def _init_linear(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def pooled(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Image embedding of a timm backbone built with global_pool='': CNN average, ViT cls token."""
    f = backbone.forward_features(x)
    if f.ndim == 4:  # (N, C, h, w)
        return f.mean(dim=(2, 3))
    return f[:, 0]  # (N, 1+L, D) -> cls token


def build_backbone(cfg: ModelConfig) -> nn.Module:
    kwargs = {"dynamic_img_size": True, "drop_path_rate": cfg.drop_path} if cfg.arch.startswith(("vit", "deit")) else {}
    return timm_backbone(cfg.arch, **kwargs)


class MultiCropWrapper(nn.Module):
    """Backbone + head over a list of crops: one backbone pass per crop resolution."""

    def __init__(self, backbone: nn.Module, head: DINOHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, crops: list[torch.Tensor]) -> torch.Tensor:
        feats = []
        start = 0
        while start < len(crops):  # consecutive crops of equal size share one forward
            end = start + 1
            while end < len(crops) and crops[end].shape[-2:] == crops[start].shape[-2:]:
                end += 1
            feats.append(pooled(self.backbone, torch.cat(crops[start:end])))  # (n*B, C)
            start = end
        return self.head(torch.cat(feats))  # (len(crops)*B, K)


# --- loss -------------------------------------------------------------------------------------------
class DINOLoss(nn.Module):
    """Cross-entropy of centred+sharpened teacher vs student over pairs of different views."""

    def __init__(self, out_dim: int, n_global: int, n_crops: int, student_temp: float, center_momentum: float) -> None:
        super().__init__()
        self.n_global, self.n_crops = n_global, n_crops
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(
        self, student_out: torch.Tensor, teacher_out: torch.Tensor, teacher_temp: float
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """student_out (n_crops*B, K), teacher_out (n_global*B, K), both crop-major."""
        s = (student_out.float() / self.student_temp).chunk(self.n_crops)  # n_crops x (B, K), float32 logits
        t_logits = (teacher_out.float() - self.center) / teacher_temp
        t = F.softmax(t_logits, dim=-1).detach().chunk(self.n_global)  # n_global x (B, K)
        total = student_out.new_zeros(())
        n_pairs = 0
        for iq, q in enumerate(t):
            for v in range(self.n_crops):
                if v == iq:  # the same view seen by both networks: skipped
                    continue
                log_p = F.log_softmax(s[v], dim=-1)
                ce = torch.sum(-q * log_p, dim=-1).mean()
                total = total + ce
                n_pairs += 1
        total = total / n_pairs
        with torch.no_grad():
            log_q = F.log_softmax(t_logits, dim=-1)
            entropy = -(log_q.exp() * log_q).sum(-1).mean()  # H(P_t): log K if uniform, 0 if one-hot
            kl = total.detach() - entropy  # mean over pairs of KL(P_t || P_s) = CE - H(P_t)
        self.update_center(teacher_out.float())
        return total, {"teacher_entropy": entropy, "kl": kl}

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor) -> None:
        """center <- m * center + (1 - m) * mean of the teacher batch (over all processes)."""
        batch_center = teacher_out.sum(dim=0, keepdim=True)
        count = torch.tensor(float(teacher_out.shape[0]), device=teacher_out.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(batch_center)
            dist.all_reduce(count)
        batch_center = batch_center / count
        self.center.mul_(self.center_momentum).add_(batch_center.float(), alpha=1 - self.center_momentum)


# --- the model: student, EMA teacher, loss ------------------------------------------------------------
class DINO(nn.Module):
    """Student and EMA teacher (same architecture).  `forward(crops)` returns (loss, logs)."""

    def __init__(self, cfg: ModelConfig, crops: DataConfig) -> None:
        super().__init__()
        self.cfg, self.crops = cfg, crops
        s_backbone = build_backbone(cfg)
        t_backbone = build_backbone(cfg)
        dim = int(s_backbone.num_features)
        self.student = MultiCropWrapper(s_backbone, DINOHead(dim, cfg.head))
        self.teacher = MultiCropWrapper(t_backbone, DINOHead(dim, cfg.head))
        self.teacher.load_state_dict(self.student.state_dict())
        self.teacher.requires_grad_(False)
        n_crops = crops.n_global + crops.n_local
        self.loss = DINOLoss(cfg.head.out_dim, crops.n_global, n_crops, cfg.student_temp, cfg.center_momentum)
        self.teacher_temp = cfg.teacher_temp  # set per epoch by set_epoch (warm-up schedule)
        self.freeze_last_layer = cfg.freeze_last_layer_epochs > 0
        self.student.head.last_layer_direction.register_hook(self._last_layer_grad)

    def _last_layer_grad(self, grad: torch.Tensor) -> torch.Tensor | None:
        # A zero gradient (not requires_grad toggling) keeps DDP happy; weight decay on the
        # weight-norm direction v only rescales v, which leaves the normalised weight unchanged.
        return torch.zeros_like(grad) if self.freeze_last_layer else None

    def forward(self, crops: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with torch.no_grad():
            t_out = self.teacher(crops[: self.crops.n_global])  # (n_global*B, K)
        s_out = self.student(crops)  # (n_crops*B, K)
        return self.loss(s_out, t_out, self.teacher_temp)

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """teacher <- m * teacher + (1 - m) * student, parameters only (DINO); buffers stay."""
        teacher, student = list(self.teacher.parameters()), [p.detach() for p in self.student.parameters()]
        torch._foreach_mul_(teacher, momentum)  # one fused kernel per dtype/device group, not a Python loop per tensor
        torch._foreach_add_(teacher, student, alpha=1 - momentum)

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """Teacher temperature of this epoch; freezes the head's last layer in the first epochs."""
        self.teacher_temp = float(teacher_temp_schedule(self.cfg, epochs)[epoch])
        self.freeze_last_layer = epoch < self.cfg.freeze_last_layer_epochs


def teacher_temp_schedule(cfg: ModelConfig, epochs: int) -> np.ndarray:
    """Linear warm-up of tau_t over warmup_teacher_temp_epochs, then constant (per epoch)."""
    w = min(cfg.warmup_teacher_temp_epochs, epochs)
    return np.concatenate([np.linspace(cfg.warmup_teacher_temp, cfg.teacher_temp, w), np.full(epochs - w, cfg.teacher_temp)])


def momentum_schedule(cfg: ModelConfig, total_steps: int) -> np.ndarray:
    """EMA momentum per optimizer step: cosine from momentum_teacher to 1."""
    return cosine_schedule(cfg.momentum_teacher, 1.0, total_steps)


def collate_crops(batch: list[tuple[list[torch.Tensor], int]]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """[(crops, label)] -> ([(B, 3, h, w) per crop index], labels (B,))."""
    n = len(batch[0][0])
    crops = [torch.stack([b[0][i] for b in batch]) for i in range(n)]
    return crops, torch.tensor([b[1] for b in batch])


# --- the task ----------------------------------------------------------------------------------
def task(cfg: Config, run: RunConfig, data: DataRoot) -> Task:
    """DINO on `<root>/train` (labels unused), evaluated by k-NN of the teacher backbone on `<root>/val`."""
    train = data.images("train", MultiCropAugmentation(cfg.data), cfg.data.limit_per_class)

    def build() -> DINO:
        dino = DINO(cfg.model, cfg.data)
        if dist.is_initialized() and torch.cuda.is_available():  # SyncBatchNorm is CUDA-only; gloo on CPU: per process
            dino = nn.SyncBatchNorm.convert_sync_batchnorm(dino)  # as DINO does for ResNets
        if torch.cuda.is_available():  # NHWC convolutions (tensor cores); the crops follow the weights' layout
            dino = dino.to(memory_format=torch.channels_last)
        return dino

    def step(model: nn.Module, batch: tuple[list[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        crops, _labels = batch
        return model(crops)

    t = make_task(build, train, cfg.optim, run, step, collate_fn=collate_crops,
                  param_groups=lambda m: weight_decay_groups(m.student, cfg.optim.weight_decay))
    dino: DINO = t.model  # type: ignore[assignment]
    budget = t.budget  # optim.epochs or optim.steps, on this data
    epochs = budget.epochs  # a step budget's last epoch may be partial; it is still an epoch of these schedules
    momentum = momentum_schedule(cfg.model, budget.total_steps)  # main_dino.py: over epochs x niter_per_ep
    t.on_epoch = lambda epoch: dino.set_epoch(epoch, epochs)
    t.after_step = lambda it: dino.update_teacher(float(momentum[it]))

    ev = eval_transform(cfg.data.global_size)
    bank, val = data.images("train", ev, cfg.knn.train_per_class), data.images("val", ev)

    @torch.no_grad()
    def features(dataset: ImageFolder) -> tuple[torch.Tensor, torch.Tensor]:
        """Every image's pooled feature (N, C) and label, in dataset order, on the device: each process
        embeds its shard and gathers the rest, so the k-NN sees the full bank under any world size."""
        backbone = dino.teacher.backbone
        feats, labels = [], []
        for x, y in eval_loader(dataset, 64, num_workers=run.num_workers):
            x = to_device(x, device()).contiguous(memory_format=torch.channels_last)
            feats.append(require_finite(pooled(backbone, x).float(), "the DINO teacher's k-NN features"))  # (B, C) pooled last stage
            labels.append(y.to(device()))
        return gather_rows(torch.cat(feats)), gather_rows(torch.cat(labels))

    def evaluate(epoch: int) -> dict[str, float]:
        """Weighted k-NN top-1 (DINO protocol) of the teacher backbone, in eval mode."""
        if (epoch + 1) % cfg.knn.every and epoch + 1 != epochs:
            return {}
        dino.teacher.backbone.eval()
        (f_tr, y_tr), (f_te, y_te) = features(bank), features(val)
        dino.teacher.backbone.train()  # the DINO teacher runs in train mode (BatchNorm batch statistics)
        scores = knn_classify(f_tr, y_tr, f_te, len(bank.classes), cfg.knn.k, cfg.knn.temperature)
        return {"knn_top1": topk_accuracy(scores, y_te, 1)}

    t.evaluate = evaluate
    t.info = {"train_images": str(len(train)), "val_images": str(len(val)), "train_files": train.fingerprint()}
    return t
