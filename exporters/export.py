"""torch -> ONNX: the dynamo and legacy (TorchScript) exporters, what each must produce, and the fallback.

``auto`` tries dynamo, then legacy; below opset :data:`DYNAMO_MIN_OPSET` it goes straight to legacy (see the
``exporters.onnx`` docstring). An exporter whose result misses the request (opset, dynamic batch, checker)
counts as failed.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import onnx
import torch
from torch import nn

from compressor.errors import BadInput, one_line
from exporters.check import _check
from exporters.proto import BATCH_DIM, INPUT_NAME, _input_batch_is_symbolic

log = logging.getLogger("compress.export")

EXPORTERS = ("auto", "dynamo", "legacy")
DYNAMO_MIN_OPSET = 18  # torch's dynamo exporter builds opset 18+ graphs; asked for less it falls back


class _ExportRejected(RuntimeError):
    """An exporter ran but its result does not meet the request (opset, dynamic batch, checker)."""


def _default_opset_version(model: onnx.ModelProto) -> int | None:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return None


#: Loggers that report (with a full traceback) the failed opset down-conversion we detect ourselves.
_NOISY_LOGGERS = ("onnxscript.version_converter", "torch.onnx._internal.exporter._compat")


@contextlib.contextmanager
def _quiet_loggers(names: Sequence[str] = _NOISY_LOGGERS) -> Iterator[None]:
    loggers = [logging.getLogger(n) for n in names]
    saved = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, saved, strict=True):
            lg.setLevel(level)


def _accept(proto: onnx.ModelProto, name: str, opset: int, dynamic_batch: bool, dynamic_how: str) -> None:
    got = _default_opset_version(proto)
    if got != opset:
        hint = " (its op library starts at opset 18 and down-conversion failed)" if name == "dynamo" else ""
        raise _ExportRejected(f"{name} exporter produced opset {got}, not the requested {opset}{hint}")
    if dynamic_batch and not _input_batch_is_symbolic(proto):
        raise _ExportRejected(f"{name} exporter made the batch dimension static despite {dynamic_how}")


def _export_dynamo(
    model: nn.Module,
    example: torch.Tensor,
    opset: int,
    dynamic_batch: bool,
    output_names: list[str],
    workdir: Path | None = None,
) -> onnx.ModelProto:
    dynamic_shapes = ({0: torch.export.Dim(BATCH_DIM, min=1)},) if dynamic_batch else None
    with _quiet_loggers():
        program = torch.onnx.export(
            model,
            (example,),
            None,
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=output_names,
            dynamic_shapes=dynamic_shapes,
            external_data=False,
            optimize=True,
            verbose=False,
        )
    if workdir is None:
        proto = program.model_proto
        _accept(proto, "dynamo", opset, dynamic_batch, "dynamic_shapes")
        _check(proto)
        return proto
    path = workdir / "dynamo" / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(path, external_data=True)
    _accept(onnx.load(os.fspath(path), load_external_data=False), "dynamo", opset, dynamic_batch, "dynamic_shapes")
    _check(path)
    return onnx.load(os.fspath(path))


def _export_legacy(
    model: nn.Module,
    example: torch.Tensor,
    opset: int,
    dynamic_batch: bool,
    output_names: list[str],
    workdir: Path | None = None,
) -> onnx.ModelProto:
    dynamic_axes = None
    if dynamic_batch:
        dynamic_axes = {name: {0: BATCH_DIM} for name in [INPUT_NAME, *output_names]}
    # Into memory below 2 GB; to a file otherwise (torch then writes the weights as external data itself).
    path = None if workdir is None else workdir / "legacy" / "model.onnx"
    target: io.BytesIO | str = io.BytesIO() if path is None else os.fspath(path)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # "You are using the legacy TorchScript-based ONNX export" and its internals' deprecations:
        # we chose it on purpose, the user cannot act on them. (TracerWarnings stay: they explain
        # values baked into the trace.)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (example,),
            target,
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=output_names,
            dynamic_axes=dynamic_axes,
        )
    if path is None:
        assert isinstance(target, io.BytesIO)
        proto = onnx.load_from_string(target.getvalue())
        _accept(proto, "legacy", opset, dynamic_batch, "dynamic_axes")
        _check(proto)
        return proto
    _accept(onnx.load(os.fspath(path), load_external_data=False), "legacy", opset, dynamic_batch, "dynamic_axes")
    _check(path)
    return onnx.load(os.fspath(path))


_EXPORT_FNS = {"dynamo": _export_dynamo, "legacy": _export_legacy}


def _run_exporters(
    model: nn.Module,
    example: torch.Tensor,
    opset: int,
    dynamic_batch: bool,
    output_names: list[str],
    exporter: str,
    workdir: Path | None = None,
) -> tuple[onnx.ModelProto, str, str | None]:
    """Return (proto, exporter used, fallback reason)."""
    order = ["dynamo", "legacy"] if exporter == "auto" else [exporter]
    failures: list[str] = []
    if exporter == "auto" and opset < DYNAMO_MIN_OPSET:  # known in advance: no need to try and warn
        order = ["legacy"]
        failures.append(f"dynamo: needs opset >= {DYNAMO_MIN_OPSET}, {opset} requested")
    for name in order:
        try:
            proto = _EXPORT_FNS[name](model, example, opset, dynamic_batch, output_names, workdir)
        except Exception as exc:  # any exporter failure is reported or falls back
            reason = " ".join(str(exc).split()) if isinstance(exc, _ExportRejected) else one_line(exc, typed=True)
            log.debug("%s exporter failed", name, exc_info=True)
            failures.append(f"{name}: {reason}")
            if name != order[-1]:
                log.warning("%s exporter failed, falling back to the legacy exporter: %s", name, reason)
            continue
        fallback = failures[0].split(": ", 1)[1] if failures else None
        return proto, name, fallback
    raise BadInput("ONNX export failed (" + "; ".join(failures) + ")")
