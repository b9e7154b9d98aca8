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
    from mim.datasets import read_manifest
    from mim.errors import MimError

    if name not in ("imagenet", "coco", "ade20k"):
        raise MimError(f"no dataset {name!r} in the manifest; choose imagenet, coco or ade20k")
    return Path(getattr(read_manifest(manifest), name))  # entries are {root, classes, ...} dicts
