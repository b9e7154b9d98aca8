"""`mimrepro tokenizer`: BEiT's visual tokenizer -> models/tokenizer/tokenizer.safetensors."""
from __future__ import annotations

from pathlib import Path

import click

from stages.common import params_option


@click.command("tokenizer")
@params_option
@click.option("--data", "data_root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="ImageNet-layout root with train/ and val/ [default: 'imagenet' in data/manifest.json].")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("models/tokenizer/tokenizer.safetensors"), show_default=True)
@click.option("--metrics", "metrics_path", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("metrics/tokenizer/tokenizer.json"), show_default=True)
@click.option("--convert-dalle", nargs=2, type=click.Path(path_type=Path), default=None, metavar="PKL OUT",
              help="Only convert DALL-E's pickled encoder.pkl to safetensors OUT (unpickling runs code!) and exit.")
def tokenizer(params_path: Path, data_root: Path | None, out: Path, metrics_path: Path,
              convert_dalle: tuple[Path, Path] | None) -> None:
    """Train BEiT's visual tokenizer (VQ-VAE, mode train) or export the converted DALL-E encoder (mode dalle)."""
    from mim import tokenizer as tk
    from mim.checkpoint import write_json

    if convert_dalle:
        arch = tk.convert_dalle(*convert_dalle)
        click.echo(f"wrote {convert_dalle[1]} ({arch}); set tokenizer.dalle_weights to it and tokenizer.mode to dalle")
        return

    from mim.config import load_section, to_dict
    from mim.data import ImageFolder, make_loader
    from mim.datasets import read_manifest
    from mim.engine import RunConfig, fit

    cfg = load_section(params_path, "tokenizer", tk.TokenizerConfig)
    run = load_section(params_path, "run", RunConfig)
    root = data_root or read_manifest().imagenet
    if cfg.mode == "dalle":
        if not cfg.dalle_weights:
            raise tk.MimError("tokenizer.dalle_weights is empty: convert encoder.pkl with `mimrepro tokenizer --convert-dalle PKL OUT`")
        enc, arch = tk.load_dalle(Path(cfg.dalle_weights))
        tok = tk.dalle_tokenizer(enc, arch, cfg.image_size)
        _, val_tf = tk.tokenizer_transforms(cfg)
        val = make_loader(ImageFolder(root / "val", val_tf), 64, epoch=0, seed=run.seed, shuffle=False, drop_last=False)
        metrics = {f"val/{k}": v for k, v in tk.evaluate_tokenizer(tok, val).items()}
    else:
        task, tok, _ = tk.tokenizer_task(cfg, run, root / "train", root / "val")
        assert cfg.optim is not None
        metrics = fit(task, cfg.optim, run, checkpoint=Path("checkpoints/tokenizer.pt"), log_dir=Path("logs/tokenizer"),
                      config={"tokenizer": to_dict(cfg), "seed": run.seed, "data": str(root)}, desc="tokenizer")
        tok = tk.vqvae_tokenizer(task.model.cpu())  # type: ignore[arg-type]
    tk.save_tokenizer(out, tok)
    metrics = {k.removeprefix("val/"): v for k, v in metrics.items() if k.startswith("val/")}
    metrics.update(vocab_size=float(tok.vocab_size), grid=float(tok.grid))
    write_json(metrics_path, metrics)
    click.echo(f"tokenizer ({tok.kind}, {tok.vocab_size} words, {tok.grid}x{tok.grid} grid): "
               f"codebook usage {metrics['codebook_usage']:.1%}, perplexity {metrics['perplexity']:.1f} -> {out}")
