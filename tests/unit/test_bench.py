"""benchmarks.latency: interleaved timing, statistics, speedups, input and provider checks."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from benchmarks import latency
from benchmarks.backends import Runner
from benchmarks.bench_output import render_markdown
from benchmarks.latency import PROVIDERS, bench
from compressor.errors import BadInput, GateFailed

STAT_KEYS = {"n", "mean_ms", "std_ms", "min_ms", "max_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "throughput", "cov",
             "samples_ms", "warmup", "setup_s"}  # fmt: skip


def _conv_model(path, channels: int, batch: int | str = "batch", size: int = 16) -> str:
    """Conv(3->channels) + Relu + global average pool: a tiny CNN written with onnx.helper."""
    rng = np.random.default_rng(channels)
    weight = numpy_helper.from_array(rng.standard_normal((channels, 3, 3, 3)).astype(np.float32), "w")
    bias = numpy_helper.from_array(np.zeros(channels, np.float32), "b")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["r"]),
            helper.make_node("GlobalAveragePool", ["r"], ["output"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, channels, 1, 1])],
        [weight, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return str(path)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    return {"pruned": _conv_model(d / "pruned.onnx", 4), "dense": _conv_model(d / "dense.onnx", 32)}


def test_interleaved_results_have_all_stats_and_speedups(models, capsys):
    res = bench(models, baseline="dense", batches=(1, 2), threads=1, warmup=2, iters=15)
    assert capsys.readouterr().out == ""
    env, settings = res["env"], res["settings"]
    assert res["schema"] == 2 and env["onnxruntime"] and "CPUExecutionProvider" in env["providers_available"]
    assert env["torch"] and env["numpy"] and env["python"] and env["gpu"] is None  # no GPU backend asked
    assert settings["threads"] == 1 and settings["warmup"] == 2 and settings["iters"] == 15
    assert settings["duration"] is None and env["cpu"]["cpu_count"] >= 1 and "processor" in env["cpu"]
    assert [(r["provider"], r["io"], r["batch"]) for r in res["results"]] == [("cpu", "host", 1), ("cpu", "host", 2)]
    for row in res["results"]:
        assert set(row["models"]) == {"pruned", "dense"} and row["rounds"] == 15
        assert row["providers_used"] == {"pruned": ["CPUExecutionProvider"], "dense": ["CPUExecutionProvider"]}
        for st in row["models"].values():
            assert STAT_KEYS <= set(st) and st["n"] == 15 and len(st["samples_ms"]) == 15
            assert 0 < st["min_ms"] <= st["p50_ms"] <= st["p90_ms"] <= st["p95_ms"] <= st["p99_ms"] <= st["max_ms"]
            assert st["warmup"]["n"] == 2 and st["warmup"]["first_ms"] > 0 and st["setup_s"] > 0
            assert st["throughput"] == pytest.approx(row["batch"] * 1000 / st["mean_ms"])
            assert st["cov"] == pytest.approx(st["std_ms"] / st["mean_ms"])
        assert set(row["speedup"]) == {"pruned"}
        sp, base, pr = row["speedup"]["pruned"], row["models"]["dense"], row["models"]["pruned"]
        assert sp["p50"] == pytest.approx(base["p50_ms"] / pr["p50_ms"])
        assert sp["mean"] == pytest.approx(base["mean_ms"] / pr["mean_ms"])
    json.dumps(res, allow_nan=False)  # plain JSON, ready for --json

    table = render_markdown(res)
    assert table.count("| cpu |") == 4 and "baseline" in table and "p50" in table
    assert "| cpu | host | 2 | pruned |" in table


def test_measurement_is_round_robin(models, monkeypatch):
    calls: list[str] = []
    real_runner = latency._runner

    def recording_runner(sess, feeds, key, io):
        runner = real_runner(sess, feeds, key, io)
        label = "dense" if sess.get_outputs()[0].shape[1] == 32 else "pruned"

        def wrapped():
            calls.append(label)
            runner.run()

        return Runner(wrapped, runner.used)

    monkeypatch.setattr(latency, "_runner", recording_runner)
    bench(models, warmup=3, iters=10)
    timed = calls[6:]  # after 3 warm-up runs of each model
    assert len(timed) == 20
    assert all(set(timed[i : i + 2]) == {"pruned", "dense"} for i in range(0, 20, 2))


def test_duration_wins_over_iters(models):
    res = bench(models, baseline="dense", iters=10_000, duration=0.05, warmup=1)
    row = res["results"][0]
    assert res["settings"]["duration"] == 0.05 and res["settings"]["iters"] is None
    assert 10 <= row["rounds"] < 10_000  # at least --min-iters (10) rounds
    assert row["models"]["pruned"]["n"] == row["models"]["dense"]["n"]


def test_no_baseline_no_speedup(models):
    res = bench({"only": models["pruned"]}, iters=3, warmup=0)
    assert res["results"][0]["speedup"] == {} and res["settings"]["warmup"] == 1
    assert "–" in render_markdown(res)


def test_inputs_are_seeded(tmp_path):
    info = latency._inspect("m", _conv_model(tmp_path / "m.onnx", 4))
    a, b, c = (latency._feeds(info, 2, seed)["input"] for seed in (0, 0, 1))
    assert a.dtype == np.float32 and a.shape == (2, 3, 16, 16)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize("kind", ["text", "pt", "empty", "missing", "directory"])
def test_unloadable_model_is_bad_input(models, tmp_path, kind):
    path = tmp_path / {"text": "notes.onnx", "pt": "model.pt", "empty": "empty.onnx"}.get(kind, kind)
    if kind == "text":
        path.write_text("this is not an onnx model\n")
    elif kind == "pt":
        torch.save({"w": torch.zeros(3)}, path)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "directory":
        path.mkdir()
    with pytest.raises(BadInput) as err:
        bench({"pruned": path, "dense": models["dense"]}, baseline="dense", iters=2)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_unknown_provider_is_bad_input(models):
    with pytest.raises(BadInput, match="unknown provider 'openvino'"):
        bench(models, providers=("cpu", "openvino"), iters=2)


def test_provider_names_accept_full_names(models):
    res = bench(models, providers=["CPUExecutionProvider"], iters=2, warmup=0)
    assert res["results"][0]["provider"] == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU; TensorRT may really work")
@pytest.mark.parametrize("provider", ["tensorrt", "cuda"])
def test_gpu_provider_without_gpu_is_a_failed_gate(models, provider, capsys):
    # onnxruntime-gpu lists these providers even here; the session raises or silently uses CPU.
    assert PROVIDERS[provider] in __import__("onnxruntime").get_available_providers()
    with pytest.raises(GateFailed, match=f"provider {provider} unavailable"):
        bench(models, providers=("cpu", provider), iters=2)
    assert capsys.readouterr().out == ""  # ORT's "EP Error" banner must not pollute stdout (--json)


def test_provider_missing_from_build_is_a_failed_gate(models, monkeypatch):
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(GateFailed, match="provider cuda unavailable: .*not in this onnxruntime build"):
        bench(models, providers=("cuda",), iters=2)


def test_static_batch_mismatch_is_bad_input(models, tmp_path):
    static = _conv_model(tmp_path / "static.onnx", 4, batch=1)
    res = bench({"static": static}, batches=(1,), iters=2, warmup=0)
    assert res["results"][0]["models"]["static"]["n"] == 2
    with pytest.raises(BadInput, match="static batch of 1, cannot bench batch 4"):
        bench({"static": static, "dense": models["dense"]}, batches=(1, 4), iters=2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"batches": (0,)}, "batch"),
        ({"iters": 0}, "iters"),
        ({"threads": 0}, "threads"),
        ({"duration": -1.0}, "duration"),
        ({"baseline": "nope"}, "baseline"),
    ],
)
def test_bad_arguments(models, kwargs, match):
    with pytest.raises(BadInput, match=match):
        bench(models, **kwargs)


def test_empty_models_is_bad_input():
    with pytest.raises(BadInput):
        bench({})
