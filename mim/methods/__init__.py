"""Student pretraining methods, one module each: this folder is the registry.

A method is a module `mim/methods/<name>.py` with
* `Config`: the frozen dataclass of its params section `<name>`, nested the same way for every
  method: `<name>.model` (the method's own architecture and loss knobs, `mask_ratio` a fraction),
  `<name>.data` (augmentation) and `<name>.optim` (`mim.engine.OptimConfig`); `None` for a
  method with no params (`scratch`);
* `INPUT`: what the method learns from besides the images, as a phrase for messages (its
  teacher's or tokenizer's file, passed as `pretrain-student --input`), or `None`;
* a model whose `forward` returns `(loss, logs)`, split into `forward_encoder`,
  `forward_decoder` and `forward_loss` where the method has those parts, with the student ViT
  as its `encoder` attribute (exported after training);
* `task(cfg, inputs) -> Task` (built with `mim.engine.make_task`);
* optionally `check(cfg, encoder) -> [(key, message)]`: checks against the `encoder` section, run by
  `mimrepro check-params` (the first stage) and by `pretrain-student` before any work;

`METHODS` maps each name to its module's import path; `load(name)` imports that one module only,
so pretraining MAE neither imports nor (in dvc.yaml) depends on BEiT's code.  Adding a method is
one new file here, one params section and one line under `students` in dvc.yaml (docs/DESIGN.md).
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from mim.errors import MimError

if TYPE_CHECKING:  # the registry itself stays import-light: `mimrepro --help` lists the methods
    from mim.data.images import ImageFolder
    from mim.engine import RunConfig
    from mim.vit import ViTConfig

METHODS: dict[str, str] = {
    m.name: f"{__name__}.{m.name}" for m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name) if not m.name.startswith("_")
}


def load(name: str) -> ModuleType:
    """The module of method `name`; a one-line error naming the valid methods otherwise."""
    if name not in METHODS:
        raise MimError(f"unknown method {name!r}; choose from {', '.join(METHODS)} (modules of mim/methods/)")
    return importlib.import_module(METHODS[name])


@dataclass(frozen=True)
class Inputs:
    """What `pretrain-student` hands every method's `task`."""

    encoder: ViTConfig  # the `encoder` params section: the student ViT, the same for every method
    run: RunConfig
    data: Path  # data/manifest.json (or an ImageNet-layout root), read only by methods that train on images
    input: Path | None = None  # the file named by the method's INPUT (a teacher, a tokenizer)

    def images(self, transform: Any) -> ImageFolder:
        """The training images (`<root>/train`, less any file prepare-data skipped), with `transform`."""
        from mim.data.images import open_dataset

        return open_dataset(self.data).images("train", transform)
