"""Our MAE step (mim.methods.mae.MAE) vs a straightforward MAE built from timm's ViT `Block`, in one run.

The reference `TimmMAE` below is facebookresearch/mae `models_mae.py` (`MaskedAutoencoderViT`)
written compactly with its names and structure: timm `PatchEmbed`, fixed 2-D sin-cos position
embeddings (MAE util/pos_embed.py), random masking by argsort of uniform noise, timm `Block`s
(LayerNorm eps 1e-6), a decoder with mask tokens, MSE on per-patch normalised pixels of the masked
patches.  Two sizes: ViT-B/16 at 224 with the 8 x 512 decoder (models_mae `mae_vit_base_patch16`),
and the smoke profile's (params/smoke.yaml `encoder` and `mae.model`, read at run time).

    python benchmarks/mae_vs_timm.py                    # both sizes, 1 thread, 5 timed steps each
    python benchmarks/mae_vs_timm.py --only smoke --smoke-batch 8 --steps 5 --warmup 1   # smoke run

Per size: the parameter count of both models (all, and trainable; they must be equal), the loss
difference of the two on the same weights (ours copied into the reference) and the same mask noise,
then both train one fwd+bwd+AdamW step each in turn (ours, timm, ours, timm, ...) on one batch after
`--warmup` untimed rounds, and it prints images/s of each (batch / median wall s/step) and a `ratio`
line: ours / timm images/s, the median over the pairs of timm's step time / ours and its min-max
(wall and process CPU time).  Above 1 means ours is faster.
"""
from __future__ import annotations

import argparse
import sys
from functools import partial

import numpy as np
import torch
from bench_util import alternate, count_params, fmt_ratio, pair_ratios, section, set_threads
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block
from torch import nn

from mim.methods.mae import MAE
from mim.methods.mae import ModelConfig as MAEConfig
from mim.vit import ViTConfig, vit_config


