"""Crash-safe training checkpoints: checksummed, written atomically, the previous one kept as a fallback.

A checkpoint file holds the state serialized by ``torch.save`` as a uint8 tensor plus its SHA-256, so a
truncated, garbage or bit-flipped file is recognised (``torch.load`` alone accepts flipped tensor bytes).
Saving writes a temp file (flushed to disk), moves the newest checkpoint to ``*.prev.pt``, then renames
the temp file into place: a kill at any instant leaves a valid newest or previous checkpoint. Loading
takes the newest valid one and warns when it had to fall back. Everything loads with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from compressor.errors import BadInput, one_line
from compressor.runtime.atomic import atomic_path

FORMAT = "compress-checkpoint/1"


def previous(path: Path) -> Path:
    return path.with_name(path.stem + ".prev" + path.suffix)


def save(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path``; the checkpoint it replaces becomes :func:`previous` (``path``)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    blob = buf.getvalue()
    record = {"format": FORMAT, "sha256": hashlib.sha256(blob).hexdigest(),
              "blob": torch.frombuffer(bytearray(blob), dtype=torch.uint8)}  # fmt: skip
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            torch.save(record, fh)
            fh.flush()
            os.fsync(fh.fileno())
        if path.exists():
            os.replace(path, previous(path))
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read(path: Path) -> dict[str, Any]:
    """One checkpoint file, verified; ValueError (with the reason) if it is not a sound checkpoint."""
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"unreadable ({one_line(exc, 120, typed=True)})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT or not torch.is_tensor(record.get("blob")):
        raise ValueError("not a compress checkpoint")
    blob = record["blob"].numpy().tobytes()
    if hashlib.sha256(blob).hexdigest() != record.get("sha256"):
        raise ValueError("checksum mismatch (corrupt)")
    try:
        state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"unreadable state ({one_line(exc, 120, typed=True)})") from None
    if not isinstance(state, dict) or "phase" not in state or "epoch" not in state:
        raise ValueError("not a training checkpoint")
    return state


def load(path: Path, warn: Callable[[str], None]) -> dict[str, Any] | None:
    """The newest sound checkpoint at ``path`` or its previous one (with a warning); None if there is none.

    BadInput when checkpoints exist but none is sound.
    """
    candidates = [p for p in (path, previous(path)) if p.exists()]
    problems = []
    for p in candidates:
        try:
            state = read(p)
        except ValueError as exc:
            problems.append(f"{p.name}: {exc}")
            continue
        if problems:
            warn(f"warning: {'; '.join(problems)}; resuming from {p.name} (phase {state['phase']}, "
                 f"epoch {state['epoch']})")  # fmt: skip
        return state
    if problems:
        raise BadInput(f"--resume: no usable checkpoint in {path.parent} ({'; '.join(problems)})")
    return None


def remove(path: Path) -> None:
    """Delete the checkpoint and its previous one (the run is finished)."""
    previous(path).unlink(missing_ok=True)
    path.unlink(missing_ok=True)
