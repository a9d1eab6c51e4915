"""benchmarks.suites.methods: the plan (order, controls, tiers), the paired statistics, one tiny end-to-end study on
Fashion-MNIST subsets, and --merge (skips finished rows; refuses other tier settings)."""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path

import pytest

from benchmarks.suites import methods
from compressor.errors import BadInput

MODEL = "cifar:resnet20"


def _tiny_tier(**over):
    tier = {"data": "fashion-mnist", "train_subset": 256, "val_subset": 128, "test_subset": 256, "batch_size": 64,
            "dense_epochs": 1, "epochs": {"trained": 1, "scratch": 1}, "lr": {"trained": 0.02, "scratch": 0.1},
            "blocks": [methods._block("main", 0.7, "trained", [0], ["dense", "l1", "bn-scale"]),
                       methods._block("main", 0.7, "scratch", [0], ["dense", "l1", "bn-scale"])]}  # fmt: skip
    tier.update(over)
    return tier


def _tiers(**over):
    return {"dev": _tiny_tier(**over), "confirm": _tiny_tier(**over)}


def _plan(*argv, tiers=None):
    return methods.main(["--dry-run", "--quiet", *argv], tiers=tiers)["plan"]


def _index(plan):
    return {(r["start"], r["target"], r["variant"], r["seed"]): i for i, r in enumerate(plan)}


# --------------------------------------------------------------------------------------------- plan


def test_confirm_plan_order_blocks_and_control_dependencies(capsys):
    plan = _plan("--tier", "confirm")
    idx = _index(plan)
    # 70% trained first, seed-major (the dense training of a seed, then its methods), then 70% scratch, then 50%
    # (trained only by default), then the controls, then distillation
    assert [(r["variant"], r["seed"]) for r in plan[:7]] == [
        ("dense", 0), ("l1", 0), ("bn-scale", 0), ("sfp", 0), ("psap", 0), ("aster", 0), ("dense", 1)]  # fmt: skip
    order = list(dict.fromkeys((r["start"], r["target"], r["block"]) for r in plan if r["variant"] != "dense"))
    assert order == [
        ("trained", 0.7, "main"), ("scratch", 0.7, "main"), ("trained", 0.5, "main"), ("trained", 0.7, "controls"),
        ("trained", 0.7, "distill")]  # fmt: skip
    assert {r["seed"] for r in plan if r["target"] == 0.7 and r["block"] == "main"} == {0, 1, 2, 3, 4}
    assert {r["seed"] for r in plan if r["target"] == 0.5} == {0, 1, 2}
    assert not any(r["start"] == "scratch" and r["target"] == 0.5 for r in plan)
    assert not any(r["variant"].endswith("+distill") and r["start"] == "scratch" for r in plan)
    assert sum(r["variant"] == "dense" for r in plan) == 10  # one per (start, seed): the 50% block adds none
    for seed in (0, 1, 2):
        for control, dep in [("l1-matched-psap", "psap"), ("random-alloc-psap", "psap"),
                             ("l1-matched-aster", "aster"), ("random-alloc-aster", "aster")]:  # fmt: skip
            assert idx[("trained", 0.7, dep, seed)] < idx[("trained", 0.7, control, seed)]
            assert plan[idx[("trained", 0.7, control, seed)]]["dep"] == dep
        assert ("trained", 0.7, methods.BEST_DISTILL, seed) in idx
    assert len(plan) == 99
    out = capsys.readouterr().out
    assert out.splitlines()[0].endswith("99 row(s), 0 done") and "(after psap)" in out

    # 50% scratch only when asked for; the controls and distillation stay trained-start
    plan = _plan("--tier", "confirm", "--starts", "trained,scratch")
    assert {r["seed"] for r in plan if r["start"] == "scratch" and r["target"] == 0.5} == {0, 1, 2}
    assert {r["start"] for r in plan if r["block"] in ("controls", "distill")} == {"trained"}


