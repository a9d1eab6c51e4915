"""The eval job behind ``compress eval``: a file's top-1/top-5 and loss on a test split (ONNX Runtime or PyTorch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compressor.config import EvalOptions, defaults
from compressor.errors import BadInput
from compressor.jobs.accuracy import gate_failures, load_split_data, resolve_data, source_run


def model_file(model: str | Path) -> Path:
    """The file ``compress eval`` measures: the path given, or a run directory's pruned.onnx (else pruned.pt)."""
    path = Path(model)
    if path.is_dir():
        for name in ("pruned.onnx", "pruned.pt"):
            if (path / name).is_file():
                return path / name
        raise BadInput(f"{path} has neither pruned.onnx nor pruned.pt")
    if not path.is_file():
        raise BadInput(f"{path}: no such file or run directory")
    if path.suffix not in (".onnx", ".pt", ".pth"):
        raise BadInput(f"{path}: expected an .onnx file, a pruned-model .pt or a run directory")
    return path


def evaluate_model(model: str | Path, *, trust_code: bool = False, **options: Any) -> dict[str, Any]:
    """Measure ``model`` (see :func:`model_file`) on the test split of its run (or ``data``); see EvalOptions."""
    unknown = sorted(set(options) - set(defaults(EvalOptions)))
    if unknown:
        raise BadInput(f"unknown eval option(s): {', '.join(unknown)}")
    o = EvalOptions(**options)
    path = model_file(model)
    onnx_file = path.suffix == ".onnx"
    meta = _metadata(path) if onnx_file else {}
    run_dir = source_run(path, meta)
    bundle = load_split_data(resolve_data(run_dir, meta, o.data, data_dir=o.data_dir, test_subset=o.test_subset),
                             batch_size=o.batch_size)  # fmt: skip
    if onnx_file:
        from exporters.accuracy import onnx_accuracy

        scores = onnx_accuracy(path, bundle.test, provider=o.provider, threads=o.threads,
                               num_classes=bundle.num_classes)  # fmt: skip
        runtime = f"onnxruntime ({o.provider})"
    else:
        scores, runtime = _torch_accuracy(path, bundle, trust_code), "pytorch (cpu)"
    result = {"model": str(path), "runtime": runtime, "data": bundle.spec or o.data, "split": "test",
              "precision": meta.get("precision", "fp32"), **scores}  # fmt: skip
    result["accuracy_gates"] = gate_failures(path.name, scores["acc"], None, o.min_accuracy, None)
    return result


def _metadata(path: Path) -> dict[str, str]:
    from exporters.metadata import read_metadata

    return read_metadata(path)


def _torch_accuracy(path: Path, bundle: Any, trust_code: bool) -> dict[str, Any]:
    import torch

    from compressor.artifacts import load_pruned
    from compressor.train import evaluate

    model, payload = load_pruned(path, trust_code=trust_code)
    if tuple(payload["input_shape"]) != tuple(bundle.input_shape):
        raise BadInput(f"{path} takes inputs {tuple(payload['input_shape'])}, the data gives "
                       f"{tuple(bundle.input_shape)}")  # fmt: skip
    with torch.no_grad():
        columns = model.eval()(torch.zeros(1, *bundle.input_shape)).shape[-1]
    if columns != bundle.num_classes:
        raise BadInput(f"{path} outputs {columns} classes, the data has {bundle.num_classes}: is it the right data?")
    return evaluate(model, bundle.test, torch.device("cpu"))
