"""onnxslim on the exported model, checked like it; on failure the unslimmed model is kept."""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path

import onnx

from compressor.errors import one_line
from exporters.check import _checked
from exporters.proto import _input_batch_is_symbolic

log = logging.getLogger("compress.export")


def _slim(source: onnx.ModelProto | Path, workdir: Path | None = None) -> onnx.ModelProto:
    """onnxslim on a model in memory, or on a file (with external data) that it then loads itself."""
    import onnxslim

    if isinstance(source, Path):
        proto = onnx.load(os.fspath(source), load_external_data=False)  # inputs/outputs to compare
        slimmed = onnxslim.slim(os.fspath(source))
    else:
        proto = source
        slimmed = onnxslim.slim(copy.deepcopy(proto))  # slim mutates its argument
    if not isinstance(slimmed, onnx.ModelProto):
        raise RuntimeError(f"onnxslim returned {type(slimmed).__name__}, not a model")
    _checked(slimmed, workdir, "slim")
    before = [o.name for o in proto.graph.output]
    after = [o.name for o in slimmed.graph.output]
    if after != before:
        raise RuntimeError(f"onnxslim changed the outputs {before} -> {after}")
    if _input_batch_is_symbolic(proto) and not _input_batch_is_symbolic(slimmed):
        raise RuntimeError("onnxslim made the batch dimension static")
    return slimmed


def _slim_or_keep(source: onnx.ModelProto | Path, workdir: Path | None) -> tuple[onnx.ModelProto, bool, str | None]:
    """(slimmed model, True, None), or when onnxslim fails (``source`` as a model, False, the error)."""
    try:
        return _slim(source, workdir), True, None
    except Exception as exc:  # keep the unslimmed, checked model
        slim_error = one_line(exc, typed=True)
        log.warning("onnxslim failed, keeping the unslimmed model: %s", slim_error)
        return (source if isinstance(source, onnx.ModelProto) else onnx.load(os.fspath(source))), False, slim_error
