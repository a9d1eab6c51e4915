"""exporters.onnx: export, fallback, slimming, verification against PyTorch, metadata, atomic writes."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision
from torch import nn

from compressor.errors import BadInput
from exporters import onnx as onnx_export
from exporters.onnx import export_onnx, read_metadata, verify

SHAPE = (3, 16, 16)


class TinyNet(nn.Module):
    def __init__(self, classes: int = 5, width: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


class TwoHeads(TinyNet):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = torch.relu(self.bn(self.conv(x))).mean((2, 3))
        return self.fc(feats), feats


class BakesBatch(TinyNet):
    """Reads the batch size as a Python int: tracing bakes in the example batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * int(x.shape[0])


def _tiny(seed: int = 0, cls: type[TinyNet] = TinyNet) -> TinyNet:
    torch.manual_seed(seed)
    model = cls()
    with torch.no_grad():  # non-trivial BN statistics so eval-mode folding is exercised
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    return model


def _batch_dim(path) -> onnx.TensorShapeProto.Dimension:
    return onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0]


def _no_temp_files(directory) -> None:
    leftovers = [p.name for p in directory.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]
    assert leftovers == []


def test_resnet18_default_export_is_valid_dynamic_and_verified(tmp_path, caplog):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    model.train()
    out = tmp_path / "r18.onnx"
    with caplog.at_level(logging.WARNING, logger="compress.export"):
        res = export_onnx(model, (3, 32, 32), out, metadata={"run": "r18", "target_flops": 0.5})
    assert model.training, "the caller's module must keep its mode"

    onnx.checker.check_model(str(out), full_check=True)
    proto = onnx.load(str(out))
    assert not any(init.data_location == onnx.TensorProto.EXTERNAL for init in proto.graph.initializer)
    assert [p.name for p in tmp_path.iterdir()] == ["r18.onnx"]
    assert res["path"] == str(out) and res["size_bytes"] == out.stat().st_size > 40_000_000
    assert res["opset"] == 17 and res["dynamic_batch"] is True and res["simplified"] is True
    assert [(o.domain, o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [("", 17)]
    assert res["nodes"] == len(proto.graph.node)
    assert _batch_dim(out).dim_param and [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["output"]

    # torch's dynamo exporter builds opset >= 18 only: for 17 "auto" goes straight to legacy, records why,
    # and does not warn on every export (the choice is known in advance, nothing failed).
    assert res["exporter"] == "legacy"
    assert res["fallback_reason"] and "opset" in res["fallback_reason"]
    assert not any("falling back" in r.getMessage() for r in caplog.records)

    ver = res["verification"]
    assert ver["passed"] is True and ver["batch_sizes"] == [1, 4]
    assert ver["rtol"] == 1e-3 and ver["atol"] == 1e-4
    assert [o["name"] for o in ver["outputs"]] == ["output"]
    assert 0 <= ver["max_abs_diff"] < 1e-4 and ver["max_rel_diff"] >= 0

    meta = read_metadata(out)
    assert meta["tool"] == "compress" and meta["tool_version"]
    assert meta["exporter"] == res["exporter"] and meta["opset"] == "17"
    assert meta["run"] == "r18" and meta["target_flops"] == "0.5"
    assert meta["verified"] == "true" and float(meta["max_abs_diff"]) == pytest.approx(ver["max_abs_diff"])

    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"input": np.zeros((3, 3, 32, 32), np.float32)})[0].shape == (3, 10)


def test_dynamo_export_at_opset_18(tmp_path):
    res = export_onnx(_tiny(), SHAPE, tmp_path / "m.onnx", opset=18, exporter="dynamo")
    assert res["exporter"] == "dynamo" and res["fallback_reason"] is None
    assert res["verification"]["passed"] and res["dynamic_batch"]
    assert _batch_dim(tmp_path / "m.onnx").dim_param
    assert read_metadata(tmp_path / "m.onnx")["exporter"] == "dynamo"


def test_auto_falls_back_on_any_dynamo_exception(tmp_path, monkeypatch):
    def dynamo_crash(*args, **kwargs):
        raise RuntimeError("simulated torch.export failure\nwith a second line")

    monkeypatch.setattr(onnx_export, "_EXPORT_FNS", {**onnx_export._EXPORT_FNS, "dynamo": dynamo_crash})
    res = export_onnx(_tiny(), SHAPE, tmp_path / "m.onnx", opset=18)
    assert res["exporter"] == "legacy" and res["verification"]["passed"]
    assert res["fallback_reason"] == "RuntimeError: simulated torch.export failure with a second line"
    with pytest.raises(BadInput, match="dynamo: RuntimeError: simulated"):
        export_onnx(_tiny(), SHAPE, tmp_path / "forced.onnx", opset=18, exporter="dynamo")
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_forced_legacy_exporter(tmp_path):
    res = export_onnx(_tiny(), SHAPE, tmp_path / "m.onnx", exporter="legacy", opset=13, verify_batches=(1, 3, 8))
    assert res["exporter"] == "legacy" and res["fallback_reason"] is None and res["opset"] == 13
    assert res["verification"]["passed"] and res["verification"]["batch_sizes"] == [1, 3, 8]
    assert read_metadata(tmp_path / "m.onnx")["opset"] == "13"
    _no_temp_files(tmp_path)


def test_forced_dynamo_that_cannot_meet_the_opset_is_bad_input(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_export, "_default_opset_version", lambda proto: 99)  # as if the opset drifted
    with pytest.raises(BadInput, match="opset"):
        export_onnx(_tiny(), SHAPE, tmp_path / "m.onnx", opset=18, exporter="dynamo")
    assert list(tmp_path.iterdir()) == []


def test_multiple_outputs_are_named_and_verified(tmp_path):
    res = export_onnx(_tiny(cls=TwoHeads), SHAPE, tmp_path / "m.onnx", exporter="legacy")
    assert [o["name"] for o in res["verification"]["outputs"]] == ["output_0", "output_1"]
    assert res["verification"]["passed"]
    assert [o.name for o in onnx.load(str(tmp_path / "m.onnx")).graph.output] == ["output_0", "output_1"]


def test_static_batch_verifies_batch_one_only(tmp_path):
    res = export_onnx(_tiny(), SHAPE, tmp_path / "m.onnx", dynamic_batch=False, exporter="legacy")
    assert res["dynamic_batch"] is False and _batch_dim(tmp_path / "m.onnx").dim_value == 1
    assert res["verification"]["batch_sizes"] == [1] and "batch 1" in res["verification"]["note"]
    assert res["verification"]["passed"]
    assert read_metadata(tmp_path / "m.onnx")["dynamic_batch"] == "false"


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_silently_static_dynamo_batch_falls_back_and_verification_fails(tmp_path):
    """dynamo specializes ``int(x.shape[0])`` without an error: we must notice and fall back; the legacy
    trace bakes the example batch in, and verification at batch 1 and 4 must catch that."""
    out = tmp_path / "m.onnx"
    res = export_onnx(_tiny(cls=BakesBatch), SHAPE, out, opset=18)
    assert res["exporter"] == "legacy" and "static" in res["fallback_reason"]
    ver = res["verification"]
    assert ver["passed"] is False and ver["batch_sizes"] == [1, 4]
    assert ver["max_abs_diff"] > 1e-2
    assert out.is_file() and read_metadata(out)["verified"] == "false"
    _no_temp_files(tmp_path)


def test_verify_against_a_different_model_fails(tmp_path):
    out = tmp_path / "m.onnx"
    assert export_onnx(_tiny(seed=0), SHAPE, out, exporter="legacy")["verification"]["passed"]
    same = verify(out, _tiny(seed=0), SHAPE)
    other = verify(out, _tiny(seed=1), SHAPE, batch_sizes=(2,))
    assert same["passed"] and same["max_abs_diff"] < 1e-5
    assert other["passed"] is False and other["batch_sizes"] == [2] and other["max_abs_diff"] > 1e-3
    # Same weights, but PyTorch returns two outputs where the ONNX graph has one.
    strict = verify(out, _tiny(cls=TwoHeads), SHAPE)
    assert strict["passed"] is False and strict["errors"]


def test_slim_failure_keeps_unslimmed_model(tmp_path, monkeypatch, caplog):
    import onnxslim

    def broken_slim(model, *args, **kwargs):
        raise RuntimeError("simulated onnxslim crash")

    monkeypatch.setattr(onnxslim, "slim", broken_slim)
    with caplog.at_level(logging.WARNING, logger="compress.export"):
        res = export_onnx(_tiny(), SHAPE, tmp_path / "m.onnx", exporter="legacy")
    assert res["simplified"] is False and "simulated onnxslim crash" in res["slim_error"]
    assert res["verification"]["passed"]
    assert any("onnxslim failed" in r.getMessage() for r in caplog.records)
    onnx.checker.check_model(str(tmp_path / "m.onnx"), full_check=True)


def test_no_simplify(tmp_path):
    res = export_onnx(_tiny(), SHAPE, tmp_path / "m.onnx", exporter="legacy", simplify=False)
    assert res["simplified"] is False and res["slim_error"] is None


def test_reserved_metadata_keys_are_not_overridden(tmp_path):
    export_onnx(_tiny(), SHAPE, tmp_path / "m.onnx", exporter="legacy", metadata={"verified": "yes", "k": 1})
    meta = read_metadata(tmp_path / "m.onnx")
    assert meta["verified"] == "true" and meta["k"] == "1"


def test_export_failure_writes_nothing(tmp_path):
    class Broken(nn.Module):
        def forward(self, x):
            return x.view(7, -1, 1)  # cannot hold 16*16*3 elements per sample

    with pytest.raises(BadInput, match="does not run"):
        export_onnx(Broken(), SHAPE, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"exporter": "tvm"},
        {"input_shape": (3, 0, 16)},
        {"input_shape": "3x16x16"},
        {"opset": 3},
        {"verify_batches": ()},
    ],
)
def test_bad_arguments(tmp_path, kwargs):
    args = {"input_shape": SHAPE, **kwargs}
    shape = args.pop("input_shape")
    with pytest.raises(BadInput):
        export_onnx(_tiny(), shape, tmp_path / "m.onnx", **args)
    assert list(tmp_path.iterdir()) == []


def test_read_metadata_bad_paths(tmp_path):
    with pytest.raises(BadInput, match="no such"):
        read_metadata(tmp_path / "missing.onnx")
    (tmp_path / "notes.txt").write_text("not a model\n")
    with pytest.raises(BadInput, match="notes.txt"):
        read_metadata(tmp_path / "notes.txt")
