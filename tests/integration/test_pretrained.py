"""Pretrained weights: ``torchvision:NAME:WEIGHTS`` from the local torch hub cache, and ``--weights-head``.

No network: each test places the file torchvision's weights enum names (the state_dict of a freshly built model)
in a temporary ``TORCH_HOME``. Exit codes and stderr are checked on real ``python -m compressor`` processes; the
successful prune goes through ``click.testing.CliRunner`` in this process (see test_cli.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

import cli_process
import pytest
import torch
import torchvision
from click.testing import CliRunner

from compressor.cli import main
from compressor.config import PruneOptions
from compressor.errors import BadInput
from compressor.models import build_model, categories, load_weights, pretrained_record
from compressor.models.pretrained import cache_file, resolve_weights

ROOT = Path(__file__).resolve().parents[2]
DATA = "synthetic:1x32x32:10:64:32"  # 1 channel (the RGB stem is adapted), 10 classes (the ImageNet head is not)
MOBILE = "torchvision:mobilenet_v3_small:IMAGENET1K_V1"


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Small models on a shared machine: threads only contend."""


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache of this test only (``torch.hub.get_dir()`` reads TORCH_HOME on each call)."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


def _place(name: str, weights: str = "DEFAULT", model: torch.nn.Module | None = None, seed: int = 0) -> dict:
    """Write a freshly built ``name``'s state_dict where torchvision keeps the file of ``weights``; return it."""
    torch.manual_seed(seed)
    model = model or torchvision.models.get_model(name, weights=None)
    path = cache_file(resolve_weights(name, weights))
    assert path.parent == Path(torch.hub.get_dir()) / "checkpoints"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.state_dict()


def _run(args: list[str], torch_home: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TORCH_HOME": str(torch_home), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}  # fmt: skip
    env.pop("COMPRESS_DEBUG", None)
    return cli_process.run(args, cwd=cwd, env=env, timeout=300)


def _one_line_error(proc: subprocess.CompletedProcess[str], code: int = 2) -> str:
    assert proc.returncode == code, proc
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def _invoke(args: list[str], code: int = 0) -> Any:
    result = CliRunner().invoke(main, args, catch_exceptions=True)
    tb = "".join(traceback.format_exception(*result.exc_info)) if result.exc_info and code == 0 else ""
    assert result.exit_code == code, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}\n{tb}"
    return result


# --------------------------------------------------------------------------------------------
# loading from the cache
# --------------------------------------------------------------------------------------------


def test_the_cached_file_loads_and_the_model_holds_its_weights(torch_home: Path) -> None:
    saved = _place("mobilenet_v3_small")
    for spec in (MOBILE, "torchvision:mobilenet_v3_small:DEFAULT"):
        model = build_model(spec, num_classes=1000, in_channels=3)
        own = model.state_dict()
        assert own.keys() == saved.keys() and all(torch.equal(own[k], v) for k, v in saved.items())
        record = pretrained_record(model)
        assert record["weights"] == "MobileNet_V3_Small_Weights.IMAGENET1K_V1" and record["head"] == "pretrained"
        assert record["file"] == str(torch_home / "hub" / "checkpoints" / "mobilenet_v3_small-047dcff4.pth")
        assert record["reinitialized"] == [] and record["adapted"] == [] and "mean=" in record["transforms"]
        assert record["categories"][:2] == ["tench", "goldfish"] and len(record["categories"]) == 1000
    assert categories(MOBILE, 1000) == record["categories"] and categories(MOBILE, 10) is None
    assert pretrained_record(build_model("torchvision:mobilenet_v3_small", num_classes=1000)) is None


