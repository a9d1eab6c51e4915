"""The method callback protocol: the Trainer calls these hooks and knows nothing else of any method."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from compressor.budget import Budget
from compressor.config import DEFAULT_PRUNE as _P
from compressor.graph import Masks, PruningGraph


@dataclass
class Context:
    """What a method may use: the model being trained, its graph/budget, the target and the data."""

    model: nn.Module
    graph: PruningGraph
    budget: Budget
    target: float
    metric: str  # "flops" or "params"
    epochs: int
    steps_per_epoch: int
    train_loader: Iterable[tuple[torch.Tensor, torch.Tensor]]
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    device: torch.device
    max_ratio: float = _P.max_layer_ratio
    lr: float = 0.0  # the phase's initial learning rate
    optimizer: torch.optim.Optimizer | None = None
    log: Callable[[str], None] = print
    extra: dict[str, Any] = field(default_factory=dict)
    weights: dict[int, float] | None = None  # per-group allocation weights (--allocation latency); None: uniform


class Method:
    """Base class: no pruning. Subclasses override the hooks they need."""

    name = "none"

    def __init__(self) -> None:
        self.ctx: Context | None = None
        self._masks: Masks = {}
        self.finished = False
        self.mask_final_epoch = 0.0  # when the mask last changed, in epochs of the phase (trained on after it)

    def check(self, graph: PruningGraph, budget: Budget, target: float, metric: str, max_ratio: float) -> None:
        """Raise BadInput/GateFailed before any work if this method cannot prune ``graph`` to ``target``."""

    def setup(self, graph: PruningGraph, ctx: Context) -> None:
        self.ctx = ctx
        self._masks = graph.full_masks()

    def on_after_backward(self, step: int, loss: torch.Tensor | None = None, batch_size: int = 0) -> None:
        """Gradients are ready (unscaled under AMP), before ``optimizer.step``; ``loss`` is the batch's mean loss."""

    def on_after_step(self, step: int) -> None:
        pass

    def on_epoch_end(self, epoch: int) -> dict[str, Any]:
        return {}

    def masks(self) -> Masks:
        return self._masks

    def state_dict(self) -> dict[str, Any]:
        return {"masks": {int(k): v.clone() for k, v in self._masks.items()}, "finished": self.finished,
                "mask_final_epoch": self.mask_final_epoch}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._masks = {int(k): v.clone() for k, v in state["masks"].items()}
        self.finished = bool(state["finished"])
        self.mask_final_epoch = float(state.get("mask_final_epoch", 0.0))
