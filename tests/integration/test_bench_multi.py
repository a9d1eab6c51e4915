"""``compress bench A B C --baseline D``: several models timed in one run, their labels, a speedup per model,
gates that judge every model, and ``--json`` (stdout) vs ``--json-out FILE``.

Real ONNX Runtime sessions on tiny ONNX files written with onnx.helper; no timing is asserted (only counts,
labels and the shape of the output), since the machine may be loaded.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import cli_process
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from compressor.cli import main
from compressor.errors import BadInput, GateFailed
from compressor.jobs.bench import auto_labels, bench_gate, model_labels

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}  # fmt: skip
FAST = ["--iters", "3", "--warmup", "0", "--threads", "1"]


def _conv(path: Path, channels: int) -> Path:
    """Conv(3->channels) + global average pool over a (N, 3, 8, 8) input: a tiny CNN, dynamic batch."""
    path.parent.mkdir(parents=True, exist_ok=True)
    weight = np.random.default_rng(channels).standard_normal((channels, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("GlobalAveragePool", ["c"], ["output"])],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", channels, 1, 1])],
        [numpy_helper.from_array(weight, "w")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two models with the same stem in different directories, a third one, and a dense baseline."""
    d = tmp_path_factory.mktemp("multi")
    return {"a": _conv(d / "a" / "pruned.onnx", 4), "b": _conv(d / "b" / "pruned.onnx", 8),
            "small": _conv(d / "small.onnx", 2), "dense": _conv(d / "dense.onnx", 16)}  # fmt: skip


def _invoke(args: list[str], code: int = 0) -> Any:
    result = CliRunner().invoke(main, ["bench", *args])
    assert result.exit_code == code, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}\n{result.exception!r}"
    return result


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return cli_process.run(["bench", *args], cwd=cwd, env=ENV, timeout=180)


# --------------------------------------------------------------------------------------------- one run, many models


def test_several_models_are_timed_in_one_run_each_with_its_speedup(files: dict[str, Path], tmp_path: Path) -> None:
    out, table = tmp_path / "bench.json", tmp_path / "bench.csv"
    result = _invoke([str(files["a"]), str(files["b"]), str(files["small"]), "--baseline", str(files["dense"]),
                      *FAST, "--json", "--json-out", str(out), "--csv", str(table)])  # fmt: skip
    data = json.loads(result.stdout)  # stdout is the JSON alone: no table
    assert "| provider |" not in result.stdout
    assert data == json.loads(out.read_text())
    labels = ["a/pruned", "b/pruned", "small"]  # same stems told apart by their directories
    assert list(data["models"]) == [*labels, "baseline"] and data["baseline"] == "baseline"
    assert data["models"]["small"]["onnx"] == str(files["small"])
    (row,) = data["results"]
    assert row["rounds"] == 3 and {st["n"] for st in row["models"].values()} == {3}  # interleaved: 3 rounds each
    assert list(row["speedup"]) == labels
    for label in labels:
        sp = row["speedup"][label]["p50"]
        assert sp == pytest.approx(row["models"]["baseline"]["p50_ms"] / row["models"][label]["p50_ms"])
        assert data["speedups"][label] == {"p50_min": sp, "p50_max": sp}
    assert data["gates"]["labels"] == labels and data["gates"]["passed"]
    records = list(csv.DictReader(io.StringIO(table.read_text())))
    assert [r["model"] for r in records] == ["baseline", *labels]
    assert all(float(r["speedup_p50"]) > 0 for r in records)


def test_the_table_has_a_speedup_column_per_model(files: dict[str, Path], tmp_path: Path) -> None:
    md = tmp_path / "bench.md"
    result = _invoke([str(files["small"]), str(files["a"]), "--label", "tiny", "--label", "four", "--baseline",
                      str(files["dense"]), *FAST, "--md", str(md)])  # fmt: skip
    assert result.stdout.startswith("ONNX Runtime") and result.stdout.strip() == md.read_text().strip()
    assert "| cpu | host | 1 | tiny |" in result.stdout and "| cpu | host | 1 | four |" in result.stdout
    assert "| provider | io | batch | tiny | four |" in result.stdout  # the per-model speedup columns


def test_without_a_baseline_only_latencies(files: dict[str, Path]) -> None:
    data = json.loads(_invoke([str(files["small"]), str(files["dense"]), *FAST, "--json"]).stdout)
    assert list(data["models"]) == ["small", "dense"] and data["baseline"] is None
    assert data["results"][0]["speedup"] == {} and data["speedups"] == {}


def test_one_model_keeps_its_labels(files: dict[str, Path]) -> None:
    """A lone MODEL is still 'model' (earlier --compare files match it); --label renames it."""
    data = json.loads(_invoke([str(files["small"]), "--baseline", str(files["dense"]), *FAST, "--json"]).stdout)
    assert set(data["results"][0]["models"]) == {"model", "baseline"} and data["gates"]["label"] == "model"
    named = json.loads(_invoke([str(files["small"]), "--label", "s", *FAST, "--json"]).stdout)
    assert list(named["models"]) == ["s"]


# --------------------------------------------------------------------------------------------- gates


