"""Channel groups, masks, soft masking and physical removal: the ONLY package that imports torch_pruning.

A :class:`ChannelGroup` is one DepGraph group: every layer whose channel index space is coupled to one
root layer's output channels. Masks are ``dict[group_id, BoolTensor]`` over the root channels
(True = keep). :meth:`PruningGraph.apply_masks` zeroes masked channels in place (soft masking);
:meth:`PruningGraph.materialize` removes them physically on a deep copy.

Modules: ``pruning_graph`` (the :class:`PruningGraph`), ``groups`` (its data classes), ``rules`` (``--ignore`` /
``--group-max-ratio``), ``outputs`` (the output layers), ``constraints`` (grouped-conv tying, consistent mappings),
``layers`` (layer kinds and channel counts), ``costs`` and ``calls`` (the cost model), ``zeroing`` (soft masks),
``opaque`` (ops hidden from Torch-Pruning), ``tp`` (Torch-Pruning itself), ``files`` (pruned-model files) and
``limits`` (what building may cost). Patch the limits on :mod:`compressor.graph.limits`, where they are read.
"""

from __future__ import annotations

from compressor.graph.files import TP_VERSION, rebuild_pruned
from compressor.graph.groups import ChannelGroup, Cost, Dim, Masks, Member
from compressor.graph.limits import GRAPH_MEMORY_GB, GRAPH_SECONDS, UNSUPPORTED, _memory_limit
from compressor.graph.outputs import _classifiers, check_logits
from compressor.graph.pruning_graph import PruningGraph
from compressor.graph.rules import resolve_ignore
from compressor.graph.tp import count_ops_and_params, stock_prune, tp_importances

__all__ = [
    "GRAPH_MEMORY_GB",
    "GRAPH_SECONDS",
    "TP_VERSION",
    "UNSUPPORTED",
    "ChannelGroup",
    "Cost",
    "Dim",
    "Masks",
    "Member",
    "PruningGraph",
    "_classifiers",
    "_memory_limit",
    "check_logits",
    "count_ops_and_params",
    "rebuild_pruned",
    "resolve_ignore",
    "stock_prune",
    "tp_importances",
]
