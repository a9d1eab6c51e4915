"""``compress run RECIPE.yaml``: prune -> export (pruned + dense) -> verify -> [quantize] -> bench -> one summary.

Every stage runs and writes its outputs before any gate (target, accuracy, verification, speedup) fails the
run with exit 1, so CI always has the summary and the files to look at.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from benchmarks.bench_output import load_previous, md_cell, render_markdown
from compressor.config import ExportOptions, QuantizeOptions, defaults
from compressor.errors import BadInput, GateFailed
from compressor.jobs.bench import BENCH_DEFAULTS, bench_gate, bench_models
from compressor.jobs.config import PruneConfig
from compressor.jobs.export import export
from compressor.jobs.prune import prune
from compressor.jobs.quantize import quantize
from compressor.runtime import lock
from compressor.runtime.atomic import check_writable_dir, write_json, write_text
from compressor.runtime.ci import append_step_summary
from compressor.runtime.signals import interruptible

SECTIONS = ("prune", "export", "quantize", "bench")
EXPORT_KEYS = tuple(defaults(ExportOptions))  # a recipe's export: section takes exactly these
QUANTIZE_KEYS = tuple(defaults(QuantizeOptions))  # and its quantize: section (present: INT8 too)


def _section(recipe: dict[str, Any], name: str, allowed: set[str]) -> dict[str, Any]:
    section = recipe.get(name) or {}
    if not isinstance(section, dict):
        raise BadInput(f"recipe section {name!r} must be a mapping")
    norm = {str(k).replace("-", "_"): v for k, v in section.items()}
    unknown = sorted(set(norm) - allowed)
    if unknown:
        raise BadInput(f"unknown key(s) in recipe section {name!r}: {', '.join(unknown)}")
    return norm


def run_recipe(recipe: dict[str, Any], *, out: str | None = None, quiet_json: bool = False) -> dict[str, Any]:
    """Run every stage of a recipe; raise GateFailed (exit 1) if a gate fails after writing the summary."""
    unknown = sorted(set(recipe) - set(SECTIONS))
    if unknown:
        raise BadInput(f"unknown recipe section(s): {', '.join(unknown)} (expected {', '.join(SECTIONS)})")
    fields = {f.name for f in dataclasses.fields(PruneConfig)}
    p = _section(recipe, "prune", fields)
    if out:
        p["out"] = out
    for key in ("model", "out"):
        if key not in p:
            raise BadInput(f"recipe section 'prune' needs {key!r}")
    e = _section(recipe, "export", set(EXPORT_KEYS))
    q = _quantize_section(recipe)
    b = _section(recipe, "bench", set(BENCH_DEFAULTS))
    config = PruneConfig(**p)  # type-checks the prune section
    bench_opts = {**BENCH_DEFAULTS, **b}
    _check_export_bench(e, bench_opts)  # fail before any work, not after minutes of training

    run_dir = Path(p["out"])
    if run_dir.exists() and not run_dir.is_dir():
        raise BadInput(f"--out {run_dir} exists and is not a directory")
    check_writable_dir(run_dir, "--out")
    with lock.run_directory(run_dir):  # the whole recipe: no neighbour writes the run directory meanwhile
        return _run_locked(config, run_dir, e, q, bench_opts, quiet_json)


def _run_locked(config: PruneConfig, run_dir: Path, e: dict[str, Any], q: dict[str, Any] | None,
                bench_opts: dict[str, Any], quiet_json: bool) -> dict[str, Any]:  # fmt: skip
    report, gates = _pruned(config, run_dir)
    # SIGINT/SIGTERM from here on: Interrupted at once (exit 130/143); the finished stages' files stay, the
    # interrupted stage leaves nothing (every file goes through a temp file and a rename)
    with interruptible("export", note=f"{run_dir} keeps the finished stages' files, nothing half-written") as at:
        write_text(run_dir / "recipe.yaml", yaml.safe_dump({"prune": dict(vars(config)), "export": e,
                                                             **({"quantize": q} if q is not None else {}),
                                                             "bench": bench_opts}, sort_keys=False))  # fmt: skip
        pruned = export(run_dir, trust_code=config.trust_code, **e)
        at.during = "export of the dense model"
        dense = export(run_dir, dense=True, trust_code=config.trust_code, **{**e, "min_accuracy": None,
                                                                              "max_accuracy_drop": None})  # fmt: skip
        at.during = "quantize"
        int8 = quantize(run_dir, **q) if q is not None else None
        gates += pruned["accuracy_gates"] + (int8["accuracy_gates"] if int8 else [])
        files = {"pruned": pruned["path"], **({"pruned-int8": int8["path"]} if int8 else {}), "dense": dense["path"]}
        # the gates judge every file the run ships: pruned, and pruned-int8 when quantized
        at.during = "bench"
        result = bench_models(files, "dense", trust_code=config.trust_code, **bench_opts)
        at.during = "writing the summary"
        write_json(run_dir / "bench.json", result)
        bench_table = render_markdown(result)
        write_text(run_dir / "bench.md", bench_table)
        summary = _summary(run_dir, report, pruned, dense, int8, result, gates)
        write_json(run_dir / "summary.json", summary)
        append_step_summary(summary_markdown(summary) + "\n" + bench_table)  # CI: before any gate fails
        if not quiet_json:
            print_summary(summary)
    if gates:
        raise GateFailed("; ".join(gates))
    if not summary["export_verified"]:
        raise GateFailed(f"ONNX export differs from PyTorch (max abs diff {summary['export_max_abs_diff']:.2e})")
    bench_gate(result)
    return summary


def _quantize_section(recipe: dict[str, Any]) -> dict[str, Any] | None:
    """A recipe's ``quantize:`` section (``true`` or ``{}``: the defaults), None when there is none."""
    if "quantize" not in recipe or recipe["quantize"] is False:
        return None
    q = {} if recipe["quantize"] in (None, True) else _section(recipe, "quantize", set(QUANTIZE_KEYS))
    try:
        QuantizeOptions(**q)
    except BadInput as exc:
        raise BadInput(f"recipe section 'quantize': {exc}") from None
    return q


