"""ASTER: the L-BFGS two-loop, the sensitivity and tau update by hand, guards, permanent masking, freeze, fallback."""

from __future__ import annotations

import io
import json

import cli_process
import pytest
import torch
from torch import nn

from compressor.budget import Budget
from compressor.data import load_data
from compressor.errors import BadInput
from compressor.graph import PruningGraph
from compressor.methods import Context, build_method
from compressor.methods import channels as ch
from compressor.methods.aster import ASTER
from compressor.methods.lbfgs import TwoLoop
from compressor.models import build_model
from compressor.train import TrainConfig, Trainer

pytestmark = pytest.mark.usefixtures("one_thread")
SHAPE = (1, 28, 28)


class Tiny(nn.Module):
    """conv-bn-relu x2 + linear head; ``bn=False`` drops the second BN (a group ASTER cannot score)."""

    def __init__(self, bn: bool = True, first_bn: bool = True) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8) if first_bn else nn.Identity()
        self.bn2 = nn.BatchNorm2d(8) if bn else nn.Identity()
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


@pytest.fixture(scope="module")
def data():
    return load_data("synthetic:1x28x28:10:256:64", batch_size=64)


def _setup(model, data, *, epochs: int = 3, target: float = 0.5, round_to: int = 1, lr: float = 0.1, **options):
    graph = PruningGraph(model, torch.zeros(1, *SHAPE), round_to=round_to)
    budget = Budget(graph)
    method = build_method("aster", **{"variant": "v1", **options})  # the first reading; v2 in test_second_reading
    ctx = Context(model=model, graph=graph, budget=budget, target=target, metric="flops", epochs=epochs,
                  steps_per_epoch=len(data.train), train_loader=data.train, loss_fn=nn.CrossEntropyLoss(),
                  device=torch.device("cpu"), lr=lr, log=lambda _msg: None)  # fmt: skip
    return graph, budget, method, ctx


def _trainer(model, data, method, epochs: int, lr: float = 0.05) -> Trainer:
    return Trainer(model, data.train, None, TrainConfig(epochs=epochs, lr=lr), method=method,
                   device=torch.device("cpu"), progress=None)  # fmt: skip


# ------------------------------------------------------------------------------------------------ two-loop


def test_two_loop_equals_inverse_hessian_on_a_quadratic() -> None:
    """f = x'Ax/2 - b'x, L-BFGS with exact line search: after n steps H = A^-1 (tolerance 1e-9 relative)."""
    torch.manual_seed(0)
    n = 8
    q = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))[0]
    a = q @ torch.diag(torch.linspace(0.5, 20.0, n, dtype=torch.float64)) @ q.T
    b, x = torch.randn(n, dtype=torch.float64), torch.randn(n, dtype=torch.float64)
    two = TwoLoop(history=10)
    for _ in range(n):
        g = a @ x - b
        two.observe(x, g)
        d = two.direction(g)
        x = x + (-(g @ d) / (d @ a @ d)) * d  # exact line search
    two.observe(x, a @ x - b)
    assert len(two.pairs) == n
    v = torch.randn(n, dtype=torch.float64)
    want = -torch.linalg.solve(a, v)
    assert torch.allclose(two.direction(v), want, rtol=1e-9, atol=1e-12)
    # with fewer pairs than dimensions it is only an estimate (the test above can fail)
    short = TwoLoop(history=3)
    for s, y, _rho in list(two.pairs)[-3:]:
        short.pairs.append((s, y, 1.0 / float(s @ y)))
    assert not torch.allclose(short.direction(v), want, rtol=1e-3)


def test_two_loop_skips_pairs_without_positive_curvature() -> None:
    two = TwoLoop(history=4)
    two.observe(torch.tensor([0.0, 0.0]), torch.tensor([1.0, 1.0]))
    assert not two.observe(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))  # s.y = -1
    assert two.skipped == 1 and not two.pairs
    g = torch.tensor([0.3, -0.2])
    assert torch.equal(two.direction(g), -g.double())  # no pairs: H = I


# ------------------------------------------------------------------------------------------------ tau update


def _set(model: Tiny, gammas: list[list[float]], grads: list[list[float]]) -> None:
    with torch.no_grad():
        for bn, gam, gr in zip((model.bn1, model.bn2), gammas, grads, strict=True):
            bn.weight.copy_(torch.tensor(gam))
            bn.weight.grad = torch.tensor(gr)


G1 = [[0.9, -0.8, 0.7, 0.6, -0.5, 0.4, 0.3, 0.35], [1.0, 0.9, -0.8, 0.7, 0.6, 0.5, 0.45, 0.55]]
D1 = [[-0.2, 0.1, -0.3, -0.1, 0.2, -0.1, 0.05, -0.05], [-0.1, -0.2, 0.1, -0.3, -0.1, 0.05, -0.1, -0.2]]


