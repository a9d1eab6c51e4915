"""ONNX Runtime's GPU libraries: load the CUDA/cuDNN libraries the onnxruntime-gpu wheel expects before the
first CUDA or TensorRT session (``onnxruntime.preload_dlls``, ONNX Runtime >= 1.21; it finds the NVIDIA pip
packages or the system's). Without it a CUDA session can silently fall back to the CPU."""

from __future__ import annotations

import contextlib
import sys

_done = False


def preload_gpu_libraries() -> None:
    """Call once before a CUDA/TensorRT session; a CPU-only build or missing libraries are left to the session."""
    global _done
    if _done:
        return
    _done = True
    import onnxruntime as ort

    preload = getattr(ort, "preload_dlls", None)
    if preload is None or "CUDAExecutionProvider" not in ort.get_available_providers():
        return
    with contextlib.redirect_stdout(sys.stderr), contextlib.suppress(Exception):
        preload()
