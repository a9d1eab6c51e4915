"""End-to-end tests of the ``compress`` command line.

Exit codes and stderr are checked on real subprocesses (``python -m compressor.cli``); the bad-input corpus
is in ``test_hostile.py``. Successful end-to-end runs go through ``click.testing.CliRunner`` in this process:
same code, no repeated interpreter start. Everything runs on tiny synthetic data on the CPU.
"""

from __future__ import annotations

import json
import os
import signal
import time
import traceback
from pathlib import Path
from typing import Any

import cli_process
import pytest
import torch
import yaml
from click.testing import CliRunner

from compressor.cli import main
from compressor.runtime import checkpoint
from exporters.onnx import read_metadata

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
SYN = "synthetic:3x32x32:10"
SYN_TINY = "synthetic:1x28x28:10:64:32"  # 64 train / 32 test images: for runs whose accuracy is irrelevant
SMALL = ["--train-subset", "128", "--test-subset", "64", "--device", "cpu", "--quiet"]
RUN_FILES = {"pruned.pt", "dense.pt", "report.json", "report.md", "config.yaml", "history.jsonl"}


def _assert_one_line(stderr: str) -> None:
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip(), f"stderr is not one non-empty line:\n{stderr}"
    assert "Traceback" not in stderr


def _invoke(args: list[str], code: int = 0) -> Any:
    result = CliRunner().invoke(main, args, catch_exceptions=True)
    tb = "".join(traceback.format_exception(*result.exc_info)) if result.exc_info else ""
    detail = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}\n{tb}"
    assert result.exit_code == code, detail
    if code == 0:
        assert result.exception is None, detail
    return result


_PRUNE_BASE = ["prune", "--model", "cifar:resnet20", "--data", SYN, *SMALL]


# --------------------------------------------------------------------------------------------
# prune -> export -> bench, end to end
# --------------------------------------------------------------------------------------------


def _prune(out: Path, method: str, *extra: str) -> dict[str, Any]:
    _invoke(["prune", "--model", "cifar:resnet20", "--data", SYN, "--method", method, "--epochs", "1",
             "--target-flops", "0.4", *SMALL, "--seed", "0", "--out", str(out), *extra])  # fmt: skip
    return json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def l1_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("l1") / "run"
    _prune(out, "l1")
    return out


@pytest.fixture(scope="module")
def exported(l1_run: Path) -> dict[str, Any]:
    pruned = json.loads(_invoke(["export", str(l1_run), "--json"]).stdout)
    dense = json.loads(_invoke(["export", str(l1_run), "--dense", "--json"]).stdout)
    return {"pruned": pruned, "dense": dense}


def _check_run_dir(out: Path, method: str) -> None:
    assert {p.name for p in out.iterdir()} == RUN_FILES  # no checkpoint.pt, no temp files

    report = json.loads((out / "report.json").read_text())
    assert report["schema_version"] == 1
    assert report["method"]["name"] == method
    assert report["target"] == {**report["target"], "metric": "flops", "value": 0.4, "met": True}
    assert abs(report["flops_drop"] - 0.4) <= 0.01, report["flops_drop"]
    assert 0 < report["params_drop"] < 1
    assert report["groups"], "no channel groups in the report"
    for g in report["groups"]:
        assert 0 < g["kept"] <= g["channels"], g
        assert g["kept"] % 8 == 0 or g["kept"] == g["channels"], g
    assert any(g["kept"] < g["channels"] for g in report["groups"])
    assert method in (out / "report.md").read_text()

    config = yaml.safe_load((out / "config.yaml").read_text())
    assert (config["method"], config["target_flops"], config["epochs"]) == (method, 0.4, 1)

    rows = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [(r["phase"], r["epoch"]) for r in rows] == [("prune", 1)]

    for name in ("pruned.pt", "dense.pt"):
        payload = torch.load(out / name, map_location="cpu", weights_only=True)
        assert payload["format"] == "compress.pruned/1"
        assert payload["spec"]["model"] == "cifar:resnet20"
        assert payload["input_shape"] == [3, 32, 32]
    pruned = torch.load(out / "pruned.pt", map_location="cpu", weights_only=True)
    dense = torch.load(out / "dense.pt", map_location="cpu", weights_only=True)
    assert pruned["history"] and not dense["history"]
    kept = {g["root"]: g["kept"] for g in report["groups"]}
    assert pruned["state_dict"]["conv1.weight"].shape[0] == kept["conv1"]
    assert dense["state_dict"]["conv1.weight"].shape[0] == 16
    n_pruned = sum(v.numel() for k, v in pruned["state_dict"].items() if k.endswith("weight"))
    n_dense = sum(v.numel() for k, v in dense["state_dict"].items() if k.endswith("weight"))
    assert n_pruned < n_dense


