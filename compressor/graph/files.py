"""Pruned-model files: what one holds (plain types only) and how the slim model is rebuilt from it."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from compressor.graph.tp import _build_dg, _sync_static_attrs

TP_VERSION = importlib.metadata.version("torch-pruning")
PRUNED_FORMAT = "compress.pruned/1"


def pruned_payload(spec: dict[str, Any], input_shape: tuple[int, ...], history: list, model: nn.Module,
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """What a pruned-model file holds: plain types only, so ``torch.load(weights_only=True)`` reads it."""
    return {
        "format": PRUNED_FORMAT,
        "spec": dict(spec),
        "input_shape": list(input_shape),
        "history": history,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "torch_pruning": TP_VERSION,
        **(extra or {}),
    }


def rebuild_pruned(payload: dict[str, Any], build: Callable[[dict[str, Any]], nn.Module]) -> nn.Module:
    """Rebuild the dense architecture from its spec, replay the pruning history, then load the weights."""
    model = build(payload["spec"])
    example = torch.zeros(1, *payload["input_shape"])
    if payload["history"]:
        dg = _build_dg(model, example)
        dg.load_pruning_history(payload["history"])
        _sync_static_attrs(model)
    model.load_state_dict(payload["state_dict"])
    return model
