"""FLOPs (MACs) and params as a fast analytic function of masks, and solving masks for a target drop.

The coefficients come from :class:`compressor.graph.PruningGraph` (one trace of the dense model); each
evaluation is a couple of numpy reductions, so solvers can call it thousands of times. The result is
checked in the tests against ``tp.utils.count_ops_and_params`` on the materialized model.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from compressor.config import DEFAULT_PRUNE as _P
from compressor.errors import GateFailed
from compressor.graph import Masks, PruningGraph

METRICS = ("flops", "params")


class Budget:
    """Analytic FLOPs/params of a :class:`PruningGraph` under masks."""

    def __init__(self, graph: PruningGraph) -> None:
        self.graph = graph
        self.offsets = np.cumsum([0] + [g.size for g in graph.groups])
        dim_ids, cols = [], []
        for d, dim in enumerate(graph.dims):
            for gid, roots in dim.links:
                dim_ids.append(np.full(len(roots), d))
                cols.append(self.offsets[gid] + np.asarray(roots, dtype=np.int64))
        self._dim_ids = np.concatenate(dim_ids) if dim_ids else np.zeros(0, dtype=np.int64)
        self._cols = np.concatenate(cols) if cols else np.zeros(0, dtype=np.int64)
        self._sizes = np.array([d.size for d in graph.dims], dtype=np.float64)
        costs = graph.costs
        self._in = np.array([c.in_dim for c in costs], dtype=np.int64)
        self._out = np.array([c.out_dim for c in costs], dtype=np.int64)
        self._coef = {
            "flops": np.array([c.flops for c in costs], dtype=np.float64).reshape(-1, 4),
            "params": np.array([c.params for c in costs], dtype=np.float64).reshape(-1, 4),
        }
        full = np.ones(int(self.offsets[-1]))
        self.dense = {m: self._evaluate(full, m) for m in METRICS}

    def _keep_vector(self, masks: Mapping[int, torch.Tensor]) -> np.ndarray:
        vec = np.ones(int(self.offsets[-1]))
        for gid, mask in masks.items():
            vec[self.offsets[gid] : self.offsets[gid + 1]] = mask.detach().cpu().numpy().astype(np.float64)
        return vec

    def _evaluate(self, keep: np.ndarray, metric: str) -> float:
        dropped = np.bincount(self._dim_ids, weights=1.0 - keep[self._cols], minlength=len(self._sizes))
        kept = self._sizes - dropped
        k_in = np.where(self._in >= 0, kept[np.maximum(self._in, 0)], 0.0)
        k_out = kept[self._out]
        c = self._coef[metric]
        return float(np.sum(c[:, 0] * k_in * k_out + c[:, 1] * k_out + c[:, 2] * k_in + c[:, 3]))

    def count(self, masks: Masks, metric: str = "flops") -> float:
        return self._evaluate(self._keep_vector(masks), metric)

    def drop(self, masks: Masks, metric: str = "flops") -> float:
        """Fraction of the dense FLOPs (or params) removed by ``masks``."""
        return 1.0 - self.count(masks, metric) / self.dense[metric]

    def drop_of_counts(self, keep: Mapping[int, int], metric: str = "flops") -> float:
        """Drop when group ``gid`` keeps its first ``keep[gid]`` channels (costs depend on counts only)."""
        vec = np.ones(int(self.offsets[-1]))
        for gid, k in keep.items():
            vec[self.offsets[gid] + int(k) : self.offsets[gid + 1]] = 0.0
        return 1.0 - self._evaluate(vec, metric) / self.dense[metric]


def masks_from_counts(scores: Mapping[int, torch.Tensor], keep: Mapping[int, int]) -> Masks:
    """Keep the ``keep[g]`` highest-scoring root channels of each group (ties broken by index)."""
    masks: Masks = {}
    for gid, s in scores.items():
        k = int(keep[gid])
        mask = torch.zeros(len(s), dtype=torch.bool)
        order = torch.argsort(s.float().cpu(), descending=True, stable=True)
        mask[order[:k]] = True
        masks[gid] = mask
    return masks


def _nearest_allowed(allowed: list[int], want: float) -> int:
    """The largest allowed count not above ``want`` (the smallest allowed if none is)."""
    below = [k for k in allowed if k <= want + 1e-9]
    return max(below) if below else min(allowed)


def solve_counts(
    graph: PruningGraph,
    budget: Budget,
    target: float,
    *,
    metric: str = "flops",
    weights: Mapping[int, float] | None = None,
    max_ratio: float = _P.max_layer_ratio,
    tol: float = 0.005,
    caps: Mapping[int, int] | None = None,
    floors: Mapping[int, int] | None = None,
) -> dict[int, int]:
    """Kept channel count per group so that the ``metric`` drop reaches ``target`` by at most ``tol``.

    Group g removes ratio ``p_g = clip(c * w_g, 0, max_ratio)`` (uniform when ``weights`` is None); the
    scalar ``c`` is found by bisection, then single/pair moves of one rounding unit close the gap the
    rounding leaves. ``caps`` bounds a group's kept count from above (an iterative method never revives
    channels; on coarse groups this can leave the drop above ``target + tol``), ``floors`` from below (PSAP's
    protected channels; other groups then prune more). Raises :class:`GateFailed` when the
    target is out of reach.
    """
    groups = graph.groups
    allowed = {g.id: graph.allowed_keep(g.id, max_ratio) for g in groups}
    for gid, cap in (caps or {}).items():
        allowed[gid] = [k for k in allowed[gid] if k <= cap] or [min(allowed[gid])]
    for gid, floor in (floors or {}).items():
        allowed[gid] = [k for k in allowed[gid] if k >= floor] or [max(allowed[gid])]
    w = {g.id: max(float((weights or {}).get(g.id, 1.0)), 0.0) for g in groups}

    def counts_at(c: float) -> dict[int, int]:
        return {g.id: _nearest_allowed(allowed[g.id], g.size * (1.0 - min(c * w[g.id], max_ratio))) for g in groups}

    if not groups:
        raise GateFailed("the model has no prunable channel group")
    w_min = min((v for v in w.values() if v > 0), default=1.0)
    hi = max_ratio / w_min
    top = budget.drop_of_counts(counts_at(hi), metric)
    if top < target:
        raise GateFailed(
            f"target {metric} drop {target:.3f} is out of reach: at most {top:.3f} with max layer ratio "
            f"{max_ratio} and --round-to {graph.round_to}"
        )
    lo = 0.0
    for _ in range(50):
        mid = (lo + hi) / 2
        if budget.drop_of_counts(counts_at(mid), metric) < target:
            lo = mid
        else:
            hi = mid
    counts = counts_at(lo)
    return _refine(budget, counts, allowed, target, metric, tol)


def _refine(
    budget: Budget,
    counts: dict[int, int],
    allowed: dict[int, list[int]],
    target: float,
    metric: str,
    tol: float,
) -> dict[int, int]:
    """Move rounding units between groups until the drop is in ``[target, target + tol]`` (or closest)."""

    def step(k: dict[int, int], gid: int, direction: int) -> dict[int, int] | None:
        opts = allowed[gid]
        i = opts.index(k[gid]) + direction
        if not 0 <= i < len(opts):
            return None
        return {**k, gid: opts[i]}

    def err(k: dict[int, int]) -> float:  # any state short of the target ranks below every state reaching it
        d = budget.drop_of_counts(k, metric)
        return d - target if d >= target else 1.0 + target - d

    best, best_err = counts, err(counts)
    for _ in range(64):
        if best_err <= tol:
            break
        moves = [m for gid in best for d in (-1, 1) if (m := step(best, gid, d)) is not None]
        cand = min(moves, key=err, default=None)
        if cand is None or err(cand) >= best_err:
            pairs = [
                p for m in moves for gid in best for d in (-1, 1) if (p := step(m, gid, d)) is not None and p != best
            ]
            cand = min(pairs, key=err, default=None)
            if cand is None or err(cand) >= best_err:
                break
        best, best_err = cand, err(cand)
    return best


def solve_masks(
    graph: PruningGraph,
    budget: Budget,
    scores: Mapping[int, torch.Tensor],
    target: float,
    **kwargs: float | str | Mapping[int, float] | None,
) -> Masks:
    """Masks meeting ``target`` that keep the highest-scoring channels of each group."""
    return masks_from_counts(scores, solve_counts(graph, budget, target, **kwargs))  # type: ignore[arg-type]


def reachable(graph: PruningGraph, budget: Budget, max_ratio: float) -> dict[str, float]:
    """The smallest non-zero and the largest FLOPs drop any mask can give (rounding and caps included)."""
    allowed = {g.id: graph.allowed_keep(g.id, max_ratio) for g in graph.groups}
    steps = [budget.drop_of_counts({gid: ks[-2]}) for gid, ks in allowed.items() if len(ks) > 1]
    return {"min": min(steps, default=0.0), "max": budget.drop_of_counts({gid: ks[0] for gid, ks in allowed.items()})}