def test_plan_overrides_dependencies_and_distill_at_scratch(capsys):
    # a control without its method row gets the row inserted just before it; --seeds/--targets override the tier
    plan = _plan("--tier", "dev", "--variants", "l1-matched-aster,l1", "--seeds", "3", "--targets", "0.5")
    assert [(r["start"], r["target"], r["variant"], r["seed"], r["added"]) for r in plan] == [
        ("trained", 0.5, "aster", 3, True), ("trained", 0.5, "l1-matched-aster", 3, False),
        ("trained", 0.5, "l1", 3, False),
        ("scratch", 0.5, "aster", 3, True), ("scratch", 0.5, "l1-matched-aster", 3, False),
        ("scratch", 0.5, "l1", 3, False)]  # fmt: skip
    # the dev default list: every ablation, both starts, seeds 0..2
    dev = _plan("--tier", "dev")
    assert {r["variant"] for r in dev} == set(methods.DEV_VARIANTS) and len(dev) == 2 * 3 * len(methods.DEV_VARIANTS)
    # distillation from scratch is refused at plan time (exit 2, one line)
    capsys.readouterr()
    assert methods.cli(["--tier", "dev", "--variants", "psap+distill", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "trained-start only" in err
    assert methods.cli(["--tier", "dev", "--variants", "psap+distill", "--starts", "trained", "--dry-run"]) == 0
    with pytest.raises(SystemExit) as exc:
        methods.main(["--tier", "dev", "--variants", "nope", "--dry-run"])
    assert exc.value.code == 2


def test_control_options_come_from_the_dependency_row(tmp_path):
    args = methods.build_parser().parse_args(["--tier", "dev", "--device", "cpu", "--quiet",
                                              "--out-dir", str(tmp_path)])  # fmt: skip
    tier = methods.TIERS["dev"]
    key = methods._key("dev", MODEL, "trained", 0.7, "psap", 0)
    dense = {(MODEL, 0): {"path": "runs/dense.pt", "error": None}}
    finished = {key: {"epochs_final": 5, "run_dir": "runs/psap/s0", "error": None}}

    def row(variant):
        return {
            "tier": "dev",
            "model": MODEL,
            "start": "trained",
            "target": 0.7,
            "variant": variant,
            "seed": 0,
            "dep": methods.dependency(variant),
            "key": methods._key("dev", MODEL, "trained", 0.7, variant, 0),
        }

    task = methods._prepare(row("l1-matched-psap"), tier, args, finished, dense, set())
    assert task["options"] == {"method": "l1", "prune_at": 8 - 5} and task["weights"] == "runs/dense.pt"
    assert task["error"] is None and task["epochs"] == 8 and task["lr"] == 0.02
    task = methods._prepare(row("random-alloc-psap"), tier, args, finished, dense, set())
    assert task["options"] == {"method": "random", "allocation_from": "runs/psap/s0"}
    # the psap row's run directory is gone (a fresh checkout): its recorded allocation stands in for its report
    finished[key] = {**finished[key], "allocation": [["conv1", 16, 5], ["layer1.0.conv1", 16, 7]]}
    where = Path(methods._prepare(row("random-alloc-psap"), tier, args, finished, dense, set())["options"]
                 ["allocation_from"])  # fmt: skip
    assert where.parent == tmp_path / "dev" / "cifar_resnet20" / "trained" / "t70" / "random-alloc-psap"
    report = json.loads((where / "report.json").read_text())
    assert report == {"groups": [{"root": "conv1", "channels": 16, "kept": 5},
                                 {"root": "layer1.0.conv1", "channels": 16, "kept": 7}]}  # fmt: skip
    finished[key] = {"epochs_final": None, "run_dir": "x", "error": None}
    assert "no epochs_final" in methods._prepare(row("l1-matched-psap"), tier, args, finished, dense, set())["error"]
    finished[key] = {"error": "GateFailed: no"}
    assert "psap row failed" in methods._prepare(row("random-alloc-psap"), tier, args, finished, dense, set())["error"]
    # the best baseline of distillation: by validation accuracy of the rows finished so far
    for variant, val, acc in (("l1", 0.80, 0.95), ("bn-scale", 0.90, 0.50)):
        k = methods._key("dev", MODEL, "trained", 0.7, variant, 0)
        finished[k] = {"tier": "dev", "variant": variant, "seed": 0, "acc": acc, "last_val_acc": val, "error": None}
    task = methods._prepare(row(methods.BEST_DISTILL), tier, args, finished, dense, set())
    assert task["variant"] == "bn-scale+distill" and task["options"] == {"method": "bn-scale", "distill": True}


def test_rows_from_a_retrained_dense_checkpoint_are_stale(tmp_path):
    store = tmp_path / "store"
    path = methods.dense_path(store, "dev", MODEL, 0)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"dense weights")
    sha = methods.file_sha(path)
    rows = {
        "same": {"tier": "dev", "model": MODEL, "start": "trained", "variant": "l1", "seed": 0, "dense_sha": sha},
        "other": {"tier": "dev", "model": MODEL, "start": "trained", "variant": "psap", "seed": 0, "dense_sha": "0"},
        "dense": {"tier": "dev", "model": MODEL, "start": "scratch", "variant": "dense", "seed": 0, "dense_sha": "1"},
        "scratch": {"tier": "dev", "model": MODEL, "start": "scratch", "variant": "l1", "seed": 0, "dense_sha": None},
        "legacy": {"tier": "dev", "model": MODEL, "start": "trained", "variant": "sfp", "seed": 0},
        "no store": {"tier": "dev", "model": MODEL, "start": "trained", "variant": "l1", "seed": 1, "dense_sha": "2"},
    }  # fmt: skip
    assert sorted(methods.stale_rows(rows, store)) == ["dense", "legacy", "no store", "other"]
    assert sorted(methods.stale_rows(rows, tmp_path / "empty")) == sorted(set(rows) - {"scratch"})


def test_epochs_final():
    assert methods.epochs_final({"method": {"mask_final_epoch": 3.0}}, 8, {"method": "psap"}) == 5
    assert methods.epochs_final({"method": {"mask_final_epoch": 2.5}}, 8, {"method": "psap"}) == 5.5
    assert methods.epochs_final({"method": {}}, 8, {"method": "l1"}) == 8
    assert methods.epochs_final({"method": {}}, 8, {"method": "l1", "steps": 3}) is None
    assert methods.epochs_final({"method": {}}, 8, {"method": "psap"}) is None


# --------------------------------------------------------------------------------------------- statistics


def test_paired_statistics_and_verdicts():
    half = 4.3027 * 1.0 / math.sqrt(3)
    level = methods.paired_stats([1.0, 2.0, 3.0])
    assert level["mean"] == pytest.approx(2.0) and level["std"] == pytest.approx(1.0)
    assert level["half_width"] == pytest.approx(half) and level["lo"] == pytest.approx(2.0 - half)
    assert level["hi"] == pytest.approx(2.0 + half) and level["verdict"] == "level" and level["wins"] == 3
    beats = methods.paired_stats([3.0, 4.0, 5.0])
    assert beats["lo"] == pytest.approx(4.0 - half) and beats["verdict"] == "beats"
    loses = methods.paired_stats([-3.0, -4.0, -5.0])
    assert loses["verdict"] == "loses" and loses["wins"] == 0
    assert methods.paired_stats([0.5])["verdict"] == "n<2" and methods.paired_stats([])["n"] == 0
    assert methods.paired_stats([1.0, 1.0])["verdict"] == "beats"  # zero spread: the interval is the mean
    assert methods.t975(1) == pytest.approx(12.706, abs=1e-3) and methods.t975(30) == pytest.approx(2.0423)
    assert methods.t975(40) == pytest.approx(2.0211, abs=2e-4) and methods.t975(120) == pytest.approx(1.9799, abs=2e-4)


def _row(variant, seed, acc, val, tier="confirm", start="trained", target=0.7, **kw):
    return {"tier": tier, "model": MODEL, "start": start, "target": target, "variant": variant, "seed": seed,
            "acc": acc, "last_val_acc": val, "flops_drop": target, "params_drop": 0.6, "epochs_final": 8,
            "verified": True, "flops_in_band": True, "error": None, "wall_s": 10.0, "cpu_kind": "avx2",
            "device": "cpu", "test_size": 10000, "run_dir": f"r/{variant}/{seed}", **kw}  # fmt: skip


def test_summary_best_baseline_is_chosen_on_validation_not_test():
    rows = []
    for s, (l1, bn, psap) in enumerate([(0.80, 0.90, 0.83), (0.81, 0.91, 0.85), (0.79, 0.89, 0.84)]):
        rows += [_row("l1", s, l1, 0.95), _row("bn-scale", s, bn, 0.70), _row("psap", s, psap, 0.90)]
    rows += [_row("dense", s, 0.92, 0.93, target=None, flops_in_band=None) for s in range(3)]
    summary = methods.summarize(rows)
    entry = {(e["variant"]): e for e in summary if e["kind"] == "variant"}
    assert methods.best_baseline(rows) == "l1"  # higher validation accuracy, though bn-scale has the higher test
    vs = entry["psap"]["vs_best"]
    assert vs["baseline"] == "l1" and vs["test"]["diffs"] == pytest.approx([0.03, 0.04, 0.05])
    assert vs["test"]["mean"] == pytest.approx(0.04) and vs["test"]["verdict"] == "beats"
    assert vs["val"]["mean"] == pytest.approx(-0.05) and vs["val"]["n"] == 3
    assert entry["l1"]["best_baseline"] == "l1" and "vs_best" not in entry["dense"]
    assert entry["l1"]["acc_mean"] == pytest.approx(0.80) and entry["l1"]["acc_std"] == pytest.approx(0.01)
    assert entry["psap"]["verified_all"] and entry["psap"]["in_band_all"] and entry["dense"]["in_band_all"] is None
    noise = next(e for e in summary if e["kind"] == "noise")
    p = (0.80 + 0.90 + 0.84 + 0.81 + 0.91 + 0.85 + 0.79 + 0.89 + 0.83) / 9
    assert noise["binomial_se"] == pytest.approx(math.sqrt(p * (1 - p) / 10000))
    assert noise["mean_seed_std"] == pytest.approx(0.01)
    cost = next(e for e in summary if e["kind"] == "cost")
    assert cost["tier"] == "confirm" and cost["wall_s_total"] == pytest.approx(120.0)

    result = {"summary": summary, "rows": rows, "machine": methods.machine_info(), "overhead": {},
              "protocol": {"tier_settings": {"confirm": methods.TIERS["confirm"]}, "commands": []}}  # fmt: skip
    md = methods.render_markdown(result)
    assert md.index("## Confirm tier") < md.index("## Noise floor") < md.index("## Cost")
    assert "**Winner(s)**: psap at trained 70%" in md and "Best baseline (higher mean validation accuracy)" in md
    # a method inside the noise: no winner, said plainly
    rows = [r if r["variant"] != "psap" else {**r, "acc": r["acc"] - 0.04 + (0.01 if r["seed"] else -0.01)}
            for r in rows]  # fmt: skip
    md = methods.render_markdown({**result, "summary": methods.summarize(rows), "rows": rows})
    assert "**No method beats the best baseline**" in md
    # the dev tier: validation first (what its choices use), test after
    dev = [{**r, "tier": "dev"} for r in rows]
    md = methods.render_markdown({**result, "summary": methods.summarize(dev), "rows": dev})
    assert "No confirm-tier rows yet." in md and "## Dev tier ablations" in md
    head = next(line for line in md.splitlines() if line.startswith("| variant | trained 70% val %"))
    assert head.index("val %") < head.index("Δ val") < head.index("test %") < head.index("Δ test")
    assert "On validation, beat the best baseline: none." in md  # psap's validation accuracy trails l1's


def test_controls_and_distillation_are_paired_with_the_row_they_copy():
    rows = []
    for s in range(3):
        rows += [_row("l1", s, 0.80, 0.90), _row("bn-scale", s, 0.79, 0.85), _row("psap", s, 0.81, 0.88),
                 _row("l1-iter3", s, 0.80 + 0.01 * s, 0.90), _row("l1-matched-psap", s, 0.78, 0.86),
                 _row("random-alloc-psap", s, 0.75 - 0.01 * s, 0.84), _row("psap+distill", s, 0.83, 0.89),
                 _row("l1+distill", s, 0.80 + (0.01 if s else -0.01), 0.90)]  # fmt: skip
    summary = methods.summarize(rows)
    entry = {e["variant"]: e for e in summary if e["kind"] == "variant"}
    want = {"l1-iter3": ("l1", [0.0, 0.01, 0.02]), "l1-matched-psap": ("psap", [-0.03] * 3),
            "random-alloc-psap": ("psap", [-0.06, -0.07, -0.08]), "psap+distill": ("psap", [0.02] * 3),
            "l1+distill": ("l1", [-0.01, 0.01, 0.01])}  # fmt: skip
    for variant, (ref, diffs) in want.items():
        got = entry[variant]["vs_ref"]
        assert got["reference"] == ref and got["test"]["diffs"] == pytest.approx(diffs), variant
    assert entry["random-alloc-psap"]["vs_ref"]["test"]["verdict"] == "loses"
    assert entry["psap+distill"]["vs_ref"]["val"]["mean"] == pytest.approx(0.01)
    assert all("vs_ref" not in entry[v] for v in ("l1", "bn-scale", "psap"))  # nothing they copy
    result = {"summary": summary, "rows": rows, "machine": methods.machine_info(), "overhead": {},
              "protocol": {"tier_settings": {"confirm": methods.TIERS["confirm"]}, "commands": []}}  # fmt: skip
    md = methods.render_markdown(result)
    assert md.index("## Confirm tier") < md.index("## Controls and distillation") < md.index("## Noise floor")
    line = next(x for x in md.splitlines() if x.startswith("| trained 70% | random-alloc-psap | psap |"))
    assert "-7.00 [" in line and "0/3 **loses**" in line and "random channels" in line
    assert sum(x.startswith("| trained 70% |") for x in md.splitlines()) == len(want)
    winners = next(x for x in md.splitlines() if x.startswith("**Winner(s)**"))
    assert "psap at trained 70%" in winners and "distill" not in winners  # controls are not methods


# --------------------------------------------------------------------------------------------- end to end


REQUIRED = ("tier", "variant", "start", "target", "seed", "acc", "last_val_acc", "flops_drop", "params_drop",
            "epochs_final", "verified", "flops_in_band", "run_dir", "wall_s", "device", "cpu_kind",
            "error")  # fmt: skip


@pytest.fixture(scope="module")
def study(tmp_path_factory, one_thread):
    tmp = tmp_path_factory.mktemp("methods")
    argv = ["--tier", "dev", "--variants", "dense,l1", "--results", str(tmp / "results" / "methods"),
            "--out-dir", str(tmp / "runs"), "--device", "cpu", "--quiet"]  # fmt: skip
    out = methods.main(argv, tiers=_tiers())
    return tmp, argv, out


@pytest.mark.slow
def test_tiny_study_end_to_end(study):
    tmp, argv, out = study
    data = json.loads((tmp / "results" / "methods.json").read_text())
    assert data == out and data["schema"] == 1 and data["kind"] == "compress.methods"
    assert set(data) == {"schema", "kind", "protocol", "machine", "rows", "summary", "overhead"}
    assert data["protocol"]["commands"][0]["command"] == "python -m benchmarks.suites.methods " + " ".join(argv)
    assert data["protocol"]["tier_settings"]["dev"]["train_subset"] == 256 and data["protocol"]["round_to"] == 1
    assert set(data["machine"]) >= {"cpu", "avx512", "cores", "torch"} and data["machine"]["avx512"] in ("yes", "no")
    rows = {(r["start"], r["variant"]): r for r in data["rows"]}
    assert set(rows) == {(s, v) for s in ("trained", "scratch") for v in ("dense", "l1")}
    for row in rows.values():
        assert all(k in row for k in REQUIRED), [k for k in REQUIRED if k not in row]
        assert row["error"] is None and row["verified"] is True and row["tier"] == "dev" and row["seed"] == 0
        assert 0.0 <= row["acc"] <= 1.0 and 0.0 <= row["last_val_acc"] <= 1.0 and row["test_size"] == 256
        assert row["cpu_kind"] in ("avx512", "avx2", "other") and row["wall_s"] >= 0
    assert rows[("trained", "dense")]["acc"] == rows[("scratch", "dense")]["acc"]  # one dense training per seed
    stored = tmp / "results" / "methods_store" / "dev" / "cifar_resnet20" / "dense" / "s0" / "dense.pt"
    sha = methods.file_sha(stored)  # kept beside the results, named by every row that starts from it
    assert rows[("trained", "dense")]["dense_sha"] == rows[("trained", "l1")]["dense_sha"] == sha
    assert rows[("scratch", "l1")]["dense_sha"] is None
    allocation = rows[("trained", "l1")]["allocation"]
    assert allocation and all(isinstance(root, str) and 0 < kept <= channels for root, channels, kept in allocation)
    assert rows[("trained", "dense")]["target"] is None and rows[("trained", "dense")]["flops_in_band"] is None
    for start in ("trained", "scratch"):
        l1 = rows[(start, "l1")]
        assert l1["target"] == 0.7 and l1["flops_in_band"] is True and 0.7 <= l1["flops_drop"] <= 0.705
        assert l1["epochs_final"] == 1 and 0.0 < l1["params_drop"] < 1.0
        assert (tmp / "runs" / "dev" / "cifar_resnet20" / start / "t70" / "l1" / "s0" / "pruned.onnx").is_file()
    summary = [e for e in data["summary"] if e["kind"] == "variant"]
    assert {(e["start"], e["variant"]) for e in summary} == set(rows)
    assert all(e["n"] == 1 and e["verified_all"] for e in summary)
    assert next(e for e in summary if e["variant"] == "l1")["best_baseline"] == "l1"
    md = (tmp / "results" / "methods.md").read_text()
    assert md.startswith("# Pruning methods: protocol study\n\n## Confirm tier")
    assert "No confirm-tier rows yet." in md and "## Dev tier ablations" in md and "| l1 |" in md
    assert "## Noise floor" in md and "## Cost" in md and data["protocol"]["commands"][0]["command"] in md


def test_merge_skips_finished_rows_and_refuses_other_tier_settings(study, monkeypatch, capsys):
    tmp, argv, first = study

    def boom(task):
        raise AssertionError(f"--merge ran {task.get('variant', 'dense')} again")

    monkeypatch.setattr(methods, "run_row", boom)
    monkeypatch.setattr(methods, "dense_job", boom)
    plan = methods.main([*argv, "--merge", "--dry-run"], tiers=_tiers())
    assert len(plan["plan"]) == 4 and len(plan["done"]) == 4
    second = methods.main([*argv, "--merge"], tiers=_tiers())
    assert second["rows"] == first["rows"] and len(second["protocol"]["commands"]) == 2
    assert second["protocol"]["commands"][1]["merge"] is True

    capsys.readouterr()
    before = (tmp / "results" / "methods.json").read_text()
    assert methods.cli([*argv, "--merge"], tiers=_tiers(train_subset=512)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "other dev tier settings" in err and "train_subset 256 vs 512" in err
    assert (tmp / "results" / "methods.json").read_text() == before
    # another tier's settings do not matter to a merge into this tier
    other = _tiers()
    other["confirm"] = copy.deepcopy(other["confirm"]) | {"train_subset": 999}
    assert methods.main([*argv, "--merge"], tiers=other)["rows"] == first["rows"]


def test_a_kept_dense_checkpoint_is_reused_where_it_now_lies(study, tmp_path, monkeypatch):
    tmp, argv, first = study
    moved = tmp_path / "clone" / "methods_store"  # the store as a fresh checkout has it
    shutil.copytree(tmp / "results" / "methods_store", moved)

    def boom(*a, **k):
        raise AssertionError("the kept dense checkpoint was trained again")

    monkeypatch.setattr("compressor.train.Trainer.fit", boom)
    args = methods.build_parser().parse_args([*argv, "--merge", "--store", str(moved)])
    task = methods._dense_task("dev", MODEL, 0, _tiers()["dev"], args, ["trained"])
    result = methods.dense_job(task)
    stored = moved / "dev" / "cifar_resnet20" / "dense" / "s0" / "dense.pt"
    assert result["error"] is None and result["reused"] is True and result["path"] == str(stored)
    dense = next(r for r in first["rows"] if r["variant"] == "dense" and r["start"] == "trained")
    assert result["dense_sha"] == dense["dense_sha"] and result["acc"] == dense["acc"]


def test_bad_results_file_is_refused_on_merge(tmp_path, capsys):
    bad = tmp_path / "r.json"
    bad.write_text('{"schema": 1, "rows": []}')
    assert methods.cli(["--tier", "dev", "--merge", "--results", str(tmp_path / "r"), "--dry-run"]) == 2
    assert "not a compress.methods results file" in capsys.readouterr().err
    with pytest.raises(BadInput):
        methods.load_results(bad)


def test_a_stop_signal_ends_the_study_in_one_line(monkeypatch, capsys):
    """SIGTERM mid-study: exit 143 and one line saying how to continue (the finished rows are already written)."""
    import signal

    from compressor.errors import Interrupted

    def stopped(*_a, **_k):
        raise Interrupted(signal.SIGTERM, resume=False)

    monkeypatch.setattr(methods, "main", stopped)
    assert methods.cli(["--tier", "dev"]) == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--merge" in err and "Traceback" not in err
