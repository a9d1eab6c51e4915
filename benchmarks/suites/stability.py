"""Do repeated ``compress bench`` runs of the same model agree within the CoV each run reports?

    python -m benchmarks.suites.stability                  # torchvision:resnet18 l2 50%, 5 CLI runs, ORT CPU batch 1
    python -m benchmarks.suites.stability --model cifar:resnet56 --runs 5

Each repetition is a separate ``compress bench`` process (new sessions, as a CI job would run it). For every
run we record p50 and the CoV (std / mean) it reports; a run agrees when its p50 is within its own CoV of
the median p50 over all runs. Writes ``benchmarks/results/stability.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.latency import environment
from compressor.jobs.export import export
from compressor.jobs.prune import PruneConfig, prune
from compressor.runtime.atomic import write_json, write_text

RESULTS = Path(__file__).resolve().parents[1] / "results"


def _run_bench(run: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "compressor.cli", "bench", str(run), "--baseline", str(run / "dense.onnx"),
           "--batch", "1", "--iters", str(args.iters), "--warmup", "10", "--json-out", str(out)]  # fmt: skip
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> None:
    """Prune and export the model once, bench it ``--runs`` times; write and print the results."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="torchvision:resnet18")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)

    rows = _bench_runs(args)
    summary = _summary(rows)
    speedups = [r["speedup"] for r in rows]
    doc = {"command": "python -m benchmarks.suites.stability " + " ".join(argv or sys.argv[1:]), "model": args.model,
           "env": environment(False), "runs": rows, "summary": summary,
           "speedup": {"min": min(speedups), "max": max(speedups), "median": statistics.median(speedups)}}  # fmt: skip
    md = _markdown(doc, args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / "stability.json", doc)
    write_text(RESULTS / "stability.md", "\n".join(md) + "\n")
    print("\n".join(md))


def _bench_runs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Prune (l2 50%) and export the model in a temporary run directory; one row per ``compress bench`` run."""
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        prune(PruneConfig(model=args.model, data=f"synthetic:3x{args.size}x{args.size}:1000:32:32", out=str(run),
                          method="l2", target_flops=0.5, epochs=0, round_to=16, batch_size=16, quiet=True))  # fmt: skip
        export(run)
        export(run, dense=True)
        for i in range(args.runs):
            res = _run_bench(run, Path(tmp) / f"b{i}.json", args)
            row = res["results"][0]
            rows.append({label: {"p50_ms": st["p50_ms"], "cov": st["cov"]} for label, st in row["models"].items()})
            rows[-1]["speedup"] = row["speedup"]["model"]["p50"]
            print(f"run {i + 1}: {rows[-1]}", flush=True)
    return rows


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per label (pruned ``model``, dense ``baseline``): median p50, the largest deviation from it, CoV range and
    how many runs fall within their own CoV."""
    summary: dict[str, Any] = {}
    for label in ("model", "baseline"):
        p50s = [r[label]["p50_ms"] for r in rows]
        med = statistics.median(p50s)
        devs = [abs(r[label]["p50_ms"] - med) / med for r in rows]
        agree = [d <= r[label]["cov"] for d, r in zip(devs, rows, strict=True)]
        summary[label] = {"median_p50_ms": med, "max_rel_dev": max(devs), "max_cov": max(r[label]["cov"] for r in rows),
                          "min_cov": min(r[label]["cov"] for r in rows), "runs_within_own_cov": sum(agree),
                          "runs": len(rows)}  # fmt: skip
    return summary


def _markdown(doc: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """The results as Markdown lines: one table of the runs, one of the summary, the speedup range."""
    rows, summary = doc["runs"], doc["summary"]
    return [
        f"# Repeatability of `compress bench` ({args.model}, l2 50% r16 vs dense, ORT CPU batch 1)",
        "",
        f"`{doc['command']}` — {args.runs} separate `compress bench` processes, {args.iters} interleaved rounds each, "
        f"on {doc['env']['cpu'].get('model_name')} ({doc['env']['cpu'].get('usable_cpus')} CPUs).",
        "",
        "| run | pruned p50 ms | pruned CoV | dense p50 ms | dense CoV | speedup |",
        "|---:|---:|---:|---:|---:|---:|",
        *[f"| {i + 1} | {r['model']['p50_ms']:.3f} | {r['model']['cov']:.1%} | {r['baseline']['p50_ms']:.3f} | "
          f"{r['baseline']['cov']:.1%} | {r['speedup']:.3f}× |" for i, r in enumerate(rows)],
        "",
        "| model | median p50 ms | max deviation of a run's p50 from the median | CoV reported (min–max) "
        "| runs within their own CoV |",
        "|---|---:|---:|---:|---:|",
        *[f"| {'pruned' if k == 'model' else 'dense'} | {s['median_p50_ms']:.3f} | {s['max_rel_dev']:.2%} | "
          f"{s['min_cov']:.1%}–{s['max_cov']:.1%} | {s['runs_within_own_cov']}/{s['runs']} |"
          for k, s in summary.items()],
        "",
        f"Speedup over the runs: {doc['speedup']['min']:.3f}–{doc['speedup']['max']:.3f}× "
        f"(median {doc['speedup']['median']:.3f}×).",
    ]  # fmt: skip


if __name__ == "__main__":
    main()
