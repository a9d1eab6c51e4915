"""compressor.graph: groups, soft masks vs physical removal, channel rounding, pruned-model files.

Each model family's graph is built once per module (module-scoped fixture). BatchNorm running statistics
are calibrated on one random batch (no training) so that outputs are O(1) and ``atol=1e-5`` means
something: with default initialisation and unit running variance deep nets output ~1e-20.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from zoo import MODELS, NUM_CLASSES, random_masks

from compressor.artifacts import PRUNED_FORMAT, pruned_payload
from compressor.errors import BadInput
from compressor.graph import PruningGraph, count_ops_and_params, rebuild_pruned, tp_importances
from compressor.models import build_model

SEEDS = [0, 1]
MAX_RATIO = 0.8

pytestmark = pytest.mark.usefixtures("one_thread")


def spec_of(name: str, shape: tuple[int, ...]) -> dict:
    return {"model": name, "num_classes": NUM_CLASSES, "in_channels": shape[0]}


def build(spec: dict) -> nn.Module:
    return build_model(spec["model"], num_classes=spec["num_classes"], in_channels=spec["in_channels"])


@torch.no_grad()
def calibrate_bn(model: nn.Module, shape: tuple[int, ...]) -> None:
    """Set BN running stats to one random batch's statistics (a forward pass, not training)."""
    torch.manual_seed(123)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one batch -> exactly its statistics
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-0.2, 0.2)
    model.train()
    model(torch.randn(8, *shape))
    model.eval()


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass
class Case:
    name: str
    shape: tuple[int, ...]
    model: nn.Module
    graph: PruningGraph
    x: torch.Tensor
    dense_out: torch.Tensor
    cache: dict = field(default_factory=dict)

    def pruned(self, seed: int) -> tuple[dict, nn.Module, nn.Module, list]:
        """(masks, soft-masked copy, materialized model, history) for one seed, computed once."""
        if seed not in self.cache:
            masks = self.graph.legalize(random_masks(self.graph, seed))  # what soft masking/removal apply
            soft = copy.deepcopy(self.model)
            self.graph.apply_masks(masks, model=soft)
            slim, history = self.graph.materialize(masks, model=soft)
            self.cache[seed] = (masks, soft, slim.eval(), history)
        return self.cache[seed]


@pytest.fixture(scope="module", params=MODELS, ids=[m[0].split(":")[1] for m in MODELS])
def case(request) -> Case:
    name, shape = request.param
    torch.manual_seed(0)
    model = build(spec_of(name, shape))
    calibrate_bn(model, shape)
    graph = PruningGraph(model, torch.randn(1, *shape), arch=name)
    model.eval()
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        dense_out = model(x)
    return Case(name, shape, model, graph, x, dense_out)


def outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


# ----------------------------------------------------------------------------------------- structure
def test_groups_well_formed(case: Case) -> None:
    g = case.graph
    assert g.groups, "every tested family has prunable groups"
    assert [gr.id for gr in g.groups] == list(range(len(g.groups)))
    mods = dict(case.model.named_modules())
    for gr in g.groups:
        assert gr.size > g.round_to
        assert gr.root_name in mods
        root = [m for m in gr.members if m.name == gr.root_name and m.side == "out"]
        assert root, f"group {gr.id} has no out-side root member"
        for m in gr.members:
            assert len(m.idxs) == len(m.root_idxs)
            assert set(m.root_idxs) <= set(range(gr.size))
            assert len(set(m.idxs)) == len(m.idxs)
    full = g.full_masks()
    assert sorted(full) == [gr.id for gr in g.groups]
    assert all(full[gr.id].dtype == torch.bool and full[gr.id].all() for gr in g.groups)
    assert all(len(full[gr.id]) == gr.size for gr in g.groups)


