"""Export a (pruned) PyTorch CNN to ONNX, check it, slim it, verify it against PyTorch, stamp metadata.

Pipeline of :func:`export_onnx`::

    export (dynamo, falling back to the legacy TorchScript exporter) -> onnx.checker
    -> onnxslim -> onnx.checker -> [float16 conversion -> onnx.checker]
    -> ORT-CPU vs the fp32 PyTorch model on several batch sizes -> metadata_props
    -> atomic write (one .onnx file, or .onnx + .onnx.data with external data)

The steps live in their own modules; this one runs them (:func:`export_onnx`, :func:`check_options`) and
re-exports the public names:

    exporters.export       torch -> ONNX: the dynamo and legacy exporters, the choice and the fallback
    exporters.check        onnx.checker (by path with external data), the external-data path
    exporters.simplify     onnxslim, keeping the unslimmed model when it fails
    exporters.fp16         float16 conversion (graph re-sorted topologically)
    exporters.verify       ONNX Runtime vs PyTorch, the default tolerances
    exporters.metadata     metadata_props: reserved keys, writing, reading
    exporters.files        loading, saving with external data, scratch copies, the atomic write
    exporters.proto        queries on ONNX protos (symbolic batch dim, tensors, their bytes)
    exporters.torch_model  the PyTorch side: CPU copy, image-only wrapper, example input, output names

Facts the export relies on (torch 2.15 / onnx 1.23 / onnxscript 0.7 / onnxslim 0.1.98 / onnxruntime 1.31):

- The dynamo exporter's op library starts at opset 18. Asked for a lower opset it exports at 18 and
  tries a version conversion that fails for common CNNs (ReduceMean's axes became an input in 18),
  keeping opset 18 with only a log warning. We check the opset actually produced. ``auto`` therefore goes
  straight to the legacy exporter below opset 18 and records why (``exporter_fallback``).
- With ``dynamic_shapes`` the dynamo exporter may silently specialize the batch dimension (e.g. when
  ``forward`` calls ``int(x.shape[0])``); we check the exported input really has a symbolic batch dim.
- ``onnxslim.slim`` mutates the ModelProto it is given, so it gets a copy.
- Protobuf cannot serialize a message of 2 GiB or more: the legacy exporter cannot write such a model into a
  BytesIO, ``onnx.checker`` needs it by path, ONNX Runtime must load it by path. Models whose parameters
  reach :data:`EXTERNAL_DATA_THRESHOLD` are therefore exported to files in a temporary directory and every
  check goes through files with external data (``external_data=None``, the default, decides that, and also
  whether the written model keeps its weights in ``<name>.onnx.data``: when its tensors reach the threshold).
- ``onnxruntime.transformers.float16.convert_float_to_float16`` appends the input Cast nodes at the end of
  the node list (``onnx.checker`` rejects the unsorted graph; ORT sorts it): we sort the graph topologically.
  Below opset 9 the legacy exporter keeps the weights as graph inputs, which ``keep_io_types`` then keeps in
  float32: fp16 needs opset >= 9 (:data:`FP16_MIN_OPSET`).

float16 tolerance (``fp16=True``): the fp16 graph is verified against the fp32 PyTorch model with
``max|onnx - torch| <= atol + rtol * max|torch|`` per output (scale-aware, see :func:`verify`)
at :data:`FP16_RTOL` = 2e-2, :data:`FP16_ATOL` = 5e-2 unless the
caller gives rtol/atol (fp32 defaults: 1e-3 / 1e-4). Measured on ORT CPU, torchvision models at 3x64x64,
random init with BatchNorm statistics re-estimated on random inputs (so activations and logits have a normal
magnitude; untouched random-init MobileNetV2/EfficientNet outputs are ~1e-12), batches 1 and 4, three seeds:

    model             max |fp16 - torch|   max |torch|   atol needed at rtol 2e-2
    resnet18          3.2e-3 .. 4.7e-3     0.9 .. 1.2    <= 2.1e-3
    mobilenet_v2      6.8e-3 .. 9.4e-3     0.42 .. 0.47  <= 6.4e-3
    efficientnet_b0   1.9e-2 .. 7.2e-2     3.2 .. 9.6    <= 2.2e-2

fp16 rounding error grows with the magnitude of the activations (~0.4..2.5% of max |output| above), so
models with much larger logits may need a larger ``atol``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from compressor.config import DEFAULT_EXPORT as _E
from compressor.errors import BadInput, one_line
from compressor.runtime.atomic import check_output_file
from exporters.check import _check_data_path
from exporters.export import DYNAMO_MIN_OPSET, EXPORTERS, _run_exporters
from exporters.files import DATA_SUFFIX, _stage, _write, data_path, load_model
from exporters.fp16 import FP16_MIN_OPSET, _to_fp16
from exporters.metadata import (
    RESERVED_KEYS,
    _export_props,
    _set_metadata,
    _verification_props,
    accuracy_props,
    read_metadata,
)
from exporters.proto import BATCH_DIM, INPUT_NAME, _input_batch_is_symbolic, _tensor_bytes
from exporters.simplify import _slim_or_keep
from exporters.torch_model import (
    _EXAMPLE_BATCH,
    _cpu_image_model,
    _example_input,
    _keeps_modes,
    _output_names,
    _param_bytes,
)
from exporters.verify import (
    DEFAULT_TOLERANCES,
    FP16_ATOL,
    FP16_RTOL,
    FP32_ATOL,
    FP32_RTOL,
    PRECISIONS,
    _verify_batch_sizes,
    _verify_export,
    verify,
)

__all__ = [
    "BATCH_DIM",
    "DATA_SUFFIX",
    "DEFAULT_TOLERANCES",
    "DYNAMO_MIN_OPSET",
    "EXPORTERS",
    "EXTERNAL_DATA_THRESHOLD",
    "FP16_ATOL",
    "FP16_MIN_OPSET",
    "FP16_RTOL",
    "FP32_ATOL",
    "FP32_RTOL",
    "INPUT_NAME",
    "PRECISIONS",
    "RESERVED_KEYS",
    "check_options",
    "data_path",
    "export_onnx",
    "load_model",
    "read_metadata",
    "verify",
]

log = logging.getLogger("compress.export")

#: Parameter/tensor bytes from which ``external_data=None`` (auto) uses external data: protobuf's limit is
#: 2 GiB - 1 for the whole model; the graph and constants the exporters add need a margin.
EXTERNAL_DATA_THRESHOLD = int(0.9 * onnx.checker.MAXIMUM_PROTOBUF)


def check_options(
    *,
    opset: Any = _E.opset,
    exporter: Any = _E.exporter,
    fp16: Any = _E.fp16,
    rtol: Any = None,
    atol: Any = None,
    external_data: Any = None,
) -> None:
    """Validate export options (``BadInput`` with one line); recipes call it before any work."""
    if exporter not in EXPORTERS:
        raise BadInput(f"unknown exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")
    max_opset = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not 7 <= opset <= max_opset:
        raise BadInput(f"opset must be an integer in 7..{max_opset} (installed onnx), got {opset!r}")
    if not isinstance(fp16, bool):
        raise BadInput(f"fp16 must be true or false, got {fp16!r}")
    if fp16 and opset < FP16_MIN_OPSET:
        raise BadInput(
            f"fp16 needs opset >= {FP16_MIN_OPSET} (below, the weights are graph inputs and stay float32), "
            f"got opset {opset}"
        )
    for name, value in (("rtol", rtol), ("atol", atol)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise BadInput(f"{name} must be a finite number >= 0, got {value!r}")
    if external_data is not None and not isinstance(external_data, bool):
        raise BadInput(f"external_data must be true, false or null (auto), got {external_data!r}")


def _validate(input_shape: Any, verify_batches: Sequence[int], **options: Any) -> tuple[int, ...]:
    check_options(**options)
    try:
        shape = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError):
        raise BadInput(f"input_shape must be a tuple of ints (C, H, W), got {input_shape!r}") from None
    if not shape or any(d <= 0 for d in shape):
        raise BadInput(f"input_shape must be positive dims without batch, e.g. (3, 224, 224); got {shape}")
    if not verify_batches or any(int(b) < 1 for b in verify_batches):
        raise BadInput(f"verify_batches must be positive batch sizes, got {tuple(verify_batches)!r}")
    return shape


@_keeps_modes
def export_onnx(
    model: nn.Module,
    input_shape: tuple[int, ...],
    out: str | Path,
    *,
    opset: int = _E.opset,
    dynamic_batch: bool = _E.dynamic_batch,
    simplify: bool = _E.simplify,
    metadata: dict[str, str] | None = None,
    verify_batches: tuple[int, ...] = (1, 4),
    rtol: float | None = None,
    atol: float | None = None,
    exporter: str = _E.exporter,
    fp16: bool = _E.fp16,
    external_data: bool | None = _E.external_data,
    evaluate: Callable[[Any], dict] | None = None,
) -> dict:
    """Export ``model`` for inputs ``(N, *input_shape)`` to ``out``; see the module docstring.

    It stays this long because its options are the public API and are handed on one per line.

    ``rtol``/``atol`` default to :data:`DEFAULT_TOLERANCES` of the precision (fp32 1e-3/1e-4, fp16 2e-2/5e-2).
    ``external_data``: True writes the weights to ``<out>.data`` (tensors >= 1 KiB), False never does, None
    (auto) does when the model reaches :data:`EXTERNAL_DATA_THRESHOLD` bytes.
    ``evaluate(model)``: measures the file to be written (a ModelProto, or its path through files), e.g.
    :func:`exporters.accuracy.onnx_accuracy` on a test split; its result is stamped into the metadata
    (``accuracy_*``) and returned as ``accuracy``.

    Raises ``BadInput`` when the model cannot be exported at all. A verification mismatch does not
    raise: the file is written with ``verified=false`` and the result says ``passed=False``.
    """
    shape = _validate(
        input_shape,
        verify_batches,
        opset=opset,
        exporter=exporter,
        fp16=fp16,
        rtol=rtol,
        atol=atol,
        external_data=external_data,
    )
    precision = "fp16" if fp16 else "fp32"
    rtol = float(DEFAULT_TOLERANCES[precision][0] if rtol is None else rtol)
    atol = float(DEFAULT_TOLERANCES[precision][1] if atol is None else atol)
    out = check_output_file(out, "output path")
    _check_data_path(out, external_data)
    model = _cpu_image_model(model)
    example = _example_input(shape, _EXAMPLE_BATCH if dynamic_batch else 1, seed=0)
    output_names = _output_names(model, example)

    # Large models (or external data on request) go through files: protobuf cannot hold 2 GB in one message.
    param_bytes = _param_bytes(model)
    through_files = _through_files(param_bytes, fp16, external_data)
    scratch = tempfile.TemporaryDirectory(prefix="compress-export-") if through_files else contextlib.nullcontext()
    with scratch as tmp:
        workdir = Path(tmp) if tmp else None
        if workdir is not None:
            log.info("model weights %.1f MiB: exporting through files in %s", param_bytes / 2**20, workdir)
        result = _export_checked(
            model,
            shape,
            out,
            example,
            output_names,
            workdir,
            opset=opset,
            dynamic_batch=dynamic_batch,
            simplify=simplify,
            metadata=metadata,
            verify_batches=verify_batches,
            rtol=rtol,
            atol=atol,
            exporter=exporter,
            precision=precision,
            external_data=external_data,
            evaluate=evaluate,
        )
    return result


def _through_files(param_bytes: int, fp16: bool, external_data: bool | None) -> bool:
    """Whether the export goes through files: on request, or for weights of :data:`EXTERNAL_DATA_THRESHOLD`."""
    if external_data is False and param_bytes // (2 if fp16 else 1) >= onnx.checker.MAXIMUM_PROTOBUF:
        raise BadInput(
            f"the model's weights ({param_bytes / 2**30:.2f} GiB) cannot fit one ONNX file (2 GiB): "
            "drop --no-external-data"
        )
    return external_data is True or param_bytes >= EXTERNAL_DATA_THRESHOLD


def _export_checked(model: nn.Module, shape: tuple[int, ...], out: Path, example: torch.Tensor,
                    output_names: list[str], workdir: Path | None, *, opset: int, dynamic_batch: bool,
                    simplify: bool, metadata: dict[str, Any] | None, verify_batches: Sequence[int], rtol: float,
                    atol: float, exporter: str, precision: str, external_data: bool | None,
                    evaluate: Callable[[Any], dict] | None = None) -> dict:  # fmt: skip
    """Export, stamp, verify and write ``model`` (the pipeline of the module docstring); the result of the export.

    It stays this long because it hands every step its options by keyword and spells out the result's keys.
    """
    proto, used, fallback_reason, simplified, slim_error = _exported(
        model, example, output_names, workdir, opset=opset, dynamic_batch=dynamic_batch, simplify=simplify,
        exporter=exporter, precision=precision)  # fmt: skip
    dynamic = _input_batch_is_symbolic(proto)
    batches = _verify_batch_sizes(dynamic, verify_batches)
    props = _export_props(
        metadata,
        used=used,
        fallback_reason=fallback_reason,
        opset=opset,
        dynamic=dynamic,
        shape=shape,
        precision=precision,
        rtol=rtol,
        atol=atol,
    )
    _set_metadata(proto, props)
    verification = _verify_export(
        proto,
        model,
        shape,
        workdir,
        batches=batches,
        verify_batches=verify_batches,
        dynamic=dynamic,
        rtol=rtol,
        atol=atol,
        precision=precision,
    )
    _set_metadata(proto, _verification_props(verification))
    accuracy = None
    if evaluate is not None:
        accuracy = evaluate(proto if workdir is None else _stage(proto, workdir, "accuracy"))
        _set_metadata(proto, accuracy_props(accuracy))
    files = _write_final(proto, out, external_data)

    return {
        "path": str(out),
        "files": [str(f) for f in files],
        "external_data": len(files) > 1,
        "exporter": used,
        "fallback_reason": fallback_reason,
        "opset": opset,
        "precision": precision,
        "dynamic_batch": dynamic,
        "simplified": simplified,
        "slim_error": slim_error,
        "nodes": len(proto.graph.node),
        "size_bytes": out.stat().st_size,
        "total_bytes": sum(f.stat().st_size for f in files),
        "verification": verification,
        "accuracy": accuracy,
    }


def _exported(model: nn.Module, example: torch.Tensor, output_names: list[str], workdir: Path | None, *, opset: int,
              dynamic_batch: bool, simplify: bool, exporter: str,
              precision: str) -> tuple[onnx.ModelProto, str, str | None, bool, str | None]:  # fmt: skip
    """Export (with fallback), slim and convert to float16 as asked, each step checked.

    Returns (proto, exporter used, fallback reason, simplified, slim error). Through files, each step's input
    is dropped from memory while the next one reads it from its file.
    """
    proto, used, fallback_reason = _run_exporters(model, example, opset, dynamic_batch, output_names, exporter, workdir)
    log.info("exported with the %s exporter at opset %d (%d nodes)", used, opset, len(proto.graph.node))

    simplified, slim_error = False, None
    if simplify:
        # Through files, onnxslim (which needs ~4x the model in memory) reads the exported file itself and our
        # copy is dropped meanwhile; the file is the fallback.
        source: onnx.ModelProto | Path = proto if workdir is None else _stage(proto, workdir, "exported")
        if workdir is not None:
            del proto
        proto, simplified, slim_error = _slim_or_keep(source, workdir)
        del source

    if precision == "fp16":
        source = proto if workdir is None else _stage(proto, workdir, "fp32")
        del proto  # through files: the converter loads the file itself
        try:
            proto = _to_fp16(source, workdir)
        except Exception as exc:
            raise BadInput(f"float16 conversion failed: {one_line(exc, typed=True)}") from exc
        del source
    return proto, used, fallback_reason, simplified, slim_error


def _write_final(proto: onnx.ModelProto, out: Path, external_data: bool | None) -> list[Path]:
    """Write the final model to ``out`` (external data on request, or from :data:`EXTERNAL_DATA_THRESHOLD`)."""
    weights = _tensor_bytes(proto)
    external = weights >= EXTERNAL_DATA_THRESHOLD if external_data is None else external_data
    if not external and weights >= onnx.checker.MAXIMUM_PROTOBUF:
        raise BadInput(f"the exported model ({weights / 2**30:.2f} GiB) is over 2 GiB: drop --no-external-data")
    return _write(proto, out, external)