@pytest.mark.parametrize("loss_mode", ["sum", "mean"])
def test_sensitivity_and_tau_update_by_hand_gradient_mode(data, loss_mode: str) -> None:
    model = Tiny()
    graph, _budget, method, ctx = _setup(model, data, sensitivity="gradient", x=0.01, tau0=1e-4, loss=loss_mode)
    method.setup(graph, ctx)
    _set(model, G1, D1)
    method.on_after_backward(0, torch.tensor(0.5), 4)
    gam, g = torch.tensor(sum(G1, [])), torch.tensor(sum(D1, []))
    s = float((torch.sign(gam) * -g).sum())  # d = -g
    big_l = 0.5 * 4 if loss_mode == "sum" else 0.5
    assert s > 0
    assert method.tau == pytest.approx(1e-4 + 0.1 * 0.01 * big_l / (4 * s), rel=1e-6)  # parameters are float32
    assert method._epoch["S"] == [pytest.approx(s, rel=1e-6)]


def test_sensitivity_and_tau_update_by_hand_lbfgs(data) -> None:
    model = Tiny()
    graph, _budget, method, ctx = _setup(model, data, sensitivity="lbfgs", x=0.01, tau0=1e-4)
    method.setup(graph, ctx)
    _set(model, G1, D1)
    method.on_after_backward(0, torch.tensor(0.5), 4)  # no pair yet: d = -g
    tau1 = method.tau
    g2 = [[v + 0.1 * (i % 3) for i, v in enumerate(row)] for row in D1]
    gam2 = [[v + 0.05 * (i % 2) for i, v in enumerate(row)] for row in G1]
    _set(model, gam2, g2)
    method.on_after_backward(1, torch.tensor(0.4), 4)
    x1, x2, f1, f2 = (torch.tensor(sum(v, [])).double() for v in (G1, gam2, D1, g2))  # float32 params
    s, y = x2 - x1, f2 - f1
    rho = 1.0 / float(s @ y)
    assert rho > 0
    eye = torch.eye(len(s), dtype=torch.float64)
    h = (eye - rho * torch.outer(s, y)) @ (float(s @ y) / float(y @ y) * eye) @ (eye - rho * torch.outer(y, s))
    h += rho * torch.outer(s, s)  # one BFGS update of H0 = (s.y / y.y) I
    sens = float((torch.sign(x2) * -(h @ f2)).sum())
    assert sens > 0 and abs(sens - float((torch.sign(x2) * -f2).sum())) > 0.01  # H differs from I here
    assert method.tau == pytest.approx(tau1 + 0.1 * 0.01 * 0.4 * 4 / (4 * sens), rel=1e-6)
    assert method._epoch["S"][-1] == pytest.approx(sens, rel=1e-6)


def test_guards_revert_a_step_that_would_empty_a_group_or_prune_too_much(data) -> None:
    model = Tiny()
    graph, _budget, method, ctx = _setup(model, data, sensitivity="gradient", x=5.0, tau0=1e-4)
    method.setup(graph, ctx)
    small = [[1.0, 0.002, 0.001, 0.001, 0.001, 0.001, 0.001, 0.001], G1[1]]  # bn1's second-largest is 0.002
    _set(model, small, D1)
    method.on_after_backward(0, torch.tensor(0.5), 4)
    assert method.tau == 1e-4 and method._epoch["reverted"] == 1
    assert method._guard(0.0019, method._gather()) == ""
    assert method._guard(0.0021, method._gather()) == "would empty a group"
    capped = ASTER(max_prune_fraction=0.25, variant="v1")
    capped.setup(graph, ctx)
    _set(model, G1, D1)  # 3 of 16 scores are below 0.41, 4 below 0.46, 6 below 0.51
    assert capped._guard(0.41, capped._gather()) == ""
    assert capped._guard(0.46, capped._gather()) == ""  # 4 of 16: at the cap
    assert capped._guard(0.51, capped._gather()) == "max prune fraction"
    assert capped._guard(-1.0, capped._gather()) == "negative"


# ------------------------------------------------------------------------------------------------ training


def test_fallback_then_pruned_channels_stay_exactly_zero_and_tau_frozen(data) -> None:
    torch.manual_seed(0)
    model = build_model("cifar:resnet20", num_classes=10, in_channels=1)
    graph, budget, method, ctx = _setup(model, data, epochs=4, target=0.5, round_to=8, search_epochs=1)
    method.setup(graph, ctx)
    trainer = _trainer(model, data, method, 4)  # SGD momentum 0.9, nesterov, weight decay 5e-4
    ctx.optimizer = trainer.optimizer
    trainer.fit()
    log = method.log
    assert len(log) == 4 and log[0]["fallback"] is not None and log[0]["fallback"]["epoch"] == 1
    assert log[0]["freeze_epoch"] == 1 and all(r["frozen"] for r in log)
    assert len({r["tau"] for r in log}) == 1  # freeze stops tau
    assert all(r["updates"] == 0 for r in log[1:])
    assert 0.5 <= budget.drop(method.masks()) <= 0.51
    pruned = 0
    for g in graph.groups:
        dropped = ~method.masks()[g.id]
        pruned += int(dropped.sum())
        for s in ch.filter_slices(g) + ch.norm_slices(g):  # 3 epochs of steps after the prune
            rows = s.tensor.detach().index_select(0, s.rows_of(dropped))
            assert bool((rows == 0).all()), s.name
    assert pruned > 0
    tau = method.tau
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    method.on_after_backward(0, torch.tensor(1.0), 64)
    assert method.tau == tau


