"""``compress prune --target-latency``: parsing, the search on fake latency curves, and real end-to-end runs.

The end-to-end runs time real ONNX Runtime sessions of ``cifar:resnet20`` (3x32x32, ~0.4 ms dense with one
thread): a few seconds each. They use one ORT thread (the machine may be shared) and, in the CLI run, a
tolerance wider than the default so that a burst of background load cannot fail the suite; the direct run
checks the default 10%.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from compressor.budget import Budget
from compressor.cli import main
from compressor.config import LatencySpec, parse_latency
from compressor.errors import BadInput, GateFailed
from compressor.graph import PruningGraph
from compressor.jobs.prune import PruneConfig
from compressor.models import build_model
from compressor.search.latency_target import (
    SEARCH_FILE,
    Meter,
    find_drop,
    proxy_importance,
    search_drop,
    search_for_run,
)

MODEL, SHAPE = "cifar:resnet20", (3, 32, 32)
DATA = "synthetic:3x32x32:10:64:32"
FAST = ["--latency-threads", "1", "--latency-duration", "0.3"]


# --------------------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "ms"),
    [("4ms", 4.0), ("4", 4.0), ("0.004s", 4.0), ("500us", 0.5), ("500µs", 0.5), (" 2.5 MS ", 2.5), ("1e-3s", 1.0),
     (3, 3.0), (0.25, 0.25)],
)  # fmt: skip
def test_parse_latency(text: Any, ms: float) -> None:
    assert parse_latency(text) == pytest.approx(ms)


@pytest.mark.parametrize("text", ["", "ms", "4 parsecs", "-4ms", "0", "0s", "nan", "inf", "4 m s", None, True])
def test_parse_latency_rejects(text: Any) -> None:
    with pytest.raises(BadInput, match="--target-latency"):
        parse_latency(text)


def _cfg(**kw: Any) -> PruneConfig:
    return PruneConfig(model=MODEL, out="unused", **kw)


def test_target_latency_is_exclusive_and_validated() -> None:
    assert _cfg(target_latency="4ms").target() == ("latency", 4.0)
    assert _cfg(target_latency=4).target() == ("latency", 4.0)  # a YAML number: milliseconds
    with pytest.raises(BadInput, match="exactly one"):
        _cfg(target_latency="4ms", target_flops=0.5).target()
    for bad, match in [({"latency_provider": "gpu"}, "--latency-provider"), ({"latency_batch": 0}, "--latency-batch"),
                       ({"latency_threads": 0}, "--latency-threads"), ({"latency_tolerance": 1.5}, "tolerance"),
                       ({"latency_duration": 0}, "--latency-duration")]:  # fmt: skip
        with pytest.raises(BadInput, match=match):
            _cfg(target_latency="4ms", **bad).target()


def test_proxy_importance() -> None:
    assert proxy_importance("l1", 0, 1) == "l1"
    assert proxy_importance("bn-scale", 0, 1) == "bn-scale"
    assert proxy_importance("l1", 3, 1) == "l2"  # trained: a proxy
    assert proxy_importance("psap", 0, 1) == "l2"
    assert proxy_importance("taylor", 0, 1) == "l2"


# --------------------------------------------------------------------------------------------- search (fake)


class FakeModel:
    """Latency = 1 ms * (0.25 + 0.75 * kept MACs), on architectures quantized to 1% drops, with scripted noise."""

    def __init__(self, slow: dict[int, float] | None = None, step: float = 0.01) -> None:
        self.slow, self.step, self.calls = dict(slow or {}), step, 0
        self.points: dict[float, dict[str, Any]] = {}

    def __call__(self, drop: float, again: bool) -> dict[str, Any]:
        arch = round(min(drop, 0.9) / self.step) * self.step
        if arch in self.points and not again:
            return self.points[arch]
        self.calls += 1
        ms = (0.25 + 0.75 * (1 - arch)) * self.slow.pop(self.calls, 1.0)
        point = self.points.setdefault(arch, {"requested_drop": drop, "flops_drop": arch, "runs": []})
        point["runs"].append(ms)
        point["latency_ms"] = min(point["runs"])
        return point


def test_search_lands_within_half_the_tolerance() -> None:
    fake, spec = FakeModel(), LatencySpec(target_ms=0.6)
    res = search_drop(fake, spec, {"latency_ms": 1.0}, 0.9)
    assert abs(res["searched_ms"] - 0.6) <= 0.03 + 1e-9
    assert res["timings"] == 3 and fake.calls == 3  # the top, one interpolated guess, its confirmation
    assert res["curve"][0]["flops_drop"] == 0.0 and len(res["curve"]) == 1 + len(fake.points)
    assert max(len(p["runs"]) for p in res["curve"][1:]) == 2
    assert res["chosen_flops_drop"] == pytest.approx(round((1 - (0.6 - 0.25) / 0.75) / 0.01) * 0.01, abs=0.011)


def test_search_retimes_an_outlier() -> None:
    # the second timing (the first guess) runs twice as slow: slower than the dense model, so it is timed again
    fake, spec = FakeModel(slow={2: 2.0}), LatencySpec(target_ms=0.6)
    lines: list[str] = []
    res = search_drop(fake, spec, {"latency_ms": 1.0}, 0.9, log=lines.append)
    assert any("timed again" in line for line in lines)
    assert abs(res["searched_ms"] - 0.6) <= 0.06


def test_search_stops_on_a_coarse_architecture_grid() -> None:
    fake, spec = FakeModel(step=0.2), LatencySpec(target_ms=0.6, tolerance=0.05)  # no architecture within 2.5%
    res = search_drop(fake, spec, {"latency_ms": 1.0}, 0.9)
    assert res["timings"] <= 8 and spec.met(res["searched_ms"])
    assert res["searched_ms"] == pytest.approx(0.25 + 0.75 * 0.4)  # 0.55 ms: the closest architecture meeting it


def test_search_errors() -> None:
    with pytest.raises(BadInput, match="already runs in 1.000 ms"):
        search_drop(FakeModel(), LatencySpec(target_ms=1.2), {"latency_ms": 1.0}, 0.9)
    with pytest.raises(GateFailed, match="out of reach.*0.325 ms"):
        search_drop(FakeModel(), LatencySpec(target_ms=0.2), {"latency_ms": 1.0}, 0.9)
    # the top drop within the tolerance but above the target: it is the answer
    res = search_drop(FakeModel(), LatencySpec(target_ms=0.3), {"latency_ms": 1.0}, 0.9)
    assert res["chosen_drop"] == 0.9 and res["timings"] == 1


def test_resume_reuses_the_saved_search(tmp_path: Path) -> None:
    saved = {"chosen_drop": 0.42, "searched_ms": 1.0, "dense_ms": 2.0, "curve": []}
    (tmp_path / SEARCH_FILE).write_text(json.dumps(saved))
    cfg = SimpleNamespace(resume=True)
    assert search_for_run(cfg, tmp_path, None, None, None, SHAPE, print) == saved  # type: ignore[arg-type]
    (tmp_path / SEARCH_FILE).write_text("{")
    with pytest.raises(BadInput, match="unreadable"):
        search_for_run(cfg, tmp_path, None, None, None, SHAPE, print)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------- real timings


@pytest.fixture(scope="module")
def dense_ms() -> float:
    model = build_model(MODEL, num_classes=10, in_channels=3)
    return Meter(LatencySpec(target_ms=1.0, threads=1, duration=0.3), SHAPE)(model)


class CostMeter(Meter):
    """A deterministic stand-in for the wall clock: latency = 0.2 ms + 1e-8 ms per MAC of the exported model,
    so the search is tested without asserting anything about this machine's timings (which a busy box breaks)."""

    def __init__(self, spec: LatencySpec) -> None:
        super().__init__(spec, SHAPE)
        self.macs: dict[str, float] = {}

    def export(self, model: torch.nn.Module, path: Path) -> Path:
        from compressor.graph import count_ops_and_params

        self.macs[str(path)] = count_ops_and_params(model, SHAPE)[0]
        return path

    def time(self, path: Path) -> float:
        return 0.2 + 1e-8 * self.macs[str(path)]


