"""Latency harness behind ``compress bench``: interleaved timing of models on ORT and PyTorch backends.

For every (backend, IO mode, batch) all models are set up and warmed up (both reported apart), then timed
round-robin -- one run of each model per round, the starting model rotating -- so that clock/thermal drift
and background load hit every model alike and a dense-vs-pruned ratio is fair. Timing stops after
``iters`` rounds, or after ``duration`` seconds and at least ``min_iters`` rounds.

A model is an ONNX file (ORT backends), our pruned-model file ``.pt`` (PyTorch backends), or a run
directory; an ONNX file and a ``.pt`` with the same stem side by side (``compress export`` writes them so)
serve both. The result is a schema-versioned dict (see ``SCHEMA``), rendered by ``benchmarks.bench_output``.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.backends import (
    BACKENDS,
    IO_MODES,
    ORT_PROVIDERS,
    SESSION_CONFIG,
    Options,
    Runner,
    is_gpu,
    is_torch,
    ort_runner,
    ort_session,
    timed,
    torch_model,
    torch_runner,
    torch_threads_kept,
)
from compressor import tool_version
from compressor.config import DEFAULT_BENCH as _B
from compressor.errors import BadInput, one_line
from compressor.runtime.memory import check_fits, tensor_bytes

PROVIDERS = ORT_PROVIDERS  # the ONNX Runtime providers (``--latency-provider`` and friends)
SCHEMA = 2
COV_WARN = 0.03  # a setting whose coefficient of variation exceeds this gets a warning
MIN_ITERS = _B.min_iters

_DTYPES = {1: np.float32, 10: np.float16, 11: np.float64}  # onnx.TensorProto FLOAT, FLOAT16, DOUBLE


@dataclass
class _Input:
    name: str
    dtype: type
    dims: list[int | None]  # None: symbolic / unknown


@dataclass
class _Model:
    label: str
    onnx: Path | None
    torch: Path | None
    inputs: list[_Input]

    @property
    def path(self) -> Path:
        return self.onnx or self.torch  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------- checks


def _files(path: str | os.PathLike[str]) -> tuple[Path | None, Path | None]:
    """(ONNX file, pruned-model file) a model argument stands for: a file, its same-stem sibling, a run dir."""
    p = Path(path)
    if p.is_dir():
        onnx, pt = p / "pruned.onnx", p / "pruned.pt"
        if not (onnx.is_file() or pt.is_file()):
            raise BadInput(f"{p} is a directory without pruned.onnx or pruned.pt (not a run directory)")
        return (onnx if onnx.is_file() else None), (pt if pt.is_file() else None)
    if p.suffix == ".pt":
        sibling = p.with_suffix(".onnx")
        return (sibling if sibling.is_file() else None), p
    sibling = p.with_suffix(".pt")
    return p, (sibling if p.suffix == ".onnx" and sibling.is_file() else None)


def _onnx_inputs(p: Path) -> list[_Input]:
    from exporters.onnx import load_model

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
    return inputs


def _torch_inputs(p: Path) -> list[_Input]:
    from compressor.artifacts import read_pruned

    payload = read_pruned(p)
    return [_Input("input", np.float32, [None, *(int(d) for d in payload["input_shape"])])]


def _inspect(label: str, path: str | os.PathLike[str], backends: Sequence[str] = ("cpu",)) -> _Model:
    onnx, pt = _files(path)
    need_onnx = any(not is_torch(b) for b in backends)
    need_torch = any(is_torch(b) for b in backends)
    if need_onnx and onnx is None:
        raise BadInput(f"{path}: ONNX Runtime backends need an ONNX file (export it, or keep NAME.onnx next to it)")
    if need_torch and pt is None:
        raise BadInput(
            f"{path}: PyTorch backends need the pruned-model file (.pt) -- pass it, a run directory, or keep "
            f"NAME.pt next to NAME.onnx"
        )
    inputs = _onnx_inputs(onnx) if need_onnx and onnx else _torch_inputs(pt)  # type: ignore[arg-type]
    if need_onnx and need_torch and pt is not None:
        shape = _torch_inputs(pt)[0].dims[1:]
        if len(inputs) != 1 or inputs[0].dims[1:] != shape:
            raise BadInput(f"{onnx} and {pt} take different inputs ({[i.dims for i in inputs]} vs {shape})")
    return _Model(label, onnx if need_onnx else None, pt if need_torch else None, inputs)


def _backend_keys(providers: Sequence[str] | str) -> list[str]:
    if isinstance(providers, str):
        providers = providers.split(",")
    by_full = {v.lower(): k for k, v in ORT_PROVIDERS.items()}
    keys: list[str] = []
    for raw in providers:
        name = str(raw).strip().lower()
        key = name if name in BACKENDS else by_full.get(name)
        if key is None:
            raise BadInput(f"unknown provider {raw!r}; choose from {', '.join(BACKENDS)}")
        if key not in keys:
            keys.append(key)
    if not keys:
        raise BadInput("no provider given")
    return keys


def _io_modes(io: Sequence[str] | str) -> list[str]:
    modes = [m.strip().lower() for m in (io.split(",") if isinstance(io, str) else io) if str(m).strip()]
    bad = [m for m in modes if m not in IO_MODES]
    if bad or not modes:
        raise BadInput(f"--io takes {', '.join(IO_MODES)} (comma list), got {io!r}")
    return list(dict.fromkeys(modes))


def _feeds(model: _Model, batch: int, seed: int) -> dict[str, np.ndarray]:
    feeds = {}
    for k, inp in enumerate(model.inputs):
        if inp.dims[0] is not None and inp.dims[0] != batch:
            raise BadInput(
                f"{model.path}: input {inp.name!r} has a static batch of {inp.dims[0]}, cannot bench batch "
                f"{batch} (export with a dynamic batch)"
            )
        shape = [batch, *inp.dims[1:]]
        check_fits(f"{model.path}: a batch of {batch} inputs {tuple(shape)}",
                   tensor_bytes(shape, np.dtype(inp.dtype).itemsize), "bench a smaller --batch")  # fmt: skip
        rng = np.random.default_rng([seed, batch, k])  # same data for every model of the same shape
        feeds[inp.name] = rng.standard_normal(shape, dtype=np.float32).astype(inp.dtype, copy=False)
    return feeds


def check_options(providers: Sequence[str] | str, batches: Sequence[Any], threads: int | None = None,
                  warmup: int = _B.warmup, iters: int | None = _B.iters, duration: float | None = None,
                  min_iters: int = MIN_ITERS, io: Sequence[str] | str = IO_MODES,
                  inter_threads: int | None = None) -> None:  # fmt: skip
    """Validate bench options without loading anything (so a recipe can fail before it starts work)."""
    _backend_keys(providers)
    _io_modes(io)
    _validate_numbers(batches, threads, warmup, iters, duration, min_iters, inter_threads)


def _validate_numbers(batches, threads, warmup, iters, duration, min_iters=1, inter_threads=None) -> list[int]:
    try:
        batch_list = [int(b) for b in batches]
    except (TypeError, ValueError):
        raise BadInput(f"batch sizes must be integers, got {batches!r}") from None
    if not batch_list or any(b < 1 for b in batch_list):
        raise BadInput(f"batch sizes must be >= 1, got {batch_list}")
    for name, value in (("threads", threads), ("inter-threads", inter_threads)):
        if value is not None and int(value) < 1:
            raise BadInput(f"{name} must be >= 1, got {value}")
    if int(warmup) < 0:
        raise BadInput(f"warmup must be >= 0, got {warmup}")
    if int(min_iters) < 1:
        raise BadInput(f"min-iters must be >= 1, got {min_iters}")
    if duration is not None:
        if not float(duration) > 0:
            raise BadInput(f"duration must be > 0 seconds, got {duration}")
    elif iters is None or int(iters) < 1:
        raise BadInput(f"iters must be >= 1 (or give a duration), got {iters}")
    return list(dict.fromkeys(batch_list))


# --------------------------------------------------------------------------------------------- stats


def _stats(samples_ns: Sequence[int], batch: int) -> dict[str, Any]:
    ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
    mean = float(ms.mean())
    std = float(ms.std(ddof=1)) if ms.size > 1 else 0.0
    p50, p90, p95, p99 = (float(v) for v in np.percentile(ms, [50, 90, 95, 99]))
    return {
        "n": int(ms.size),
        "mean_ms": mean,
        "std_ms": std,
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
        "p50_ms": p50,
        "p90_ms": p90,
        "p95_ms": p95,
        "p99_ms": p99,
        "throughput": batch * 1000.0 / mean if mean > 0 else float("inf"),
        "cov": std / mean if mean > 0 else 0.0,
        "samples_ms": [round(float(v), 5) for v in ms],
    }


def _measure(
    runners: dict[str, Callable[[], None]], iters: int | None, duration: float | None, min_iters: int = 1
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
            if clock() >= deadline and rounds >= min_iters:
                break
        elif rounds >= iters:  # type: ignore[operator]
            break
    return samples, rounds, (clock() - start) / 1e9


# --------------------------------------------------------------------------------------------- environment


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpu_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "processor": platform.processor() or platform.machine(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    if hasattr(os, "sched_getaffinity"):
        info["usable_cpus"] = len(os.sched_getaffinity(0))
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["model_name"] = line.split(":", 1)[1].strip()
                break
    return info


def _gpu_info() -> dict[str, Any] | None:
    """The first GPU's name, driver and CUDA runtime (nvidia-smi, else torch), or None without one."""
    smi = shutil.which("nvidia-smi")
    if smi:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20, check=True).stdout  # fmt: skip
            name, driver, memory = (s.strip() for s in out.splitlines()[0].split(","))
            return {"name": name, "driver": driver, "memory": memory, "cuda": _torch_cuda()}
    with contextlib.suppress(Exception):
        import torch

        if torch.cuda.is_available():
            return {"name": torch.cuda.get_device_name(0), "driver": None, "cuda": torch.version.cuda}
    return None


