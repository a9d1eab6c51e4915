"""The quantize job behind ``compress quantize``: an exported fp32 file to a calibrated, measured INT8 file."""

from __future__ import annotations

from itertools import islice
from pathlib import Path
from typing import Any

from compressor.config import QuantizeOptions, defaults
from compressor.errors import BadInput
from compressor.jobs.accuracy import gated_and_recorded, load_split_data, resolve_data, source_run
from compressor.jobs.export import EVAL_BATCH
from compressor.runtime import lock
from compressor.runtime.atomic import check_output_file

#: Keys of the fp32 file's metadata that do not describe the INT8 file (its verification and accuracy).
_STALE = ("verified", "max_abs_diff", "verify_", "accuracy_", "precision")


def quantize_target(source: str | Path, out: str | Path | None) -> tuple[Path, Path]:
    """``(fp32 file, INT8 file)``: a run directory means its ``pruned.onnx`` and ``pruned.int8.onnx``."""
    src = Path(source)
    if src.is_dir():
        if not (src / "pruned.onnx").is_file():
            raise BadInput(f"{src} has no pruned.onnx: run compress export {src} first")
        src = src / "pruned.onnx"
    elif not src.is_file():
        raise BadInput(f"{src}: no such file or run directory")
    return src, Path(out) if out else src.with_name(f"{src.stem}.int8.onnx")


def quantize(source: str | Path, out: str | Path | None = None, *, data: str | None = None,
             data_dir: str | None = None, **options: Any) -> dict[str, Any]:  # fmt: skip
    """Quantize a run's (or any) fp32 ONNX file to INT8 (see ``exporters.quantize``), calibrated on the run's
    training split and measured on its test split; the result's ``accuracy_gates`` lists failed gates."""
    unknown = sorted(set(options) - set(defaults(QuantizeOptions)))
    if unknown:
        raise BadInput(f"unknown quantize option(s): {', '.join(unknown)}")
    o = QuantizeOptions(**options)
    src, dst = quantize_target(source, out)
    if dst.resolve() == src.resolve():
        raise BadInput(f"--out {dst} is the file being quantized")
    check_output_file(dst, "--out" if out else "output")
    with lock.output_file(dst, "--out" if out else "output"):  # one process writes a file at a time
        return _quantize(src, dst, o, data, data_dir)


def _quantize(src: Path, dst: Path, o: QuantizeOptions, data: str | None, data_dir: str | None) -> dict[str, Any]:
    from exporters.metadata import read_metadata

    meta = read_metadata(src)
    run_dir = source_run(src, meta)
    with lock.run_directory_if_writable(run_dir):  # its report.json records the INT8 file
        return _quantize_run(src, dst, o, data, data_dir, meta, run_dir)


def _quantize_run(src: Path, dst: Path, o: QuantizeOptions, data: str | None, data_dir: str | None,
                  meta: dict[str, str], run_dir: Path | None) -> dict[str, Any]:  # fmt: skip
    from exporters.accuracy import onnx_accuracy
    from exporters.quantize import quantize_onnx

    bundle = load_split_data(resolve_data(run_dir, meta, data, data_dir=data_dir), batch_size=o.calib_batch_size,
                             eval_batch_size=EVAL_BATCH)  # fmt: skip
    bundle.train.set_epoch(0)
    calibration = (x.numpy() for x, _ in islice(iter(bundle.train), o.calib_batches))

    def evaluate(model: Any) -> dict[str, Any]:
        return {**onnx_accuracy(model, bundle.test, num_classes=bundle.num_classes), "split": "test"}

    kept = {k: v for k, v in meta.items() if not k.startswith(_STALE)}
    result = quantize_onnx(src, dst, calibration, calib_method=o.calib_method, per_channel=o.per_channel,
                           activations=o.activations, reduce_range=o.reduce_range, preprocess=o.preprocess,
                           keep_stem=o.keep_stem, keep_head=o.keep_head,
                           keep_fp32=o.keep_fp32, metadata=kept,
                           evaluate=evaluate if o.accuracy else None)  # fmt: skip
    return gated_and_recorded(result, run_dir, dst, f"{dst.name} (int8)", o)
