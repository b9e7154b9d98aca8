"""Kill the training stages at random points after a checkpoint, resume them, compare with a clean run.

    python scripts/soak.py                          # 3 rounds of every stage, SIGKILL/SIGTERM/SIGINT
    python scripts/soak.py --rounds 20 --stages mae,dino --seed 7

Each stage runs once uninterrupted, then per round: started afresh, killed (a random signal) a
random time after its checkpoint is first written or rewritten, and rerun to completion.  The
round passes when the rerun's outputs (the .safetensors file, the metrics less their timings)
are byte-identical to the uninterrupted run's, the killed run left no output file and no
temporary file behind, and the rerun said it resumed.  tests/test_fault_injection.py runs a few
of these points in CI; this script is for many more (about 10 s a point on 2 cores).

The stages run on the micro profile with more epochs (so there is an epoch after the kill) on
data prepare-data generates, with random-weight inputs where a stage needs one (a tokenizer for
BEiT, a teacher for Img2Vec, an encoder for fine-tuning).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 5
SIGNALS = (signal.SIGKILL, signal.SIGTERM, signal.SIGINT)


@dataclass(frozen=True)
class Stage:
    section: str  # the params section whose optim.epochs is raised
    argv: Callable[[str], list[str]]  # output folder -> the command's arguments
    out: str  # the file the stage writes last (relative to its output folder)


STAGES: dict[str, Stage] = {
    "dino": Stage("dino", lambda o: ["pretrain-teacher", "--data", "data/manifest.json", "--out", f"{o}/out.safetensors",
                                     "--metrics", f"{o}/metrics.json", "--run", f"{o}/run"], "out.safetensors"),
    "tokenizer": Stage("tokenizer", lambda o: ["tokenizer", "--data", "data/manifest.json", "--out", f"{o}/out.safetensors",
                                               "--metrics", f"{o}/metrics.json", "--run", f"{o}/run"], "out.safetensors"),
    "mae": Stage("mae", lambda o: ["pretrain-student", "--method", "mae", "--name", "mae", "--data", "data/manifest.json",
                                   "--out", f"{o}/out.safetensors", "--run", f"{o}/run"], "out.safetensors"),
    "beit": Stage("beit", lambda o: ["pretrain-student", "--method", "beit", "--name", "beit", "--data", "data/manifest.json",
                                     "--input", "inputs/tokenizer.safetensors", "--out", f"{o}/out.safetensors",
                                     "--run", f"{o}/run"], "out.safetensors"),
    "img2vec": Stage("img2vec", lambda o: ["pretrain-student", "--method", "img2vec", "--name", "img2vec",
                                           "--data", "data/manifest.json", "--input", "inputs/teacher.safetensors",
                                           "--out", f"{o}/out.safetensors", "--run", f"{o}/run"], "out.safetensors"),
    "finetune": Stage("finetune", lambda o: ["finetune", "--encoder", "inputs/encoder.safetensors", "--data", "data/manifest.json",
                                             "--metrics", f"{o}/metrics.json", "--run", f"{o}/run"], "metrics.json"),
}
TIMING_KEYS = ("seconds",)


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "MIMREPRO_PARAMS": "params.yaml", "PYTHONUNBUFFERED": "1"}


def command(argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "stages.cli", *argv, "--params", "params.yaml"]


def workspace(root: Path, epochs: int = EPOCHS) -> Path:
    """A folder with params.yaml (micro, `epochs` per training stage), data/ and inputs/."""
    root.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load((ROOT / "params" / "micro.yaml").read_text())
    for stage in STAGES.values():
        params[stage.section]["optim"].pop("steps", None)  # a step budget becomes this epoch budget
        params[stage.section]["optim"]["epochs"] = epochs
    params["dino"]["model"]["freeze_last_layer_epochs"] = 1
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(command(["prepare-data", "--out", "data"]), cwd=root, env=env(), check=True, capture_output=True)
    script = """
