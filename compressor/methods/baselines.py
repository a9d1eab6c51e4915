"""Baselines: Torch-Pruning importances (l1, l2, bn-scale, taylor, random) on our groups and budget.

One-shot (``steps=1``: prune before the first epoch, then fine-tune) or iterative (``steps=S``: prune at
S evenly spaced epochs of the first half of training, each step reaching ``target * k / S``; channels
pruned earlier stay pruned, so on coarse groups the last step may overshoot the target by a rounding
unit). Masked channels are held at zero after every optimizer step.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from compressor.budget import Budget, masks_from_counts, solve_masks
from compressor.errors import BadInput
from compressor.graph import PruningGraph, tp_importances
from compressor.methods.base import Context, Method
from compressor.runtime import distributed

TAYLOR_BATCHES = 8


class ImportanceBaseline(Method):
    """Prune the lowest-importance channels of each group, at a uniform per-group ratio meeting the target."""

    def __init__(self, importance: str, steps: int = 1, seed: int = 0, prune_at: int = 0,
                 allocation_from: str | None = None) -> None:  # fmt: skip
        super().__init__()
        self.name = importance
        self.importance = tp_importances()[importance]()
        self.steps = max(1, int(steps))
        self.seed = seed
        if prune_at < 0:
            raise ValueError(f"--prune-at must be >= 0, got {prune_at}")
        if (prune_at or allocation_from) and self.steps > 1:
            raise ValueError("--prune-at and --allocation-from are for one-shot pruning (--steps 1)")
        self.prune_at, self.allocation_from = int(prune_at), allocation_from
        self.counts: dict[int, int] | None = None
        self.done_steps = 0
        self.schedule: list[int] = []
        self.log: list[dict[str, Any]] = []

    def check(self, graph: PruningGraph, budget: Budget, target: float, metric: str, max_ratio: float) -> None:
        """BadInput when --allocation-from does not fit this model."""
        if self.allocation_from is not None:
            self.counts = read_allocation(self.allocation_from, graph)

    def setup(self, graph: PruningGraph, ctx: Context) -> None:
        super().setup(graph, ctx)
        if self.allocation_from is not None and self.counts is None:
            self.counts = read_allocation(self.allocation_from, graph)
        if self.prune_at:
            if self.prune_at >= ctx.epochs:
                raise BadInput(f"--prune-at {self.prune_at} must be below --epochs ({ctx.epochs})")
            self.schedule = [self.prune_at]
            return
        if ctx.epochs == 0:  # no training: take every step now (iterative one-shot)
            self.schedule = [0]
            while not self.finished:
                self._prune_step()
            return
        horizon = max(1, ctx.epochs // 2)  # steps at distinct epochs of the first half (fewer if epochs are few)
        self.schedule = sorted({round(k * horizon / self.steps) for k in range(self.steps)})
        if len(self.schedule) < self.steps:
            ctx.log(f"[{self.name}] {self.steps} steps do not fit {horizon} epoch(s): taking {len(self.schedule)}")
        self.steps = len(self.schedule)
        self._prune_step()  # the schedule always starts at epoch 0

    def _scores(self) -> dict[int, torch.Tensor]:
        ctx = self.ctx
        assert ctx is not None
        if self.name == "taylor":
            self._accumulate_grads()
        if self.name == "random":
            torch.manual_seed(self.seed + self.done_steps)
        scores = {g.id: ctx.graph.tp_importance(self.importance, g.id) for g in ctx.graph.groups}
        if self.name == "taylor":
            ctx.model.zero_grad(set_to_none=True)
            distributed.all_mean_(scores[gid] for gid in sorted(scores))  # each rank saw its own batches
        return scores

    def _accumulate_grads(self) -> None:
        ctx = self.ctx
        assert ctx is not None
        if ctx.train_loader is None:
            raise BadInput("the taylor baseline needs a train_loader and a loss_fn (it accumulates gradients)")
        ctx.model.zero_grad(set_to_none=True)
        was_training = ctx.model.training
        ctx.model.eval()  # gradients only: BN running statistics must not move (matters for --epochs 0)
        for i, (x, y) in enumerate(ctx.train_loader):
            if i == TAYLOR_BATCHES:
                break
            ctx.loss_fn(ctx.model(x.to(ctx.device)), y.to(ctx.device)).backward()
        ctx.model.train(was_training)

    def _prune_step(self) -> None:
        ctx = self.ctx
        assert ctx is not None
        self.done_steps += 1
        target = ctx.target * self.done_steps / self.steps
        scores = self._scores()
        for gid, s in scores.items():  # channels pruned by an earlier step stay pruned
            s[~self._masks[gid]] = -float("inf")
        caps = {gid: int(m.sum()) for gid, m in self._masks.items()}
        if self.counts is not None:  # another run's per-group kept counts (the allocation control)
            self._masks = ctx.graph.legalize(masks_from_counts(scores, self.counts))
        else:
            self._masks = ctx.graph.legalize(
                solve_masks(
                    ctx.graph,
                    ctx.budget,
                    scores,
                    target,
                    metric=ctx.metric,
                    max_ratio=ctx.max_ratio,
                    caps=caps,
                    weights=ctx.weights,
                )
            )
        ctx.graph.apply_masks(self._masks)
        drop = ctx.budget.drop(self._masks, ctx.metric)
        self.log.append({"step": self.done_steps, "target": target, f"{ctx.metric}_drop": drop})
        ctx.log(f"[{self.name}] step {self.done_steps}/{self.steps}: {ctx.metric} drop {drop:.4f}")
        self.finished = self.done_steps >= self.steps

    def on_after_step(self, step: int) -> None:
        if self.done_steps:
            assert self.ctx is not None
            self.ctx.graph.apply_masks(self._masks)

    def on_epoch_end(self, epoch: int) -> dict[str, Any]:
        if not self.finished and epoch + 1 in self.schedule:
            self._prune_step()
            self.mask_final_epoch = float(epoch + 1)
        return {"pruning_steps_done": self.done_steps}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "done_steps": self.done_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.done_steps = int(state["done_steps"])


def read_allocation(run_dir: str | Path, graph: PruningGraph) -> dict[int, int]:
    """Per-group kept counts of a finished run (its ``report.json``), matched to ``graph`` by root layer and size."""
    path = Path(run_dir) / "report.json"
    try:
        report = json.loads(path.read_text())
        rows = {str(r["root"]): (int(r["channels"]), int(r["kept"])) for r in report["groups"]}
    except (OSError, ValueError, KeyError, TypeError):
        raise BadInput(f"--allocation-from: {path} is not a finished run's report") from None
    counts = {}
    for g in graph.groups:
        size, kept = rows.get(g.root_name, (None, None))
        if size != g.size:
            raise BadInput(f"--allocation-from: {path} has no group {g.root_name!r} of {g.size} channels "
                           "(a run of another model?)")  # fmt: skip
        counts[g.id] = kept
    return counts
