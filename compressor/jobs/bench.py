"""The bench job behind ``compress bench``: time model files side by side and judge the gates."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from compressor.config import BenchOptions, defaults
from compressor.errors import BadInput

#: The label of ``--baseline``, and of MODEL when it is the only one and has no ``--label`` (the labels of
#: earlier bench results, which ``--compare`` matches by).
BASELINE_LABEL, SINGLE_LABEL = "baseline", "model"


def _csv(value: Any) -> list[str]:
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    return [str(v).strip() for v in items if str(v).strip()]


#: Every ``compress bench`` option (CLI and recipe ``bench:`` section) and its default.
BENCH_DEFAULTS: dict[str, Any] = defaults(BenchOptions)


# --------------------------------------------------------------------------------------------- labels


def model_labels(paths: Sequence[str], labels: Sequence[str] = (), baseline: str | None = None) -> dict[str, str]:
    """Label -> path of the MODEL arguments in order, then the baseline (labelled ``baseline``).

    ``labels`` (``--label``, one per MODEL) win; else one MODEL is ``model`` and several get :func:`auto_labels`.
    BadInput for no MODEL, a count mismatch, an empty, repeated or reserved label.
    """
    if not paths:
        raise BadInput("give at least one MODEL to bench")
    for path in paths:
        _check_model_argument(path)
    reserved = {BASELINE_LABEL} if baseline else set()
    if labels:
        chosen = _given_labels(paths, labels, reserved)
    else:
        chosen = [SINGLE_LABEL] if len(paths) == 1 else auto_labels(paths, reserved)
    models = dict(zip(chosen, (str(p) for p in paths), strict=True))
    return {**models, **({BASELINE_LABEL: str(baseline)} if baseline else {})}


def _check_model_argument(path: str) -> None:
    """``--json`` took a value before it became a flag: say so instead of loading ``-`` or ``out.json``."""
    if str(path) == "-":
        raise BadInput("'-' is not a model: --json is a flag (the result JSON on stdout); --json-out FILE writes it")
    if Path(path).suffix.lower() == ".json":
        raise BadInput(f"{path} is a JSON file, not a model (--json takes no value; to write the result there, "
                       f"use --json-out {path})")  # fmt: skip


def _given_labels(paths: Sequence[str], labels: Sequence[str], reserved: set[str]) -> list[str]:
    if len(labels) != len(paths):
        raise BadInput(f"--label given {len(labels)} time(s) for {len(paths)} MODEL(s): give one per MODEL, in order")
    chosen = [str(label).strip() for label in labels]
    if any(not label for label in chosen):
        raise BadInput("--label must not be empty")
    if taken := sorted(set(chosen) & reserved):
        raise BadInput(f"--label {taken[0]!r} is the --baseline model's label: choose another")
    if repeated := sorted({label for label in chosen if chosen.count(label) > 1}):
        raise BadInput(f"--label {repeated[0]!r} is given more than once: labels must be unique")
    return chosen


def _label_options(path: str) -> list[str]:
    """Ever more specific names of a model argument: stem, file name, then with 1, 2, ... parent directories."""
    p = Path(os.path.abspath(path))
    stem, name = (p.name, p.name) if p.is_dir() else (p.stem, p.name)
    parents = [q.name for q in p.parents if q.name]
    options = [stem, name]
    for k in range(1, len(parents) + 1):
        prefix = "/".join(reversed(parents[:k]))
        options += [f"{prefix}/{stem}", f"{prefix}/{name}"]
    return options


def auto_labels(paths: Sequence[str], reserved: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """Labels from the file stems (a run directory: its name); clashing ones take parent directories until
    unique (``a/pruned``, ``b/pruned``), or the suffix (``net.onnx``, ``net.pt``). BadInput for a path given twice."""
    options = [_label_options(p) for p in paths]
    level = [0] * len(paths)
    while True:
        labels = [opts[min(k, len(opts) - 1)] for opts, k in zip(options, level, strict=True)]
        clash = [i for i, label in enumerate(labels) if label in reserved or labels.count(label) > 1]
        if not clash:
            return labels
        movable = [i for i in clash if level[i] < len(options[i]) - 1]
        if not movable:
            first = clash[0]
            twin = next((i for i in clash if i != first and labels[i] == labels[first]), None)
            if twin is None:
                raise BadInput(f"{paths[first]}: no label other than {labels[first]!r} found; give --label")
            raise BadInput(f"{paths[first]} and {paths[twin]} are the same model: give each model once")
        for i in movable:
            level[i] += 1


# --------------------------------------------------------------------------------------------- bench


def bench_models(models: dict[str, str], baseline: str | None, *, labels: Sequence[str] | None = None,
                 trust_code: bool = False, **options: Any) -> dict[str, Any]:  # fmt: skip
    """Benchmark model files with options as the CLI/recipes give them (comma lists or YAML lists).

    ``labels`` are the models the gates judge (default: every one but the baseline). The gate outcome is in
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
    judged = list(labels or [k for k in models if k != baseline] or [baseline])
    result["gates"] = _gates(result, judged, previous, o)
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


def _gates(result: dict[str, Any], labels: list[str], previous: dict[str, Any] | None,
           o: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """The speedup and p50 gates for every judged model, and the comparison with a previous result."""
    from benchmarks.bench_output import p50_failures, regression_failures, speedup_failures

    failures, notes, failed = [], [], []
    for label in labels:
        mine = []
        if o["fail_below_speedup"] is not None:
            mine += speedup_failures(result, float(o["fail_below_speedup"]), label)
        if o["fail_above_p50"] is not None:
            mine += p50_failures(result, float(o["fail_above_p50"]), label)
        failures += mine
        failed += [label] if mine else []
    if previous is not None:
        regressions, compare_notes = regression_failures(result, previous, float(o["max_regression"]))
        failures += regressions
        notes += compare_notes
    return {"label": labels[0], "labels": labels, "passed": not failures, "failures": failures,
            "failed_models": failed, "notes": notes, "fail_below_speedup": o["fail_below_speedup"],
            "fail_above_p50": o["fail_above_p50"], "compare": o["compare"] and str(o["compare"]),
            "max_regression": float(o["max_regression"])}  # fmt: skip


def bench_gate(result: dict[str, Any]) -> None:
    """GateFailed (exit 1) naming the first failed bench gate (how many failed, and which models)."""
    from benchmarks.bench_output import raise_on_failures

    gates = result.get("gates", {})
    raise_on_failures(gates.get("failures") or [], gates.get("failed_models") or [])
