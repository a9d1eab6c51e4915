"""Deterministic index splits: the validation split carved from train, and seeded subsets."""

from __future__ import annotations

import torch
from torch import Tensor

from compressor.data.loaders import _epoch_seed


def _split(n: int, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Deterministic (rest, carved) index split of ``range(n)``; both sorted."""
    k = int(round(n * fraction)) if fraction > 0 else 0
    if fraction > 0 and n > 1:
        k = min(max(k, 1), n - 1)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(_epoch_seed(seed, 10_001)))
    return perm[k:].sort().values, perm[:k].sort().values


def _subset(idx: Tensor, size: int | None, seed: int, salt: int) -> Tensor:
    """A seeded random ``size`` of ``idx`` (all of it when ``size`` is ``None`` or too big), sorted."""
    if size is None or size >= len(idx):
        return idx
    gen = torch.Generator().manual_seed(_epoch_seed(seed, salt))
    return idx[torch.randperm(len(idx), generator=gen)[:size]].sort().values