def test_prune_l1_end_to_end(l1_run: Path) -> None:
    _check_run_dir(l1_run, "l1")


def test_prune_taylor_end_to_end(tmp_path: Path) -> None:
    report = _prune(tmp_path / "run", "taylor")
    assert report["method"]["name"] == "taylor"
    _check_run_dir(tmp_path / "run", "taylor")


def test_export_writes_verified_onnx_with_metadata(l1_run: Path, exported: dict[str, Any]) -> None:
    report = json.loads((l1_run / "report.json").read_text())
    for variant in ("pruned", "dense"):
        result = exported[variant]
        assert Path(result["path"]) == l1_run / f"{variant}.onnx"
        assert result["verification"]["passed"], result["verification"]
        meta = read_metadata(result["path"])
        assert meta["variant"] == variant
        assert meta["model_spec"] == "cifar:resnet20"
    meta = read_metadata(l1_run / "pruned.onnx")
    assert meta["method"] == "l1"
    assert float(meta["flops_drop"]) == pytest.approx(report["flops_drop"], abs=1e-9)
    assert not [p.name for p in l1_run.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]


def test_bench_with_baseline_writes_json(l1_run: Path, exported: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = _invoke(["bench", str(l1_run / "pruned.onnx"), "--baseline", str(l1_run / "dense.onnx"),
                      "--iters", "5", "--warmup", "1", "--json-out", str(out)])  # fmt: skip
    assert "speedup" in result.stdout
    data = json.loads(out.read_text())
    (row,) = data["results"]
    assert (row["provider"], row["batch"]) == ("cpu", 1)
    assert set(row["models"]) == {"model", "baseline"}
    assert row["speedup"]["model"]["p50"] > 0


def test_bench_fail_below_speedup_exits_1(l1_run: Path, exported: dict[str, Any], tmp_path: Path) -> None:
    proc = cli_process.run(["bench", str(l1_run / "pruned.onnx"), "--baseline", str(l1_run / "dense.onnx"),
                            "--iters", "3", "--warmup", "1", "--fail-below-speedup", "1000"],
                           module="compressor.cli", cwd=tmp_path, env=ENV, timeout=120)  # fmt: skip
    assert proc.returncode == 1, proc
    _assert_one_line(proc.stderr)
    assert "speedup" in proc.stderr and "1000" in proc.stderr, proc.stderr


# --------------------------------------------------------------------------------------------
# info, run (recipe), --config
# --------------------------------------------------------------------------------------------


def test_info_dry_run() -> None:
    text = _invoke(["info", "cifar:resnet20", "--target-flops", "0.5"]).stdout
    assert "cifar:resnet20" in text and "feasible" in text and "NOT feasible" not in text
    r = json.loads(_invoke(["info", "cifar:resnet20", "--target-flops", "0.5", "--json"]).stdout)
    assert r["model"] == "cifar:resnet20" and r["input_shape"] == [1, 28, 28] and r["groups"]
    assert r["dry_run"]["feasible"] is True
    assert abs(r["dry_run"]["flops_drop"] - 0.5) <= 0.01


def test_info_lists_left_alone_layers_and_reachable_drop() -> None:
    args = ["info", "torchvision:resnet18", "--input-shape", "3x32x32", "--ignore", "layer4.*", "--ignore-stem",
            "--group-max-ratio", "layer2.0.conv1=0"]  # fmt: skip
    text = _invoke(args).stdout
    assert "reachable FLOPs drop:" in text and "fc: classifier (output layer)" in text
    assert "conv1: stem (--ignore-stem)" in text and "layer4.0.conv1: ignored (--ignore layer4.*)" in text
    r = json.loads(_invoke([*args, "--json"]).stdout)
    why = {x["layer"]: x["why"] for x in r["left_alone"]}
    assert why["layer2.0.conv1"] == "--group-max-ratio 0 for this group"
    full = json.loads(_invoke(["info", "torchvision:resnet18", "--input-shape", "3x32x32", "--json"]).stdout)
    assert 0 < r["reachable_flops_drop"]["min"] < r["reachable_flops_drop"]["max"]
    assert r["reachable_flops_drop"]["max"] < full["reachable_flops_drop"]["max"] <= 1  # rules cost reach
    assert set(why) - {x["layer"] for x in full["left_alone"]}  # more layers left alone with the rules


def test_prune_recipe_ignore_and_group_caps(tmp_path: Path) -> None:
    """Recipe mapping for --group-max-ratio, a list for --ignore: both reach the graph and the config."""
    cfg = {
        "model": "cifar:resnet20",
        "data": SYN_TINY,
        "method": "l1",
        "target_flops": 0.3,
        "epochs": 0,
        "device": "cpu",
        "quiet": True,
        "ignore": ["layer3.*"],
        "group_max_ratio": {"layer1.0.conv1": 0.25},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    _invoke(["prune", "--config", str(tmp_path / "cfg.yaml"), "--out", str(run)])
    report = json.loads((run / "report.json").read_text())
    kept = {row["root"]: row for row in report["groups"]}
    assert not any(name.startswith("layer3.") for name in kept)
    row = kept["layer1.0.conv1"]
    assert row["kept"] >= 0.75 * row["channels"]
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["ignore"] == ["layer3.*"] and saved["group_max_ratio"] == {"layer1.0.conv1": 0.25}


def test_run_recipe_prints_summary_and_writes_summary_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    step_summary = tmp_path / "step_summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step_summary))  # GitHub Actions: the summary goes there too
    recipe = {
        "prune": {"model": "cifar:resnet20", "data": SYN_TINY, "method": "l1", "target-flops": 0.4, "epochs": 0,
                  "device": "cpu", "quiet": True, "out": str(tmp_path / "not-this-one")},
        "export": {"opset": 17},
        "bench": {"iters": 3, "warmup": 1},
    }  # fmt: skip
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    run_dir = tmp_path / "run"
    text = _invoke(["run", str(tmp_path / "recipe.yaml"), "--out", str(run_dir)]).stdout
    assert "compress run" in text and "FLOPs drop" in text and "speedup" in text
    assert not (tmp_path / "not-this-one").exists()  # --out on the command line wins over the recipe
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["run"] == str(run_dir) and summary["method"] == "l1"
    assert abs(summary["flops_drop"] - 0.4) <= 0.01
    assert summary["export_verified"] is True
    assert summary["speedup"] > 0
    for name in ("pruned.onnx", "dense.onnx", "bench.json", "report.json", "pruned.pt"):
        assert (run_dir / name).is_file(), name
    assert not (run_dir / "checkpoint.pt").exists()
    markdown = step_summary.read_text()
    assert markdown.startswith(f"### compress run: cifar:resnet20 · l1 · {run_dir}") and "| FLOPs drop |" in markdown
    assert "| cpu | host | 1 |" in markdown  # and the bench table


def test_config_values_are_used_and_command_line_wins(tmp_path: Path) -> None:
    cfg = {"model": "cifar:resnet20", "data": SYN_TINY, "method": "l2", "target-flops": 0.3, "epochs": 0,
           "seed": 7, "round_to": 4, "device": "cpu", "quiet": True}  # fmt: skip
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    run_dir = tmp_path / "run"
    _invoke(["prune", "--config", str(tmp_path / "cfg.yaml"), "--seed", "3", "--round-to", "8",
             "--out", str(run_dir)])  # fmt: skip
    written = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert written["model"] == "cifar:resnet20" and written["data"] == SYN_TINY  # from the file
    assert (written["method"], written["target_flops"], written["epochs"]) == ("l2", 0.3, 0)  # from the file
    assert (written["seed"], written["round_to"]) == (3, 8)  # the command line wins
    report = json.loads((run_dir / "report.json").read_text())
    assert report["method"]["name"] == "l2" and report["round_to"] == 8
    assert abs(report["flops_drop"] - 0.3) <= 0.01


# --------------------------------------------------------------------------------------------
# --resume after a hard kill
# --------------------------------------------------------------------------------------------


def _wait_for_prune_checkpoint(proc: cli_process.Process, ckpt: Path, timeout: float = 150) -> dict[str, Any]:
    """Poll ``ckpt``; SIGKILL ``proc`` as soon as it holds a prune-phase checkpoint. Returns that state."""
    seen = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            ident = (ckpt.stat().st_ino, ckpt.stat().st_mtime_ns)
        except FileNotFoundError:
            ident = None
        if ident is not None and ident != seen:
            try:
                state = checkpoint.read(ckpt)
            except (OSError, ValueError):  # replaced while we read it: look again
                continue
            seen = ident
            if state["phase"] == "prune":
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=30)
                return state
        time.sleep(0.01)
    proc.kill()
    out, err = proc.communicate()
    pytest.fail(f"no prune-phase checkpoint seen before the run ended (rc={proc.returncode}); stderr:\n{err}")


def test_resume_after_kill_completes_the_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = ["prune", "--model", "cifar:resnet20", "--data", "synthetic:1x28x28:10", "--method", "l1",
            "--pretrain-epochs", "1", "--epochs", "2", "--target-flops", "0.4", "--train-subset", "128",
            "--test-subset", "64", "--batch-size", "16", "--device", "cpu", "--quiet", "--seed", "0",
            "--out", str(run_dir)]  # fmt: skip
    proc = cli_process.start(args, module="compressor.cli", cwd=tmp_path, env=ENV)
    state = _wait_for_prune_checkpoint(proc, run_dir / "checkpoint.pt")
    assert proc.returncode == -signal.SIGKILL
    assert (state["phase"], state["epoch"]) == ("prune", 1)
    left = {p.name for p in run_dir.iterdir()}
    assert {"checkpoint.pt", "dense.pt", "config.yaml", "history.jsonl"} <= left
    assert not left & {"pruned.pt", "report.json", "report.md"}, left

    _invoke([*args, "--resume"])
    assert {p.name for p in run_dir.iterdir()} == RUN_FILES
    report = json.loads((run_dir / "report.json").read_text())
    assert report["target"]["met"] and abs(report["flops_drop"] - 0.4) <= 0.01
    expected = [("pretrain", 1), ("prune", 1), ("prune", 2)]
    assert [(r["phase"], r["epoch"]) for r in report["history"]] == expected  # pretrain rows kept on resume
    rows = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [(r["phase"], r["epoch"]) for r in rows] == expected

    # The resumed run ends where an uninterrupted run with the same seed ends ("deterministic on CPU").
    ref_dir = tmp_path / "reference"
    _invoke([*args[:-1], str(ref_dir)])
    ref = json.loads((ref_dir / "report.json").read_text())
    assert report["groups"] == ref["groups"]
    assert report["pruned"]["acc"] == ref["pruned"]["acc"]
    assert [r["train_loss"] for r in report["history"]] == pytest.approx([r["train_loss"] for r in ref["history"]])
    got = torch.load(run_dir / "pruned.pt", map_location="cpu", weights_only=True)
    want = torch.load(ref_dir / "pruned.pt", map_location="cpu", weights_only=True)
    assert got["history"] == want["history"] and got["history"]
    assert got["state_dict"].keys() == want["state_dict"].keys()
    for key, value in want["state_dict"].items():
        torch.testing.assert_close(got["state_dict"][key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_unreachable_target_fails_before_any_work(tmp_path: Path) -> None:
    """A target the graph cannot reach is a failed gate (exit 1), known before training: nothing is written."""
    out = tmp_path / "run"
    args = [*_PRUNE_BASE, "--target-flops", "0.95", "--max-layer-ratio", "0.5", "--pretrain-epochs", "3"]
    proc = cli_process.run([*args, "--out", str(out)], module="compressor.cli", timeout=120)
    assert proc.returncode == 1, proc.stderr
    _assert_one_line(proc.stderr)
    assert "out of reach" in proc.stderr
    assert not out.exists()