def _heads_by_module_order(model: nn.Module, num_classes: int) -> list[nn.Module]:
    """An independent oracle: Linear layers of width num_classes, else the last layer if it has that width."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    heads = [m for m in layers if isinstance(m, nn.Linear) and m.out_features == num_classes]
    last = layers[-1]
    if not heads and isinstance(last, nn.Conv2d) and last.out_channels == num_classes:
        heads = [last]
    return heads


def test_classifier_skipped_never_grouped(case: Case) -> None:
    heads = _heads_by_module_order(case.model, NUM_CLASSES)
    assert len(heads) == 1
    assert case.graph.classifiers == heads
    names = {n for n, m in case.model.named_modules() if m is heads[0]}
    skipped = dict(case.graph.skipped)
    assert any(n in skipped and "classifier" in skipped[n] for n in names)
    for gr in case.graph.groups:
        assert gr.root_name not in names
        for m in gr.members:
            # The head may consume a group's channels (its input side) but never be pruned on its outputs.
            assert not (m.name in names and m.side == "out"), (gr.root_name, m.name)


def test_all_true_masks_change_nothing(case: Case) -> None:
    before = {k: v.clone() for k, v in case.model.state_dict().items()}
    case.graph.apply_masks(case.graph.full_masks())  # default target: the graph's own model
    case.graph.apply_masks({})  # missing groups are kept
    after = case.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    torch.testing.assert_close(outputs(case.model, case.x), case.dense_out, rtol=0, atol=0)


# ------------------------------------------------------------------------------- soft vs materialized
@pytest.mark.parametrize("seed", SEEDS)
def test_soft_masked_equals_materialized(case: Case, seed: int) -> None:
    masks, soft, slim, _ = case.pruned(seed)
    y_soft, y_slim = outputs(soft, case.x), outputs(slim, case.x)
    assert min(case.dense_out.abs().max(), y_soft.abs().max()) > 1e-2, "outputs too small for atol"
    assert not torch.allclose(y_soft, case.dense_out, atol=1e-3), "masks had no effect"
    torch.testing.assert_close(y_slim, y_soft, rtol=0, atol=1e-5)
    assert any(not m.all() for m in masks.values())


@pytest.mark.parametrize("seed", SEEDS)
def test_soft_masks_zero_dropped_filters(case: Case, seed: int) -> None:
    masks, soft, _, _ = case.pruned(seed)
    mods = dict(soft.named_modules())
    for gr in case.graph.groups:
        dropped = ~masks[gr.id]
        for m in gr.members:
            if m.side != "out" or not isinstance(m.module, (nn.Conv2d, nn.Linear)):
                continue
            pos = [i for i, r in zip(m.idxs, m.root_idxs, strict=True) if dropped[r]]
            assert not mods[m.name].weight[pos].any(), (gr.root_name, m.name)


@pytest.mark.parametrize("seed", SEEDS)
def test_materialized_is_smaller_and_rounded(case: Case, seed: int) -> None:
    masks, _, slim, history = case.pruned(seed)
    rt = case.graph.round_to
    assert history, "a non-trivial mask set leaves a pruning history"
    assert n_params(slim) < n_params(case.model)
    dense = dict(case.model.named_modules())
    slim_mods = dict(slim.named_modules())
    for name, m in slim_mods.items():
        if isinstance(m, nn.Conv2d):
            assert m.out_channels == dense[name].out_channels or m.out_channels % rt == 0, name
            assert m.weight.shape[0] == m.out_channels
        elif isinstance(m, nn.Linear):
            assert m.out_features == dense[name].out_features or m.out_features % rt == 0, name
    for gr in case.graph.groups:
        root = next(m for m in gr.members if m.name == gr.root_name and m.side == "out")
        per_root = len(root.idxs) // gr.size
        mod = slim_mods[gr.root_name]
        width = mod.out_channels if isinstance(mod, nn.Conv2d) else mod.out_features
        assert width == int(masks[gr.id].sum()) * per_root, gr.root_name


def test_soft_masks_without_input_zeroing(case: Case) -> None:
    """Zeroed producers alone already silence dropped channels: ``zero_inputs=False`` is equivalent."""
    masks, _, slim, _ = case.pruned(SEEDS[0])
    soft = copy.deepcopy(case.model)
    case.graph.apply_masks(masks, model=soft, zero_inputs=False)
    torch.testing.assert_close(outputs(slim, case.x), outputs(soft, case.x), rtol=0, atol=1e-5)


def test_save_load_round_trip(case: Case, tmp_path) -> None:
    _, _, slim, history = case.pruned(SEEDS[0])
    spec = spec_of(case.name, case.shape)
    payload = pruned_payload(spec, case.shape, history, slim, extra={"method": "random"})
    path = tmp_path / "pruned.pt"
    torch.save(payload, path)
    loaded = torch.load(path, weights_only=True)
    assert loaded["format"] == PRUNED_FORMAT
    assert loaded["spec"] == spec and loaded["method"] == "random"
    rebuilt = rebuild_pruned(loaded, build)
    assert n_params(rebuilt) == n_params(slim)
    torch.testing.assert_close(outputs(rebuilt, case.x), outputs(slim, case.x), rtol=0, atol=0)


def test_default_model_paths_match() -> None:
    """apply_masks/materialize on the graph's own model (no ``model=``) behave like the copy path."""
    shape = (1, 28, 28)
    torch.manual_seed(0)
    model = build(spec_of("cifar:resnet20", shape))
    calibrate_bn(model, shape)
    graph = PruningGraph(model, torch.randn(1, *shape), arch="cifar:resnet20")
    masks = random_masks(graph, 5)
    x = torch.randn(2, *shape)
    copy_soft = copy.deepcopy(model)
    graph.apply_masks(masks, model=copy_soft)
    graph.apply_masks(masks)
    y = outputs(model, x)
    torch.testing.assert_close(outputs(copy_soft, x), y, rtol=0, atol=0)
    slim, _ = graph.materialize(masks)
    torch.testing.assert_close(outputs(slim, x), y, rtol=0, atol=1e-5)
    assert graph.model is model  # materialize works on a deep copy
    same, history = graph.materialize(graph.full_masks())  # all-True masks: nothing removed
    assert history == []
    assert n_params(same) == n_params(model)
    torch.testing.assert_close(outputs(same, x), y, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------- rounding
@pytest.fixture(scope="module")
def resnet20_graphs() -> dict[int, PruningGraph]:
    shape = (1, 28, 28)
    torch.manual_seed(0)
    model = build(spec_of("cifar:resnet20", shape)).eval()
    example = torch.randn(1, *shape)
    return {rt: PruningGraph(model, example, round_to=rt) for rt in (1, 8, 16)}


def test_round_to_1_vs_8(resnet20_graphs) -> None:
    g1, g8 = resnet20_graphs[1], resnet20_graphs[8]
    assert [g.size for g in g1.groups] == [g.size for g in g8.groups]
    for gr in g8.groups:
        n = gr.size
        for r in (0.0, 0.3, 0.5, 0.8, 1.0):
            floor = max(1, n - int(r * n))
            a1, a8 = g1.allowed_keep(gr.id, r), g8.allowed_keep(gr.id, r)
            assert a1 == list(range(floor, n + 1))
            assert a8 == [k for k in a1 if k % 8 == 0 or k == n]
        assert g8.allowed_keep(gr.id, 0.0) == [n]
        assert min(g8.allowed_keep(gr.id, 1.0)) == 8
        assert min(g1.allowed_keep(gr.id, 1.0)) == 1


def test_round_to_skips_small_groups(resnet20_graphs) -> None:
    g8, g16 = resnet20_graphs[8], resnet20_graphs[16]
    assert all(g.size > 16 for g in g16.groups)
    assert len(g16.groups) == len([g for g in g8.groups if g.size > 16]) < len(g8.groups)
    small = [why for _, why in g16.skipped if "round-to" in why]
    assert len(small) == len(g8.groups) - len(g16.groups)
    for gr in g16.groups:
        assert all(k % 16 == 0 or k == gr.size for k in g16.allowed_keep(gr.id, 0.9))


def test_round_to_1_materializes_odd_widths(resnet20_graphs) -> None:
    g1 = resnet20_graphs[1]
    masks = {g.id: torch.arange(g.size) % 3 != 0 for g in g1.groups}  # keeps 2/3: not multiples of 8
    slim, _ = g1.materialize(masks)
    mods = dict(slim.named_modules())
    for gr in g1.groups:
        assert mods[gr.root_name].out_channels == int(masks[gr.id].sum())
    assert any(int(m.sum()) % 8 for m in masks.values())


@settings(max_examples=60, deadline=None)
@given(gid=st.integers(0, 100), ratio=st.floats(0.0, 1.0), rt=st.sampled_from([1, 8, 16]))
def test_allowed_keep_properties(resnet20_graphs, gid: int, ratio: float, rt: int) -> None:
    graph = resnet20_graphs[rt]
    gr = graph.groups[gid % len(graph.groups)]
    allowed = graph.allowed_keep(gr.id, ratio)
    n = gr.size
    assert allowed == sorted(set(allowed))
    assert allowed[-1] == n  # keeping everything is always allowed
    assert allowed[0] >= 1  # never empty a group
    assert all(n - k <= ratio * n + 1e-9 for k in allowed)  # never above the max ratio
    assert all(k % rt == 0 for k in allowed[:-1])


# ----------------------------------------------------------------------------------------- misc
def test_building_graph_leaves_train_mode_model_untouched() -> None:
    shape = (1, 28, 28)
    torch.manual_seed(0)
    model = build(spec_of("cifar:resnet20", shape))  # fresh modules are in train mode
    before = {k: v.clone() for k, v in model.state_dict().items()}
    PruningGraph(model, torch.zeros(1, *shape))
    assert model.training  # the mode is restored ...
    changed = [k for k, v in model.state_dict().items() if not torch.equal(before[k], v)]
    assert changed == []  # ... and so must be the BN statistics


def test_batchnorm1d_model_in_train_mode_builds() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))
    graph = PruningGraph(net, torch.zeros(1, 3, 2, 2))
    assert len(graph.groups) == 1


