"""MACs ratio vs measured speedup: one-shot l2 masks at several FLOPs drops, dense and pruned timed interleaved.

    python -m benchmarks.suites.speedup                                   # the suite below, ORT CPU + PyTorch eager
    python -m benchmarks.suites.speedup --models resnet18 --drops 0.5 --providers cpu --iters 50
    python -m benchmarks.suites.speedup --providers cpu,torch,cuda,tensorrt   # on a GPU machine

Every model is pruned with ``compress prune --method l2 --epochs 0`` at each drop and round-to, exported
with ``compress export`` (verified), and all variants of one model are timed in ONE ``compress bench`` run
(round-robin), so a ratio is never taken across runs. Weights are random (nothing can be downloaded here);
latency does not depend on their values. Writes ``benchmarks/results/<out>.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.latency import bench
from compressor.errors import GateFailed
from compressor.jobs.export import export
from compressor.jobs.prune import PruneConfig, prune
from compressor.runtime.atomic import write_json, write_text

RESULTS = Path(__file__).resolve().parents[1] / "results"
SUITE = ("resnet18", "resnet50", "mobilenet_v2", "efficientnet_b0", "cifar:resnet56")


def _spec(name: str) -> tuple[str, str]:
    """(model spec, data spec): torchvision models at 224x224 / 1000 classes, CIFAR nets at 32x32 / 10."""
    if name.startswith("cifar:"):
        return name, "synthetic:3x32x32:10:32:32"
    return (name if ":" in name else f"torchvision:{name}"), "synthetic:3x224x224:1000:32:32"


def _variants(name: str, drops: list[float], rounds: list[int], tmp: Path) -> tuple[dict[str, Path], list[dict]]:
    """Prune + export every (drop, round_to) of one model; the dense model once. Label -> run dir."""
    spec, data = _spec(name)
    files: dict[str, Path] = {}
    rows = []
    for rt in rounds:
        for drop in drops:
            label = f"{round(100 * drop)}%" + (f"/r{rt}" if len(rounds) > 1 else "")
            run = tmp / f"{name.replace(':', '_')}_{round(100 * drop)}_r{rt}"
            try:
                report = prune(PruneConfig(model=spec, data=data, out=str(run), method="l2", target_flops=drop,
                                           epochs=0, round_to=rt, batch_size=16, quiet=True))  # fmt: skip
            except GateFailed as exc:  # e.g. 70% of a CIFAR ResNet with 16-channel groups at --round-to 16
                rows.append({"label": label, "target_flops": drop, "round_to": rt, "unreachable": str(exc)})
                continue
            onnx = export(run)
            files[label] = run
            rows.append({"label": label, "target_flops": drop, "round_to": rt, "flops_drop": report["flops_drop"],
                         "params_drop": report["params_drop"], "dense_macs": report["dense"]["flops"],
                         "pruned_macs": report["pruned"]["flops"],
                         "macs_ratio": report["dense"]["flops"] / report["pruned"]["flops"],
                         "export_max_abs_diff": onnx["verification"]["max_abs_diff"]})  # fmt: skip
            if "dense" not in files:
                export(run, dense=True)
                files["dense"] = run / "dense.onnx"
    return {"dense": files.pop("dense"), **files}, rows


def _table(name: str, variants: list[dict], result: dict) -> list[dict[str, Any]]:
    by_label = {v["label"]: v for v in variants if "unreachable" not in v}
    out = []
    for row in result["results"]:
        for label, sp in row["speedup"].items():
            v, st = by_label[label], row["models"][label]
            out.append({"model": name, "provider": row["provider"], "io": row["io"], "batch": row["batch"],
                        "variant": label, "flops_drop": v["flops_drop"], "macs_ratio": v["macs_ratio"],
                        "dense_p50_ms": row["models"]["dense"]["p50_ms"], "p50_ms": st["p50_ms"],
                        "speedup": sp["p50"], "speedup_over_macs_ratio": sp["p50"] / v["macs_ratio"],
                        "cov": st["cov"], "dense_cov": row["models"]["dense"]["cov"]})  # fmt: skip
    return out


def _markdown(doc: dict[str, Any]) -> str:
    env, s = doc["env"], doc["settings"]
    gpu = f", GPU {env['gpu']['name']}" if env.get("gpu") else ", no GPU"
    lines = [
        "# Speedup vs MACs ratio (one-shot l2 masks, random weights)",
        "",
        f"`{doc['command']}`",
        "",
        f"{env['cpu'].get('model_name')} ({env['cpu'].get('usable_cpus')} usable CPUs){gpu}; ONNX Runtime "
        f"{env['onnxruntime']}, torch {env['torch']}; threads={s['threads'] or 'default'}, warm-up {s['warmup']}, "
        f"{s['iters']} interleaved rounds per setting (dense and every variant of a model in one bench run).",
        "",
        "Speedup = dense p50 / pruned p50. MACs ratio = dense MACs / pruned MACs (Torch-Pruning's counter on the "
        "materialized model). **speedup / MACs** >= 1 means the latency fell at least as much as the MACs.",
        "",
        "| model | backend | io | batch | variant | FLOPs drop | MACs ratio | dense p50 ms | p50 ms | speedup "
        "| speedup / MACs | CoV (pruned, dense) |",
        "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    unreachable = [(m, v) for m, d in doc["models"].items() for v in d["variants"] if "unreachable" in v]
    for r in doc["rows"]:
        lines.append(
            f"| {r['model']} | {r['provider']} | {r['io']} | {r['batch']} | {r['variant']} | {r['flops_drop']:.3f} | "
            f"{r['macs_ratio']:.2f}× | {r['dense_p50_ms']:.3f} | {r['p50_ms']:.3f} | {r['speedup']:.2f}× | "
            f"**{r['speedup_over_macs_ratio']:.2f}** | {r['cov']:.1%}, {r['dense_cov']:.1%} |"
        )
    if unreachable:
        lines += ["", "Not built (the target is out of reach with that rounding):", ""]
        lines += [f"- {m} {v['label']}: {v['unreachable']}" for m, v in unreachable]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(SUITE))
    ap.add_argument("--drops", default="0.3,0.5,0.7")
    ap.add_argument("--round-to", default="8,16", help="Comma list: each is its own variant.")
    ap.add_argument("--providers", default="cpu,torch")
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--out", default="speedup", help="Result name under benchmarks/results/.")
    args = ap.parse_args(argv)
    drops = [float(d) for d in args.drops.split(",")]
    rounds = [int(r) for r in args.round_to.split(",")]
    providers, batches = args.providers.split(","), [int(b) for b in args.batch.split(",")]

    command = "python -m benchmarks.suites.speedup " + " ".join(argv or sys.argv[1:])
    doc: dict[str, Any] = {"command": command, "models": {}, "rows": []}
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            files, variants = _variants(name, drops, rounds, Path(tmp))
            print(f"{name}: {len(variants)} variants exported; timing", flush=True)
            result = bench(files, baseline="dense", providers=providers, batches=batches, threads=args.threads,
                           warmup=args.warmup, iters=args.iters)  # fmt: skip
        for row in result["results"]:
            for st in row["models"].values():
                st.pop("samples_ms")  # keep the committed JSON small
        doc["models"][name] = {"variants": variants, "warnings": result["warnings"], "results": result["results"]}
        doc["rows"] += _table(name, variants, result)
        doc["settings"] = result["settings"]
        doc["env"] = result["env"]
        RESULTS.mkdir(parents=True, exist_ok=True)  # written after every model: a late failure keeps the rest
        write_json(RESULTS / f"{args.out}.json", doc)
        write_text(RESULTS / f"{args.out}.md", _markdown(doc))
        print(f"{name}: done", flush=True)
    print(_markdown(doc))


if __name__ == "__main__":
    main()
