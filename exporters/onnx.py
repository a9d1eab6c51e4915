"""Export a (pruned) PyTorch CNN to ONNX, check it, slim it, verify it against PyTorch, stamp metadata.

Pipeline of :func:`export_onnx`::

    export (dynamo, falling back to the legacy TorchScript exporter) -> onnx.checker
    -> onnxslim -> onnx.checker -> [float16 conversion -> onnx.checker]
    -> ORT-CPU vs the fp32 PyTorch model on several batch sizes -> metadata_props
    -> atomic write (one .onnx file, or .onnx + .onnx.data with external data)

Facts this module relies on (torch 2.15 / onnx 1.23 / onnxscript 0.7 / onnxslim 0.1.98 / onnxruntime 1.31):

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
import copy
import functools
import inspect
import io
import itertools
import logging
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import onnx
import torch
from onnx.external_data_helper import uses_external_data
from torch import nn

from compressor import tool_version
from compressor.errors import BadInput, one_line
from compressor.runtime.atomic import check_output_file

log = logging.getLogger("compress.export")

EXPORTERS = ("auto", "dynamo", "legacy")
DYNAMO_MIN_OPSET = 18  # torch's dynamo exporter builds opset 18+ graphs; asked for less it falls back
FP16_MIN_OPSET = 9  # below, the legacy exporter keeps weights as graph inputs (they would stay float32)
PRECISIONS = ("fp32", "fp16")
#: Default verification tolerances (``max|diff| <= atol + rtol * max|ref|``) per precision (fp16: module docstring).
FP32_RTOL, FP32_ATOL = 1e-3, 1e-4
FP16_RTOL, FP16_ATOL = 2e-2, 5e-2
DEFAULT_TOLERANCES = {"fp32": (FP32_RTOL, FP32_ATOL), "fp16": (FP16_RTOL, FP16_ATOL)}
#: Parameter/tensor bytes from which ``external_data=None`` (auto) uses external data: protobuf's limit is
#: 2 GiB - 1 for the whole model; the graph and constants the exporters add need a margin.
EXTERNAL_DATA_THRESHOLD = int(0.9 * onnx.checker.MAXIMUM_PROTOBUF)
#: Tensors smaller than this stay inside the .onnx file when writing external data (onnx's default).
_EXTERNAL_MIN_TENSOR_BYTES = 1024
_PAGE = 4096  # external tensors of a page or more start on a page boundary
DATA_SUFFIX = ".data"
INPUT_NAME = "input"
BATCH_DIM = "batch"
#: Batch used for the example input of a dynamic-batch export (1 invites specialization).
_EXAMPLE_BATCH = 2
_REL_EPS = 1e-12
#: Keys this module writes into metadata_props; user metadata cannot override them.
RESERVED_KEYS = (
    "tool",
    "tool_version",
    "exporter",
    "exporter_fallback",
    "opset",
    "dynamic_batch",
    "input_shape",
    "precision",
    "verified",
    "max_abs_diff",
    "verify_batch_sizes",
    "verify_rtol",
    "verify_atol",
)


class _ImageOnly(nn.Module):
    """Calls a model with the image alone: its other forward arguments keep their defaults.

    The legacy exporter turns every defaulted forward argument (``return_features=False``) into an ONNX
    input the caller would have to feed; behind this wrapper the graph has exactly one input.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> Any:
        return self.model(x)


def _image_only(model: nn.Module) -> nn.Module:
    try:
        params = [p for p in inspect.signature(model.forward).parameters.values() if p.kind != p.VAR_KEYWORD]
    except (TypeError, ValueError):
        return model
    return _ImageOnly(model).eval() if len(params) > 1 else model


class _ExportRejected(RuntimeError):
    """An exporter ran but its result does not meet the request (opset, dynamic batch, checker)."""


# --------------------------------------------------------------------------------------------- helpers


def _flatten_outputs(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for item in out for t in _flatten_outputs(item)]
    if isinstance(out, dict):
        return [t for item in out.values() for t in _flatten_outputs(item)]
    raise BadInput(f"model output of type {type(out).__name__} is not supported for ONNX export")


def _default_opset_version(model: onnx.ModelProto) -> int | None:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return None


