"""`mimrepro probe --student NAME`: linear probe and k-NN on a frozen student encoder."""
from __future__ import annotations

from pathlib import Path

import click

from stages.common import dataset_root, params_option


@click.command("probe")
@click.option("--student", required=True, help="Student name: reads models/<student>/encoder.safetensors.")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="ImageNet-layout root with train/ and val/ (default: 'imagenet' in data/manifest.json).")
@params_option
def probe(student: str, data: Path | None, params_path: Path) -> None:
    """Linear probe (MAE) and k-NN (DINO) on frozen features; writes metrics/probe/<student>.json."""
    import time

    import torch

    from mim.checkpoint import write_json
    from mim.config import load_section
    from mim.data import ImageFolder
    from mim.engine import RunConfig, device
    from mim.export import load_encoder
    from mim.probe import ProbeConfig, eval_transform, extract_features, knn_classify, linear_probe, topk_accuracy

    cfg = load_section(params_path, "probe", ProbeConfig)
    run = load_section(params_path, "run", RunConfig)
    if run.threads:
        torch.set_num_threads(run.threads)
    root = data or dataset_root("imagenet")
    encoder = load_encoder(Path("models") / student / "encoder.safetensors").to(device())
    tf = eval_transform(encoder.cfg.img_size)
    train, val = ImageFolder(root / "train", tf), ImageFolder(root / "val", tf)
    t0 = time.perf_counter()
    x_train, y_train = extract_features(encoder, train, cfg.batch_size)
    x_val, y_val = extract_features(encoder, val, cfg.batch_size)
    n_cls = len(train.classes)
    scores = knn_classify(x_train, y_train, x_val, n_cls, cfg.knn.k, cfg.knn.temperature)
    lin = linear_probe(x_train, y_train, x_val, y_val, n_cls, cfg.linear, seed=run.seed)
    out = {
        "linear_top1": lin["top1"], "linear_top5": lin["top5"],
        "knn_top1": topk_accuracy(scores, y_val, 1), "knn_top5": topk_accuracy(scores, y_val, 5),
    }
    write_json(Path("metrics/probe") / f"{student}.json", out)
    click.echo(f"{student}: linear top-1 {out['linear_top1']:.2f}  k-NN top-1 {out['knn_top1']:.2f}  ({time.perf_counter() - t0:.1f} s)")
