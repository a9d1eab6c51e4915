"""PSAP: sparsity, per-step budget, protection with restore, the SFP special case, records and resume state."""

from __future__ import annotations

import io
import json

import cli_process
import pytest
import torch
from torch import nn

from compressor.budget import Budget, masks_from_counts, solve_counts
from compressor.data import load_data
from compressor.graph import PruningGraph
from compressor.methods import Context, build_method
from compressor.methods import channels as ch
from compressor.methods.psap import PSAP, cubic_target, filter_sparsity, weight_sparsity
from compressor.models import build_model
from compressor.train import TrainConfig, Trainer

pytestmark = pytest.mark.usefixtures("one_thread")
SHAPE = (1, 28, 28)


@pytest.fixture(scope="module")
def data():
    return load_data("synthetic:1x28x28:10:256:64", batch_size=64)


def _setup(data, *, epochs: int = 3, target: float = 0.5, **options):
    torch.manual_seed(0)
    model = build_model("cifar:resnet20", num_classes=10, in_channels=1)
    graph = PruningGraph(model, torch.zeros(1, *SHAPE))
    budget = Budget(graph)
    method = build_method("psap", **{"variant": "v1", **options})  # the first reading; v2 in test_second_reading
    ctx = Context(model=model, graph=graph, budget=budget, target=target, metric="flops", epochs=epochs,
                  steps_per_epoch=len(data.train), train_loader=data.train, loss_fn=nn.CrossEntropyLoss(),
                  device=torch.device("cpu"), log=lambda _msg: None)  # fmt: skip
    return model, graph, budget, method, ctx


def _trainer(model, data, method, epochs: int) -> Trainer:
    return Trainer(model, data.train, None, TrainConfig(epochs=epochs, lr=0.05), method=method,
                   device=torch.device("cpu"), progress=None)  # fmt: skip


def test_sparsity_on_hand_made_tensors() -> None:
    w = torch.tensor([0.0, 0.01, 1.0, 2.0, 3.0, -0.001])  # mean |w| = 1.0018; 0.05 * mean = 0.0501
    assert weight_sparsity(w, 0.05) == pytest.approx(3 / 6)
    assert weight_sparsity(w, 1.0) == pytest.approx(4 / 6)  # 0, 0.01, -0.001 and 1.0 <= 1.0018
    assert filter_sparsity(torch.tensor([0.0, 1.0, 1.0, 2.0]), 0.5) == pytest.approx(1 / 4)
    assert filter_sparsity(torch.tensor([1.0, 1.0]), 0.5) == 0.0


def test_cubic_ramp() -> None:
    assert cubic_target(0.7, 0, 4) == 0.0
    assert cubic_target(0.7, 2, 4) == pytest.approx(0.7 * (1 - 0.5**3))
    assert cubic_target(0.7, 4, 4) == cubic_target(0.7, 9, 4) == pytest.approx(0.7)


@pytest.mark.parametrize("schedule", ["cubic", "constant"])
def test_every_step_meets_its_target(data, schedule: str) -> None:
    model, graph, budget, method, ctx = _setup(data, epochs=4, target=0.6, schedule=schedule)
    method.setup(graph, ctx)
    trainer = _trainer(model, data, method, 4)
    ctx.optimizer = trainer.optimizer
    trainer.fit()
    assert len(method.log) == 4 and method.finished
    for rec in method.log:
        want = cubic_target(0.6, rec["epoch"], 2) if schedule == "cubic" else 0.6
        assert rec["target"] == pytest.approx(want, abs=1e-6)
        assert want <= rec["drop"] <= want + 0.01
    assert 0.6 <= budget.drop(method.masks()) <= 0.61
    for gid, mask in method.masks().items():  # the final hard mask: filters of pruned channels are zero
        rows = ch.sq_norms(ch.filter_slices(graph.groups[gid]), len(mask))
        assert float(rows[~mask].sum()) == 0.0


def _set_grads(graph, masks, hot: tuple[int, int]) -> None:
    """Kept channels: small gradients; pruned channels: none, except ``hot`` (group, channel): a big pulse."""
    for g in graph.groups:
        for s in ch.filter_slices(g):
            grad = torch.full_like(s.tensor, 0.01)
            grad[s.rows_of(~masks[g.id])] = 0.0
            if g.id == hot[0]:
                grad[s.rows_of(torch.arange(g.size) == hot[1])] = 10.0
            s.tensor.grad = grad


