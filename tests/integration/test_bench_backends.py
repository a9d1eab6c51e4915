"""benchmarks.latency on real pruned runs: PyTorch backends, model files, IO modes, warnings, GPU paths."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import cli_process
import pytest
import torch

from benchmarks import latency
from benchmarks.backends import Runner
from benchmarks.latency import bench
from compressor.errors import BadInput, GateFailed
from compressor.jobs.export import export
from compressor.jobs.prune import PruneConfig, prune

HAS_CUDA = torch.cuda.is_available()
needs_gpu = pytest.mark.gpu


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A tiny one-shot l2 run of cifar:resnet20 with both ONNX files exported next to the .pt files."""
    out = tmp_path_factory.mktemp("bench_run") / "run"
    prune(PruneConfig(model="cifar:resnet20", data="synthetic:3x32x32:10:64:32", out=str(out), method="l2",
                      target_flops=0.5, epochs=0, batch_size=32, quiet=True))  # fmt: skip
    export(out)
    export(out, dense=True)
    return out


def test_onnx_and_torch_backends_share_one_interleaved_result(run_dir):
    res = bench({"pruned": run_dir, "dense": run_dir / "dense.onnx"}, baseline="dense", providers="cpu,torch",
                batches=(1, 4), threads=1, warmup=2, iters=6)  # fmt: skip
    assert [(r["provider"], r["io"], r["batch"]) for r in res["results"]] == [
        ("cpu", "host", 1), ("cpu", "host", 4), ("torch", "host", 1), ("torch", "host", 4)]  # fmt: skip
    assert res["models"]["pruned"] == {"onnx": str(run_dir / "pruned.onnx"), "torch": str(run_dir / "pruned.pt")}
    assert res["models"]["dense"]["torch"] == str(run_dir / "dense.pt")  # the .pt next to the .onnx
    torch_row = res["results"][2]
    assert torch_row["providers_used"]["pruned"][0].startswith(f"torch {torch.__version__} eager on cpu")
    for row in res["results"]:
        assert row["rounds"] == 6 and row["speedup"]["pruned"]["p50"] > 0
        for st in row["models"].values():
            assert st["n"] == 6 and st["setup_s"] > 0 and st["warmup"]["n"] == 2


def test_torch_compile_backend(run_dir):
    res = bench({"pruned": run_dir / "pruned.pt"}, providers="torch-compile", threads=1, warmup=1, iters=3)
    (row,) = res["results"]
    st = row["models"]["pruned"]
    assert "compiled on cpu" in row["providers_used"]["pruned"][0] and st["n"] == 3
    # the first run compiles: reported apart, never one of the timed runs (no bound on its time: a test asserts
    # behaviour, not speed)
    assert st["warmup"]["first_ms"] > 0 and len(st["samples_ms"]) == 3


def test_file_resolution_errors(run_dir, tmp_path):
    lone_pt = tmp_path / "lone.pt"
    lone_pt.write_bytes((run_dir / "pruned.pt").read_bytes())
    with pytest.raises(BadInput, match="ONNX Runtime backends need an ONNX file"):
        bench({"m": lone_pt}, iters=1)
    lone_onnx = tmp_path / "solo.onnx"
    lone_onnx.write_bytes((run_dir / "pruned.onnx").read_bytes())
    with pytest.raises(BadInput, match="PyTorch backends need the pruned-model file"):
        bench({"m": lone_onnx}, providers="torch", iters=1)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(BadInput, match="not a run directory"):
        bench({"m": tmp_path / "empty_dir"}, iters=1)
    foreign = tmp_path / "foreign.pt"
    torch.save({"w": torch.zeros(2)}, foreign)
    with pytest.raises(BadInput, match="not a compress pruned-model file"):
        bench({"m": foreign}, providers="torch", iters=1)


@pytest.mark.parametrize("io", ["disk", "", "device,gpu"])
def test_bad_io_mode(run_dir, io):
    with pytest.raises(BadInput, match="--io takes device, host"):
        bench({"m": run_dir}, io=io, iters=1)


def test_duration_keeps_a_minimum_count(run_dir):
    res = bench({"m": run_dir}, duration=1e-6, min_iters=7, warmup=0)
    assert res["results"][0]["rounds"] == 7 and res["settings"]["min_iters"] == 7


def test_noisy_timings_are_warned(run_dir, monkeypatch):
    delays = iter([0.001, 0.004] * 50)

    def jittery(made, feeds, key, io):
        return Runner(lambda: time.sleep(next(delays)), ["fake"])

    monkeypatch.setattr(latency, "_runner", jittery)
    res = bench({"m": run_dir}, iters=20, warmup=0)
    st = res["results"][0]["models"]["m"]
    assert st["cov"] > 0.03 and len(res["warnings"]) == 1 and f"CoV {st['cov']:.1%}" in res["warnings"][0]


@pytest.mark.skipif(HAS_CUDA, reason="this machine has a GPU")
def test_torch_cuda_without_gpu_is_a_failed_gate(run_dir):
    with pytest.raises(GateFailed, match="provider torch-cuda unavailable: torch sees no CUDA device"):
        bench({"m": run_dir}, providers="cpu,torch-cuda", iters=1)


