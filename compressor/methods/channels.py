"""Per-channel views of a group's parameters: norms, gradient norms, snapshots, zeroing and restoring.

A channel's *filter* is the concatenation of its coupled out-filters in the group (conv/linear weight
rows and biases); its *norm layer* entries are the BN/GroupNorm gamma, beta and running statistics.
Methods that soft-prune and let channels come back (PSAP) work through these views.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from compressor.graph import ChannelGroup

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm)


@dataclass
class Slice:
    """Rows ``pos`` (dim 0) of ``tensor`` belong to the group's root channels ``roots``."""

    name: str
    tensor: torch.Tensor
    pos: torch.Tensor
    roots: torch.Tensor

    def rows_of(self, channels: torch.Tensor) -> torch.Tensor:
        """Positions of this slice's rows that belong to any root channel marked True in ``channels``."""
        return self.pos[channels.cpu()[self.roots]].to(self.tensor.device)


def _slice(name: str, tensor: torch.Tensor, idxs: list[int], roots: list[int]) -> Slice:
    return Slice(name, tensor, torch.tensor(idxs, dtype=torch.long), torch.tensor(roots, dtype=torch.long))


def filter_slices(group: ChannelGroup) -> list[Slice]:
    """Conv/linear out-filter weights and biases of the group's channels."""
    out = []
    for m in group.members:
        if m.side == "out" and isinstance(m.module, (nn.Conv2d, nn.Linear)):
            out.append(_slice(f"{m.name}.weight", m.module.weight, m.idxs, m.root_idxs))
            if m.module.bias is not None:
                out.append(_slice(f"{m.name}.bias", m.module.bias, m.idxs, m.root_idxs))
    return out


def norm_slices(group: ChannelGroup) -> list[Slice]:
    """Norm-layer affine parameters (gamma and beta) of the group's channels."""
    out = []
    for m in group.members:
        if m.side == "out" and isinstance(m.module, _NORMS) and m.module.weight is not None:
            out.append(_slice(f"{m.name}.weight", m.module.weight, m.idxs, m.root_idxs))
            out.append(_slice(f"{m.name}.bias", m.module.bias, m.idxs, m.root_idxs))
    return out


def norm_modules(group: ChannelGroup) -> list[tuple[nn.Module, torch.Tensor, torch.Tensor]]:
    """(norm layer, positions, roots) for resetting running statistics."""
    out = []
    for m in group.members:
        if m.side == "out" and isinstance(m.module, _NORMS) and getattr(m.module, "running_mean", None) is not None:
            s = _slice(m.name, m.module.running_mean, m.idxs, m.root_idxs)
            out.append((m.module, s.pos, s.roots))
    return out


def sq_norms(slices: list[Slice], size: int, *, grad: bool = False) -> torch.Tensor:
    """Squared L2 norm per root channel over the slices' rows (of the gradient with ``grad=True``)."""
    acc = torch.zeros(size, dtype=torch.float64)
    for s in slices:
        t = s.tensor.grad if grad else s.tensor
        if t is None:
            continue
        rows = t.detach().index_select(0, s.pos.to(t.device)).float()
        acc.index_add_(0, s.roots, rows.reshape(len(s.pos), -1).pow(2).sum(1).double().cpu())
    return acc


def abs_values(slices: list[Slice], channels: torch.Tensor | None = None) -> torch.Tensor:
    """Every weight of the slices (of the marked channels only, if given), flattened and absolute."""
    rows = [s.pos.to(s.tensor.device) if channels is None else s.rows_of(channels) for s in slices]
    parts = [
        s.tensor.detach().index_select(0, r).abs().flatten().float().cpu() for s, r in zip(slices, rows, strict=True)
    ]
    return torch.cat(parts) if parts else torch.zeros(0)


@torch.no_grad()
def take(slices: list[Slice], channels: torch.Tensor) -> list[torch.Tensor]:
    """Copies of the rows of the marked channels (a snapshot), one tensor per slice."""
    return [s.tensor.index_select(0, s.rows_of(channels)).detach().clone().cpu() for s in slices]


@torch.no_grad()
def zero(slices: list[Slice], channels: torch.Tensor, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Zero the marked channels' rows and their optimizer momentum."""
    for s in slices:
        s.tensor.index_fill_(0, s.rows_of(channels), 0.0)
    clear_momentum(slices, channels, optimizer)


@torch.no_grad()
def clear_momentum(slices: list[Slice], channels: torch.Tensor, optimizer: torch.optim.Optimizer | None) -> None:
    """Zero the optimizer momentum of the marked channels' rows (SGD's ``momentum_buffer``)."""
    if optimizer is None:
        return
    for s in slices:
        buf = optimizer.state.get(s.tensor, {}).get("momentum_buffer")
        if buf is not None:
            buf.index_fill_(0, s.rows_of(channels), 0.0)


@torch.no_grad()
def reset_running_stats(group: ChannelGroup, channels: torch.Tensor) -> None:
    """Running mean 0 / var 1 for the marked channels: an all-zero channel then outputs beta in eval mode."""
    for mod, pos, roots in norm_modules(group):
        p = pos[channels.cpu()[roots]].to(mod.running_mean.device)
        mod.running_mean.index_fill_(0, p, 0.0)
        mod.running_var.index_fill_(0, p, 1.0)


@torch.no_grad()
def restore(slices: list[Slice], taken: torch.Tensor, rows: list[torch.Tensor], channels: torch.Tensor) -> None:
    """Write back the rows of ``channels`` (a subset of ``taken``) from a :func:`take` of ``taken``."""
    for s, r in zip(slices, rows, strict=True):
        hit = taken.cpu()[s.roots]
        pos, roots = s.pos[hit], s.roots[hit]
        want = channels.cpu()[roots]
        if bool(want.any()):
            s.tensor.index_copy_(0, pos[want].to(s.tensor.device), r[want].to(s.tensor.device, s.tensor.dtype))


@torch.no_grad()
def recalibrate_bn(model: nn.Module, loader: object, batches: int, device: torch.device) -> None:
    """Re-estimate BN running statistics (cumulative average over ``batches`` training batches).

    Zeroing many filters at once changes every downstream layer's input statistics; without this the
    eval-mode model right after a soft-pruning step is far off its train-mode self. Without a loader (a
    user's own loop that gave none) nothing is done: the running statistics then catch up during training.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms or batches <= 0 or loader is None:
        return
    saved = [(m, m.momentum) for m in norms]
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    model.train()
    for i, (x, _y) in enumerate(loader):  # type: ignore[attr-defined]
        if i == batches:
            break
        model(x.to(device))
    for m, mom in saved:
        m.momentum = mom
    model.train(was_training)
