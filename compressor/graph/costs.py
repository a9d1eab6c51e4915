"""The cost model: each counted module's FLOPs / params as a function of its kept channel counts (see budget.py)."""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from compressor.graph.calls import Call
from compressor.graph.groups import ChannelGroup, Cost, Dim
from compressor.graph.layers import _ACTIVATIONS, _NORMS, _PASSTHROUGH, _channels, _is_depthwise


def _passthrough_channels(shape: tuple, links: list[tuple[int, list[int]]]) -> int:
    """The channel count of an activation/pool tensor: dim 1, or the (last) dim its group links cover."""
    n = sum(len(roots) for _, roots in links)
    if n and n != shape[1] and n in shape[2:]:
        return n
    return shape[1]


def _prod(shape: tuple) -> float:
    return float(math.prod(shape))


def _module_cost(mod: nn.Module, in_shape: tuple, out_shape: tuple, channels: int = 0) -> tuple[tuple, tuple] | None:
    """(flops, params) coefficients as (io, o, i, const), mirroring tp.utils.count_ops_and_params.

    ``channels`` is the channel count of a pass-through op's tensor (default: its dim 1).
    """
    batch = in_shape[0]
    bias = 1.0 if getattr(mod, "bias", None) is not None else 0.0
    if isinstance(mod, nn.Conv2d):
        area = _prod(out_shape[2:]) * batch
        kk = float(mod.kernel_size[0] * mod.kernel_size[1])
        if _is_depthwise(mod):
            per_k = kk * (mod.out_channels // mod.groups)
            return (0.0, (per_k + bias) * area, 0.0, 0.0), (0.0, per_k + bias, 0.0, 0.0)
        return (kk * area / mod.groups, bias * area, 0.0, 0.0), (kk / mod.groups, bias, 0.0, 0.0)
    if isinstance(mod, nn.Linear):
        rows = _prod(in_shape[:-1])
        return (rows, bias, 0.0, 0.0), (1.0, bias, 0.0, 0.0)
    if isinstance(mod, nn.MultiheadAttention):  # q = k = v (self-attention), E = embed dim, h heads
        n, length = (in_shape[0], in_shape[1]) if mod.batch_first else (in_shape[1], in_shape[0])
        b_in = 3.0 if mod.in_proj_bias is not None else 0.0
        b_out = 1.0 if mod.out_proj.bias is not None else 0.0
        io = 4.0 * length * n  # QW, KW, VW, out projection
        o = (length + b_in * length + 2.0 * length * length + length) * n
        return (io, o, 0.0, float(mod.num_heads * length * length * n)), (4.0, b_in + b_out, 0.0, 0.0)
    if isinstance(mod, nn.LayerNorm):
        c = _channels(mod, "out") or in_shape[-1]
        affine = bool(mod.elementwise_affine)
        n_params = float(sum(p.numel() for p in mod.parameters())) / c
        return (0.0, _prod(in_shape) / c * (2.0 if affine else 1.0), 0.0, 0.0), (0.0, n_params, 0.0, 0.0)
    if isinstance(mod, _NORMS):
        per_c = _prod(in_shape) / in_shape[1]
        affine = bool(getattr(mod, "affine", False))
        n_params = 2.0 if affine else 0.0
        return (0.0, per_c * (2.0 if affine else 1.0), 0.0, 0.0), (0.0, n_params, 0.0, 0.0)
    if isinstance(mod, _PASSTHROUGH):
        shape = out_shape if isinstance(mod, _ACTIVATIONS) else in_shape
        per_c = _prod(shape) / (channels or shape[1])
        n_params = float(sum(p.numel() for p in mod.parameters()))
        return (0.0, per_c, 0.0, 0.0), (0.0, 0.0, 0.0, n_params)
    return None


def _build_costs(groups: list[ChannelGroup], dg: Any, names: dict[nn.Module, str],
                 calls: list[Call]) -> tuple[list[Dim], list[Cost]]:  # fmt: skip
    """Per counted module call: how its FLOPs/params depend on kept channel counts (see budget.py).

    Returns the channel-dimension table and the costs indexing it; ``dg`` is the groups' DependencyGraph.
    """
    dims: list[Dim] = []
    index: dict[tuple[int, str], int] = {}  # (id(module or call), side) -> dim index

    def dim_of(key: Any, side: str, size: int) -> int:
        if (id(key), side) not in index:
            index[(id(key), side)] = len(dims)
            dims.append(Dim(size))
        return index[(id(key), side)]

    for g in groups:
        for m in g.members:
            size = _channels(m.module, m.side)
            if size is not None:
                dims[dim_of(m.module, m.side, size)].links.append((g.id, m.root_idxs))
    # A pass-through call (ReLU, pool) takes the coupling of the op node Torch-Pruning traced for it.
    fn_links: dict[Any, list[tuple[int, list[int]]]] = {}
    for g in groups:
        for item in g.tp_group.items:
            fn = getattr(item.dep.target, "grad_fn", None)
            if fn is not None and dg.is_out_channel_pruning_fn(item.dep.handler):
                fn_links.setdefault(fn, []).append((g.id, list(item.root_idxs)))

    costs: list[Cost] = []
    counted: set[int] = set()
    for mod, in_shape, out_shape, fn in calls:
        channels = _passthrough_channels(out_shape, fn_links.get(fn, [])) if isinstance(mod, _PASSTHROUGH) else 0
        cost = _module_cost(mod, in_shape, out_shape, channels)
        if cost is None:
            continue
        flops, params = cost
        if id(mod) in counted:  # a reused module's parameters count once
            params = (0.0, 0.0, 0.0, 0.0)
        counted.add(id(mod))
        in_d = index.get((id(mod), "in"), -1)
        out_d = index.get((id(mod), "out"), -1)
        if isinstance(mod, _PASSTHROUGH):
            out_d = dim_of(fn, "out", channels)
            if not dims[out_d].links:
                dims[out_d].links.extend(fn_links.get(fn, []))
        if isinstance(mod, nn.MultiheadAttention):
            in_d = out_d  # one embed dim is both its input and its output width
        if in_d < 0 and (flops[0] or flops[2] or params[0] or params[2]):
            in_d = dim_of(mod, "in_fixed", _channels(mod, "in") or 0)
        if out_d < 0:
            out_d = dim_of(mod, "out_fixed", _channels(mod, "out") or out_shape[1])
        costs.append(Cost(names.get(mod, "?"), in_d, out_d, flops, params))
    return dims, costs
