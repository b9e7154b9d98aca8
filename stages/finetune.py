"""`mimrepro finetune --student NAME`: fine-tune a student encoder end to end (MAE recipe)."""
from __future__ import annotations

from pathlib import Path

import click

from stages.common import params_option


@click.command("finetune")
@click.option("--student", required=True, help="Student name: reads models/<student>/encoder.safetensors.")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="ImageNet-layout root with train/ and val/ (default: 'imagenet' in data/manifest.json).")
@params_option
def finetune(student: str, data: Path | None, params_path: Path) -> None:
    """Fine-tune models/<student>/encoder.safetensors; top-1/top-5 to metrics/finetune/<student>.json."""
    import torch

    from mim.checkpoint import file_sha256, write_json
    from mim.config import load_section, to_dict
    from mim.datasets import read_manifest
    from mim.engine import RunConfig, fit, init_distributed, is_main
    from mim.export import load_encoder, read_encoder
    from mim.finetune import FinetuneConfig, finetune_task

    cfg = load_section(params_path, "finetune", FinetuneConfig)
    run = load_section(params_path, "run", RunConfig)
    if run.threads:
        torch.set_num_threads(run.threads)
    init_distributed()
    root = data or read_manifest().imagenet
    enc_path = Path("models") / student / "encoder.safetensors"
    _, _, meta = read_encoder(enc_path)  # clear error for a missing or corrupt file
    torch.manual_seed(run.seed)  # head init
    task = finetune_task(load_encoder(enc_path, drop_path=cfg.drop_path), root, cfg, run)
    config = {"finetune": to_dict(cfg), "seed": run.seed, "data": str(root),
              "encoder_sha256": file_sha256(enc_path)}  # a new encoder restarts the run
    run_name = f"finetune-{student}"
    metrics = fit(task, cfg.optim, run, checkpoint=Path("checkpoints") / f"{run_name}.pt", log_dir=Path("logs") / run_name,
                  config=config, desc=run_name)
    if is_main():
        out = {"top1": metrics["val/top1"], "top5": metrics["val/top5"], "epochs": cfg.optim.epochs,
               "labels_per_class": cfg.labels_per_class}
        if meta.get("pretrain_epochs", "").isdigit():
            out["pretrain_epochs"] = int(meta["pretrain_epochs"])
        write_json(Path("metrics/finetune") / f"{student}.json", out)
        click.echo(f"{student}: fine-tune top-1 {out['top1']:.2f}  top-5 {out['top5']:.2f}")
