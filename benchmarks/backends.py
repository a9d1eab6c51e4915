"""Backends behind ``compress bench``: ONNX Runtime (CPU, CUDA, TensorRT) and PyTorch (eager, compiled).

A backend turns one model file into a :class:`Runner`: a zero-argument callable doing one inference at
one batch size, plus what actually ran (the providers a session uses, or the torch device). Setup work
(session creation, a TensorRT engine build, ``torch.compile``) happens before the first timed run and
is reported apart as ``setup_s``.

IO modes on a GPU: ``device`` keeps inputs and outputs resident on the GPU (ORT IO binding, or a CUDA
tensor in PyTorch) so only the model is timed; ``host`` times what an application sees: host input ->
GPU -> host output, copies included. CPU backends always run with ``host`` IO.

Provider checks: ``onnxruntime-gpu`` lists CUDA/TensorRT as available on machines without a GPU or
without the CUDA/TensorRT libraries; a session then either raises or silently runs on CPU. Both are
``GateFailed("provider X unavailable: ...")``: a CPU number is never labelled CUDA.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compressor.errors import BadInput, Unavailable, one_line
from compressor.runtime.ort_gpu import preload_gpu_libraries
from compressor.runtime.ort_options import NO_SPINNING

ORT_PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
#: What an ORT session for each provider is created with (later entries take unsupported nodes).
PROVIDER_CHAIN = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
#: PyTorch backends: name -> (device, compiled).
TORCH_BACKENDS = {
    "torch": ("cpu", False),
    "torch-compile": ("cpu", True),
    "torch-cuda": ("cuda", False),
    "torch-compile-cuda": ("cuda", True),
}
BACKENDS = (*ORT_PROVIDERS, *TORCH_BACKENDS)
GPU_BACKENDS = ("cuda", "tensorrt", "torch-cuda", "torch-compile-cuda")
IO_MODES = ("device", "host")
# interleaved models: an idle session's spinning threads would steal the timed one's cores
SESSION_CONFIG = dict(NO_SPINNING)


def is_gpu(backend: str) -> bool:
    return backend in GPU_BACKENDS


def is_torch(backend: str) -> bool:
    return backend in TORCH_BACKENDS


@dataclass
class Options:
    """How sessions are built: threads and TensorRT settings."""

    threads: int | None = None
    inter_threads: int | None = None
    trt_fp16: bool = False
    trt_cache: str | None = None
    trust_code: bool = False


@dataclass
class Runner:
    """One model on one backend at one batch size and IO mode."""

    run: Callable[[], None]
    used: list[str]
    keep: list[Any] = field(default_factory=list)  # device buffers that must outlive the runner


# --------------------------------------------------------------------------------------------- ORT


def _session_options(opts: Options) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    parallel = bool(opts.inter_threads and opts.inter_threads > 1)
    so.execution_mode = ort.ExecutionMode.ORT_PARALLEL if parallel else ort.ExecutionMode.ORT_SEQUENTIAL
    so.inter_op_num_threads = opts.inter_threads or 1
    if opts.threads:
        so.intra_op_num_threads = opts.threads
    for key, value in SESSION_CONFIG.items():
        so.add_session_config_entry(key, value)
    return so


def _provider_list(backend: str, opts: Options) -> list[Any]:
    if backend != "tensorrt":
        return list(PROVIDER_CHAIN[backend])
    cache = Path(opts.trt_cache) if opts.trt_cache else None
    trt: dict[str, Any] = {"trt_fp16_enable": bool(opts.trt_fp16)}
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        trt.update({"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
                    "trt_timing_cache_enable": True, "trt_timing_cache_path": str(cache)})  # fmt: skip
    return [("TensorrtExecutionProvider", trt), *PROVIDER_CHAIN["tensorrt"][1:]]


def ort_session(path: Path, label: str, backend: str, opts: Options) -> Any:
    """An ORT session running on ``backend`` -- or GateFailed when that provider is not the one running."""
    import onnxruntime as ort

    if is_gpu(backend):
        preload_gpu_libraries()
    available = ort.get_available_providers()
    if ORT_PROVIDERS[backend] not in available:
        raise Unavailable(
            f"provider {backend} unavailable: {ORT_PROVIDERS[backend]} is not in this onnxruntime build "
            f"(available: {', '.join(available)})"
        )
    try:
        # ORT prints its own "EP Error ... falling back" banner on stdout; keep stdout clean for --json,
        # and disable the silent retry on CPU so a failing GPU provider raises here.
        with contextlib.redirect_stdout(sys.stderr):
            sess = ort.InferenceSession(os.fspath(path), _session_options(opts),
                                        providers=_provider_list(backend, opts), enable_fallback=0)  # fmt: skip
    except Exception as exc:
        if is_gpu(backend):
            raise Unavailable(f"provider {backend} unavailable: {one_line(exc)}") from exc
        raise BadInput(f"{path}: onnxruntime cannot load it ({one_line(exc)})") from exc
    got = sess.get_providers()
    if not got or got[0] != ORT_PROVIDERS[backend]:
        raise Unavailable(
            f"provider {backend} unavailable: the {label} session fell back to "
            f"{', '.join(got) or 'nothing'} (no usable GPU or CUDA/TensorRT libraries; see onnxruntime's log)"
        )
    return sess


def ort_runner(sess: Any, feeds: dict[str, np.ndarray], backend: str, io: str) -> Runner:
    """One inference of ``sess``; with ``io="device"`` on a GPU, inputs and outputs stay on the device."""
    used = list(sess.get_providers())
    if not is_gpu(backend) or io == "host":

        def run_host() -> None:
            sess.run(None, feeds)

        return Runner(run_host, used)

    import onnxruntime as ort

    binding = sess.io_binding()
    device_inputs = [ort.OrtValue.ortvalue_from_numpy(arr, "cuda", 0) for arr in feeds.values()]
    for name, value in zip(feeds, device_inputs, strict=True):
        binding.bind_ortvalue_input(name, value)
    names = [o.name for o in sess.get_outputs()]
    for name in names:
        binding.bind_output(name, "cuda", 0)
    pinned: list[bool] = []

    def run_device() -> None:
        sess.run_with_iobinding(binding)
        binding.synchronize_outputs()
        if not pinned:  # reuse the first run's device buffers: no per-run allocation
            for name, value in zip(names, binding.get_outputs(), strict=True):
                binding.bind_ortvalue_output(name, value)
            pinned.append(True)

    return Runner(run_device, used, keep=device_inputs)


# --------------------------------------------------------------------------------------------- PyTorch


def torch_model(path: Path, backend: str, opts: Options) -> tuple[Any, list[str]]:
    """Our pruned-model file on the backend's device (compiled lazily for ``torch-compile*``)."""
    import torch

    from compressor.artifacts import load_pruned

    device, compiled = TORCH_BACKENDS[backend]
    if device == "cuda" and not torch.cuda.is_available():
        raise Unavailable(f"provider {backend} unavailable: torch sees no CUDA device")
    _torch_threads(opts)
    model, _ = load_pruned(path, trust_code=opts.trust_code)
    model = model.eval().to(device)
    used = [f"torch {torch.__version__} {'compiled' if compiled else 'eager'} on {_torch_device_name(device)}"]
    if compiled:
        model = torch.compile(model)
    return model, used


