"""`mimrepro fingerprint-data`: the listing hash of every real dataset root, on every `dvc repro`."""
from __future__ import annotations

from pathlib import Path

import click

from stages.common import file_option, params_option, section


@click.command("fingerprint-data")
@params_option
@file_option("--out", "JSON file to write: each real root's path, file count and listing hash.", output=True)
def fingerprint_data(params_path: Path, out: Path) -> None:
    """Write <out>: for each dataset whose `data.*.root` is set, the (path, size, mtime, ctime) hash of
    the files it is read from (mim/data/fingerprint.py).  fingerprint/dvc.yaml runs it on every
    `dvc repro` and prepare-data depends on <out>, so an added, removed or replaced file reruns
    prepare-data; nothing else runs while the roots are unchanged.  The file is rewritten only when
    it changes."""
    import json

    from mim.data.fingerprint import trigger
    from mim.errors import ConfigError
    from mim.files import write_json

    # the raw section, not DatasetsConfig (whose module imports numpy): check-params, which this
    # stage runs after, has checked it
    data = section(params_path, "data")
    roots = {k: v["root"] for k, v in data.items() if isinstance(v, dict) and v.get("root") is not None}
    bad = [k for k, r in roots.items() if not isinstance(r, str)]
    if bad:
        raise ConfigError(f"{params_path}: data.{bad[0]}.root must be a path or null")
    imagenet = data.get("imagenet")
    got = trigger(roots, imagenet.get("class_list") if isinstance(imagenet, dict) else None)
    try:
        old = json.loads(out.read_text())
    except (OSError, ValueError):
        old = None
    if old != got:
        write_json(out, got)
        for name, fp in got.items():
            if not isinstance(old, dict) or old.get(name) != fp:
                click.echo(f"{name}: {fp['files']} files under {fp['root']}, new or changed (prepare-data reruns)")
