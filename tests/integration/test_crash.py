"""Crash safety: checksummed rotating checkpoints, SIGKILL at random points then --resume, SIGINT/SIGTERM.

The end-to-end tests run ``compress prune`` as real processes (forked from a warm interpreter, :mod:`cli_process`)
on the CPU with a fixed seed and compare the final masks, weights and report with one uninterrupted run of the same
command.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import cli_process
import pytest
import torch

from compressor.errors import BadInput
from compressor.runtime import checkpoint

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
       "OMP_NUM_THREADS": "1"}  # fmt: skip
# Every phase (dense training, pruning with PSAP, fine-tuning the slim model), 16 steps an epoch.
ARGS = ["prune", "--model", "cifar:resnet20", "--data", "synthetic:1x28x28:10:512:64", "--method", "psap",
        "--pretrain-epochs", "1", "--epochs", "3", "--finetune-epochs", "1", "--target-flops", "0.4",
        "--train-subset", "256", "--batch-size", "16", "--device", "cpu", "--quiet", "--seed", "0",
        "--checkpoint-every", "5"]  # fmt: skip
VOLATILE = {"created", "seconds"}  # wall-clock fields: the only report fields a resumed run may change


def _cmd(out: Path, *extra: str) -> list[str]:
    return [*ARGS, "--out", str(out), *extra]


def _run(out: Path, *extra: str, timeout: float = 300, fresh: bool = False) -> subprocess.CompletedProcess[str]:
    return cli_process.run(_cmd(out, *extra), env=ENV, timeout=timeout, fresh=fresh)


def _stable(obj: Any) -> Any:
    """The report without wall-clock fields (at any depth)."""
    if isinstance(obj, dict):
        return {k: _stable(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [_stable(v) for v in obj]
    return obj


def _assert_same_run(got: Path, want: Path) -> None:
    """Same report (but wall-clock), same history file, same pruned model bit for bit."""
    a, b = (json.loads((d / "report.json").read_text()) for d in (got, want))
    assert _stable(a["groups"]) == _stable(b["groups"])  # the final masks
    assert _stable(a) == _stable(b)
    rows = [[_stable(json.loads(r)) for r in (d / "history.jsonl").read_text().splitlines()] for d in (got, want)]
    assert rows[0] == rows[1]
    pa, pb = (torch.load(d / "pruned.pt", map_location="cpu", weights_only=True) for d in (got, want))
    assert pa["history"] == pb["history"]
    for key, value in pb["state_dict"].items():
        assert torch.equal(pa["state_dict"][key], value), key
    names = {p.name for p in got.iterdir()}
    assert names == {p.name for p in want.iterdir()}, "leftover files (checkpoints, temp files)"


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run, in a fresh interpreter: its own start and hash seed, unlike the forked runs."""
    out = tmp_path_factory.mktemp("crash") / "reference"
    proc = _run(out, fresh=True)
    assert proc.returncode == 0, proc.stderr
    return out


# --------------------------------------------------------------------------------------------
# the checkpoint files
# --------------------------------------------------------------------------------------------


def _state(epoch: int) -> dict[str, Any]:
    return {"phase": "prune", "epoch": epoch, "model": {"w": torch.full((64, 64), float(epoch))}}


def test_save_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    for epoch in (1, 2, 3):
        checkpoint.save(path, _state(epoch))
    assert checkpoint.read(path)["epoch"] == 3
    assert checkpoint.read(checkpoint.previous(path))["epoch"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.prev.pt", "checkpoint.pt"]
    warnings: list[str] = []
    assert checkpoint.load(path, warnings.append)["epoch"] == 3 and not warnings
    checkpoint.remove(path)
    assert not list(tmp_path.iterdir()) and checkpoint.load(path, warnings.append) is None


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the tensor data: torch.load alone would accept this
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(random.Random(0).randbytes(4096))


@pytest.mark.parametrize("damage", [_flip_byte, _truncate, _garbage, lambda p: p.unlink()])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path: Path, damage: Any) -> None:
    path = tmp_path / "checkpoint.pt"
    checkpoint.save(path, _state(1))
    checkpoint.save(path, _state(2))
    damage(path)
    warnings: list[str] = []
    state = checkpoint.load(path, warnings.append)
    assert state["epoch"] == 1
    if path.exists():
        assert len(warnings) == 1 and "checkpoint.pt" in warnings[0] and "checkpoint.prev.pt" in warnings[0]


