"""Shared pieces of the stage commands: the --params option and clean error reporting."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import click

from mim.config import read_yaml

PROFILE_FILE = Path("params/profile.yaml")


def default_params() -> str:
    """params/<profile>.yaml for the profile named in params/profile.yaml (smoke if absent)."""
    if "MIMREPRO_PARAMS" in os.environ:
        return os.environ["MIMREPRO_PARAMS"]
    profile = "smoke"
    if PROFILE_FILE.is_file():
        profile = str(read_yaml(PROFILE_FILE).get("profile", profile))
    return f"params/{profile}.yaml"


def params_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--params",
        "params_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=default_params,
        show_default="params/<profile>.yaml",
        help="Params file of the profile to run (see params/profile.yaml).",
    )(f)


MANIFEST = Path("data/manifest.json")


def dataset_root(name: str, manifest: Path = MANIFEST) -> Path:
    """Root of dataset `name` ("imagenet", "coco", "ade20k") as listed by prepare-data."""
    import json

    from mim.errors import MimError

    if not manifest.is_file():
        raise MimError(f"{manifest} not found; run `mimrepro prepare-data` (or `dvc repro prepare-data`) first")
    roots = json.loads(manifest.read_text())
    if name not in roots:
        raise MimError(f"{manifest} lists no dataset {name!r}; it has: {', '.join(sorted(roots))}")
    return Path(roots[name])
