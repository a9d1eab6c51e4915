"""compressor.budget: analytic FLOPs/params vs Torch-Pruning's counter on materialized models, and solving.

Every number is checked against ``count_ops_and_params`` of the physically pruned model. Each model
family's graph is built once per module (module-scoped fixture).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from zoo import MODELS, NUM_CLASSES, random_masks

from compressor.budget import Budget, masks_from_counts, solve_counts, solve_masks
from compressor.errors import GateFailed
from compressor.graph import PruningGraph, count_ops_and_params
from compressor.models import build_model

MAX_RATIO = 0.8  # solve_counts' default

pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass
class Case:
    name: str
    shape: tuple[int, ...]
    model: nn.Module
    graph: PruningGraph
    budget: Budget
    flops: float  # dense, counted by Torch-Pruning
    params: float

    def measured(self, masks: dict[int, torch.Tensor]) -> tuple[float, float]:
        slim, _ = self.graph.materialize(masks)
        return count_ops_and_params(slim, self.shape)


@pytest.fixture(scope="module", params=MODELS, ids=[m[0].split(":")[1] for m in MODELS])
def case(request) -> Case:
    name, shape = request.param
    torch.manual_seed(0)
    model = build_model(name, num_classes=NUM_CLASSES, in_channels=shape[0]).eval()
    graph = PruningGraph(model, torch.randn(1, *shape), arch=name)
    flops, params = count_ops_and_params(model, shape)
    return Case(name, shape, model, graph, Budget(graph), flops, params)


def random_scores(graph: PruningGraph, seed: int) -> dict[int, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {g.id: torch.rand(g.size, generator=gen) for g in graph.groups}


def rel(a: float, b: float) -> float:
    return abs(a - b) / b


# ----------------------------------------------------------------------------------------- counting
def test_dense_analytic_equals_counted(case: Case) -> None:
    b = case.budget
    assert rel(b.dense["flops"], case.flops) < 0.01, (b.dense["flops"], case.flops)
    assert rel(b.dense["params"], case.params) < 0.01, (b.dense["params"], case.params)
    full = case.graph.full_masks()
    assert b.count(full) == b.dense["flops"]
    assert b.count(full, "params") == b.dense["params"]
    assert b.count({}) == b.dense["flops"]
    assert b.drop(full) == 0.0 and b.drop(full, "params") == 0.0
    assert b.drop_of_counts({g.id: g.size for g in case.graph.groups}) == 0.0


def test_random_masks_analytic_equals_counted(case: Case) -> None:
    # One random mask set here; the solved mask sets below are checked the same way.
    masks = random_masks(case.graph, 0)
    flops, params = case.measured(masks)
    b = case.budget
    assert flops < case.flops and params < case.params
    assert rel(b.count(masks), flops) < 0.01, (b.count(masks), flops)
    assert rel(b.count(masks, "params"), params) < 0.01, (b.count(masks, "params"), params)
    assert b.drop(masks) == pytest.approx(1 - b.count(masks) / b.dense["flops"])
    # Costs depend on kept counts only: which channels are kept does not matter.
    counts = {gid: int(m.sum()) for gid, m in masks.items()}
    for metric in ("flops", "params"):
        assert b.drop_of_counts(counts, metric) == pytest.approx(b.drop(masks, metric), abs=1e-12)


# ----------------------------------------------------------------------------------------- solving
@pytest.mark.parametrize(
    ("metric", "target"), [("flops", 0.3), ("flops", 0.5), ("params", 0.4)], ids=["f30", "f50", "p40"]
)
def test_solve_counts_meets_target(case: Case, metric: str, target: float) -> None:
    g, b = case.graph, case.budget
    counts = solve_counts(g, b, target, metric=metric)
    assert sorted(counts) == [gr.id for gr in g.groups]
    for gr in g.groups:
        assert counts[gr.id] in g.allowed_keep(gr.id, MAX_RATIO), (gr.root_name, counts[gr.id])
    masks = masks_from_counts(random_scores(g, 3), counts)
    assert all(int(masks[gid].sum()) == k for gid, k in counts.items())
    assert abs(b.drop(masks, metric) - target) <= 0.005 + 1e-9  # solve_counts' default tol
    flops, params = case.measured(masks)
    assert rel(b.count(masks), flops) < 0.01 and rel(b.count(masks, "params"), params) < 0.01
    real = 1 - (flops / case.flops if metric == "flops" else params / case.params)
    assert abs(real - target) <= 0.01, f"{case.name}: asked {metric} drop {target}, got {real:.4f}"


def test_zero_target_keeps_everything(case: Case) -> None:
    counts = solve_counts(case.graph, case.budget, 0.0)
    assert counts == {gr.id: gr.size for gr in case.graph.groups}


def test_solve_with_weights_and_ratio(case: Case) -> None:
    g, b = case.graph, case.budget
    gen = torch.Generator().manual_seed(4)
    weights = {gr.id: float(torch.rand(1, generator=gen)) + 0.25 for gr in g.groups}
    counts = solve_counts(g, b, 0.4, weights=weights, max_ratio=0.6, tol=0.01)
    assert all(counts[gr.id] in g.allowed_keep(gr.id, 0.6) for gr in g.groups)
    assert abs(b.drop_of_counts(counts) - 0.4) <= 0.01 + 1e-9


def test_out_of_reach_target_raises(case: Case) -> None:
    with pytest.raises(GateFailed, match="out of reach"):
        solve_counts(case.graph, case.budget, 0.97, max_ratio=0.5)
    with pytest.raises(GateFailed, match="params drop"):
        solve_counts(case.graph, case.budget, 0.97, metric="params", max_ratio=0.5)


def test_masks_never_empty_a_group(case: Case) -> None:
    g, b = case.graph, case.budget
    # The most aggressive allowed setting: every group at its smallest allowed count.
    smallest = {gr.id: min(g.allowed_keep(gr.id, 1.0)) for gr in g.groups}
    assert all(k >= 1 for k in smallest.values())
    reach = b.drop_of_counts(smallest)
    counts = solve_counts(g, b, reach - 0.02, max_ratio=1.0, tol=0.01)
    masks = solve_masks(g, b, random_scores(g, 5), reach - 0.02, max_ratio=1.0, tol=0.01)
    assert all(k >= 1 for k in counts.values())
    assert all(bool(m.any()) for m in masks.values())
    assert {gid: int(m.sum()) for gid, m in masks.items()} == counts


def test_solve_masks_keeps_highest_scores(case: Case) -> None:
    g, b = case.graph, case.budget
    scores = random_scores(g, 6)
    masks = solve_masks(g, b, scores, 0.5)
    counts = solve_counts(g, b, 0.5)
    for gid, mask in masks.items():
        assert int(mask.sum()) == counts[gid]
        if not mask.all():
            assert scores[gid][mask].min() >= scores[gid][~mask].max()


def test_no_prunable_group_raises() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)
    ).eval()
    graph = PruningGraph(model, torch.randn(1, 3, 16, 16))
    assert graph.groups == []
    assert any("round-to" in why for _, why in graph.skipped)
    budget = Budget(graph)
    flops, params = count_ops_and_params(model, (3, 16, 16))
    assert rel(budget.dense["flops"], flops) < 0.01 and rel(budget.dense["params"], params) < 0.01
    with pytest.raises(GateFailed, match="no prunable"):
        solve_counts(graph, budget, 0.3)


def test_round_to_1_solves_tighter() -> None:
    shape = (1, 28, 28)
    torch.manual_seed(0)
    model = build_model("cifar:resnet20", num_classes=NUM_CLASSES, in_channels=1).eval()
    graph = PruningGraph(model, torch.randn(1, *shape), round_to=1)
    budget = Budget(graph)
    counts = solve_counts(graph, budget, 0.42, tol=0.001)
    assert abs(budget.drop_of_counts(counts) - 0.42) <= 0.001 + 1e-9
    assert any(k % 8 for k in counts.values())  # odd widths are allowed without rounding
    slim, _ = graph.materialize(masks_from_counts(random_scores(graph, 0), counts))
    flops, _ = count_ops_and_params(slim, shape)
    dense, _ = count_ops_and_params(model, shape)
    assert abs(1 - flops / dense - 0.42) <= 0.01


# ----------------------------------------------------------------------------------------- masks_from_counts
@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_masks_from_counts_properties(data: st.DataObject) -> None:
    n_groups = data.draw(st.integers(1, 4))
    scores, keep = {}, {}
    for gid in range(n_groups):
        size = data.draw(st.integers(1, 24))
        vals = data.draw(st.lists(st.integers(0, 5), min_size=size, max_size=size))  # many ties
        scores[gid] = torch.tensor(vals, dtype=torch.float32)
        keep[gid] = data.draw(st.integers(0, size))
    masks = masks_from_counts(scores, keep)
    assert sorted(masks) == list(range(n_groups))
    for gid, mask in masks.items():
        s = scores[gid]
        assert mask.dtype == torch.bool and mask.shape == s.shape
        assert int(mask.sum()) == keep[gid]
        if 0 < keep[gid] < len(s):
            kept, dropped = s[mask], s[~mask]
            assert kept.min() >= dropped.max()
            # ties broken by index: among equal scores at the boundary, lower indices are kept
            t = kept.min()
            tied = torch.nonzero(s == t).flatten()
            tied_kept = mask[tied]
            assert not (tied_kept[1:] & ~tied_kept[:-1]).any()