def _pruned(config: PruneConfig, run_dir: Path) -> tuple[dict[str, Any], list[str]]:
    """Prune; a failed prune gate (target, accuracy) is kept for the end, after every later output exists."""
    try:
        return prune(config), []
    except GateFailed as failed:
        report = json.loads((run_dir / "report.json").read_text())
        return report, [str(failed)]


def _summary(run_dir: Path, report: dict[str, Any], pruned: dict[str, Any], dense: dict[str, Any],
             int8: dict[str, Any] | None, result: dict[str, Any], gates: list[str]) -> dict[str, Any]:  # fmt: skip
    """``summary.json``: the run's figures, the files' measured accuracy and latency, the gates."""
    row = result["results"][0]

    def acc(r: dict[str, Any] | None) -> float | None:
        return ((r or {}).get("accuracy") or {}).get("acc")

    return {
        "run": str(run_dir),
        "model": report["model"]["spec"],
        "method": report["method"]["name"],
        "dense_acc": report["dense"]["acc"],
        "pruned_acc": report["pruned"]["acc"],
        "dense_onnx_acc": acc(dense),
        "pruned_onnx_acc": acc(pruned),
        **(
            {
                "int8_acc": acc(int8),
                "int8_p50_ms": row["models"]["pruned-int8"]["p50_ms"],
                "int8_speedup": row["speedup"]["pruned-int8"]["p50"],
            }
            if int8
            else {}
        ),  # fmt: skip
        "flops_drop": report["flops_drop"],
        "params_drop": report["params_drop"],
        "export_max_abs_diff": max(_diff(pruned), _diff(dense)),
        "export_verified": bool(pruned["verification"]["passed"] and dense["verification"]["passed"]),
        "export_precision": pruned["precision"],
        "provider": row["provider"],
        "batch": row["batch"],
        "dense_p50_ms": row["models"]["dense"]["p50_ms"],
        "pruned_p50_ms": row["models"]["pruned"]["p50_ms"],
        "speedup": row["speedup"]["pruned"]["p50"],
        "onnx": {"pruned": pruned["path"], "dense": dense["path"], **({"int8": int8["path"]} if int8 else {})},
        "accuracy_gates": gates,
        "bench_gates": result["gates"],
    }


