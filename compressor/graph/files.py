"""How a slim model is rebuilt from a pruned-model file (the file format itself: ``compressor.artifacts``)."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from compressor.graph.tp import _build_dg, _sync_static_attrs
from compressor.models.checkpoints import with_module_versions

TP_VERSION = importlib.metadata.version("torch-pruning")


def rebuild_pruned(payload: dict[str, Any], build: Callable[[dict[str, Any]], nn.Module]) -> nn.Module:
    """Rebuild the dense architecture from its spec, replay the pruning history, then load the weights."""
    model = build(payload["spec"])
    example = torch.zeros(1, *payload["input_shape"])
    if payload["history"]:
        dg = _build_dg(model, example)
        dg.load_pruning_history(payload["history"])
        _sync_static_attrs(model)
    model.load_state_dict(with_module_versions(payload["state_dict"], model))
    return model