def test_the_rgb_stem_is_summed_for_one_channel_and_reinit_keeps_a_fresh_head(torch_home: Path) -> None:
    saved = _place("mobilenet_v3_small")
    with pytest.raises(BadInput, match="classifier for 1000 classes, the model has 10") as e:
        build_model(MOBILE, num_classes=10, in_channels=1)
    assert "classifier.3.weight (1000, 1024) vs model (10, 1024)" in str(e.value) and "reinit" in str(e.value)
    torch.manual_seed(5)
    model = build_model(MOBILE, num_classes=10, in_channels=1, weights_head="reinit")
    torch.manual_seed(5)
    fresh = build_model("torchvision:mobilenet_v3_small", num_classes=10, in_channels=1)
    own, record = model.state_dict(), pretrained_record(model)
    assert record["reinitialized"] == ["classifier.3.weight", "classifier.3.bias"] and record["head"] == "reinitialized"
    assert record["adapted"] == ["features.0.0.weight"] and record["categories"] is None
    assert torch.equal(own["features.0.0.weight"], saved["features.0.0.weight"].sum(1, keepdim=True))
    assert all(torch.equal(own[k], fresh.state_dict()[k]) for k in record["reinitialized"])  # the fresh init
    assert all(torch.equal(own[k], v) for k, v in saved.items() if k not in record["reinitialized"] + record["adapted"])
    assert len(record["messages"]) == 2 and all("\n" not in m for m in record["messages"])


def test_torchvision_key_quirks_densenet_names_and_googlenet_aux_heads(torch_home: Path) -> None:
    old = torchvision.models.get_model("googlenet", weights=None, aux_logits=True, init_weights=False)
    saved = _place("googlenet", model=old)  # torchvision's file holds the aux heads; it builds without them
    model = build_model("torchvision:googlenet:DEFAULT", num_classes=1000)
    assert model.transform_input and model.aux1 is None
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    dense = torchvision.models.get_model("densenet121", weights=None)
    sd = {k.replace(".norm1.", ".norm.1.").replace(".conv2.", ".conv.2."): v for k, v in dense.state_dict().items()
          if not k.endswith("num_batches_tracked")}  # fmt: skip
    path = cache_file(resolve_weights("densenet121", "DEFAULT"))
    torch.save(sd, path)  # as torchvision's DenseNet files: old layer names, older than num_batches_tracked
    model = build_model("torchvision:densenet121:DEFAULT", num_classes=1000)
    assert all(torch.equal(v, dense.state_dict()[k]) for k, v in model.state_dict().items())


def test_weights_files_follow_the_same_head_and_stem_rules(tmp_path: Path) -> None:
    rgb = build_model("cifar:resnet20", num_classes=100, in_channels=3)
    path = tmp_path / "rgb100.pt"
    torch.save(rgb.state_dict(), path)
    model = build_model("cifar:resnet20", num_classes=10, in_channels=1)
    with pytest.raises(BadInput, match="classifier for 100 classes") as e:
        load_weights(model, path)
    assert "fc.weight (100, 64) vs model (10, 64)" in str(e.value) and "--weights-head reinit" in str(e.value)
    loaded = load_weights(model, path, head="reinit")
    assert loaded.reinitialized == ["fc.weight", "fc.bias"] and loaded.adapted == ["conv1.weight"]
    assert torch.equal(model.conv1.weight, rgb.conv1.weight.sum(1, keepdim=True))
    assert torch.equal(model.layer3[0].conv2.weight, rgb.layer3[0].conv2.weight)


def test_pretrained_specs_and_options_that_contradict_them() -> None:
    def check(**kw: Any) -> None:
        PruneOptions(model=MOBILE, out="o", **kw).check()

    check(distill=True)  # the pretrained model is the teacher
    for kw, needle in (({"weights": "w.pt"}, "drop --weights"), ({"from_scratch": True, "epochs": 1}, ":IMAGENET1K_V1"),
                       ({"bn_init": 0.5}, ":IMAGENET1K_V1")):  # fmt: skip
        with pytest.raises(BadInput, match=needle):
            check(**kw)
    with pytest.raises(BadInput, match="weights-head"):
        PruneOptions(model=MOBILE, out="o", weights_head="keep")


# --------------------------------------------------------------------------------------------
# the command line: one-line refusals (subprocesses), a pruned run, a reload without the cache
# --------------------------------------------------------------------------------------------


