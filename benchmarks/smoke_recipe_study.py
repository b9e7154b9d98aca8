"""Smoke fine-tune recipe study: settings vs fine-tune top-1 of the scratch and MAE encoders, over seeds.

Each setting is a dict of overrides to the `finetune` section of the params file (nested dicts
merge, e.g. {"optim": {"base_lr": 0.016}}); every setting fine-tunes each encoder once per
`run.seed`. Runs go seed by seed, setting by setting (so a partial study already covers every
setting at seed 0), and each finished run is appended to a JSON-lines file: rerunning the command
skips what is there, so a killed or noisy study resumes. docs/smoke_recipe_study.md holds the table.

    python benchmarks/smoke_recipe_study.py                  # every setting, seeds 0 1 2 (~40 s a run)
    python benchmarks/smoke_recipe_study.py --only today     # one setting (names: SETTINGS)
    python benchmarks/smoke_recipe_study.py --table          # print the table of what is recorded

Needs data/manifest.json (`mimrepro prepare-data`) and models/{scratch,mae}/encoder.safetensors
(`dvc repro pretrain@scratch pretrain@mae`). Run it from the repository root.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from mim.config import from_dict
from mim.data.images import open_dataset
from mim.encoder_file import EncoderFile
from mim.engine import RunConfig
from mim.eval.finetune import FinetuneConfig, finetune
from stages.common import section


def lr(mult: float, **optim: Any) -> dict[str, Any]:
    """Optim overrides: base_lr `mult` x today's 4e-3 (peak lr base_lr x batch / 256)."""
    return {"optim": {"base_lr": 4.0e-3 * mult, **optim}}


NO_REG = {"drop_path": 0.0, "label_smoothing": 0.0}
COMBINED = {**lr(1.414, batch_size=20, warmup_epochs=0.5), **NO_REG, "crop_scale": [0.8, 1.0]}

# name -> overrides of the `finetune` section. Every setting costs what today's does (10 epochs of
# 1000 images: the same images forward and backward); only the schedule and regularisation change.
# Phase 1 is the lr sweep at today's recipe; phase 2 varies one lever at a time at the anchor lr.
SETTINGS: dict[str, dict[str, Any]] = {
    "today": {},  # peak lr 6.25e-4 at batch 40
    "lr x0.125": lr(0.125),
    "lr x0.25": lr(0.25),
    "lr x0.5": lr(0.5),
    "lr x4": lr(4),
    "lr x8": lr(8),
    "lr x16": lr(16),
    "lr x32": lr(32),
    # phase 2: one lever at a time at today's lr (x0.25-x1 were alike at seed 0, x4 and above worse)
    "batch 20 (500 steps), peak lr 4.4e-4": lr(1.414, batch_size=20),  # AdamW: lr ~ sqrt(batch)
    "batch 10 (1000 steps), peak lr 3.1e-4": lr(2, batch_size=10),
    "warm-up 0.5 epoch": lr(1, warmup_epochs=0.5),
    "layer decay 0.9": {"layer_decay": 0.9},
    "layer decay 0.6": {"layer_decay": 0.6},
    "no drop path, no smoothing": NO_REG,
    "crops 0.8-1": {"crop_scale": [0.8, 1.0]},
    "RandAug m5": {"auto_augment": "rand-m5-mstd0.5-inc1"},
    "Mixup 0.8 + CutMix 1.0": {"mixup": 0.8, "cutmix": 1.0},
    # phase 3: the levers that lifted MAE at seed 0, together
    "batch 20 + warm-up 0.5 + no drop path / smoothing + crops 0.8-1": COMBINED,
    "same + layer decay 0.6": {**COMBINED, "layer_decay": 0.6},
    # for reference, over the budget: what more steps of today's recipe give
    "today, 20 epochs (2x cost)": lr(1, epochs=20),
    "today, 40 epochs (4x cost)": lr(1, epochs=40),
}


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def key(row: dict[str, Any]) -> str:
    return json.dumps([row["setting"], row["overrides"], row["encoder"], row["seed"], row.get("pretrain_seed", 0)],
                      sort_keys=True)


def read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def one_run(params: Path, data: Path, encoder: Path, overrides: dict[str, Any], seed: int) -> dict[str, float]:
    cfg = from_dict(FinetuneConfig, merge(section(params, "finetune"), overrides), where=f"{params}: finetune + {overrides}")
    run = replace(from_dict(RunConfig, section(params, "run"), where=f"{params}: run"), seed=seed)
    enc = EncoderFile.read(encoder)
    with tempfile.TemporaryDirectory(prefix="recipe-") as tmp:
        wall, cpu = time.perf_counter(), time.process_time()
        out = finetune(enc, open_dataset(data), cfg, run, checkpoint=Path(tmp) / "checkpoint.pt", log_dir=Path(tmp),
                       desc=f"finetune {encoder.parent.name}")
        return {"top1": out["top1"], "top5": out["top5"], "wall_s": time.perf_counter() - wall,
                "cpu_s": time.process_time() - cpu}


