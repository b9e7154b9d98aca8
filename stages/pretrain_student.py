"""`mimrepro pretrain-student --method NAME`: pretrain a student ViT and export its encoder.

Every method (a module of mim/methods/, listed by `mim.methods.METHODS`) runs the same way:
its params section, the shared `encoder` section and `run` go to `method.task(...)`; the
engine trains the task; the model's `encoder` is written to --out, which every downstream
stage reads.  A method with nothing to train (`scratch`) exports its encoder as built.
"""
from __future__ import annotations

from pathlib import Path

import click

from mim.methods import METHODS
from stages.common import data_option, file_option, load, params_option, run_option, section


def RUNTIME_IMPORTS(args: dict[str, str]) -> list[str]:  # noqa: N802  (read by scripts/dvc_deps.py)
    """The module this command imports by name: the one of --method."""
    return [METHODS[args["--method"]]]


@click.command("pretrain-student")
@click.option("--method", required=True, type=click.Choice(list(METHODS)), help="Pretraining method (a module of mim/methods/).")
@click.option("--name", required=True, help="Student name (progress output, the encoder's metadata).")
@data_option("ImageNet-layout root with train/")
@click.option("--input", "input_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The file the method learns from besides the images (img2vec: its teacher, beit: its tokenizer). "
                   "Methods that need none accept --data's manifest here, so every student's dvc.yaml entry has one shape.")
@file_option("--out", "The student encoder (.safetensors, timm VisionTransformer keys).", output=True)
@run_option
@params_option
def pretrain_student(method: str, name: str, data: Path, input_path: Path | None, out: Path, run_dir: Path, params_path: Path) -> None:
    """Pretrain a student (or initialise `scratch`) and write its encoder to --out."""
    from mim import methods
    from mim.config import to_dict
    from mim.encoder_file import save_encoder
    from mim.engine import is_main
    from mim.errors import ConfigError, MimError
    from mim.vit import ViTConfig
    from stages.run import fit_in, start

    module = methods.load(method)
    if module.Config is None:
        if section(params_path, method):
            raise MimError(f"{params_path}: {method} takes no params; leave its section empty ({{}})")
        cfg = None
    else:
        cfg = load(params_path, method, module.Config)
    encoder = load(params_path, "encoder", ViTConfig)
    for key, message in module.check(cfg, encoder) if hasattr(module, "check") else []:
        raise ConfigError(f"{params_path}: {method}.{key}: {message}")
    run = start(params_path)
    if input_path is not None and module.INPUT is None and input_path != data:
        raise MimError(f"--input applies to methods that learn from another model ({_with_input()}), not {method}")
    if input_path is None and module.INPUT is not None:
        raise MimError(f"--method {method} needs --input: {module.INPUT}")
    inputs = methods.Inputs(encoder=encoder, run=run, data=data, input=input_path if module.INPUT else None)
    t = module.task(cfg, inputs)
    if t.optim is not None:
        from mim.files import file_sha256

        config = {"method": method, "encoder": to_dict(encoder), method: to_dict(cfg) if cfg else {}, "seed": run.seed,
                  "data": str(data), **({"input_sha256": file_sha256(inputs.input)} if inputs.input else {})}
        fit_in(t, run, run_dir, config, desc=f"pretrain {name}")
    else:  # nothing to train: an empty run folder, so every student's DVC entry has one shape
        run_dir.mkdir(parents=True, exist_ok=True)
    if is_main():
        epochs = str(t.budget.epochs if t.optim is not None else 0)  # shown next to the student's results
        save_encoder(out, t.model.encoder.cpu(), extra={"student": name, "method": method, "params": str(params_path),
                                                        "pretrain_epochs": epochs, **t.info})
        click.echo(f"{name}: encoder written to {out}")


def _with_input() -> str:
    from mim import methods

    return ", ".join(m for m in methods.METHODS if methods.load(m).INPUT is not None)