import torch, yaml
from pathlib import Path
from mim.encoder_file import save_encoder
from mim.teacher.frozen import save_timm_backbone, timm_backbone
from mim.tokenizer.frozen import save_tokenizer, vqvae_tokenizer
from mim.tokenizer.vqvae import VQVAE, ModelConfig
from mim.vit import ViTConfig, ViTEncoder
p = yaml.safe_load(open("params.yaml"))
torch.manual_seed(0)
Path("inputs").mkdir(exist_ok=True)
save_encoder(Path("inputs/encoder.safetensors"), ViTEncoder(ViTConfig(**p["encoder"])))
save_timm_backbone(Path("inputs/teacher.safetensors"), timm_backbone("resnet18"), "resnet18")
save_tokenizer(Path("inputs/tokenizer.safetensors"), vqvae_tokenizer(VQVAE(ModelConfig(**p["tokenizer"]["model"]))))
"""
    subprocess.run([sys.executable, "-c", script], cwd=root, env=env(), check=True, capture_output=True)
    return root


def outputs(folder: Path) -> dict[str, bytes]:
    """The stage's output files (metrics without their timings) and its run folder's logs (dvclive's
    per-epoch rows and summary); not the checkpoint, which a resumed run rewrites."""
    out = {}
    files = [p for p in folder.glob("*") if p.is_file() and not p.name.startswith(".")]  # not .run.lock
    logs = [p for p in (folder / "run").rglob("*") if p.is_file() and (p.suffix == ".tsv" or p.name == "metrics.json")]
    for p in sorted(files) + sorted(logs):
        data = p.read_bytes()
        if p.suffix == ".json":
            data = json.dumps(_untimed(json.loads(data)), sort_keys=True).encode()
        out[str(p.relative_to(folder))] = data
    return out


def _untimed(d: object) -> object:
    return {k: _untimed(v) for k, v in d.items() if k not in TIMING_KEYS} if isinstance(d, dict) else d


def run(ws: Path, stage: str, folder: str) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(command(STAGES[stage].argv(folder)), cwd=ws, env=env(), capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"{stage} failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    return res


def temporaries(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if ".tmp" in p.name or p.name.startswith(".tmp"))


def kill_point(ws: Path, stage: str, folder: str, rng: random.Random, sig: signal.Signals, clean: dict[str, bytes],
               log: Callable[[str], None]) -> str:
    """Start `stage` afresh in `folder`, kill it with `sig` a random time after a checkpoint write, rerun.
    Returns "" when the outputs equal the clean run's, else what differs."""
    shutil.rmtree(ws / folder, ignore_errors=True)
    ckpt = ws / folder / "run" / "checkpoint.pt"
    proc = subprocess.Popen(command(STAGES[stage].argv(folder)), cwd=ws, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    # kill after the target-th checkpoint write (one per epoch), somewhere within the next epoch
    writes, target, times = 0, rng.randint(2, EPOCHS - 1), []
    last = None
    while proc.poll() is None and writes < target:
        stamp = ckpt.stat().st_mtime_ns if ckpt.is_file() else None
        if stamp is not None and stamp != last:
            writes, last = writes + 1, stamp
            times.append(time.perf_counter())
        time.sleep(0.002)
    if proc.poll() is not None:
        proc.communicate()
        return f"finished before checkpoint write {target} (rc {proc.returncode}); raise EPOCHS"
    delay = rng.uniform(0.0, times[-1] - times[-2])  # an epoch's length
    time.sleep(delay)
    finished = proc.poll() is not None
    proc.send_signal(sig)
    _, err = proc.communicate()
    where = f"{sig.name} {delay:.2f} s after checkpoint write {target}" + (" (it had finished)" if finished else "")
    out = ws / folder / STAGES[stage].out
    if out.is_file() and outputs(ws / folder).get(out.name) != clean.get(out.name):  # killed after writing it: fine
        return f"{where}: the killed run left a partial {out.name}"
    res = run(ws, stage, folder)
    said = res.stdout + res.stderr
    if not finished and "resuming from" not in said:
        told = [line for line in said.replace("\r", "\n").splitlines() if line.strip() and "it/s" not in line]
        return f"{where}: the rerun did not resume (it said: {told[-3:]})"
    left = temporaries(ws / folder)
    if left:
        return f"{where}: temporary files left: {left}"
    log(f"  {stage}: {where}, rc {proc.returncode}, resumed")
    return ""


def soak(ws: Path, stages: list[str], rounds: int, seed: int, log: Callable[[str], None] = print) -> list[str]:
    """Every (stage, round) kill point; returns the failures."""
    rng = random.Random(seed)
    failures = []
    for stage in stages:
        t0 = time.perf_counter()
        run(ws, stage, f"clean/{stage}")
        clean = outputs(ws / "clean" / stage)
        log(f"{stage}: clean run {time.perf_counter() - t0:.1f} s, outputs {', '.join(clean)}")
        for _ in range(rounds):
            sig = rng.choice(SIGNALS)
            problem = kill_point(ws, stage, f"killed/{stage}", rng, sig, clean, log)
            if not problem and outputs(ws / "killed" / stage) != clean:
                differ = [k for k in clean if outputs(ws / "killed" / stage).get(k) != clean[k]]
                problem = f"outputs differ from the clean run: {differ}"
            if problem:
                failures.append(f"{stage}: {problem}")
                log(f"  FAIL {stage}: {problem}")
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="kill points per stage")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, of {', '.join(STAGES)}")
    parser.add_argument("--seed", type=int, default=0, help="the random kill points and signals")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the workspace here (default: a temporary folder)")
    args = parser.parse_args()
    stages = args.stages.split(",")
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        parser.error(f"unknown stage(s) {', '.join(unknown)}")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        ws = workspace(args.workdir or Path(tmp) / "ws")
        failures = soak(ws, stages, args.rounds, args.seed)
    total = len(stages) * args.rounds
    print(f"{total - len(failures)}/{total} kill points resumed to outputs identical to an uninterrupted run")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
