"""Pruning methods (callbacks on the training loop) and their registry.

Names load lazily so that ``compressor.methods.options`` (the option dataclasses) stays torch-free.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"METHODS": "registry", "build_method": "registry", "method_parameters": "registry",
         "Context": "base", "Method": "base"}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)


__all__ = list(_LAZY)