def _diff(export_result: dict[str, Any]) -> float:
    """Max |ONNX - PyTorch|; no comparable output counts as an infinite difference."""
    value = export_result["verification"]["max_abs_diff"]
    return float("inf") if value is None else float(value)


def _check_export_bench(e: dict[str, Any], b: dict[str, Any]) -> None:
    from benchmarks.latency import check_options
    from exporters.onnx import check_options as check_export_options

    try:
        ExportOptions(**e)  # types, choices and the accuracy gates' ranges
        check_export_options(
            **{k: e[k] for k in ("opset", "exporter", "fp16", "rtol", "atol", "external_data") if k in e}
        )
    except BadInput as exc:
        raise BadInput(f"recipe section 'export': {exc}") from None
    try:
        batches = [int(v) for v in (b["batch"] if isinstance(b["batch"], list) else str(b["batch"]).split(","))]
    except ValueError:
        raise BadInput(f"bench batch must be integers, got {b['batch']!r}") from None
    check_options(
        b["provider"],
        batches,
        b["threads"],
        b["warmup"],
        b["iters"],
        b["duration"],
        b["min_iters"],
        b["io"],
        b["inter_threads"],
    )
    if b.get("compare"):
        load_previous(b["compare"])


def summary_rows(s: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(metric, dense, pruned, change) rows of a run's summary: the terminal table and the Markdown one."""
    rows = [
        ("test accuracy", f"{100 * s['dense_acc']:.2f}%", f"{100 * s['pruned_acc']:.2f}%",
         f"{100 * (s['pruned_acc'] - s['dense_acc']):+.2f} pt"),
        ("FLOPs drop", "", "", f"{100 * s['flops_drop']:.2f}%"),
        ("params drop", "", "", f"{100 * s['params_drop']:.2f}%"),
        ("max |ONNX - PyTorch|", "", "", f"{s['export_max_abs_diff']:.2e}"),
        (f"p50 latency ({s['provider']}, batch {s['batch']})", f"{s['dense_p50_ms']:.3f} ms",
         f"{s['pruned_p50_ms']:.3f} ms", f"{s['speedup']:.2f}x speedup"),
    ]  # fmt: skip
    if s.get("pruned_onnx_acc") is not None and s.get("dense_onnx_acc") is not None:
        rows.insert(1, ("test accuracy, ONNX file", f"{100 * s['dense_onnx_acc']:.2f}%",
                        f"{100 * s['pruned_onnx_acc']:.2f}%",
                        f"{100 * (s['pruned_onnx_acc'] - s['dense_onnx_acc']):+.2f} pt"))  # fmt: skip
    if "int8_acc" in s:
        int8_acc = "" if s["int8_acc"] is None else f"{100 * s['int8_acc']:.2f}%"
        rows += [
            (
                "INT8 file: test accuracy",
                "",
                int8_acc,
                "" if s["int8_acc"] is None else f"{100 * (s['int8_acc'] - s['dense_acc']):+.2f} pt vs dense",
            ),
            ("INT8 file: p50 latency", "", f"{s['int8_p50_ms']:.3f} ms", f"{s['int8_speedup']:.2f}x speedup"),
        ]
    return rows


def summary_title(s: dict[str, Any]) -> str:
    return f"compress run: {s['model']} · {s['method']} · {s['run']}"


def print_summary(s: dict[str, Any]) -> None:
    table = Table(title=summary_title(s))
    for name, justify in (("metric", "left"), ("dense", "right"), ("pruned", "right"), ("change", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in summary_rows(s):
        table.add_row(*row)
    Console(width=110).print(table)


def summary_markdown(s: dict[str, Any]) -> str:
    """The summary as a Markdown table (for ``$GITHUB_STEP_SUMMARY``)."""
    cells = [[md_cell(c) for c in row] for row in summary_rows(s)]
    lines = [f"### {summary_title(s)}", "", "| metric | dense | pruned | change |", "|---|---:|---:|---:|"]
    return "\n".join(lines + [f"| {' | '.join(r)} |" for r in cells]) + "\n"
