"""Real dataset roots are fingerprinted: a changed file reruns prepare-data and what reads the manifest.

Unit tests of mim/data/fingerprint.py against a reference computed here, the manifest's entry,
the `fingerprint-data` command; then DVC itself, in a scratch repository with the project's
check-params, fingerprint-data and prepare-data stages and a stand-in for every later stage.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from imagefolders import make_imagenet
from mim.data import fingerprint as fp
from mim.data.prepare import DatasetsConfig, ImageNetData, SceneData, write_data

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"coco": SceneData(classes=2, train_images=2, val_images=1, image_size=48),
         "ade20k": SceneData(classes=2, train_images=2, val_images=1, image_size=48)}


def tiny_root(path: Path) -> Path:
    """3 classes x (4 train + 2 val) PNGs, a synset file, and files no stage reads."""
    make_imagenet(path, classes=3, train=4, val=2, size=16)
    (path / "LOC_synset_mapping.txt").write_text("class0 zero\nclass1 one\nclass2 two\n")
    (path / "test").mkdir()
    (path / "test" / "x.JPEG").write_bytes(b"not read")
    (path / "ILSVRC.tar").write_bytes(b"not read either")
    return path


def replace(p: Path, seed: int) -> None:
    """New bytes of the same size (a PNG of other pixels, padded) and a new mtime."""
    size = p.stat().st_size
    data = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    tmp = p.with_suffix(".tmp.png")
    data.save(tmp)
    new = tmp.read_bytes()
    tmp.unlink()
    assert new != p.read_bytes()
    p.write_bytes(new[:size] if len(new) >= size else new + b"\0" * (size - len(new)))
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def reference_listing(root: Path, parts: tuple[str, ...], ctime: bool = False) -> str:
    found = [q for part in parts for q in ([root / part] if (root / part).is_file() else (root / part).rglob("*")) if q.is_file()]
    lines = []
    for q in sorted(found, key=lambda q: q.relative_to(root).parts):
        st = q.stat()
        lines.append(f"{q.relative_to(root).as_posix()}\t{st.st_size}\t{st.st_mtime_ns}" + (f"\t{st.st_ctime_ns}" if ctime else ""))
    return hashlib.sha256("".join(f"{line}\n" for line in lines).encode()).hexdigest()


def test_listing_is_path_size_mtime_of_the_files_a_dataset_is_read_from(tmp_path):
    root = tiny_root(tmp_path / "in")
    parts = fp.PARTS["imagenet"]
    sha, n = fp.listing_sha256(root, parts)
    assert n == 3 * 6 + 1  # images and the synset file; test/ and the tar are not read by any stage
    assert sha == reference_listing(root, parts)
    assert fp.listing_sha256(root, parts, ctime=True)[0] == reference_listing(root, parts, ctime=True)
    (root / "test" / "y.JPEG").write_bytes(b"new")  # outside what is read: nothing changes
    (root / "ILSVRC.tar").write_bytes(b"rewritten")
    assert fp.listing_sha256(root, parts) == (sha, n)


def test_listing_changes_when_a_file_is_replaced_removed_added_or_renamed(tmp_path):
    root = tiny_root(tmp_path / "in")
    parts = fp.PARTS["imagenet"]
    seen = {fp.listing_sha256(root, parts)[0]}
    assert fp.listing_sha256(root, parts)[0] in seen  # untouched: the same hash
    one = root / "train" / "class1" / "2.png"
    replace(one, 0)
    seen.add(fp.listing_sha256(root, parts)[0])
    (root / "val" / "class0" / "1.png").unlink()
    seen.add(fp.listing_sha256(root, parts)[0])
    shutil.copy(one, root / "val" / "class0" / "9.png")
    seen.add(fp.listing_sha256(root, parts)[0])
    os.rename(root / "val" / "class0" / "9.png", root / "val" / "class0" / "8.png")
    seen.add(fp.listing_sha256(root, parts)[0])
    assert len(seen) == 5


def test_content_mode_sees_bytes_not_stat_and_rereads_only_changed_files(tmp_path, monkeypatch):
    root = tiny_root(tmp_path / "in")
    parts, cache = fp.PARTS["imagenet"], tmp_path / "content.json"
    reads: list[str] = []
    real_digest = hashlib.file_digest
    monkeypatch.setattr(fp.hashlib, "file_digest", lambda f, name: reads.append(f.name) or real_digest(f, name))

    sha, n = fp.content_sha256(root, parts, cache)
    expected = "".join(f"{q.relative_to(root).as_posix()}\t{hashlib.sha256(q.read_bytes()).hexdigest()}\n"
                       for q in sorted([root / "LOC_synset_mapping.txt", *(root / "train").rglob("*.png"), *(root / "val").rglob("*.png")]))
    assert sha == hashlib.sha256(expected.encode()).hexdigest() and n == len(reads) == 19
    reads.clear()
    assert fp.content_sha256(root, parts, cache) == (sha, n) and reads == []  # unchanged stats: nothing read

    one = root / "train" / "class2" / "0.png"
    st = one.stat()
    listing = fp.listing_sha256(root, parts)[0]
    os.utime(one, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: the listing changes, the content does not
    assert fp.listing_sha256(root, parts)[0] != listing
    assert fp.content_sha256(root, parts, cache) == (sha, n) and reads == [str(one)]

    trigger = fp.listing_sha256(root, parts, ctime=True)[0]
    listing = fp.listing_sha256(root, parts)[0]
    st = one.stat()
    replace(one, 1)
    os.utime(one, ns=(st.st_atime_ns, st.st_mtime_ns))  # `cp -p`: same size and mtime, other bytes
    assert fp.listing_sha256(root, parts)[0] == listing  # the listing cannot see it ...
    assert fp.listing_sha256(root, parts, ctime=True)[0] != trigger  # ... the stage's trigger (ctime) does
    assert fp.content_sha256(root, parts, cache)[0] != sha  # and the content hash records it


def test_manifest_records_a_real_roots_fingerprint(tmp_path):
    root = tiny_root(tmp_path / "in")
    for mode in ("listing", "content"):
        cfg = DatasetsConfig(fingerprint=mode, imagenet=ImageNetData(root=str(root)), **SMALL)
        write_data(cfg, tmp_path / mode, cache=tmp_path / f"cache-{mode}")
        doc = json.loads((tmp_path / mode / "manifest.json").read_text())
        want = fp.listing_sha256(root, fp.PARTS["imagenet"]) if mode == "listing" else fp.content_sha256(root, fp.PARTS["imagenet"])
        assert doc["imagenet"]["fingerprint"] == {"mode": mode, "sha256": want[0], "files": 19}
        assert "fingerprint" not in doc["coco"] and "fingerprint" not in doc["params"]  # generated data: its sha256 as before
    replace(root / "val" / "class2" / "1.png", 2)
    write_data(DatasetsConfig(imagenet=ImageNetData(root=str(root)), **SMALL), tmp_path / "again")
    again = json.loads((tmp_path / "again" / "manifest.json").read_text())
    assert again["imagenet"]["images"] == doc["imagenet"]["images"]  # the same counts ...
    assert again["imagenet"]["fingerprint"]["sha256"] != json.loads((tmp_path / "listing" / "manifest.json").read_text())[
        "imagenet"]["fingerprint"]["sha256"]  # ... and another manifest


def test_fingerprint_data_writes_the_real_roots_and_rewrites_only_on_change(tmp_path):
    from stages.cli import main

    root = tiny_root(tmp_path / "in")
    params, out = tmp_path / "p.yaml", tmp_path / "runs" / "fp.json"
    params.write_text("data:\n  seed: 0\n  imagenet: {root: null, classes: 3}\n")
    run = CliRunner()
    args = ["fingerprint-data", "--params", str(params), "--out", str(out)]
    assert run.invoke(main, args).exit_code == 0 and json.loads(out.read_text()) == {}
    params.write_text(f"data:\n  imagenet: {{root: {root}}}\n  coco: {{root: null}}\n")
    res = run.invoke(main, args)
    assert res.exit_code == 0 and res.output == f"imagenet: 19 files under {root}, new or changed (prepare-data reruns)\n"
    sha = fp.listing_sha256(root, fp.PARTS["imagenet"], ctime=True)[0]
    assert json.loads(out.read_text()) == {"imagenet": {"root": str(root), "files": 19, "listing": sha}}
    before = out.stat().st_mtime_ns
    res = run.invoke(main, args)
    assert res.exit_code == 0 and res.output == "" and out.stat().st_mtime_ns == before  # unchanged: not rewritten
    (root / "train" / "class0" / "0.png").unlink()
    assert "imagenet: 18 files" in run.invoke(main, args).output and json.loads(out.read_text())["imagenet"]["files"] == 18


# --- DVC itself ------------------------------------------------------------------------------------
CONSUMER = {  # stands in for every later stage: each depends on data/manifest.json (tests/test_dvc_yaml.py)
    "cmd": "python -c \"import shutil; shutil.copy('data/manifest.json', 'runs/consumer.json')\"",
    "deps": ["data/manifest.json"],
    "outs": [{"runs/consumer.json": {"cache": False}}],
}


def sh(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


def changed(status: str) -> set[str]:
    """Stage names that `dvc status` reports (lines ending in ':' at the left margin)."""
    return {line[:-1] for line in status.splitlines() if line.endswith(":") and not line[0].isspace()}


@pytest.fixture()
def scratch(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    """The project's code, params and first stages (check-params, fingerprint-data, prepare-data) plus a
    consumer stage, in a git + DVC repo, with the micro profile's ImageNet at a tiny real root."""
    dst = tmp_path / "repo"
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True)
    for rel in listed.stdout.splitlines():
        if rel.startswith(("mim/", "stages/", "downstream/", "params/", "fingerprint/dvc.yaml", ".dvc/config", ".dvcignore")) \
                and (ROOT / rel).is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dst / rel)
    doc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    doc["stages"] = {k: doc["stages"][k] for k in ("check-params", "prepare-data")} | {"consumer": CONSUMER}
    (dst / "dvc.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    (dst / "params" / "profile.yaml").write_text("profile: micro\n")
    root = tiny_root(tmp_path / "imagenet")
    micro = dst / "params" / "micro.yaml"
    text = micro.read_text()
    assert text.count("  imagenet: {root: null,") == 1
    micro.write_text(text.replace("  imagenet: {root: null,", f"  imagenet: {{root: {root},"))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(dst),
           "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    sh(["git", "init", "-q"], dst, env)
    sh(["git", "add", "-A"], dst, env)
    sh(["git", "commit", "-qm", "copy"], dst, env)
    return dst, root, env


@pytest.mark.slow
def test_dvc_reruns_prepare_data_and_its_dependants_when_a_real_image_changes(scratch):
    dst, root, env = scratch
    fingerprint = "fingerprint/dvc.yaml:fingerprint-data"
    first = sh(["dvc", "repro"], dst, env)
    assert all(f"Running stage '{s}'" in first for s in ("check-params", fingerprint, "prepare-data", "consumer")), first
    manifests = [json.loads((dst / "data" / "manifest.json").read_text())["imagenet"]]
    assert manifests[0]["root"] == str(root) and manifests[0]["images"] == {"train": 12, "val": 6}

    again = sh(["dvc", "repro"], dst, env)  # untouched root: only the listing runs
    assert again.count("Running stage") == 1 and f"Running stage '{fingerprint}'" in again, again
    assert "Stage 'prepare-data' didn't change" in again and "Stage 'consumer' didn't change" in again
    assert changed(sh(["dvc", "status"], dst, env)) == {fingerprint}  # always changed: it is the check

    for change in ("replace", "remove"):
        one = root / "train" / "class1" / "3.png"
        replace(one, 3) if change == "replace" else one.unlink()
        sh(["dvc", "repro", fingerprint], dst, env)
        status = sh(["dvc", "status"], dst, env)
        assert changed(status) == {"prepare-data", fingerprint} and "runs/data-fingerprint.json" in status, (change, status)
        sh(["dvc", "repro", "-s", "prepare-data"], dst, env)
        status = sh(["dvc", "status"], dst, env)
        assert changed(status) == {"consumer", fingerprint} and "data/manifest.json" in status, (change, status)
        out = sh(["dvc", "repro"], dst, env)
        assert "Running stage 'consumer'" in out and "Stage 'prepare-data' didn't change" in out, (change, out)
        manifests.append(json.loads((dst / "runs" / "consumer.json").read_text())["imagenet"])
    assert manifests[1]["images"] == manifests[0]["images"] and manifests[2]["images"]["train"] == 11
    assert len({m["fingerprint"]["sha256"] for m in manifests}) == 3


def test_an_untouched_root_costs_one_stat_per_file_and_no_read(tmp_path, monkeypatch):
    """What keeps the no-op fast with a real root (README: 0.24 s per 100k files): the trigger and the
    listing open no file and stat each file once."""
    root = tiny_root(tmp_path / "in")
    stats: list[object] = []

    def no_open(*a, **k):
        raise AssertionError(f"opened {a[0]!r}")

    monkeypatch.setattr("builtins.open", no_open)
    monkeypatch.setattr(fp.os, "stat", lambda p, *a, **k: stats.append(p) or os.lstat(p))
    got = fp.trigger({"imagenet": str(root)})
    assert got["imagenet"]["files"] == 19
    # by path: only the parts (train/, val/, the synset file), not the 18 images, which are stat'ed
    # through their folder's entries (no path walk per file)
    assert len(stats) == 5, stats
