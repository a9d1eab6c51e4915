"""``--round-to auto``: the multiple the target runtime runs fastest, resolved once and recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from compressor.cli import main
from compressor.config import PruneOptions
from compressor.errors import BadInput
from compressor.runtime.hardware import AUTO_ROUND_TO, auto_round_to, cpu_has_avx512, cpu_kind


def test_auto_follows_the_target_runtime() -> None:
    assert auto_round_to("cuda")[0] == auto_round_to("tensorrt")[0] == 8
    assert auto_round_to("cpu") == AUTO_ROUND_TO[cpu_kind()]
    assert cpu_kind() == "avx512" if cpu_has_avx512() else cpu_kind() in ("avx2", "cpu")
    assert PruneOptions(model="m", out="o", round_to="AUTO").round_to == "auto"
    assert PruneOptions(model="m", out="o", round_to="16").round_to == 16  # a recipe's string
    with pytest.raises(BadInput, match="--round-to"):
        PruneOptions(model="m", out="o", round_to="fast")


def test_prune_resolves_auto_records_why_and_resume_keeps_it(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["prune", "--model", "cifar:resnet20", "--data", "synthetic:1x16x16:4:64:32", "--method", "l1",
            "--target-flops", "0.3", "--epochs", "0", "--device", "cpu", "--quiet", "--round-to", "auto",
            "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    multiple, why = auto_round_to("cpu")
    assert report["round_to"] == multiple and report["round_to_auto"] == why
    assert all(g["kept"] % multiple == 0 or g["kept"] == g["channels"] for g in report["groups"])
    assert yaml.safe_load((out / "config.yaml").read_text())["round_to"] == multiple  # resolved, for --resume
    again = CliRunner().invoke(main, [*args, "--resume"])
    assert again.exit_code == 0, again.output


def test_round_to_word_other_than_auto_is_exit_2() -> None:
    result = CliRunner().invoke(main, ["info", "cifar:resnet20", "--round-to", "fast"])
    assert result.exit_code == 2 and "'fast' is not an integer or 'auto'" in result.output
    ok = CliRunner().invoke(main, ["info", "cifar:resnet20", "--round-to", "auto", "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["round_to"] == auto_round_to("cpu")[0]
