"""--distill: the prune and fine-tune phases learn from the frozen dense model (tiny CPU runs)."""

from __future__ import annotations

import json
import math
import traceback
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from compressor.cli import main
from compressor.errors import Interrupted
from compressor.jobs.prune import PruneConfig, prune
from compressor.models import build_model
from compressor.train import STOP, Progress, TrainConfig, Trainer, distill_loss, frozen_copy

DATA = "synthetic:1x28x28:10:256:64"
TINY = ["--model", "cifar:resnet20", "--data", DATA, "--train-subset", "64", "--test-subset", "32",
        "--batch-size", "32", "--target-flops", "0.3", "--device", "cpu", "--quiet", "--seed", "0"]  # fmt: skip


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """The runs are tiny: threads only contend with whatever else uses the cores."""


def _invoke(args: list[str], code: int = 0) -> Any:
    result = CliRunner().invoke(main, args, catch_exceptions=True)
    tb = "".join(traceback.format_exception(*result.exc_info)) if result.exc_info and code == 0 else ""
    assert result.exit_code == code, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}\n{tb}"
    return result


def _state(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "pruned.pt", map_location="cpu", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def dense_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("dense") / "dense.pt"
    torch.save(build_model("cifar:resnet20", num_classes=10, in_channels=1).state_dict(), path)
    return path


# --------------------------------------------------------------------------------------------
# the loss
# --------------------------------------------------------------------------------------------


def test_distill_loss_mixes_cross_entropy_and_scaled_kl() -> None:
    torch.manual_seed(0)
    s, t, y = torch.randn(8, 10), torch.randn(8, 10), torch.randint(0, 10, (8,))
    ce = nn.functional.cross_entropy(s, y)
    kl = nn.functional.kl_div(nn.functional.log_softmax(s / 3, 1), nn.functional.softmax(t / 3, 1),
                              reduction="batchmean")  # fmt: skip
    assert torch.allclose(distill_loss(s, t, y, temperature=3.0, alpha=0.0), ce)
    assert torch.allclose(distill_loss(s, t, y, temperature=3.0, alpha=1.0), 9 * kl)
    assert torch.allclose(distill_loss(s, t, y, temperature=3.0, alpha=0.25), 0.75 * ce + 0.25 * 9 * kl)
    assert float(distill_loss(s, s.clone(), y, temperature=3.0, alpha=1.0)) == pytest.approx(0.0, abs=1e-6)
    smoothed = nn.functional.cross_entropy(s, y, label_smoothing=0.1)
    assert torch.allclose(distill_loss(s, t, y, temperature=3.0, alpha=0.0, label_smoothing=0.1), smoothed)


def test_the_teacher_is_frozen_and_gets_no_gradients() -> None:
    student = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    teacher = frozen_copy(student)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    data = [(torch.randn(16, 4), torch.randint(0, 3, (16,))) for _ in range(3)]
    trainer = Trainer(student, data, None, TrainConfig(epochs=1), device=torch.device("cpu"),
                      progress=Progress(enabled=False), teacher=teacher)  # fmt: skip
    trainer.fit()
    assert not teacher.training
    for k, v in teacher.state_dict().items():  # neither the optimizer nor BN statistics touched it
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in teacher.parameters())


# --------------------------------------------------------------------------------------------
# end to end
# --------------------------------------------------------------------------------------------


