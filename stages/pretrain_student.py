"""`mimrepro pretrain-student --method NAME`: pretrain a student ViT and export its encoder.

A method is one entry of `METHODS`: a function (params file, ImageNet-layout root) ->
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


def scratch(params: Path, data: Path) -> Pretraining:
    """Random initialisation, no training: the baseline every pretrained student must beat."""
    import torch

    from mim.config import load_section, to_dict
    from mim.engine import RunConfig
    from mim.vit import ViTConfig, ViTEncoder

    enc_cfg = load_section(params, "encoder", ViTConfig)
    run = load_section(params, "run", RunConfig)
    torch.manual_seed(run.seed)
    return Pretraining(ViTEncoder(enc_cfg), {"encoder": to_dict(enc_cfg), "seed": run.seed})


def mae(params: Path, data: Path) -> Pretraining:
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
    model = MAE(enc_cfg, cfg.model)
    task = image_pretrain_task(model, data / "train", enc_cfg.img_size, cfg.crop_scale, cfg.optim, run)
    config = {"encoder": to_dict(enc_cfg), "mae": to_dict(cfg), "seed": run.seed, "data": str(data)}
    return Pretraining(model.encoder, config, task, cfg.optim)


def beit(params: Path, data: Path | None) -> Pretraining:
    """BEiT: blockwise masking, mask embedding before the encoder, visual-token prediction (mim/beit.py)."""
    import hashlib

    from mim.beit import BEiTConfig, beit_task
    from mim.config import load_section, to_dict
    from mim.datasets import read_manifest
    from mim.engine import RunConfig
    from mim.tokenizer import load_tokenizer
    from mim.vit import ViTConfig

    enc_cfg = load_section(params, "encoder", ViTConfig)
    cfg = load_section(params, "beit", BEiTConfig)
    run = load_section(params, "run", RunConfig)
    data = data or read_manifest().imagenet
    tok_path = Path("models/tokenizer/tokenizer.safetensors")
    tokenizer = load_tokenizer(tok_path)
    task = beit_task(cfg, enc_cfg, run, data / "train", tokenizer)
    digest = hashlib.sha256(tok_path.read_bytes()).hexdigest()  # a retrained tokenizer restarts the student
    config = {"encoder": to_dict(enc_cfg), "beit": to_dict(cfg), "seed": run.seed, "data": str(data), "tokenizer": digest}
    return Pretraining(task.model.encoder, config, task, cfg.optim, {"tokenizer": tokenizer.kind})


# method name -> builder; BEiT and Img2Vec add one line each.
METHODS: dict[str, Callable[[Path, Path], Pretraining]] = {
    "scratch": scratch,
    "mae": mae,
    "beit": beit,
}


@click.command("pretrain-student")
@click.option("--method", required=True, type=click.Choice(list(METHODS)), help="Pretraining method.")
@click.option("--name", default=None, help="Student name for the outputs (default: the method).")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="ImageNet-layout root with train/ (default: 'imagenet' in data/manifest.json).")
@params_option
def pretrain_student(method: str, name: str | None, data: Path | None, params_path: Path) -> None:
    """Pretrain a student (or initialise `scratch`) and write models/<student>/encoder.safetensors."""
    import torch

    from mim.config import load_section
    from mim.engine import RunConfig, fit, init_distributed, is_main
    from mim.export import save_encoder

    name = name or method
    run = load_section(params_path, "run", RunConfig)
    if run.threads:
        torch.set_num_threads(run.threads)
    init_distributed()
    root = data or dataset_root("imagenet")
    job = METHODS[method](params_path, root)
    if job.task is not None:
        assert job.optim is not None
        fit(job.task, job.optim, run, checkpoint=Path("checkpoints") / f"{name}.pt", log_dir=Path("logs") / name,
            config=job.config, desc=f"pretrain {name}")
    if is_main():
        out = Path("models") / name / "encoder.safetensors"
        save_encoder(out, job.encoder.cpu(), extra={"student": name, "method": method, "params": str(params_path), **job.metadata})
        click.echo(f"{name}: encoder written to {out}")
