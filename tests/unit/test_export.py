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
from exporters import export as torch_to_onnx
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

    monkeypatch.setattr(torch_to_onnx, "_EXPORT_FNS", {**torch_to_onnx._EXPORT_FNS, "dynamo": dynamo_crash})
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
    monkeypatch.setattr(torch_to_onnx, "_default_opset_version", lambda proto: 99)  # as if the opset drifted
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


# --------------------------------------------------------------------------------------------- export you can ship
# exporter choice, fp16, external data, report figures: through export_onnx, pipeline.export and the CLI.


class WideNet(TinyNet):
    """Conv weights of 16*3*3*3*4 = 1728 bytes: over the 1 KiB below which tensors stay inside the .onnx."""

    def __init__(self) -> None:
        super().__init__(width=16)


def _wide(seed: int = 0) -> WideNet:
    torch.manual_seed(seed)
    return _tiny(seed, cls=WideNet)


def _external_locations(path) -> set[str]:
    proto = onnx.load(str(path), load_external_data=False)
    return {
        e.value
        for t in proto.graph.initializer
        if t.data_location == onnx.TensorProto.EXTERNAL
        for e in t.external_data
        if e.key == "location"
    }


def test_external_data_forced_writes_model_and_one_data_file(tmp_path):
    out = tmp_path / "m.onnx"
    res = export_onnx(_wide(), SHAPE, out, external_data=True, exporter="legacy")
    data = tmp_path / "m.onnx.data"
    assert res["external_data"] is True and res["files"] == [str(out), str(data)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
    assert res["total_bytes"] == out.stat().st_size + data.stat().st_size
    assert _external_locations(out) == {"m.onnx.data"}  # one file, relative to the model
    assert res["verification"]["passed"] and res["simplified"]
    onnx.checker.check_model(str(out), full_check=True)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((3, *SHAPE)).astype(np.float32)
    with torch.no_grad():
        ref = _wide().eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(sess.run(None, {"input": x})[0], ref, rtol=1e-3, atol=1e-5)
    # The metadata is read without the weights: it still reads with the data file gone.
    data.rename(tmp_path / "elsewhere.bin")
    meta = read_metadata(out)
    assert meta["verified"] == "true" and meta["precision"] == "fp32" and meta["input_shape"] == "3x16x16"
    assert len(onnx_export.load_model(out).graph.initializer) > 0


def test_external_data_auto_follows_the_threshold_and_replaces_stale_data(tmp_path, monkeypatch):
    out = tmp_path / "m.onnx"
    assert export_onnx(_wide(), SHAPE, out, exporter="legacy")["external_data"] is False  # 2 KB: one file
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD", 1000)
    res = export_onnx(_wide(), SHAPE, out, exporter="legacy")
    assert res["external_data"] is True and (tmp_path / "m.onnx.data").is_file()
    assert res["verification"]["passed"] and _external_locations(out) == {"m.onnx.data"}
    # Writing one file over it removes the old model's data file (it belonged to what `out` replaced).
    export_onnx(_wide(), SHAPE, out, exporter="legacy", external_data=False)
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"] and _external_locations(out) == set()


def test_external_data_slim_failure_keeps_the_exported_model(tmp_path, monkeypatch):
    import onnxslim

    def broken_slim(model, *args, **kwargs):
        assert isinstance(model, str)  # through files, onnxslim is given the exported file
        raise RuntimeError("simulated onnxslim crash")

    monkeypatch.setattr(onnxslim, "slim", broken_slim)
    res = export_onnx(_wide(), SHAPE, tmp_path / "m.onnx", external_data=True, exporter="legacy")
    assert res["simplified"] is False and "simulated" in res["slim_error"]
    assert res["verification"]["passed"] and len(res["files"]) == 2
    onnx.checker.check_model(str(tmp_path / "m.onnx"), full_check=True)


def test_external_data_failure_leaves_nothing_behind(tmp_path, monkeypatch):
    import os
    import tempfile

    scratch = tmp_path / "scratch"  # where the exporter's temporary directory goes
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    real_replace, calls = os.replace, []

    def replace_then_fail(src, dst):  # the data file lands, then renaming the model fails
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("simulated rename failure")
        return real_replace(src, dst)

    out_dir = tmp_path / "out"
    monkeypatch.setattr(os, "replace", replace_then_fail)
    from compressor.errors import WriteFailed

    with pytest.raises(WriteFailed, match=f"cannot write {out_dir / 'm.onnx'}: .*simulated"):  # one line, exit 2
        export_onnx(_wide(), SHAPE, out_dir / "m.onnx", external_data=True, exporter="legacy")
    assert [os.path.basename(c) for c in calls] == ["m.onnx.data", "m.onnx"]
    assert list(out_dir.iterdir()) == [] and list(scratch.iterdir()) == []


def test_fp16_export_verifies_against_fp32_torch_with_its_tolerance(tmp_path):
    out = tmp_path / "m.onnx"
    model = _wide().train()
    model.bn.eval()  # mixed modes: a CPU model is exported in place, every module's mode comes back
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = export_onnx(model, SHAPE, out, fp16=True, exporter="legacy")
    assert model.training and model.conv.training and not model.bn.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    ver = res["verification"]
    assert res["precision"] == "fp16" and ver["passed"]
    assert (ver["rtol"], ver["atol"]) == (onnx_export.FP16_RTOL, onnx_export.FP16_ATOL) == (2e-2, 5e-2)
    assert 0 < ver["max_abs_diff"] < 5e-3  # really float16: not bit-identical to float32
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto, full_check=True)  # Casts sorted into place
    assert {t.data_type for t in proto.graph.initializer if len(t.dims) > 1} == {onnx.TensorProto.FLOAT16}
    io_types = [v.type.tensor_type.elem_type for v in [*proto.graph.input, *proto.graph.output]]
    assert io_types == [onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT]  # keep_io_types
    assert _batch_dim(out).dim_param
    meta = read_metadata(out)
    assert (meta["precision"], meta["verify_rtol"], meta["verify_atol"]) == ("fp16", "0.02", "0.05")
    # Explicit tolerances win over the fp16 defaults, and a tight one fails verification.
    strict = export_onnx(_wide(), SHAPE, tmp_path / "strict.onnx", fp16=True, exporter="legacy", rtol=0, atol=1e-7)
    assert strict["verification"]["passed"] is False and strict["verification"]["rtol"] == 0
    assert read_metadata(tmp_path / "strict.onnx")["verified"] == "false"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fp16": True, "opset": 8}, "opset >= 9"),
        ({"rtol": -1.0}, "rtol"),
        ({"atol": float("nan")}, "atol"),
        ({"external_data": "yes"}, "external_data"),
    ],
)
def test_bad_export_options(tmp_path, kwargs, message):
    with pytest.raises(BadInput, match=message):
        export_onnx(_tiny(), SHAPE, tmp_path / "m.onnx", **kwargs)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------ through the pipeline and the CLI

