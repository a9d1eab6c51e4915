from __future__ import annotations

import os

import pytest
import torch
import torchvision
from torch import nn

from compressor.errors import BadInput
from compressor.models import (
    CifarResNet,
    adapt_stem,
    build_model,
    list_models,
    load_weights,
)

CIFAR_SPECS = ["cifar:resnet20", "cifar:resnet32", "cifar:resnet56", "cifar:resnet110", "cifar:vgg16"]


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("spec", CIFAR_SPECS)
def test_cifar_nets_forward(spec):
    for c, hw in ((1, 28), (3, 32)):
        m = build_model(spec, num_classes=10, in_channels=c).eval()
        with torch.no_grad():
            assert m(torch.randn(2, c, hw, hw)).shape == (2, 10)
    m = build_model(spec, num_classes=3, in_channels=5).eval()
    with torch.no_grad():
        assert m(torch.randn(1, 5, 16, 16)).shape == (1, 3)


def test_resnet20_structure():
    m = build_model("cifar:resnet20")
    assert isinstance(m, CifarResNet)
    assert 0.26e6 < n_params(m) < 0.28e6  # He et al.: 0.27M
    assert len(m.layer1) == len(m.layer2) == len(m.layer3) == 3
    assert m.layer1[0].downsample is None  # identity shortcuts where shapes match
    assert isinstance(m.layer2[0].downsample[0], nn.Conv2d)  # option B projection
    assert m.layer2[0].downsample[0].kernel_size == (1, 1)
    assert m.fc.out_features == 10
    assert 0.85e6 < n_params(build_model("cifar:resnet56")) < 0.87e6
    assert 1.7e6 < n_params(build_model("cifar:resnet110")) < 1.75e6


@pytest.mark.parametrize(("spec", "linear_std"), [("cifar:resnet20", None), ("cifar:vgg16", 0.01)])
def test_cifar_init_is_the_papers(spec, linear_std):
    """Kaiming-normal (fan out) convs, BN 1/0, zero Linear biases; VGG's classifier N(0, 0.01), ResNet's Kaiming."""
    torch.manual_seed(0)
    m = build_model(spec)
    convs = [c for c in m.modules() if isinstance(c, nn.Conv2d) and c.weight.numel() > 5000]
    for c in convs:  # fan_out = out_channels * k * k: std sqrt(2 / fan_out), within sampling error
        fan_out = c.out_channels * c.kernel_size[0] * c.kernel_size[1]
        assert float(c.weight.std()) == pytest.approx((2 / fan_out) ** 0.5, rel=0.1)
    bns = [b for b in m.modules() if isinstance(b, nn.BatchNorm2d)]
    assert bns and all(bool((b.weight == 1).all() and (b.bias == 0).all()) for b in bns)
    fc = next(x for x in m.modules() if isinstance(x, nn.Linear))
    assert bool((fc.bias == 0).all())
    want = linear_std if linear_std is not None else (2 / fc.in_features) ** 0.5  # Kaiming fan_in
    assert float(fc.weight.std()) == pytest.approx(want, rel=0.25)


def test_deterministic_given_seed():
    torch.manual_seed(0)
    a = build_model("cifar:resnet20").state_dict()
    torch.manual_seed(0)
    b = build_model("cifar:resnet20").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "name", ["resnet18", "mobilenet_v2", "efficientnet_b0", "googlenet", "densenet121", "squeezenet1_0"]
)
def test_torchvision_in_channels(name):
    torch.manual_seed(0)
    m = build_model(f"torchvision:{name}", num_classes=7, in_channels=1).eval()
    first = next(x for x in m.modules() if isinstance(x, nn.Conv2d))
    assert first.in_channels == 1
    with torch.no_grad():
        out = m(torch.randn(2, 1, 64, 64))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 7)


def test_stem_adaptation_preserves_function():
    torch.manual_seed(0)
    ref = torchvision.models.resnet18(num_classes=4).eval()
    gray = adapt_stem(torchvision.models.resnet18(num_classes=4).eval(), 1)
    gray.load_state_dict({**ref.state_dict(), "conv1.weight": ref.conv1.weight.sum(1, keepdim=True)})
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(gray(x), ref(x.expand(-1, 3, -1, -1)), atol=1e-5)
    five = adapt_stem(torchvision.models.resnet18(num_classes=4), 5)
    assert five.conv1.in_channels == 5 and five.conv1.stride == (2, 2) and five.conv1.padding == (3, 3)


