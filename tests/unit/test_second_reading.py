"""The second readings (PSAP v2, ASTER v2) and the study's one-shot controls (--prune-at, --allocation-from)."""

from __future__ import annotations

import io
import json

import pytest
import torch
from torch import nn

from compressor.budget import Budget
from compressor.data import load_data
from compressor.errors import BadInput
from compressor.graph import PruningGraph
from compressor.methods import Context, build_method
from compressor.methods import channels as ch
from compressor.methods.baselines import read_allocation
from compressor.methods.gates import ConsumerPulse
from compressor.models import build_model
from compressor.train import TrainConfig, Trainer

pytestmark = pytest.mark.usefixtures("one_thread")
SHAPE = (1, 28, 28)


@pytest.fixture(scope="module")
def data():
    return load_data("synthetic:1x28x28:10:256:64", batch_size=64)


def _setup(data, name: str, *, epochs: int = 5, target: float = 0.5, round_to: int = 1, model=None, **options):
    torch.manual_seed(0)
    model = model or build_model("cifar:resnet20", num_classes=10, in_channels=1)
    graph = PruningGraph(model, torch.zeros(1, *SHAPE), round_to=round_to)
    budget = Budget(graph)
    method = build_method(name, **options)
    ctx = Context(model=model, graph=graph, budget=budget, target=target, metric="flops", epochs=epochs,
                  steps_per_epoch=len(data.train), train_loader=data.train, loss_fn=nn.CrossEntropyLoss(),
                  device=torch.device("cpu"), lr=0.05, log=lambda _msg: None)  # fmt: skip
    method.setup(graph, ctx)
    trainer = Trainer(model, data.train, None, TrainConfig(epochs=epochs, lr=0.05), method=method,
                      device=torch.device("cpu"), progress=None)  # fmt: skip
    ctx.optimizer = trainer.optimizer
    return model, graph, budget, method, trainer


def _run_epochs(trainer: Trainer, upto: int) -> None:
    trainer.cfg.epochs = upto
    trainer.fit()
    trainer.start_epoch = upto


# ------------------------------------------------------------------------------------------------ PSAP v2


def test_psap_v2_gates_train_the_shipped_network(data) -> None:
    """Before the freeze, a gated channel's BN gamma/beta are 0 and its filters intact: the training model
    computes exactly what the materialized model does (train = deploy), unlike v1 whose beta leaks."""
    model, graph, budget, method, trainer = _setup(data, "psap", epochs=5, target=0.5)
    assert method.gated == {g.id for g in graph.groups}  # every ResNet-20 group has its own BNs
    _run_epochs(trainer, 1)  # two steps (2 per epoch), ramp not finished, not frozen
    assert method.done_steps == 2 and not method.frozen
    masks = method.masks()
    gid = next(g for g, m in masks.items() if not bool(m.all()))
    off = ~masks[gid]
    assert all(float(s.tensor.detach()[s.rows_of(off)].abs().sum()) == 0 for s in ch.norm_slices(graph.groups[gid]))
    assert float(ch.sq_norms(ch.filter_slices(graph.groups[gid]), len(off))[off].min()) > 0  # filters intact
    slim, _ = graph.materialize(masks, model)
    x = torch.randn(8, *SHAPE)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), slim.eval()(x), atol=1e-5)


def test_psap_v2_freezes_early_and_holds_the_mask(data) -> None:
    model, graph, budget, method, trainer = _setup(data, "psap", epochs=5, target=0.5)
    trainer.fit()
    assert method.freeze_epochs == 2 and method.frozen and method.mask_final_epoch <= 2.0
    assert [r["at_step"] for r in method.log] == [p + 1 for p in method.points]
    assert 0.5 <= budget.drop(method.masks()) <= 0.505
    for gid, mask in method.masks().items():  # frozen for 3 epochs: hard-masked filters stayed zero
        assert float(ch.sq_norms(ch.filter_slices(graph.groups[gid]), len(mask))[~mask].sum()) == 0.0
    assert all(r["readmitted_zero"] == 0 for r in method.log)
    kept = [[1 - g["p"] for g in r["groups"]] for r in method.log]
    assert any(len({round(k[i], 4) for k in kept}) > 1 for i in range(len(kept[0])))  # ratios adapt across steps


