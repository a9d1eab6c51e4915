"""compress: structured filter pruning for CNNs, verified ONNX export and real latency measurement.

The public API (imported on first use, so ``compress --help`` does not pay for torch):
:class:`Pruner`, :func:`save_pruned`, :func:`load_pruned`, :func:`export_onnx`, :func:`list_models`,
:func:`list_methods`.
"""

import importlib
import importlib.metadata
from typing import Any

_PUBLIC = {
    "Pruner": "compressor.api",
    "save_pruned": "compressor.api",
    "list_models": "compressor.api",
    "list_methods": "compressor.api",
    "load_pruned": "compressor.artifacts",
    "export_onnx": "exporters.onnx",
}
__all__ = ["tool_version", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'compressor' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})


def tool_version() -> str:
    """The installed version of the ``compress`` package (``0+unknown`` when run from a bare checkout)."""
    try:
        return importlib.metadata.version("compress")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"
