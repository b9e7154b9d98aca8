"""`mimrepro tokenizer`: BEiT's visual tokenizer, trained here (VQ-VAE) or DALL-E's, to one file."""
from __future__ import annotations

from pathlib import Path

import click

from stages.common import data_option, file_option, load, params_option, run_option


@click.command("tokenizer")
@params_option
@data_option()
@file_option("--out", "The tokenizer (.safetensors) that BEiT students read.", output=True)
@file_option("--metrics", "Codebook usage, perplexity (and for a VQ-VAE the PSNR) on val (.json).", output=True)
@run_option
def tokenizer(params_path: Path, data: Path, out: Path, metrics: Path, run_dir: Path) -> None:
    """Train BEiT's visual tokenizer (VQ-VAE, tokenizer.mode train) or export the converted DALL-E
    encoder (mode dalle; convert its pickle first with `mimrepro convert-dalle`)."""
    from mim.config import to_dict
    from mim.data.images import open_dataset
    from mim.engine import is_main
    from mim.errors import MimError
    from mim.files import write_json
    from mim.tokenizer import vqvae
    from mim.tokenizer.frozen import save_tokenizer, vqvae_tokenizer
    from stages.run import fit_in, start

    cfg = load(params_path, "tokenizer", vqvae.Config)
    run = start(params_path)
    ds = open_dataset(data, run.num_workers or None)
    if cfg.mode == "dalle":
        from mim.tokenizer.official_dalle import dalle_tokenizer, load_dalle

        if not cfg.dalle_weights:
            raise MimError("tokenizer.dalle_weights is empty: convert encoder.pkl with `mimrepro convert-dalle PKL OUT`")
        tok = dalle_tokenizer(*load_dalle(Path(cfg.dalle_weights)), image_size=cfg.model.image_size)
        val = vqvae.val_loader(ds, cfg.model.image_size, 64, run)
        result = {f"val/{k}": v for k, v in vqvae.evaluate_tokenizer(tok, val).items()}
    else:
        t = vqvae.task(cfg, run, ds)
        config = {"tokenizer": to_dict(cfg), "seed": run.seed, "data": str(ds.root)}
        result = fit_in(t, run, run_dir, config, desc="tokenizer")
        tok = vqvae_tokenizer(t.model.cpu())
    if not is_main():
        return
    save_tokenizer(out, tok)
    summary = {k.removeprefix("val/"): v for k, v in result.items() if k.startswith("val/")}
    summary.update(vocab_size=float(tok.vocab_size), grid=float(tok.grid), skipped_images=len(ds.skipped))
    write_json(metrics, summary)
    click.echo(f"tokenizer ({tok.kind}, {tok.vocab_size} words, {tok.grid}x{tok.grid} grid): "
               f"codebook usage {summary['codebook_usage']:.1%}, perplexity {summary['perplexity']:.1f} -> {out}")


@click.command("convert-dalle")
@click.argument("pkl", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--allow-pickle", is_flag=True, help="Unpickle PKL if it is not a plain state_dict (the official file is a "
                                                  "pickled module): this runs code stored in it; only for a file you trust.")
def convert_dalle(pkl: Path, out: Path, allow_pickle: bool) -> None:
    """Convert DALL-E's pickled encoder.pkl to a plain safetensors OUT, once (unpickling runs code
    stored in the file: convert only the official one).  Then set tokenizer.mode dalle and
    tokenizer.dalle_weights OUT."""
    from mim.tokenizer.official_dalle import convert_dalle as convert

    arch = convert(pkl, out, allow_pickle)
    click.echo(f"wrote {out} ({arch}); set tokenizer.dalle_weights to it and tokenizer.mode to dalle")
