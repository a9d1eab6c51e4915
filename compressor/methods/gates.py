"""Channel gates through BatchNorm and the bookkeeping PSAP's second reading needs.

A channel is *gated off* when every BN gamma and beta of its group is held at zero: its output is exactly 0 in
training and in eval, so the network that trains is the network that ships, while its filters stay intact
(and frozen) for a later comeback. ``dL/dgamma_c`` stays defined while ``gamma_c = 0`` (the normalized input is
still computed), so ``t_c = sum over the group's BNs of (gamma_c * dL/dgamma_c + beta_c * dL/dbeta_c)`` is the
first-order change of the loss when the channel is switched on (gated channels, with their snapshot gamma/beta)
or, with the sign flipped, off (kept channels). :class:`GateTaylor` accumulates it over training iterations.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from compressor.graph import ChannelGroup
from compressor.methods import channels as ch


def gateable(group: ChannelGroup) -> bool:
    """Whether every output conv/linear of the group has its own affine BN covering the group's channels."""
    convs = [m for m in group.members if m.side == "out" and isinstance(m.module, (nn.Conv2d, nn.Linear))]
    bns = [m for m in group.members if m.side == "out" and isinstance(m.module, nn.modules.batchnorm._BatchNorm)
           and m.module.weight is not None]  # fmt: skip
    if not bns or len(bns) < len(convs):
        return False
    covered = torch.zeros(group.size, dtype=torch.bool)
    for m in bns:
        covered[torch.tensor(m.root_idxs, dtype=torch.long)] = True
    return bool(covered.all())


class Bank:
    """A copy of every row of ``slices`` (all root channels of a group), refreshed per channel on demand."""

    def __init__(self, slices: list[ch.Slice], size: int) -> None:
        self.slices, self.size = slices, size
        self.all = torch.ones(size, dtype=torch.bool)
        self.rows = ch.take(slices, self.all)

    @torch.no_grad()
    def save(self, channels: torch.Tensor) -> None:
        """Store the current values of the marked channels."""
        for s, r in zip(self.slices, self.rows, strict=True):
            hit = channels.cpu()[s.roots]
            if bool(hit.any()):
                r[hit] = s.tensor.detach()[s.pos[hit].to(s.tensor.device)].cpu().to(r.dtype)

    def restore(self, channels: torch.Tensor) -> None:
        """Write the stored values of the marked channels back into the model."""
        ch.restore(self.slices, self.all, self.rows, channels)

    def state_dict(self) -> list[torch.Tensor]:
        return [r.clone() for r in self.rows]

    def load_state_dict(self, rows: list[torch.Tensor]) -> None:
        self.rows = [r.clone() for r in rows]


