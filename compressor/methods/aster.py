"""ASTER: adaptive filter pruning via sensitivity feedback (Zhang & Freris, TNNLS 2023), as ``ASTER.md`` reads it.

One global threshold tau on the BN scaling factors |gamma| of the prunable channel groups (a group channel's
score: max, or mean, of |gamma| over the group's coupled BNs). In every batch of an update epoch the
threshold moves by ``eta0 * x * L / (B * S)``, where S is the sensitivity of the loss to tau: the sum of
``sign(gamma) * d`` over unpruned channels, with ``d = -H g`` the L-BFGS direction over gamma alone (the
curvature pairs are consecutive training iterates, so it costs no extra pass; the authors' released code runs
an L-BFGS that never moves its parameters, returns -g and spends ~26 passes a batch). At each epoch end the
channels scoring below tau are pruned for good (held at zero after every optimizer step). The mask freezes
when the FLOPs drop reaches the target; if the search epochs end first, tau is set to the value that meets
it (the *fallback*, recorded). Groups without BN cannot be scored: they are left unpruned and reported.

Our readings (docs/methods.md "ASTER"): ``L`` is the batch's *summed* loss (``--aster-loss sum``: L/B is then the
mean loss, the unit the loss-change rate x applies to; ``mean`` divides the mean by B again, a per-batch
step ~B times smaller that never reaches the target in the search phase). With ``--round-to N`` a group
keeps the smallest allowed count not below its channels at or above tau (exact ``< tau`` with N=1), and
the epoch that crosses the target trims to it (a threshold between two scores cannot split a rounding unit).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from compressor.budget import Budget, masks_from_counts, solve_counts
from compressor.errors import BadInput, GateFailed
from compressor.graph import Masks, PruningGraph
from compressor.methods import channels as ch
from compressor.methods.base import Context, Method
from compressor.methods.lbfgs import TwoLoop
from compressor.methods.options import ASTEROptions
from compressor.runtime import distributed

BN_BATCHES = 10  # v2: batches that re-estimate BN statistics after a prune changed the mask
#: v1: the first implementation (prune at epoch ends, kept counts rounded up while searching, eta0 = the phase LR).
#: v2 (the default): ASTER.md's second reading: prune exactly score < tau while searching, several times an
#: epoch, with BN re-estimation after each prune and rounding only at the freeze; eta0 fixed at the authors' 0.1.
VARIANTS: dict[str, dict[str, Any]] = {
    "v1": {"search": "rounded", "eta": "lr", "curvature": "consecutive", "prunes_per_epoch": 1},
    "v2": {
        "search": "exact",
        "eta": "fixed",
        "curvature": "consecutive",
        "prunes_per_epoch": 1,
    },  # 1: chosen on validation at the dev tier over 4 (docs/methods.md)
}
TINY_GROUP = 0.05  # freeze when a group would keep <= 5% of its channels
TRACE_POINTS = 64  # tau samples kept per epoch for the plot
TRIM_TOL = 0.005  # the frozen mask's drop lies in [target, target + TRIM_TOL] when the rounding allows


class ASTER(Method):
    """A global BN-|gamma| threshold adapted from the loss sensitivity; permanent masking; freeze on target."""

    name = "aster"

    def __init__(self, *, max_prune_fraction: float = 0.8, **options: Any) -> None:
        """``options``: the fields of :class:`~compressor.methods.options.ASTEROptions` (their defaults)."""
        super().__init__()
        o = ASTEROptions.of(options)
        given = {"search": o.search, "eta": o.eta, "curvature": o.curvature, "prunes_per_epoch": o.prunes_per_epoch}
        chosen = {**VARIANTS[o.variant], **{k: v for k, v in given.items() if v is not None}}
        if o.tau0 < 0 or o.x <= 0 or not 0 < max_prune_fraction <= 1 or o.update_every < 1 or o.history < 1:
            raise ValueError("aster: need tau0 >= 0, x > 0, 0 < max-prune-fraction <= 1, update-every >= 1, "
                             "history >= 1")  # fmt: skip
        if o.eta0 <= 0 or o.curvature_every < 1 or int(chosen["prunes_per_epoch"]) < 1:
            raise ValueError("aster: need eta0 > 0, curvature-every >= 1, prunes-per-epoch >= 1")
        if o.search_epochs is not None and o.search_epochs < 1:
            raise ValueError(f"aster search epochs must be >= 1, got {o.search_epochs}")
        self.variant, self.search, self.eta, self.eta0_fixed = o.variant, chosen["search"], chosen["eta"], o.eta0
        self.normalize, self.curvature = bool(o.normalize), chosen["curvature"]
        self.curvature_every = o.curvature_every
        self.prunes_per_epoch = int(chosen["prunes_per_epoch"])
        self.tau = float(o.tau0)
        self.reduce, self.sensitivity, self.x, self.loss_mode = o.reduce, o.sensitivity, o.x, o.loss
        self.update_every, self.search_epochs, self.eps = o.update_every, o.search_epochs, o.eps
        self.max_prune_fraction = max_prune_fraction
        self.lbfgs = TwoLoop(o.history)
        self.frozen = False
        self.freeze_epoch: int | None = None
        self.fallback: dict[str, Any] | None = None
        self.trim: dict[str, float] | None = None
        self.log: list[dict[str, Any]] = []
        self.skipped: list[tuple[str, str]] = []
        self._alive_cache: torch.Tensor | None = None
        self._curv_batch: tuple[torch.Tensor, torch.Tensor] | None = None
        self.prune_events = 0
        self._epoch = self._new_epoch_stats()

    # ------------------------------------------------------------------------------------------ setup
    def check(self, graph: PruningGraph, budget: Budget, target: float, metric: str, max_ratio: float) -> None:
        """BadInput when no group has BN; GateFailed when the groups with BN cannot reach the target."""
        self._pool(graph)
        fixed = {gid: graph.groups[gid].size for gid in self.unscored}
        try:
            solve_counts(graph, budget, target, metric=metric, max_ratio=max_ratio, caps=fixed, floors=fixed)
        except GateFailed as exc:
            raise GateFailed(f"ASTER prunes only groups with BatchNorm: {exc}") from None

    def setup(self, graph: PruningGraph, ctx: Context) -> None:
        super().setup(graph, ctx)
        self.eta0 = ctx.lr if self.eta == "lr" else self.eta0_fixed
        self.check(graph, ctx.budget, ctx.target, ctx.metric, ctx.max_ratio)
        for name, why in self.skipped:
            ctx.log(f"[aster] {name}: {why}")
        if self.search_epochs is None:
            self.search_epochs = max(1, ctx.epochs // 2)
        self.search_epochs = min(self.search_epochs, max(ctx.epochs, 1))
        self.allowed = {g.id: graph.allowed_keep(g.id, ctx.max_ratio) for g in graph.groups}
        # while searching, "exact" prunes exactly score < tau: every count is allowed (the rounding comes at the freeze)
        self.search_allowed = self.allowed if self.search == "rounded" else {
            g.id: [k for k in range(1, g.size + 1) if k >= self.allowed[g.id][0] or k == g.size]
            for g in graph.groups}  # fmt: skip
        spe = max(1, ctx.steps_per_epoch)
        per = min(self.prunes_per_epoch, spe)
        self.points = {round(k * spe / per) - 1 for k in range(1, per)}  # in-epoch batches; the epoch end is one too
        if self.curvature == "same-batch":
            if ctx.train_loader is None:
                raise BadInput("ASTER curvature same-batch needs a train_loader (it takes one fixed batch from it)")
            self._curv_batch = next(iter(ctx.train_loader))
        self._refresh_hold()
        if ctx.epochs == 0:  # no training to adapt in: threshold at the target on the given weights
            self._freeze(self._meet_target(), epoch=0, reason="no training epochs", fallback=True)

    def _pool(self, graph: PruningGraph) -> None:
        """Index the BN gammas of every scorable group: pooled entry -> (BN weight, position, global channel)."""
        self.offsets, total = {}, 0
        for g in graph.groups:
            self.offsets[g.id] = total
            total += g.size
        self.params: list[nn.Parameter] = []
        pos, chan = [], []
        self.unscored: list[int] = []
        self.skipped = []
        for g in graph.groups:
            bns = [m for m in g.members if m.side == "out" and isinstance(m.module, nn.modules.batchnorm._BatchNorm)]
            bns = [m for m in bns if m.module.weight is not None]
            covered = torch.zeros(g.size, dtype=torch.bool)
            for m in bns:
                covered[torch.tensor(m.root_idxs, dtype=torch.long)] = True
            if not bns or not bool(covered.all()):
                self.unscored.append(g.id)
                why = "no affine BatchNorm" if not bns else "BatchNorm covers only part of its channels"
                self.skipped.append((g.root_name, f"{why} in this group: ASTER cannot score it (left unpruned)"))
                continue
            for m in bns:
                k = len(self.params)
                self.params.append(m.module.weight)
                pos.append(torch.tensor([[k, i] for i in m.idxs], dtype=torch.long))
                chan.append(torch.tensor(m.root_idxs, dtype=torch.long) + self.offsets[g.id])
        if not self.params:
            raise BadInput(f"ASTER needs BatchNorm on the prunable groups; none of the {len(graph.groups)} groups "
                           "has one: choose method psap, l1 or l2 (--method, or method= in Python)")  # fmt: skip
        self.total = total
        starts = torch.tensor([0] + [p.numel() for p in self.params]).cumsum(0)[:-1]
        self.entry_flat = starts[torch.cat(pos)[:, 0]] + torch.cat(pos)[:, 1]  # index into the concatenated weights
        self.entry_param = torch.cat(pos)[:, 0]  # which BN each entry belongs to (per-BN normalization)
        self.entry_chan = torch.cat(chan)
        self.scored = torch.zeros(total, dtype=torch.bool)
        self.scored[self.entry_chan] = True

    # ------------------------------------------------------------------------------------------ views
    def _gather(self, grad: bool = False) -> torch.Tensor:
        """The pooled gamma vector (or its gradient; zeros where none), float64 on the CPU."""
        parts = []
        for p in self.params:
            t = p.grad if grad else p
            parts.append(torch.zeros(p.numel()) if t is None else t.detach().float().cpu())
        return torch.cat(parts).double()[self.entry_flat]

    def _alive(self) -> torch.Tensor:
        """Per global channel: kept (True) or pruned; unscored groups count as kept (cached per mask)."""
        if self._alive_cache is None:
            self._alive_cache = torch.ones(self.total, dtype=torch.bool)
            for gid, m in self._masks.items():
                self._alive_cache[self.offsets[gid] : self.offsets[gid] + len(m)] = m
        return self._alive_cache

    def channel_scores(self, gamma: torch.Tensor | None = None) -> torch.Tensor:
        """Score per global channel: max (or mean) |gamma| over its coupled BNs; -inf if pruned, inf if unscored."""
        g = (self._gather() if gamma is None else gamma).abs()
        if self.normalize:  # each BN's |gamma| over the mean |gamma| of its channels still alive
            alive = self._alive()[self.entry_chan].double()
            n = torch.zeros(len(self.params), dtype=torch.float64).index_add_(0, self.entry_param, alive)
            tot = torch.zeros(len(self.params), dtype=torch.float64).index_add_(0, self.entry_param, g * alive)
            g = g / (tot / n.clamp(min=1)).clamp(min=1e-12)[self.entry_param]
        s = torch.zeros(self.total, dtype=torch.float64)
        s = s.scatter_reduce(0, self.entry_chan, g, reduce={"max": "amax", "mean": "mean", "min": "amin"}[self.reduce],
                             include_self=False)  # fmt: skip
        s[~self.scored] = math.inf
        s[~self._alive()] = -math.inf
        return s

    def group_scores(self, scores: torch.Tensor) -> dict[int, torch.Tensor]:
        assert self.ctx is not None
        return {g.id: scores[self.offsets[g.id] : self.offsets[g.id] + g.size] for g in self.ctx.graph.groups}

    # ------------------------------------------------------------------------------------------ hooks
    def on_after_backward(self, step: int, loss: torch.Tensor | None = None, batch_size: int = 0) -> None:
        ctx = self.ctx
        assert ctx is not None
        if self.frozen or loss is None or (step // ctx.steps_per_epoch) % self.update_every:
            return
        alive = self._alive()[self.entry_chan]
        gamma = self._gather() * alive
        g = self._gather(grad=True) * alive
        if self.sensitivity == "lbfgs":
            if self.curvature == "consecutive":  # pairs from consecutive iterates (different batches)
                self.lbfgs.observe(gamma, g)
            d = self.lbfgs.direction(g)
        else:
            d = -g
        s = float((torch.sign(gamma) * d)[alive].sum())
        batch = max(1, batch_size)
        big_l = float(loss) * (batch if self.loss_mode == "sum" else 1)
        e = self._epoch
        e["batches"] += 1
        if math.isfinite(s):
            e["S"].append(s)
        if not (math.isfinite(s) and math.isfinite(big_l) and s > self.eps):
            e["skipped"] += 1
            return
        dtau = self.eta0 * self.x * big_l / (batch * s)
        if self._guard(self.tau + dtau, gamma):
            e["reverted"] += 1
            return
        self.tau += dtau
        e["dtau"].append(dtau)
        if len(e["trace"]) < TRACE_POINTS * 4:
            e["trace"].append(self.tau)

    def _guard(self, tau: float, gamma: torch.Tensor) -> str:
        """Why ``tau`` must be reverted ('' if it may stand)."""
        if not math.isfinite(tau) or tau < 0:
            return "negative"
        scores = self.channel_scores(gamma)
        n_scored = int(self.scored.sum())
        if int((scores < tau).sum()) > self.max_prune_fraction * n_scored:
            return "max prune fraction"
        for gid, s in self.group_scores(scores).items():
            if gid not in self.unscored and len(s) > 1 and tau >= float(torch.topk(s, 2).values[1]):
                return "would empty a group"
        return ""

    def on_after_step(self, step: int) -> None:
        for t, rows in self._hold:  # permanent masking: pruned filters, biases and BN gamma/beta stay zero
            t.data.index_fill_(0, rows, 0.0)
        if self.frozen or self.ctx is None:
            return
        spe = max(1, self.ctx.steps_per_epoch)
        if self._curv_batch is not None and step % self.curvature_every == 0:
            self._observe_same_batch()
        if step % spe in self.points:  # an in-epoch prune (v2); the epoch end prunes in on_epoch_end
            self._prune_point(step // spe, at=round((step + 1) / spe, 4))

    def _observe_same_batch(self) -> None:
        """A curvature pair from one fixed batch: its gamma-gradient at the current iterate (one extra pass every
        ``curvature_every`` steps), paired with the previous such observation, so s and y see the same loss."""
        ctx = self.ctx
        assert ctx is not None
        x, y = self._curv_batch  # type: ignore[misc]
        bns = [m for m in ctx.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        saved = [m.momentum for m in bns]
        for m in bns:
            m.momentum = 0.0  # batch statistics as in training; running statistics untouched
        try:
            loss = ctx.loss_fn(ctx.model(x.to(ctx.device)), y.to(ctx.device))
            grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        finally:
            for m, mom in zip(bns, saved, strict=True):
                m.momentum = mom
        flat = torch.cat([torch.zeros(p.numel()) if gr is None else gr.detach().float().cpu()
                          for p, gr in zip(self.params, grads, strict=True)]).double()  # fmt: skip
        distributed.all_mean_([flat])
        alive = self._alive()[self.entry_chan]
        self.lbfgs.observe(self._gather() * alive, flat[self.entry_flat] * alive)

    def on_epoch_end(self, epoch: int) -> dict[str, Any]:
        ctx = self.ctx
        assert ctx is not None
        t = epoch + 1
        update = not self.frozen and epoch % self.update_every == 0
        tau_start = self._epoch["tau_start"]
        note = self._prune_point(epoch) if not self.frozen else ""
        rec = self._record(t, update, tau_start, note)
        self.log.append(rec)
        self._epoch = self._new_epoch_stats()
        ctx.log(f"[aster] epoch {t}: tau {self.tau:.5g}, {ctx.metric} drop {rec['drop']:.4f}, pruned "
                f"{rec['pruned_fraction']:.3f} of channels" + (", frozen" if self.frozen else "")
                + (" (fallback)" if self.fallback else ""))  # fmt: skip
        return {"aster_tau": self.tau, f"{ctx.metric}_drop": rec["drop"], "aster_frozen": self.frozen,
                "aster_record": rec}  # fmt: skip

    def _prune_point(self, epoch: int, at: float | None = None) -> str:
        """Prune ``score < tau`` (or freeze when that reaches the target) at fractional epoch ``at`` (default: the
        end of ``epoch``); the end of the search phase's last epoch sets tau by the fallback. Returns a note."""
        ctx = self.ctx
        assert ctx is not None
        t = epoch + 1
        end = at is None
        at = t if at is None else at
        scores = self.group_scores(self.channel_scores())
        masks = self._masks_at(self.tau, scores, self.search_allowed)
        tiny = [gid for gid, s in scores.items() if int((s >= self.tau).sum()) <= TINY_GROUP * len(s)]
        note = ""
        if ctx.budget.drop(masks, ctx.metric) >= ctx.target:
            self._freeze(self._meet_target(), epoch=at, reason="target reached")
        elif tiny:
            note = f"group {ctx.graph.groups[tiny[0]].root_name} would keep <= 5%"
            self._freeze(self._meet_target(), epoch=at, reason=note, fallback=True)
        else:
            self._prune(masks, at)
            if end and t >= (self.search_epochs or 1):
                self._freeze(self._meet_target(), epoch=t, reason="search epochs over", fallback=True)
        return note

    # ------------------------------------------------------------------------------------------ masks
    def _masks_at(self, tau: float, scores: dict[int, torch.Tensor],
                  allowed: dict[int, list[int]] | None = None) -> Masks:  # fmt: skip
        """Prune ``score < tau`` (pruned channels stay pruned), rounded up to an allowed kept count per group."""
        allowed = allowed or self.allowed
        counts = {}
        for gid, s in scores.items():
            want = int((s >= tau).sum())
            counts[gid] = min([k for k in allowed[gid] if k >= want] + [int(self._masks[gid].sum())])
        return masks_from_counts(scores, counts)

    def _meet_target(self) -> tuple[Masks, float, bool]:
        """Masks at the smallest threshold reaching the target, that threshold, and whether they were trimmed."""
        ctx = self.ctx
        assert ctx is not None
        scores = self.channel_scores()
        by_group = self.group_scores(scores)
        cands = torch.unique(scores[torch.isfinite(scores)]).tolist()
        taus = [math.nextafter(c, math.inf) for c in cands]  # a tau just above a score prunes that channel
        if not taus or ctx.budget.drop(self._masks_at(taus[-1], by_group), ctx.metric) < ctx.target:
            raise GateFailed(f"ASTER cannot reach {ctx.metric} drop {ctx.target:.3f} with the groups it scores")
        lo, hi = -1, len(taus) - 1  # invariant: taus[hi] reaches the target, taus[lo] does not (or lo = -1)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if ctx.budget.drop(self._masks_at(taus[mid], by_group), ctx.metric) >= ctx.target:
                hi = mid
            else:
                lo = mid
        tau = taus[hi]
        over = self._masks_at(tau, by_group)
        if ctx.budget.drop(over, ctx.metric) <= ctx.target + TRIM_TOL:
            return over, tau, False
        # One score step moved a whole rounding unit past the target: keep the threshold's allocation (each
        # group's fraction below tau) and scale it to the budget; solve_counts then fixes the rounding.
        frac = {gid: float((s < tau).double().mean()) for gid, s in by_group.items()}
        fixed = {gid: ctx.graph.groups[gid].size for gid in self.unscored}
        caps = {gid: int(m.sum()) for gid, m in self._masks.items()}
        counts = solve_counts(ctx.graph, ctx.budget, ctx.target, metric=ctx.metric, weights=frac,
                              max_ratio=ctx.max_ratio, caps=caps, floors=fixed, tol=TRIM_TOL)  # fmt: skip
        return masks_from_counts(by_group, counts), tau, True

    def _prune(self, masks: Masks, epoch: float) -> None:
        """Make ``masks`` permanent: zero every coupled parameter (and momentum) of the newly pruned channels."""
        ctx = self.ctx
        assert ctx is not None
        masks = ctx.graph.legalize(masks)
        changed = any(not torch.equal(masks[gid], self._masks[gid]) for gid in masks)
        self._masks = masks
        if not changed:
            return
        self.mask_final_epoch = float(epoch)
        self.prune_events += 1
        ctx.graph.apply_masks(masks)  # filters, biases, BN gamma/beta/running stats, consumer inputs
        for g in ctx.graph.groups:
            if not bool(masks[g.id].all()):
                ch.clear_momentum(ch.filter_slices(g) + ch.norm_slices(g), ~masks[g.id], ctx.optimizer)
        self._refresh_hold()
        self.lbfgs.reset()  # old pairs span channels that are gone
        if self.variant == "v2":  # the pruned channels changed every downstream layer's input statistics
            ch.recalibrate_bn(ctx.model, ctx.train_loader, BN_BATCHES, ctx.device)

    def _refresh_hold(self) -> None:
        """After a mask change: the rows to hold at zero, and the alive cache."""
        assert self.ctx is not None
        self._alive_cache = None
        self._hold = []
        for g in self.ctx.graph.groups:
            dropped = ~self._masks[g.id]
            if bool(dropped.any()):
                self._hold += [(s.tensor, s.rows_of(dropped)) for s in ch.filter_slices(g) + ch.norm_slices(g)]

    def _freeze(self, result: tuple[Masks, float, bool], *, epoch: int, reason: str, fallback: bool = False) -> None:
        ctx = self.ctx
        assert ctx is not None
        masks, tau, trimmed = result
        if fallback:
            self.fallback = {"epoch": epoch, "reason": reason, "tau_before": self.tau, "tau_set": tau}
            ctx.log(f"[aster] fallback at epoch {epoch} ({reason}): tau {self.tau:.5g} -> {tau:.5g}")
        # the crossing epoch's tau may overshoot: the frozen tau is the smallest that reaches the target
        self.trim = {"tau_adapted": self.tau, "tau_effective": tau, "rounding_trimmed": trimmed}
        self.tau = tau
        self._prune(masks, epoch)
        self.frozen, self.freeze_epoch, self.finished = True, epoch, True

    # ------------------------------------------------------------------------------------------ records
    def _new_epoch_stats(self) -> dict[str, Any]:
        return {"tau_start": getattr(self, "tau", 0.0), "batches": 0, "skipped": 0, "reverted": 0,
                "S": [], "dtau": [], "trace": []}  # fmt: skip

    def _record(self, epoch: int, update: bool, tau_start: float, note: str) -> dict[str, Any]:
        ctx = self.ctx
        assert ctx is not None
        e = self._epoch
        s, dt = torch.tensor(e["S"], dtype=torch.float64), torch.tensor(e["dtau"], dtype=torch.float64)
        stride = max(1, len(e["trace"]) // TRACE_POINTS)
        alive = self._alive()[self.scored]
        return {
            "epoch": epoch, "update": update, "tau_start": tau_start, "tau": self.tau,
            "batches": e["batches"], "updates": len(dt), "skipped": e["skipped"], "reverted": e["reverted"],
            "S_median": float(s.median()) if len(s) else None, "S_min": float(s.min()) if len(s) else None,
            "S_max": float(s.max()) if len(s) else None,
            "dtau_mean": float(dt.mean()) if len(dt) else 0.0, "dtau_max": float(dt.max()) if len(dt) else 0.0,
            "tau_trace": e["trace"][::stride],
            "pruned_fraction": 1.0 - float(alive.double().mean()),
            "drop": ctx.budget.drop(self._masks, ctx.metric),
            "frozen": self.frozen, "freeze_epoch": self.freeze_epoch, "fallback": self.fallback, "trim": self.trim,
            "note": note,
            "kept": {g.root_name: int(self._masks[g.id].sum()) for g in ctx.graph.groups},
            "prune_events": self.prune_events, "lbfgs_pairs": len(self.lbfgs.pairs),
            "unscored": [name for name, _ in self.skipped],
        }  # fmt: skip

    # ------------------------------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "tau": self.tau, "frozen": self.frozen, "freeze_epoch": self.freeze_epoch,
                "fallback": self.fallback, "trim": self.trim, "log": self.log, "lbfgs": self.lbfgs.state_dict(),
                "epoch_stats": self._epoch, "prune_events": self.prune_events}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.tau, self.frozen = float(state["tau"]), bool(state["frozen"])
        self.freeze_epoch, self.fallback, self.trim = state["freeze_epoch"], state["fallback"], state["trim"]
        self.log, self._epoch = list(state["log"]), dict(state["epoch_stats"])
        self.lbfgs.load_state_dict(state["lbfgs"])
        self.prune_events = int(state.get("prune_events", 0))
        if self.ctx is not None:
            self._refresh_hold()