def _input_batch_is_symbolic(model: onnx.ModelProto) -> bool:
    inputs = [i for i in model.graph.input if i.name == INPUT_NAME] or list(model.graph.input)
    if not inputs:
        return False
    dims = inputs[0].type.tensor_type.shape.dim
    return len(dims) > 0 and dims[0].HasField("dim_param") and not dims[0].HasField("dim_value")


def _check(model: onnx.ModelProto | Path) -> None:
    """``onnx.checker`` with strict shape inference; a Path is checked with its external data."""
    onnx.checker.check_model(os.fspath(model) if isinstance(model, Path) else model, full_check=True)


def _as_model_bytes(model: onnx.ModelProto | bytes | str | os.PathLike[str]) -> bytes | str:
    if isinstance(model, onnx.ModelProto):
        return model.SerializeToString()
    if isinstance(model, bytes):
        return model
    return os.fspath(model)


def _example_input(input_shape: tuple[int, ...], batch: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((batch, *input_shape), generator=gen, dtype=torch.float32)


def _param_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers (shared tensors once): what the exported weights weigh."""
    unique = {(t.device, t.data_ptr()): t for t in model.state_dict().values() if isinstance(t, torch.Tensor)}
    return sum(t.numel() * t.element_size() for t in unique.values())


def _tensor_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the tensors held inside ``model`` (initializers and Constant attributes, subgraphs included)."""
    total = 0
    for tensor in _all_tensors(model.graph):
        if tensor.HasField("raw_data"):
            total += len(tensor.raw_data)
        elif not uses_external_data(tensor):
            total += int(np.prod(tensor.dims, dtype=np.int64)) * max(1, _elem_size(tensor.data_type))
    return total


def _elem_size(data_type: int) -> int:
    try:
        return int(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type)).itemsize)
    except Exception:  # string tensors and the like: small, count them as bytes
        return 1


def _all_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sub in _subgraphs(attr):
                yield from _all_tensors(sub)


def _subgraphs(attr: onnx.AttributeProto) -> list[onnx.GraphProto]:
    return ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)


