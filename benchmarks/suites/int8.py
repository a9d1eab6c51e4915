"""Pruning and INT8 composed: dense, pruned, dense-int8 and pruned-int8 files of one model timed side by side.

    python -m benchmarks.suites.int8                                  # the suite below, ORT CPU
    python -m benchmarks.suites.int8 --models resnet50 --batch 1 --threads 2 --iters 50

Every model is pruned with ``compress prune --method l2 --epochs 0`` (one-shot, random weights: nothing can
be downloaded here, and latency does not depend on the values), exported (verified) and quantized with
``compress quantize`` (QDQ, per-channel, minmax calibration on the synthetic training split); the four
files of one model are timed in ONE bench run (round-robin), so every ratio is within one run.
Writes ``benchmarks/results/<out>.{json,md}`` after each model.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.latency import bench
from benchmarks.suites.speedup import _spec
from compressor.jobs.export import export
from compressor.jobs.prune import PruneConfig, prune
from compressor.jobs.quantize import quantize
from compressor.runtime.atomic import write_json, write_text

RESULTS = Path(__file__).resolve().parents[1] / "results"
SUITE = ("resnet50", "resnet18", "mobilenet_v2", "cifar:resnet20")
FILES = ("dense", "pruned", "dense-int8", "pruned-int8")


def _files(name: str, drop: float, round_to: int, tmp: Path) -> tuple[dict[str, str], dict[str, Any]]:
    """Prune, export and quantize one model: label -> ONNX file, and the figures of the variants."""
    spec, data = _spec(name)
    if name == "cifar:resnet20":  # the demo's network at the demo's input
        data = "synthetic:1x28x28:10:64:32"
    run = tmp / name.replace(":", "_")
    report = prune(PruneConfig(model=spec, data=data, out=str(run), method="l2", target_flops=drop, epochs=0,
                               round_to=round_to, batch_size=16, quiet=True))  # fmt: skip
    files = {"pruned": export(run, accuracy=False)["path"], "dense": export(run, dense=True, accuracy=False)["path"]}
    sizes = {}
    for variant in ("dense", "pruned"):
        q = quantize(files[variant], accuracy=False, calib_batches=4, calib_batch_size=16)
        files[f"{variant}-int8"] = q["path"]
        sizes[variant], sizes[f"{variant}-int8"] = q["source_bytes"], q["size_bytes"]
    info = {
        "spec": spec,
        "data": data,
        "flops_drop": report["flops_drop"],
        "round_to": round_to,
        "dense_macs": report["dense"]["flops"],
        "pruned_macs": report["pruned"]["flops"],
        "bytes": sizes,
    }
    return {k: files[k] for k in FILES}, info


def _rows(name: str, info: dict[str, Any], result: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for row in result["results"]:
        dense = row["models"]["dense"]["p50_ms"]
        for label in FILES[1:]:
            st = row["models"][label]
            out.append({"model": name, "provider": row["provider"], "batch": row["batch"], "variant": label,
                        "dense_p50_ms": dense, "p50_ms": st["p50_ms"], "speedup": row["speedup"][label]["p50"],
                        "cov": st["cov"], "mb": info["bytes"][label] / 1e6})  # fmt: skip
    return out


def _markdown(doc: dict[str, Any]) -> str:
    env, s = doc["env"], doc["settings"]
    lines = [
        "# Pruning and INT8 composed (one-shot l2 masks, random weights, ORT static QDQ INT8)",
        "",
        f"`{doc['command']}`",
        "",
        f"{env['cpu'].get('model_name')} ({env['cpu'].get('usable_cpus')} usable CPUs, {doc['cpu_kind']}); ONNX "
        f"Runtime {env['onnxruntime']}; threads={s['threads'] or 'default'}, warm-up {s['warmup']}, {s['iters']} "
        "interleaved rounds per setting (the four files of a model in one bench run).",
        "",
        "Speedup = dense fp32 p50 / the file's p50, measured side by side.",
        "",
        "| model | FLOPs drop | batch | file | p50 ms | speedup vs dense fp32 | MB | CoV |",
        "|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in doc["rows"]:
        drop = doc["models"][r["model"]]["info"]["flops_drop"]
        lines.append(f"| {r['model']} | {drop:.3f} | {r['batch']} | {r['variant']} | {r['p50_ms']:.3f} | "
                     f"**{r['speedup']:.2f}×** | {r['mb']:.2f} | {r['cov']:.1%} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def timed(models: list[str], args: argparse.Namespace, on_model: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Prune, export, quantize and time each model (four files in one bench run); ``on_model`` sees the document
    after each model (the suites write their results there, so a stopped run keeps what it measured)."""
    doc: dict[str, Any] = {"models": {}, "rows": []}
    for name in models:
        with tempfile.TemporaryDirectory() as tmp:
            files, info = _files(name, args.drop, args.round_to, Path(tmp))
            print(f"{name}: 4 files; timing", flush=True)
            result = bench(files, baseline="dense", providers=["cpu"], batches=[int(b) for b in args.batch.split(",")],
                           threads=args.threads, warmup=args.warmup, iters=args.iters)  # fmt: skip
        for row in result["results"]:
            for st in row["models"].values():
                st.pop("samples_ms")  # keep the committed JSON small
        doc["models"][name] = {"info": info, "warnings": result["warnings"], "results": result["results"]}
        doc["rows"] += _rows(name, info, result)
        doc["settings"], doc["env"] = result["settings"], result["env"]
        on_model(doc)
    return doc


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The timing options (shared with ``benchmarks.suites.deploy``)."""
    ap.add_argument("--models", default=",".join(SUITE))
    ap.add_argument("--drop", type=float, default=0.5)
    ap.add_argument("--round-to", type=int, default=8)
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iters", type=int, default=30)


def cpu_kind() -> str:
    """The CPU kind the ONNX Runtime kernels dispatch on: AVX-512, AVX2 (no AVX-512) or other."""
    from compressor.runtime.hardware import cpu_kind as kind

    return {"avx512": "AVX-512", "avx2": "AVX2, no AVX-512"}.get(kind(), "no AVX2")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(ap)
    ap.add_argument("--out", default="int8", help="Result name under benchmarks/results/.")
    args = ap.parse_args(argv)
    command = "python -m benchmarks.suites.int8 " + " ".join(argv or sys.argv[1:])
    head = {"command": command, "cpu_kind": cpu_kind()}

    def write(doc: dict[str, Any]) -> None:
        RESULTS.mkdir(parents=True, exist_ok=True)
        write_json(RESULTS / f"{args.out}.json", {**head, **doc})
        write_text(RESULTS / f"{args.out}.md", _markdown({**head, **doc}))

    doc = timed(args.models.split(","), args, write)
    print(_markdown({**head, **doc}))


if __name__ == "__main__":
    main()
