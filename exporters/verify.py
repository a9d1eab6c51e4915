"""ONNX Runtime (CPU) against the PyTorch model on seeded random inputs, and the tolerances that pass it.

The criterion is ``max|onnx - torch| <= atol + rtol * max|torch|`` per output; the fp16 tolerances are measured
in the ``exporters.onnx`` docstring.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from compressor.errors import one_line
from compressor.runtime.ort_options import session_options
from exporters.files import _stage
from exporters.torch_model import _example_input, _flatten_outputs

log = logging.getLogger("compress.export")

PRECISIONS = ("fp32", "fp16")
#: Default verification tolerances (``max|diff| <= atol + rtol * max|ref|``) per precision (fp16: module docstring).
FP32_RTOL, FP32_ATOL = 1e-3, 1e-4
FP16_RTOL, FP16_ATOL = 2e-2, 5e-2
DEFAULT_TOLERANCES = {"fp32": (FP32_RTOL, FP32_ATOL), "fp16": (FP16_RTOL, FP16_ATOL)}
_REL_EPS = 1e-12

_Stats = dict[str, dict[str, float | None]]


def _as_model_bytes(model: onnx.ModelProto | bytes | str | os.PathLike[str]) -> bytes | str:
    if isinstance(model, onnx.ModelProto):
        return model.SerializeToString()
    if isinstance(model, bytes):
        return model
    return os.fspath(model)


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
    sess = ort.InferenceSession(_as_model_bytes(onnx_model), session_options(), providers=["CPUExecutionProvider"])
    in_name = sess.get_inputs()[0].name
    out_names = [o.name for o in sess.get_outputs()]
    per_output: _Stats = {n: {"max_abs_diff": 0.0, "max_rel_diff": 0.0} for n in out_names}
    batch_sizes = sorted({int(b) for b in batch_sizes})
    passed = True
    errors: list[str] = []
    for i, batch in enumerate(batch_sizes):
        x = _example_input(tuple(input_shape), batch, seed + 1000 * i)
        if not _verify_batch(sess, in_name, out_names, model, x, batch, per_output, errors, rtol, atol):
            passed = False
    return _summary(per_output, batch_sizes, rtol, atol, passed, errors)


def _verify_batch(
    sess: Any,
    in_name: str,
    out_names: list[str],
    model: nn.Module,
    x: torch.Tensor,
    batch: int,
    per_output: _Stats,
    errors: list[str],
    rtol: float,
    atol: float,
) -> bool:
    """Run one batch in both and fold it into ``per_output`` and ``errors``; False when it fails."""
    with torch.no_grad():
        refs = [t.detach().cpu().numpy() for t in _flatten_outputs(model(x))]
    try:
        outs = sess.run(None, {in_name: x.numpy()})
    except Exception as exc:  # a run failure is a verification failure
        errors.append(f"batch {batch}: onnxruntime failed: {one_line(exc, typed=True)}")
        for stats in per_output.values():
            stats["max_abs_diff"] = stats["max_rel_diff"] = None
        return False
    if len(outs) != len(refs):
        errors.append(f"batch {batch}: ONNX has {len(outs)} outputs, PyTorch {len(refs)}")
        return False
    passed = True
    for name, got, ref in zip(out_names, outs, refs, strict=True):
        if not _compare_output(name, got, ref, per_output[name], batch, errors, rtol, atol):
            passed = False
    return passed


def _compare_output(
    name: str,
    got: np.ndarray,
    ref: np.ndarray,
    stats: dict[str, float | None],
    batch: int,
    errors: list[str],
    rtol: float,
    atol: float,
) -> bool:
    """Fold one output of one batch into its ``stats`` (errors appended); False when it fails the tolerance."""
    if got.shape != ref.shape:
        errors.append(f"batch {batch}: output {name} shape {got.shape} != PyTorch {ref.shape}")
        stats["max_abs_diff"] = stats["max_rel_diff"] = None
        return False
    got64, ref64 = got.astype(np.float64), ref.astype(np.float64)
    diff = np.abs(got64 - ref64)
    abs_d = float(diff.max()) if diff.size else 0.0
    rel_d = float((diff / (np.abs(ref64) + _REL_EPS)).max()) if diff.size else 0.0
    # Scale-aware: float32 rounding through a deep net is relative to the output's range, so an element
    # near zero in a logit vector spanning +-8 must not fail where a wrong channel (diff ~ range) does.
    scale = float(np.abs(ref64).max()) if ref64.size else 0.0
    passed = True
    if not abs_d <= atol + rtol * scale:
        passed = False
    if not (np.isfinite(abs_d) and np.isfinite(rel_d)):
        errors.append(f"batch {batch}: output {name} has non-finite values or differences")
        stats["max_abs_diff"] = stats["max_rel_diff"] = None
        return passed
    for key, val in (("max_abs_diff", abs_d), ("max_rel_diff", rel_d)):
        if stats[key] is not None:
            stats[key] = max(stats[key], val)
    return passed


def _summary(
    per_output: _Stats, batch_sizes: list[int], rtol: float, atol: float, passed: bool, errors: list[str]
) -> dict:
    """The result of :func:`verify`: per-output and overall maxima (None when any is unknown)."""
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


def _verify_batch_sizes(dynamic: bool, verify_batches: Sequence[int]) -> tuple[int, ...]:
    """The batch sizes to verify: those requested, or batch 1 alone when the batch dimension is static."""
    batches = tuple(sorted({int(b) for b in verify_batches}))
    if not dynamic:
        if batches != (1,):
            log.info("batch dimension is static: verifying batch 1 only (requested %s)", batches)
        batches = (1,)
    return batches


def _verify_export(
    proto: onnx.ModelProto,
    model: nn.Module,
    shape: tuple[int, ...],
    workdir: Path | None,
    *,
    batches: tuple[int, ...],
    verify_batches: Sequence[int],
    dynamic: bool,
    rtol: float,
    atol: float,
    precision: str,
) -> dict:
    """:func:`verify` the model to be written (through a file in ``workdir``), noted and logged for export."""
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
    return verification
