"""The benchmark scripts run and print what their docstrings promise (tiny sizes, CPU; about 1 minute in all)."""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RATIO = r"\d+\.\d+x \(min-max \d+\.\d+-\d+\.\d+\)"  # median (min-max) of the per-pair ratios
STAGES = ("mae", "beit", "img2vec", "scratch", "dino", "finetune", "probe")
DOWNSTREAM = {"detect": ("detectron2", "ViTDet Mask R-CNN"), "segment": ("mmseg", "UperNet")}  # stage: (library, model)


def run(args: list[str], timeout: float = 120) -> str:
    p = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{' '.join(args)} exited {p.returncode}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p.stdout


def bench(script: str, *args: str) -> str:
    return run([sys.executable, f"benchmarks/{script}", *args])


def test_gpu_check_dry_writes_every_stage(tmp_path: Path) -> None:
    real = ROOT / "benchmarks" / "RESULTS.md"
    before = real.read_bytes() if real.exists() else None
    out = tmp_path / "RESULTS.md"
    log = run(["bash", "benchmarks/gpu_check.sh", "--dry", "--out", str(out)], timeout=240)
    assert "torch.compile: skipped in --dry" in log
    text = out.read_text()
    assert "DRY RUN" in text and "## Machine" in text and "| torch |" in text and "| CPUs |" in text
    assert re.search(r"^\| eager \| \d+ \| \d+\.\d+ \| \d+\.\d+ \|.*\| unknown peak \|", text, re.M), text
    for stage in STAGES:  # a row with its batch, step time and images/s
        assert re.search(rf"^\| {stage} \| [^|]+ \| \d+\.\d+ \| \d+ \| \d+\.\d+ \| \d+\.\d+ \|", text, re.M), f"{stage}:\n{text}"
    for stage, (lib, model) in DOWNSTREAM.items():  # one step each where the library imports, else skipped with the reason
        if importlib.util.find_spec(lib):
            assert re.search(rf"^\| {stage} \| {model} [^|]+ \| \d+\.\d+ \| \d+ \| \d+\.\d+ \| \d+\.\d+ \|", text, re.M), text
            assert re.search(rf"\] {stage}: {model} .*; batch \d+, \d+\.\d+ s/step", log), log
        else:
            assert re.search(rf"^\| {stage} \| skipped: \S", text, re.M), text
    assert re.search(r"max abs diff of the gradients \S+ .*of the updated weights \S+: equivalent", text), text
    assert "FAILED" not in text
    assert (real.read_bytes() if real.exists() else None) == before  # --dry never writes the real report


def test_mae_speed_prints_ratio_and_flop_bounds() -> None:
    out = bench("mae_speed.py", "--arch", "vit_tiny", "--img", "32", "--patch", "8", "--batch", "2", "--steps", "5", "--warmup", "1",
                "--decoder-depth", "1", "--decoder-dim", "64", "--decoder-heads", "4")
    assert re.search(rf"^ratio \(MAE speed-up, B/A step time, 5 pairs\): wall {RATIO}, CPU {RATIO}; FLOP bound \d+\.\d+x$", out, re.M), out
    assert re.search(r"^A  MAE .* img/s", out, re.M) and re.search(r"^B  mask tokens .* img/s", out, re.M), out
    base = re.search(r"^FLOP bound ViT-B/16 at 224px, decoder 8x512: (\d+\.\d+)x", out, re.M)
    large = re.search(r"^FLOP bound ViT-L/16 at 224px, decoder 8x512: (\d+\.\d+)x", out, re.M)
    assert base and large, out
    assert 2.2 < float(base[1]) < 2.5 and 3.0 < float(large[1]) < 3.5  # 2.36x and 3.23x: the paper's 3.3x is ViT-L's


def test_mae_vs_timm_same_model_and_ratio() -> None:
    out = bench("mae_vs_timm.py", "--only", "smoke", "--smoke-batch", "4", "--steps", "5", "--warmup", "1")
    assert re.search(r"parameters: ours ([\d,]+) \(([\d,]+) trainable\), timm \1 \(\2 trainable\): same", out), out
    diff = re.search(r"\|ours - timm\| = (\S+)", out)
    assert diff and float(diff[1]) < 1e-4, out
    assert re.search(rf"ratio ours / timm images/s \(5 pairs\): wall {RATIO}, CPU {RATIO}", out), out


def test_step_speed_prints_both_methods_and_ratio() -> None:
    out = bench("step_speed.py", "--profile", "smoke", "--batch", "2", "--n-local", "1", "--steps", "5", "--warmup", "1")
    assert re.search(r"^DINO +\d+\.\d+ img/s", out, re.M) and re.search(r"^Img2Vec +\d+\.\d+ img/s .*teacher forward", out, re.M), out
    assert re.search(rf"^ratio Img2Vec / DINO images/s \(5 pairs\): wall {RATIO}, CPU {RATIO}$", out, re.M), out


def test_data_speed_prints_folder_and_packed_per_core() -> None:
    out = bench("data_speed.py", "--images", "32", "--batch", "16")
    assert re.search(r"reader's own memory: folder \d+ B/image .* packed \d+ B/image", out), out
    ratio = r"packed/folder \d+\.\d+x \(min-max \d+\.\d+-\d+\.\d+, \d+ batches\)"
    for name in ("MAE", "DINO multi-crop"):
        assert re.search(rf"^{name} .*: folder \d+ img/s per core, packed \d+ img/s per core; {ratio}$", out, re.M), out
