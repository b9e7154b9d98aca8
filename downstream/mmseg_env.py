"""The one door to mmsegmentation: checks the pinned stack, installs the mmcv._ext stand-in, imports.

Everything outside `downstream/` stays importable without mmseg/mmcv/mmengine; a stage that
needs them calls `import_mmseg()` and gets a one-line MimError naming the install command.
"""
from __future__ import annotations

import types

from mim.errors import MimError

INSTALL_HINT = "bash scripts/install_mmseg.sh .venv"


class MissingDependency(MimError):
    """An optional downstream library is not installed."""


def import_mmseg() -> types.ModuleType:
    """Import mmseg (after mmcv/mmengine and the `mmcv._ext` shim); MissingDependency if absent."""
    try:
        import mmcv  # noqa: F401
        import mmengine  # noqa: F401
    except ImportError as e:
        raise MissingDependency(f"segmentation needs mmsegmentation, mmcv and mmengine ({e}); install them with: {INSTALL_HINT}") from None
    from downstream import mmcv_ext_shim

    mmcv_ext_shim.install()
    try:
        import mmseg
        import mmseg.datasets  # noqa: F401
        import mmseg.evaluation  # noqa: F401
        import mmseg.models  # noqa: F401  registers UPerHead, FCNHead, EncoderDecoder, ...
    except ImportError as e:
        raise MissingDependency(f"mmsegmentation does not import ({e}); reinstall with: {INSTALL_HINT}") from None
    return mmseg
