"""`mimrepro parity`: results/parity.md, the paper profile's every recipe value beside its source's."""
from __future__ import annotations

from pathlib import Path

import click

from stages.common import file_option, params_option


@click.command("parity")
@params_option
@file_option("--out", "The report (.md).", output=True)
@click.option("--strict", is_flag=True, help="Exit with an error when a value differs from its source or is not recorded.")
def parity(params_path: Path, out: Path, strict: bool) -> None:
    """Each recipe hyperparameter of --params beside the value the paper or official code states; mismatches marked."""
    from mim.errors import MimError
    from mim.files import atomic_write
    from mim.report.flat import flatten
    from mim.report.parity import MISMATCH, NEW, check, markdown
    from stages.common import read_yaml

    rows = check(flatten(read_yaml(params_path)))
    atomic_write(out, lambda tmp: tmp.write_text(markdown(rows, str(params_path))))
    bad = [r for r in rows if r[3] in (MISMATCH, NEW)]
    for key, value, stated, status, source in bad:
        click.echo(f"{key}: {value!r} " + (f"differs from {stated!r} ({source})" if status == MISMATCH else "is not recorded"))
    click.echo(f"parity: {len(rows)} recipe values, {len(bad)} differ or are not recorded -> {out}")
    if strict and bad:
        raise MimError(f"{params_path}: {len(bad)} recipe value(s) differ from their sources or are not recorded (see {out})")
