"""The export job behind ``compress export``: a run's model to a verified ONNX file with the run's figures."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from compressor.artifacts import load_pruned
from compressor.config import ExportOptions, defaults
from compressor.errors import BadInput, one_line
from compressor.jobs.accuracy import (
    data_options,
    gated_and_recorded,
    load_split_data,
    preprocessing,
    read_class_names,
    run_config,
)
from compressor.models import categories
from compressor.runtime import lock

_log = logging.getLogger("compress.export")
EVAL_BATCH = 256  # images per ONNX Runtime call when measuring a file's accuracy


def export(run_dir: str | Path, out: str | Path | None = None, *, dense: bool = False, trust_code: bool = False,
           **options: Any) -> dict[str, Any]:  # fmt: skip
    """Export a run's pruned (or dense) model to ONNX, verified against PyTorch (see ``exporters.onnx``), and
    measure the file's accuracy on the run's test split (``accuracy``, recorded in ``report.json``).

    ``options``: the fields of :class:`~compressor.config.ExportOptions` (``rtol``/``atol`` None: the
    exporter's default for the precision, fp32 1e-3/1e-4, fp16 2e-2/5e-2). The result's ``accuracy_gates``
    lists the failed accuracy gates (the caller raises after printing).
    """
    from exporters.onnx import check_options

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
    option = "--out" if out else "output"
    out = Path(out) if out else run_dir / f"{name}.onnx"
    # one process writes a run directory (its report.json records the file) and a file at a time
    with lock.run_directory_if_writable(run_dir), lock.output_file(out, option):
        return _export(run_dir, out, name, o, trust_code)


def _export(run_dir: Path, out: Path, name: str, o: ExportOptions, trust_code: bool) -> dict[str, Any]:
    from exporters.onnx import export_onnx

    model, payload = load_pruned(run_dir / f"{name}.pt", trust_code=trust_code)
    meta = {"source_run": str(run_dir), "model_spec": payload["spec"]["model"], "variant": name}
    summary = payload.get("report") or {}
    meta.update({k: str(v) for k, v in summary.items()})
    meta.update(_report_figures(run_dir, name))
    cfg = run_config(run_dir) if (run_dir / "config.yaml").is_file() else None
    if o.accuracy and cfg is None:
        _log.warning("%s has no config.yaml (not made by compress prune): the file's accuracy is not measured; "
                     "compress eval FILE --data SPEC measures it", run_dir)  # fmt: skip
    evaluate, bundle = _accuracy_on_test(cfg) if o.accuracy and cfg is not None else (None, None)
    meta.update(
        deployment_metadata(
            run_dir,
            cfg,
            bundle,
            o.class_names,
            categories(payload["spec"]["model"], int(payload["spec"]["num_classes"])),
        )
    )
    result = export_onnx(model.eval(), tuple(payload["input_shape"]), out, opset=o.opset,
                         dynamic_batch=o.dynamic_batch, simplify=o.simplify, metadata=meta, rtol=o.rtol,
                         atol=o.atol, exporter=o.exporter, fp16=o.fp16, external_data=o.external_data,
                         evaluate=evaluate)  # fmt: skip
    return gated_and_recorded(result, run_dir, out, f"{out.name} ({result['precision']})", o)


def _accuracy_on_test(cfg: dict[str, Any]) -> tuple[Any, Any]:
    """``(evaluate, bundle)``: ONNX Runtime CPU over the run's test split (rebuilt from its config.yaml)."""
    from exporters.accuracy import onnx_accuracy

    bundle = load_split_data(data_options(cfg), batch_size=EVAL_BATCH)

    def evaluate(model: Any) -> dict[str, Any]:
        return {**onnx_accuracy(model, bundle.test), "split": "test", "data": cfg["data"]}

    return evaluate, bundle


def deployment_metadata(run_dir: Path, cfg: dict[str, Any] | None, bundle: Any, class_names: str | None,
                        pretrained: list[str] | None = None) -> dict[str, str]:  # fmt: skip
    """Preprocessing and class names for the file: from the loaded data, else from the run's report.json.

    Class names: ``--class-names FILE``, else the pretrained weights' categories when the model kept their
    classifier, else the dataset's."""
    pre = preprocessing(bundle) if bundle is not None else _reported_preprocessing(run_dir)
    if pre is None:
        return {}
    if class_names:
        pre["classes"] = read_class_names(class_names, len(pre["classes"]))
    elif pretrained:
        pre["classes"] = pretrained
    data = data_options(cfg) if cfg is not None else {}
    data.pop("data_dir", None)  # a path on the training machine
    return {"input_layout": pre["layout"], "input_channel_order": pre["channel_order"],
            "input_pixel_scale": pre["pixel_scale"], "norm_mean": json.dumps(pre["mean"]),
            "norm_std": json.dumps(pre["std"]), "class_names": json.dumps(pre["classes"]),
            **({"data": data.pop("data"), "data_options": json.dumps(data)} if data else {})}  # fmt: skip


def _reported_preprocessing(run_dir: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads((run_dir / "report.json").read_text())["data"]["preprocess"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


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
        _log.warning("%s: no report figures in the ONNX metadata (%s)", path,
                                                     one_line(exc, typed=True))  # fmt: skip
        return {}
    return {k: _meta_text(v) for k, v in figures.items()}


def _meta_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return str(value)
