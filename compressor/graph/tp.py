"""Torch-Pruning itself: building and patching its DependencyGraph, its reference counter, its importances."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning import ops as tp_ops
from torch_pruning.dependency import index_mapping as tp_index_mapping

from compressor.graph.opaque import _opaque_ops
from compressor.graph.outputs import _classifiers


def _build_dg(model: nn.Module, example: torch.Tensor) -> Any:
    was_training = model.training
    try:
        with torch.enable_grad(), _opaque_ops():
            dg = tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
    finally:
        model.train(was_training)
    if _fix_chunk_sizes(dg):
        tp_index_mapping.update_index_mapping(dg)
    return dg


def _fix_chunk_sizes(dg: Any) -> bool:
    """Chunk sizes Torch-Pruning 1.6.1 misses on torch >= 2.x (``SplitBackward0`` saves ``_saved_split_size``).

    It then guesses each output's width from its consumer (a following concat's full width), and the concat
    mapping crashes (ShuffleNetV2). Outputs are put in chunk order (``output_nr``) with their true offsets.
    """
    fixed = False
    for node in dg.module2node.values():
        fn = node.grad_fn
        if node.type != tp_ops.OPTYPE.SPLIT or not hasattr(fn, "_saved_split_size") or fn._saved_dim != 1:
            continue
        size, total = int(fn._saved_split_size), int(fn._saved_self_sym_sizes[1])
        chunks = [min(size, total - i) for i in range(0, total, size)]
        order = []
        for out in node.outputs:
            nrs = [nr for f, nr in getattr(out.grad_fn, "next_functions", ()) if f is fn]
            order.append(nrs[0] if len(nrs) == 1 else -1)
        if -1 in order or sorted(order) != list(range(len(chunks))):
            continue  # a chunk unused or consumed twice: leave Torch-Pruning's reading
        node.outputs = [out for _, out in sorted(zip(order, node.outputs, strict=True), key=lambda t: t[0])]
        node.module.split_sizes = chunks
        node.module.offsets = [sum(chunks[:i]) for i in range(len(chunks) + 1)]
        fixed = True
    if fixed:  # concat widths were cached from the wrong chunk sizes: let the mapping pass recompute them
        for node in dg.module2node.values():
            if node.type == tp_ops.OPTYPE.CONCAT:
                node.module.concat_sizes = None
    return fixed


def _sync_static_attrs(model: nn.Module) -> None:
    """Update the width attributes a forward reads besides the weights (torchvision ViT's ``hidden_dim``)."""
    for mod in model.modules():
        proj = getattr(mod, "conv_proj", None)
        if isinstance(proj, nn.Conv2d) and hasattr(mod, "hidden_dim"):
            mod.hidden_dim = proj.out_channels


def count_ops_and_params(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[float, float]:
    """Torch-Pruning's own counter (MACs, params) at batch 1: the reference budget.py must match."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        flops, params = tp.utils.count_ops_and_params(model, torch.zeros(1, *input_shape))
    model.train(was_training)
    return float(flops), float(params)


def tp_importances() -> dict[str, Callable[[], Any]]:
    """Factories for the Torch-Pruning importances used by the baselines."""
    return {
        "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
        "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
        "bn-scale": lambda: tp.importance.BNScaleImportance(),
        "taylor": lambda: tp.importance.GroupTaylorImportance(),
        "random": lambda: tp.importance.RandomImportance(),
    }


def stock_prune(model: nn.Module, example: torch.Tensor, ratio: float = 0.5) -> None:
    """Plain Torch-Pruning on ``model``, in place: its MetaPruner with group L2 magnitude takes ``ratio`` of every
    group's channels in one step, classifiers left alone, with no rounding and none of our rules (the opaque ops,
    the output checks): what a user of Torch-Pruning alone gets, the coverage suite's baseline."""
    pruner = tp.pruner.MetaPruner(model, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                  pruning_ratio=ratio, ignored_layers=_classifiers(model, example), round_to=None,
                                  pruning_ratio_dict={}, ch_sparsity_dict={})  # fmt: skip
    pruner.step()
