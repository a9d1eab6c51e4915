"""Coverage: every torchvision classification model through masks -> materialize -> ONNX export -> verify.

    python -m benchmarks.suites.coverage                              # all models, l2/psap/aster + raw Torch-Pruning
    python -m benchmarks.suites.coverage --models resnet18,vit_b_32 --methods l2 --out /tmp/cov

Per model (random-init weights, one child process each, so a crash or a runaway cannot take the suite down):
build our channel groups once (bounded in time and memory), then per method take the method's one-step mask
(``epochs=0``: no training, random data for the statistics PSAP needs) at ``--target`` FLOPs drop,
materialize, measure the FLOPs drop with Torch-Pruning's counter, export (``--exporter``, onnx.checker,
onnxslim, dynamic batch checked), and verify against PyTorch on ONNX Runtime at batch 1 and 2; then the
user's path: write ``pruned.pt``, and in a fresh process load it (rebuild, replay the history, load the
weights), check it computes what the in-process model did, export and verify again. A row passes only when
both do (a failure after the reload is ``stage: reload``). The row
``tp-raw`` runs plain Torch-Pruning 1.6.1 (L2 ``MetaPruner``, 50% channels, classifier ignored, legacy
export) under the same bound: it tells which models Torch-Pruning itself can prune. Models whose estimated
peak memory does not fit here are skipped and listed with their size. Writes
``benchmarks/results/coverage.{json,md}`` (rewritten after every model; ``--merge`` keeps other rows).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parents[1] / "results"
METHODS = ("l2", "psap", "aster")
FIXED_224 = ("vit_", "swin", "maxvit")  # position embeddings / windows need the native 224x224
#: Estimated peak bytes per parameter byte: dense + deep copies for each mask + ONNX proto + ORT session.
PEAK_FACTOR = 8
TP_RAW_SECONDS = 180  # bound on plain Torch-Pruning's prune step (40 s, our graph bound, for Swin/MaxViT)


def all_models() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def input_shape(name: str, size: int) -> tuple[int, int, int]:
    return (3, 224, 224) if name.startswith(FIXED_224) else (3, size, size)


def _stage(row: dict[str, Any], stage: str) -> None:
    row["stage"] = stage


def _verify_export(slim: Any, shape: tuple[int, ...], exporter: str, tmp: Path, row: dict[str, Any]) -> None:
    from exporters.onnx import export_onnx

    _stage(row, "export")
    res = export_onnx(slim, shape, tmp / f"{row['method']}.onnx", exporter=exporter, verify_batches=(1, 2))
    v = res["verification"]
    row.update(exporter=res["exporter"], dynamic_batch=res["dynamic_batch"], max_abs_diff=v["max_abs_diff"],
               verify_batches=v["batch_sizes"], onnx_mb=round(res["size_bytes"] / 2**20, 1))  # fmt: skip
    _stage(row, "verify")
    if not res["dynamic_batch"]:
        raise RuntimeError("batch dimension is static after export")
    if not v["passed"]:
        raise RuntimeError("ONNX differs from PyTorch: " + "; ".join(v["errors"] or [f"max abs {v['max_abs_diff']}"]))
    _stage(row, "done")


RELOAD_TIMEOUT = 900  # seconds for the fresh process: import, rebuild, replay, export, verify


def _reload_check(name: str, slim: Any, history: list, shape: tuple[int, ...], exporter: str, tmp: Path,
                  row: dict[str, Any]) -> None:  # fmt: skip
    """The user's path: ``pruned.pt`` written, then a fresh process loads it (rebuild from the spec, replay the
    pruning history, load the weights), checks it computes what the in-process model did, exports and verifies."""
    import torch

    from compressor.artifacts import pruned_payload

    _stage(row, "reload")
    path = tmp / f"{row['method']}.pt"
    spec = {"model": f"torchvision:{name}", "num_classes": 1000, "in_channels": shape[0], "trust_code": False}
    torch.save(pruned_payload(spec, shape, history, slim), path)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.save({"x": x, "y": slim.eval()(x)}, tmp / f"{row['method']}.ref.pt")
    cmd = [sys.executable, "-m", "benchmarks.suites.coverage", "--reload", str(path), "--exporter", exporter]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=RELOAD_TIMEOUT,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})  # fmt: skip
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"reloading pruned.pt in a fresh process took over {RELOAD_TIMEOUT} s") from None
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RELOAD ")]
    if proc.returncode != 0 or not lines:
        tail = " ".join((proc.stderr or proc.stdout).split())[-300:]
        raise RuntimeError(f"reloading pruned.pt in a fresh process failed (exit {proc.returncode}): {tail}")
    got = json.loads(lines[-1][7:])
    row["reload_max_abs_diff"] = got["reload_max_abs_diff"]
    if not got["same_outputs"]:
        raise RuntimeError(f"the reloaded model differs from the pruned one (max abs {got['reload_max_abs_diff']})")
    if not got["export_passed"]:
        raise RuntimeError(f"the reloaded model's export failed verification: {got['export_errors']}")
    _stage(row, "done")


def _run_reload(path: Path, exporter: str) -> None:
    """``--reload``: load a pruned.pt as a user would, compare with the reference outputs, export and verify."""
    import torch

    from compressor.artifacts import load_pruned
    from exporters.onnx import export_onnx

    torch.set_num_threads(int(os.environ.get("COVERAGE_THREADS", "1")))
    model, payload = load_pruned(path)
    ref = torch.load(path.with_suffix(".ref.pt"), weights_only=True)
    with torch.no_grad():
        y = model.eval()(ref["x"])
    diff = float((y - ref["y"]).abs().max())
    scale = float(ref["y"].abs().max())
    res = export_onnx(model, tuple(payload["input_shape"]), path.with_suffix(".reloaded.onnx"), exporter=exporter,
                      verify_batches=(1, 2))  # fmt: skip
    v = res["verification"]
    print(
        "RELOAD "
        + json.dumps(
            {
                "reload_max_abs_diff": diff,
                "same_outputs": diff <= 1e-5 + 1e-4 * scale,
                "export_passed": bool(v["passed"]),
                "export_errors": v["errors"],
            }
        ),
        flush=True,
    )


def _method_row(name: str, method: str, model: Any, graph: Any, shape: tuple[int, ...], target: float,
                exporter: str, tmp: Path, dense_flops: float) -> dict[str, Any]:  # fmt: skip
    import copy

    import torch
    from torch import nn

    from compressor.budget import Budget
    from compressor.errors import BadInput
    from compressor.graph import count_ops_and_params
    from compressor.methods import Context, build_method
    from compressor.methods.registry import options_for

    row: dict[str, Any] = {"model": name, "method": method, "stage": "masks"}
    t0 = time.perf_counter()
    dense_state = copy.deepcopy(model.state_dict())  # methods soft-mask in place: restored for the next one
    work = model
    try:
        gen = torch.Generator().manual_seed(0)
        batches = [(torch.randn(4, *shape, generator=gen), torch.randint(0, 10, (4,), generator=gen)) for _ in range(2)]
        ctx = Context(model=work, graph=graph, budget=Budget(graph), target=target, metric="flops", epochs=0,
                      steps_per_epoch=len(batches), train_loader=batches, loss_fn=nn.CrossEntropyLoss(),
                      device=torch.device("cpu"), lr=0.01, log=lambda _m: None)  # fmt: skip
        m = build_method(method, **options_for(method, {"seed": 0, "steps": 1, "bn_batches": 2}))
        try:
            m.check(graph, ctx.budget, target, "flops", ctx.max_ratio)
        except BadInput as exc:  # the method does not apply to this model (ASTER without BatchNorm)
            reason = f"BadInput: {' '.join(str(exc).split())}"[:400]
            row.update(status="n/a", reason=reason, seconds=round(time.perf_counter() - t0, 1))
            return row
        m.setup(graph, ctx)
        masks = m.masks()
        row["analytic_drop"] = round(ctx.budget.drop(masks), 4)
        _stage(row, "materialize")
        slim, history = graph.materialize(masks)
        slim.eval()
        with torch.no_grad():
            slim(torch.zeros(2, *shape))
        flops, _params = count_ops_and_params(slim, shape)
        row["flops_drop"] = round(1 - flops / dense_flops, 4)
        _verify_export(slim, shape, exporter, tmp, row)
        _reload_check(name, slim, history, shape, exporter, tmp, row)
        row["status"] = "pass"
    except Exception as exc:  # every failure becomes a row: stage + reason
        from compressor.errors import GateFailed

        row["status"] = "refused" if isinstance(exc, (BadInput, GateFailed)) else "fail"
        row["reason"] = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:400]
        if row["status"] == "fail":
            row["trace"] = traceback.format_exc(limit=-3)[-800:]
    finally:
        model.load_state_dict(dense_state)
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def _tp_raw_row(name: str, model: Any, shape: tuple[int, ...], exporter: str, tmp: Path) -> dict[str, Any]:
    """Plain Torch-Pruning: MetaPruner, L2, 50% channels, classifier ignored (what a user of TP alone gets)."""
    import copy

    import torch

    from compressor.graph import GRAPH_SECONDS, _memory_limit, stock_prune
    from compressor.runtime.bounded import bounded

    row: dict[str, Any] = {"model": name, "method": "tp-raw", "stage": "prune"}
    t0 = time.perf_counter()
    try:
        work = copy.deepcopy(model).eval()
        example = torch.zeros(1, *shape)
        # Plain Torch-Pruning gets more time than our graph (slow is not refused here), the known hangs less.
        seconds = GRAPH_SECONDS if name.startswith(("swin", "maxvit")) else TP_RAW_SECONDS
        with bounded(seconds, _memory_limit(None)):
            stock_prune(work, example, ratio=0.5)
        with torch.no_grad():
            work(torch.zeros(2, *shape))
        _verify_export(work, shape, exporter, tmp, row)
        row["status"] = "pass"
    except Exception as exc:
        row["status"] = "fail"
        row["reason"] = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:400]
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def calibrate_bn(model: Any, shape: tuple[int, ...], batches: int = 2) -> None:
    """BN running statistics from a few random batches: random-init activations otherwise grow or vanish
    with depth (logits of 1e-21 or 1e4), and an export check on such outputs proves little."""
    import torch
    from torch import nn

    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    gen = torch.Generator().manual_seed(1)
    model.train()
    with torch.no_grad():
        for _ in range(batches if norms else 0):
            model(torch.randn(8, *shape, generator=gen))
    model.eval()


def run_model(name: str, methods: list[str], size: int, target: float, exporter: str, tp_raw: bool) -> list[dict]:
    """All rows of one model (runs in the child process)."""
    import torch

    from compressor.graph import PruningGraph, count_ops_and_params
    from compressor.models import build_model

    torch.manual_seed(0)
    shape = input_shape(name, size)
    base = {"model": name, "input": "x".join(map(str, shape))}
    t0 = time.perf_counter()
    model = build_model(f"torchvision:{name}", num_classes=1000, in_channels=3)
    calibrate_bn(model, shape)
    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    base["params_m"] = round(params_m, 1)
    dense_flops, _ = count_ops_and_params(model, shape)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="coverage-") as tmp_dir:
        tmp = Path(tmp_dir)
        if tp_raw:
            rows.append(_tp_raw_row(name, model, shape, exporter, tmp))
        t0 = time.perf_counter()
        try:
            graph = PruningGraph(model, torch.zeros(1, *shape), arch=name)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:400]
            secs = round(time.perf_counter() - t0, 1)
            return [{**base, **r} for r in rows] + [
                {**base, "method": m, "status": "refused", "stage": "graph", "reason": reason, "seconds": secs}
                for m in methods
            ]
        base["graph_s"] = round(time.perf_counter() - t0, 1)
        base["groups"] = len(graph.groups)
        base["left_alone"] = len(graph.left_alone())
        for method in methods:
            rows.append(_method_row(name, method, model, graph, shape, target, exporter, tmp, dense_flops))
    return [{**base, **r} for r in rows]


# ------------------------------------------------------------------------------------------------ parent
def _peak_estimate_gb(name: str) -> float:
    import torch
    import torchvision

    try:
        with torch.device("meta"):  # no memory, no init time
            model = torchvision.models.get_model(name, weights=None)
    except Exception:  # builders that compute widths with tensor ops (RegNet) need a real device
        model = torchvision.models.get_model(name, weights=None)
    return sum(p.numel() for p in model.parameters()) * 4 * PEAK_FACTOR / 2**30


def _child(name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    cmd = [sys.executable, "-m", "benchmarks.suites.coverage", "--child", name, "--methods", ",".join(args.methods),
           "--size", str(args.size), "--target", str(args.target), "--exporter", args.exporter]  # fmt: skip
    if not args.tp_raw:
        cmd.append("--no-tp-raw")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.model_timeout, env=env)
    except subprocess.TimeoutExpired:
        return [{"model": name, "method": "*", "status": "fail", "stage": "timeout",
                 "reason": f"model took over {args.model_timeout} s", "seconds": args.model_timeout}]  # fmt: skip
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("ROWS ")]
    if proc.returncode != 0 or not lines:
        tail = " ".join((proc.stderr or proc.stdout).split())[-400:]
        return [{"model": name, "method": "*", "status": "fail", "stage": "crash", "seconds":
                 round(time.perf_counter() - t0, 1), "reason": f"exit {proc.returncode}: {tail}"}]  # fmt: skip
    return json.loads(lines[-1][5:])


def _migrate(row: dict[str, Any]) -> dict[str, Any]:
    """Rows of earlier runs: a method's own refusal at its check (no BatchNorm for ASTER) is now ``n/a``."""
    if row["status"] == "refused" and row.get("stage") == "masks" and "needs BatchNorm" in row.get("reason", ""):
        return {**row, "status": "n/a"}
    return row


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    by_method: dict[str, dict[str, int]] = {}
    for r in rows:
        counts = by_method.setdefault(r["method"], {})
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    tp_ok = {r["model"] for r in rows if r["method"] == "tp-raw" and r["status"] == "pass"}
    ours = [r for r in rows if r["method"] in METHODS and r["model"] in tp_ok and r["status"] != "n/a"]
    return {
        "by_method": by_method,
        "tp_prunable_models": len(tp_ok),
        "ours_on_tp_prunable": {
            "rows": len(ours),
            "pass": sum(r["status"] == "pass" for r in ours),
            "not_pass": sorted(f"{r['model']}/{r['method']}" for r in ours if r["status"] != "pass"),
        },
    }