def test_no_sound_checkpoint_is_bad_input(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    checkpoint.save(path, _state(1))
    checkpoint.save(path, _state(2))
    _flip_byte(path)
    _truncate(checkpoint.previous(path))
    with pytest.raises(BadInput, match="no usable checkpoint"):
        checkpoint.load(path, print)


def test_a_plain_torch_file_is_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    torch.save(_state(1), path)
    with pytest.raises(ValueError, match="not a compress checkpoint"):
        checkpoint.read(path)


# --------------------------------------------------------------------------------------------
# SIGKILL at random points, then --resume
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigkill_anywhere_then_resume_matches_an_uninterrupted_run(tmp_path: Path, reference: Path) -> None:
    """Kill the run at random instants (startup, training, checkpoint writes, the finish) and resume each time."""
    out = tmp_path / "run"
    rng = random.Random(7)
    forks = cli_process.forking()  # starts the zygote first: its own start is not part of a run
    t0 = time.monotonic()
    _run(tmp_path / "timing")  # how long one run takes on this machine now
    span = time.monotonic() - t0
    # A forked attempt starts at once and a resumed one has less left to do: kills within the first half land
    # all along the run. A fresh interpreter spends its first seconds importing: draw over the whole span.
    low, high = (0.2, span / 2) if forks else (0.3, span)
    kills, phases = 0, []
    for attempt in range(12):
        proc = cli_process.start(_cmd(out, *(["--resume"] if attempt else [])), env=ENV)
        if attempt < 8:
            try:
                proc.wait(timeout=rng.uniform(low, high))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=30)
                kills += 1
                state = checkpoint.load(out / "checkpoint.pt", lambda _m: None) if out.is_dir() else None
                phases.append(state and (state["phase"], state["epoch"], state.get("step", 0)))
                continue
        else:
            proc.wait(timeout=300)
        err = proc.stderr_text()
        assert proc.returncode == 0, err
        if (out / "report.json").is_file() and not (out / "checkpoint.pt").exists():
            break
    assert kills >= 4, f"only {kills} kills landed (run takes {span:.1f}s)"
    assert any(p for p in phases), f"no kill landed after a checkpoint: {phases}"
    _assert_same_run(out, reference)


def test_resume_on_a_finished_run_does_nothing(tmp_path: Path, reference: Path) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in reference.iterdir()}
    proc = _run(reference, "--resume")
    assert proc.returncode == 0, proc.stderr
    assert "pruned cifar:resnet20 with psap" in proc.stdout  # the finished run's summary, nothing redone
    assert {p.name: p.stat().st_mtime_ns for p in reference.iterdir()} == before


# --------------------------------------------------------------------------------------------
# SIGINT / SIGTERM: stop cleanly with a resumable checkpoint
# --------------------------------------------------------------------------------------------


def _signal_mid_training(out: Path, sig: int) -> subprocess.CompletedProcess[str]:
    """Start the run, send ``sig`` once it is in the pruning phase, return the finished process."""
    proc = cli_process.start(_cmd(out, "--checkpoint-every", "0"), env=ENV)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:  # the pretraining epoch's checkpoint is written
        state = checkpoint.load(out / "checkpoint.pt", lambda _m: None) if (out / "checkpoint.pt").exists() else None
        if state is not None:
            break
        time.sleep(0.05)
    time.sleep(0.4)  # into the next epoch
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_cleanly_and_resumes(tmp_path: Path, reference: Path, sig: int, code: int) -> None:
    out = tmp_path / "run"
    proc = _signal_mid_training(out, sig)
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert signal.Signals(sig).name in lines[0] and "--resume" in lines[0]
    state = checkpoint.read(out / "checkpoint.pt")
    assert state["step"] > 0 or state["epoch"] > 0, "no progress saved"
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert not (out / "report.json").exists()
    assert not (out / ".compress.lock").exists(), "the run directory's lock was left behind"
    resumed = _run(out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    _assert_same_run(out, reference)


@pytest.mark.slow
def test_resume_falls_back_to_the_previous_checkpoint_when_the_newest_is_corrupt(tmp_path: Path,
                                                                                 reference: Path) -> None:  # fmt: skip
    out = tmp_path / "run"
    proc = cli_process.start(_cmd(out), env=ENV)
    deadline = time.monotonic() + 120
    while (
        time.monotonic() < deadline and proc.poll() is None and not checkpoint.previous(out / "checkpoint.pt").exists()
    ):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it had two checkpoints"
    _flip_byte(out / "checkpoint.pt")
    resumed = _run(out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    # the SIGKILLed run left its lock file (unlocked): the resume notes that it takes it over
    warning = [line for line in resumed.stderr.strip().splitlines() if "taking over the stale lock" not in line]
    assert len(warning) == 1 and "checksum mismatch" in warning[0] and "resuming from checkpoint.prev.pt" in warning[0]
    _assert_same_run(out, reference)