_TINY_MODEL_FILE = """
import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self, num_classes, in_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def make(num_classes=10, in_channels=3):
    return Tiny(num_classes, in_channels)
"""


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A run directory as `compress prune` writes it (pruned.pt, dense.pt, report.json), without training."""
    import json

    from compressor.artifacts import pruned_payload
    from compressor.models import build_model

    root = tmp_path_factory.mktemp("tiny_run")
    (root / "tiny_model.py").write_text(_TINY_MODEL_FILE)
    run = root / "run"
    run.mkdir()
    spec = {"model": f"{root / 'tiny_model.py'}:make", "num_classes": 5, "in_channels": 3, "trust_code": True}
    torch.manual_seed(0)
    model = build_model(spec["model"], num_classes=5, in_channels=3, trust_code=True)
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    # "verified" in the summary stands for any report key that collides with what the exporter writes.
    summary = {"method": "l1", "flops_drop": 0.25, "params_drop": 0.2, "acc": 0.5, "dense_acc": 0.6, "verified": "yes"}
    torch.save(pruned_payload(spec, SHAPE, [], model, {"report": summary}), run / "pruned.pt")
    torch.save(pruned_payload(spec, SHAPE, [], model), run / "dense.pt")
    report = {
        "target": {"metric": "flops", "value": 0.25, "achieved": 0.2512, "met": True},
        "dense": {"flops": 110592.0, "params": 533.0, "acc": 0.6, "loss": 1.0},
        "pruned": {"flops": 82800.0, "params": 421.0, "acc": 0.5, "loss": 1.2},
    }
    (run / "report.json").write_text(json.dumps(report))
    return run


def _cli(args, code=0):
    from click.testing import CliRunner

    from compressor.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == code, f"{result.stdout}\n{result.stderr}\n{result.exception!r}"
    return result


def _cli_json(args):
    import json

    return json.loads(_cli([*args, "--json"]).stdout)


def test_cli_exporter_choice_and_report_figures_in_metadata(tiny_run, tmp_path):
    base = ["export", tiny_run, "--trust-code"]
    legacy = _cli_json([*base, "--exporter", "legacy", "--out", tmp_path / "legacy.onnx"])
    assert legacy["exporter"] == "legacy" and legacy["fallback_reason"] is None
    assert "exporter_fallback" not in read_metadata(tmp_path / "legacy.onnx")

    dynamo = _cli_json([*base, "--exporter", "dynamo", "--opset", "18", "--out", tmp_path / "dynamo.onnx"])
    assert dynamo["exporter"] == "dynamo" and dynamo["opset"] == 18 and dynamo["verification"]["passed"]
    meta = read_metadata(tmp_path / "dynamo.onnx")
    assert (meta["exporter"], meta["opset"], meta["precision"]) == ("dynamo", "18", "fp32")
    # The report's key figures ride along; reserved keys stay the exporter's.
    assert (meta["method"], meta["flops_drop"], meta["acc"], meta["dense_acc"]) == ("l1", "0.25", "0.5", "0.6")
    assert (meta["target_metric"], meta["target_value"], meta["target_met"]) == ("flops", "0.25", "true")
    assert (meta["dense_flops"], meta["pruned_flops"], meta["dense_params"], meta["pruned_params"]) == (
        "110592",
        "82800",
        "533",
        "421",
    )
    assert meta["input_shape"] == "3x16x16" and meta["verified"] == "true" and meta["variant"] == "pruned"

    dense = _cli_json([*base, "--dense", "--exporter", "legacy"])  # default path RUN/dense.onnx
    meta = read_metadata(tiny_run / "dense.onnx")
    assert dense["path"] == str(tiny_run / "dense.onnx") and meta["variant"] == "dense"
    assert (meta["dense_flops"], meta["dense_acc"]) == ("110592", "0.6") and "pruned_flops" not in meta


def test_cli_auto_fallback_reason_in_result_metadata_and_summary_line(tiny_run, tmp_path, monkeypatch):
    base = ["export", tiny_run, "--trust-code"]
    # opset 17: dynamo cannot build it, auto goes to legacy and says so.
    text = _cli([*base, "--out", tmp_path / "a.onnx"]).stdout
    assert (
        len(text.splitlines()) == 1
        and "(legacy exporter; dynamo fell back: needs opset >= 18, 17 requested; opset 17, fp32," in text
    )
    assert read_metadata(tmp_path / "a.onnx")["exporter_fallback"] == "needs opset >= 18, 17 requested"

    def dynamo_crash(*args, **kwargs):
        raise RuntimeError("simulated torch.export failure")

    monkeypatch.setattr(torch_to_onnx, "_EXPORT_FNS", {**torch_to_onnx._EXPORT_FNS, "dynamo": dynamo_crash})
    res = _cli_json([*base, "--opset", "18", "--out", tmp_path / "b.onnx"])
    assert res["exporter"] == "legacy" and res["fallback_reason"] == "RuntimeError: simulated torch.export failure"
    assert read_metadata(tmp_path / "b.onnx")["exporter_fallback"] == res["fallback_reason"]
    text = _cli([*base, "--opset", "18", "--out", tmp_path / "c.onnx"]).stdout
    assert "; dynamo fell back: RuntimeError: simulated torch.export failure; opset 18," in text and "passed" in text


def test_cli_fp16_passes_with_its_tolerance_and_fails_with_an_impossible_one(tiny_run, tmp_path):
    import yaml

    (tmp_path / "export.yaml").write_text(yaml.safe_dump({"export": {"fp16": True, "exporter": "legacy"}}))
    base = ["export", tiny_run, "--trust-code", "--config", tmp_path / "export.yaml"]  # options from a recipe
    res = _cli_json([*base, "--out", tmp_path / "half.onnx"])
    ver = res["verification"]
    assert res["precision"] == "fp16" and ver["passed"] and (ver["rtol"], ver["atol"]) == (2e-2, 5e-2)
    assert read_metadata(tmp_path / "half.onnx")["precision"] == "fp16"

    failed = _cli([*base, "--rtol", "0", "--atol", "1e-9", "--out", tmp_path / "strict.onnx"], code=1)
    assert failed.stderr.startswith("error: ONNX output differs") and len(failed.stderr.splitlines()) == 1
    assert "FAILED" in failed.stdout and "rtol 0, atol 1e-09" in failed.stdout
    meta = read_metadata(tmp_path / "strict.onnx")
    assert (meta["verified"], meta["verify_rtol"], meta["verify_atol"]) == ("false", "0.0", "1e-09")


def test_cli_external_data_flag_lists_the_files(tiny_run, tmp_path):
    out = tmp_path / "ext.onnx"
    res = _cli_json(["export", tiny_run, "--trust-code", "--exporter", "legacy", "--external-data", "--out", out])
    assert res["external_data"] is True and res["files"] == [str(out), str(out) + ".data"]
    assert res["verification"]["passed"] and _external_locations(out) == {"ext.onnx.data"}
    text = _cli(["export", tiny_run, "--trust-code", "--exporter", "legacy", "--external-data", "--out", out]).stdout
    assert f"exported {out} + ext.onnx.data (" in text
    res = _cli_json(["export", tiny_run, "--trust-code", "--exporter", "legacy", "--no-external-data", "--out", out])
    assert res["files"] == [str(out)] and sorted(p.name for p in tmp_path.iterdir()) == ["ext.onnx"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--exporter", "tvm"], "'tvm' is not one of"),
        (["--fp16", "--opset", "8"], "fp16 needs opset >= 9"),
        (["--rtol", "-0.1"], "rtol must be a finite number >= 0"),
    ],
)
def test_cli_bad_export_options_exit_2_with_one_line(tiny_run, tmp_path, args, message):
    result = _cli(["export", tiny_run, "--trust-code", "--out", tmp_path / "m.onnx", *args], code=2)
    assert result.stdout == "" and len(result.stderr.splitlines()) == 1 and message in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("export", "message"),
    [
        ({"exporter": "tvm"}, "--exporter must be one of"),
        ({"fp16": True, "opset": 8}, "opset >= 9"),
        ({"external_data": "auto"}, "--external-data"),
        ({"fp16": "yes"}, "fp16"),
    ],
)
def test_recipe_export_options_are_checked_before_any_work(tmp_path, export, message):
    from compressor.jobs.run import run_recipe

    prune = {"model": "cifar:resnet20", "data": "synthetic:3x16x16:10", "target_flops": 0.3, "out": str(tmp_path / "r")}
    with pytest.raises(BadInput, match=message):
        run_recipe({"prune": prune, "export": export})
    assert list(tmp_path.iterdir()) == []


def test_verification_and_accuracy_sessions_do_not_spin() -> None:
    """ORT's intra-op threads would spin after each run and take the cores PyTorch needs between runs."""
    from compressor.runtime.ort_options import NO_SPINNING, session_options

    opts = session_options(threads=2)
    assert opts.intra_op_num_threads == 2 and opts.log_severity_level == 3
    assert all(opts.get_session_config_entry(k) == v == "0" for k, v in NO_SPINNING.items())
    assert session_options().intra_op_num_threads == 0  # ORT's default: one thread per core
