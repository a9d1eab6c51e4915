"""INT8 with ONNX Runtime static quantization: QDQ format, per-channel weights, calibrated on real images.

Pipeline of :func:`quantize_onnx`::

    fp32 ONNX -> quant_pre_process (symbolic shape inference, graph optimization; skipped with a note if it
    fails) -> quantize_static (QDQ, uint8 or int8 activations, int8 weights, calibration reader over the batches,
    chosen nodes kept in float32) -> onnx.checker -> [accuracy on real data] -> metadata -> atomic write

QDQ is ONNX Runtime's recommended format. Activations default to uint8 (U8S8): x86 CPUs multiply u8 x s8
natively (VPMADDUBSW on AVX2, VPDPBUSD with VNNI), and S8S8 measured 1.8x slower on an AVX2 CPU (pruned
ResNet-50, batch 1: 3.0x dense fp32 with uint8, 1.65x with int8); ``reduce_range`` (7-bit weights) is ONNX
Runtime's remedy for the u8 x s8 saturation of AVX2 CPUs without VNNI, on by default (a tiny model lost 20 pt
of top-1 at full range on AVX2, none with it; the demo's model kept its accuracy either way). Per-channel
weight scales keep pruned convs, whose surviving filters differ widely in range, accurate. The batch
dimension stays as the fp32 file has it (dynamic stays dynamic).
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from compressor.config import ACTIVATION_TYPES, CALIB_METHODS
from compressor.config import DEFAULT_QUANTIZE as _Q
from compressor.errors import BadInput, one_line
from exporters.check import _check
from exporters.files import _write, load_model
from exporters.metadata import _set_metadata, accuracy_props
from exporters.proto import _input_batch_is_symbolic

log = logging.getLogger("compress.quantize")

CALIBRATE = dict(zip(CALIB_METHODS, ("MinMax", "Entropy", "Percentile"), strict=True))  # ORT's names
_HEAD_OPS = ("Gemm", "MatMul", "Conv")


def quantize_onnx(src: str | os.PathLike[str], out: str | os.PathLike[str], calibration: Iterable[np.ndarray], *,
                  calib_method: str = _Q.calib_method, per_channel: bool = _Q.per_channel,
                  activations: str = _Q.activations, reduce_range: bool = _Q.reduce_range,
                  preprocess: bool = _Q.preprocess, keep_stem: bool = _Q.keep_stem, keep_head: bool = _Q.keep_head,
                  keep_fp32: Iterable[str] = (),
                  metadata: dict[str, str] | None = None,
                  evaluate: Callable[[Any], dict] | None = None) -> dict[str, Any]:  # fmt: skip
    """Quantize the fp32 ONNX file ``src`` to INT8 at ``out``; see the module docstring.

    ``calibration``: float32 input batches (N, C, H, W). ``evaluate(path)`` measures the INT8 file before it
    is written (e.g. :func:`exporters.accuracy.onnx_accuracy`); its result goes into the metadata.
    """
    src, out = Path(src), Path(out)
    source = load_model(src)
    props = {p.key: p.value for p in source.metadata_props}
    if props.get("precision", "fp32") != "fp32":
        raise BadInput(f"{src} is {props['precision']}: quantize the fp32 export (compress export without --fp16)")
    if activations not in ACTIVATION_TYPES:
        raise BadInput(f"unknown activation type {activations!r}; choose {' or '.join(ACTIVATION_TYPES)}")
    if calib_method not in CALIBRATE:
        raise BadInput(f"unknown calibration method {calib_method!r}; choose one of {', '.join(CALIBRATE)}")
    with tempfile.TemporaryDirectory(prefix="compress-quantize-") as tmp:
        work = Path(tmp)
        model_in, pre_error = _preprocessed(src, work) if preprocess else (src, None)
        excluded = _excluded(onnx.load(os.fspath(model_in), load_external_data=False), keep_stem, keep_head,
                             list(keep_fp32))  # fmt: skip
        q_path = work / "int8.onnx"
        n_calib = _quantize(
            model_in, q_path, calibration, calib_method, per_channel, excluded, activations, reduce_range
        )
        _check(q_path)
        proto = onnx.load(os.fspath(q_path))
        accuracy = evaluate(q_path) if evaluate is not None else None
    info = {"precision": "int8", "quantization": f"onnxruntime static, QDQ, {activations} activations, int8 weights"
            + (" (7-bit range)" if reduce_range else ""), "calib_method": calib_method,
            "per_channel": str(per_channel).lower(),
            "fp32_nodes": ",".join(excluded), "quantized_from": src.name,
            "calib_images": str(n_calib)}  # fmt: skip
    del proto.metadata_props[:]  # quantize_static copies the fp32 file's, whose verification is not this file's
    _set_metadata(proto, {**(metadata or {}), **info, **(accuracy_props(accuracy) if accuracy else {})})
    files = _write(proto, out, external=False)
    return {
        "path": str(out),
        "source": str(src),
        "precision": "int8",
        "calib_method": calib_method,
        "calib_images": n_calib,
        "per_channel": per_channel,
        "activations": activations,
        "reduce_range": reduce_range,
        "preprocessed": preprocess and pre_error is None,
        "preprocess_error": pre_error,
        "fp32_nodes": excluded,
        "dynamic_batch": _input_batch_is_symbolic(proto),
        "nodes": len(proto.graph.node),
        "qdq_nodes": sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in proto.graph.node),
        "size_bytes": files[0].stat().st_size,
        "source_bytes": src.stat().st_size,
        "accuracy": accuracy,
    }


def _preprocessed(src: Path, work: Path) -> tuple[Path, str | None]:
    """``quant_pre_process`` into ``work``; the source itself (and why) when it fails."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = work / "pre.onnx"
    try:
        quant_pre_process(os.fspath(src), os.fspath(pre))
        return pre, None
    except Exception as exc:  # a model it cannot handle still quantizes without it
        reason = one_line(exc, 200, typed=True)
        log.warning("quant_pre_process failed (%s): quantizing the file as it is", reason)
        return src, reason


