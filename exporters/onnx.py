"""Export a (pruned) PyTorch CNN to ONNX, check it, slim it, verify it against PyTorch, stamp metadata.

Pipeline of :func:`export_onnx`::

    export (dynamo, falling back to the legacy TorchScript exporter) -> onnx.checker
    -> onnxslim -> onnx.checker -> ORT-CPU vs PyTorch on several batch sizes -> metadata_props
    -> atomic write (a single self-contained .onnx file)

Facts this module relies on (torch 2.15 / onnx 1.23 / onnxscript 0.7 / onnxslim 0.1.98):

- The dynamo exporter's op library starts at opset 18. Asked for a lower opset it exports at 18 and
  tries a version conversion that fails for common CNNs (ReduceMean's axes became an input in 18),
  keeping opset 18 with only a log warning. We check the opset actually produced.
- With ``dynamic_shapes`` the dynamo exporter may silently specialize the batch dimension (e.g. when
  ``forward`` calls ``int(x.shape[0])``); we check the exported input really has a symbolic batch dim.
- ``onnxslim.slim`` mutates the ModelProto it is given, so it gets a copy.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from compressor import tool_version
from compressor.atomic import atomic_path
from compressor.errors import BadInput, one_line

log = logging.getLogger("compress.export")

EXPORTERS = ("auto", "dynamo", "legacy")
DYNAMO_MIN_OPSET = 18  # torch's dynamo exporter builds opset 18+ graphs; asked for less it falls back
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
    "opset",
    "dynamic_batch",
    "verified",
    "max_abs_diff",
    "verify_batch_sizes",
)


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


def _check(model: onnx.ModelProto) -> None:
    """``onnx.checker`` with strict shape inference (cheap for models well under 2 GB)."""
    onnx.checker.check_model(model, full_check=True)


def _as_model_bytes(model: onnx.ModelProto | bytes | str | os.PathLike[str]) -> bytes | str:
    if isinstance(model, onnx.ModelProto):
        return model.SerializeToString()
    if isinstance(model, bytes):
        return model
    return os.fspath(model)


def _example_input(input_shape: tuple[int, ...], batch: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((batch, *input_shape), generator=gen, dtype=torch.float32)


def _validate(input_shape: Any, opset: Any, exporter: str, verify_batches: Sequence[int]) -> tuple[int, ...]:
    if exporter not in EXPORTERS:
        raise BadInput(f"unknown exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")
    try:
        shape = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError):
        raise BadInput(f"input_shape must be a tuple of ints (C, H, W), got {input_shape!r}") from None
    if not shape or any(d <= 0 for d in shape):
        raise BadInput(f"input_shape must be positive dims without batch, e.g. (3, 224, 224); got {shape}")
    max_opset = onnx.defs.onnx_opset_version()
    if not isinstance(opset, int) or not 7 <= opset <= max_opset:
        raise BadInput(f"opset must be an integer in 7..{max_opset} (installed onnx), got {opset!r}")
    if not verify_batches or any(int(b) < 1 for b in verify_batches):
        raise BadInput(f"verify_batches must be positive batch sizes, got {tuple(verify_batches)!r}")
    return shape


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


def _export_dynamo(
    model: nn.Module, example: torch.Tensor, opset: int, dynamic_batch: bool, output_names: list[str]
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
    proto = program.model_proto
    got = _default_opset_version(proto)
    if got != opset:
        raise _ExportRejected(
            f"dynamo exporter produced opset {got}, not the requested {opset} "
            "(its op library starts at opset 18 and down-conversion failed)"
        )
    if dynamic_batch and not _input_batch_is_symbolic(proto):
        raise _ExportRejected("dynamo exporter made the batch dimension static despite dynamic_shapes")
    _check(proto)
    return proto


def _export_legacy(
    model: nn.Module, example: torch.Tensor, opset: int, dynamic_batch: bool, output_names: list[str]
) -> onnx.ModelProto:
    dynamic_axes = None
    if dynamic_batch:
        dynamic_axes = {name: {0: BATCH_DIM} for name in [INPUT_NAME, *output_names]}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # "You are using the legacy TorchScript-based ONNX export" and its internals' deprecations:
        # we chose it on purpose, the user cannot act on them. (TracerWarnings stay: they explain
        # values baked into the trace.)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (example,),
            buf,
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=output_names,
            dynamic_axes=dynamic_axes,
        )
    proto = onnx.load_from_string(buf.getvalue())
    got = _default_opset_version(proto)
    if got != opset:
        raise _ExportRejected(f"legacy exporter produced opset {got}, not the requested {opset}")
    if dynamic_batch and not _input_batch_is_symbolic(proto):
        raise _ExportRejected("legacy exporter made the batch dimension static despite dynamic_axes")
    _check(proto)
    return proto


_EXPORT_FNS = {"dynamo": _export_dynamo, "legacy": _export_legacy}


def _run_exporters(
    model: nn.Module,
    example: torch.Tensor,
    opset: int,
    dynamic_batch: bool,
    output_names: list[str],
    exporter: str,
) -> tuple[onnx.ModelProto, str, str | None]:
    """Return (proto, exporter used, fallback reason)."""
    order = ["dynamo", "legacy"] if exporter == "auto" else [exporter]
    failures: list[str] = []
    if exporter == "auto" and opset < DYNAMO_MIN_OPSET:  # known in advance: no need to try and warn
        order = ["legacy"]
        failures.append(f"dynamo: needs opset >= {DYNAMO_MIN_OPSET}, {opset} requested")
    for name in order:
        try:
            proto = _EXPORT_FNS[name](model, example, opset, dynamic_batch, output_names)
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


def _slim(proto: onnx.ModelProto) -> onnx.ModelProto:
    import onnxslim

    slimmed = onnxslim.slim(copy.deepcopy(proto))  # slim mutates its argument
    if not isinstance(slimmed, onnx.ModelProto):
        raise RuntimeError(f"onnxslim returned {type(slimmed).__name__}, not a model")
    _check(slimmed)
    before = [o.name for o in proto.graph.output]
    after = [o.name for o in slimmed.graph.output]
    if after != before:
        raise RuntimeError(f"onnxslim changed the outputs {before} -> {after}")
    if _input_batch_is_symbolic(proto) and not _input_batch_is_symbolic(slimmed):
        raise RuntimeError("onnxslim made the batch dimension static")
    return slimmed


# --------------------------------------------------------------------------------------------- verify


def verify(
    onnx_model: onnx.ModelProto | bytes | str | os.PathLike[str],
    model: nn.Module,
    input_shape: tuple[int, ...],
    *,
    batch_sizes: Sequence[int] = (1, 4),
    rtol: float = 1e-3,
    atol: float = 1e-4,
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
            if not np.allclose(got64, ref64, rtol=rtol, atol=atol):
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
    rtol: float = 1e-3,
    atol: float = 1e-4,
    exporter: str = "auto",
) -> dict:
    """Export ``model`` for inputs ``(N, *input_shape)`` to ``out``; see the module docstring.

    Raises ``BadInput`` when the model cannot be exported at all. A verification mismatch does not
    raise: the file is written with ``verified=false`` and the result says ``passed=False``.
    """
    shape = _validate(input_shape, opset, exporter, verify_batches)
    out = Path(out)
    if out.is_dir():
        raise BadInput(f"output path {out} is a directory")

    # Work on a CPU/eval copy so the caller's module keeps its device and mode.
    try:
        model = copy.deepcopy(model)
    except Exception as exc:
        log.warning("cannot copy the model (%s); exporting it in place (it is left on CPU in eval mode)", exc)
    model = model.cpu().eval()
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

    proto, used, fallback_reason = _run_exporters(model, example, opset, dynamic_batch, output_names, exporter)
    log.info("exported with the %s exporter at opset %d (%d nodes)", used, opset, len(proto.graph.node))

    simplified, slim_error = False, None
    if simplify:
        try:
            proto = _slim(proto)
            simplified = True
        except Exception as exc:  # keep the unslimmed, checked model
            slim_error = one_line(exc, typed=True)
            log.warning("onnxslim failed, keeping the unslimmed model: %s", slim_error)

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
            "opset": str(opset),
            "dynamic_batch": "true" if dynamic else "false",
        }
    )
    _set_metadata(proto, props)

    verification = verify(proto, model, shape, batch_sizes=batches, rtol=rtol, atol=atol, seed=0)
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

    if proto.ByteSize() >= onnx.checker.MAXIMUM_PROTOBUF:
        raise BadInput("exported model is over 2 GB; external-data export is not supported")
    with atomic_path(out) as tmp:
        onnx.save_model(proto, os.fspath(tmp), save_as_external_data=False)

    return {
        "path": str(out),
        "exporter": used,
        "fallback_reason": fallback_reason,
        "opset": opset,
        "dynamic_batch": dynamic,
        "simplified": simplified,
        "slim_error": slim_error,
        "nodes": len(proto.graph.node),
        "size_bytes": out.stat().st_size,
        "verification": verification,
    }


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file as a plain dict."""
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