def test_distilled_run_records_it_and_trains_differently(tmp_path: Path, dense_weights: Path) -> None:
    """Same seed, same weights: only the teacher term differs, so the trained weights must differ."""
    args = ["prune", *TINY, "--method", "l1", "--weights", str(dense_weights), "--epochs", "1",
            "--finetune-epochs", "1"]  # fmt: skip
    _invoke([*args, "--out", str(tmp_path / "plain")])
    _invoke([*args, "--distill", "--distill-temperature", "2", "--distill-alpha", "0.7",
             "--out", str(tmp_path / "kd")])  # fmt: skip
    plain, kd = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("plain", "kd"))
    assert kd["distill"] == {"enabled": True, "temperature": 2.0, "alpha": 0.7}
    assert plain["distill"] == {"enabled": False, "temperature": 4.0, "alpha": 0.5}
    assert "Distilled from the dense model" in (tmp_path / "kd" / "report.md").read_text()
    assert plain["groups"] == kd["groups"]  # l1 from the same weights: the same masks ...
    a, b = _state(tmp_path / "plain"), _state(tmp_path / "kd")
    assert a.keys() == b.keys()
    assert any(v.is_floating_point() and not torch.equal(v, b[k]) for k, v in a.items())  # ... other weights
    rows = [json.loads(r) for r in (tmp_path / "kd" / "history.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in rows] == ["prune", "finetune"]
    assert all(math.isfinite(r["train_loss"]) for r in rows)


@pytest.mark.parametrize("extra", [["--from-scratch", "--epochs", "1"], ["--epochs", "1"]])
def test_distill_without_a_trained_dense_model_is_bad_input(tmp_path: Path, extra: list[str]) -> None:
    out = tmp_path / "run"
    result = _invoke(["prune", *TINY, "--distill", *extra, "--out", str(out)], code=2)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--distill" in lines[0] and "Traceback" not in result.stderr, result.stderr
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize(("option", "value"), [("--distill-alpha", "1.5"), ("--distill-alpha", "-0.1"),
                                               ("--distill-alpha", "nan"), ("--distill-temperature", "0"),
                                               ("--distill-temperature", "inf")])  # fmt: skip
def test_bad_distill_values_are_bad_input(tmp_path: Path, dense_weights: Path, option: str, value: str) -> None:
    out = tmp_path / "run"
    result = _invoke(["prune", *TINY, "--weights", str(dense_weights), "--distill", option, value,
                      "--out", str(out)], code=2)  # fmt: skip
    assert len(result.stderr.strip().splitlines()) == 1 and option in result.stderr, result.stderr
    assert not out.exists()


def test_distill_is_fixed_on_resume(tmp_path: Path, dense_weights: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("distill: true\n")
    result = _invoke(["prune", *TINY, "--weights", str(dense_weights), "--out", str(out), "--resume"], code=2)
    assert "--distill was True" in result.stderr, result.stderr


def _config(out: Path) -> PruneConfig:
    """Dense training, then PSAP pruning and fine-tuning, both distilled from the just-trained dense model."""
    return PruneConfig(model="cifar:resnet20", data=DATA, out=str(out), method="psap", target_flops=0.3,
                       pretrain_epochs=1, epochs=2, finetune_epochs=2, train_subset=64, test_subset=32,
                       batch_size=32, device="cpu", quiet=True, seed=0, distill=True)  # fmt: skip


def test_resumed_distilled_run_matches_an_uninterrupted_one(tmp_path: Path, stop_after) -> None:
    """Stopped (as by SIGINT) after the first prune epoch and again after the first fine-tune epoch, then
    resumed: the teacher is rebuilt from dense.pt, so the final weights are bit-identical."""
    want = tmp_path / "want"
    prune(_config(want))
    stop_after({("prune", 0), ("finetune", 0)})
    got = tmp_path / "got"
    try:
        for phase in ("prune", "finetune"):
            with pytest.raises(Interrupted):
                prune(_config(got) if phase == "prune" else PruneConfig(**{**vars(_config(got)), "resume": True}))
            STOP.signum = 0
            assert not (got / "report.json").exists()
        prune(PruneConfig(**{**vars(_config(got)), "resume": True}))
    finally:
        STOP.signum = 0
    a, b = _state(got), _state(want)
    assert a.keys() == b.keys()
    for k, v in b.items():
        assert torch.equal(a[k], v), k
    ra, rb = (json.loads((d / "report.json").read_text()) for d in (got, want))
    assert ra["groups"] == rb["groups"] and ra["pruned"] == rb["pruned"] and ra["distill"]["enabled"]
    strip = ("seconds",)
    assert [{k: v for k, v in r.items() if k not in strip} for r in ra["history"]] == [
        {k: v for k, v in r.items() if k not in strip} for r in rb["history"]
    ]
