"""Files and folders on disk, with no torch: atomic writes (a crash never leaves a half-written
output), the run lock, folder stamps and sha256.

Written files follow the umask (like any file the user's tools write); a temporary file carries
the writer's pid, so the next write removes those of writers that died mid-write.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mim.errors import MimError


def umask_mode(mode: int = 0o666) -> int:
    """`mode` less the process umask: what open() gives a new file (mkstemp gives 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def remove_stale_temps(folder: Path, name: str) -> None:
    """Remove `.<name>.<pid>.*.tmp` files or folders whose writer is gone (killed mid-write)."""
    for p in Path(folder).glob(f".{name}.*.tmp"):
        pid = p.name[len(name) + 2 :].split(".", 1)[0]
        if not pid.isdigit() or (int(pid) != os.getpid() and not _alive(int(pid))):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def atomic_write(path: Path, write: Any) -> None:
    """Call write(tmp_path), then rename tmp_path over `path` (same directory, same filesystem)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent, path.name)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
    except OSError as e:  # a full disk, a quota, a vanished mount: one line, and the old file stays
        Path(tmp).unlink(missing_ok=True)
        raise MimError(f"cannot write {path}: {e.strerror or e}; {path} is unchanged") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RunLock:
    """Exclusive use of a run's state while a process trains it: `with RunLock(path): ...`.

    An advisory lock (flock) on `path`, released by the kernel when the process ends however
    it ends, so a killed run never leaves a stale lock; a second run of the same stage gets a
    one-line error naming the holder instead of writing the same checkpoint.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.file: Any = None

    @staticmethod
    def beside(run_dir: Path) -> RunLock:
        """The lock of a run folder, next to it (a stage may empty the folder itself)."""
        run_dir = Path(run_dir)
        return RunLock(run_dir.parent / f".{run_dir.name}.lock")

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "a+")  # noqa: SIM115  (held until __exit__)
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise MimError(f"{self.path} is held by {holder}: wait for that run to finish or stop it") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')} ({' '.join(sys.argv[1:3])})\n")
        self.file.flush()
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.seek(0)
        self.file.truncate()
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()


def check_writable(path: Path, what: str) -> None:
    """MimError unless the file or folder `path` can be written (created, or replaced in place).

    Probed by creating a temporary file in the folder that will receive it (or its nearest existing
    ancestor: the stage creates the rest), so a read-only mount or a root-owned folder is caught
    before the work starts, not after it."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise MimError(f"{what} {path}: {folder} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise MimError(f"{what} {path}: cannot write in {folder} ({e.strerror or e}); choose another path or fix its "
                       "permissions") from None


def file_sha256(path: Path) -> str:
    """sha256 of a file, streamed: put in a run's config so new input weights never resume an old run."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def claim_run_dir(folder: Path, key: dict[str, Any], stamp: str = "run.json") -> bool:
    """Keep `folder` (another library's checkpoints) only if it was made by a run with this key.

    Training stages that resume through detectron2 or mmengine cannot tell whether the
    checkpoints in a persisted folder came from the same encoder, data and recipe.  The key
    (plain data) is stamped into the folder; a different stamp empties it.  Returns True when
    the folder was emptied.
    """
    folder = Path(folder)
    path = folder / stamp
    if path.is_file():
        stale = json.loads(path.read_text()) != key
    else:  # checkpoints nobody stamped cannot be trusted either
        stale = folder.is_dir() and any(folder.iterdir())
    if stale:
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not path.is_file():
        path.write_text(json.dumps(key, indent=2, sort_keys=True) + "\n")
    return stale


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n"))


def safetensors_header(data: bytes) -> dict[str, Any]:
    """The JSON header of a safetensors file's bytes (its first 8 bytes say how long it is: the format's
    spec, huggingface/safetensors README); ValueError when `data` does not start with one."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n]) if len(data) >= 8 and 8 + n <= len(data) else None
    if not isinstance(header, dict):
        raise ValueError("no safetensors header")
    return header


def safetensors_metadata(path: Path, what: str) -> dict[str, str]:
    """The `__metadata__` map of a safetensors file, read from its header alone (no tensor is loaded)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little")
            if n > 100_000_000:  # the format's own limit on the header (safetensors: MAX_HEADER_SIZE)
                raise ValueError(f"a header of {n} bytes: not a safetensors file")
            header = safetensors_header(head + f.read(n))
    except FileNotFoundError:
        raise MimError(f"{what} file not found: {path}") from None
    except (OSError, ValueError) as e:  # not a safetensors file, truncated, corrupt header
        raise MimError(f"cannot read {what} {path}: {e}") from None
    return {str(k): str(v) for k, v in (header.get("__metadata__") or {}).items()}
