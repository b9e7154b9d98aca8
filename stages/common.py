"""What every stage command shares: reading params files and the path options.

Params: `load(params, "mae", Config)` reads one section of a params file into the frozen
dataclass the library takes (the only place YAML is read); every error names the file and the
dotted key.  With MIMREPRO_PARAMS_LOG set, each section a command reads is appended to that
file with the command line, so a test can check that dvc.yaml lists exactly what each stage reads.

Process set-up and the training loop are in stages/run.py (so stages that train nothing do not
depend on the engine's code).  Paths: artifacts are named in dvc.yaml and passed as options; the options here spell them the
same way in every command (`--data`, `--encoder`, `--input`, `--out`, `--metrics`, `--run`).
A training stage's `--run` folder holds its resume checkpoint and its dvclive logs.
"""
from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import yaml

from mim.errors import ConfigError, MimError

T = TypeVar("T")
PROFILE_FILE = Path("params/profile.yaml")


# --- params files --------------------------------------------------------------------------------
def read_yaml(path: str | Path) -> dict[str, Any]:
    from mim.config import read_mapping

    path = Path(path)
    if not path.is_file() and path.parent == PROFILE_FILE.parent and PROFILE_FILE.is_file():
        profiles = sorted(p.stem for p in PROFILE_FILE.parent.glob("*.yaml") if p != PROFILE_FILE)
        raise ConfigError(f"params file not found: {path} ({PROFILE_FILE} names profile {path.stem!r}; the profiles are "
                          f"{', '.join(profiles)}: `mimrepro profile NAME`)")
    return read_mapping(path, "params file", "YAML", yaml.safe_load, ConfigError)


def yaml_text(text: str, where: str) -> dict[str, Any]:
    """A params file's text (e.g. from `git show REV:params/smoke.yaml`) as plain data; `where` names it in errors."""
    from mim.config import parse_mapping

    return parse_mapping(text, where, "YAML", yaml.safe_load, ConfigError)


def section(path: str | Path, name: str) -> Any:
    """The plain data of section `name` (dotted: "finetune.optim") of params file `path`."""
    node: Any = read_yaml(path)
    for part in name.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"{path}: missing section '{name}'")
        node = node[part]
    log = os.environ.get("MIMREPRO_PARAMS_LOG")
    if log:
        with open(log, "a") as f:
            f.write(f"{shlex.join(sys.argv[1:])}\t{name}\n")
    return node


def load(path: str | Path, name: str, cls: type[T]) -> T:
    """Section `name` of params file `path` as dataclass `cls` (unknown keys and wrong types rejected)."""
    from mim.config import from_dict

    return from_dict(cls, section(path, name), where=f"{path}: {name}")


def finetune_sections(path: str | Path) -> list[str]:
    """The fine-tune recipes a params file holds: `finetune` and each `finetune_<name>` (BEiT's finetune_beit)."""
    present = set(read_yaml(path))
    return [n for n in ["finetune", *sorted(k for k in present if k.startswith("finetune_"))] if n in present]


def default_params() -> str:
    """params/<profile>.yaml for the profile named in params/profile.yaml (smoke if absent)."""
    if "MIMREPRO_PARAMS" in os.environ:
        return os.environ["MIMREPRO_PARAMS"]
    profile = "smoke"
    if PROFILE_FILE.is_file():
        profile = str(read_yaml(PROFILE_FILE).get("profile", profile))
    return f"params/{profile}.yaml"


# --- options ------------------------------------------------------------------------------------
Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def params_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--params",
        "params_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=default_params,
        show_default="params/<profile>.yaml",
        help="Params file of the profile to run (see params/profile.yaml).",
    )(f)


def data_option(what: str = "ImageNet-layout root with train/ and val/") -> Decorator:
    return click.option("--data", type=click.Path(path_type=Path), required=True,
                        help=f"data/manifest.json written by prepare-data, or a dataset folder ({what}).")


def _output(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """An output option's path is checked before the command does any work."""
    from mim.files import check_writable

    if value is not None:
        check_writable(value, param.opts[0] if param.opts else "output")
    return value


def _output_file(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    if value is not None and value.is_dir():
        raise MimError(f"{param.opts[0]} {value}: is a folder; give the file to write")
    return _output(ctx, param, value)


def _input_file(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    if value is not None and value.is_dir():
        raise MimError(f"{param.opts[0]} {value}: is a folder; give the file to read")
    return value


def file_option(name: str, help: str, *, output: bool = False) -> Decorator:
    return click.option(name, type=click.Path(path_type=Path), required=True, help=help,
                        callback=_output_file if output else _input_file)


def _folder(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    if value is not None and value.exists() and not value.is_dir():
        raise MimError(f"{param.opts[0]} {value}: is a file; give a folder")
    return value


def _output_folder(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    return _output(ctx, param, _folder(ctx, param, value))


def dir_option(name: str, help: str, dest: str | None = None, *, output: bool = False) -> Decorator:
    args = (name, dest) if dest else (name,)
    return click.option(*args, type=click.Path(path_type=Path), required=True, help=help,
                        callback=_output_folder if output else _folder)


def encoder_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return file_option("--encoder", "Student encoder (.safetensors, written by pretrain-student).")(f)


def run_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return dir_option("--run", "Folder of the run: its resume checkpoint (rewritten as it trains; resumed when the "
                               "config, code and data are the same) and its logs.", dest="run_dir", output=True)(f)