@pytest.mark.parametrize("restore", [True, False])
def test_pulse_protects_and_restores(data, restore: bool) -> None:
    model, graph, budget, method, ctx = _setup(data, epochs=3, target=0.5, restore=restore, adaptive=False)
    method.setup(graph, ctx)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    method._step(epoch=1, final=False)
    masks = method.masks()
    gid = next(g.id for g in graph.groups if not bool(masks[g.id].all()))
    c = int(torch.nonzero(~masks[gid])[0])
    for k in range(method.pulse_iters + 5):  # only the first K iterations count
        _set_grads(graph, masks, (gid, c))
        method.on_after_backward(k)
    assert method.pulse_seen == method.pulse_iters
    rec = method._step(epoch=2, final=False)
    assert bool(method.masks()[gid][c]), "the pulsed channel must be kept at the next step"
    assert rec["groups"][gid]["protected"] == 1 and rec["protected"] == 1
    assert 0.5 <= rec["drop"] <= 0.51  # protection is absorbed by the other groups
    params = dict(model.named_parameters())
    for s in ch.filter_slices(graph.groups[gid]):
        rows = s.rows_of(torch.arange(graph.groups[gid].size) == c)
        want = before[s.name][rows] if restore else torch.zeros_like(before[s.name][rows])
        assert torch.equal(params[s.name].detach()[rows], want)
    rec3 = method._step(epoch=3, final=True)  # protection lasts one step; survival is recorded
    assert rec3["protected_before"] == 1
    assert rec3["protected_survived"] == int(bool(method.masks()[gid][c]))


@pytest.mark.parametrize("regrow", [False, True])
def test_without_components_psap_is_sfp(data, regrow: bool) -> None:
    model, graph, budget, method, ctx = _setup(data, epochs=3, target=0.5, adaptive=False, protect=False,
                                               regrow=regrow, schedule="constant")  # fmt: skip
    method.setup(graph, ctx)
    expected = []
    step = method._step

    def reference_then_step(*, epoch: int, final: bool):  # plain SFP: uniform ratios, smallest L2 filters go
        norms = {}
        for g in graph.groups:
            sq = torch.zeros(g.size, dtype=torch.float64)
            for m in g.members:
                if m.side == "out" and isinstance(m.module, nn.Conv2d):
                    rows = m.module.weight.detach()[m.idxs].reshape(len(m.idxs), -1).pow(2).sum(1).double()
                    sq.index_add_(0, torch.tensor(m.root_idxs), rows)
            norms[g.id] = sq.sqrt()
        expected.append(masks_from_counts(norms, solve_counts(graph, budget, 0.5, max_ratio=ctx.max_ratio)))
        return step(epoch=epoch, final=final)

    method._step = reference_then_step
    trainer = _trainer(model, data, method, 3)
    ctx.optimizer = trainer.optimizer
    trainer.fit()
    assert len(expected) == len(method.log) == 3
    for rec, ref in zip(method.log, expected, strict=True):
        assert [g["kept"] for g in rec["groups"]] == [int(ref[g.id].sum()) for g in graph.groups]
    assert all(torch.equal(method.masks()[g.id], expected[-1][g.id]) for g in graph.groups)


def test_regrowth_and_hold(data) -> None:
    for regrow in (False, True):
        model, graph, _, method, ctx = _setup(data, epochs=2, target=0.5, regrow=regrow, protect=False)
        method.setup(graph, ctx)
        trainer = _trainer(model, data, method, 2)
        ctx.optimizer = trainer.optimizer
        trainer.fit()
        growth = [g["regrowth"] for g in method.log[1]["groups"] if g["regrowth"] is not None]
        assert growth and (max(growth) > 0 if regrow else max(growth) == 0.0)