def _torch_threads(opts: Options) -> None:
    import torch

    if opts.threads:
        torch.set_num_threads(opts.threads)
    if opts.inter_threads:
        with contextlib.suppress(RuntimeError):  # settable once, before any inter-op work in the process
            torch.set_num_interop_threads(opts.inter_threads)


@contextlib.contextmanager
def torch_threads_kept() -> Iterator[None]:
    """Restore torch's intra-op thread count afterwards: ``--threads`` must not leak into the caller."""
    import torch

    before = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _torch_device_name(device: str) -> str:
    import torch

    return torch.cuda.get_device_name(0) if device == "cuda" else "cpu"


def torch_runner(model: Any, feeds: dict[str, np.ndarray], backend: str, io: str) -> Runner:
    """One ``model(x)`` under ``inference_mode``; CUDA is synchronized so the time is the GPU's too."""
    import torch

    device, _ = TORCH_BACKENDS[backend]
    (host,) = [torch.from_numpy(a) for a in feeds.values()]
    cuda = device == "cuda"
    resident = host.to(device)
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def run_device() -> None:
        with torch.inference_mode():
            model(resident)
        sync()

    def run_host() -> None:
        with torch.inference_mode():
            out = model(host.to(device, non_blocking=False))
            _to_host(out)
        sync()

    run = run_host if (cuda and io == "host") else run_device
    return Runner(run, [], keep=[resident])


def _to_host(out: Any) -> None:
    if hasattr(out, "cpu"):
        out.cpu()
    elif isinstance(out, (list, tuple)):
        for o in out:
            _to_host(o)
    elif isinstance(out, dict):
        for o in out.values():
            _to_host(o)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``fn()`` and its wall time in seconds."""
    t0 = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t0
