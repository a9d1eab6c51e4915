"""Pipeline helpers that the end-to-end CLI tests cannot reach directly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from compressor.errors import BadInput
from compressor.jobs.prune import PruneConfig, _check_resume_config, _rewind_history


def _rows(path: Path) -> list[tuple[str, int]]:
    return [(r["phase"], r["epoch"]) for r in map(json.loads, path.read_text().splitlines())]


def test_rewind_history_drops_rows_the_checkpoint_does_not_have(tmp_path: Path) -> None:
    """A kill after a history row is appended but before the checkpoint is saved leaves one extra row."""
    path = tmp_path / "history.jsonl"
    rows = [("pretrain", 1), ("pretrain", 2), ("prune", 1), ("prune", 2)]
    path.write_text("".join(json.dumps({"phase": p, "epoch": e}) + "\n" for p, e in rows))
    earlier = _rewind_history(path, {"phase": "prune", "history": [{"phase": "prune", "epoch": 1}]})
    assert _rows(path) == [("pretrain", 1), ("pretrain", 2), ("prune", 1)]
    assert [(r["phase"], r["epoch"]) for r in earlier] == [("pretrain", 1), ("pretrain", 2)]
    earlier = _rewind_history(path, {"phase": "pretrain", "history": [{"phase": "pretrain", "epoch": 1}]})
    assert _rows(path) == [("pretrain", 1)] and earlier == []


def test_resume_accepts_same_options_and_refuses_changed_ones(tmp_path: Path) -> None:
    cfg = PruneConfig(model="cifar:resnet20", out=str(tmp_path), target_flops=0.5, epochs=3, device="cpu")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(dict(vars(cfg))))
    _check_resume_config(tmp_path, PruneConfig(**{**vars(cfg), "device": "auto", "resume": True}))  # may differ
    with pytest.raises(BadInput, match="--epochs was 3"):
        _check_resume_config(tmp_path, PruneConfig(**{**vars(cfg), "epochs": 4}))


def test_recipe_values_are_coerced_or_refused() -> None:
    cfg = PruneConfig(model="m", out="o", epochs="3", target_flops="0.5", overwrite="yes")
    assert (cfg.epochs, cfg.target_flops, cfg.overwrite) == (3, 0.5, True)
    with pytest.raises(BadInput, match="epochs"):
        PruneConfig(model="m", out="o", epochs=2.5)
    with pytest.raises(BadInput, match="target-flops"):
        PruneConfig(model="m", out="o", target_flops="half")


def test_plain_progress_prints_a_heartbeat_inside_a_long_epoch(monkeypatch, capsys) -> None:
    """Not on a terminal (CI), a long epoch prints a line at least every HEARTBEAT_S seconds (a fake clock)."""
    from compressor import train

    clock = iter(range(0, 1000, 20))  # each batch "takes" 20 s
    monkeypatch.setattr(train.time, "monotonic", lambda: float(next(clock)))
    progress = train.Progress(enabled=True)
    assert not progress.tty  # pytest captures stderr: not a terminal
    assert list(progress.iterate(range(6), 6, "prune epoch 1/3")) == list(range(6))
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["prune epoch 1/3: 2/6 batches, 40 s", "prune epoch 1/3: 4/6 batches, 80 s"]
    assert list(train.Progress(enabled=False).iterate(range(3), 3, "x")) == [0, 1, 2]
    assert capsys.readouterr().err == ""  # --quiet: nothing
