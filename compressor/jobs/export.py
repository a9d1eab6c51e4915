"""The export job behind ``compress export``: a run's model to a verified ONNX file with the run's figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from compressor.artifacts import load_pruned
from compressor.config import ExportOptions, defaults
from compressor.errors import BadInput, one_line


def export(run_dir: str | Path, out: str | Path | None = None, *, dense: bool = False, trust_code: bool = False,
           **options: Any) -> dict[str, Any]:  # fmt: skip
    """Export a run's pruned (or dense) model to ONNX, verified against PyTorch (see ``exporters.onnx``).

    ``options``: the fields of :class:`~compressor.config.ExportOptions` (``rtol``/``atol`` None: the
    exporter's default for the precision, fp32 1e-3/1e-4, fp16 2e-2/5e-2).
    """
    from exporters.onnx import check_options, export_onnx

    unknown = sorted(set(options) - set(defaults(ExportOptions)))
    if unknown:
        raise BadInput(f"unknown export option(s): {', '.join(unknown)}")
    o = ExportOptions(**options)
    check_options(opset=o.opset, exporter=o.exporter, fp16=o.fp16, rtol=o.rtol, atol=o.atol,
                  external_data=o.external_data)  # fmt: skip
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise BadInput(f"run directory {run_dir} does not exist")
    name = "dense" if dense else "pruned"
    model, payload = load_pruned(run_dir / f"{name}.pt", trust_code=trust_code)
    out = Path(out) if out else run_dir / f"{name}.onnx"
    meta = {"source_run": str(run_dir), "model_spec": payload["spec"]["model"], "variant": name}
    summary = payload.get("report") or {}
    meta.update({k: str(v) for k, v in summary.items()})
    meta.update(_report_figures(run_dir, name))
    result = export_onnx(model.eval(), tuple(payload["input_shape"]), out, opset=o.opset,
                         dynamic_batch=o.dynamic_batch, simplify=o.simplify, metadata=meta, rtol=o.rtol,
                         atol=o.atol, exporter=o.exporter, fp16=o.fp16, external_data=o.external_data)  # fmt: skip
    return result


def _report_figures(run_dir: Path, variant: str) -> dict[str, str]:
    """The report's key figures for the ONNX metadata: target and FLOPs/params (the dense model: its own only).

    Read from ``report.json`` when the run has one (``pruned.pt`` keeps a short summary only).
    """
    path = run_dir / "report.json"
    if not path.is_file():
        return {}
    try:
        report = json.loads(path.read_text())
        figures = {"dense_flops": report["dense"]["flops"], "dense_params": report["dense"]["params"]}
        if variant == "dense":
            figures["dense_acc"] = report["dense"]["acc"]
        else:
            target, pruned = report["target"], report["pruned"]
            figures.update({"target_metric": target["metric"], "target_value": target["value"],
                            "target_achieved": target["achieved"], "target_met": target["met"],
                            "pruned_flops": pruned["flops"], "pruned_params": pruned["params"]})  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError) as exc:
        import logging

        logging.getLogger("compress.export").warning("%s: no report figures in the ONNX metadata (%s)", path,
                                                     one_line(exc, typed=True))  # fmt: skip
        return {}
    return {k: _meta_text(v) for k, v in figures.items()}


def _meta_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return str(value)
