"""Latency harness behind ``compress bench``: ONNX Runtime sessions per provider, interleaved timing.

For every (provider, batch) all models are warmed up, then timed round-robin (one run of each model
per round, the starting model rotating) so that clock/thermal drift and background load hit every
model alike. GPU providers use IO binding with the input resident on the device and outputs bound to
the device, so host<->device copies are not timed.

Provider checks: ``onnxruntime-gpu`` lists CUDA/TensorRT as available on machines without a GPU or
without the CUDA/TensorRT libraries; a session then either raises or silently runs on CPU. Both are
reported as ``GateFailed("provider X unavailable: ...")`` -- a CPU number is never labelled CUDA.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compressor.errors import BadInput, GateFailed, one_line

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
#: What a session for each provider is created with (later entries take unsupported nodes).
PROVIDER_CHAIN = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
GPU_PROVIDERS = ("cuda", "tensorrt")
SCHEMA = 1
#: ORT's intra-op threads spin-wait after each run; with interleaved models an idle session's
#: spinning threads would steal cores from the session being timed, so spinning is disabled.
SESSION_CONFIG = {"session.intra_op.allow_spinning": "0"}
UNSTABLE_COV = 0.10

_DTYPES = {1: np.float32, 10: np.float16, 11: np.float64}  # onnx.TensorProto FLOAT, FLOAT16, DOUBLE


@dataclass
class _Input:
    name: str
    dtype: type
    dims: list[int | None]  # None: symbolic / unknown


@dataclass
class _Model:
    label: str
    path: Path
    inputs: list[_Input]


# --------------------------------------------------------------------------------------------- checks


def _inspect(label: str, path: str | os.PathLike[str]) -> _Model:
    from exporters.onnx import load_model

    p = Path(path)
    proto = load_model(p)
    initializers = {init.name for init in proto.graph.initializer}
    graph_inputs = [i for i in proto.graph.input if i.name not in initializers]
    if proto.ir_version <= 0 or not proto.graph.node or not graph_inputs:
        raise BadInput(f"{p} is not a loadable ONNX model (no graph, nodes or inputs)")
    inputs = []
    for inp in graph_inputs:
        ttype = inp.type.tensor_type
        if ttype.elem_type not in _DTYPES:
            raise BadInput(f"{p}: input {inp.name!r} is not a float tensor; only float inputs can be benched")
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in ttype.shape.dim]
        if not dims:
            raise BadInput(f"{p}: input {inp.name!r} has no shape; expected (N, C, H, W)-like input")
        if any(d is None for d in dims[1:]):
            raise BadInput(f"{p}: input {inp.name!r} has dynamic non-batch dims {dims}; only batch may vary")
        inputs.append(_Input(inp.name, _DTYPES[ttype.elem_type], dims))
    return _Model(label, p, inputs)


def _provider_keys(providers: Sequence[str] | str) -> list[str]:
    if isinstance(providers, str):
        providers = [s for s in providers.split(",")]
    by_full = {v.lower(): k for k, v in PROVIDERS.items()}
    keys: list[str] = []
    for raw in providers:
        name = str(raw).strip().lower()
        key = name if name in PROVIDERS else by_full.get(name)
        if key is None:
            raise BadInput(f"unknown provider {raw!r}; choose from {', '.join(PROVIDERS)}")
        if key not in keys:
            keys.append(key)
    if not keys:
        raise BadInput("no provider given")
    return keys


def _feeds(model: _Model, batch: int, seed: int) -> dict[str, np.ndarray]:
    feeds = {}
    for k, inp in enumerate(model.inputs):
        if inp.dims[0] is not None and inp.dims[0] != batch:
            raise BadInput(
                f"{model.path}: input {inp.name!r} has a static batch of {inp.dims[0]}, cannot bench batch "
                f"{batch} (export with a dynamic batch)"
            )
        shape = [batch, *inp.dims[1:]]
        rng = np.random.default_rng([seed, batch, k])  # same data for every model of the same shape
        feeds[inp.name] = rng.standard_normal(shape, dtype=np.float32).astype(inp.dtype, copy=False)
    return feeds


# --------------------------------------------------------------------------------------------- sessions


def _session_options(threads: int | None) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.inter_op_num_threads = 1
    if threads:
        opts.intra_op_num_threads = threads
    for key, value in SESSION_CONFIG.items():
        opts.add_session_config_entry(key, value)
    return opts


def _session(model: _Model, key: str, threads: int | None) -> Any:
    import onnxruntime as ort

    wanted = PROVIDERS[key]
    try:
        # ORT prints its own "EP Error ... falling back" banner on stdout; keep stdout clean for --json,
        # and disable the silent retry on CPU so a failing GPU provider raises here.
        with contextlib.redirect_stdout(sys.stderr):
            sess = ort.InferenceSession(
                os.fspath(model.path),
                _session_options(threads),
                providers=PROVIDER_CHAIN[key],
                enable_fallback=0,
            )
    except Exception as exc:
        if key in GPU_PROVIDERS:
            raise GateFailed(f"provider {key} unavailable: {one_line(exc)}") from exc
        raise BadInput(f"{model.path}: onnxruntime cannot load it ({one_line(exc)})") from exc
    got = sess.get_providers()
    if not got or got[0] != wanted:
        raise GateFailed(
            f"provider {key} unavailable: the {model.label} session fell back to "
            f"{', '.join(got) or 'nothing'} (no usable GPU or CUDA/TensorRT libraries; see onnxruntime's log)"
        )
    return sess


def _runner(sess: Any, feeds: dict[str, np.ndarray], key: str) -> Callable[[], None]:
    """A zero-argument callable doing one inference; device-resident IO on GPU providers."""
    if key not in GPU_PROVIDERS:

        def run_cpu() -> None:
            sess.run(None, feeds)

        return run_cpu

    import onnxruntime as ort

    binding = sess.io_binding()
    device_inputs = [ort.OrtValue.ortvalue_from_numpy(arr, "cuda", 0) for arr in feeds.values()]
    for name, value in zip(feeds, device_inputs, strict=True):
        binding.bind_ortvalue_input(name, value)
    names = [o.name for o in sess.get_outputs()]
    for name in names:
        binding.bind_output(name, "cuda", 0)
    state = {"outputs_pinned": False}

    def run_gpu() -> None:
        sess.run_with_iobinding(binding)
        binding.synchronize_outputs()
        if not state["outputs_pinned"]:  # reuse the first run's device buffers: no per-run allocation
            for name, value in zip(names, binding.get_outputs(), strict=True):
                binding.bind_ortvalue_output(name, value)
            state["outputs_pinned"] = True

    run_gpu.device_inputs = device_inputs  # type: ignore[attr-defined]  # keep device inputs alive
    return run_gpu


# --------------------------------------------------------------------------------------------- stats


def _stats(samples_ns: Sequence[int], batch: int) -> dict[str, float | int]:
    ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
    mean = float(ms.mean())
    std = float(ms.std(ddof=1)) if ms.size > 1 else 0.0
    p50, p90, p99 = (float(v) for v in np.percentile(ms, [50, 90, 99]))
    return {
        "n": int(ms.size),
        "mean_ms": mean,
        "std_ms": std,
        "p50_ms": p50,
        "p90_ms": p90,
        "p99_ms": p99,
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
        "throughput": batch * 1000.0 / mean if mean > 0 else float("inf"),
        "cov": std / mean if mean > 0 else 0.0,
    }


def _cpu_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "processor": platform.processor() or platform.machine(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
    }
    if hasattr(os, "sched_getaffinity"):
        info["usable_cpus"] = len(os.sched_getaffinity(0))
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["model_name"] = line.split(":", 1)[1].strip()
                break
    return info


# --------------------------------------------------------------------------------------------- bench


def check_options(providers: Sequence[str] | str, batches: Sequence[Any], threads: int | None = None,
                  warmup: int = 10, iters: int | None = 100, duration: float | None = None) -> None:  # fmt: skip
    """Validate bench options without loading anything (so a recipe can fail before it starts work)."""
    _provider_keys(providers)
    _validate_numbers(batches, threads, warmup, iters, duration)


def _validate_numbers(batches, threads, warmup, iters, duration) -> list[int]:
    try:
        batch_list = [int(b) for b in batches]
    except (TypeError, ValueError):
        raise BadInput(f"batch sizes must be integers, got {batches!r}") from None
    if not batch_list or any(b < 1 for b in batch_list):
        raise BadInput(f"batch sizes must be >= 1, got {batch_list}")
    if threads is not None and int(threads) < 1:
        raise BadInput(f"threads must be >= 1, got {threads}")
    if int(warmup) < 0:
        raise BadInput(f"warmup must be >= 0, got {warmup}")
    if duration is not None:
        if not float(duration) > 0:
            raise BadInput(f"duration must be > 0 seconds, got {duration}")
    elif iters is None or int(iters) < 1:
        raise BadInput(f"iters must be >= 1 (or give a duration), got {iters}")
    return list(dict.fromkeys(batch_list))


def _measure(
    runners: dict[str, Callable[[], None]], iters: int | None, duration: float | None
) -> tuple[dict[str, list[int]], int, float]:
    labels = list(runners)
    samples: dict[str, list[int]] = {label: [] for label in labels}
    clock = time.perf_counter_ns
    deadline = None if duration is None else clock() + int(duration * 1e9)
    start, rounds = clock(), 0
    while True:
        for j in range(len(labels)):
            label = labels[(rounds + j) % len(labels)]
            run = runners[label]
            t0 = clock()
            run()
            samples[label].append(clock() - t0)
        rounds += 1
        if deadline is not None:
            if clock() >= deadline:
                break
        elif rounds >= iters:  # type: ignore[operator]
            break
    return samples, rounds, (clock() - start) / 1e9


def bench(
    models: Mapping[str, str | os.PathLike[str]],
    *,
    baseline: str | None = None,
    providers: Sequence[str] = ("cpu",),
    batches: Sequence[int] = (1,),
    threads: int | None = None,
    warmup: int = 10,
    iters: int | None = 100,
    duration: float | None = None,
    seed: int = 0,
) -> dict:
    """Time ``models`` (label -> ONNX path) on each provider and batch size; see the module docstring.

    Raises ``BadInput`` for unusable files/arguments and ``GateFailed`` when a requested provider
    cannot actually run (not built in, or the session fell back to another provider).
    """
    import onnxruntime as ort

    if not models:
        raise BadInput("no model to bench")
    if baseline is not None and baseline not in models:
        raise BadInput(f"baseline {baseline!r} is not one of the models ({', '.join(models)})")
    batch_list = _validate_numbers(batches, threads, warmup, iters, duration)
    keys = _provider_keys(providers)
    infos = [_inspect(str(label), path) for label, path in models.items()]
    for info in infos:  # static-batch mismatches are bad input, found before any timing
        for batch in batch_list:
            _feeds(info, batch, seed)

    available = list(ort.get_available_providers())
    for key in keys:
        if PROVIDERS[key] not in available:
            raise GateFailed(
                f"provider {key} unavailable: {PROVIDERS[key]} is not in this onnxruntime build "
                f"(available: {', '.join(available)})"
            )
    # All sessions first, so that an unusable provider fails before minutes of CPU timing.
    sessions = {key: {info.label: _session(info, key, threads) for info in infos} for key in keys}

    warm = max(int(warmup), 1)  # at least one untimed run: checks the model runs, sets up IO binding
    results = []
    for key in keys:
        for batch in batch_list:
            runners = {}
            for info in infos:
                runner = _runner(sessions[key][info.label], _feeds(info, batch, seed), key)
                try:
                    for _ in range(warm):
                        runner()
                except Exception as exc:
                    raise BadInput(f"{info.path}: inference failed on {key} at batch {batch}: {one_line(exc)}") from exc
                runners[info.label] = runner
            samples, rounds, wall = _measure(runners, iters, duration)
            stats = {label: _stats(s, batch) for label, s in samples.items()}
            speedup = {}
            if baseline is not None:
                base = stats[baseline]
                for label, st in stats.items():
                    if label != baseline:
                        speedup[label] = {
                            "p50": base["p50_ms"] / st["p50_ms"],
                            "mean": base["mean_ms"] / st["mean_ms"],
                        }
            results.append(
                {
                    "provider": key,
                    "batch": batch,
                    "rounds": rounds,
                    "wall_s": wall,
                    "models": stats,
                    "speedup": speedup,
                }
            )

    return {
        "schema": SCHEMA,
        "onnxruntime": ort.__version__,
        "providers_available": available,
        "models": {info.label: str(info.path) for info in infos},
        "baseline": baseline,
        "threads": threads,
        "warmup": warm,
        "iters": None if duration is not None else int(iters),  # type: ignore[arg-type]
        "duration": duration,
        "seed": seed,
        "session_config": dict(SESSION_CONFIG),
        "cpu": _cpu_info(),
        "results": results,
    }


# --------------------------------------------------------------------------------------------- report


def render_markdown(result: dict) -> str:
    """A Markdown table of a :func:`bench` result, one row per (provider, batch, model)."""
    baseline = result.get("baseline")
    cpu = result.get("cpu", {})
    stop = f"{result['duration']} s per setting" if result.get("duration") else f"{result.get('iters')} rounds"
    lines = [
        f"ONNX Runtime {result.get('onnxruntime')} on {cpu.get('model_name') or cpu.get('processor')} "
        f"({cpu.get('usable_cpus', cpu.get('cpu_count'))} CPUs), "
        f"threads={result.get('threads') or 'default'}, "
        f"warm-up {result.get('warmup')}, {stop}, interleaved.",
        "",
        "| provider | batch | model | p50 ms | p90 ms | p99 ms | mean ± std ms | img/s | speedup |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    unstable = []
    for row in result.get("results", []):
        for label, st in row["models"].items():
            if label == baseline:
                speed = "1.00× (baseline)"
            elif label in row.get("speedup", {}):
                sp = row["speedup"][label]
                speed = f"{sp['p50']:.2f}× (mean {sp['mean']:.2f}×)"
            else:
                speed = "–"
            lines.append(
                f"| {row['provider']} | {row['batch']} | {label} | {st['p50_ms']:.3f} | {st['p90_ms']:.3f} | "
                f"{st['p99_ms']:.3f} | {st['mean_ms']:.3f} ± {st['std_ms']:.3f} | {st['throughput']:.1f} | "
                f"{speed} |"
            )
            if st["cov"] > UNSTABLE_COV:
                unstable.append(f"{label} ({row['provider']}, batch {row['batch']}): CoV {st['cov']:.0%}")
    if baseline is not None:
        lines += ["", "Speedup = baseline p50 / model p50 (mean ratio in brackets)."]
    if unstable:
        lines += ["", "Unstable timings (CoV > 10%): " + "; ".join(unstable) + "."]
    return "\n".join(lines) + "\n"
