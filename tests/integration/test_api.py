"""The public Python API: the Pruner in a user's own loop, strict options, save/load, and the shipped example."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import compressor
from compressor.errors import BadInput

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[2]


def test_public_names_are_reexported() -> None:
    for name in ("Pruner", "save_pruned", "load_pruned", "export_onnx", "list_models", "list_methods"):
        assert callable(getattr(compressor, name)), name
    with pytest.raises(AttributeError):
        compressor.nothing_here  # noqa: B018


def test_unknown_method_options_raise() -> None:
    from compressor.models import build_model

    model = build_model("cifar:resnet20", num_classes=10, in_channels=1)
    with pytest.raises(BadInput, match="no option 'gama'"):
        compressor.Pruner(model, torch.zeros(1, 1, 28, 28), method="psap", target_flops=0.5, epochs=2,
                          steps_per_epoch=4, gama=2.0)  # fmt: skip
    with pytest.raises(BadInput, match="unknown method"):
        compressor.Pruner(model, torch.zeros(1, 1, 28, 28), method="nope", target_flops=0.5, epochs=2,
                          steps_per_epoch=4)  # fmt: skip
    with pytest.raises(BadInput, match="exactly one"):
        compressor.Pruner(model, torch.zeros(1, 1, 28, 28), epochs=2, steps_per_epoch=4)


def test_lists() -> None:
    assert "cifar:resnet20" in compressor.list_models()
    assert compressor.list_models("torchvision:resnet1*") == ["torchvision:resnet101", "torchvision:resnet152",
                                                              "torchvision:resnet18"]  # fmt: skip
    methods = compressor.list_methods()
    assert {"psap", "aster", "l1"} <= set(methods) and "variant" in methods["psap"] and "gamma" in methods["psap"]


def test_a_registry_model_round_trips(tmp_path: Path) -> None:
    from compressor.models import build_model

    torch.manual_seed(0)
    model = build_model("cifar:resnet20", num_classes=10, in_channels=1)
    pruner = compressor.Pruner(model, torch.zeros(1, 1, 28, 28), method="l1", target_flops=0.5, epochs=0,
                               steps_per_epoch=1)  # fmt: skip
    slim = pruner.materialize()
    with pytest.raises(BadInput, match="give model_spec="):  # no arch= on the Pruner, no model_spec
        compressor.save_pruned(slim, tmp_path / "x.pt", pruner)
    assert not (tmp_path / "x.pt").exists()
    path = compressor.save_pruned(slim, tmp_path / "r20.pt", pruner, model_spec="cifar:resnet20", num_classes=10,
                                  in_channels=1)  # fmt: skip
    again, payload = compressor.load_pruned(path)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(again.eval()(x), slim.eval()(x), atol=1e-6)
    assert 0.5 <= pruner.drop() <= 0.505 and payload["spec"]["model"] == "cifar:resnet20"


def test_save_pruned_as_design_md_calls_it(tmp_path: Path) -> None:
    """``save_pruned(slim, path, pruner)``: the spec from ``Pruner(arch=...)``, classes from the model's output,
    channels from the example input."""
    from compressor.models import build_model

    torch.manual_seed(0)
    model = build_model("cifar:resnet20", num_classes=7, in_channels=1)
    pruner = compressor.Pruner(model, torch.zeros(1, 1, 28, 28), method="l1", target_flops=0.5, epochs=0,
                               steps_per_epoch=1, arch="cifar:resnet20")  # fmt: skip
    slim = pruner.materialize()
    assert slim.training  # the output probe leaves the model's mode as it was
    again, payload = compressor.load_pruned(compressor.save_pruned(slim, tmp_path / "r20.pt", pruner))
    assert payload["spec"]["num_classes"] == 7 and payload["spec"]["in_channels"] == 1
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(again.eval()(x), slim.eval()(x), atol=1e-6)


@pytest.mark.slow
def test_custom_loop_example_runs_psap_and_aster(tmp_path: Path) -> None:
    """The README's own-loop example: a density-map model and MSE, pruned with PSAP and with ASTER, saved,
    reloaded in a fresh process and exported; the script checks the reloaded export verifies."""
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "custom_loop.py"), "--out", str(tmp_path),
                           "--epochs", "3"], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [r["method"] for r in results] == ["psap", "aster"]
    for r in results:
        assert r["ok"] and r["reloaded"]["verified"] and Path(r["reloaded"]["onnx"]).is_file()


def test_a_registered_model_does_not_hide_the_built_ins() -> None:
    from compressor import models

    @models.register("mine:tiny")
    def tiny(num_classes: int, in_channels: int) -> torch.nn.Module:
        conv = torch.nn.Conv2d(in_channels, 4, 3)
        return torch.nn.Sequential(conv, torch.nn.Flatten(), torch.nn.LazyLinear(num_classes))

    try:
        specs = compressor.list_models()
        assert "mine:tiny" in specs and "cifar:resnet20" in specs and "torchvision:resnet18" in specs
        assert isinstance(models.build_model("mine:tiny", num_classes=3, in_channels=1), torch.nn.Sequential)
    finally:
        models._REGISTRY.pop("mine:tiny", None)


def test_info_lists_models_by_glob_and_methods_with_options() -> None:
    from click.testing import CliRunner

    from compressor.cli import main

    res = CliRunner().invoke(main, ["info", "--list-models", "cifar:resnet*"])
    assert res.exit_code == 0 and res.stdout.split() == ["cifar:resnet110", "cifar:resnet20", "cifar:resnet32",
                                                         "cifar:resnet56"]  # fmt: skip
    res = CliRunner().invoke(main, ["info", "--list-methods"])
    lines = dict(line.split(": ", 1) for line in res.stdout.strip().splitlines())
    assert res.exit_code == 0 and "variant" in lines["psap"] and "importance" not in lines["l1"]
    marked = [name for name, options in lines.items() if options.endswith("(the default)")]
    assert marked == ["aster"] and "search" in lines["aster"]  # the default method is marked, its name kept
    assert CliRunner().invoke(main, ["info", "--list-models", "nothing*"]).exit_code == 2


def test_save_pruned_refuses_a_spec_it_cannot_rebuild_and_keeps_module_modes(tmp_path: Path) -> None:
    from compressor.models import build_model

    model = build_model("cifar:resnet20", num_classes=10, in_channels=1)
    pruner = compressor.Pruner(model, torch.zeros(1, 1, 28, 28), method="l1", target_flops=0.5, epochs=0,
                               steps_per_epoch=1, arch="MyNet")  # fmt: skip
    slim = pruner.materialize()
    with pytest.raises(BadInput, match="'MyNet' is not a model spec"):
        compressor.save_pruned(slim, tmp_path / "x.pt", pruner)
    assert not (tmp_path / "x.pt").exists()
    slim.train()
    frozen = next(m for m in slim.modules() if isinstance(m, torch.nn.BatchNorm2d))
    frozen.eval()  # a frozen BatchNorm in a training model: the output probe leaves it as it was
    compressor.save_pruned(slim, tmp_path / "r20.pt", pruner, model_spec="cifar:resnet20")
    assert slim.training and not frozen.training


def test_pruner_resumes_a_method_state_written_before_it_drove_the_trainer() -> None:
    """Checkpoints from before the Trainer called the Pruner hold the method's own state under "method"."""
    from compressor.models import build_model

    def pruner() -> compressor.Pruner:
        torch.manual_seed(0)
        model = build_model("cifar:resnet20", num_classes=10, in_channels=1)
        return compressor.Pruner(model, torch.zeros(1, 1, 28, 28), method="psap", target_flops=0.5, epochs=2,
                                 steps_per_epoch=4)  # fmt: skip

    old, new = pruner(), pruner()
    new.load_state_dict(old.method.state_dict())  # the old layout
    assert new.method.state_dict().keys() == old.method.state_dict().keys() and new.step == 0
    new.load_state_dict(old.state_dict())  # the new layout
    assert new.step == old.step