def check_options(
    *,
    opset: Any = 17,
    exporter: Any = "auto",
    fp16: Any = False,
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


# --------------------------------------------------------------------------------------------- files


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


def _checked(proto: onnx.ModelProto, workdir: Path | None, tag: str) -> None:
    _check(proto if workdir is None else _stage(proto, workdir, tag))


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


# --------------------------------------------------------------------------------------------- exporters

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


# --------------------------------------------------------------------------------------------- float16


def _outer_names(graph: onnx.GraphProto) -> set[str]:
    """Names a subgraph reads from its enclosing scopes."""
    local = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    used: set[str] = set()
    for node in graph.node:
        used.update(_node_inputs(node))
        local.update(node.output)
    return used - local


def _node_inputs(node: onnx.NodeProto) -> set[str]:
    names = {n for n in node.input if n}
    for attr in node.attribute:
        for sub in _subgraphs(attr):
            names |= _outer_names(sub)
    return names


def _toposort(graph: onnx.GraphProto) -> None:
    """Order ``graph.node`` topologically (stable: a sorted graph is left as it is)."""
    known = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    produced_by_nodes = {o for n in graph.node for o in n.output}
    needs = [_node_inputs(n) & produced_by_nodes for n in graph.node]
    done: set[str] = set()
    order: list[int] = []
    pending = list(range(len(graph.node)))
    while pending:
        rest = []
        for i in pending:
            if needs[i] <= done | known:
                order.append(i)
                done.update(graph.node[i].output)
            else:
                rest.append(i)
        if len(rest) == len(pending):
            raise RuntimeError("the graph has a cycle or reads a value no node produces")
        pending = rest
    if order != sorted(order):
        nodes = [copy.deepcopy(graph.node[i]) for i in order]
        del graph.node[:]
        graph.node.extend(nodes)


def _to_fp16(source: onnx.ModelProto | Path, workdir: Path | None = None) -> onnx.ModelProto:
    """float16 weights and compute, float32 inputs/outputs (``keep_io_types``), checked like the fp32 graph.

    ``source`` is a model in memory, or a file with external data (shape inference then runs by path)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    if isinstance(source, Path):
        proto = onnx.load(os.fspath(source), load_external_data=False)  # inputs/outputs to compare
        model: onnx.ModelProto | str = os.fspath(source)
    else:
        proto, model = source, copy.deepcopy(source)
    with _quiet_loggers(("onnxruntime.transformers.float16",)):
        converted = convert_float_to_float16(model, keep_io_types=True)
    del model
    _toposort(converted.graph)
    _checked(converted, workdir, "fp16")
    before = [(o.name, o.type.tensor_type.elem_type) for o in proto.graph.output]
    after = [(o.name, o.type.tensor_type.elem_type) for o in converted.graph.output]
    if after != before:
        raise RuntimeError(f"float16 conversion changed the outputs {before} -> {after}")
    if _input_batch_is_symbolic(proto) and not _input_batch_is_symbolic(converted):
        raise RuntimeError("float16 conversion made the batch dimension static")
    return converted


# --------------------------------------------------------------------------------------------- verify


def verify(
    onnx_model: onnx.ModelProto | bytes | str | os.PathLike[str],
    model: nn.Module,
    input_shape: tuple[int, ...],
    *,
    batch_sizes: Sequence[int] = (1, 4),
    rtol: float = FP32_RTOL,
    atol: float = FP32_ATOL,
    seed: int = 0,
) -> dict:
    """Compare ONNX Runtime (CPU) against ``model`` in PyTorch on seeded random inputs.

    Never raises on a mismatch or an ORT run error: both give ``passed=False`` (errors are listed).
    """
    import onnxruntime as ort

    model = model.eval()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(_as_model_bytes(onnx_model), opts, providers=["CPUExecutionProvider"])
    in_name = sess.get_inputs()[0].name
    out_names = [o.name for o in sess.get_outputs()]
    per_output: dict[str, dict[str, float | None]] = {n: {"max_abs_diff": 0.0, "max_rel_diff": 0.0} for n in out_names}
    batch_sizes = sorted({int(b) for b in batch_sizes})
    passed = True
    errors: list[str] = []
    for i, batch in enumerate(batch_sizes):
        x = _example_input(tuple(input_shape), batch, seed + 1000 * i)
        with torch.no_grad():
            refs = [t.detach().cpu().numpy() for t in _flatten_outputs(model(x))]
        try:
            outs = sess.run(None, {in_name: x.numpy()})
        except Exception as exc:  # a run failure is a verification failure
            passed = False
            errors.append(f"batch {batch}: onnxruntime failed: {one_line(exc, typed=True)}")
            for stats in per_output.values():
                stats["max_abs_diff"] = stats["max_rel_diff"] = None
            continue
        if len(outs) != len(refs):
            passed = False
            errors.append(f"batch {batch}: ONNX has {len(outs)} outputs, PyTorch {len(refs)}")
            continue
        for name, got, ref in zip(out_names, outs, refs, strict=True):
            stats = per_output[name]
            if got.shape != ref.shape:
                passed = False
                errors.append(f"batch {batch}: output {name} shape {got.shape} != PyTorch {ref.shape}")
                stats["max_abs_diff"] = stats["max_rel_diff"] = None
                continue
            got64, ref64 = got.astype(np.float64), ref.astype(np.float64)
            diff = np.abs(got64 - ref64)
            abs_d = float(diff.max()) if diff.size else 0.0
            rel_d = float((diff / (np.abs(ref64) + _REL_EPS)).max()) if diff.size else 0.0
            # Scale-aware: float32 rounding through a deep net is relative to the output's range, so an element
            # near zero in a logit vector spanning +-8 must not fail where a wrong channel (diff ~ range) does.
            scale = float(np.abs(ref64).max()) if ref64.size else 0.0
            if not abs_d <= atol + rtol * scale:
                passed = False
            if not (np.isfinite(abs_d) and np.isfinite(rel_d)):
                errors.append(f"batch {batch}: output {name} has non-finite values or differences")
                stats["max_abs_diff"] = stats["max_rel_diff"] = None
                continue
            for key, val in (("max_abs_diff", abs_d), ("max_rel_diff", rel_d)):
                if stats[key] is not None:
                    stats[key] = max(stats[key], val)

    outputs = [{"name": n, **s} for n, s in per_output.items()]

    def _overall(key: str) -> float | None:
        vals = [o[key] for o in outputs]
        return None if any(v is None for v in vals) or not vals else max(vals)

    return {
        "batch_sizes": batch_sizes,
        "rtol": rtol,
        "atol": atol,
        "outputs": outputs,
        "max_abs_diff": _overall("max_abs_diff"),
        "max_rel_diff": _overall("max_rel_diff"),
        "passed": bool(passed),
        "errors": errors,
    }


# --------------------------------------------------------------------------------------------- export


def _set_metadata(proto: onnx.ModelProto, props: dict[str, str]) -> None:
    merged = {p.key: p.value for p in proto.metadata_props}
    merged.update(props)
    del proto.metadata_props[:]
    for key, value in merged.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


_F = TypeVar("_F", bound=Callable[..., Any])


def _keeps_modes(fn: _F) -> _F:
    """Restore the train/eval mode of every submodule of the model (first argument) after ``fn``."""

    @functools.wraps(fn)
    def wrapper(model: nn.Module, *args: Any, **kwargs: Any) -> Any:
        modes = [(m, m.training) for m in model.modules()]
        try:
            return fn(model, *args, **kwargs)
        finally:
            for module, mode in modes:
                module.training = mode

    return wrapper  # type: ignore[return-value]


@_keeps_modes
def export_onnx(
    model: nn.Module,
    input_shape: tuple[int, ...],
    out: str | Path,
    *,
    opset: int = 17,
    dynamic_batch: bool = True,
    simplify: bool = True,
    metadata: dict[str, str] | None = None,
    verify_batches: tuple[int, ...] = (1, 4),
    rtol: float | None = None,
    atol: float | None = None,
    exporter: str = "auto",
    fp16: bool = False,
    external_data: bool | None = None,
) -> dict:
    """Export ``model`` for inputs ``(N, *input_shape)`` to ``out``; see the module docstring.

    ``rtol``/``atol`` default to :data:`DEFAULT_TOLERANCES` of the precision (fp32 1e-3/1e-4, fp16 2e-2/5e-2).
    ``external_data``: True writes the weights to ``<out>.data`` (tensors >= 1 KiB), False never does, None
    (auto) does when the model reaches :data:`EXTERNAL_DATA_THRESHOLD` bytes.

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
    if external_data is not False and data_path(out).is_dir():
        raise BadInput(f"external data path {data_path(out)} is a directory")

    # The caller's module keeps its device and modes: a CPU module is exported in place in eval mode and
    # @_keeps_modes restores its modes (no second copy of a large model); any other is copied to the CPU.
    if any(t.device.type != "cpu" for t in itertools.chain(model.parameters(), model.buffers())):
        try:
            model = copy.deepcopy(model)
        except Exception as exc:
            log.warning("cannot copy the model (%s); exporting it in place (it is left on CPU)", exc)
    model = _image_only(model.cpu().eval())
    example = _example_input(shape, _EXAMPLE_BATCH if dynamic_batch else 1, seed=0)
    try:
        with torch.no_grad():
            n_outputs = len(_flatten_outputs(model(example)))
    except BadInput:
        raise
    except Exception as exc:  # a model that cannot run on this input is bad input
        raise BadInput(
            f"model does not run on input of shape {tuple(example.shape)}: {one_line(exc, typed=True)}"
        ) from exc
    output_names = ["output"] if n_outputs == 1 else [f"output_{i}" for i in range(n_outputs)]

    # Large models (or external data on request) go through files: protobuf cannot hold 2 GB in one message.
    param_bytes = _param_bytes(model)
    if external_data is False and param_bytes // (2 if fp16 else 1) >= onnx.checker.MAXIMUM_PROTOBUF:
        raise BadInput(
            f"the model's weights ({param_bytes / 2**30:.2f} GiB) cannot fit one ONNX file (2 GiB): "
            "drop --no-external-data"
        )
    through_files = external_data is True or param_bytes >= EXTERNAL_DATA_THRESHOLD
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
        )
    return result