def test_state_round_trips_through_weights_only_load(data) -> None:
    model, graph, _, method, ctx = _setup(data, epochs=3)
    method.setup(graph, ctx)
    method._step(epoch=1, final=False)
    _set_grads(graph, method.masks(), (0, 0))
    method.on_after_backward(0)
    buf = io.BytesIO()
    torch.save(method.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    other = PSAP(variant="v1")
    other.load_state_dict(state)
    assert other.done_steps == 1 and other.pulse_seen == 1 and other.log == method.log
    assert all(torch.equal(other.masks()[k], v) for k, v in method.masks().items())
    assert set(other.snapshots) == set(method.snapshots)


@pytest.mark.slow
def test_cli_from_scratch_writes_records_and_plot(tmp_path) -> None:
    out = tmp_path / "run"
    cmd = ["prune", "--model", "cifar:resnet20", "--method", "psap", "--data",
           "synthetic:1x28x28:10:256:64", "--from-scratch", "--target-flops", "0.5", "--epochs", "2",
           "--finetune-epochs", "1", "--device", "cpu", "--out", str(out), "--quiet",
           "--psap-variant", "v1"]  # fmt: skip
    proc = cli_process.run(cmd, module="compressor.cli", env={"OMP_NUM_THREADS": "1", **_env()})
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["method"]["name"] == "psap" and report["method"]["options"]["schedule"] is None
    log = report["method"]["log"]
    assert [r["step"] for r in log] == [1, 2] and all(0.5 <= r["drop"] <= 0.51 for r in log)
    assert {"s", "p", "kept", "protected", "regrowth"} <= set(log[0]["groups"][0])
    assert abs(report["flops_drop"] - 0.5) <= 0.01
    rows = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in rows] == ["prune", "prune", "finetune"]
    assert rows[0]["psap_record"]["groups"] and rows[1]["psap_step"] == 2
    assert (out / "psap_kept.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}


def test_held_channels_keep_their_first_snapshot(data) -> None:
    model, graph, _, method, ctx = _setup(data, epochs=4, target=0.5, protect=False, adaptive=False)
    method.setup(graph, ctx)
    trained = {n: p.detach().clone() for n, p in model.named_parameters()}
    method._step(epoch=1, final=False)
    first = {g: m.clone() for g, m in method.masks().items()}
    method._step(epoch=2, final=False)  # same norms (held at zero): the same channels stay pruned
    gid = next(g for g, m in first.items() if not bool(m.all()))
    still = ~first[gid] & ~method.masks()[gid]
    assert bool(still.any())
    snap = method.snapshots[gid]
    rows = [r[still[snap["mask"]].nonzero().flatten()] for r in snap["rows"]]  # snapshot rows of `still`
    for s, r in zip(method.zeroable[gid], rows, strict=True):
        assert torch.equal(r, trained[s.name][s.rows_of(still)].cpu()), "held: the trained weights"


def test_cli_defaults_equal_config_defaults() -> None:
    """`compress prune` and recipes/PruneConfig must mean the same run when an option is left out."""
    from dataclasses import MISSING, fields

    from compressor.cli import main
    from compressor.jobs.prune import PruneConfig

    defaults = {f.name: f.default for f in fields(PruneConfig) if f.default is not MISSING}
    params = {  # a plain flag's unset default means False
        p.name: p.default if isinstance(p.default, bool) or not getattr(p, "is_flag", False) else False
        for p in main.commands["prune"].params
        if p.name in defaults
    }
    assert set(params) == set(defaults)
    assert {k: v for k, v in params.items() if v != defaults[k]} == {}


def test_sparsity_scope_kept_ignores_held_zeros(data) -> None:
    model, graph, _, method, ctx = _setup(data, epochs=3, target=0.5, sparsity_scope="kept")
    method.setup(graph, ctx)
    method._step(epoch=1, final=False)
    for g in graph.groups:
        norms = ch.sq_norms(method.filters[g.id], g.size).sqrt()
        kept = method._sparsity(g.id, norms)
        every = weight_sparsity(ch.abs_values(method.filters[g.id]), method.beta)
        pruned = 1 - float(method.masks()[g.id].float().mean())
        assert every >= pruned  # held-zero filters count as sparse over all weights
        assert kept == weight_sparsity(ch.abs_values(method.filters[g.id], method.masks()[g.id]), method.beta)
        if pruned > 0:
            assert kept < every
