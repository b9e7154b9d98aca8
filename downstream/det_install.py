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


# Warnings detectron2 0.7 triggers in today's torch / timm / setuptools on every run; they are
# about its code, not the user's, so the stage hides exactly these and nothing else.
_KNOWN_WARNINGS = (
    (UserWarning, r"pkg_resources is deprecated"),
    (UserWarning, r"torch\.meshgrid: in an upcoming release"),
    (FutureWarning, r"Importing from timm\.models\.layers is deprecated"),
    (FutureWarning, r"`torch\.jit\.script` is deprecated"),
)


def hide_known_warnings() -> None:
    import warnings

    for category, message in _KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
