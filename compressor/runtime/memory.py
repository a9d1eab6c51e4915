"""Up-front memory estimates: refuse a request whose tensors cannot fit before allocating them.

The estimates are cheap lower bounds (the bytes of the tensors a step must hold at once: one batch of inputs,
an in-memory dataset), checked against the memory available now (``MemAvailable`` in ``/proc/meminfo``, else
the free physical pages). A request past that would end in an allocator error or the OOM killer; refused here
it is one line naming the estimate and the limit.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable

from compressor.errors import BadInput


def available_bytes() -> int | None:
    """Memory available to a new allocation now, in bytes (``None`` where the platform cannot say)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def tensor_bytes(shape: Iterable[int], itemsize: int = 4) -> int:
    """Bytes of a dense tensor of ``shape`` (float32 by default)."""
    return math.prod(int(d) for d in shape) * int(itemsize)


def human_bytes(n: float) -> str:
    """``n`` bytes as a short decimal string: ``1.2 GB``."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def check_fits(what: str, needed: int, hint: str = "") -> None:
    """:class:`BadInput` when ``needed`` bytes (for ``what``) exceed the memory available now."""
    limit = available_bytes()
    if limit is not None and needed > limit:
        tail = f"; {hint}" if hint else ""
        raise BadInput(f"{what} needs about {human_bytes(needed)} of memory, more than the {human_bytes(limit)} "
                       f"available{tail}")  # fmt: skip
