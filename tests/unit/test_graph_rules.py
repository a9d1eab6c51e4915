"""What is left alone and why (ignore rules, stem, per-group caps, unsupported ops), bounded graph building,
and the architectures we handle beyond Torch-Pruning (chunk + concat, channel shuffle, ViT attention)."""

from __future__ import annotations

import copy
import importlib.util
import time
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from compressor.artifacts import pruned_payload
from compressor.budget import Budget
from compressor.errors import BadInput
from compressor.graph import PruningGraph, count_ops_and_params, rebuild_pruned
from compressor.models import build_model
from compressor.runtime.bounded import LimitExceeded, bounded

pytestmark = pytest.mark.usefixtures("one_thread")
SHAPE = (3, 32, 32)


def _user(name: str) -> nn.Module:
    spec = importlib.util.spec_from_file_location("user_models", Path(__file__).resolve().parents[1] / "user_models.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return getattr(mod, name)()


def _resnet18() -> nn.Module:
    torch.manual_seed(0)
    return build_model("torchvision:resnet18", num_classes=10).eval()


def _graph(model: nn.Module, **kw) -> PruningGraph:
    return PruningGraph(model, torch.zeros(1, *SHAPE), **kw)


def _out_layers(graph: PruningGraph) -> set[str]:
    return {m.name for g in graph.groups for m in g.members if m.side == "out"}


# ------------------------------------------------------------------------------------------ ignore rules
def test_ignore_glob_leaves_layers_and_coupled_ones_alone() -> None:
    graph = _graph(_resnet18(), ignore=["layer4.*"])
    assert not any(n.startswith("layer4.") for n in _out_layers(graph))
    why = dict(graph.left_alone())
    assert why["layer4.0.conv1"] == "ignored (--ignore layer4.*)"
    assert why["layer4.1.conv2"].startswith("ignored (--ignore layer4.*) (same channels as")  # residual coupling
    assert why["fc"] == "classifier (output layer)"
    assert "layer3.0.conv1" in _out_layers(graph)


def test_ignore_by_exact_name_and_type() -> None:
    graph = _graph(_resnet18(), ignore=["layer2.0.conv1"])
    assert dict(graph.left_alone())["layer2.0.conv1"] == "ignored (--ignore layer2.0.conv1)"
    assert "layer2.1.conv1" in _out_layers(graph)
    assert _graph(_resnet18(), ignore=["type:Conv2d"]).groups == []
    assert _graph(_resnet18(), ignore=["type:nn.BatchNorm2d"]).groups == []  # every group has a BN


@pytest.mark.parametrize("pattern", ["layer9.*", "type:Conv3d", "conv"])
def test_ignore_matching_nothing_is_bad_input(pattern: str) -> None:
    with pytest.raises(BadInput, match="matches no layer"):
        _graph(_resnet18(), ignore=[pattern])


def test_ignore_stem_leaves_the_first_conv_and_its_coupled_channels() -> None:
    graph = _graph(_resnet18(), ignore_stem=True)
    why = dict(graph.left_alone())
    assert why["conv1"] == "stem (--ignore-stem)"
    assert why["layer1.0.conv2"].startswith("stem (--ignore-stem)")  # layer1's residual stream is conv1's
    assert "conv1" in _out_layers(_graph(_resnet18()))


def test_left_alone_lists_every_conv_and_linear_not_pruned() -> None:
    model = _resnet18()
    graph = _graph(model, ignore=["layer3.*"])
    weighted = {n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    left, pruned = set(dict(graph.left_alone())), _out_layers(graph) & weighted
    assert left | pruned == weighted and not left & pruned


def test_group_max_ratio_caps_and_zero_leaves_alone() -> None:
    graph = _graph(_resnet18(), group_max_ratio={"layer2.0.conv1": 0.25, "layer1.1.conv1": 0})
    g = next(g for g in graph.groups if g.root_name == "layer2.0.conv1")
    assert g.max_ratio == 0.25 and min(graph.allowed_keep(g.id, 0.8)) >= 0.75 * g.size
    other = next(g for g in graph.groups if g.root_name == "layer2.1.conv1")
    assert min(graph.allowed_keep(other.id, 0.8)) < 0.5 * other.size
    assert dict(graph.left_alone())["layer1.1.conv1"] == "--group-max-ratio 0 for this group"


@pytest.mark.parametrize(("rules", "match"), [({"layer9.*": 0.5}, "matches no layer"), ({"layer1.*": 1.0}, r"\[0, 1\)"),
                                              ({"layer1.*": "half"}, "number")])  # fmt: skip
def test_group_max_ratio_bad_input(rules: dict, match: str) -> None:
    with pytest.raises(BadInput, match=match):
        _graph(_resnet18(), group_max_ratio=rules)


# ------------------------------------------------------------------------------------------ bounds
def test_bounded_stops_a_busy_loop_and_restores_the_handler() -> None:
    import signal

    before = signal.getsignal(signal.SIGUSR1)
    with pytest.raises(LimitExceeded, match="ran over 0.2 s"), bounded(0.2, None):  # the loop never ends by itself
        while True:
            pass
    assert signal.getsignal(signal.SIGUSR1) == before
    with bounded(5, None):  # finishing in time raises nothing, now or later
        sum(range(1000))
    time.sleep(0.1)


def test_bounded_stops_memory_growth() -> None:
    hog = []
    with pytest.raises(LimitExceeded, match="memory"), bounded(30, 200 * 2**20):
        while True:
            hog.append(torch.ones(16 * 2**20 // 4))  # 16 MB at a time
            time.sleep(0.01)
    assert sum(t.numel() for t in hog) * 4 < 1 * 2**30
    hog.clear()


def test_graph_building_past_its_time_limit_is_refused() -> None:
    model = build_model("torchvision:densenet121", num_classes=10).eval()  # its groups take ~1 s to build
    with pytest.raises(BadInput, match="cannot be pruned: building its channel groups ran over 0.01 s"):
        _graph(model, seconds=0.01)  # the message says the bound, not the model, ended it


# ------------------------------------------------------------------------------------------ beyond TP
class ChunkCat(nn.Module):
    """ShuffleNetV2's stride-1 block without the shuffle: chunk -> one half through convs -> concat."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.branch = nn.Sequential(nn.Conv2d(16, 24, 1), nn.BatchNorm2d(24), nn.ReLU(), nn.Conv2d(24, 16, 1))
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.stem(x).chunk(2, dim=1)
        return self.head(torch.cat([a, self.branch(b)], 1).mean((2, 3)))


def _masked_vs_materialized(model: nn.Module, shape: tuple[int, ...], graph: PruningGraph) -> tuple:
    gen = torch.Generator().manual_seed(0)
    masks = {}
    for g in graph.groups:
        k = graph.allowed_keep(g.id, 0.8)[0]
        mask = torch.zeros(g.size, dtype=torch.bool)
        mask[torch.randperm(g.size, generator=gen)[:k]] = True
        masks[g.id] = mask
    soft = copy.deepcopy(model)
    graph.apply_masks(masks, model=soft)
    slim, history = graph.materialize(masks, model=soft)
    x = torch.randn(2, *shape, generator=gen)
    with torch.no_grad():
        return soft.eval()(x), slim.eval()(x), slim, history, masks


def test_chunk_then_concat_maps_channels_correctly() -> None:
    torch.manual_seed(0)
    model = ChunkCat().eval()
    graph = _graph(model, round_to=4)
    assert {g.root_name for g in graph.groups} == {"branch.0", "branch.3"}
    assert "split into chunks" in dict(graph.left_alone())["stem.0"]  # an uneven mask would shift the chunks
    soft, slim_out, slim, *_ = _masked_vs_materialized(model, SHAPE, graph)
    assert slim.branch[3].out_channels < 16 and slim.head.in_features == 16 + slim.branch[3].out_channels
    torch.testing.assert_close(slim_out, soft, atol=1e-5, rtol=1e-4)


def test_shufflenet_prunes_inside_blocks_and_names_the_shuffle() -> None:
    torch.manual_seed(0)
    model = torchvision.models.shufflenet_v2_x0_5(num_classes=10).eval()
    graph = _graph(model, arch="shufflenet_v2_x0_5")
    assert sum(".branch2." in g.root_name for g in graph.groups) == 16  # one inside every block
    why = dict(graph.left_alone())
    assert "channel shuffle" in why["stage2.0.branch2.5"] and "unsupported op" in why["stage2.0.branch2.5"]
    budget = Budget(graph)
    assert budget.drop_of_counts({g.id: graph.allowed_keep(g.id, 0.8)[0] for g in graph.groups}) > 0.5
    soft, slim_out, slim, history, masks = _masked_vs_materialized(model, SHAPE, graph)
    torch.testing.assert_close(slim_out, soft, atol=1e-4, rtol=1e-3)
    measured, _ = count_ops_and_params(slim, SHAPE)
    assert abs((1 - measured / budget.dense["flops"]) - budget.drop(masks)) < 0.01


@pytest.mark.parametrize("heads", [4, 6])
def test_vit_hidden_dim_heads_and_reload(heads: int) -> None:
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=heads,
                                                 hidden_dim=96, mlp_dim=128, num_classes=10).eval()  # fmt: skip
    graph = _graph(model, arch="tiny_vit")
    hidden = next(g for g in graph.groups if g.size == 96)
    step = 8 if heads == 4 else 24  # kept widths divide evenly into the attention heads
    assert hidden.step == step and all(k % step == 0 for k in graph.allowed_keep(hidden.id, 0.8))
    masks = {g.id: torch.arange(g.size) < graph.allowed_keep(g.id, 0.8)[0] for g in graph.groups}
    slim, history = graph.materialize(masks)
    assert slim.hidden_dim == slim.conv_proj.out_channels < 96
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        out = slim.eval()(x)
    budget = Budget(graph)
    measured, _ = count_ops_and_params(slim, SHAPE)
    assert abs((1 - measured / budget.dense["flops"]) - budget.drop(masks)) < 0.01  # attention + LayerNorm costed
    payload = pruned_payload({"model": "vit"}, SHAPE, history, slim)
    build = lambda _spec: torchvision.models.VisionTransformer(  # noqa: E731
        image_size=32, patch_size=8, num_layers=2, num_heads=heads, hidden_dim=96, mlp_dim=128, num_classes=10
    )
    again = rebuild_pruned(payload, build).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x), out)


def test_user_models_build_groups() -> None:
    for name in ("se_net", "concat_net", "depthwise_separable", "shared_twice", "with_options"):
        graph = _graph(_user(name).eval())
        assert graph.groups, name
