"""The module calls of the forward Torch-Pruning traces: shapes and autograd nodes the cost model counts."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

#: One leaf-module call: (module, input shape, output shape, the output's grad_fn).
Call = tuple[nn.Module, tuple[int, ...], tuple[int, ...], Any]


def _record_calls(model: nn.Module, example: torch.Tensor, calls: list[Call]) -> list[RemovableHandle]:
    """Hooks filling ``calls`` with the leaf-module calls of the last top-level forward on ``example``'s shape.

    The caller removes the returned hooks.
    """
    active = [False]  # True only inside a top-level forward on the example batch

    def enter(_mod: nn.Module, args: tuple) -> None:
        active[0] = bool(args) and isinstance(args[0], torch.Tensor) and args[0].shape == example.shape
        if active[0]:
            calls.clear()  # keep the last full forward: the one Torch-Pruning traced

    def leave(*_: Any) -> None:
        active[0] = False

    def record(mod: nn.Module, inputs: tuple, output: Any) -> None:
        output = output[0] if isinstance(output, tuple) and output else output  # attention: (out, weights)
        if active[0] and isinstance(output, torch.Tensor) and inputs and isinstance(inputs[0], torch.Tensor):
            calls.append((mod, tuple(inputs[0].shape), tuple(output.shape), output.grad_fn))

    leaves = [m for m in model.modules() if not list(m.children()) or isinstance(m, nn.MultiheadAttention)]
    hooks = [m.register_forward_hook(record) for m in leaves]
    hooks += [model.register_forward_pre_hook(enter), model.register_forward_hook(leave)]
    return hooks
