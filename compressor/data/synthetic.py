"""``synthetic:CxHxW:classes[:n_train[:n_test]]``: a deterministic, learnable in-memory dataset for tests."""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import Tensor

from compressor.data.bundle import DataBundle, LoadRequest, in_memory_bundle
from compressor.errors import BadInput
from compressor.runtime.memory import check_fits, tensor_bytes


def parse_synthetic(rest: str, spec: str) -> tuple[tuple[int, int, int], int, int, int]:
    """``(C, H, W), classes, n_train, n_test`` from the part of ``spec`` after ``synthetic:``."""
    m = re.fullmatch(r"(\d+)x(\d+)x(\d+):(\d+)(?::(\d+))?(?::(\d+))?", rest.strip())
    if not m:
        raise BadInput(f"bad data spec {spec!r}: expected synthetic:CxHxW:classes, e.g. synthetic:3x32x32:10")
    c, h, w, k = (int(g) for g in m.groups()[:4])
    n_train = int(m.group(5)) if m.group(5) else 512
    n_test = int(m.group(6)) if m.group(6) else 128
    if min(c, h, w) < 1 or k < 2 or n_train < 2 or n_test < 1:
        raise BadInput(f"bad data spec {spec!r}: sizes must be >= 1, classes >= 2, train >= 2")
    # the uint8 images plus the float32 working copies of the larger split (noise and the mixed images)
    needed = c * h * w * (n_train + n_test) + tensor_bytes((2, max(n_train, n_test), c, h, w))
    check_fits(f"data spec {spec!r} (a synthetic in-memory dataset)", needed)
    if c * h * w * (n_train + n_test) > 2**31:
        raise BadInput(f"data spec {spec!r} is too large for a synthetic in-memory dataset")
    return (c, h, w), k, n_train, n_test


def _synthetic(shape: tuple[int, int, int], k: int, n_train: int, n_test: int) -> tuple[Tensor, ...]:
    """Class ``y`` image = 0.45 * low-frequency pattern_y + 0.35 * colour_y + noise, as uint8."""
    c, h, w = shape
    gen = torch.Generator().manual_seed(20240517 + 7 * k + c * h * w)
    low = torch.rand(k, c, max(1, h // 4), max(1, w // 4), generator=gen)
    patterns = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
    colours = torch.rand(k, c, 1, 1, generator=gen)

    def make(n: int) -> tuple[Tensor, Tensor]:
        y = torch.randperm(n, generator=gen) % k
        x = 0.45 * patterns[y] + 0.35 * colours[y] + 0.1 + 0.12 * torch.randn(n, c, h, w, generator=gen)
        return (x.clamp(0, 1) * 255).round().to(torch.uint8), y.long()

    xtr, ytr = make(n_train)
    xte, yte = make(n_test)
    return xtr, ytr, xte, yte


def synthetic_spec(spec: str, rest: str, request: LoadRequest) -> DataBundle:
    """``synthetic:CxHxW:classes[:n_train[:n_test]]``, normalised by its own train mean and std."""
    shape, k, n_train, n_test = parse_synthetic(rest, spec)
    xtr, ytr, xte, yte = _synthetic(shape, k, n_train, n_test)
    xf = xtr.float().div(255)
    mean = tuple(float(v) for v in xf.mean(dim=(0, 2, 3)))
    std = tuple(max(float(v), 1e-3) for v in xf.std(dim=(0, 2, 3)))
    classes, name, source = [str(i) for i in range(k)], f"synthetic:{'x'.join(map(str, shape))}:{k}", ""
    return in_memory_bundle(spec, request, (xtr, ytr, xte, yte), name=name, classes=classes, num_classes=k,
                            mean=mean, std=std, source=source)  # fmt: skip