def test_find_drop_meets_the_default_tolerance() -> None:
    """The acceptance: the searched model, timed again, lands within 10% of the target."""
    model = build_model(MODEL, num_classes=10, in_channels=3)
    graph = PruningGraph(model, torch.zeros(1, *SHAPE), round_to=8, arch=MODEL)
    dense_ms = CostMeter(LatencySpec(target_ms=1.0))(model)
    spec = LatencySpec(target_ms=0.7 * dense_ms, threads=1, duration=0.3)
    meter = CostMeter(spec)
    res = find_drop(graph, Budget(graph), model, SHAPE, spec, meter=meter)
    assert abs(res["searched_ms"] - spec.target_ms) <= 0.1 * spec.target_ms, res["curve"]
    assert len(res["curve"]) >= 3 and res["curve"][0]["flops_drop"] == 0.0
    slim, _ = graph.materialize(graph.legalize(_masks(graph, res["chosen_drop"])), model)
    again = meter(slim)
    assert abs(again - spec.target_ms) <= 0.1 * spec.target_ms, (again, res["curve"])


def _masks(graph: PruningGraph, drop: float) -> dict[int, torch.Tensor]:
    from compressor.search.latency_target import candidate_masks, proxy_scores

    return candidate_masks(graph, Budget(graph), proxy_scores(graph), drop, 0.8)


