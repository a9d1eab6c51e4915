"""ONNX files: reading one, saving with or without external data, scratch copies, the atomic final write."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import onnx
from onnx.external_data_helper import uses_external_data

from compressor.errors import BadInput, WriteFailed, one_line
from exporters.proto import _all_tensors

log = logging.getLogger("compress.export")

#: Tensors smaller than this stay inside the .onnx file when writing external data (onnx's default).
_EXTERNAL_MIN_TENSOR_BYTES = 1024
_PAGE = 4096  # external tensors of a page or more start on a page boundary
DATA_SUFFIX = ".data"


def data_path(out: str | os.PathLike[str]) -> Path:
    """The external-data file written next to ``out`` (``model.onnx`` -> ``model.onnx.data``)."""
    out = Path(out)
    return out.with_name(out.name + DATA_SUFFIX)


def _copy_fields(dst: Any, src: Any, skip: str) -> None:
    """Copy every set field of protobuf message ``src`` into ``dst`` except the field named ``skip``."""
    for fd, value in src.ListFields():
        if fd.name == skip:
            continue
        repeated = fd.is_repeated if hasattr(fd, "is_repeated") else fd.label == fd.LABEL_REPEATED
        if repeated:
            getattr(dst, fd.name).extend(value)
        elif fd.type == fd.TYPE_MESSAGE:
            getattr(dst, fd.name).CopyFrom(value)
        else:
            setattr(dst, fd.name, value)


def _save(proto: onnx.ModelProto, path: Path, external: bool) -> None:
    """Write ``proto`` to ``path``; with ``external``, initializers of 1 KiB and more go to ``<name>.data`` next
    to it (one file, relative location, large tensors page-aligned so ONNX Runtime can map them).

    ``proto`` is not modified: the weights are streamed from it into the data file and a small header proto is
    saved. (onnx's own ``save_as_external_data`` strips the weights from the proto it is given, and reading them
    back does not shrink protobuf's arena: every save would cost the model's size in memory again. It also
    refuses when a file named like the data file exists in the *current* directory.)
    """
    if not external:
        onnx.save_model(proto, os.fspath(path))
        return
    data = data_path(path)
    header = onnx.ModelProto()
    _copy_fields(header, proto, skip="graph")
    _copy_fields(header.graph, proto.graph, skip="initializer")
    with open(data, "wb") as f:
        for tensor in proto.graph.initializer:
            entry = header.graph.initializer.add()
            _copy_fields(entry, tensor, skip="raw_data")
            if not tensor.HasField("raw_data"):
                continue
            raw = tensor.raw_data
            if len(raw) < _EXTERNAL_MIN_TENSOR_BYTES:
                entry.raw_data = raw
                continue
            if len(raw) >= _PAGE:
                f.write(b"\0" * (-f.tell() % _PAGE))
            offset = f.tell()
            f.write(raw)
            entry.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", data.name), ("offset", offset), ("length", len(raw))):
                item = entry.external_data.add()
                item.key, item.value = key, str(value)
            del raw
    if data.stat().st_size == 0:  # every tensor was small
        data.unlink()
    onnx.save_model(header, os.fspath(path))


def _stage(proto: onnx.ModelProto, workdir: Path, tag: str) -> Path:
    """``proto`` as ``workdir/tag/model.onnx`` with external data (for the checker and ORT by path)."""
    folder = workdir / tag
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    path = folder / "model.onnx"
    _save(proto, path, external=True)
    return path


def _references(model_path: Path, location: str) -> bool:
    """Whether the ONNX file at ``model_path`` keeps tensors in ``location`` (False if unreadable)."""
    try:
        proto = onnx.load(os.fspath(model_path), load_external_data=False)
    except Exception:
        return False
    for tensor in _all_tensors(proto.graph):
        if uses_external_data(tensor) and any(
            e.key == "location" and e.value == location for e in tensor.external_data
        ):
            return True
    return False


def _write(proto: onnx.ModelProto, out: Path, external: bool) -> list[Path]:
    """Write ``out`` (and ``out.data`` with ``external``) through temp files in the same directory, renamed into
    place; nothing is left behind on failure. Returns the files written."""
    try:
        return _write_files(proto, out, external)
    except OSError as exc:  # a full disk, an I/O error, a vanished directory: one line naming the file (exit 2)
        raise WriteFailed.of(exc, out) from None


def _write_files(proto: onnx.ModelProto, out: Path, external: bool) -> list[Path]:
    data = data_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stale = not external and data.is_file() and _references(out, data.name)  # the old model's weights
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    placed: list[Path] = []
    try:
        staged = stage / out.name
        _save(proto, staged, external)
        staged_data = stage / data.name
        if staged_data.exists():  # no data file when every tensor is under 1 KiB
            os.replace(staged_data, data)
            placed.append(data)
        os.replace(staged, out)
        placed.append(out)
    except BaseException:
        for path in placed:
            path.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    if stale:
        data.unlink(missing_ok=True)
        log.info("removed %s: the previous %s kept its weights there", data, out.name)
    return [out, *(p for p in placed if p != out)]


def load_model(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Read an ONNX file (without external data); anything else is :class:`BadInput` naming the path."""
    p = Path(path)
    if not p.exists():
        raise BadInput(f"{p}: no such file")
    if not p.is_file():
        raise BadInput(f"{p}: not a file")
    try:
        proto = onnx.load(os.fspath(p), load_external_data=False)
    except Exception as exc:
        raise BadInput(f"{p} is not a loadable ONNX model ({one_line(exc, 120, typed=True)})") from None
    check_external_data(proto, p)
    return proto


def check_external_data(proto: onnx.ModelProto, path: Path) -> None:
    """:class:`BadInput` unless every external-data location of ``proto`` (read from ``path``) is a relative path
    inside ``path``'s folder: an absolute location or one that escapes the folder (``../../etc/passwd``) is refused,
    never read. The files are not opened here (the metadata reads without them); ONNX Runtime reads them."""
    folder = path.resolve().parent
    for tensor in _all_tensors(proto.graph):
        if not uses_external_data(tensor):
            continue
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        target = (folder / location.replace("\0", "")).resolve()  # a NUL is refused below (resolve cannot take it)
        unsafe = "\0" in location or os.path.isabs(location) or Path(location).drive
        if not location or unsafe or not target.is_relative_to(folder):
            raise BadInput(f"{path}: tensor {tensor.name!r} keeps its external data at {location!r}, outside the "
                           "model's folder; only relative paths inside it are read")  # fmt: skip
