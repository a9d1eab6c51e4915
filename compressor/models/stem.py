"""Input-channel adaptation: swap a model's first ``Conv2d`` for one with another number of inputs.

The new weights follow timm's ``adapt_input_conv`` rule (1 channel: sum over RGB; otherwise: repeat RGB
cyclically and scale by ``3 / in_channels``), so the initial function and scale are preserved.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from compressor.errors import BadInput


def _first_conv(model: nn.Module) -> tuple[str, nn.Conv2d] | None:
    """The first ``Conv2d`` in module order, with its qualified name; ``None`` when the model has none."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            return name, m
    return None


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` in ``model`` where the submodule named ``name`` (dotted) is."""
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def adapt_weight(w: torch.Tensor, in_channels: int) -> torch.Tensor:
    """A conv weight ``(out, c, kh, kw)`` for ``in_channels`` inputs by timm's ``adapt_input_conv`` rule: 1 channel
    sums over the old ones; otherwise the old channels repeat cyclically, scaled by ``c / in_channels``."""
    c_old = w.shape[1]
    if in_channels == 1:
        return w.sum(dim=1, keepdim=True)
    reps = math.ceil(in_channels / c_old)
    return w.repeat(1, reps, 1, 1)[:, :in_channels] * (c_old / in_channels)


def stem_weight(model: nn.Module) -> str | None:
    """The state_dict key of the stem's weight (the first ``Conv2d`` in module order), if the model has one."""
    found = _first_conv(model)
    return None if found is None else (f"{found[0]}.weight" if found[0] else "weight")


@torch.no_grad()
def adapt_stem(model: nn.Module, in_channels: int) -> nn.Module:
    """Replace the first ``Conv2d`` (module order) by one with ``in_channels`` inputs, in place.

    The new conv keeps every other hyper-parameter (kernel, stride, padding, dilation, bias, padding
    mode, dtype/device); its weights are derived from the old ones (timm's ``adapt_input_conv`` rule)
    so the model's initialisation scale is preserved. Returns ``model``.
    """
    found = _first_conv(model)
    if found is None:
        raise BadInput("cannot adapt the input channels: the model has no Conv2d")
    name, old = found
    if old.in_channels == in_channels:
        return model
    if old.groups != 1:
        raise BadInput(f"cannot adapt the input channels: first conv {name!r} is grouped")
    new = nn.Conv2d(
        in_channels,
        old.out_channels,
        kernel_size=old.kernel_size,  # type: ignore[arg-type]
        stride=old.stride,  # type: ignore[arg-type]
        padding=old.padding,  # type: ignore[arg-type]
        dilation=old.dilation,  # type: ignore[arg-type]
        groups=1,
        bias=old.bias is not None,
        padding_mode=old.padding_mode,
        device=old.weight.device,
        dtype=old.weight.dtype,
    )
    new.weight.copy_(adapt_weight(old.weight, in_channels))
    if old.bias is not None:
        new.bias.copy_(old.bias)  # type: ignore[union-attr]
    new.train(old.training)
    _set_submodule(model, name, new)
    return model