def pretrain(params: Path, data: Path, out: Path, seed: int, threads: int) -> Path:
    """Both encoders pretrained as the chain does (`mimrepro pretrain-student`), with `run.seed: seed`:
    returns the folder holding scratch/ and mae/encoder.safetensors (kept: a rerun reuses them)."""
    import yaml  # benchmarks may read YAML; mim/ never does

    models = out / f"seed{seed}"
    doc = yaml.safe_load(params.read_text())
    doc["run"] = {**doc["run"], "seed": seed, "threads": threads}
    models.mkdir(parents=True, exist_ok=True)
    seeded = models / "params.yaml"
    seeded.write_text(yaml.safe_dump(doc, sort_keys=False))
    for enc in ("scratch", "mae"):
        weights = models / enc / "encoder.safetensors"
        if weights.is_file():
            continue
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "stages.cli", "pretrain-student", "--params", str(seeded), "--method", enc,
                        "--name", enc, "--data", str(data), "--input", str(data), "--out", str(weights),
                        "--run", str(models / "run" / enc)], check=True)
        print(f"pretrained {enc} at run.seed {seed} in {time.perf_counter() - t:.0f} s", flush=True)
    return models


def mean_std(xs: list[float]) -> str:
    if not xs:
        return ""
    return f"{statistics.mean(xs):.1f} ± {statistics.stdev(xs):.1f}" if len(xs) > 1 else f"{xs[0]:.1f}"


def table(rows: list[dict[str, Any]], names: list[str], base: dict[str, Any], n_train: int,
          encoders: tuple[str, str] = ("scratch", "mae")) -> str:
    """Markdown: per setting, top-1 mean ± std over seeds for each encoder and the gap (over the seeds both ran)."""
    a, b = encoders
    lines = [f"| setting | peak lr | steps | seeds | {a} top-1 | {b} top-1 | gap ({b} - {a}) | CPU s / run |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name in names:
        got = {(r["encoder"], (r.get("pretrain_seed", 0), r["seed"])): r for r in rows if r["setting"] == name}
        seeds = sorted({s for (e, s) in got if (a, s) in got and (b, s) in got})
        xa = [got[(a, s)]["top1"] for s in seeds]
        xb = [got[(b, s)]["top1"] for s in seeds]
        if not seeds:
            continue
        optim = merge(base, SETTINGS[name])["optim"]
        steps = optim["epochs"] * (n_train // optim["batch_size"])
        cpu = statistics.median(r["cpu_s"] for r in got.values())
        lines.append(f"| {name} | {optim['base_lr'] * optim['batch_size'] / 256:.2g} | {steps} | {len(seeds)} | {mean_std(xa)} | "
                     f"{mean_std(xb)} | {mean_std([y - x for x, y in zip(xa, xb)])} | {cpu:.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=Path("params/smoke.yaml"))
    ap.add_argument("--data", type=Path, default=Path("data/manifest.json"))
    ap.add_argument("--models", type=Path, default=Path("models"), help="holds scratch/ and mae/encoder.safetensors")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--pretrain-seeds", type=int, nargs="+", default=None,
                    help="pretrain both encoders anew at each of these run.seed values (under --pretrained) and "
                         "fine-tune each at the same seed: seeds of the whole student, not only of its fine-tune")
    ap.add_argument("--pretrained", type=Path, default=Path("runs/study-models"),
                    help="where --pretrain-seeds keeps its encoders")
    ap.add_argument("--only", nargs="+", choices=list(SETTINGS), help="run only these settings")
    ap.add_argument("--out", type=Path, default=Path("runs/smoke_recipe_study.jsonl"))
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads: 2 threads on 2 shared cores ran 10x slower than 1 (spinning OpenMP waits)")
    ap.add_argument("--table", action="store_true", help="print the table of the recorded runs and stop")
    args = ap.parse_args()
    names = args.only or list(SETTINGS)
    if args.pretrain_seeds is not None:
        args.seeds = args.pretrain_seeds
    if not args.table:
        torch.set_num_threads(args.threads)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        done = {key(r) for r in read_rows(args.out)}
        for seed in args.seeds:
            models, extra = args.models, {}
            if args.pretrain_seeds is not None:
                models = pretrain(args.params, args.data, args.pretrained, seed, args.threads)
                extra = {"pretrain_seed": seed}
            for name in names:
                for enc in ("scratch", "mae"):
                    row: dict[str, Any] = {"setting": name, "overrides": SETTINGS[name], "encoder": enc, "seed": seed, **extra}
                    if key(row) in done:
                        continue
                    row.update(one_run(args.params, args.data, models / enc / "encoder.safetensors",
                                       SETTINGS[name], seed))
                    with args.out.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                    print(f"seed {seed}  {name:34s} {enc:8s} top-1 {row['top1']:5.1f}  {row['wall_s']:.0f} s", flush=True)
    rows = [r for r in read_rows(args.out) if r["setting"] in SETTINGS and r["overrides"] == SETTINGS[r["setting"]]]
    n_train = len(open_dataset(args.data).images("train"))
    base = section(args.params, "finetune")
    print("Fine-tune seeds (encoders pretrained once, run.seed 0):")
    print(table([r for r in rows if "pretrain_seed" not in r], names, base, n_train))
    whole = [r for r in rows if r.get("pretrain_seed", 0) == r["seed"]]  # seed 0 of the above is pretrain seed 0
    if any("pretrain_seed" in r for r in rows):
        print("\nStudent seeds (each encoder pretrained and fine-tuned at run.seed s):")
        print(table(whole, [n for n in names if any(r["setting"] == n and "pretrain_seed" in r for r in whole)], base, n_train))


if __name__ == "__main__":
    main()
