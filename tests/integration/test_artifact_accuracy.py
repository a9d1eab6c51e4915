"""The artifact's accuracy: eval, export's ONNX accuracy, INT8 quantize, the accuracy gates, deployment metadata.

Everything runs for real: a pruned run on a learnable synthetic dataset, ONNX Runtime CPU, ONNX Runtime's
static quantization.
"""

from __future__ import annotations

import json
import shutil
import traceback
from pathlib import Path
from typing import Any

import onnx
import pytest
import torch
import yaml
from click.testing import CliRunner

from compressor.cli import main
from compressor.train import Tally
from exporters.metadata import read_metadata

DATA = "synthetic:1x16x16:4:256:96"  # learnable: a short run is well above chance
PRUNE = ["prune", "--model", "cifar:resnet20", "--data", DATA, "--method", "l1", "--target-flops", "0.4",
         "--pretrain-epochs", "2", "--pretrain-lr", "0.05", "--epochs", "1", "--batch-size", "32",
         "--device", "cpu", "--quiet", "--seed", "0"]  # fmt: skip


def _invoke(args: list[str], code: int = 0) -> Any:
    result = CliRunner().invoke(main, args, catch_exceptions=True)
    tb = "".join(traceback.format_exception(*result.exc_info)) if result.exc_info else ""
    assert result.exit_code == code, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}\n{tb}"
    return result


