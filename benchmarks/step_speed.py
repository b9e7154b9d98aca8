"""Images/s of one DINO multi-crop step (the Img2Vec teacher) and of one Img2Vec step, in one run.

Models and recipes come from params/<profile>.yaml (`--profile`, default `paper`) through
mim.config.from_dict, built directly with random weights (no data, no files):
* DINO (mim/teacher/dino.py `DINO`): the `dino` section: ResNet-50 student and EMA teacher, head,
  n_global x global_size + n_local x local_size crops (paper: 2 x 224 + 8 x 96), its optimizer
  (paper: LARS), gradient clipping, and the teacher's EMA update, all in the step;
* Img2Vec (mim/methods/img2vec.py `Img2Vec`): the `encoder` and `img2vec` sections, a randomly
  initialised timm ResNet-50 teacher (as mim/teacher/frozen.py loads one) whose forward on the full
  image (`teacher_targets`) is part of the step, then the student's fwd+bwd+optimizer step.
The batch is reduced for a CPU (`--batch`, images per step; each DINO image is all its crops).

    python benchmarks/step_speed.py                          # paper sizes, batch 2, 1 thread, 5 timed steps each
    python benchmarks/step_speed.py --batch 4 --threads 2 --n-local 8
    python benchmarks/step_speed.py --profile smoke --batch 2 --steps 5 --warmup 1   # smoke run (64 px)

The two steps alternate (DINO, Img2Vec, DINO, ...) after `--warmup` untimed rounds.  Prints the
sizes, then per method images/s (batch / median wall s/step) and the median wall and process-CPU
s/step (Img2Vec: also the teacher forward's share), and a `ratio` line: Img2Vec / DINO images/s,
the median over the pairs of DINO's step time / Img2Vec's, and its min-max.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch
from bench_util import alternate, clip, fmt_ratio, make_optimizer, pair_ratios, section, set_threads

from mim.methods import img2vec
from mim.param_groups import VIT_TOKENS, weight_decay_groups
from mim.teacher import dino
from mim.teacher.frozen import Teacher, timm_backbone
from mim.vit import ViTConfig


def dino_step(profile: str, batch: int, n_local: int | None) -> tuple[str, object]:
    cfg = section(profile, "dino", dino.Config)
    data = cfg.data if n_local is None else dataclasses.replace(cfg.data, n_local=n_local)
    torch.manual_seed(0)
    model = dino.DINO(cfg.model, data).train()
    opt = make_optimizer(weight_decay_groups(model.student, cfg.optim.weight_decay), cfg.optim)
    crops = [torch.randn(batch, 3, data.global_size, data.global_size) for _ in range(data.n_global)]
    crops += [torch.randn(batch, 3, data.local_size, data.local_size) for _ in range(data.n_local)]
    head = cfg.model.head

    def step() -> None:
        loss, _ = model(crops)
        loss.backward()
        clip(model, cfg.optim.clip_grad, cfg.optim.clip_mode)
        opt.step()
        opt.zero_grad(set_to_none=True)
        model.update_teacher(cfg.model.momentum_teacher)

    desc = (f"DINO {cfg.model.arch}: {data.n_global} x {data.global_size} + {data.n_local} x {data.local_size} crops, "
            f"head {head.hidden_dim}-{head.bottleneck_dim}-{head.out_dim}{' BN' if head.use_bn else ''}, {cfg.optim.optimizer}")
    return desc, step


def img2vec_step(profile: str, batch: int, teacher_times: list[float]) -> tuple[str, object]:
    cfg = section(profile, "img2vec", img2vec.Config)
    enc = section(profile, "encoder", ViTConfig)
    net = timm_backbone("resnet50")  # random weights, as load_teacher builds a timm teacher
    teacher = Teacher(net, int(net.feature_info[-1]["reduction"]), int(net.num_features), name="resnet50 (random)")
    teacher.to(memory_format=torch.channels_last)  # as img2vec.build_task
    geo = img2vec.resolve_geometry(cfg.model, enc, teacher)
    torch.manual_seed(0)
    model = img2vec.Img2Vec(enc, cfg.model, geo, teacher.dim).train()
    opt = make_optimizer(weight_decay_groups(model, cfg.optim.weight_decay, VIT_TOKENS), cfg.optim)
    imgs = torch.randn(batch, 3, enc.img_size, enc.img_size)

    def step() -> None:
        t = time.perf_counter()
        target = img2vec.teacher_targets(teacher, imgs, geo, cfg.model.target_norm)
        teacher_times.append(time.perf_counter() - t)
        loss, _ = model(imgs, target)
        loss.backward()
        clip(model, cfg.optim.clip_grad, cfg.optim.clip_mode)
        opt.step()
        opt.zero_grad(set_to_none=True)

    desc = (f"Img2Vec: ViT {enc.embed_dim}x{enc.depth}/{enc.patch_size} at {enc.img_size}px, decoder "
            f"{cfg.model.decoder_depth}x{cfg.model.decoder_dim}, {geo.block}x{geo.block}-patch blocks masked "
            f"{cfg.model.mask_ratio}, teacher resnet50 at {geo.teacher_img_size}px, {cfg.optim.optimizer}")
    return desc, step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="paper", choices=["paper", "smoke", "micro"], help="params/<profile>.yaml's sizes")
    ap.add_argument("--batch", type=int, default=2, help="images per step (each DINO image: all its crops)")
    ap.add_argument("--n-local", type=int, default=None, help="DINO local crops (default the profile's)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps of each method")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps of each method first")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = torch's default)")
    args = ap.parse_args()
    threads = set_threads(args.threads)
    teacher_times: list[float] = []
    d_desc, d_step = dino_step(args.profile, args.batch, args.n_local)
    i_desc, i_step = img2vec_step(args.profile, args.batch, teacher_times)
    print(f"params/{args.profile}.yaml, batch {args.batch}, {threads} thread(s), {args.steps} timed steps each after "
          f"{args.warmup} warm-up, alternating DINO, Img2Vec, ...\n  {d_desc}\n  {i_desc}", flush=True)
    times = alternate({"DINO": d_step, "Img2Vec": i_step}, args.steps, args.warmup)
    teacher_share = statistics.median(t / w for t, w in zip(teacher_times[args.warmup:], times["Img2Vec"].wall))
    for k, t in times.items():
        extra = f"  (teacher forward {100 * teacher_share:.0f}% of the step)" if k == "Img2Vec" else ""
        print(f"{k:8s} {args.batch / t.wall_median:7.2f} img/s  {t.wall_median:7.3f} s/step wall  {t.cpu_median:7.3f} s/step CPU{extra}")
    d, i = times["DINO"], times["Img2Vec"]
    print(f"ratio Img2Vec / DINO images/s ({args.steps} pairs): wall {fmt_ratio(pair_ratios(d.wall, i.wall))}, "
          f"CPU {fmt_ratio(pair_ratios(d.cpu, i.cpu))}")


if __name__ == "__main__":
    main()
