"""How far graph building may go: the families refused up front, and the time / memory bounds on the rest.

Code elsewhere reads these as ``limits.GRAPH_SECONDS`` (not a copied name), so patching this module's attributes
takes effect.
"""

from __future__ import annotations

import os

from compressor.runtime.bounded import available_bytes

# Families Torch-Pruning cannot handle (checked): refuse at once instead of running into the bound below.
UNSUPPORTED = {
    "swin": "Torch-Pruning's group search does not finish in reasonable time on Swin (window shifts/reshapes)",
    "maxvit": "Torch-Pruning's group search does not finish in reasonable time on MaxViT (window/grid reshapes)",
}
#: Graph building (tracing + group search) is stopped past this many seconds / this much memory growth.
GRAPH_SECONDS = float(os.environ.get("COMPRESS_GRAPH_TIMEOUT", "40"))
GRAPH_MEMORY_GB = os.environ.get("COMPRESS_GRAPH_MEMORY_GB")  # default: half the memory available at start


def _memory_limit(memory_gb: float | None) -> int | None:
    if memory_gb is None and GRAPH_MEMORY_GB:
        memory_gb = float(GRAPH_MEMORY_GB)
    if memory_gb is not None:
        return int(memory_gb * 2**30) if memory_gb > 0 else None
    avail = available_bytes()
    return max(2 * 2**30, avail // 2) if avail else None
