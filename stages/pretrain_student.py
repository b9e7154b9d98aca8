"""`mimrepro pretrain-student --method NAME`: pretrain a student ViT and export its encoder.

A method is one entry of `METHODS`: a function (params file, ImageNet-layout root or None =
the manifest's) ->
`Pretraining`, i.e. the encoder to export and, unless the method trains nothing
(`scratch`), the engine `Task` that trains it.  Every method ends in the same file,
`models/<student>/encoder.safetensors`, which every downstream stage reads.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import click

from stages.common import dataset_root, params_option

if TYPE_CHECKING:
    from mim.engine import OptimConfig, Task
    from mim.vit import ViTEncoder


@dataclass
class Pretraining:
    encoder: "ViTEncoder"  # exported after training (the task trains it in place)
    config: dict[str, Any]  # resolved config as plain data (checkpoint identity for resume)
    task: "Task | None" = None  # None: nothing to train
    optim: "OptimConfig | None" = None
    metadata: dict[str, str] = field(default_factory=dict)


def scratch(params: Path, data: Path | None) -> Pretraining:
    """Random initialisation, no training: the baseline every pretrained student must beat."""
    import torch

    from mim.config import load_section, to_dict
    from mim.engine import RunConfig
    from mim.vit import ViTConfig, ViTEncoder

    enc_cfg = load_section(params, "encoder", ViTConfig)
    run = load_section(params, "run", RunConfig)
    torch.manual_seed(run.seed)
    return Pretraining(ViTEncoder(enc_cfg), {"encoder": to_dict(enc_cfg), "seed": run.seed})


def mae(params: Path, data: Path | None) -> Pretraining:
    """MAE: random 75% masking, encoder on visible patches, pixel reconstruction (mim/mae.py)."""
    import torch

    from mim.config import load_section, to_dict
    from mim.engine import RunConfig
    from mim.mae import MAE
    from mim.pretrain import MAEPretrainConfig, image_pretrain_task
    from mim.vit import ViTConfig

    enc_cfg = load_section(params, "encoder", ViTConfig)
    cfg = load_section(params, "mae", MAEPretrainConfig)
    run = load_section(params, "run", RunConfig)
    torch.manual_seed(run.seed)
    data = data or dataset_root("imagenet")
    model = MAE(enc_cfg, cfg.model)
    task = image_pretrain_task(model, data / "train", enc_cfg.img_size, cfg.crop_scale, cfg.optim, run)
    config = {"encoder": to_dict(enc_cfg), "mae": to_dict(cfg), "seed": run.seed, "data": str(data)}
    return Pretraining(model.encoder, config, task, cfg.optim)


def img2vec(params: Path, data: Path | None, teacher: Path | None = None) -> Pretraining:
    """Img2Vec: 60% block masking, regress a frozen teacher's tokens, multi-block + global loss (mim/img2vec.py)."""
    import torch

    from mim.config import load_section, to_dict
    from mim.data import ImageFolder
    from mim.engine import RunConfig
    from mim.errors import MimError
    from mim.checkpoint import file_sha256
    from mim.img2vec import Img2VecConfig, build_task
    from mim.pretrain import pretrain_transform
    from mim.teachers import load_teacher
    from mim.vit import ViTConfig

    if teacher is None:
        raise MimError("--method img2vec needs --teacher PATH (e.g. models/teacher/backbone.safetensors)")
    enc_cfg = load_section(params, "encoder", ViTConfig)
    cfg = load_section(params, "img2vec", Img2VecConfig)
    run = load_section(params, "run", RunConfig)
    frozen = load_teacher(teacher)
    data = data or dataset_root("imagenet")
    dataset = ImageFolder(data / "train", pretrain_transform(enc_cfg.img_size, cfg.crop_scale))
    torch.manual_seed(run.seed)
    task = build_task(cfg, enc_cfg, dataset, frozen, run)
    geo = task.model.geo
    config = {"encoder": to_dict(enc_cfg), "img2vec": to_dict(cfg), "seed": run.seed, "data": str(data),
              "teacher": str(teacher), "teacher_sha256": file_sha256(teacher)}  # a new teacher never resumes
    meta = {"teacher": str(teacher), "teacher_name": frozen.name, "mask_block_patches": str(geo.block),
            "teacher_img_size": str(geo.teacher_img_size)}
    return Pretraining(task.model.encoder, config, task, cfg.optim, meta)


