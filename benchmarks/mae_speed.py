"""MAE pretraining step throughput: encoder on visible patches only vs mask tokens in the encoder.

The paper's comparison (papers.md MAE, "Speed"): ViT-L, 800 epochs, 42.4 h with mask tokens in the
encoder vs 15.4 h without (2.8x wall-clock), 3.3x fewer FLOPs.  Here: ViT-B/16 at 224 by default,
the paper's decoder 8 x 512 (16 heads), mask ratio 0.75, one fwd+bwd+AdamW step per timing.

    python benchmarks/mae_speed.py                      # ViT-B/16, batch 8, 1 thread, 5 timed steps each
    python benchmarks/mae_speed.py --arch vit_large     # times ViT-L/16 instead (slow on a CPU)
    python benchmarks/mae_speed.py --arch vit_tiny --img 32 --patch 8 --batch 2 --steps 5 --warmup 1   # smoke run

Both models live in one process, built from the same seed, and train one step each in turn
(A, B, A, B, ...) on the same batch after `--warmup` untimed rounds, so load from other work on a
shared machine falls on both alike.  `--threads 1` (default) also makes the CPU time a steady measure.
Prints, per variant, images/s (batch / median wall s/step), the median wall and process-CPU s/step;
then `ratio` lines: the MAE speed-up, B's step time / A's per pair, as the median over the pairs and
its min-max (wall and CPU); then `FLOP bound` lines: fwd+bwd FLOPs with mask tokens / without,
counted with torch.utils.flop_counter on the meta device (matmuls and attention; no compute), for
ViT-B/16 and ViT-L/16 with the 8 x 512 decoder at 224 (and the timed model when it is neither), the
speed-up were time proportional to FLOPs.
"""
from __future__ import annotations

import argparse

import torch
from bench_util import alternate, fmt_ratio, pair_ratios, set_threads, train_flops

from mim.methods.mae import MAE, MAEWithMaskTokensInEncoder
from mim.methods.mae import ModelConfig as MAEConfig
from mim.vit import VIT_SIZES, ViTConfig, vit_config

ARCHS = ("vit_tiny", "vit_small", "vit_base", "vit_large")
LETTERS = {"tiny": "Ti", "small": "S", "base": "B", "large": "L"}
VARIANTS = {"A": ("MAE (encoder on visible patches)", False), "B": ("mask tokens in the encoder", True)}


def mae_model(enc: ViTConfig, cfg: MAEConfig, mask_tokens_in_encoder: bool) -> torch.nn.Module:
    return (MAEWithMaskTokensInEncoder if mask_tokens_in_encoder else MAE)(enc, cfg)


def mae_flops(enc: ViTConfig, cfg: MAEConfig, in_encoder: bool) -> float:
    """fwd+bwd FLOPs per image."""
    return train_flops(lambda: mae_model(enc, cfg, in_encoder), lambda: torch.randn(1, 3, enc.img_size, enc.img_size),
                       lambda m, x: m(x)[0])


def flop_bound(enc: ViTConfig, cfg: MAEConfig) -> tuple[float, float]:
    """(GFLOPs/img fwd+bwd without mask tokens, with them)."""
    return mae_flops(enc, cfg, False) / 1e9, mae_flops(enc, cfg, True) / 1e9


def name(enc: ViTConfig) -> str:
    """ViT-B/16 at 224px (or the widths of an unnamed size)."""
    size = next((s for s, kw in VIT_SIZES.items() if all(getattr(enc, k) == v for k, v in kw.items())), None)
    arch = f"ViT-{LETTERS[size]}" if size else f"ViT {enc.embed_dim}x{enc.depth}"
    return f"{arch}/{enc.patch_size} at {enc.img_size}px"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="vit_base", choices=ARCHS, help="the ViT timed (default vit_base)")
    ap.add_argument("--img", type=int, default=224)
    ap.add_argument("--patch", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5, help="timed steps of each variant")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps of each variant first")
    ap.add_argument("--decoder-depth", type=int, default=8)
    ap.add_argument("--decoder-dim", type=int, default=512)
    ap.add_argument("--decoder-heads", type=int, default=16)
    ap.add_argument("--mask-ratio", type=float, default=0.75)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = torch's default)")
    args = ap.parse_args()
    threads = set_threads(args.threads)
    enc = vit_config(args.arch.removeprefix("vit_"), img_size=args.img, patch_size=args.patch)
    cfg = MAEConfig(mask_ratio=args.mask_ratio, decoder_dim=args.decoder_dim, decoder_depth=args.decoder_depth,
                    decoder_heads=args.decoder_heads)
    dec = f"decoder {args.decoder_depth}x{args.decoder_dim}"
    print(f"{name(enc)}, {dec}, mask {args.mask_ratio}, batch {args.batch}, {threads} thread(s), "
          f"{args.steps} timed steps each after {args.warmup} warm-up, alternating A, B, A, B, ...", flush=True)

    models, opts = {}, {}
    for key, (_, in_encoder) in VARIANTS.items():
        torch.manual_seed(0)
        models[key] = mae_model(enc, cfg, in_encoder).train()
        opts[key] = torch.optim.AdamW(models[key].parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
    imgs = torch.randn(args.batch, 3, args.img, args.img)

    def step(key: str) -> None:
        loss, _ = models[key](imgs)
        loss.backward()
        opts[key].step()
        opts[key].zero_grad(set_to_none=True)

    times = alternate({k: (lambda k=k: step(k)) for k in VARIANTS}, args.steps, args.warmup)
    gflops = flop_bound(enc, cfg)
    for i, (key, (label, _)) in enumerate(VARIANTS.items()):
        t = times[key]
        print(f"{key}  {label:34s} {args.batch / t.wall_median:7.2f} img/s  {t.wall_median:7.3f} s/step wall  "
              f"{t.cpu_median:7.3f} s/step CPU  {gflops[i]:7.2f} GFLOPs/img fwd+bwd", flush=True)
    a, b = times["A"], times["B"]
    print(f"ratio (MAE speed-up, B/A step time, {args.steps} pairs): wall {fmt_ratio(pair_ratios(b.wall, a.wall))}, "
          f"CPU {fmt_ratio(pair_ratios(b.cpu, a.cpu))}; FLOP bound {gflops[1] / gflops[0]:.2f}x")

    bounds = [(vit_config("base"), MAEConfig(decoder_dim=512, decoder_depth=8, decoder_heads=16)),
              (vit_config("large"), MAEConfig(decoder_dim=512, decoder_depth=8, decoder_heads=16))]
    for e, c in bounds:
        if e == enc and c == cfg:
            f0, f1 = gflops
        else:
            f0, f1 = flop_bound(e, c)
        print(f"FLOP bound {name(e)}, decoder {c.decoder_depth}x{c.decoder_dim}: {f1 / f0:.2f}x "
              f"({f1:.1f} / {f0:.1f} GFLOPs/img fwd+bwd, mask tokens in the encoder / MAE)")
    print("paper (ViT-L, decoder 8x512): 2.8x wall-clock, 3.3x FLOPs")


if __name__ == "__main__":
    main()