def _excluded(proto: onnx.ModelProto, keep_stem: bool, keep_head: bool, patterns: list[str]) -> list[str]:
    """Names of the nodes kept in float32: the first conv, the classifier, and the nodes ``patterns`` match."""
    nodes = list(proto.graph.node)
    names: list[str] = []
    if keep_stem:
        names += [n.name for n in nodes if n.op_type == "Conv"][:1]
    if keep_head:
        names += [n.name for n in nodes if n.op_type in _HEAD_OPS][-1:]
    for pattern in patterns:
        hit = [n.name for n in nodes if fnmatch.fnmatchcase(n.name, pattern)]
        if not hit:
            sample = ", ".join(n.name for n in nodes if n.op_type in _HEAD_OPS)[:200]
            raise BadInput(f"--keep-fp32 {pattern!r} matches no node (conv/linear nodes: {sample})")
        names += hit
    return list(dict.fromkeys(names))


class _Reader:
    """ONNX Runtime's CalibrationDataReader over float32 batches, sliced to a static batch dimension."""

    def __init__(self, name: str, batches: Iterable[np.ndarray], fixed: int | None) -> None:
        self.name, self._it, self.images = name, self._slices(batches, fixed), 0

    @staticmethod
    def _slices(batches: Iterable[np.ndarray], fixed: int | None) -> Iterator[np.ndarray]:
        """Equal-size slices: the model's static batch, else the first batch's size (a smaller last batch is
        dropped: the histogram calibrators stack every batch's outputs into one array)."""
        step = fixed
        for x in batches:
            x = np.ascontiguousarray(x, dtype=np.float32)
            step = step or len(x)
            yield from (x[i : i + step] for i in range(0, len(x) - step + 1, step))

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._it, None)
        if x is None:
            return None
        self.images += len(x)
        return {self.name: x}

    def rewind(self) -> None:  # the interface has it; one pass is all static quantization reads
        pass


def _quantize(model_in: Path, q_path: Path, calibration: Iterable[np.ndarray], calib_method: str,
              per_channel: bool, excluded: list[str], activations: str, reduce_range: bool) -> int:  # fmt: skip
    """Run ``quantize_static``; the number of calibration images it read."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    proto = onnx.load(os.fspath(model_in), load_external_data=False)
    inp = proto.graph.input[0]
    dim = inp.type.tensor_type.shape.dim[0] if inp.type.tensor_type.shape.dim else None
    fixed = dim.dim_value if dim is not None and dim.HasField("dim_value") else None
    reader = _Reader(inp.name, calibration, fixed)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # its calibrators print progress: keep stdout for --json
            quantize_static(os.fspath(model_in), os.fspath(q_path), reader, quant_format=QuantFormat.QDQ,
                            per_channel=per_channel, reduce_range=reduce_range,
                            activation_type=QuantType.QUInt8 if activations == "uint8" else QuantType.QInt8,
                            weight_type=QuantType.QInt8, nodes_to_exclude=excluded or None,
                            calibrate_method=getattr(CalibrationMethod, CALIBRATE[calib_method]))  # fmt: skip
    except BadInput:
        raise
    except Exception as exc:
        raise BadInput(f"ONNX Runtime static quantization failed: {one_line(exc, typed=True)}") from exc
    if reader.images == 0:
        raise BadInput("no calibration images: the calibration split is empty")
    return reader.images