def render_markdown(result: dict[str, Any]) -> str:
    s = result["summary"]
    lines = [
        "# Coverage: torchvision classification models, prune -> materialize -> export -> verify",
        "",
        " then ".join(f"`{c}`" for c in result.get("commands", [result["command"]]))
        + f" on {result['machine']['processor']} (Python {result['machine']['python']}), "
        f"Torch-Pruning {result['torch_pruning']}, torch {result['torch']}.",
        "",
        f"- Target: {result['target']:.0%} FLOPs drop, one-step masks (no training), random-init weights; "
        f"input {result['size']}x{result['size']} (ViT/Swin/MaxViT: 224x224); verified at batch 1 and 2.",
        "- Every row of ours goes the user's path too: `pruned.pt` written, loaded in a fresh process, its outputs "
        "compared with the in-process model's (*reload diff*), exported and verified again; a row passes only when "
        "both do (a failure after the reload is stage `reload`).",
        f"- Torch-Pruning alone (`tp-raw`) prunes+exports {s['tp_prunable_models']} models; on those, ours: "
        f"{s['ours_on_tp_prunable']['pass']}/{s['ours_on_tp_prunable']['rows']} rows pass"
        + (f" (not: {', '.join(s['ours_on_tp_prunable']['not_pass'])})" if s["ours_on_tp_prunable"]["not_pass"] else "")
        + ".",
        "- Per method: " + "; ".join(
            f"{m}: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())) for m, c in sorted(s["by_method"].items())
        ),
        "",
        "| model | method | status | stage | FLOPs drop | max abs diff | reload diff | s | groups | reason |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in result["rows"]:
        diff = r.get("max_abs_diff")
        lines.append(
            f"| {r['model']} | {r['method']} | {r['status']} | {r.get('stage', '')} | {r['flops_drop']:.3f} | "
            if "flops_drop" in r
            else f"| {r['model']} | {r['method']} | {r['status']} | {r.get('stage', '')} | | "
        )
        reload = r.get("reload_max_abs_diff")
        lines[-1] += (
            f"{'' if diff is None else f'{diff:.1e}'} | {'' if reload is None else f'{reload:.1e}'} | "
            f"{r.get('seconds', '')} | {r.get('groups', '')} | "
            f"{(r.get('reason') or '').replace('|', '/')[:160]} |"
        )
    if result["skipped"]:
        lines += ["", "## Not attempted (do not fit in memory here)", "", "| model | params (M) | est. peak GB |",
                  "|---|---|---|"]  # fmt: skip
        lines += [f"| {x['model']} | {x['params_m']} | {x['peak_gb']} |" for x in result["skipped"]]
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=None, help="Comma list (default: every torchvision classification model).")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--size", type=int, default=224, help="Input side (ViT/Swin/MaxViT always use 224).")
    ap.add_argument("--target", type=float, default=0.5, help="FLOPs drop.")
    ap.add_argument("--exporter", default="legacy", choices=("auto", "dynamo", "legacy"))
    ap.add_argument("--no-tp-raw", dest="tp_raw", action="store_false", help="Skip the plain Torch-Pruning rows.")
    ap.add_argument("--model-timeout", type=int, default=1200, help="Hard limit per model (child is killed).")
    ap.add_argument("--memory-fraction", type=float, default=0.8, help="Skip models whose estimate exceeds this.")
    ap.add_argument("--out", default=str(RESULTS / "coverage"), help="Output path without suffix.")
    ap.add_argument("--merge", action="store_true", help="Keep rows of models not run this time.")
    ap.add_argument("--skip-done", action="store_true", help="With --merge: only run models without rows yet.")
    ap.add_argument("--jobs", type=int, default=2, help="Children side by side (most of the work is one thread).")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--reload", default=None, help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> None:
    """Run every model in a child process (``--child``: one model, rows printed); write the results as they come."""
    args = _parser().parse_args(argv)
    args.methods = [m for m in args.methods.split(",") if m]

    if args.child:
        _run_child(args)
        return
    if args.reload:
        _run_reload(Path(args.reload), args.exporter)
        return

    from compressor.runtime.bounded import available_bytes

    names = args.models.split(",") if args.models else all_models()
    out = Path(args.out)
    old, done, rows, skipped = _previous(out, names, args)
    budget_gb = available_bytes() / 2**30 * args.memory_fraction
    estimates = {n: _peak_estimate_gb(n) for n in names}
    command = " ".join(["python -m benchmarks.suites.coverage", *(argv if argv is not None else sys.argv[1:])])
    todo = [n for n in sorted(names, key=lambda n: estimates[n]) if n not in done]
    lock, room = threading.Lock(), threading.Condition()
    running = [0.0]  # estimated GB of the children running now

    def save() -> None:
        _save(out, rows, skipped, old, command, args)

    def one(name: str) -> None:
        need = estimates[name]
        with room:  # children run side by side only while their estimates fit together
            room.wait_for(lambda: running[0] == 0 or running[0] + need <= budget_gb)
            running[0] += need
        try:
            new = _child(name, args)
        finally:
            with room:
                running[0] -= need
                room.notify_all()
        with lock:
            rows[:] = [r for r in rows if r["model"] != name] + new
            print(" | ".join(f"{name} {r['method']}: {r['status']} {r.get('stage', '')} {r.get('seconds', '')}s "
                             f"{r.get('reason', '')[:100]}" for r in new), flush=True)  # fmt: skip
            save()

    _skip_too_big(todo, estimates, budget_gb, skipped)
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        list(pool.map(one, [n for n in todo if estimates[n] <= budget_gb]))
    save()