def test_unsupported_families_refused() -> None:
    with pytest.raises(BadInput, match="cannot be pruned"):
        PruningGraph(nn.Sequential(nn.Conv2d(3, 4, 3)), torch.randn(1, 3, 8, 8), arch="swin_t")


def test_count_ops_and_params_keeps_mode() -> None:
    model = build(spec_of("cifar:resnet20", (1, 28, 28))).train()
    flops, params = count_ops_and_params(model, (1, 28, 28))
    assert model.training
    assert params == n_params(model)
    assert flops > params


def test_tp_importances(resnet20_graphs) -> None:
    graph = resnet20_graphs[8]
    assert set(tp_importances()) == {"l1", "l2", "bn-scale", "taylor", "random"}
    for key in ("l1", "l2", "bn-scale", "random"):
        for gr in graph.groups[:3]:
            scores = graph.tp_importance(tp_importances()[key](), gr.id)
            assert scores.shape == (gr.size,), key
            assert torch.isfinite(scores).all()
    l1 = graph.tp_importance(tp_importances()["l1"](), 0)
    assert (l1 >= 0).all() and l1.max() > 0


def test_stock_prune_is_plain_torch_pruning() -> None:
    """The coverage suite's baseline: half of every group's channels, the classifier kept, the model still runs."""
    from compressor.graph import stock_prune

    model = build_model("cifar:resnet20", num_classes=10, in_channels=1).eval()
    before = sum(p.numel() for p in model.parameters())
    stock_prune(model, torch.zeros(1, 1, 28, 28), ratio=0.5)
    assert model.fc.out_features == 10 and model.conv1.out_channels == 8  # 16 channels, half of them gone
    assert sum(p.numel() for p in model.parameters()) < 0.4 * before
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