def test_list_models_covers_torchvision():
    specs = list_models()
    tv = torchvision.models.list_models(module=torchvision.models)
    assert {f"torchvision:{n}" for n in tv} <= set(specs)
    assert set(CIFAR_SPECS) <= set(specs)


@pytest.mark.parametrize("spec", ["torchvision:resnet19", "cifar:resnet21", "nonsense", "vgg16", ""])
def test_unknown_spec(spec):
    with pytest.raises(BadInput) as e:
        build_model(spec)
    assert "\n" not in str(e.value)


def test_unknown_spec_suggests():
    with pytest.raises(BadInput, match="torchvision:resnet18"):
        build_model("torchvision:resnet19")


USER_CODE = """
import torch.nn as nn

def make(num_classes=10, in_channels=3):
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.Flatten(), nn.LazyLinear(num_classes))

def bare():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))

def not_a_model():
    return 42
"""


def test_user_file(tmp_path):
    f = tmp_path / "mynet.py"
    f.write_text(USER_CODE)
    with pytest.raises(BadInput, match="--trust-code"):
        build_model(f"{f}:make")
    m = build_model(f"{f}:make", num_classes=5, in_channels=2, trust_code=True)
    assert m(torch.randn(1, 2, 8, 8)).shape == (1, 5)
    b = build_model(f"{f}:bare", in_channels=1, trust_code=True)  # no kwargs: stem adapted
    assert b(torch.randn(1, 1, 8, 8)).shape == (1, 10)
    for bad in (f"{f}:missing", f"{f}:not_a_model", f"{tmp_path / 'nofile.py'}:make"):
        with pytest.raises(BadInput):
            build_model(bad, trust_code=True)


def test_timm_absent_or_present():
    try:
        import timm  # noqa: F401
    except ImportError:
        with pytest.raises(BadInput, match="timm"):
            build_model("timm:resnet18")
    else:
        assert build_model("timm:resnet18", num_classes=3, in_channels=1).eval()(torch.randn(1, 1, 32, 32)).shape == (
            1,
            3,
        )


def test_load_weights_round_trip(tmp_path):
    torch.manual_seed(0)
    a = build_model("cifar:resnet20", in_channels=1)
    torch.manual_seed(1)
    b = build_model("cifar:resnet20", in_channels=1)
    raw, wrapped, ddp = tmp_path / "raw.pt", tmp_path / "wrapped.pt", tmp_path / "ddp.pt"
    torch.save(a.state_dict(), raw)
    torch.save({"state_dict": a.state_dict(), "epoch": 3}, wrapped)
    torch.save({"model": {f"module.{k}": v for k, v in a.state_dict().items()}}, ddp)
    x = torch.randn(2, 1, 28, 28)
    for path in (raw, wrapped, ddp):
        load_weights(b, path)
        assert torch.equal(a.eval()(x), b.eval()(x))


def test_load_weights_errors(tmp_path):
    m = build_model("cifar:resnet20")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(2048))
    with pytest.raises(BadInput, match="cannot read checkpoint") as e:
        load_weights(m, junk)
    assert "\n" not in str(e.value)
    with pytest.raises(BadInput, match="not found"):
        load_weights(m, tmp_path / "absent.pt")
    other = tmp_path / "other.pt"
    torch.save(build_model("cifar:resnet20", num_classes=100).state_dict(), other)
    with pytest.raises(BadInput, match="classifier for 100 classes") as e:  # --weights-head reinit loads it
        load_weights(m, other)
    assert "fc.weight" in str(e.value) and "\n" not in str(e.value)
    wider = tmp_path / "wider.pt"
    torch.save({**m.state_dict(), "layer1.0.conv1.weight": torch.zeros(8, 16, 3, 3)}, wider)  # a pruned layer
    with pytest.raises(BadInput, match="mismatched shapes") as e:
        load_weights(m, wider, head="reinit")
    deeper = tmp_path / "deeper.pt"
    torch.save(build_model("cifar:resnet32").state_dict(), deeper)
    with pytest.raises(BadInput, match="unexpected"):
        load_weights(m, deeper)
    notsd = tmp_path / "notsd.pt"
    torch.save({"epoch": 1}, notsd)
    with pytest.raises(BadInput):
        load_weights(m, notsd)