def _prune(args: list[str], code: int) -> Any:
    result = CliRunner().invoke(main, ["prune", "--model", MODEL, "--data", DATA, "--epochs", "0", "--method", "l2",
                                       "--device", "cpu", *args], catch_exceptions=True)  # fmt: skip
    assert result.exit_code == code, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}\n{result.exception!r}"
    return result


def test_cli_target_latency(tmp_path: Path, dense_ms: float) -> None:
    """The real clock decides whether the final model meets the target (a loaded machine may miss it): the run,
    its report and the gate must agree either way; only the decision depends on machine speed."""
    target = 0.7 * dense_ms
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["prune", "--model", MODEL, "--data", DATA, "--epochs", "0", "--method", "l2",
                                    "--device", "cpu", "--target-latency", f"{target * 1000:.1f}us",
                                    "--latency-tolerance", "0.25", *FAST, "--out", str(out)])  # fmt: skip
    assert res.exit_code in (0, 1), f"stdout:\n{res.stdout}\nstderr:\n{res.stderr}\n{res.exception!r}"
    assert "[latency] dense:" in res.stderr
    report = json.loads((out / "report.json").read_text())
    lat = report["latency"]
    assert lat["target_ms"] == pytest.approx(target, rel=1e-3) and lat["provider"] == "cpu" and lat["batch"] == 1
    assert lat["met"] == (lat["final_ms"] <= target * 1.25) == (res.exit_code == 0)
    if res.exit_code == 0:
        assert "latency" in res.stdout
    else:
        assert "target latency" in res.stderr and "not met" in res.stderr
    # the dense point and at least one probe: how many more the search takes depends on the clock (a probe that
    # lands within the tolerance ends it; a CPU hog made one land at once), so no count beyond that is asserted
    assert len(lat["curve"]) >= 2 and lat["curve"][0]["flops_drop"] == 0.0 and lat["curve"][1]["flops_drop"] > 0
    assert all(p["latency_ms"] > 0 and p["macs"] > 0 for p in lat["curve"])
    assert report["target"] == {**report["target"], "metric": "flops", "value": lat["chosen_drop"], "met": True}
    saved = json.loads((out / SEARCH_FILE).read_text())
    assert saved["chosen_drop"] == lat["chosen_drop"] and saved["importance"] == "l2"
    assert "## Latency target" in (out / "report.md").read_text()
    assert yaml_value(out, "target_latency") == f"{target * 1000:.1f}us"


def yaml_value(out: Path, key: str) -> Any:
    import yaml

    return yaml.safe_load((out / "config.yaml").read_text())[key]


def test_cli_dense_already_fast_enough(tmp_path: Path) -> None:
    res = _prune(["--target-latency", "10s", *FAST, "--quiet", "--out", str(tmp_path / "run")], 2)
    assert "already runs in" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_cli_unreachable_latency(tmp_path: Path) -> None:
    res = _prune(["--target-latency", "1us", *FAST, "--quiet", "--out", str(tmp_path / "run")], 1)
    assert "out of reach" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("args", "match"),
    [(["--target-latency", "4ms", "--target-flops", "0.5"], "exactly one"),
     (["--target-latency", "fast"], "--target-latency"),
     (["--target-latency", "4ms", "--latency-provider", "npu"], "--latency-provider")],
)  # fmt: skip
def test_cli_bad_latency_options(tmp_path: Path, args: list[str], match: str) -> None:
    res = _prune([*args, "--out", str(tmp_path / "run")], 2)
    assert match in res.stderr
    assert not (tmp_path / "run").exists()