def test_reaches_target_by_adaptation_then_trims_to_it(data) -> None:
    """Spread gammas and a tau0 past the target: the first epoch end freezes at the target, no fallback."""
    torch.manual_seed(0)
    model = build_model("cifar:resnet20", num_classes=10, in_channels=1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features) + 0.05)
    graph, budget, method, ctx = _setup(model, data, epochs=2, target=0.4, round_to=8, tau0=0.8, lr=1e-4)
    method.setup(graph, ctx)
    trainer = _trainer(model, data, method, 2, lr=1e-4)
    ctx.optimizer = trainer.optimizer
    trainer.fit()
    first = method.log[0]
    assert first["frozen"] and first["freeze_epoch"] == 1 and first["fallback"] is None
    assert first["trim"]["tau_effective"] <= first["trim"]["tau_adapted"]
    assert 0.4 <= budget.drop(method.masks()) <= 0.41


def test_unscored_groups_are_left_unpruned_and_no_bn_is_bad_input(data) -> None:
    model = Tiny(bn=False)
    graph, budget, method, ctx = _setup(model, data, epochs=0, target=0.3)
    method.setup(graph, ctx)  # epochs 0: threshold at the target on the given weights
    names = [name for name, _ in method.skipped]
    assert names == ["conv2"] and "cannot score" in method.skipped[0][1]
    conv2 = next(g for g in graph.groups if g.root_name == "conv2")
    assert bool(method.masks()[conv2.id].all())
    assert budget.drop(method.masks()) >= 0.3 - 0.01 and method.fallback is not None
    graph2, _b, method2, ctx2 = _setup(Tiny(bn=False, first_bn=False), data, epochs=1, target=0.3)
    with pytest.raises(BadInput, match="BatchNorm"):
        method2.setup(graph2, ctx2)


def test_state_survives_weights_only_load(data) -> None:
    model = Tiny()
    graph, _budget, method, ctx = _setup(model, data)
    method.setup(graph, ctx)
    _set(model, G1, D1)
    method.on_after_backward(0, torch.tensor(0.5), 4)
    _set(model, [[v * 0.9 for v in r] for r in G1], [[v + 0.05 for v in r] for r in D1])
    method.on_after_backward(1, torch.tensor(0.5), 4)
    buf = io.BytesIO()
    torch.save(method.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    again = build_method("aster", variant="v1")
    again.setup(graph, ctx)
    again.load_state_dict(state)
    assert again.tau == method.tau and len(again.lbfgs.pairs) == len(method.lbfgs.pairs)
    g = torch.randn(16, dtype=torch.float64)
    assert torch.equal(again.lbfgs.direction(g), method.lbfgs.direction(g))


@pytest.mark.parametrize("bad", [{"sensitivity": "newton"}, {"max_prune_fraction": 0.0}, {"history": 0},
                                 {"x": -1.0}, {"search_epochs": 0}])  # fmt: skip
def test_bad_options_are_value_errors(bad) -> None:
    with pytest.raises(BadInput):
        build_method("aster", **bad)


def test_cli_run_writes_records_and_plot(tmp_path) -> None:
    out = tmp_path / "run"
    cmd = ["prune", "--model", "cifar:resnet20", "--method", "aster",
           "--data", "synthetic:1x28x28:10:128:32", "--epochs", "2", "--target-flops", "0.4", "--bn-init", "0.5",
           "--out", str(out), "--device", "cpu", "--quiet", "--aster-variant", "v1"]  # fmt: skip
    proc = cli_process.run(cmd, module="compressor.cli", timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["method"]["name"] == "aster" and report["method"]["options"]["sensitivity"] == "lbfgs"
    assert "beta" not in report["method"]["options"]  # PSAP's options are not ASTER's
    log = report["method"]["log"]
    assert len(log) == 2 and log[-1]["frozen"] and {"tau", "S_median", "dtau_mean", "kept"} <= set(log[0])
    assert abs(report["flops_drop"] - 0.4) <= 0.01
    rows = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [r["aster_record"]["epoch"] for r in rows if r["phase"] == "prune"] == [1, 2]
    assert (out / "aster_tau.png").read_bytes()[:4] == b"\x89PNG"
