import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from mim.checkpoint import read_safetensors, safetensors_bytes, save_safetensors
from mim.errors import MimError

ROOT = Path(__file__).resolve().parents[1]

STATE = {
    "z.weight": torch.randn(3, 5, generator=torch.Generator().manual_seed(0)),
    "a.bias": torch.arange(4, dtype=torch.int64),
    "m.half": torch.linspace(-1, 1, 6).to(torch.bfloat16).reshape(2, 3),
    "flag": torch.tensor([True, False, True]),
    "empty": torch.zeros(0, 2),
}
META = {"vit": '{"depth": 6}', "format": "x/1", "b": "2", "a": "1", "student": "mae"}


def test_safetensors_round_trip(tmp_path):
    path = tmp_path / "w.safetensors"
    save_safetensors(path, STATE, META)
    back = load_file(str(path))
    assert set(back) == set(STATE)
    for k, v in STATE.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == META


def test_safetensors_bytes_do_not_depend_on_insertion_order_or_process():
    reordered_state = dict(reversed(list(STATE.items())))
    reordered_meta = dict(reversed(list(META.items())))
    assert safetensors_bytes(STATE, META) == safetensors_bytes(reordered_state, reordered_meta)
    # safetensors' own writer orders metadata by a per-process hash seed; ours must not.
    code = (
        "import hashlib, torch\n"
        "from mim.checkpoint import safetensors_bytes\n"
        "s = {'w': torch.ones(2, 2), 'b': torch.zeros(2)}\n"
        "m = {k: str(i) for i, k in enumerate('qwertyuiop')}\n"
        "print(hashlib.sha256(safetensors_bytes(s, m)).hexdigest())\n"
    )
    digests = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout for _ in range(3)}
    assert len(digests) == 1


def test_safetensors_header_is_aligned_and_unknown_dtype_raises():
    data = safetensors_bytes(STATE, META)
    n = int.from_bytes(data[:8], "little")
    assert n % 8 == 0
    with pytest.raises(MimError, match="complex64"):
        safetensors_bytes({"c": torch.zeros(2, dtype=torch.complex64)})


def test_claim_run_dir_keeps_same_run_and_empties_others(tmp_path):
    from mim.files import claim_run_dir

    d = tmp_path / "work"
    assert claim_run_dir(d, {"encoder": "a", "iters": 40}) is False  # fresh folder, stamped
    (d / "iter_20.pth").write_bytes(b"x")
    assert claim_run_dir(d, {"iters": 40, "encoder": "a"}) is False  # same key: resume
    assert (d / "iter_20.pth").is_file()
    assert claim_run_dir(d, {"encoder": "b", "iters": 40}) is True  # new encoder: start afresh
    assert not (d / "iter_20.pth").exists() and (d / "run.json").is_file()
    unstamped = tmp_path / "old"
    unstamped.mkdir()
    (unstamped / "last_checkpoint").write_text("iter_40.pth")  # a run nobody stamped
    assert claim_run_dir(unstamped, {"encoder": "a"}) is True
    assert sorted(p.name for p in unstamped.iterdir()) == ["run.json"]


def test_read_safetensors_once_with_metadata_and_sha(tmp_path):
    import hashlib

    state = {"w": torch.arange(6.0).view(2, 3), "b": torch.tensor([1, 2], dtype=torch.int64)}
    save_safetensors(tmp_path / "f.safetensors", state, {"format": "x/1", "n": 3})
    f = read_safetensors(tmp_path / "f.safetensors", "thing")
    assert f.metadata == {"format": "x/1", "n": "3"} and all(torch.equal(f.state[k], state[k]) for k in state)
    assert f.sha256 == hashlib.sha256((tmp_path / "f.safetensors").read_bytes()).hexdigest()
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "f.safetensors").read_bytes()[:40])  # truncated
    with pytest.raises(MimError, match="cannot read thing .*cut.safetensors"):
        read_safetensors(tmp_path / "cut.safetensors", "thing")
    with pytest.raises(MimError, match="thing file not found"):
        read_safetensors(tmp_path / "none.safetensors", "thing")


def test_written_files_follow_the_umask_and_dead_writers_temps_go(tmp_path):
    import os

    from mim.files import atomic_write, write_json

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "m.json", {"a": 1})
        assert (tmp_path / "m.json").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
    finally:
        os.umask(old)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    (tmp_path / f".m.json.{dead}.abc.tmp").write_bytes(b"x" * 100)  # a writer killed mid-write
    (tmp_path / f".m.json.{os.getpid()}.own.tmp").write_bytes(b"x")  # this process's: kept
    atomic_write(tmp_path / "m.json", lambda p: p.write_text("{}"))
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == [f".m.json.{os.getpid()}.own.tmp", "m.json"]


def test_run_lock_refuses_a_second_run_and_frees_on_exit(tmp_path):
    from mim.files import RunLock

    code = (f"import sys, time; sys.path.insert(0, {str(ROOT)!r}); from mim.files import RunLock; "
            f"l = RunLock({str(tmp_path / 'r.lock')!r}).__enter__(); print('held', flush=True); time.sleep(30)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(MimError, match=r"r\.lock is held by pid \d+ since .*: wait for that run to finish or stop it"):
            with RunLock(tmp_path / "r.lock"):
                pass
    finally:
        holder.kill()  # a killed holder leaves no stale lock
        holder.wait()
    with RunLock(tmp_path / "r.lock"):
        with pytest.raises(MimError, match="is held by"):  # the same lock twice in one process: refused too
            with RunLock(tmp_path / "r.lock"):
                pass
    assert (tmp_path / "r.lock").read_text() == ""
