"""What the target runtime's kernels like: ``--round-to auto``.

Measured side by side (``python -m benchmarks.suites.speedup``, ``benchmarks/results/speedup.{json,md}``,
AMD EPYC with AVX-512, ONNX Runtime 1.31 CPU): at the same FLOPs drop, channel counts in multiples of 16
ran 3–53% faster than multiples of 8 in every one of 28 settings (5 models, 30–70% drops, batch 1 and 8).
On an AMD EPYC with AVX2 only (``benchmarks/results/speedup_avx2.{json,md}``, batch 1, 2 threads) 16 ran
0.4-14% faster than 8 in all 14 settings measured (5 models, 30-70%; one run, CoV 4-15%), and the pruned INT8
ResNet-50 ran 3.55x dense fp32 with 16 against 3.23x with 8 (``deploy_resnet50_threads1*``). Multiples of 8
fit the GPU (tensor-core tiles) and are the default; other CPUs (ARM, x86 without AVX2) are unmeasured, so
``auto`` keeps 8 there.
"""

from __future__ import annotations

from compressor.config import ROUND_AUTO

#: ``--round-to auto`` per target: (multiple, why).
AUTO_ROUND_TO = {
    "avx512": (16, "ONNX Runtime CPU with AVX-512: multiples of 16 measured 3-53% faster than 8"),
    "avx2": (16, "ONNX Runtime CPU with AVX2: multiples of 16 measured 0.4-14% faster than 8"),
    "cpu": (8, "a CPU without AVX2: 16 not measured to beat 8, the default kept"),
    "gpu": (8, "a GPU runtime: multiples of 8 fit tensor-core tiles"),
}


def cpu_has_avx512() -> bool:
    """Whether this CPU runs AVX-512 kernels (what PyTorch's and ONNX Runtime's dispatch would pick)."""
    return cpu_kind() == "avx512"


def cpu_kind() -> str:
    """``avx512``, ``avx2`` or ``cpu`` (anything else): the kernels PyTorch's and ONNX Runtime's dispatch pick."""
    import torch

    capability = torch.backends.cpu.get_cpu_capability().upper()
    return "avx512" if capability.startswith("AVX512") else ("avx2" if capability.startswith("AVX2") else "cpu")


def auto_round_to(provider: str) -> tuple[int, str]:
    """``(multiple, why)`` for ``--round-to auto`` when the model will run on ``provider`` (cpu, cuda, tensorrt);
    a CPU target is this machine's CPU."""
    if provider in ("cuda", "tensorrt"):
        return AUTO_ROUND_TO["gpu"]
    return AUTO_ROUND_TO[cpu_kind()]


def resolve_round_to(value: int | str, provider: str = "cpu") -> tuple[int, str | None]:
    """``(multiple, why)``: ``--round-to`` as given, or ``auto`` resolved for ``provider`` (``why`` is None
    when it was a number)."""
    return auto_round_to(provider) if value == ROUND_AUTO else (int(value), None)
