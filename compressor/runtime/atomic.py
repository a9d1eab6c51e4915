"""Atomic output: write to a temp file in the destination directory, rename on success.

A write that fails (no space left, an I/O error, the directory vanished: any OSError) removes the temp file and
raises :class:`~compressor.errors.WriteFailed` naming the destination (exit code 2, one line); the previous
file, if any, is untouched."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from compressor.errors import BadInput, WriteFailed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path next to ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    tmp_path = Path(tmp)
    try:
        with writing(path):
            yield tmp_path
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual mode
            os.replace(tmp_path, path)
    finally:
        with contextlib.suppress(OSError):
            tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def writing(path: str | os.PathLike[str]) -> Iterator[None]:
    """An OSError in the block becomes :class:`WriteFailed` naming ``path`` (exit 2, one line)."""
    try:
        yield
    except OSError as exc:
        raise WriteFailed.of(exc, path) from None


def write_torch(path: str | os.PathLike[str], obj: Any) -> None:
    """``torch.save`` atomically, through a Python file (so a full disk is an OSError, not a torch error)."""
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def append_line(path: str | os.PathLike[str], line: str) -> None:
    """Append ``line`` to ``path``; a failed append is cut back off (no half line is left), then WriteFailed."""
    with writing(path), open(path, "ab", buffering=0) as fh:
        size = fh.seek(0, os.SEEK_END)
        try:
            data = memoryview((line + "\n").encode())
            while data:
                data = data[fh.write(data) :]
        except OSError:
            with contextlib.suppress(OSError):
                fh.truncate(size)
            raise


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def check_writable_dir(directory: str | os.PathLike[str], option: str, shown: object = None) -> None:
    """BadInput now (before any work) when ``directory`` cannot be created or written: its nearest existing
    ancestor (or itself) must be a writable directory. ``shown`` is the path named in the message."""
    d = Path(directory)
    shown = d if shown is None else shown
    probe = next((q for q in (d, *d.parents) if q.exists()), Path("."))
    if not probe.is_dir():
        raise BadInput(f"{option} {shown}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise BadInput(f"{option} {shown}: directory {probe} is not writable")


def check_output_file(path: str | os.PathLike[str], option: str = "output") -> Path:
    """BadInput now when the file ``path`` cannot be written: it is a directory, a parent is a regular file, or
    the nearest existing parent directory is not writable. Missing parents are fine (they are made)."""
    p = Path(path)
    if p.is_dir():
        raise BadInput(f"{option} {p} is a directory; give a file path")
    check_writable_dir(p.parent, option, shown=p)
    return p
