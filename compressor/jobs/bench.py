"""The bench job behind ``compress bench``: time model files side by side and judge the gates."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from compressor.config import BenchOptions, defaults
from compressor.errors import BadInput


def _csv(value: Any) -> list[str]:
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    return [str(v).strip() for v in items if str(v).strip()]


#: Every ``compress bench`` option (CLI and recipe ``bench:`` section) and its default.
BENCH_DEFAULTS: dict[str, Any] = defaults(BenchOptions)


def bench_models(models: dict[str, str], baseline: str | None, *, label: str | None = None,
                 trust_code: bool = False, **options: Any) -> dict[str, Any]:  # fmt: skip
    """Benchmark model files with options as the CLI/recipes give them (comma lists or YAML lists).

    ``label`` is the model the gates judge (default: the first non-baseline one). The gate outcome is in
    ``result["gates"]``; :func:`bench_gate` raises on it once the outputs are written.
    """
    from benchmarks.bench_output import load_previous
    from benchmarks.latency import bench

    unknown = sorted(set(options) - set(BENCH_DEFAULTS))
    if unknown:
        raise BadInput(f"unknown bench option(s): {', '.join(unknown)}")
    o = {**BENCH_DEFAULTS, **{k: v for k, v in options.items() if v is not None or k == "compare"}}
    if o["fail_below_speedup"] is not None and baseline is None:
        raise BadInput("--fail-below-speedup needs --baseline")
    if o["max_regression"] is None or float(o["max_regression"]) < 0:
        raise BadInput(f"--max-regression must be a percentage >= 0, got {o['max_regression']}")
    previous = load_previous(o["compare"]) if o["compare"] else None  # bad file: exit 2 before any timing
    result = bench(models, baseline=baseline, providers=_csv(o["provider"]), batches=_csv(o["batch"]),
                   threads=o["threads"], inter_threads=o["inter_threads"], warmup=o["warmup"],
                   iters=None if o["duration"] else o["iters"], min_iters=o["min_iters"], duration=o["duration"],
                   io=_csv(o["io"]), trt_fp16=o["trt_fp16"], trt_cache=_trt_cache(o["trt_cache"]),
                   trust_code=trust_code)  # fmt: skip
    label = label or next((k for k in models if k != baseline), baseline)
    result["gates"] = _gates(result, label, previous, o)
    return result


def _trt_cache(value: Any) -> str | None:
    """``auto``: the user cache directory; ``off``/``none``: no engine cache; else a directory."""
    text = str(value).strip()
    if text.lower() in ("off", "none", "false", ""):
        return None
    if text.lower() == "auto":
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        return str(base / "compress" / "tensorrt")
    return text


def _gates(result: dict[str, Any], label: str, previous: dict[str, Any] | None, o: dict[str, Any]) -> dict[str, Any]:
    from benchmarks.bench_output import p50_failures, regression_failures, speedup_failures

    failures, notes = [], []
    if o["fail_below_speedup"] is not None:
        failures += speedup_failures(result, float(o["fail_below_speedup"]), label)
    if o["fail_above_p50"] is not None:
        failures += p50_failures(result, float(o["fail_above_p50"]), label)
    if previous is not None:
        regressions, compare_notes = regression_failures(result, previous, float(o["max_regression"]))
        failures += regressions
        notes += compare_notes
    return {"label": label, "passed": not failures, "failures": failures, "notes": notes,
            "fail_below_speedup": o["fail_below_speedup"], "fail_above_p50": o["fail_above_p50"],
            "compare": o["compare"] and str(o["compare"]), "max_regression": float(o["max_regression"])}  # fmt: skip


def bench_gate(result: dict[str, Any]) -> None:
    """GateFailed (exit 1) naming the first failed bench gate (and how many failed)."""
    from benchmarks.bench_output import raise_on_failures

    raise_on_failures(result.get("gates", {}).get("failures") or [])
