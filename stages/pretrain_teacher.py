"""`mimrepro pretrain-teacher` (DINO, ResNet-50 by default) and `mimrepro import-teacher`."""
from __future__ import annotations

import time
from pathlib import Path

import click

from stages.common import params_option


def imagenet_root() -> Path:
    """The ImageNet-layout root recorded by prepare-data in data/manifest.json."""
    from mim.datasets import read_manifest

    return read_manifest().imagenet


@click.command("pretrain-teacher")
@params_option
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="ImageNet-layout root with train/ and val/ (default: 'imagenet' in data/manifest.json).")
@click.option("--name", default="dino_rn50", show_default=True, help="Teacher name (run, metrics file).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("models/teacher/backbone.safetensors"), show_default=True)
def pretrain_teacher(params_path: Path, data: Path | None, name: str, out: Path) -> None:
    """Pretrain the DINO teacher (params `teacher`; ResNet-50 by default) and export its backbone
    with timm key names; logs k-NN top-1, teacher entropy and student-teacher KL per epoch."""
    import torch

    from mim.checkpoint import write_json
    from mim.config import load_section, to_dict
    from mim.data import ImageFolder, make_loader
    from mim.dino import DINO, MultiCropAugmentation, TeacherConfig, collate_crops, momentum_schedule, pooled
    from mim.engine import RunConfig, Task, device, fit, init_distributed, is_main, local_batch, param_groups_weight_decay, steps_for
    from mim.errors import MimError
    from mim.probe import eval_transform, knn_classify, topk_accuracy
    from mim.teachers import save_timm_backbone

    cfg = load_section(params_path, "teacher", TeacherConfig)
    run = load_section(params_path, "run", RunConfig)
    root = data or imagenet_root()
    init_distributed()
    if run.threads:
        torch.set_num_threads(run.threads)
    torch.manual_seed(run.seed)
    dino = DINO(cfg.dino)
    if torch.distributed.is_initialized():
        dino = torch.nn.SyncBatchNorm.convert_sync_batchnorm(dino)  # as DINO does for ResNets

    train = ImageFolder(root / "train", MultiCropAugmentation(cfg.dino.crops), cfg.limit_per_class)
    batch = local_batch(cfg.optim)
    steps = steps_for(len(train), batch)
    if steps < 1:
        raise MimError(f"{root / 'train'} has {len(train)} images, fewer than one batch of {batch}")
    updates = max(1, steps // cfg.optim.accum_steps)
    momentum = momentum_schedule(cfg.dino, cfg.optim.epochs * updates)

    def loader(epoch: int):
        dino.set_epoch(epoch, cfg.optim.epochs)
        return make_loader(train, batch, epoch=epoch, seed=run.seed, num_workers=run.num_workers, collate_fn=collate_crops)

    def step(model, batch_):
        crops, _labels = batch_
        return model(crops)

    ev = eval_transform(cfg.dino.crops.global_size)
    bank = ImageFolder(root / "train", ev, cfg.knn_train_per_class)
    val = ImageFolder(root / "val", ev)

    @torch.no_grad()
    def features(dataset: ImageFolder) -> tuple[torch.Tensor, torch.Tensor]:
        backbone = dino.teacher.backbone
        feats, labels = [], []
        for x, y in make_loader(dataset, 64, epoch=0, seed=run.seed, shuffle=False, drop_last=False, num_workers=run.num_workers):
            feats.append(pooled(backbone, x.to(device())).float().cpu())  # (B, C) pooled last stage
            labels.append(y)
        return torch.cat(feats), torch.cat(labels)

    def evaluate(epoch: int) -> dict[str, float]:
        """Weighted k-NN top-1 (DINO protocol) of the teacher backbone, in eval mode."""
        if (epoch + 1) % cfg.knn_every and epoch + 1 != cfg.optim.epochs:
            return {}
        dino.teacher.backbone.eval()
        (f_tr, y_tr), (f_te, y_te) = features(bank), features(val)
        dino.teacher.backbone.train()  # the DINO teacher runs in train mode (BatchNorm batch statistics)
        scores = knn_classify(f_tr, y_tr, f_te, len(bank.classes), cfg.knn_k, cfg.knn_temperature)
        return {"knn_top1": topk_accuracy(scores, y_te, 1)}

    task = Task(
        model=dino,
        step=step,
        loader=loader,
        steps_per_epoch=steps,
        param_groups=param_groups_weight_decay(dino.student, cfg.optim.weight_decay),
        after_step=lambda it: dino.update_teacher(float(momentum[it])),
        evaluate=evaluate,
    )
    config = {"teacher": to_dict(cfg), "seed": run.seed, "data": str(root), "train_files": files_fingerprint(train.samples)}
    t0 = time.time()
    metrics = fit(task, cfg.optim, run, checkpoint=Path(f"checkpoints/{name}.pt"), log_dir=Path(f"logs/{name}"), config=config, desc=f"dino {name}")
    if not is_main():
        return
    backbone = dino.teacher.backbone.cpu()
    save_timm_backbone(out, backbone, cfg.dino.arch, extra={"name": name, "params": str(params_path)})
    summary = {
        "arch": cfg.dino.arch,
        "epochs": cfg.optim.epochs,
        "train_images": len(train),
        "val_images": len(val),
        "params_m": round(sum(p.numel() for p in backbone.parameters()) / 1e6, 2),
        "seconds": round(time.time() - t0, 1),
        **{k.removeprefix("train/"): v for k, v in metrics.items()},
    }
    write_json(Path(f"metrics/teacher/{name}.json"), summary)
    click.echo(f"{name}: k-NN top-1 {summary.get('knn_top1', float('nan')):.2f}%, teacher entropy "
               f"{summary.get('teacher_entropy', float('nan')):.3f}, KL {summary.get('kl', float('nan')):.3f} -> {out}")


def files_fingerprint(samples: list[tuple[Path, int]]) -> str:
    """Hash of (path, size, label) of the training images: regenerated data never resumes an old run."""
    import hashlib

    h = hashlib.sha256()
    for path, label in samples:
        h.update(f"{path}\t{path.stat().st_size}\t{label}\n".encode())
    return h.hexdigest()[:16]


@click.command("import-teacher")
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--which", type=click.Choice(["teacher", "student"]), default="teacher", show_default=True,
              help="Network to take from a full DINO training checkpoint.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("models/teacher/backbone.safetensors"), show_default=True)
def import_teacher(checkpoint: Path, which: str, out: Path) -> None:
    """Use the official DINO ResNet-50 weights (local dino_resnet50_pretrain.pth or a full
    checkpoint) as the teacher instead of pretraining: writes timm resnet50 keys to --out."""
    from mim.dino_import import import_teacher as convert

    convert(checkpoint, out, which)
    click.echo(f"imported {checkpoint} ({which}) -> {out}")
