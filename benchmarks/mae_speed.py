"""MAE pretraining step throughput: encoder on visible patches only vs mask tokens in the encoder.

The paper's comparison (MAE, papers.md "Speed"): ViT-L, 800 epochs, 42.4 h with mask tokens
in the encoder vs 15.4 h without (2.8x wall-clock).  Here: ViT-B/16 at 224, decoder 8 x 512,
mask ratio 0.75, AdamW, one fwd+bwd+step per timing, both models in one run.

    python benchmarks/mae_speed.py                 # ViT-B/16, batch 8, 3 timed steps, CPU
    python benchmarks/mae_speed.py --threads 1     # CPU time is then robust to machine load

Prints images/s (wall) and CPU seconds per step for both variants and their ratios.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from mim.methods.mae import MAE, MAEWithMaskTokensInEncoder
from mim.methods.mae import ModelConfig as MAEConfig
from mim.vit import vit_config


def time_steps(model: torch.nn.Module, batch: int, img: int, steps: int, warmup: int) -> tuple[float, float]:
    """Median (wall s, process CPU s) of fwd+bwd+AdamW step."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95))
    imgs = torch.randn(batch, 3, img, img)
    walls, cpus = [], []
    for i in range(warmup + steps):
        t, c = time.perf_counter(), time.process_time()
        loss, _ = model(imgs)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= warmup:
            walls.append(time.perf_counter() - t)
            cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus)


def mae_model(enc: object, cfg: MAEConfig, mask_tokens_in_encoder: bool) -> torch.nn.Module:
    return (MAEWithMaskTokensInEncoder if mask_tokens_in_encoder else MAE)(enc, cfg)  # type: ignore[arg-type]


def train_flops(enc: object, cfg: MAEConfig, in_encoder: bool) -> float:
    """fwd+bwd FLOPs per image, counted on the meta device (no compute)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = mae_model(enc, cfg, mask_tokens_in_encoder=in_encoder)  # type: ignore[arg-type]
        imgs = torch.randn(1, 3, enc.img_size, enc.img_size)  # type: ignore[attr-defined]
    with FlopCounterMode(display=False) as counter:
        loss, _ = model(imgs)
        loss.backward()
    return float(counter.get_total_flops())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="base", choices=["tiny", "small", "base", "large"])
    ap.add_argument("--img", type=int, default=224)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--decoder-depth", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    enc = vit_config(args.size, img_size=args.img)
    cfg = MAEConfig(mask_ratio=0.75, decoder_dim=512, decoder_depth=args.decoder_depth, decoder_heads=16)
    print(f"ViT-{args.size}/{enc.patch_size} at {args.img}px, decoder {args.decoder_depth}x512, mask 0.75, "
          f"batch {args.batch}, {torch.get_num_threads()} threads, {args.steps} timed steps")
    results = {}
    for name, in_encoder in (("MAE (visible patches only)", False), ("mask tokens in encoder", True)):
        model = mae_model(enc, cfg, mask_tokens_in_encoder=in_encoder).train()
        wall, cpu = time_steps(model, args.batch, args.img, args.steps, args.warmup)
        flops = train_flops(enc, cfg, in_encoder)
        results[name] = (wall, cpu, flops)
        print(f"{name:28s} {args.batch / wall:7.2f} img/s  {wall:7.2f} s/step wall  {cpu:7.2f} s/step CPU  "
              f"{flops / 1e9:6.1f} GFLOPs/img fwd+bwd")
        del model
    (w0, c0, f0), (w1, c1, f1) = results.values()
    print(f"speed-up of MAE: {w1 / w0:.2f}x wall-clock, {c1 / c0:.2f}x CPU time, {f1 / f0:.2f}x FLOPs "
          "(paper: 2.8x wall-clock for ViT-L, 3.3x FLOPs)")


if __name__ == "__main__":
    main()