class GateTaylor:
    """Per root channel of a gateable group: running sum and sum of squares of ``t_c`` over iterations.

    Kept channels use their live gamma/beta; gated ones their snapshot (``bank``), so ``t_c`` is the estimated
    loss change of switching the channel on. ``rms`` ranks kept channels (importance, a Fisher-like score: the
    mean of ``t`` is ~0 at a trained point), ``benefit = -mean(t)`` says whether switching a gated one on helps.
    """

    def __init__(self, group: ChannelGroup, bank: Bank) -> None:
        self.pairs = [(w, b) for w, b in zip(ch.norm_slices(group)[::2], ch.norm_slices(group)[1::2], strict=True)]
        self.size, self.bank = group.size, bank
        self.reset()

    def reset(self) -> None:
        self.sum = torch.zeros(self.size, dtype=torch.float64)
        self.sq = torch.zeros(self.size, dtype=torch.float64)
        self.count = 0

    @torch.no_grad()
    def observe(self, gated: torch.Tensor) -> None:
        """Add one iteration (gradients present); ``gated`` marks the channels that are switched off."""
        t = torch.zeros(self.size, dtype=torch.float64)
        stored = dict(zip((s.name for s in self.bank.slices), self.bank.rows, strict=True))
        for w, b in self.pairs:
            if w.tensor.grad is None or b.tensor.grad is None:
                continue
            pos = w.pos.to(w.tensor.device)
            gw, gb = w.tensor.grad[pos].double().cpu(), b.tensor.grad[pos].double().cpu()
            vw, vb = w.tensor.detach()[pos].double().cpu(), b.tensor.detach()[pos].double().cpu()
            off = gated[w.roots]
            if bool(off.any()):
                vw[off] = stored[w.name][off].double()
                vb[off] = stored[b.name][off].double()
            t.index_add_(0, w.roots, vw * gw + vb * gb)
        self.sum += t
        self.sq += t * t
        self.count += 1

    def rms(self) -> torch.Tensor:
        return (self.sq / max(self.count, 1)).sqrt()

    def benefit(self) -> torch.Tensor:
        return -self.sum / max(self.count, 1)

    def state_dict(self) -> dict[str, Any]:
        return {"sum": self.sum.clone(), "sq": self.sq.clone(), "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sum, self.sq, self.count = state["sum"].clone(), state["sq"].clone(), int(state["count"])


class ConsumerPulse:
    """The gradient signal of a gated group, read where its channels are consumed.

    A gated channel outputs exactly 0, and the ReLU that usually follows BN passes no gradient at 0, so its
    gate gradient is 0 too. The layers that read the channel (the group's consumer convs/linears, whose weights
    stay intact) still get a gradient ``G_c = sum over batch and positions of dL/dx_c`` at their input. The
    first-order loss change of moving channel c from 0 to its mean value ``m_c`` when it was on (mean
    replacement) is ``t_c = sum over consumers of m_c * G_c``: ``benefit = -mean(t)`` over the iterations says
    whether switching a gated channel on would lower the loss; ``|mean(t)|`` of a kept channel is the same
    estimate for switching it off, in the same units.
    """

    def __init__(self, group: ChannelGroup) -> None:
        self.size = group.size
        self.consumers = [(m.module, torch.tensor(m.idxs, dtype=torch.long),
                           torch.tensor(m.root_idxs, dtype=torch.long)) for m in group.members
                          if m.side == "in" and isinstance(m.module, (nn.Conv2d, nn.Linear))]  # fmt: skip
        self.means = [torch.zeros(self.size, dtype=torch.float64) for _ in self.consumers]
        self.seen = [torch.zeros(self.size, dtype=torch.bool) for _ in self.consumers]
        self.on = torch.ones(self.size, dtype=torch.bool)
        self._hooks: list[Any] = []
        self._iteration = torch.zeros(self.size, dtype=torch.float64)
        self.reset()

    def reset(self) -> None:
        self.sum = torch.zeros(self.size, dtype=torch.float64)
        self.count = 0

    def attach(self) -> None:
        self.detach()
        for k, (mod, _pos, _roots) in enumerate(self.consumers):
            self._hooks.append(mod.register_forward_pre_hook(self._hook(k)))

    def detach(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def _hook(self, k: int) -> Any:
        mod, pos, roots = self.consumers[k]

        def hook(_mod: Any, inputs: tuple) -> None:
            x = inputs[0]
            if not (torch.is_grad_enabled() and isinstance(x, torch.Tensor) and x.requires_grad):
                return
            dims = [d for d in range(x.dim()) if d != 1]
            with torch.no_grad():
                m = x.detach().mean(dims).index_select(0, pos.to(x.device)).double().cpu()
                live = self.on[roots]  # a gated channel keeps the mean it had when it was on
                mean = torch.zeros(self.size, dtype=torch.float64).index_add_(0, roots[live], m[live])
                hit = torch.zeros(self.size, dtype=torch.bool)
                hit[roots[live]] = True
                self.means[k] = torch.where(hit & self.seen[k], 0.9 * self.means[k] + 0.1 * mean,
                                            torch.where(hit, mean, self.means[k]))  # fmt: skip
                self.seen[k] |= hit
            means = self.means[k]

            def grad_hook(g: torch.Tensor) -> None:
                gsum = g.detach().sum(dims).index_select(0, pos.to(g.device)).double().cpu()
                self._iteration.index_add_(0, roots, gsum * means[roots])

            x.register_hook(grad_hook)

        return hook

    def end_iteration(self) -> None:
        """Close one training iteration (after backward): add its ``t`` to the running sum."""
        self.sum += self._iteration
        self.count += 1
        self._iteration = torch.zeros(self.size, dtype=torch.float64)

    def benefit(self) -> torch.Tensor:
        return -self.sum / max(self.count, 1)

    def state_dict(self) -> dict[str, Any]:
        return {"sum": self.sum.clone(), "count": self.count, "means": [m.clone() for m in self.means],
                "seen": [s.clone() for s in self.seen]}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sum, self.count = state["sum"].clone(), int(state["count"])
        self.means = [m.clone() for m in state["means"]]
        self.seen = [s.clone() for s in state["seen"]]
