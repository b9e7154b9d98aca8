"""What noticing a changed real dataset costs: the listing itself, and each way of making DVC look.

    python benchmarks/fingerprint.py tree /tmp/fp-imagenet       # 1000 classes x (90 train + 10 val) tiny JPEGs
    python benchmarks/fingerprint.py tree /tmp/fp-imagenet-full --train 1300 --val 50   # ImageNet's count, 5.5 GB
    python benchmarks/fingerprint.py listing /tmp/fp-imagenet    # listing, listing + ctime, content (first, cached)
    python benchmarks/fingerprint.py dvc /tmp/fp-imagenet        # DVC's mechanics in scratch repos (below)
    python benchmarks/fingerprint.py dvc /tmp/fp-imagenet-full --variants own-file,dir-dep --repeat 3
    python benchmarks/fingerprint.py clone /tmp/fp-clone-base --rev HEAD           # a clone of a commit, up to date
    python benchmarks/fingerprint.py clone /tmp/fp-clone-root --root /tmp/fp-imagenet  # ... with a real root
    python benchmarks/fingerprint.py noop REPO [REPO ...]        # no-op `dvc repro` in checked-out clones

`dvc` builds scratch git + DVC repos under /tmp/fp-bench with a stand-in of the project's
pipeline (30 stages of 40 code deps each, so dvc.lock is as large as the project's) and a
stage that reads the tree, and times a no-op `dvc repro` (median of --repeat runs, interleaved):
  base        the stand-in alone (no real root)
  dir-dep     the tree as a DVC dependency of that stage (DVC hashes every file once, then stats them all)
  same-file   an always_changed listing stage (mim/data/fingerprint.py) in the same dvc.yaml
  own-file    the same stage in a dvc.yaml of its own (what the project does: fingerprint/dvc.yaml)
  own-empty   that stage with no real root (the embedded default)
`clone` makes a clone of this repository (at --rev, default the working tree's files) that is up
to date: it copies the workspace's DVC outputs (data/, models/, runs/, metrics/), runs the stages
up to prepare-data and records the rest with `dvc commit -f` (their outputs are this workspace's,
made on other data with --root: a timing fixture, not a result). `noop` times `dvc repro` in
repositories whose pipeline is up to date, e.g. those clones (README: Benchmarks).
Wall time and CPU time (user + sys, children included) are both printed: on a shared machine the
CPU time is the steadier of the two.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SCRATCH = Path("/tmp/fp-bench")


def make_tree(root: Path, classes: int, train: int, val: int) -> int:
    """ImageNet layout, every image a copy of one tiny valid JPEG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, "JPEG")
    jpeg = buf.getvalue()
    for split, n in (("train", train), ("val", val)):
        for c in range(classes):
            d = root / split / f"n{c:08d}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                (d / f"n{c:08d}_{i}.JPEG").write_bytes(jpeg)
    return classes * (train + val)