def beit(params: Path, data: Path | None) -> Pretraining:
    """BEiT: blockwise masking, mask embedding before the encoder, visual-token prediction (mim/beit.py)."""
    from mim.beit import BEiTConfig, beit_task
    from mim.checkpoint import file_sha256
    from mim.config import load_section, to_dict
    from mim.engine import RunConfig
    from mim.tokenizer import load_tokenizer
    from mim.vit import ViTConfig

    enc_cfg = load_section(params, "encoder", ViTConfig)
    cfg = load_section(params, "beit", BEiTConfig)
    run = load_section(params, "run", RunConfig)
    data = data or dataset_root("imagenet")
    tok_path = Path("models/tokenizer/tokenizer.safetensors")
    tokenizer = load_tokenizer(tok_path)
    task = beit_task(cfg, enc_cfg, run, data / "train", tokenizer)
    digest = file_sha256(tok_path)  # a retrained tokenizer restarts the student
    config = {"encoder": to_dict(enc_cfg), "beit": to_dict(cfg), "seed": run.seed, "data": str(data), "tokenizer": digest}
    return Pretraining(task.model.encoder, config, task, cfg.optim, {"tokenizer": tokenizer.kind})


# method name -> builder; BEiT and Img2Vec add one line each.
METHODS: dict[str, Callable[..., Pretraining]] = {
    "scratch": scratch,
    "mae": mae,
    "img2vec": img2vec,
    "beit": beit,
}
TEACHER_METHODS = ("img2vec",)  # builders that take teacher=PATH (--teacher)


@click.command("pretrain-student")
@click.option("--method", required=True, type=click.Choice(list(METHODS)), help="Pretraining method.")
@click.option("--name", default=None, help="Student name for the outputs (default: the method).")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="ImageNet-layout root with train/ (default: 'imagenet' in data/manifest.json).")
@click.option("--teacher", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Frozen teacher weights (img2vec): a timm CNN backbone or a student encoder .safetensors.")
@params_option
def pretrain_student(method: str, name: str | None, data: Path | None, teacher: Path | None, params_path: Path) -> None:
    """Pretrain a student (or initialise `scratch`) and write models/<student>/encoder.safetensors."""
    import torch

    from mim.config import load_section
    from mim.engine import RunConfig, fit, init_distributed, is_main
    from mim.errors import MimError
    from mim.export import save_encoder

    name = name or method
    run = load_section(params_path, "run", RunConfig)
    if run.threads:
        torch.set_num_threads(run.threads)
    init_distributed()
    extra = {"teacher": teacher} if teacher is not None else {}
    if extra and method not in TEACHER_METHODS:
        raise MimError(f"--teacher applies to {', '.join(TEACHER_METHODS)} only, not {method}")
    job = METHODS[method](params_path, data, **extra)  # None: the manifest's ImageNet (scratch reads none)
    if job.task is not None:
        assert job.optim is not None
        fit(job.task, job.optim, run, checkpoint=Path("checkpoints") / f"{name}.pt", log_dir=Path("logs") / name,
            config=job.config, desc=f"pretrain {name}")
    if is_main():
        out = Path("models") / name / "encoder.safetensors"
        epochs = str(job.optim.epochs if job.optim is not None else 0)  # shown next to the student's results
        save_encoder(out, job.encoder.cpu(), extra={"student": name, "method": method, "params": str(params_path),
                                                    "pretrain_epochs": epochs, **job.metadata})
        click.echo(f"{name}: encoder written to {out}")