def _run_child(args: argparse.Namespace) -> None:
    """``--child``: one model's rows, printed as a ``ROWS <json>`` line for the parent."""
    import torch

    torch.set_num_threads(int(os.environ.get("COVERAGE_THREADS", "1")))
    rows = run_model(args.child, args.methods, args.size, args.target, args.exporter, args.tp_raw)
    print("ROWS " + json.dumps(rows, default=str), flush=True)


def _previous(out: Path, names: list[str], args: argparse.Namespace
              ) -> tuple[dict[str, Any], set[str], list[dict[str, Any]], list[dict[str, Any]]]:  # fmt: skip
    """With --merge, the results file so far, the models done (--skip-done), the rows and skips to keep."""
    old = json.loads(out.with_suffix(".json").read_text()) if args.merge and out.with_suffix(".json").exists() else {}
    done = {r["model"] for r in old.get("rows", [])} if args.skip_done else set()
    rows = [_migrate(r) for r in old.get("rows", []) if r["model"] not in names or r["model"] in done]
    skipped = [x for x in old.get("skipped", []) if x["model"] not in names]
    return old, done, rows, skipped


def _save(out: Path, rows: list[dict[str, Any]], skipped: list[dict[str, Any]], old: dict[str, Any], command: str,
          args: argparse.Namespace) -> None:  # fmt: skip
    """Sort ``rows`` (in place) and write ``<out>.json`` and ``<out>.md``."""
    from importlib.metadata import version

    import torch

    from compressor.runtime.atomic import write_json, write_text

    rows.sort(key=lambda r: (r["model"], r["method"]))
    result = {
        "command": command.strip(),
        "commands": [*old.get("commands", []), command.strip()] if args.merge else [command.strip()],
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        },  # fmt: skip
        "torch": torch.__version__,
        "torch_pruning": version("torch-pruning"),
        "target": args.target,
        "size": args.size,
        "exporter": args.exporter,
        "summary": _summary(rows),
        "rows": rows,
        "skipped": sorted(skipped, key=lambda x: x["model"]),
    }
    write_json(out.with_suffix(".json"), result)
    write_text(out.with_suffix(".md"), render_markdown(result))


def _skip_too_big(todo: list[str], estimates: dict[str, float], budget_gb: float, skipped: list[dict[str, Any]]
                  ) -> None:  # fmt: skip
    """Record in ``skipped`` (and print) the models whose estimated peak memory exceeds ``budget_gb``."""
    for name in [n for n in todo if estimates[n] > budget_gb]:
        params_m = round(estimates[name] * 2**30 / 4 / PEAK_FACTOR / 1e6, 1)
        skipped.append({"model": name, "params_m": params_m, "peak_gb": round(estimates[name], 1)})
        print(f"{name}: skipped (estimated {estimates[name]:.1f} GB > {budget_gb:.1f} GB)", flush=True)


if __name__ == "__main__":
    main()
