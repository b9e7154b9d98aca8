"""In-memory stand-in for `mmcv._ext`, the compiled-ops module that mmcv-lite lacks.

mmseg 1.2.2 imports `mmcv.ops` at import time, and `mmcv.ops` loads `mmcv._ext` and checks
that each op name exists on it.  UperNet over a ViT calls none of them, so this module
answers every attribute with a function that raises a clear error if it is ever called.
It lives only in `sys.modules` (installed by `install()` before mmcv is imported), never
in site-packages; with full mmcv (compiled) installed, `install()` does nothing.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Callable
from typing import Any, NoReturn

NAME = "mmcv._ext"


class CompiledOpUnavailable(RuntimeError):
    """A compiled mmcv op was called while only mmcv-lite is installed."""


def _missing(op: str) -> Callable[..., NoReturn]:
    def call(*args: Any, **kwargs: Any) -> NoReturn:
        raise CompiledOpUnavailable(
            f"mmcv compiled op '{op}' was called, but only mmcv-lite is installed; this model needs "
            "full mmcv (see scripts/install_mmseg.sh for the source build with CUDA ops)"
        )

    call.__name__ = op
    return call


class _ShimModule(types.ModuleType):
    def __getattr__(self, op: str) -> Callable[..., NoReturn]:
        if op.startswith("__"):  # keep Python's own protocol lookups (copy, pickle, inspect) honest
            raise AttributeError(op)
        return _missing(op)


def has_compiled_ops() -> bool:
    """True when a real `mmcv._ext` (full mmcv) is installed on disk."""
    if isinstance(sys.modules.get(NAME), _ShimModule):
        return False
    try:
        return importlib.util.find_spec(NAME) is not None
    except (ImportError, ValueError):  # parent `mmcv` missing, or a spec-less entry
        return False


def install() -> bool:
    """Register the stand-in as `mmcv._ext` unless full mmcv provides one; True if installed."""
    if isinstance(sys.modules.get(NAME), _ShimModule):
        return True
    if has_compiled_ops():
        return False
    mod = _ShimModule(NAME, __doc__)
    # A spec makes importlib.util.find_spec / pkgutil.find_loader (mmcv's "ops exist?" check) succeed.
    mod.__spec__ = importlib.machinery.ModuleSpec(NAME, loader=None, origin="mimrepro shim")
    sys.modules[NAME] = mod
    return True