def _torch_cuda() -> str | None:
    with contextlib.suppress(Exception):
        import torch

        return torch.version.cuda
    return None


def environment(need_gpu: bool) -> dict[str, Any]:
    """Versions, CPU model and threads, the GPU (when a GPU backend ran) and ORT's available providers."""
    import onnxruntime as ort

    return {
        "python": platform.python_version(),
        "compress": tool_version(),
        "onnxruntime": ort.__version__,
        "torch": _version("torch"),
        "onnx": _version("onnx"),
        "numpy": np.__version__,
        "platform": platform.platform(),
        "cpu": _cpu_info(),
        "gpu": _gpu_info() if need_gpu else None,
        "providers_available": list(ort.get_available_providers()),
    }


# --------------------------------------------------------------------------------------------- bench


def _setup(infos: list[_Model], key: str, opts: Options) -> tuple[dict[str, Any], dict[str, float]]:
    """Sessions (ORT) or loaded models (PyTorch) per label, and how long each took."""
    made, seconds = {}, {}
    for info in infos:
        if is_torch(key):
            made[info.label], seconds[info.label] = timed(lambda i=info: torch_model(i.torch, key, opts))
        else:
            made[info.label], seconds[info.label] = timed(lambda i=info: ort_session(i.onnx, i.label, key, opts))
    return made, seconds


