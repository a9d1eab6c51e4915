"""benchmarks.suites.accuracy: one tiny end-to-end study on synthetic data, plus the aggregation and --merge checks."""

from __future__ import annotations

import json

import pytest

from benchmarks.suites import accuracy
from compressor.errors import BadInput

DATA = "synthetic:1x28x28:10:256:64"


@pytest.mark.slow
def test_tiny_study_end_to_end(tmp_path, one_thread):
    results = tmp_path / "results" / "accuracy"
    argv = ["--data", DATA, "--models", "cifar:resnet20", "--epochs", "1", "--targets", "0.5",
            "--only", "l1,psap,aster", "--overhead-epochs", "1", "--train-subset", "96", "--batch-size", "48",
            "--out-dir", str(tmp_path / "runs"), "--results", str(results), "--device", "cpu", "--quiet"]  # fmt: skip
    out = accuracy.main(argv)

    data = json.loads((tmp_path / "results" / "accuracy.json").read_text())
    assert data == json.loads(json.dumps(out, default=str))
    command = "python -m benchmarks.suites.accuracy " + " ".join(argv)
    assert data["schema"] == 1 and data["command"] == command
    assert data["settings"]["train_subset"] == 96 and data["settings"]["data_sizes"]["train"] == 96
    rows = {accuracy.row_key(r): r for r in data["rows"]}
    model = "cifar:resnet20"
    expected = {(model, start, None, "dense", 0) for start in ("trained", "scratch")}
    expected |= {(model, start, 0.5, v, 0) for start in ("trained", "scratch") for v in ("l1", "psap", "aster")}
    assert set(rows) == expected

    for start in ("trained", "scratch"):
        dense = rows[(model, start, None, "dense", 0)]
        assert 0.0 <= dense["acc"] <= 1.0 and dense["verified"] is True and dense["epochs"] == 1
        for variant in ("l1", "psap", "aster"):
            row = rows[(model, start, 0.5, variant, 0)]
            assert row["error"] is None, row["error"]
            assert abs(row["flops_drop"] - 0.5) <= 0.01 and row["target_met"] is True
            assert 0.0 < row["params_drop"] < 1.0
            assert row["verified"] is True and row["max_abs_diff"] < 1e-3
            assert 0.0 <= row["acc"] <= 1.0 and row["dense_acc"] == dense["acc"]
            assert row["epoch_s"] > 0 and row["epoch_overhead"] > 0 and row["wall_s"] >= 0
            assert (row["psap_protected"] is not None) == (variant == "psap")
            assert ("aster_fallback" in row) == (variant == "aster")
            assert (tmp_path / "runs" / "cifar_resnet20" / start / "t50" / variant / "s0" / "pruned.onnx").is_file()
            if start == "trained":  # the run started from the dense checkpoint: prune() measured the same accuracy
                assert row["start_acc"] == pytest.approx(dense["acc"])

    summary = {(s["start"], s["target"], s["variant"]): s for s in data["summary"]}
    assert set(summary) == {(st, 0.5, v) for st in ("trained", "scratch") for v in ("dense", "l1", "psap", "aster")}
    assert all(s["n"] == 1 and s["acc_std"] is None and s["failed"] == 0 for s in summary.values())

    for key, method in ((model, "psap"), (f"{model} · aster", "aster")):
        over = data["overhead"][key]
        assert over["method"] == method and over["epochs"] == 1
        assert len(over["plain_epoch_s"]) == len(over["method_epoch_s"]) == 1
        assert over["ratio"] == pytest.approx(over["method_median_s"] / over["plain_median_s"])

    md = (tmp_path / "results" / "accuracy.md").read_text()
    assert command in md and "reduced training set" in md
    assert "## cifar:resnet20, `trained` start" in md and "## cifar:resnet20, `scratch` start" in md
    assert "| psap |" in md and "| l1 |" in md and "| aster |" in md and "interleaved measurement" in md


def test_summary_mean_std_and_dense_per_target():
    def row(variant, target, seed, acc, **kw):
        return {"model": "m", "start": "scratch", "target": target, "variant": variant, "seed": seed, "acc": acc,
                "error": None, "flops_drop": 0.0 if target is None else target, "verified": True, **kw}  # fmt: skip

    rows = [row("dense", None, 0, 0.90), row("dense", None, 1, 0.80),
            row("l1", 0.5, 0, 0.85), row("l1", 0.7, 0, 0.70), row("l1", 0.7, 1, 0.60),
            {**row("psap", 0.7, 0, None), "error": "GateFailed: no"}]  # fmt: skip
    summary = {(s["target"], s["variant"]): s for s in accuracy.summarize(rows)}
    assert summary[(0.7, "l1")]["acc_mean"] == pytest.approx(0.65)
    assert summary[(0.7, "l1")]["acc_std"] == pytest.approx(0.0707107, rel=1e-4)
    assert summary[(0.5, "dense")]["seeds"] == [0] and summary[(0.5, "dense")]["acc_mean"] == pytest.approx(0.90)
    assert summary[(0.7, "dense")]["seeds"] == [0, 1] and summary[(0.7, "dense")]["n"] == 2
    assert summary[(0.7, "psap")]["n"] == 0 and summary[(0.7, "psap")]["failed"] == 1
    assert summary[(0.7, "psap")]["target_met_all"] is False


def test_merge_refuses_other_settings_and_bad_options(tmp_path):
    prefix = tmp_path / "accuracy"
    settings = {"data": DATA, "epochs": 5, "lr": 0.02}
    (tmp_path / "accuracy.json").write_text(json.dumps({"schema": 1, "rows": [], "settings": settings}))
    with pytest.raises(BadInput, match="--epochs 5 vs 1"):
        accuracy.main(["--data", DATA, "--epochs", "1", "--results", str(prefix), "--merge", "--quiet"])
    with pytest.raises(SystemExit):
        accuracy.main(["--only", "nope", "--results", str(prefix)])
    with pytest.raises(SystemExit):
        accuracy.main(["--targets", "1.5", "--results", str(prefix)])


def test_variants_are_prune_options():
    from compressor.jobs.prune import PruneConfig
    from compressor.methods import METHODS

    for name, options in accuracy.VARIANTS.items():
        assert options["method"] in METHODS, name
        PruneConfig(model="cifar:resnet20", out="x", **options)  # every key is a PruneConfig field
