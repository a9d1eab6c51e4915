"""Prune -> materialize -> export -> verify, end to end through the CLI, on 8 torchvision architectures and
6 user-style models (SE gate, concat, depthwise-separable, a module used twice, non-tensor forward
arguments, a small ViT). Tiny synthetic data; one-step pruning (``--epochs 0``) with each of our methods."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from compressor.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")
USER = str(Path(__file__).resolve().parents[1] / "user_models.py")
TV = "3x64x64"
CASES = [
    ("torchvision:resnet18", TV, "l2", 0.5),
    ("torchvision:mobilenet_v3_small", TV, "psap", 0.5),
    ("torchvision:efficientnet_b0", TV, "aster", 0.5),
    ("torchvision:googlenet", TV, "l2", 0.5),  # concat
    ("torchvision:densenet121", TV, "psap", 0.5),  # dense concat
    ("torchvision:shufflenet_v2_x0_5", TV, "aster", 0.5),  # channel shuffle: beyond Torch-Pruning
    ("torchvision:squeezenet1_1", TV, "l2", 0.5),  # conv classifier, no BN
    ("torchvision:regnet_x_400mf", TV, "l2", 0.5),  # grouped convs
    (f"{USER}:se_net", "3x32x32", "l2", 0.3),
    (f"{USER}:concat_net", "3x32x32", "psap", 0.3),
    (f"{USER}:depthwise_separable", "3x32x32", "aster", 0.3),
    (f"{USER}:shared_twice", "3x32x32", "l2", 0.3),
    (f"{USER}:with_options", "3x32x32", "psap", 0.3),
    (f"{USER}:tiny_vit", "3x32x32", "l2", 0.3),  # attention heads, static hidden_dim
]


def _invoke(args: list[str]) -> str:
    result = CliRunner().invoke(main, args, catch_exceptions=True)
    assert result.exit_code == 0, f"{args}\n{result.output}\n{result.exception!r}"
    return result.stdout


@pytest.mark.slow
@pytest.mark.parametrize(("spec", "shape", "method", "target"), CASES, ids=[c[0].split(":")[-1] for c in CASES])
def test_prune_materialize_export_verify(tmp_path: Path, spec: str, shape: str, method: str, target: float) -> None:
    run = tmp_path / "run"
    args = ["prune", "--model", spec, "--data", f"synthetic:{shape}:10:16:16", "--method", method,
            "--target-flops", str(target), "--epochs", "0", "--batch-size", "8", "--device", "cpu", "--quiet",
            "--out", str(run)]  # fmt: skip
    if spec.startswith(USER):
        args.append("--trust-code")
    _invoke(args)
    report = json.loads((run / "report.json").read_text())
    assert report["target"]["met"] and report["flops_drop"] >= target - 0.01, report["flops_drop"]
    assert abs(report["analytic_flops_drop"] - report["flops_drop"]) < 0.01  # the budget predicts the counter
    assert report["pruned"]["params"] < report["dense"]["params"]

    out = json.loads(_invoke(["export", str(run), "--json", *(["--trust-code"] if spec.startswith(USER) else [])]))
    v = out["verification"]
    assert v["passed"] and v["batch_sizes"] == [1, 4], v
    assert out["dynamic_batch"] is True
    model = onnx.load(out["path"])
    onnx.checker.check_model(model, full_check=True)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch after onnxslim
