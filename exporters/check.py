"""Checks on the ONNX being written: ``onnx.checker`` (by path with external data) and the external-data path."""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from compressor.errors import BadInput
from exporters.files import _stage, data_path


def _check(model: onnx.ModelProto | Path) -> None:
    """``onnx.checker`` with strict shape inference; a Path is checked with its external data."""
    onnx.checker.check_model(os.fspath(model) if isinstance(model, Path) else model, full_check=True)


def _checked(proto: onnx.ModelProto, workdir: Path | None, tag: str) -> None:
    _check(proto if workdir is None else _stage(proto, workdir, tag))


def _check_data_path(out: Path, external_data: bool | None) -> None:
    """``BadInput`` when the external-data file next to ``out`` may be written and is a directory."""
    if external_data is not False and data_path(out).is_dir():
        raise BadInput(f"external data path {data_path(out)} is a directory")
