"""Ops Torch-Pruning cannot trace through, swapped for one opaque autograd node while it traces (channel shuffle)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

import torch


def _shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c = x.shape[:2]
    return x.reshape(n, groups, c // groups, *x.shape[2:]).transpose(1, 2).reshape(x.shape)


class _OpaqueShuffle(torch.autograd.Function):
    """Channel shuffle as ONE autograd node while Torch-Pruning traces (it crashes mapping the reshapes).

    The node is an element-wise op to Torch-Pruning; every group it touches is left alone (its channels are
    permuted), while the groups inside the blocks (ShuffleNetV2's branch convs) stay prunable.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, groups: int) -> torch.Tensor:
        ctx.groups = groups
        return _shuffle(x, groups)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _shuffle(grad, grad.shape[1] // ctx.groups), None  # the inverse permutation


#: (module, function) pairs implementing channel shuffle, swapped for the opaque node during tracing.
_SHUFFLE_SITES = (("torchvision.models.shufflenetv2", "channel_shuffle"), ("torch.nn.functional", "channel_shuffle"))


@contextlib.contextmanager
def _opaque_ops() -> Iterator[None]:
    saved = []
    for mod_name, attr in _SHUFFLE_SITES:
        mod = sys.modules.get(mod_name)  # a model that calls it has imported it: nothing else is imported here
        if mod is not None and hasattr(mod, attr):
            saved.append((mod, attr, getattr(mod, attr)))
            setattr(mod, attr, lambda x, groups: _OpaqueShuffle.apply(x, int(groups)))
    try:
        yield
    finally:
        for mod, attr, fn in saved:
            setattr(mod, attr, fn)