def _runner(made: Any, feeds: dict[str, np.ndarray], key: str, io: str) -> Runner:
    if is_torch(key):
        model, used = made
        runner = torch_runner(model, feeds, key, io)
        runner.used = used
        return runner
    return ort_runner(made, feeds, key, io)


def _warm(runner: Runner, n: int, info: _Model, key: str, batch: int) -> dict[str, Any]:
    """``n`` untimed runs (at least one); the first run's time (engine build, compile) reported apart."""
    times = []
    try:
        for _ in range(max(n, 1)):
            _, s = timed(runner.run)
            times.append(s * 1e3)
    except Exception as exc:
        raise BadInput(f"{info.path}: inference failed on {key} at batch {batch}: {one_line(exc)}") from exc
    return {"n": len(times), "first_ms": times[0], "mean_ms": float(np.mean(times[1:] or times))}


def bench(
    models: Mapping[str, str | os.PathLike[str]],
    *,
    baseline: str | None = None,
    providers: Sequence[str] = ("cpu",),
    batches: Sequence[int] = (1,),
    threads: int | None = None,
    inter_threads: int | None = None,
    warmup: int = _B.warmup,
    iters: int | None = _B.iters,
    min_iters: int = MIN_ITERS,
    duration: float | None = None,
    seed: int = 0,
    io: Sequence[str] | str = IO_MODES,
    trt_fp16: bool = False,
    trt_cache: str | None = None,
    trust_code: bool = False,
) -> dict:
    """Time ``models`` (label -> file) on each backend, IO mode and batch size; see the module docstring.

    Raises ``BadInput`` for unusable files/arguments and ``GateFailed`` when a requested provider cannot
    actually run (not built in, no device, or the session fell back to another provider).
    """
    if not models:
        raise BadInput("no model to bench")
    if baseline is not None and baseline not in models:
        raise BadInput(f"baseline {baseline!r} is not one of the models ({', '.join(models)})")
    batch_list = _validate_numbers(batches, threads, warmup, iters, duration, min_iters, inter_threads)
    keys, io_modes = _backend_keys(providers), _io_modes(io)
    infos = [_inspect(str(label), path, keys) for label, path in models.items()]
    for info in infos:  # static-batch mismatches are bad input, found before any timing
        for batch in batch_list:
            _feeds(info, batch, seed)
    opts = Options(threads, inter_threads, trt_fp16, trt_cache, trust_code)
    with torch_threads_kept():
        results, warnings = _bench_all(infos, keys, io_modes, batch_list, opts, baseline, seed, warmup, iters,
                                       min_iters, duration)  # fmt: skip
    return {
        "schema": SCHEMA,
        "kind": "compress.bench",
        "env": environment(any(is_gpu(k) for k in keys)),
        "settings": _settings(keys, batch_list, io_modes, opts, warmup, iters, min_iters, duration, seed),
        "models": {i.label: {"onnx": i.onnx and str(i.onnx), "torch": i.torch and str(i.torch)} for i in infos},
        "baseline": baseline,
        "speedups": _speedups(results),
        "results": results,
        "warnings": warnings,
    }


