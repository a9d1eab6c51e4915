"""What the target runtime's kernels like: ``--round-to auto``.

Measured side by side (``python -m benchmarks.suites.speedup``, ``benchmarks/results/speedup.{json,md}``,
AMD EPYC with AVX-512, ONNX Runtime 1.31 CPU): at the same FLOPs drop, channel counts in multiples of 16
ran 3–53% faster than multiples of 8 in every one of 28 settings (5 models, 30–70% drops, batch 1 and 8).
Multiples of 8 fit the GPU (tensor-core tiles) and are the default; on CPUs without AVX-512 16 has not been
measured to win, so ``auto`` keeps 8 there.
"""

from __future__ import annotations

from compressor.config import ROUND_AUTO

#: ``--round-to auto`` per target: (multiple, why).
AUTO_ROUND_TO = {
    "avx512": (16, "ONNX Runtime CPU with AVX-512: multiples of 16 measured 3-53% faster than 8"),
    "cpu": (8, "a CPU without AVX-512: 16 not measured to beat 8, the default kept"),
    "gpu": (8, "a GPU runtime: multiples of 8 fit tensor-core tiles"),
}


def cpu_has_avx512() -> bool:
    """Whether this CPU runs AVX-512 kernels (what PyTorch's and ONNX Runtime's dispatch would pick)."""
    import torch

    return torch.backends.cpu.get_cpu_capability().upper().startswith("AVX512")


def auto_round_to(provider: str) -> tuple[int, str]:
    """``(multiple, why)`` for ``--round-to auto`` when the model will run on ``provider`` (cpu, cuda, tensorrt);
    a CPU target is this machine's CPU."""
    if provider in ("cuda", "tensorrt"):
        return AUTO_ROUND_TO["gpu"]
    return AUTO_ROUND_TO["avx512" if cpu_has_avx512() else "cpu"]


def resolve_round_to(value: int | str, provider: str = "cpu") -> tuple[int, str | None]:
    """``(multiple, why)``: ``--round-to`` as given, or ``auto`` resolved for ``provider`` (``why`` is None
    when it was a number)."""
    return auto_round_to(provider) if value == ROUND_AUTO else (int(value), None)
