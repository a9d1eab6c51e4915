"""``python -m benchmarks.suites.deploy``: the four files of a model timed in one run, and the accuracy of a
recipe's dense, pruned and INT8 files through ONNX Runtime, in one results file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from benchmarks.suites import deploy

RECIPE = {
    "prune": {"model": "cifar:resnet20", "data": "synthetic:1x16x16:4:256:96", "pretrain_epochs": 2,
              "pretrain_lr": 0.05, "method": "l1", "target_flops": 0.4, "epochs": 1, "batch_size": 32,
              "device": "cpu", "seed": 0, "out": "unused"},
    "export": {"opset": 17},
    "quantize": {"calib_batches": 2},
    "bench": {"provider": "cpu", "batch": 1, "threads": 1, "warmup": 2, "iters": 5},
}  # fmt: skip


@pytest.mark.slow
def test_latency_and_file_accuracy_in_one_results_file(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    deploy.main(["--models", "cifar:resnet20", "--batch", "1", "--threads", "1", "--warmup", "1", "--iters", "3",
                 "--recipe", str(recipe), "--results", str(tmp_path), "--out", "d"])  # fmt: skip
    doc = json.loads((tmp_path / "d.json").read_text())
    assert {r["variant"] for r in doc["rows"]} == {"pruned", "dense-int8", "pruned-int8"}
    assert all(r["model"] == "cifar:resnet20" and r["batch"] == 1 and r["speedup"] > 0 for r in doc["rows"])
    assert abs(doc["models"]["cifar:resnet20"]["info"]["flops_drop"] - 0.5) < 0.02
    a = doc["accuracy"]
    assert a["pruned_onnx_acc"] > 0.5 and a["int8_acc"] > 0.5  # learnable data: well above chance (0.25)
    assert a["int8_minus_pruned_pt"] == round(100 * (a["int8_acc"] - a["pruned_onnx_acc"]), 2)
    assert a["int8_within_tolerance"] == (abs(a["int8_minus_pruned_pt"]) <= deploy.INT8_TOLERANCE_PT)
    assert doc["cpu_kind"] in ("AVX-512", "AVX2, no AVX-512", "no AVX2")
    md = (tmp_path / "d.md").read_text()
    assert "pruned INT8" in md and "| cifar:resnet20 | " in md