def _speedups(results: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per model compared with the baseline: its lowest and highest p50 speedup over the settings."""
    by_label: dict[str, list[float]] = {}
    for row in results:
        for label, sp in row["speedup"].items():
            by_label.setdefault(label, []).append(sp["p50"])
    return {label: {"p50_min": min(v), "p50_max": max(v)} for label, v in by_label.items()}


def _settings(keys: list[str], batch_list: list[int], io_modes: list[str], opts: Options, warmup: int,
              iters: int | None, min_iters: int, duration: float | None, seed: int) -> dict[str, Any]:  # fmt: skip
    """The ``settings`` block of a bench result: what was asked for, as run."""
    return {
        "providers": keys,
        "batches": batch_list,
        "threads": opts.threads,
        "inter_threads": opts.inter_threads,
        "warmup": max(int(warmup), 1),
        "iters": None if duration is not None else int(iters),
        "min_iters": int(min_iters),
        "duration": duration,
        "seed": seed,
        "io": io_modes,
        "trt_fp16": bool(opts.trt_fp16),
        "trt_cache": opts.trt_cache,
        "cov_warn": COV_WARN,
        "session_config": dict(SESSION_CONFIG),
    }


def _bench_all(infos: list[_Model], keys: list[str], io_modes: list[str], batch_list: list[int], opts: Options,
               baseline: str | None, seed: int, warmup: int, iters: int | None, min_iters: int,
               duration: float | None) -> tuple[list[dict[str, Any]], list[str]]:  # fmt: skip
    """Every (backend, IO mode, batch) row; all backends are set up first, so an unusable one fails early."""
    setups = {key: _setup(infos, key, opts) for key in keys}
    results, warnings = [], []
    for key in keys:
        made, setup_s = setups[key]
        for mode in io_modes if is_gpu(key) else ["host"]:
            for batch in batch_list:
                row = _bench_setting(infos, made, setup_s, key, mode, batch, seed, warmup, iters, min_iters, duration)
                results.append(_with_speedup(row, baseline))
                warnings += _noisy(row)
    return results, warnings


def _bench_setting(infos: list[_Model], made: dict[str, Any], setup_s: dict[str, float], key: str, io: str,
                   batch: int, seed: int, warmup: int, iters: int | None, min_iters: int,
                   duration: float | None) -> dict[str, Any]:  # fmt: skip
    runners, warm = {}, {}
    for info in infos:
        runner = _runner(made[info.label], _feeds(info, batch, seed), key, io)
        warm[info.label] = _warm(runner, int(warmup), info, key, batch)
        runners[info.label] = runner
    samples, rounds, wall = _measure({k: r.run for k, r in runners.items()}, iters, duration, int(min_iters))
    stats = {}
    for label, s in samples.items():
        stats[label] = {**_stats(s, batch), "warmup": warm[label], "setup_s": setup_s[label]}
    return {"provider": key, "io": io, "batch": batch, "rounds": rounds, "wall_s": wall,
            "providers_used": {k: r.used for k, r in runners.items()}, "models": stats}  # fmt: skip


def _with_speedup(row: dict[str, Any], baseline: str | None) -> dict[str, Any]:
    speedup = {}
    if baseline is not None:
        base = row["models"][baseline]
        for label, st in row["models"].items():
            if label != baseline:
                speedup[label] = {"p50": base["p50_ms"] / st["p50_ms"], "mean": base["mean_ms"] / st["mean_ms"]}
    return {**row, "speedup": speedup}


def _noisy(row: dict[str, Any]) -> list[str]:
    return [
        f"{label} ({row['provider']}, io {row['io']}, batch {row['batch']}): CoV {st['cov']:.1%} is above "
        f"{COV_WARN:.0%}; timings are noisy (close other work, pin --threads, or measure longer with --duration)"
        for label, st in row["models"].items()
        if st["cov"] > COV_WARN
    ]
