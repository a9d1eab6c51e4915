"""benchmarks.bench_output: Markdown/CSV rendering, the distribution plot, gates and previous results."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from benchmarks import bench_output as bo
from compressor.errors import BadInput, GateFailed

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _stats(samples: list[float], batch: int, setup_s: float = 0.25) -> dict:
    ms = np.asarray(samples, dtype=np.float64)
    mean, std = float(ms.mean()), float(ms.std(ddof=1)) if ms.size > 1 else 0.0
    p50, p90, p95, p99 = (float(v) for v in np.percentile(ms, [50, 90, 95, 99]))
    return {
        "n": int(ms.size), "mean_ms": mean, "std_ms": std, "min_ms": float(ms.min()), "max_ms": float(ms.max()),
        "p50_ms": p50, "p90_ms": p90, "p95_ms": p95, "p99_ms": p99, "throughput": batch * 1000 / mean,
        "cov": std / mean, "warmup": {"n": 3, "first_ms": float(ms.max()) * 4, "mean_ms": mean * 1.2},
        "setup_s": setup_s, "samples_ms": [float(v) for v in ms],
    }  # fmt: skip


def make_result(
    settings=(("cpu", "host", 1), ("cpu", "host", 8), ("cuda", "device", 1)),
    labels=("dense", "pruned"),
    baseline: str | None = "dense",
    n: int = 60,
    seed: int = 0,
) -> dict:
    """A realistic schema-2 result: random samples per model (each label ~1.8x faster than the previous)."""
    rng = np.random.default_rng(seed)
    rows = []
    for provider, io_mode, batch in settings:
        models, used = {}, {}
        for k, label in enumerate(labels):
            center = 10.0 * batch / (1.8**k)
            models[label] = _stats(list(center * (1 + 0.02 * rng.standard_normal(n))), batch)
            used[label] = ["CUDAExecutionProvider", "CPUExecutionProvider"] if provider == "cuda" else ["CPU"]
        speedup = {}
        if baseline is not None:
            base = models[baseline]
            speedup = {
                label: {"p50": base["p50_ms"] / st["p50_ms"], "mean": base["mean_ms"] / st["mean_ms"]}
                for label, st in models.items()
                if label != baseline
            }
        rows.append({"provider": provider, "io": io_mode, "batch": batch, "rounds": n, "wall_s": 1.5,
                     "providers_used": used, "models": models, "speedup": speedup})  # fmt: skip
    return {
        "schema": 2,
        "kind": "compress.bench",
        "env": {
            "python": "3.11.9", "compress": "0.1.0", "onnxruntime": "1.20.1", "torch": "2.5.1", "onnx": "1.17.0",
            "numpy": "2.1.0", "platform": "Linux-x86_64",
            "cpu": {"model_name": "Intel(R) Xeon(R) Test CPU", "usable_cpus": 2, "cpu_count": 16},
            "gpu": {"name": "NVIDIA H100 80GB HBM3", "driver": "550.54", "cuda": "12.4"},
            "providers_available": ["CUDAExecutionProvider", "CPUExecutionProvider"],
        },
        "settings": {
            "providers": sorted({s[0] for s in settings}), "batches": sorted({s[2] for s in settings}),
            "threads": 2, "inter_threads": None, "warmup": 3, "iters": n, "min_iters": 10, "duration": None,
            "seed": 0, "io": ["device"], "trt_fp16": False, "trt_cache": None, "cov_warn": 0.03,
        },
        "models": {label: {"onnx": f"{label}.onnx", "torch": None} for label in labels},
        "baseline": baseline,
        "results": rows,
        "warnings": ["cuda: 2 nodes of pruned ran on CPUExecutionProvider", "cpu/host/batch 8: CoV\n5% > 3%"],
    }  # fmt: skip


def small_result(p50s: dict[tuple[str, str, int], dict[str, float]], baseline: str | None = "dense") -> dict:
    """A hand-made schema-2 result with given p50s per (provider, io, batch) and label; speedups from them."""
    rows = []
    for (provider, io_mode, batch), per_label in p50s.items():
        models = {label: {"p50_ms": v, "mean_ms": v} for label, v in per_label.items()}
        speedup = {}
        if baseline in per_label:
            speedup = {x: {"p50": per_label[baseline] / v, "mean": per_label[baseline] / v}
                       for x, v in per_label.items() if x != baseline}  # fmt: skip
        rows.append({"provider": provider, "io": io_mode, "batch": batch, "models": models, "speedup": speedup})
    return {"schema": 2, "kind": "compress.bench", "env": {"cpu": {"model_name": "X"}, "gpu": None,
            "onnxruntime": "1.20.1"}, "settings": {}, "baseline": baseline, "results": rows}  # fmt: skip


def schema1_result() -> dict:
    """A result as the schema-1 harness wrote it: no io, environment at the top level, fewer stats."""
    rows = []
    for provider, batch, dense, pruned in (("cpu", 1, 10.0, 5.0), ("cuda", 1, 2.0, 1.0)):
        models = {
            label: {"n": 10, "mean_ms": v, "std_ms": 0.1, "p50_ms": v, "p90_ms": v, "p99_ms": v, "min_ms": v,
                    "max_ms": v, "throughput": 1000 / v, "cov": 0.01}
            for label, v in (("dense", dense), ("pruned", pruned))
        }  # fmt: skip
        rows.append({"provider": provider, "batch": batch, "rounds": 10, "wall_s": 0.2, "models": models,
                     "speedup": {"pruned": {"p50": dense / pruned, "mean": dense / pruned}}})  # fmt: skip
    return {"schema": 1, "onnxruntime": "1.19.0", "providers_available": ["CPUExecutionProvider"],
            "models": {"dense": "d.onnx", "pruned": "p.onnx"}, "baseline": "dense", "threads": 2, "warmup": 10,
            "iters": 10, "duration": None, "seed": 0, "cpu": {"model_name": "Old CPU", "cpu_count": 4},
            "results": rows}  # fmt: skip


# --------------------------------------------------------------------------------------------- markdown


def test_markdown_has_every_row_header_speedups_and_warnings():
    res = make_result()
    res["results"][0]["speedup"]["pruned"] = {"p50": 1.874, "mean": 1.851}
    md = bo.render_markdown(res)
    table = [line for line in md.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(table) == 3 * 2
    for provider, io_mode, batch in (("cpu", "host", 1), ("cpu", "host", 8), ("cuda", "device", 1)):
        for label in ("dense", "pruned"):
            assert sum(line.startswith(f"| {provider} | {io_mode} | {batch} | {label} |") for line in table) == 1
    assert table[0].startswith("| cpu | host | 1 | dense |")  # baseline first
    assert md.count("1.00× (baseline)") == 3 and "1.87× (mean 1.85×)" in md
    header = md.splitlines()[0]
    for text in ("ONNX Runtime 1.20.1", "torch 2.5.1", "Intel(R) Xeon(R) Test CPU", "2 usable CPUs",
                 "NVIDIA H100 80GB HBM3", "threads=2", "warm-up 3", "60 rounds", "interleaved"):  # fmt: skip
        assert text in header
    assert "Speedup = baseline p50 / model p50" in md
    assert "\n- cuda: 2 nodes of pruned ran on CPUExecutionProvider\n" in md
    assert "\n- cpu/host/batch 8: CoV 5% > 3%\n" in md  # one bullet, one line
    n_cols = table[0].count(" | ") + 1
    assert all(line.count(" | ") + 1 == n_cols for line in table) and n_cols == 15


def test_markdown_with_several_models_has_a_speedup_column_each():
    res = make_result(settings=(("cpu", "host", 1), ("cpu", "host", 8)), labels=("dense", "p|1", "p2"))
    res["results"][1]["speedup"].pop("p2")  # a setting without a speedup shows a dash
    md = bo.render_markdown(res)
    assert "\np50 speedup over dense:\n\n| provider | io | batch | p\\|1 | p2 |\n|---|---|---:|---:|---:|\n" in md
    one, eight = (res["results"][k]["speedup"] for k in (0, 1))
    assert f"| cpu | host | 1 | {one['p|1']['p50']:.2f}× | {one['p2']['p50']:.2f}× |" in md
    assert f"| cpu | host | 8 | {eight['p|1']['p50']:.2f}× | – |" in md
    assert bo.compared_labels(res) == ["p|1", "p2"]
    assert bo.speedup_table(make_result()) == []  # one model: the table alone, as before
    assert bo.speedup_table(make_result(labels=("a", "b", "c"), baseline=None)) == []  # no baseline: latencies


def test_markdown_without_baseline_and_duration_mode():
    res = make_result(settings=(("cpu", "host", 1),), labels=("only",), baseline=None)
    res["settings"].update(duration=2.5, iters=None)
    res["env"]["gpu"] = None
    res["warnings"] = []
    res["results"][0]["models"]["only"]["cov"] = 0.2
    md = bo.render_markdown(res)
    assert "| cpu | host | 1 | only |" in md and md.rstrip().count("–") >= 1
    assert "Speedup =" not in md and "Warnings" not in md and "GPU" not in md.splitlines()[0]
    assert "2.5 s per setting (≥ 10 rounds)" in md and "20.0% ⚠" in md


def test_markdown_reads_schema1_results():
    md = bo.render_markdown(schema1_result())
    assert "| cpu | host | 1 | dense |" in md and "| cuda | device | 1 | pruned |" in md
    assert "2.00× (mean 2.00×)" in md and "ONNX Runtime 1.19.0" in md and "Old CPU" in md


# --------------------------------------------------------------------------------------------- csv


def test_csv_round_trips_with_numbers():
    res = make_result()
    rows = list(csv.DictReader(io.StringIO(bo.render_csv(res))))
    assert len(rows) == 6 and list(rows[0]) == bo.CSV_FIELDS
    for row in rows:
        for key in ("p50_ms", "p90_ms", "p95_ms", "p99_ms", "mean_ms", "std_ms", "min_ms", "max_ms", "cov",
                    "throughput", "speedup_p50", "speedup_mean", "setup_s", "warmup_first_ms"):  # fmt: skip
            assert float(row[key]) > 0, key
        assert int(row["n"]) == 60 and int(row["batch"]) in (1, 8)
    src = res["results"][2]
    cuda_pruned = next(r for r in rows if r["provider"] == "cuda" and r["model"] == "pruned")
    assert cuda_pruned["io"] == "device"
    assert cuda_pruned["providers_used"] == "CUDAExecutionProvider+CPUExecutionProvider"
    assert float(cuda_pruned["p50_ms"]) == src["models"]["pruned"]["p50_ms"]  # full precision
    assert float(cuda_pruned["speedup_p50"]) == pytest.approx(src["speedup"]["pruned"]["p50"])
    dense = next(r for r in rows if r["model"] == "dense")
    assert dense["is_baseline"] == "True" and float(dense["speedup_p50"]) == 1.0


def test_csv_leaves_missing_values_empty():
    res = make_result(settings=(("cpu", "host", 1),), labels=("only",), baseline=None)
    (row,) = csv.DictReader(io.StringIO(bo.render_csv(res)))
    assert row["speedup_p50"] == "" and row["speedup_mean"] == "" and float(row["p50_ms"]) > 0
    rows = list(csv.DictReader(io.StringIO(bo.render_csv(schema1_result()))))
    assert len(rows) == 4 and rows[0]["p95_ms"] == "" and rows[0]["setup_s"] == ""
    assert [r["io"] for r in rows] == ["host", "host", "device", "device"]


# --------------------------------------------------------------------------------------------- plot


def _check_png(path):
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == PNG_MAGIC
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp file left
    return image


@pytest.mark.parametrize(
    ("settings", "labels"),
    [((("cpu", "host", 1),), ("dense",)), ((("cpu", "host", 1), ("cpu", "host", 8), ("cuda", "device", 1),
      ("cuda", "host", 1)), ("dense", "pruned", "tiny"))],
)  # fmt: skip
def test_plot_writes_a_png_atomically(tmp_path, settings, labels):
    path = tmp_path / "plots" / "latency.png"
    bo.plot_distributions(make_result(settings=settings, labels=labels), path)
    image = _check_png(path)
    if len(settings) > 3:  # two lines of subplots: taller than wide-per-column
        assert image.shape[0] > 600


def test_plot_handles_missing_samples_and_empty_results(tmp_path):
    res = schema1_result()  # no samples_ms at all
    bo.plot_distributions(res, tmp_path / "a" / "s1.png")
    _check_png(tmp_path / "a" / "s1.png")
    bo.plot_distributions({"schema": 2, "results": []}, tmp_path / "b" / "empty.png")
    _check_png(tmp_path / "b" / "empty.png")


def test_plot_failure_leaves_no_file(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken)
    with pytest.raises(RuntimeError):
        bo.plot_distributions(make_result(), tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------- gates

P50S = {("cpu", "host", 1): {"dense": 10.0, "pruned": 5.0}, ("cuda", "device", 8): {"dense": 3.0, "pruned": 2.0}}


def test_speedup_gate_boundary_and_messages():
    res = small_result(P50S)  # speedups 2.0 and 1.5
    assert bo.speedup_failures(res, None, "pruned") == []
    assert bo.speedup_failures(res, 1.5, "pruned") == []  # equal passes
    assert bo.speedup_failures(res, 1.0, "pruned") == []
    (fail,) = bo.speedup_failures(res, 1.5001, "pruned")
    assert fail == "cuda/device/batch 8: pruned p50 speedup 1.500× is below 1.5001×"
    assert len(bo.speedup_failures(res, 2.5, "pruned")) == 2
    res["results"][0]["speedup"]["pruned"]["p50"] = float("nan")
    assert "cpu/host/batch 1" in bo.speedup_failures(res, 1.0, "pruned")[0]


def test_speedup_gate_needs_a_baseline_and_a_known_label():
    with pytest.raises(BadInput, match="baseline"):
        bo.speedup_failures(small_result(P50S, baseline=None), 1.2, "pruned")
    with pytest.raises(BadInput, match="no model labelled 'model'"):
        bo.speedup_failures(small_result(P50S), 1.2, "model")
    with pytest.raises(BadInput):
        bo.speedup_failures(small_result(P50S), 1.2, "dense")
    res = small_result({("cpu", "host", 1): {"dense": 10.0, "pruned": 5.0}, ("cpu", "host", 2): {"dense": 9.0}})
    assert bo.speedup_failures(res, 1.2, "pruned") == ["cpu/host/batch 2: no p50 speedup of pruned over dense measured"]


def test_p50_gate_boundary():
    res = small_result(P50S)
    assert bo.p50_failures(res, None, "pruned") == []
    assert bo.p50_failures(res, 5.0, "pruned") == []  # equal passes
    assert bo.p50_failures(res, 4.999, "pruned") == ["cpu/host/batch 1: pruned p50 5.000 ms is above 4.999 ms"]
    assert len(bo.p50_failures(res, 1.0, "pruned")) == 2
    with pytest.raises(BadInput):
        bo.p50_failures(res, 1.0, "nope")


def test_regression_gate_boundary_and_notes():
    before = small_result(P50S)
    now = small_result({("cpu", "host", 1): {"dense": 12.0, "pruned": 5.5}, ("cpu", "host", 4): {"pruned": 1.0},
                        ("cuda", "device", 8): {"dense": 3.0}})  # fmt: skip
    failures, notes = bo.regression_failures(now, before, 10)  # pruned: 5.5 == 5.0 * 1.1 passes
    assert failures == ["cpu/host/batch 1 dense: p50 12.000 ms vs 10.000 ms before (+20.0%, allowed +10%)"]
    assert "cpu/host/batch 4 pruned: not in the previous result, not compared" in notes
    assert "cuda/device/batch 8 pruned: in the previous result, not measured now" in notes
    assert not any("environment" in n for n in notes)
    assert bo.regression_failures(now, before, 20) == ([], notes)  # 12.0 == 10.0 * 1.2 passes
    failures, _ = bo.regression_failures(now, before, 9.99)
    assert len(failures) == 2
    assert bo.regression_failures(before, before, 0) == ([], [])
    with pytest.raises(BadInput):
        bo.regression_failures(now, before, -1)


def test_regression_notes_environment_changes():
    before, now = make_result(), make_result(seed=1)
    assert bo.regression_failures(now, before, 50) == ([], [])
    now["env"]["cpu"]["model_name"] = "AMD EPYC"
    now["env"]["gpu"] = None
    now["env"]["onnxruntime"] = "1.21.0"
    _, notes = bo.regression_failures(now, before, 50)
    assert "environment differs: CPU was Intel(R) Xeon(R) Test CPU, now AMD EPYC" in notes
    assert "environment differs: GPU was NVIDIA H100 80GB HBM3, now none" in notes
    assert "environment differs: onnxruntime was 1.20.1, now 1.21.0" in notes


def test_regression_against_schema1_maps_io():
    before = schema1_result()  # cpu -> host, cuda -> device
    now = small_result({("cpu", "host", 1): {"dense": 10.0, "pruned": 6.0}, ("cuda", "device", 1): {"pruned": 1.0},
                        ("cuda", "host", 1): {"pruned": 9.0}})  # fmt: skip
    failures, notes = bo.regression_failures(now, before, 10)
    assert failures == ["cpu/host/batch 1 pruned: p50 6.000 ms vs 5.000 ms before (+20.0%, allowed +10%)"]
    assert "cuda/host/batch 1 pruned: not in the previous result, not compared" in notes
    assert "cuda/device/batch 1 dense: in the previous result, not measured now" in notes
    assert "environment differs: CPU was Old CPU, now X" in notes
    assert "environment differs: onnxruntime was 1.19.0, now 1.20.1" in notes
    assert not any("GPU" in n for n in notes)  # schema 1 does not record the GPU


def test_regression_with_nothing_in_common():
    before = small_result({("cpu", "host", 1): {"dense": 1.0}})
    now = small_result({("cpu", "host", 2): {"dense": 1.0}})
    failures, notes = bo.regression_failures(now, before, 5)
    assert failures == [] and notes[-1] == "nothing in common with the previous result: no row was compared"


def test_raise_on_failures():
    bo.raise_on_failures([])
    with pytest.raises(GateFailed, match=r"^a \(and 1 more\)$"):
        bo.raise_on_failures(["a", "b"])
    with pytest.raises(GateFailed, match=r"^a \(and 2 more; failed: m1, m2\)$"):
        bo.raise_on_failures(["a", "b", "c"], ["m1", "m2"])
    with pytest.raises(GateFailed, match=r"^a \(and 1 more\)$"):
        bo.raise_on_failures(["a", "b"], ["m1"])  # one model: its name is in the message already


def test_exit_codes_are_documented():
    assert set(bo.EXIT_CODES) == {0, 1, 2} and "2 = bad input" in bo.EXIT_CODES_HELP


# --------------------------------------------------------------------------------------------- previous


def test_load_previous_reads_schema1_and_schema2(tmp_path):
    for name, res in (("s2.json", make_result()), ("s1.json", schema1_result())):
        (tmp_path / name).write_text(json.dumps(res))
        assert bo.load_previous(tmp_path / name) == res


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "does not exist"),
        (b"\xff\xfe\x00garbage", "cannot read"),
        (b"{not json", "is not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"schema": 2, "kind": "compress.report", "results": []}', "kind is 'compress.report'"),
        (b'{"schema": 3, "kind": "compress.bench", "results": []}', "schema 3 is newer"),
        (b'{"kind": "compress.bench", "results": []}', "unknown schema"),
        (b'{"schema": 2, "kind": "compress.bench"}', "no results list"),
        (b'{"schema": 1, "results": [{"provider": "cpu", "batch": 1, "models": {"m": {}}}]}', "no p50_ms"),
        (b'{"schema": 1, "results": [{"batch": 1, "models": {}}]}', "no provider or batch"),
    ],
)
def test_load_previous_bad_files(tmp_path, content, match):
    path = tmp_path / "prev.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(BadInput, match=match) as info:
        bo.load_previous(path)
    assert "\n" not in str(info.value)


def test_load_previous_directory(tmp_path):
    with pytest.raises(BadInput, match="cannot read"):
        bo.load_previous(tmp_path)
