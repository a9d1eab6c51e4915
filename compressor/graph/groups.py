"""The graph's data: channel groups and their members, masks, and the per-module cost coefficients."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

Masks = dict[int, torch.Tensor]


@dataclass
class Member:
    """One coupled layer of a group: which module, which side, and which of its channels map to which root."""

    name: str
    module: nn.Module
    side: str  # "out" (its output channels / norm channels) or "in" (its input channels)
    idxs: list[int]
    root_idxs: list[int]


@dataclass
class ChannelGroup:
    """A set of coupled channels: removing root channel c removes it from every member at once."""

    id: int
    root_name: str
    size: int
    members: list[Member] = field(repr=False)
    tp_group: Any = field(repr=False)
    step: int = 1  # kept counts are multiples of this (--round-to, and attention heads where coupled)
    max_ratio: float = 1.0  # a per-group cap on the pruned fraction (--group-max-ratio)
    tied: Member | None = field(default=None, repr=False)  # a grouped conv whose conv groups constrain the mask

    @property
    def layer_names(self) -> list[str]:
        return sorted({m.name for m in self.members})


@dataclass
class Cost:
    """FLOPs / params of one counted module as a function of its kept in/out channel counts.

    ``value = io * k_in * k_out + o * k_out + i * k_in + const``; ``in_dim``/``out_dim`` index the graph's
    channel-dimension table (-1 = not coupled to any group: the count is fixed).
    """

    name: str
    in_dim: int
    out_dim: int
    flops: tuple[float, float, float, float]
    params: tuple[float, float, float, float]


@dataclass
class Dim:
    """The channel dimension of one module side: ``size`` channels, of which ``links`` map to group roots."""

    size: int
    links: list[tuple[int, list[int]]] = field(default_factory=list)  # (group id, root idx per coupled channel)