def test_a_registered_spec_wins_over_its_prefix_handler() -> None:
    """``register("timm:mine")`` is the user's factory, not timm's "mine" (timm need not be installed)."""
    from compressor.models import registry

    @registry.register("timm:mine")
    def _mine(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
        return nn.Sequential(nn.Conv2d(in_channels, 8, 3), nn.Flatten(), nn.LazyLinear(num_classes))

    try:
        model = registry.build_model("timm:mine", num_classes=5, in_channels=1)
        assert isinstance(model, nn.Sequential) and model[0].in_channels == 1
    finally:
        registry._REGISTRY.pop("timm:mine", None)


def test_a_module_that_checks_its_state_version_reloads_from_our_files(tmp_path):
    """Our files hold plain state dicts (no ``_metadata``); torchvision's MNASNet refuses a state without its
    version, so a pruned MNASNet must still rebuild (found by the coverage suite's fresh-process reload)."""
    from compressor import load_pruned
    from compressor.jobs.prune import PruneConfig, prune

    out = tmp_path / "mn"
    prune(PruneConfig(model="torchvision:mnasnet0_5", data="synthetic:3x32x32:4:16:8", out=str(out), method="l2",
                      target_flops=0.3, epochs=0, batch_size=8, device="cpu", quiet=True))  # fmt: skip
    slim, _ = load_pruned(out / "pruned.pt")
    x = torch.randn(2, 3, 32, 32)
    want = torch.load(out / "pruned.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(slim.state_dict()[k], v) for k, v in want.items())
    dense = build_model("torchvision:mnasnet0_5", num_classes=4, in_channels=3)
    load_weights(dense, out / "dense.pt")  # --weights from our own dense file
    assert slim.eval()(x).shape == dense.eval()(x).shape == (2, 4)


FRESH_PROCESS = """
import sys
from torch import nn
from compressor.models import build_model, list_models, register

@register("mine:tiny")  # before any built-in spec is listed: it must hide none of them
def tiny(num_classes=10, in_channels=3):
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.Flatten(), nn.LazyLinear(num_classes))

@register("cifar:resnet20")  # a user's factory under a built-in name keeps the user's factory
def mine(num_classes=10, in_channels=3):
    return tiny(num_classes, in_channels)

assert isinstance(build_model("cifar:resnet20", num_classes=4, in_channels=1), nn.Sequential)
assert build_model("cifar:resnet32", num_classes=4, in_channels=1).fc.out_features == 4
# a cifar: model is built (and its memory estimated on the meta device) without torchvision or torch._dynamo
assert "torchvision" not in sys.modules and "torch._dynamo" not in sys.modules, "imported what it did not need"
names = list_models()
assert {"mine:tiny", "cifar:resnet56", "torchvision:resnet18"} <= set(names)
assert isinstance(build_model("cifar:resnet20"), nn.Sequential)
print("ok")
"""


def test_a_cifar_model_imports_only_what_it_needs_and_user_specs_hide_nothing() -> None:
    """Building ``cifar:*`` lists only the cifar specs: torchvision (and the ``torch._dynamo`` it imports, ~1 s
    per process) stays unimported; a spec registered before the first build hides no built-in one."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    r = subprocess.run([sys.executable, "-c", FRESH_PROCESS], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_a_spec_registered_without_a_prefix_does_not_break_lookups() -> None:
    """``register("mine")`` (no ``prefix:``): building it, and looking up or suggesting any other bare name."""
    from compressor.models import registry

    @registry.register("mine")
    def _mine(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
        return nn.Sequential(nn.Conv2d(in_channels, 8, 3), nn.Flatten(), nn.LazyLinear(num_classes))

    try:
        assert isinstance(registry.build_model("mine", num_classes=3, in_channels=1), nn.Sequential)
        assert isinstance(registry.build_model("resnet20", num_classes=3, in_channels=1), nn.Module)
        with pytest.raises(BadInput, match="unknown model spec 'minee'"):
            registry.build_model("minee")
    finally:
        registry._REGISTRY.pop("mine", None)