def test_psap_v2_protection_swaps_without_changing_the_budget(data) -> None:
    model, graph, budget, method, trainer = _setup(data, "psap", epochs=5, target=0.5, adaptive=False)
    method._step_v2(step=0, final=False)
    masks = method.masks()
    gid = next(g for g, m in masks.items() if not bool(m.all()))
    c = int(torch.nonzero(~masks[gid])[0])
    pulse = method.consumer_pulse[gid]
    pulse.sum = torch.zeros(pulse.size, dtype=torch.float64)
    pulse.sum[c], pulse.count = -10.0, 1  # a large switch-on benefit for channel c only
    rec = method._step_v2(step=1, final=False)
    assert bool(method.masks()[gid][c]) and rec["groups"][gid]["protected"] == 1
    assert 0 <= budget.drop(method.masks()) - rec["target"] <= 0.005  # the swap kept the budget
    rec2 = method._step_v2(step=2, final=False)  # still protected at the next step: no churn
    assert bool(method.masks()[gid][c]) and rec2["protected_survived"] >= 1


def test_psap_v2_readmission_restores_the_snapshot(data) -> None:
    model, graph, budget, method, trainer = _setup(data, "psap", epochs=5, target=0.5)
    method._step_v2(step=0, final=False)
    gid = next(g for g, m in method.masks().items() if not bool(m.all()))
    c = int(torch.nonzero(~method.masks()[gid])[0])
    gammas = [s.tensor.detach().clone() for s in ch.norm_slices(graph.groups[gid])]
    stored = [r.clone() for r in method.banks[gid].rows]
    one = torch.arange(graph.groups[gid].size) == c
    method._masks[gid] = method._masks[gid] | one  # as if the step had re-admitted c
    method.banks[gid].restore(one)
    for s, r, before in zip(ch.norm_slices(graph.groups[gid]), stored, gammas, strict=True):
        rows = s.rows_of(one)
        assert torch.equal(s.tensor.detach()[rows], r[one[s.roots]].to(s.tensor.dtype))
        assert float(before[rows].abs().sum()) == 0.0  # it was off


