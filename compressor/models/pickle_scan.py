"""What a ``torch.save`` archive's pickle names (classes, functions), read without unpickling it."""

from __future__ import annotations

import pickle
import pickletools
import zipfile
from pathlib import Path


def _pickle_globals(path: Path) -> list[str]:
    """The classes and functions the pickle of a ``torch.save`` archive names, read without unpickling it."""
    try:
        with zipfile.ZipFile(path) as zf:
            name = next((n for n in zf.namelist() if n.endswith("data.pkl")), None)
            data = zf.read(name) if name else b""
    except (OSError, zipfile.BadZipFile, ValueError, RuntimeError):
        return []
    found: list[str] = []
    strings: list[str] = []
    try:
        for op, arg, _pos in pickletools.genops(data):
            if op.name == "GLOBAL":
                found.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
            elif "UNICODE" in op.name and isinstance(arg, str):
                strings.append(arg)
    except Exception:  # a damaged pickle: what was read so far
        pass
    return list(dict.fromkeys(found))


def _is_pickled_module(names: list[str]) -> bool:
    """True when the named globals are those of a pickled ``nn.Module`` (or its parameters)."""
    return any(n.startswith("torch.nn.modules.") or n in ("torch._utils._rebuild_parameter",
                                                            "torch.nn.parameter.Parameter") for n in names)  # fmt: skip


def _needs_unpickling(path: Path, exc: Exception) -> bool:
    """True when a weights-only load refused a sound archive for the Python objects it holds."""
    return isinstance(exc, pickle.UnpicklingError) and zipfile.is_zipfile(path) and bool(_pickle_globals(path))