def test_a_failed_gate_names_the_models_after_writing_the_outputs(files: dict[str, Path], tmp_path: Path) -> None:
    args = [str(files["a"]), str(files["small"]), "--label", "four", "--label", "two", "--baseline",
            str(files["dense"]), *FAST, "--fail-below-speedup", "1000", "--json-out", "out.json"]  # fmt: skip
    proc = _cli(args, tmp_path)
    assert proc.returncode == 1, proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert line.startswith("error: cpu/host/batch 1: four p50 speedup") and "below 1000×" in line
    assert "failed: four, two" in line
    gates = json.loads((tmp_path / "out.json").read_text())["gates"]
    assert not gates["passed"] and gates["failed_models"] == ["four", "two"] and len(gates["failures"]) == 2


def _result(speedups: dict[str, float]) -> dict[str, Any]:
    """A bench result of one setting: the baseline at 10 ms, each model at 10 / speedup ms."""
    models = {"baseline": {"p50_ms": 10.0}} | {k: {"p50_ms": 10.0 / v} for k, v in speedups.items()}
    row = {"provider": "cpu", "io": "host", "batch": 1, "models": models,
           "speedup": {k: {"p50": v, "mean": v} for k, v in speedups.items()}}  # fmt: skip
    return {"schema": 2, "kind": "compress.bench", "baseline": "baseline", "results": [row]}


def test_the_speedup_gate_judges_every_model_and_names_the_one_that_failed() -> None:
    from compressor.jobs.bench import BENCH_DEFAULTS, _gates

    result = _result({"fast": 2.0, "slow": 1.1, "faster": 3.0})
    result["gates"] = _gates(result, ["fast", "slow", "faster"], None, {**BENCH_DEFAULTS, "fail_below_speedup": 1.5})
    assert result["gates"]["failed_models"] == ["slow"]
    with pytest.raises(GateFailed, match=r"^cpu/host/batch 1: slow p50 speedup 1\.100× is below 1\.5×$"):
        bench_gate(result)
    result["gates"] = _gates(result, ["fast", "slow", "faster"], None, {**BENCH_DEFAULTS, "fail_above_p50": 4.0})
    assert result["gates"]["failed_models"] == ["fast", "slow"]  # 5 and 9.1 ms; the baseline is not judged
    with pytest.raises(GateFailed, match=r"fast p50 5\.000 ms is above 4 ms \(and 1 more; failed: fast, slow\)$"):
        bench_gate(result)


# --------------------------------------------------------------------------------------------- labels and bad input


def test_auto_labels(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "r20"
    run.mkdir(parents=True)
    assert auto_labels([str(run), str(tmp_path / "x.onnx")]) == ["r20", "x"]
    assert auto_labels([str(run) + "/", str(tmp_path / "r20.onnx")]) == ["r20", "r20.onnx"]
    assert auto_labels(["a/pruned.onnx", "b/pruned.onnx", "c.onnx"]) == ["a/pruned", "b/pruned", "c"]
    assert auto_labels(["net.onnx", "net.pt"]) == ["net.onnx", "net.pt"]
    assert auto_labels(["d/baseline.onnx"], {"baseline"}) == ["baseline.onnx"]
    with pytest.raises(BadInput, match="are the same model"):
        auto_labels(["m.onnx", "./m.onnx"])


def test_model_labels() -> None:
    assert model_labels(["p.onnx"], (), "d.onnx") == {"model": "p.onnx", "baseline": "d.onnx"}
    assert model_labels(["p.onnx", "q.onnx"], ("x", "y")) == {"x": "p.onnx", "y": "q.onnx"}
    assert model_labels(["x/m.onnx", "y/m.onnx"], (), "d.onnx") == {"x/m": "x/m.onnx", "y/m": "y/m.onnx",
                                                                     "baseline": "d.onnx"}  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--label", "only-one"], "--label given 1 time(s) for 2 MODEL(s)"),
        (["--label", "x", "--label", "x"], "--label 'x' is given more than once"),
        (["--label", "x", "--label", "baseline"], "--label 'baseline' is the --baseline model's label"),
        (["--label", "x", "--label", " "], "--label must not be empty"),
        (["--json", "old.json"], "old.json is a JSON file, not a model (--json takes no value"),
    ],
)
def test_label_errors_are_one_line_exit_2(files: dict[str, Path], tmp_path: Path, extra: list[str],
                                          message: str) -> None:  # fmt: skip
    out = tmp_path / "out.json"
    result = _invoke([str(files["small"]), str(files["a"]), "--baseline", str(files["dense"]), *FAST,
                      "--json-out", str(out), *extra], code=2)  # fmt: skip
    assert result.stdout == "" and result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert not out.exists()  # nothing timed, nothing written


def test_json_is_stdout_only_and_json_out_writes_the_file(files: dict[str, Path], tmp_path: Path) -> None:
    """A real process: stdout holds exactly one JSON document (no table, no ONNX Runtime banner)."""
    proc = _cli([str(files["small"]), str(files["a"]), *FAST, "--json"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert list(json.loads(proc.stdout)["models"]) == ["small", "pruned"] and not list(tmp_path.iterdir())
    bad = _cli([str(files["small"]), str(files["a"]), "--label", "one", *FAST, "--json-out", "r.json"], tmp_path)
    assert bad.returncode == 2 and bad.stdout == "" and bad.stderr.startswith("error: --label given 1 time(s)")
    assert bad.stderr.count("\n") == 1 and not list(tmp_path.iterdir())