@pytest.mark.slow
def test_cli_outputs_and_gates(run_dir, tmp_path):
    """One CLI run writes JSON, CSV, Markdown and PNG; --fail-above-p50 and --compare gate it (exit 1)."""
    base = ["bench", str(run_dir), "--baseline", str(run_dir / "dense.onnx"), "--iters", "5", "--warmup", "1",
            "--threads", "1"]  # fmt: skip
    outs = {k: tmp_path / f"b.{k}" for k in ("json", "csv", "md", "png")}
    proc = cli_process.run([*base, "--json-out", outs["json"], "--csv", outs["csv"], "--md", outs["md"],
                            "--plot", outs["png"]], timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(outs["json"].read_text())
    assert result["schema"] == 2 and result["gates"]["passed"] and "| cpu | host | 1 | model |" in proc.stdout
    assert outs["csv"].read_text().count("\n") == 3 and outs["md"].read_text().startswith("ONNX Runtime")
    assert outs["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    slow = cli_process.run([*base, "--fail-above-p50", "0.000001"], timeout=120)
    assert slow.returncode == 1 and slow.stderr.count("\n") == 1, slow.stderr
    assert slow.stderr.startswith("error: cpu/host/batch 1: model p50") and "above 1e-06 ms" in slow.stderr

    faster = json.loads(outs["json"].read_text())  # a "previous" run 100x faster than anything measurable
    for row in faster["results"]:
        for st in row["models"].values():
            st["p50_ms"] /= 100
    prev = tmp_path / "prev.json"
    prev.write_text(json.dumps(faster))
    regress = cli_process.run([*base, "--compare", prev, "--max-regression", "50"], timeout=120)
    assert regress.returncode == 1 and "model" in regress.stderr.splitlines()[-1], regress.stderr

    bad = cli_process.run([*base, "--compare", tmp_path / "missing.json"], timeout=60)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "missing.json" in bad.stderr


# --------------------------------------------------------------------------------------------- GPU only


@needs_gpu
@pytest.mark.parametrize("provider", ["cuda", "torch-cuda"])
def test_gpu_device_and_host_io_rows(run_dir, provider):
    res = bench({"pruned": run_dir, "dense": run_dir / "dense.onnx"}, baseline="dense", providers=provider,
                batches=(1, 8), warmup=3, iters=20)  # fmt: skip
    rows = {(r["io"], r["batch"]): r for r in res["results"]}
    assert set(rows) == {("device", 1), ("device", 8), ("host", 1), ("host", 8)}
    assert res["env"]["gpu"] and res["env"]["gpu"]["name"]
    for row in rows.values():
        used = row["providers_used"]["pruned"][0]
        expected = "CUDAExecutionProvider" if provider == "cuda" else f"eager on {torch.cuda.get_device_name(0)}"
        assert used.endswith(expected), used
        assert all(m["n"] == 20 and m["p50_ms"] > 0 for m in row["models"].values())  # timed, no bound on speed


@needs_gpu
def test_tensorrt_engine_cache_is_reused_by_the_second_build(run_dir, tmp_path):
    cache = tmp_path / "trt"
    try:
        first = bench({"m": run_dir}, providers="tensorrt", io="device", warmup=2, iters=5, trt_cache=str(cache))
    except GateFailed as exc:
        pytest.skip(f"TensorRT not usable here: {exc}")
    engines = {p.name: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()}
    assert engines and first["results"][0]["providers_used"]["m"][0] == "TensorrtExecutionProvider"  # cached
    second = bench({"m": run_dir}, providers="tensorrt", io="device", warmup=2, iters=5, trt_cache=str(cache))
    assert second["results"][0]["providers_used"]["m"][0] == "TensorrtExecutionProvider"
    assert {p.name: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()} == engines  # reused, not rebuilt
    fp16 = bench({"m": run_dir}, providers="tensorrt", io="device", warmup=2, iters=5, trt_fp16=True)
    assert fp16["settings"]["trt_fp16"] and fp16["results"][0]["providers_used"]["m"][0] == "TensorrtExecutionProvider"


def test_github_step_summary_gets_the_table_even_when_a_gate_fails(run_dir, tmp_path):
    """With $GITHUB_STEP_SUMMARY set (GitHub Actions), bench appends its Markdown table, before a gate fails."""
    summary = tmp_path / "step_summary.md"
    summary.write_text("earlier step\n")
    env = {**os.environ, "GITHUB_STEP_SUMMARY": str(summary)}
    base = ["bench", str(run_dir / "pruned.onnx"), "--iters", "3", "--warmup", "1", "--threads", "1"]
    ok = cli_process.run(base, timeout=120, env=env)
    assert ok.returncode == 0, ok.stderr
    gated = cli_process.run([*base, "--fail-above-p50", "0.000001"], timeout=120, env=env)
    assert gated.returncode == 1, gated.stderr
    text = summary.read_text()
    assert text.startswith("earlier step\n") and text.count("| cpu | host | 1 |") == 2, text
    unset = {k: v for k, v in os.environ.items() if k != "GITHUB_STEP_SUMMARY"}
    assert cli_process.run(base, timeout=120, env=unset).returncode == 0
    assert summary.read_text() == text  # nothing appended without the variable


@pytest.mark.skipif(HAS_CUDA, reason="this machine has a GPU")
@pytest.mark.parametrize("provider", ["cuda", "torch-cuda"])
def test_an_unavailable_provider_exits_4_not_1(run_dir, provider):
    """CI tells a missing GPU (4) from a failed gate (1): one error line naming the provider."""
    model = run_dir / ("pruned.onnx" if provider == "cuda" else "pruned.pt")
    proc = cli_process.run(["bench", str(model), "--provider", provider, "--iters", "2", "--warmup", "0"],
                           timeout=120)  # fmt: skip
    assert proc.returncode == 4, proc.stderr
    ours = [line for line in proc.stderr.splitlines() if line.startswith("error:")]  # ORT logs its own lines too
    assert len(ours) == 1 and ours[0].startswith(f"error: provider {provider} unavailable"), proc.stderr
