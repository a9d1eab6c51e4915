"""Soft masking: zeroing the parameters of masked channels in place."""

from __future__ import annotations

import torch
from torch import nn

from compressor.graph.layers import _NORMS


def _zero(mod: nn.Module, side: str, pos: list[int], zero_inputs: bool) -> None:
    idx = torch.tensor(pos, dtype=torch.long)
    if side == "out":
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            mod.weight.index_fill_(0, idx.to(mod.weight.device), 0.0)
            if mod.bias is not None:
                mod.bias.index_fill_(0, idx.to(mod.bias.device), 0.0)
        elif isinstance(mod, _NORMS):
            for p in (getattr(mod, "weight", None), getattr(mod, "bias", None)):
                if p is not None:
                    p.index_fill_(0, idx.to(p.device), 0.0)
            if getattr(mod, "running_mean", None) is not None:
                mod.running_mean.index_fill_(0, idx.to(mod.running_mean.device), 0.0)
                mod.running_var.index_fill_(0, idx.to(mod.running_var.device), 1.0)
        elif isinstance(mod, nn.MultiheadAttention) and mod.in_proj_weight is not None:
            _zero_attention(mod, idx, zero_inputs)
    elif (
        zero_inputs and isinstance(mod, (nn.Conv2d, nn.Linear)) and not (isinstance(mod, nn.Conv2d) and mod.groups > 1)
    ):
        mod.weight.index_fill_(1, idx.to(mod.weight.device), 0.0)


def _zero_attention(mod: nn.MultiheadAttention, idx: torch.Tensor, zero_inputs: bool) -> None:
    """Masked embed channels: q/k/v rows and the output projection's rows (and columns: its inputs)."""
    e = mod.embed_dim
    rows = torch.cat([idx, idx + e, idx + 2 * e]).to(mod.in_proj_weight.device)
    mod.in_proj_weight.index_fill_(0, rows, 0.0)
    if mod.in_proj_bias is not None:
        mod.in_proj_bias.index_fill_(0, rows, 0.0)
    out = mod.out_proj
    out.weight.index_fill_(0, idx.to(out.weight.device), 0.0)
    if out.bias is not None:
        out.bias.index_fill_(0, idx.to(out.bias.device), 0.0)
    if zero_inputs:
        mod.in_proj_weight.index_fill_(1, idx.to(mod.in_proj_weight.device), 0.0)
        out.weight.index_fill_(1, idx.to(out.weight.device), 0.0)
