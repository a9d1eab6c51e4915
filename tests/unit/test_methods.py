"""Baselines on the real loop: one-shot, iterative and no-training pruning, held to the budget."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compressor.budget import Budget
from compressor.data import load_data
from compressor.errors import BadInput
from compressor.graph import PruningGraph
from compressor.methods import METHODS, Context, build_method
from compressor.methods.registry import options_for
from compressor.models import build_model
from compressor.train import TrainConfig, Trainer

pytestmark = pytest.mark.usefixtures("one_thread")
SHAPE = (1, 28, 28)


@pytest.fixture(scope="module")
def data():
    return load_data("synthetic:1x28x28:10:256:64", batch_size=64)


def _setup(name: str, data, *, steps: int = 1, epochs: int = 0, target: float = 0.4, metric: str = "flops"):
    torch.manual_seed(0)
    model = build_model("cifar:resnet20", num_classes=10, in_channels=1)
    graph = PruningGraph(model, torch.zeros(1, *SHAPE))
    budget = Budget(graph)
    method = build_method(name, **options_for(name, {"steps": steps, "seed": 0}))
    ctx = Context(model=model, graph=graph, budget=budget, target=target, metric=metric, epochs=epochs,
                  steps_per_epoch=len(data.train), train_loader=data.train, loss_fn=nn.CrossEntropyLoss(),
                  device=torch.device("cpu"), log=lambda _msg: None)  # fmt: skip
    return model, graph, budget, method, ctx


@pytest.mark.parametrize("name", sorted(METHODS))
def test_one_shot_meets_target_and_zeroes_channels(name: str, data) -> None:
    model, graph, budget, method, ctx = _setup(name, data)
    method.setup(graph, ctx)
    masks = method.masks()
    assert method.finished
    assert 0.4 <= budget.drop(masks) <= 0.41
    for g in graph.groups:  # rounding respected
        assert int(masks[g.id].sum()) in graph.allowed_keep(g.id)
    root = dict(model.named_modules())[graph.groups[0].root_name]
    dropped = (~masks[graph.groups[0].id]).nonzero().flatten()
    assert root.weight[dropped].abs().sum() == 0  # soft-masked in place


def test_params_target(data) -> None:
    _, graph, budget, method, ctx = _setup("l1", data, metric="params", target=0.5)
    method.setup(graph, ctx)
    assert 0.5 <= budget.drop(method.masks(), "params") <= 0.51


def test_importances_differ_and_follow_their_definition(data) -> None:
    chosen = {}
    for name in ("l1", "random", "bn-scale"):
        model, graph, _, method, ctx = _setup(name, data)
        if name == "bn-scale":  # make |gamma| the obvious ranking inside every group
            for g in graph.groups:
                for m in g.members:
                    if isinstance(m.module, nn.BatchNorm2d) and m.side == "out":
                        with torch.no_grad():
                            m.module.weight.copy_(torch.linspace(0.1, 1.0, m.module.num_features))
        method.setup(graph, ctx)
        chosen[name] = method.masks()
    assert any(not torch.equal(chosen["l1"][g], chosen["random"][g]) for g in chosen["l1"])
    for mask in chosen["bn-scale"].values():  # the smallest gammas go: kept channels are the last ones
        kept = int(mask.sum())
        assert mask[-kept:].all() and not mask[:-kept].any()


def test_iterative_steps_during_training(data) -> None:
    model, graph, budget, method, ctx = _setup("l2", data, steps=2, epochs=4)
    method.setup(graph, ctx)
    first = {k: v.clone() for k, v in method.masks().items()}
    assert not method.finished and 0.2 <= budget.drop(first) <= 0.21  # step 1 of 2: half the target
    trainer = Trainer(model, data.train, data.val, TrainConfig(epochs=4, lr=0.01), method=method,
                      device=torch.device("cpu"))  # fmt: skip
    trainer.progress.enabled = False
    trainer.fit()
    final = method.masks()
    assert method.finished and 0.4 <= budget.drop(final) <= 0.45
    for gid, mask in final.items():  # what step 1 pruned stays pruned
        assert not (mask & ~first[gid]).any()
    for g in graph.groups:  # masked weights held at zero through training
        root = dict(model.named_modules())[g.root_name]
        assert root.weight[~final[g.id]].abs().sum() == 0


def test_epochs_zero_takes_every_step_at_once(data) -> None:
    _, graph, budget, method, ctx = _setup("taylor", data, steps=3, epochs=0)
    method.setup(graph, ctx)
    assert method.finished and method.done_steps == 3
    # earlier steps' channels never come back: on resnet20's 16-channel groups the last step can only
    # remove whole rounding units, so the drop may overshoot (but never undershoot) the target
    assert 0.4 <= budget.drop(method.masks()) <= 0.45
    assert [round(r["target"], 4) for r in method.log] == [0.1333, 0.2667, 0.4]


def test_state_round_trip(data) -> None:
    _, graph, _, method, ctx = _setup("l1", data)
    method.setup(graph, ctx)
    other = build_method("l1")
    other.load_state_dict(method.state_dict())
    assert other.finished and all(torch.equal(other.masks()[k], v) for k, v in method.masks().items())


def test_unknown_method() -> None:
    with pytest.raises(BadInput, match="unknown method"):
        build_method("magic")
