"""Is detectron2 importable?  A clear error naming the install command when it is not.

detectron2 is optional: only `mimrepro detect` needs it, and only `downstream/` imports it.
"""
from __future__ import annotations

import importlib

from mim.errors import MimError

INSTALL_HINT = "bash scripts/install_detectron2.sh .venv"


def require_detectron2() -> None:
    """Raise MimError (one line in the CLI) unless detectron2 and its ViTDet pieces import."""
    try:
        importlib.import_module("detectron2.modeling.backbone.vit")
    except ImportError as e:  # ModuleNotFoundError, or a broken install missing a dependency
        raise MimError(
            f"detectron2 is not installed ({e}): run `{INSTALL_HINT}` "
            "(pinned, re-tagged sal-detectron2 wheel; with a GPU and internet you may build upstream instead)"
        ) from None