def _export_checked(
    model: nn.Module,
    shape: tuple[int, ...],
    out: Path,
    example: torch.Tensor,
    output_names: list[str],
    workdir: Path | None,
    *,
    opset: int,
    dynamic_batch: bool,
    simplify: bool,
    metadata: dict[str, Any] | None,
    verify_batches: Sequence[int],
    rtol: float,
    atol: float,
    exporter: str,
    precision: str,
    external_data: bool | None,
) -> dict:
    proto, used, fallback_reason = _run_exporters(model, example, opset, dynamic_batch, output_names, exporter, workdir)
    log.info("exported with the %s exporter at opset %d (%d nodes)", used, opset, len(proto.graph.node))

    simplified, slim_error = False, None
    if simplify:
        # Through files, onnxslim (which needs ~4x the model in memory) reads the exported file itself and our
        # copy is dropped meanwhile; the file is the fallback.
        source: onnx.ModelProto | Path = proto if workdir is None else _stage(proto, workdir, "exported")
        if workdir is not None:
            del proto
        try:
            proto = _slim(source, workdir)
            simplified = True
        except Exception as exc:  # keep the unslimmed, checked model
            slim_error = one_line(exc, typed=True)
            log.warning("onnxslim failed, keeping the unslimmed model: %s", slim_error)
            proto = source if isinstance(source, onnx.ModelProto) else onnx.load(os.fspath(source))
        del source

    if precision == "fp16":
        source = proto if workdir is None else _stage(proto, workdir, "fp32")
        del proto  # through files: the converter loads the file itself
        try:
            proto = _to_fp16(source, workdir)
        except Exception as exc:
            raise BadInput(f"float16 conversion failed: {one_line(exc, typed=True)}") from exc
        del source

    dynamic = _input_batch_is_symbolic(proto)
    batches = tuple(sorted({int(b) for b in verify_batches}))
    if not dynamic:
        if batches != (1,):
            log.info("batch dimension is static: verifying batch 1 only (requested %s)", batches)
        batches = (1,)

    props: dict[str, str] = {}
    for key, value in (metadata or {}).items():
        if str(key) in RESERVED_KEYS:
            log.warning("metadata key %r is reserved by compress and was not written", key)
            continue
        props[str(key)] = str(value)
    props.update(
        {
            "tool": "compress",
            "tool_version": tool_version(),
            "exporter": used,
            **({"exporter_fallback": fallback_reason} if fallback_reason else {}),
            "opset": str(opset),
            "dynamic_batch": "true" if dynamic else "false",
            "input_shape": "x".join(str(d) for d in shape),
            "precision": precision,
            "verify_rtol": repr(rtol),
            "verify_atol": repr(atol),
        }
    )
    _set_metadata(proto, props)

    source = proto if workdir is None else _stage(proto, workdir, "verify")  # ORT loads large models by path
    verification = verify(source, model, shape, batch_sizes=batches, rtol=rtol, atol=atol, seed=0)
    verification["precision"] = precision
    if not dynamic and tuple(verify_batches) != (1,):
        verification["note"] = "static batch dimension: only batch 1 verified"
    if not verification["passed"]:
        log.warning(
            "ONNX output differs from PyTorch (max abs diff %s, rtol=%g, atol=%g)%s",
            verification["max_abs_diff"],
            rtol,
            atol,
            "; " + "; ".join(verification["errors"]) if verification["errors"] else "",
        )
    _set_metadata(
        proto,
        {
            "verified": "true" if verification["passed"] else "false",
            "max_abs_diff": repr(verification["max_abs_diff"]),
            "verify_batch_sizes": ",".join(str(b) for b in verification["batch_sizes"]),
        },
    )

    weights = _tensor_bytes(proto)
    external = weights >= EXTERNAL_DATA_THRESHOLD if external_data is None else external_data
    if not external and weights >= onnx.checker.MAXIMUM_PROTOBUF:
        raise BadInput(f"the exported model ({weights / 2**30:.2f} GiB) is over 2 GiB: drop --no-external-data")
    files = _write(proto, out, external)

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
    }


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file as a plain dict (external data is not read)."""
    return {p.key: p.value for p in load_model(path).metadata_props}


def load_model(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Read an ONNX file (without external data); anything else is :class:`BadInput` naming the path."""
    p = Path(path)
    if not p.exists():
        raise BadInput(f"{p}: no such file")
    if not p.is_file():
        raise BadInput(f"{p}: not a file")
    try:
        return onnx.load(os.fspath(p), load_external_data=False)
    except Exception as exc:
        raise BadInput(f"{p} is not a loadable ONNX model ({one_line(exc, 120, typed=True)})") from None
