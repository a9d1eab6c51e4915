"""Dense vs pruned ORT-CPU latency for models pruned one-shot (``--epochs 0``) to a FLOPs target.

    python -m benchmarks.speedup                       # torchvision:resnet50, l2, 50% FLOPs, 224x224
    python -m benchmarks.speedup --model torchvision:mobilenet_v2 --method l1 --target-flops 0.3

Runs the same code as ``compress prune/export/bench`` (random-init weights: no pretrained weights can be
downloaded here, and latency does not depend on the values). Writes benchmarks/results/speedup_*.{json,md}.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from pathlib import Path

from benchmarks.latency import render_markdown
from compressor.atomic import write_json, write_text
from compressor.pipeline import PruneConfig, bench_models, export, prune

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="torchvision:resnet50")
    ap.add_argument("--method", default="l2")
    ap.add_argument("--target-flops", type=float, default=0.5)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--batch", default="1")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=60)
    ap.add_argument("--round-to", type=int, default=8)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        report = prune(PruneConfig(
            model=args.model, data=f"synthetic:3x{args.size}x{args.size}:{args.classes}:32:32",
            out=str(run), method=args.method, target_flops=args.target_flops, epochs=0,
            round_to=args.round_to, batch_size=16, quiet=True,
        ))  # fmt: skip
        pruned, dense = export(run), export(run, dense=True)
        result = bench_models({"pruned": pruned["path"], "dense": dense["path"]}, "dense", batch=args.batch,
                              threads=args.threads, warmup=10, iters=args.iters)  # fmt: skip

    result["models"] = {label: Path(path).name for label, path in result["models"].items()}  # no temp paths
    name = f"speedup_{args.model.split(':')[-1]}_{args.method}_{round(100 * args.target_flops)}_round{args.round_to}"
    out = {
        "command": f"python -m benchmarks.speedup --model {args.model} --method {args.method} "
        f"--target-flops {args.target_flops} --size {args.size} --classes {args.classes} --batch {args.batch} "
        f"--threads {args.threads} --iters {args.iters} --round-to {args.round_to}",
        "machine": {"processor": platform.processor() or platform.machine(), "python": platform.python_version()},
        "model": args.model,
        "method": args.method,
        "target_flops": args.target_flops,
        "round_to": args.round_to,
        "flops_drop_measured": report["flops_drop"],
        "params_drop_measured": report["params_drop"],
        "dense_flops": report["dense"]["flops"],
        "pruned_flops": report["pruned"]["flops"],
        "export_max_abs_diff": {
            "pruned": pruned["verification"]["max_abs_diff"],
            "dense": dense["verification"]["max_abs_diff"],
        },  # fmt: skip
        "speedup_p50": {f"batch{r['batch']}": r["speedup"]["pruned"]["p50"] for r in result["results"]},
        "bench": result,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / f"{name}.json", out)
    md = [
        f"# {args.model}, {args.method}, target FLOPs drop {args.target_flops}",
        "",
        f"`{out['command']}`",
        "",
        f"- round_to {args.round_to}",
        f"- measured FLOPs drop (Torch-Pruning counter on the materialized model): {report['flops_drop']:.4f}",
        f"- params drop: {report['params_drop']:.4f}",
        f"- export max |ONNX - PyTorch|: pruned {pruned['verification']['max_abs_diff']:.2e}, "
        f"dense {dense['verification']['max_abs_diff']:.2e}",
        "",
        render_markdown(result),
    ]
    write_text(RESULTS / f"{name}.md", "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