def _one_line_error(result: Any, *needles: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("acc") / "run"
    _invoke([*PRUNE, "--out", str(out)])
    return out


@pytest.fixture(scope="module")
def exported(run: Path) -> dict[str, Any]:
    return json.loads(_invoke(["export", str(run), "--json"]).stdout)


@pytest.fixture(scope="module")
def int8(run: Path, exported: dict[str, Any]) -> dict[str, Any]:
    return json.loads(_invoke(["quantize", str(run), "--json"]).stdout)


def test_tally_top1_top5_and_loss() -> None:
    logits = torch.tensor([[5.0, 1, 0, 0, 0, 0, -1], [0, 5.0, 4, 3, 2, 1, 0], [0, 1, 2, 3, 4, 5, 6.0]])
    tally = Tally()
    tally.add(logits, torch.tensor([0, 2, 0]))  # right; second-best; last of seven
    got = tally.result()
    assert (got["n"], got["acc"], got["top5"]) == (3, pytest.approx(1 / 3), pytest.approx(2 / 3))
    assert got["loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, torch.tensor([0, 2, 0]))))
    few = Tally()
    few.add(torch.tensor([[0.0, 1.0]]), torch.tensor([0]))  # two classes: top-5 is top-2
    assert few.result()["top5"] == 1.0


def test_export_measures_the_onnx_file_on_the_runs_test_split(run: Path, exported: dict[str, Any]) -> None:
    report = json.loads((run / "report.json").read_text())
    acc = exported["accuracy"]
    assert acc["n"] == 96 and acc["split"] == "test" and acc["data"] == DATA
    assert acc["acc"] > 0.5, "the synthetic task is learnable: well above chance (0.25)"
    assert abs(acc["acc"] - report["pruned"]["acc"]) <= 1 / 96  # fp32 ONNX equals PyTorch up to an argmax tie
    assert report["exports"]["pruned.onnx"]["accuracy"]["acc"] == acc["acc"]
    meta = read_metadata(run / "pruned.onnx")
    assert float(meta["accuracy_top1"]) == acc["acc"] and meta["accuracy_n"] == "96"
    assert meta["input_layout"] == "NCHW" and meta["input_channel_order"] == "gray"
    assert json.loads(meta["class_names"]) == ["0", "1", "2", "3"]
    assert len(json.loads(meta["norm_mean"])) == len(json.loads(meta["norm_std"])) == 1
    assert meta["data"] == DATA


def test_eval_agrees_across_onnx_pt_and_run_dir_and_without_the_run(run: Path, exported: dict[str, Any],
                                                                  tmp_path: Path) -> None:  # fmt: skip
    onnx_res = json.loads(_invoke(["eval", str(run / "pruned.onnx"), "--json"]).stdout)
    pt_res = json.loads(_invoke(["eval", str(run / "pruned.pt"), "--json"]).stdout)
    dir_res = json.loads(_invoke(["eval", str(run), "--json"]).stdout)
    assert onnx_res["acc"] == dir_res["acc"] == exported["accuracy"]["acc"]
    assert abs(onnx_res["acc"] - pt_res["acc"]) <= 1 / 96 and pt_res["runtime"].startswith("pytorch")
    assert onnx_res["loss"] == pytest.approx(pt_res["loss"], rel=1e-4)
    alone = tmp_path / "shipped.onnx"  # away from its run (renamed below): the data spec is in the metadata
    shutil.copy(run / "pruned.onnx", alone)
    moved = run.with_name("moved")
    run.rename(moved)
    try:
        res = json.loads(_invoke(["eval", str(alone), "--json", "--test-subset", "40"]).stdout)
    finally:
        moved.rename(run)
    assert res["n"] == 40 and res["data"] == DATA


def test_eval_bad_input_is_one_line_exit_2(run: Path, exported: dict[str, Any], tmp_path: Path) -> None:
    _one_line_error(_invoke(["eval", str(tmp_path / "nope.onnx")], 2), "no such file")
    (tmp_path / "model.txt").write_text("x")
    _one_line_error(_invoke(["eval", str(tmp_path / "model.txt")], 2), "expected an .onnx file")
    wrong = _invoke(["eval", str(run / "pruned.onnx"), "--data", "synthetic:1x20x20:4:64:32"], 2)
    _one_line_error(wrong, "ONNX Runtime failed on a batch of shape")
    _one_line_error(_invoke(["eval", str(run), "--min-accuracy", "85"], 2), "use 0.85 for 85%")
    onnx.save(onnx.load(run / "pruned.onnx"), tmp_path / "bare.onnx")  # same graph, and its metadata...
    bare = onnx.load(tmp_path / "bare.onnx")
    del bare.metadata_props[:]  # ...now gone: nothing says what data it was trained on
    onnx.save(bare, tmp_path / "bare.onnx")
    _one_line_error(_invoke(["eval", str(tmp_path / "bare.onnx")], 2), "give --data SPEC")


def test_accuracy_gates_exit_1_after_writing_and_name_the_gate(run: Path, exported: dict[str, Any],
                                                              tmp_path: Path) -> None:  # fmt: skip
    out = tmp_path / "gated.onnx"
    failed = _invoke(["export", str(run), "--out", str(out), "--min-accuracy", "1.0"], 1)
    _one_line_error(failed, "--min-accuracy 1", "gated.onnx")
    assert out.is_file() and read_metadata(out)["accuracy_top1"]  # written before the gate failed
    _invoke(["export", str(run), "--out", str(out), "--max-accuracy-drop", "100"])
    _one_line_error(_invoke(["eval", str(run), "--min-accuracy", "1.0"], 1), "--min-accuracy 1")
    gated = tmp_path / "gated-run"
    failed = _invoke([*PRUNE, "--out", str(gated), "--max-accuracy-drop", "0", "--min-accuracy", "0.999"], 1)
    _one_line_error(failed, "--min-accuracy 0.999", "the pruned model (PyTorch)")
    assert (gated / "report.json").is_file() and (gated / "pruned.pt").is_file()


def test_quantize_writes_a_checked_measured_int8_qdq_file(run: Path, exported: dict[str, Any],
                                                         int8: dict[str, Any]) -> None:  # fmt: skip
    path = run / "pruned.int8.onnx"
    assert int8["path"] == str(path) and int8["precision"] == "int8"
    onnx.checker.check_model(str(path), full_check=True)
    proto = onnx.load(path)
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and int8["qdq_nodes"] > 0
    assert int8["dynamic_batch"] and not proto.graph.input[0].type.tensor_type.shape.dim[0].HasField("dim_value")
    assert int8["size_bytes"] < 0.5 * int8["source_bytes"]  # int8 weights: about a quarter of fp32
    train = json.loads((run / "report.json").read_text())["data"]["sizes"]["train"]
    assert int8["calib_images"] == 32 * min(8, train // 32)  # 8 equal batches of 32, or every full one
    fp32_acc, int8_acc = exported["accuracy"]["acc"], int8["accuracy"]["acc"]
    assert abs(int8_acc - fp32_acc) <= 0.15, (fp32_acc, int8_acc)  # a broken quantization falls to chance
    meta = read_metadata(path)
    assert meta["precision"] == "int8" and meta["calib_method"] == "minmax" and meta["per_channel"] == "true"
    assert "verified" not in meta and "max_abs_diff" not in meta  # the fp32 file's verification is not this one's
    assert float(meta["accuracy_top1"]) == int8_acc and meta["class_names"]
    report = json.loads((run / "report.json").read_text())
    assert report["exports"]["pruned.int8.onnx"]["accuracy"]["acc"] == int8_acc
    again = json.loads(_invoke(["eval", str(path), "--json"]).stdout)
    assert again["acc"] == int8_acc and again["precision"] == "int8"


def test_quantize_keeps_chosen_nodes_in_fp32(run: Path, exported: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "kept.onnx"
    res = json.loads(_invoke(["quantize", str(run / "pruned.onnx"), "--out", str(out), "--keep-stem",
                              "--keep-head", "--calib-method", "percentile", "--calib-batches", "2",
                              "--no-accuracy", "--json"]).stdout)  # fmt: skip
    assert len(res["fp32_nodes"]) == 2 and res["accuracy"] is None and res["calib_images"] == 64
    proto = onnx.load(out)
    producers = {o: n for n in proto.graph.node for o in n.output}
    for name in res["fp32_nodes"]:
        node = next(n for n in proto.graph.node if n.name == name)
        weight = node.input[1]  # a kept node reads its float weight directly, not through DequantizeLinear
        assert weight not in producers or producers[weight].op_type != "DequantizeLinear", name


def test_quantize_histogram_calibration_over_an_uneven_split(run: Path, exported: dict[str, Any],
                                                            tmp_path: Path) -> None:  # fmt: skip
    """Every calibration batch of the run's training split (its last one is smaller): the histogram methods stack
    the batches' outputs, so the reader hands them equal slices."""
    train = json.loads((run / "report.json").read_text())["data"]["sizes"]["train"]
    assert train % 32, train  # the case under test: a smaller last batch
    res = json.loads(_invoke(["quantize", str(run / "pruned.onnx"), "--out", str(tmp_path / "p.onnx"),
                              "--calib-method", "percentile", "--calib-batches", "100", "--json"]).stdout)  # fmt: skip
    assert res["calib_images"] == 32 * (train // 32) and res["accuracy"]["acc"] > 0.5


def _activation_types(path: Path) -> set[int]:
    """The element types of the activation zero points (the QuantizeLinear nodes' third inputs)."""
    proto = onnx.load(path)
    inits = {i.name: i.data_type for i in proto.graph.initializer}
    return {inits[n.input[2]] for n in proto.graph.node if n.op_type == "QuantizeLinear" and n.input[2] in inits}


def test_quantize_activation_types(run: Path, exported: dict[str, Any], int8: dict[str, Any], tmp_path: Path) -> None:
    """uint8 activations and 7-bit weights by default (the u8 x s8 kernels x86 CPUs run natively, without the
    saturation of CPUs lacking VNNI), int8 activations and the full range on request; each recorded in the
    result and the file."""
    path = run / "pruned.int8.onnx"
    assert _activation_types(path) == {onnx.TensorProto.UINT8}
    assert int8["activations"] == "uint8" and int8["reduce_range"]
    assert read_metadata(path)["quantization"].endswith("uint8 activations, int8 weights (7-bit range)")
    out = tmp_path / "s8s8.onnx"
    res = json.loads(_invoke(["quantize", str(run / "pruned.onnx"), "--out", str(out), "--activations", "int8",
                              "--full-range", "--calib-batches", "2", "--no-accuracy", "--json"]).stdout)  # fmt: skip
    assert res["activations"] == "int8" and not res["reduce_range"]
    assert _activation_types(out) == {onnx.TensorProto.INT8}
    assert read_metadata(out)["quantization"].endswith("int8 activations, int8 weights")
    _one_line_error(_invoke(["quantize", str(run / "pruned.onnx"), "--out", str(tmp_path / "x.onnx"),
                             "--activations", "int4"], 2), "int4")  # fmt: skip
    assert not (tmp_path / "x.onnx").exists()


def test_quantize_bad_input_is_one_line_exit_2(run: Path, exported: dict[str, Any], tmp_path: Path) -> None:
    _one_line_error(_invoke(["quantize", str(run), "--keep-fp32", "no-such-node*", "--out",
                             str(tmp_path / "q.onnx")], 2), "matches no node")  # fmt: skip
    assert not (tmp_path / "q.onnx").exists()
    fp16 = tmp_path / "fp16.onnx"
    _invoke(["export", str(run), "--fp16", "--no-accuracy", "--out", str(fp16)])
    _one_line_error(_invoke(["quantize", str(fp16)], 2), "is fp16")
    empty = tmp_path / "empty-run"
    empty.mkdir()
    _one_line_error(_invoke(["quantize", str(empty)], 2), "compress export")
    _one_line_error(_invoke(["quantize", str(run), "--calib-method", "magic"], 2), "magic")


def test_export_class_names_file(run: Path, exported: dict[str, Any], tmp_path: Path) -> None:
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\n\nbird\nfish\n")
    out = tmp_path / "named.onnx"
    _invoke(["export", str(run), "--out", str(out), "--class-names", str(names), "--no-accuracy"])
    assert json.loads(read_metadata(out)["class_names"]) == ["cat", "dog", "bird", "fish"]
    names.write_text("cat\ndog\n")
    _one_line_error(_invoke(["export", str(run), "--out", str(out), "--class-names", str(names)], 2),
                    "has 2 names; the model has 4 classes")  # fmt: skip


def test_run_recipe_with_quantize_benches_int8_and_gates_last(tmp_path: Path) -> None:
    recipe = {
        "prune": {"model": "cifar:resnet20", "data": "synthetic:1x16x16:4:64:32", "method": "l1",
                  "target-flops": 0.4, "epochs": 0, "device": "cpu", "quiet": True, "out": str(tmp_path / "run"),
                  "min_accuracy": 0.999},
        "export": {"opset": 17},
        "quantize": {"calib_batches": 1},
        "bench": {"iters": 3, "warmup": 1},
    }  # fmt: skip
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    failed = _invoke(["run", str(tmp_path / "recipe.yaml")], 1)  # the untrained model misses the gate...
    assert "--min-accuracy 0.999" in failed.stderr
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())  # ...after every stage wrote its outputs
    assert summary["int8_acc"] is not None and summary["int8_speedup"] > 0
    assert summary["pruned_onnx_acc"] is not None and summary["accuracy_gates"]
    bench = json.loads((run / "bench.json").read_text())
    assert set(bench["results"][0]["models"]) == {"pruned", "pruned-int8", "dense"}
    assert (run / "pruned.int8.onnx").is_file() and "INT8 file" in failed.stdout
    bad = {**recipe, "quantize": {"calib_method": "magic"}}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    _one_line_error(_invoke(["run", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "r2")], 2), "quantize")
    assert not (tmp_path / "r2").exists()
