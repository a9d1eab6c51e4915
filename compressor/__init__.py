"""compress: structured filter pruning for CNNs, verified ONNX export and real latency measurement."""

import importlib.metadata


def tool_version() -> str:
    """The installed version of the ``compress`` package (``0+unknown`` when run from a bare checkout)."""
    try:
        return importlib.metadata.version("compress")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"