def test_consumer_pulse_equals_the_derivative_of_a_mean_shift() -> None:
    """G_c (sum of dL/dx_c at the consumer input) is the derivative of the loss when channel c of the consumer's
    input is shifted by a constant: checked against a finite difference."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 3, 3, padding=1),
                        nn.Flatten(), nn.Linear(3 * 8 * 8, 5))  # fmt: skip
    graph = PruningGraph(net, torch.zeros(1, 1, 8, 8), round_to=1)
    net.double()  # the finite difference needs float64
    group = next(g for g in graph.groups if any(m.name == "3" and m.side == "in" for m in g.members))
    pulse = ConsumerPulse(group)
    pulse.attach()
    x, y = torch.randn(16, 1, 8, 8, dtype=torch.float64), torch.randint(0, 5, (16,))
    loss = nn.functional.cross_entropy(net(x), y)
    loss.backward()
    pulse.end_iteration()
    c, eps = 2, 1e-3
    means = pulse.means[0]
    t = float(-pulse.benefit()[c])  # = m_c * G_c for one iteration
    pulse.detach()

    def shifted(delta: float) -> float:
        def hook(_m, inputs):
            z = inputs[0].clone()
            z[:, c] += delta
            return (z,)

        h = net[3].register_forward_pre_hook(hook)
        with torch.no_grad():
            out = float(nn.functional.cross_entropy(net(x), y))
        h.remove()
        return out

    g_fd = (shifted(eps) - shifted(-eps)) / (2 * eps)
    assert t == pytest.approx(float(means[c]) * g_fd, rel=1e-4)
    assert float(means[c]) > 0  # the mean post-ReLU activation


def test_psap_variant_options_are_checked() -> None:
    with pytest.raises(BadInput, match="second reading"):
        build_method("psap", variant="v1", mode="gate")
    with pytest.raises(BadInput):
        build_method("psap", score="newton")
    with pytest.raises(BadInput):
        build_method("psap", freeze_at=0.0)
    with pytest.raises(BadInput):
        build_method("psap", variant="v3")


def test_psap_v2_state_round_trips(data) -> None:
    model, graph, budget, method, trainer = _setup(data, "psap", epochs=5, target=0.5)
    _run_epochs(trainer, 1)
    buf = io.BytesIO()
    torch.save(method.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    _m2, _g2, _b2, again, _t2 = _setup(data, "psap", epochs=5, target=0.5, model=model)
    again.load_state_dict(state)
    assert again.done_steps == method.done_steps and again.frozen == method.frozen
    for gid in method.banks:
        assert all(torch.equal(a, b) for a, b in zip(again.banks[gid].rows, method.banks[gid].rows, strict=True))
        assert torch.equal(again.consumer_pulse[gid].on, method.masks()[gid])


# ------------------------------------------------------------------------------------------------ ASTER v2


def test_aster_v2_prunes_exactly_while_searching_and_rounds_at_the_freeze(data) -> None:
    model, graph, budget, method, trainer = _setup(data, "aster", epochs=8, target=0.5, round_to=8, tau0=0.5,
                                                   x=1e-9)  # fmt: skip
    method.on_epoch_end(0)  # a prune at tau 0.5 on the init gammas (all 1): nothing below
    with torch.no_grad():  # make some gammas small so that tau = 0.5 prunes a few channels exactly
        for g in graph.groups[:2]:
            for s in ch.norm_slices(g)[::2]:
                s.tensor[s.pos[:3]] = 0.1
    method.on_epoch_end(1)
    counts = [int(method.masks()[g.id].sum()) for g in graph.groups[:2]]
    assert any(c % 8 for c in counts), counts  # exact, not rounded up to multiples of 8
    assert not method.frozen and method.mask_final_epoch == 2.0
    method._freeze(method._meet_target(), epoch=3, reason="test", fallback=True)
    assert all(int(m.sum()) % 8 == 0 or int(m.sum()) == graph.groups[gid].size for gid, m in method.masks().items())


def test_aster_v2_prunes_inside_the_epoch_with_a_fixed_eta(data) -> None:
    model, graph, budget, method, trainer = _setup(data, "aster", epochs=3, target=0.5, sensitivity="gradient",
                                                   prunes_per_epoch=4)  # fmt: skip
    assert method.eta0 == 0.1 and method.points == {0, 1, 2}  # 4 points per epoch of 4 batches: 3 inside + the end
    trainer.fit()
    assert method.frozen
    assert method.prune_events >= 1 and 0.5 <= budget.drop(method.masks()) <= 0.505


def test_aster_v2_same_batch_pairs_come_from_one_batch(data) -> None:
    model, graph, budget, method, trainer = _setup(data, "aster", epochs=2, target=0.5, curvature="same-batch",
                                                   curvature_every=1, x=1e-9)  # fmt: skip
    x, y = method._curv_batch
    method._observe_same_batch()
    first = method.lbfgs.prev
    with torch.no_grad():
        for p in method.params:
            p.mul_(0.9)
    assert method._observe_same_batch() is None and len(method.lbfgs.pairs) == 1
    s, yv, _ = method.lbfgs.pairs[0]
    assert torch.allclose(s, method.lbfgs.prev[0] - first[0])
    loss = nn.functional.cross_entropy(model(x), y)  # the gradient of the same batch at the new iterate
    grads = torch.autograd.grad(loss, method.params)
    flat = torch.cat([g.detach().flatten() for g in grads]).double()[method.entry_flat]
    alive = method._alive()[method.entry_chan]
    assert torch.allclose(method.lbfgs.prev[1], flat * alive, atol=1e-5)


def test_aster_normalized_and_min_scores(data) -> None:
    model, graph, budget, method, trainer = _setup(data, "aster", epochs=2, target=0.5, normalize=True, reduce="min")
    with torch.no_grad():
        for p in method.params:
            p.copy_(torch.rand_like(p) + 0.1)
    gamma = method._gather().abs()
    norm = gamma.clone()
    for k in range(len(method.params)):
        sel = method.entry_param == k
        norm[sel] = gamma[sel] / gamma[sel].mean()
    want = torch.full((method.total,), float("inf"), dtype=torch.float64)
    for e, c in zip(norm.tolist(), method.entry_chan.tolist(), strict=True):
        want[c] = min(want[c], e)
    assert torch.allclose(method.channel_scores(), want)


# ------------------------------------------------------------------------------------------------ controls


def test_prune_at_waits_then_prunes_once(data) -> None:
    model, graph, budget, method, trainer = _setup(data, "l1", epochs=3, target=0.5, prune_at=2)
    _run_epochs(trainer, 1)
    assert all(bool(m.all()) for m in method.masks().values()) and method.done_steps == 0
    _run_epochs(trainer, 3)
    assert method.done_steps == 1 and method.mask_final_epoch == 2.0
    assert 0.5 <= budget.drop(method.masks()) <= 0.505


def test_allocation_from_copies_the_counts(data, tmp_path) -> None:
    from compressor.jobs.prune import PruneConfig, prune

    run = tmp_path / "src"
    common = dict(model="cifar:resnet20", data="synthetic:1x28x28:10:128:32", target_flops=0.5, epochs=1,
                  round_to=1, device="cpu", quiet=True)  # fmt: skip
    src = prune(PruneConfig(out=str(run), method="psap", **common))
    copy = prune(PruneConfig(out=str(tmp_path / "copy"), method="random", allocation_from=str(run), **common))
    assert [g["kept"] for g in copy["groups"]] == [g["kept"] for g in src["groups"]]
    assert copy["method"]["mask_final_epoch"] == 0.0 and src["method"]["options"]["variant"] == "v2"
    graph = PruningGraph(build_model("cifar:resnet20", num_classes=10, in_channels=1), torch.zeros(1, *SHAPE))
    with pytest.raises(BadInput, match="not a finished run"):
        read_allocation(tmp_path, graph)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "report.json").write_text(json.dumps({"groups": [{"root": "x", "channels": 3, "kept": 1}]}))
    with pytest.raises(BadInput, match="no group"):
        read_allocation(tmp_path / "other", graph)


def test_controls_are_refused_for_the_adaptive_methods() -> None:
    from compressor.jobs.prune import PruneConfig

    for method in ("psap", "aster"):
        with pytest.raises(BadInput, match="one-shot baselines"):
            PruneConfig(model="cifar:resnet20", out="x", method=method, target_flops=0.5, epochs=2, prune_at=1).check()
    with pytest.raises(BadInput, match="prune-at"):
        PruneConfig(model="cifar:resnet20", out="x", method="l1", target_flops=0.5, epochs=2, prune_at=2).check()


# ------------------------------------------------------------------------------------------------ --materialize-early


def _early(out, **kw):
    from compressor.jobs.prune import PruneConfig

    base = dict(model="cifar:resnet20", data="synthetic:1x28x28:10:256:64", out=str(out), target_flops=0.5,
                epochs=5, round_to=1, batch_size=64, device="cpu", quiet=True, seed=0, method="psap")  # fmt: skip
    return PruneConfig(**{**base, **kw})


def _slim_state(out):
    return torch.load(out / "pruned.pt", weights_only=True)["state_dict"]


def test_materialize_early_trains_the_slim_model_under_one_schedule(tmp_path) -> None:
    """One-shot l1 materialized at once equals soft-masked training (same fresh optimizer, same LR at every
    epoch, same data order); PSAP v2 trains its frozen epochs on the slim model."""
    from compressor.jobs.prune import prune

    # one SGD step: equal up to float rounding (longer runs drift apart as rounding noise is amplified through BN
    # at random init; the gradients themselves agree to 1e-15 in float64). oneDNN picks a different convolution
    # algorithm for the slim shapes on some CPUs (AVX2: 3e-4 apart after the step); the reference kernels agree
    # to 6e-8 on every CPU, so the comparison runs on them.
    one = {"method": "l1", "epochs": 1, "train_subset": 48}
    with torch.backends.mkldnn.flags(enabled=False):
        soft = prune(_early(tmp_path / "soft", **one))
        early = prune(_early(tmp_path / "early", materialize_early=True, **one))
    assert [h["phase"] for h in early["history"]] == ["frozen"]
    assert [h["lr"] for h in early["history"]] == [h["lr"] for h in soft["history"]]
    assert early["groups"] == soft["groups"] and early["method"]["mask_final_epoch"] == 0.0
    a, b = _slim_state(tmp_path / "soft"), _slim_state(tmp_path / "early")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6), k
    psap = prune(_early(tmp_path / "psap", materialize_early=True))
    assert [h["phase"] for h in psap["history"]] == ["prune"] * 2 + ["frozen"] * 3
    assert [h["epoch"] for h in psap["history"]] == [1, 2, 3, 4, 5]


@pytest.mark.slow
def test_materialize_early_resumes_bit_identically(tmp_path, stop_after) -> None:
    from compressor.errors import Interrupted
    from compressor.jobs.prune import PruneConfig, prune
    from compressor.train import STOP

    prune(_early(tmp_path / "want", materialize_early=True, finetune_epochs=1))
    stop_after({("prune", 1), ("frozen", 3)})
    got = tmp_path / "got"
    cfg = _early(got, materialize_early=True, finetune_epochs=1)
    try:
        for first in (True, False):
            with pytest.raises(Interrupted):
                prune(cfg if first else PruneConfig(**{**vars(cfg), "resume": True}))
            STOP.signum = 0
        prune(PruneConfig(**{**vars(cfg), "resume": True}))
    finally:
        STOP.signum = 0
    a, b = _slim_state(got), _slim_state(tmp_path / "want")
    assert all(torch.equal(a[k], b[k]) for k in b)
    ra, rb = (json.loads((d / "report.json").read_text()) for d in (got, tmp_path / "want"))
    assert [h["phase"] for h in ra["history"]] == ["prune"] * 2 + ["frozen"] * 3 + ["finetune"]
    strip = ("seconds",)
    assert [{k: v for k, v in r.items() if k not in strip} for r in ra["history"]] == [
        {k: v for k, v in r.items() if k not in strip} for r in rb["history"]
    ]