def test_a_missing_file_names_the_path_to_place_it_at(tmp_path: Path) -> None:
    home = tmp_path / "empty_home"
    line = _one_line_error(_run(["info", "torchvision:resnet18:IMAGENET1K_V1"], home, tmp_path))
    expected = home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert str(expected) in line and "https://download.pytorch.org/models/resnet18-f37072fd.pth" in line
    assert not expected.exists()  # nothing downloaded
    prune = ["prune", "--model", "torchvision:resnet18:DEFAULT", "--data", "synthetic:3x32x32:10:64:32",
             "--target-flops", "0.3", "--device", "cpu", "--out", str(tmp_path / "run")]  # fmt: skip
    assert str(expected) in _one_line_error(_run(prune, home, tmp_path))
    assert not (tmp_path / "run").exists()


def test_unknown_weights_and_a_foreign_head_are_refused_in_one_line(tmp_path: Path, torch_home: Path) -> None:
    line = _one_line_error(_run(["info", "torchvision:resnet18:IMAGENET1K_V9"], torch_home, tmp_path))
    assert "'IMAGENET1K_V9'" in line and "valid: IMAGENET1K_V1, DEFAULT" in line
    _place("mobilenet_v3_small")
    line = _one_line_error(_run(["info", MOBILE, "--input-shape", "3x32x32"], torch_home, tmp_path))
    assert "classifier.3.weight (1000, 1024) vs model (10, 1024)" in line and "--weights-head reinit" in line
    args = ["info", MOBILE, "--input-shape", "3x32x32", "--weights-head", "reinit", "--json"]
    proc = _run(args, torch_home, tmp_path)
    assert proc.returncode == 0, proc
    assert "re-initialized the classifier classifier.3.weight, classifier.3.bias" in proc.stderr
    assert json.loads(proc.stdout)["pretrained"]["head"] == "reinitialized"


def test_a_pruned_pretrained_run_records_its_weights_and_reloads_without_them(tmp_path: Path,
                                                                              torch_home: Path) -> None:  # fmt: skip
    saved = _place("mobilenet_v3_small")
    out = tmp_path / "run"
    args = ["prune", "--model", MOBILE, "--data", DATA, "--method", "l1", "--target-flops", "0.3", "--epochs", "0",
            "--device", "cpu", "--quiet", "--out", str(out)]  # fmt: skip
    refused = _invoke(args, code=2)
    assert "--weights-head reinit" in refused.stderr and not out.exists()
    result = _invoke([*args, "--weights-head", "reinit"])
    assert "re-initialized the classifier classifier.3.weight, classifier.3.bias (1000 -> 10 classes" in result.stderr
    assert "adapted the stem features.0.0.weight from 3 to 1 input channels" in result.stderr
    model = json.loads((out / "report.json").read_text())["model"]
    assert model["pretrained"]["weights"] == "MobileNet_V3_Small_Weights.IMAGENET1K_V1"
    assert model["pretrained"]["file"] == str(cache_file(resolve_weights("mobilenet_v3_small", "IMAGENET1K_V1")))
    assert model["weights_head"] == "reinit" and model["reinitialized"] == ["classifier.3.weight", "classifier.3.bias"]
    assert "IMAGENET1K_V1" in (out / "report.md").read_text()
    dense = torch.load(out / "dense.pt", weights_only=True)["state_dict"]
    assert torch.equal(dense["features.1.block.0.0.weight"], saved["features.1.block.0.0.weight"])

    # a fresh process with an empty cache rebuilds the architecture from the spec, then loads pruned.pt's weights
    script = ("import sys, torch; from compressor.artifacts import load_pruned; m, _ = load_pruned(sys.argv[1]); "
              "torch.save(m.eval()(torch.ones(2, 1, 32, 32)), sys.argv[2])")  # fmt: skip
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "no_cache"), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", script, str(out / "pruned.pt"), str(tmp_path / "y.pt")], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    from compressor.artifacts import load_pruned

    slim, payload = load_pruned(out / "pruned.pt")
    assert payload["spec"]["model"] == MOBILE
    assert torch.allclose(torch.load(tmp_path / "y.pt"), slim.eval()(torch.ones(2, 1, 32, 32)))
    assert not (tmp_path / "no_cache").exists()
