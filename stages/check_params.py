"""`mimrepro check-params`: every section of a params file checked before any stage works.

dvc.yaml runs it first (prepare-data depends on its stamp), so a bad value anywhere, a typo'd
section or a profile that does not exist stops `dvc repro` before DVC removes any output.
Each section is read into its dataclass (types, ranges and the dataclass's own `problems()`);
then the checks across sections run: each method's `check(cfg, encoder)`, the tokenizer's grid
against the student's, detection and segmentation against the encoder.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from stages.common import file_option, load, params_option, read_yaml, section


def RUNTIME_IMPORTS(args: dict[str, str]) -> list[str]:  # noqa: N802  (read by scripts/dvc_deps.py)
    """Every method's module, for its Config and check (dvc.yaml: the folder mim/methods covers them)."""
    from mim.methods import METHODS

    return list(METHODS.values())


def section_types() -> dict[str, Any]:
    """Section name -> the dataclass it is read into (a method without params: None)."""
    from downstream.det_config import DetectConfig
    from downstream.seg import SegmentConfig
    from mim import methods
    from mim.data.prepare import DatasetsConfig
    from mim.engine import RunConfig
    from mim.eval.diversity import DiversityConfig
    from mim.eval.finetune import FinetuneConfig
    from mim.eval.probe import ProbeConfig
    from mim.report.tables import TablesConfig
    from mim.teacher import dino
    from mim.tokenizer import vqvae
    from mim.vit import ViTConfig

    fixed = {"run": RunConfig, "data": DatasetsConfig, "dino": dino.Config, "tokenizer": vqvae.Config, "encoder": ViTConfig,
             "diversity": DiversityConfig, "finetune": FinetuneConfig, "probe": ProbeConfig, "detect": DetectConfig,
             "segment": SegmentConfig, "tables": TablesConfig}
    return {**fixed, **{name: methods.load(name).Config for name in methods.METHODS}}


def check_file(params: Path) -> list[str]:
    """The sections checked; raises ConfigError (one line) at the first problem."""
    from mim import methods
    from mim.errors import ConfigError
    from mim.eval.finetune import FinetuneConfig
    from stages.launch import read_launch

    # A student's own fine-tune recipe (dvc.yaml `students: {beit: {..., finetune: finetune_beit}}`)
    types = {**section_types(), **{k: FinetuneConfig for k in read_yaml(params) if str(k).startswith("finetune_")}}
    unknown = sorted(set(read_yaml(params)) - set(types) - {"launch"})
    if unknown:
        raise ConfigError(f"{params}: unknown section(s) {', '.join(unknown)}; the sections are {', '.join(sorted(types))}")
    cfgs: dict[str, Any] = {}
    for name, cls in types.items():
        if cls is None:  # a method without params: its section must be empty
            if section(params, name):
                raise ConfigError(f"{params}: {name} takes no params; leave its section empty ({{}})")
            continue
        cfgs[name] = load(params, name, cls)
    enc = cfgs["encoder"]
    read_launch(params)  # optional (absent: local); not a dependency of any stage

    def fail(where: str, problems: list[tuple[str, str]]) -> None:
        for key, message in problems:
            raise ConfigError(f"{params}: {where}.{key}: {message}")

    for name in methods.METHODS:
        module = methods.load(name)
        if hasattr(module, "check") and name in cfgs:
            fail(name, module.check(cfgs[name], enc))
    tok = cfgs["tokenizer"]
    down = 8 if tok.mode == "dalle" else tok.model.downsample  # DALL-E's encoder: one token per 8 px
    if tok.model.image_size != enc.grid * down:
        fail("tokenizer", [("model.image_size", f"{tok.model.image_size} px / {down} does not give the student's "
                                                f"{enc.grid}x{enc.grid} patch grid; set it to {enc.grid * down}")])
    fail("detect", cfgs["detect"].check_encoder(enc))
    fail("segment", cfgs["segment"].check_encoder(enc))
    return sorted(types) + (["launch"] if "launch" in read_yaml(params) else [])


@click.command("check-params")
@params_option
@file_option("--out", "A stamp written when every section is valid (the same bytes whatever the values).", output=True)
def check_params(params_path: Path, out: Path) -> None:
    """Check every section of the params file (types, ranges, and the checks across sections)."""
    from mim.files import write_json

    sections = check_file(params_path)
    write_json(out, {"valid": True})
    click.echo(f"{params_path}: {len(sections)} sections valid")
