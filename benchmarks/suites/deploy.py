"""The deployment suite: what the shipped files cost and what they keep, from one command.

    python -m benchmarks.suites.deploy                       # both parts below, ORT CPU
    python -m benchmarks.suites.deploy --models resnet50 --batch 1 --no-accuracy

1. **Latency** (``benchmarks.suites.int8``): resnet18, resnet50 and mobilenet_v2 at 224² (random init) and
   cifar:resnet20 at 28², each as dense fp32, pruned fp32 (one-shot ``l2``, 50% FLOPs), dense INT8 and pruned
   INT8, the four files of a model timed interleaved in one ORT CPU bench run, batch 1 and 8.
2. **Accuracy of the files** (``--recipe``, default ``recipes/demo.yaml``): ``compress run`` trains cifar:resnet20
   on Fashion-MNIST, prunes it, exports, quantizes and measures through ONNX Runtime the test top-1 of the dense
   fp32, pruned fp32 and pruned INT8 files on the full test split.

Writes ``benchmarks/results/<out>.{json,md}`` after each part.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from benchmarks.suites.int8 import RESULTS, add_arguments, cpu_kind, timed
from benchmarks.suites.int8 import _markdown as latency_markdown
from compressor.jobs.run import run_recipe
from compressor.runtime.atomic import write_json, write_text

ROOT = Path(__file__).resolve().parents[2]
INT8_TOLERANCE_PT = 0.5  # the bar: pruned INT8 within 0.5 pt of pruned fp32


def accuracy(recipe_path: Path) -> dict[str, Any]:
    """Run the recipe in a temporary directory; the files' ORT test accuracy and the run's figures."""
    recipe = yaml.safe_load(recipe_path.read_text())
    recipe["prune"] = {**recipe["prune"], "quiet": True}
    recipe.setdefault("quantize", {})
    with tempfile.TemporaryDirectory() as tmp:
        s = run_recipe(recipe, out=str(Path(tmp) / "run"), quiet_json=True)
    out = {k: s.get(k) for k in ("model", "method", "dense_acc", "pruned_acc", "dense_onnx_acc", "pruned_onnx_acc",
                                 "int8_acc", "flops_drop", "params_drop", "speedup", "int8_speedup")}  # fmt: skip
    out["recipe"] = str(recipe_path.relative_to(ROOT) if recipe_path.is_relative_to(ROOT) else recipe_path)
    out["settings"] = {k: recipe["prune"].get(k) for k in ("data", "train_subset", "pretrain_epochs", "epochs",
                                                            "target_flops", "seed")}  # fmt: skip
    out["int8_minus_pruned_pt"] = round(100 * (out["int8_acc"] - out["pruned_onnx_acc"]), 2)
    out["int8_within_tolerance"] = abs(out["int8_minus_pruned_pt"]) <= INT8_TOLERANCE_PT
    return out


def _markdown(doc: dict[str, Any]) -> str:
    lines = ["# Deployment: latency and accuracy of the shipped files", "", f"`{doc['command']}`", ""]
    if doc.get("rows"):
        lines += ["## Latency (ORT CPU, interleaved)", ""] + latency_markdown(doc).splitlines()[4:] + [""]
    a = doc.get("accuracy")
    if a:
        st = a["settings"]
        lines += [
            f"## Accuracy of the files through ONNX Runtime ({a['model']}, {st['data']}, full test split)", "",
            f"`{a['recipe']}`: {st['train_subset']} training images, {st['pretrain_epochs']} dense epochs, "
            f"`{a['method']}` to {st['target_flops']:.0%} FLOPs drop over {st['epochs']} epochs (seed {st['seed']}); "
            f"measured drop {a['flops_drop']:.2%}.", "",
            "| file | test top-1 (ORT CPU) |", "|---|---:|",
            f"| dense fp32 | {a['dense_onnx_acc']:.2%} |",
            f"| pruned fp32 | {a['pruned_onnx_acc']:.2%} |",
            f"| pruned INT8 | {a['int8_acc']:.2%} |", "",
            f"Pruned INT8 − pruned fp32: {a['int8_minus_pruned_pt']:+.2f} pt "
            f"({'within' if a['int8_within_tolerance'] else 'outside'} ±{INT8_TOLERANCE_PT} pt).",
        ]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(ap)
    ap.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "demo.yaml",
                    help="The recipe of the accuracy part (prune section: a Fashion-MNIST model).")  # fmt: skip
    ap.add_argument("--no-accuracy", action="store_true", help="Only the latency part.")
    ap.add_argument("--no-latency", action="store_true", help="Only the accuracy part.")
    ap.add_argument("--out", default="deploy", help="Result name under --results.")
    ap.add_argument("--results", type=Path, default=RESULTS, help="Where the results go (benchmarks/results).")
    args = ap.parse_args(argv)
    doc: dict[str, Any] = {"command": "python -m benchmarks.suites.deploy " + " ".join(argv or sys.argv[1:]),
                           "cpu_kind": cpu_kind()}  # fmt: skip

    def write(part: dict[str, Any]) -> None:
        doc.update(part)
        args.results.mkdir(parents=True, exist_ok=True)
        write_json(args.results / f"{args.out}.json", doc)
        write_text(args.results / f"{args.out}.md", _markdown(doc))

    if not args.no_latency:
        timed(args.models.split(","), args, write)
    if not args.no_accuracy:
        write({"accuracy": accuracy(args.recipe.resolve())})
    print(_markdown(doc))


if __name__ == "__main__":
    main()