# --- the reference: facebookresearch/mae models_mae.py, compact ------------------------------------
def sincos_2d(dim: int, grid: int) -> np.ndarray:
    """MAE util/pos_embed.py get_2d_sincos_pos_embed(dim, grid, cls_token=True)."""
    def one(d: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    g = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32))  # w goes first
    emb = np.concatenate([one(dim // 2, g[0]), one(dim // 2, g[1])], axis=1)
    return np.concatenate([np.zeros([1, dim]), emb], axis=0)


class TimmMAE(nn.Module):
    """models_mae.py MaskedAutoencoderViT: the same modules, names, init and forward."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int, depth: int, num_heads: int,
                 decoder_embed_dim: int, decoder_depth: int, decoder_num_heads: int, mlp_ratio: float = 4.0,
                 norm_pix_loss: bool = True) -> None:
        super().__init__()
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        n = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer) for _ in range(depth)])
        self.norm = norm_layer(embed_dim)
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, n + 1, decoder_embed_dim), requires_grad=False)
        self.decoder_blocks = nn.ModuleList([Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
                                             for _ in range(decoder_depth)])
        self.decoder_norm = norm_layer(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size**2 * in_chans, bias=True)
        self.norm_pix_loss = norm_pix_loss
        self.initialize_weights()

    def initialize_weights(self) -> None:
        grid = int(self.patch_embed.num_patches**0.5)
        self.pos_embed.data.copy_(torch.from_numpy(sincos_2d(self.pos_embed.shape[-1], grid)).float().unsqueeze(0))
        self.decoder_pos_embed.data.copy_(torch.from_numpy(sincos_2d(self.decoder_pos_embed.shape[-1], grid)).float().unsqueeze(0))
        w = self.patch_embed.proj.weight.data
        torch.nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
        torch.nn.init.normal_(self.cls_token, std=0.02)
        torch.nn.init.normal_(self.mask_token, std=0.02)
        self.apply(self._init_weights)

    def _init_weights(self, m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            torch.nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        p = self.patch_embed.patch_size[0]
        h = w = imgs.shape[2] // p
        x = imgs.reshape(shape=(imgs.shape[0], 3, h, p, w, p))
        x = torch.einsum("nchpwq->nhwpqc", x)
        return x.reshape(shape=(imgs.shape[0], h * w, p**2 * 3))

    def random_masking(self, x: torch.Tensor, mask_ratio: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n, length, d = x.shape
        len_keep = int(length * (1 - mask_ratio))
        noise = torch.rand(n, length, device=x.device)
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :len_keep]
        x_masked = torch.gather(x, dim=1, index=ids_keep.unsqueeze(-1).repeat(1, 1, d))
        mask = torch.ones([n, length], device=x.device)
        mask[:, :len_keep] = 0
        mask = torch.gather(mask, dim=1, index=ids_restore)
        return x_masked, mask, ids_restore

    def forward_encoder(self, x: torch.Tensor, mask_ratio: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.patch_embed(x)
        x = x + self.pos_embed[:, 1:, :]
        x, mask, ids_restore = self.random_masking(x, mask_ratio)
        cls_token = self.cls_token + self.pos_embed[:, :1, :]
        x = torch.cat((cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, x: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        x = self.decoder_embed(x)
        mask_tokens = self.mask_token.repeat(x.shape[0], ids_restore.shape[1] + 1 - x.shape[1], 1)
        x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)
        x_ = torch.gather(x_, dim=1, index=ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
        x = torch.cat([x[:, :1, :], x_], dim=1)
        x = x + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_pred(self.decoder_norm(x))
        return x[:, 1:, :]

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        target = self.patchify(imgs)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        loss = ((pred - target) ** 2).mean(dim=-1)
        return (loss * mask).sum() / mask.sum()

    def forward(self, imgs: torch.Tensor, mask_ratio: float = 0.75) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio)
        pred = self.forward_decoder(latent, ids_restore)
        return self.forward_loss(imgs, pred, mask), pred, mask


# --- ours vs the reference ------------------------------------------------------------------------
OURS_TO_REF = (("encoder.blocks.", "blocks."), ("encoder.norm.", "norm."), ("encoder.", ""), ("decoder.embed.", "decoder_embed."),
               ("decoder.mask_token", "mask_token"), ("decoder.pos_embed", "decoder_pos_embed"),
               ("decoder.blocks.", "decoder_blocks."), ("decoder.norm.", "decoder_norm."))


def ref_key(k: str) -> str:
    for a, b in OURS_TO_REF:
        if k.startswith(a):
            return b + k[len(a):]
    return k  # decoder_pred.*


def reference(enc: ViTConfig, cfg: MAEConfig) -> TimmMAE:
    return TimmMAE(enc.img_size, enc.patch_size, enc.in_chans, enc.embed_dim, enc.depth, enc.num_heads,
                   cfg.decoder_dim, cfg.decoder_depth, cfg.decoder_heads, enc.mlp_ratio, cfg.norm_pix)


def same_loss(enc: ViTConfig, cfg: MAEConfig) -> float:
    """|loss ours - loss reference| with ours' weights copied into the reference and the same mask noise."""
    torch.manual_seed(0)
    ours, ref = MAE(enc, cfg), reference(enc, cfg)
    ref.load_state_dict({ref_key(k): v for k, v in ours.state_dict().items()}, strict=True)
    imgs = torch.randn(2, 3, enc.img_size, enc.img_size)
    with torch.no_grad():
        torch.manual_seed(1)
        a = ours(imgs)[0]
        torch.manual_seed(1)
        b = ref(imgs, cfg.mask_ratio)[0]
    return abs(float(a) - float(b))


def compare(label: str, enc: ViTConfig, cfg: MAEConfig, batch: int, steps: int, warmup: int) -> bool:
    print(f"{label}: {enc.img_size}px, patch {enc.patch_size}, width {enc.embed_dim}, depth {enc.depth}, heads {enc.num_heads}; "
          f"decoder {cfg.decoder_depth}x{cfg.decoder_dim} ({cfg.decoder_heads} heads), mask {cfg.mask_ratio}; batch {batch}", flush=True)
    torch.manual_seed(0)
    models = {"ours": MAE(enc, cfg).train(), "timm": reference(enc, cfg).train()}
    (n0, t0), (n1, t1) = count_params(models["ours"]), count_params(models["timm"])
    same = (n0, t0) == (n1, t1)
    print(f"  parameters: ours {n0:,} ({t0:,} trainable), timm {n1:,} ({t1:,} trainable): {'same' if same else 'DIFFERENT'}")
    diff = same_loss(enc, cfg)
    print(f"  loss on the same weights and mask noise: |ours - timm| = {diff:.2e}")
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05) for k, m in models.items()}
    imgs = torch.randn(batch, 3, enc.img_size, enc.img_size)

    def step(k: str) -> None:
        m = models[k]
        loss = m(imgs)[0] if k == "ours" else m(imgs, cfg.mask_ratio)[0]
        loss.backward()
        opts[k].step()
        opts[k].zero_grad(set_to_none=True)

    times = alternate({k: (lambda k=k: step(k)) for k in models}, steps, warmup)
    for k, t in times.items():
        print(f"  {k:5s} {batch / t.wall_median:8.2f} img/s  {t.wall_median:7.3f} s/step wall  {t.cpu_median:7.3f} s/step CPU")
    a, b = times["ours"], times["timm"]
    print(f"  ratio ours / timm images/s ({steps} pairs): wall {fmt_ratio(pair_ratios(b.wall, a.wall))}, "
          f"CPU {fmt_ratio(pair_ratios(b.cpu, a.cpu))}", flush=True)
    return same and diff < 1e-4


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["base", "smoke"], help="one size only (default both)")
    ap.add_argument("--batch", type=int, default=8, help="batch of the ViT-B/16 run")
    ap.add_argument("--smoke-batch", type=int, default=0, help="batch of the smoke-size run (0 = params/smoke.yaml's mae.optim.batch_size)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps of each model")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps of each model first")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = torch's default)")
    args = ap.parse_args()
    print(f"{set_threads(args.threads)} thread(s), {args.steps} timed steps each after {args.warmup} warm-up, alternating ours, timm, ...")
    ok = True
    if args.only in (None, "base"):
        base = MAEConfig(mask_ratio=0.75, decoder_dim=512, decoder_depth=8, decoder_heads=16, norm_pix=True)  # mae_vit_base_patch16
        ok &= compare("ViT-B/16 at 224 (models_mae mae_vit_base_patch16)", vit_config("base"), base, args.batch, args.steps, args.warmup)
    if args.only in (None, "smoke"):
        from mim.methods import mae

        enc, cfg = section("smoke", "encoder", ViTConfig), section("smoke", "mae", mae.Config)
        batch = args.smoke_batch or cfg.optim.batch_size
        ok &= compare("smoke (params/smoke.yaml encoder + mae.model)", enc, cfg.model, batch, args.steps, args.warmup)
    if not ok:
        print("the two models differ (parameter count or loss)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