def timed(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def bench_listing(root: Path, repeat: int) -> None:
    from mim.data import fingerprint as fp

    parts = fp.PARTS["imagenet"]
    t, (_, n) = timed(lambda: fp.listing_sha256(root, parts), repeat)
    print(f"listing (path, size, mtime) of {n} files: {t:.3f} s")
    t, _ = timed(lambda: fp.listing_sha256(root, parts, ctime=True), repeat)
    print(f"listing + ctime (fingerprint-data's trigger): {t:.3f} s")
    cache = SCRATCH / "content.json"
    cache.unlink(missing_ok=True)
    t, _ = timed(lambda: fp.content_sha256(root, parts, cache), 1)
    print(f"content, every file read: {t:.3f} s")
    t, _ = timed(lambda: fp.content_sha256(root, parts, cache), repeat)
    print(f"content, cached (unchanged stats): {t:.3f} s")


def run(cmd: list[str], cwd: Path, code: Path = ROOT) -> subprocess.CompletedProcess:
    """`cmd` in `cwd`, importing mim and stages from `code`."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(code), "PATH": f"{Path(sys.executable).parent}{os.pathsep}"
           f"{os.environ['PATH']}", "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "b",
           "GIT_COMMITTER_EMAIL": "b@b"}
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{cmd} failed in {cwd}:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    return out


def noop(repos: list[Path], repeat: int, own_code: bool) -> None:
    """Median wall and CPU seconds of a no-op `dvc repro` in each repo, runs interleaved; with `own_code`
    each repo's stages import its own mim/ and stages/ (a clone of this project)."""
    dvc = str(Path(sys.executable).parent / "dvc")
    runs: dict[Path, list[tuple[float, float]]] = {r: [] for r in repos}
    for _ in range(repeat):
        for r in repos:
            t, before = time.perf_counter(), os.times()
            run([dvc, "repro"], r, r.resolve() if own_code else ROOT)
            after = os.times()
            cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
            runs[r].append((time.perf_counter() - t, cpu))
    for r, rs in runs.items():
        w, c = [x[0] for x in rs], [x[1] for x in rs]
        print(f"{str(r):40s} no-op dvc repro: wall {statistics.median(w):.2f} s (min {min(w):.2f}), "
              f"CPU {statistics.median(c):.2f} s (min {min(c):.2f}), {len(rs)} runs")


def clone(dst: Path, rev: str | None, root: Path | None) -> None:
    """An up-to-date clone of this repository in `dst` (see the module doc)."""
    shutil.rmtree(dst, ignore_errors=True)
    run(["git", "clone", "-q", str(ROOT), str(dst)], ROOT)
    if rev is not None:
        run(["git", "checkout", "-q", rev], dst)
    else:  # the working tree's tracked and new files, as they are now
        listed = run(["git", "ls-files", "-co", "--exclude-standard"], ROOT).stdout.splitlines()
        for rel in listed:
            if (ROOT / rel).is_file():
                (dst / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / rel, dst / rel)
    (dst / ".venv").symlink_to(ROOT / ".venv")
    for out in ("data", "models", "runs", "metrics"):
        if (ROOT / out).exists():
            shutil.rmtree(dst / out, ignore_errors=True)
            shutil.copytree(ROOT / out, dst / out, symlinks=True)
    dvc = str(Path(sys.executable).parent / "dvc")
    if root is not None:
        import yaml

        profile = yaml.safe_load((dst / "params" / "profile.yaml").read_text())["profile"]
        params = dst / "params" / f"{profile}.yaml"
        text = params.read_text()
        assert text.count("  imagenet: {root: null,") == 1, f"{params}: no `imagenet: {{root: null, ...}}` line"
        params.write_text(text.replace("  imagenet: {root: null,", f"  imagenet: {{root: {root},"))
        t = time.perf_counter()
        run([dvc, "repro", "prepare-data"], dst, dst)  # check-params, fingerprint-data, prepare-data (decodes the tree)
        print(f"prepare-data on {root}: {time.perf_counter() - t:.1f} s")
    run([dvc, "commit", "-f", "-q"], dst, dst)
    status = run([dvc, "status"], dst, dst).stdout.strip()
    print(f"{dst}: dvc status says {status!r}; time its no-op with `noop {dst}`")


def scratch_repo(name: str, tree: Path | None, variant: str) -> Path:
    repo = SCRATCH / name
    shutil.rmtree(repo, ignore_errors=True)
    (repo / "code").mkdir(parents=True)
    for i in range(40):
        (repo / "code" / f"m{i}.py").write_text(f"# {i}\n")
    stages = {f"s{k}": {"cmd": f"echo {k} > out{k}.txt", "deps": [f"code/m{i}.py" for i in range(40)],
                        "outs": [f"out{k}.txt"]} for k in range(29)}
    reader = {"cmd": "echo read > read.txt", "deps": ["code/m0.py"], "outs": ["read.txt"]}
    roots = {"imagenet": str(tree)} if tree is not None and variant != "own-empty" else {}
    listing = (f"{sys.executable} -c 'from mim.data.fingerprint import trigger; from mim.files import write_json; "
               f"write_json(\"fp.json\", trigger({json.dumps(roots)}))'")
    fp_stage = {"cmd": listing, "always_changed": True, "outs": [{"fp.json": {"cache": False, "persist": True}}]}
    if variant == "dir-dep":
        reader["deps"].append(str(tree))
    elif variant in ("same-file", "own-file", "own-empty"):
        reader["deps"].append("fp.json")
    if variant == "same-file":
        stages["fingerprint"] = fp_stage
    stages["reader"] = reader
    import yaml

    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    if variant.startswith("own"):
        (repo / "fingerprint").mkdir()
        (repo / "fingerprint" / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"fingerprint": {**fp_stage, "wdir": ".."}}}))
    dvc = str(Path(sys.executable).parent / "dvc")
    run(["git", "init", "-q"], repo)
    run([dvc, "init", "-q"], repo)
    run([dvc, "config", "core.analytics", "false"], repo)
    t = time.perf_counter()
    run([dvc, "repro"], repo)
    print(f"{variant:10s} first dvc repro: {time.perf_counter() - t:.1f} s")
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "bench"], repo)
    return repo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("tree", "listing", "dvc", "clone", "noop"))
    ap.add_argument("paths", nargs="+", type=Path)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--train", type=int, default=90)
    ap.add_argument("--val", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--rev", default=None, help="clone: the commit (default: the working tree's files)")
    ap.add_argument("--root", type=Path, default=None, help="clone: set data.imagenet.root of the active profile to this tree")
    ap.add_argument("--variants", default="base,dir-dep,same-file,own-file,own-empty", help="dvc: which scratch repos")
    args = ap.parse_args()
    SCRATCH.mkdir(parents=True, exist_ok=True)
    if args.what == "tree":
        t = time.perf_counter()
        n = make_tree(args.paths[0], args.classes, args.train, args.val)
        print(f"wrote {n} JPEGs under {args.paths[0]} in {time.perf_counter() - t:.1f} s")
    elif args.what == "listing":
        bench_listing(args.paths[0], args.repeat)
    elif args.what == "dvc":
        repos = [scratch_repo(v, args.paths[0], v) for v in args.variants.split(",")]
        noop(repos, args.repeat, own_code=False)
        print(json.dumps({"tree": str(args.paths[0]), "repos": [str(r) for r in repos]}))
    elif args.what == "clone":
        clone(args.paths[0], args.rev, args.root)
    else:
        noop(args.paths, args.repeat, own_code=True)


if __name__ == "__main__":
    main()
