"""The output side of ``compress bench``: Markdown and CSV tables, a latency-distribution plot, and gates.

Everything here reads a :func:`benchmarks.latency.bench` result (schema 2; schema-1 results, which
have no ``io`` key per row and keep the environment at the top level, are read too) and nothing is
measured. Gates return lists of one-line failure messages (empty = pass); the CLI decides how to
report them and raises ``GateFailed`` (exit code 1) when any is non-empty, see :data:`EXIT_CODES`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.backends import is_gpu
from benchmarks.latency import COV_WARN
from compressor.errors import BadInput, GateFailed, one_line

SCHEMAS = (1, 2)
KIND = "compress.bench"
#: Providers whose rows default to device-resident IO in schema-1 results (which have no "io" key).
#: Relative slack on gate thresholds, so a value equal to the threshold passes despite float rounding.
REL_TOL = 1e-9

EXIT_CODES = {
    0: "ok: every requested gate passed",
    1: "a gate failed (minimum speedup, maximum p50, regression against a previous result) or a requested provider "
    "is unavailable",
    2: "bad input: unreadable model or previous result, bad option value, gate without a baseline",
}
#: The exit codes as text, for a command's help epilog.
EXIT_CODES_HELP = "Exit codes: " + "; ".join(f"{code} = {text}" for code, text in EXIT_CODES.items()) + "."

CSV_FIELDS = [
    "provider", "io", "batch", "model", "is_baseline", "n", "rounds",
    "p50_ms", "p90_ms", "p95_ms", "p99_ms", "mean_ms", "std_ms", "min_ms", "max_ms", "cov", "throughput",
    "speedup_p50", "speedup_mean", "setup_s", "warmup_n", "warmup_first_ms", "warmup_mean_ms", "providers_used",
]  # fmt: skip

_STAT_FIELDS = ("n", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "mean_ms", "std_ms", "min_ms", "max_ms", "cov",
                "throughput", "setup_s")  # fmt: skip
_UNKNOWN = object()  # an environment field a (schema-1) result does not record


# --------------------------------------------------------------------------------------------- helpers


def _rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    return list(result.get("results") or [])


def row_io(row: dict[str, Any]) -> str:
    """The row's IO mode; schema-1 rows have none: "host" on CPU backends, "device" on GPU providers."""
    return str(row.get("io") or ("device" if is_gpu(str(row.get("provider"))) else "host"))


def _where(row: dict[str, Any]) -> str:
    return f"{row.get('provider')}/{row_io(row)}/batch {row.get('batch')}"


def _labels(row: dict[str, Any], baseline: str | None) -> list[str]:
    """The row's model labels, baseline first."""
    labels = list(row.get("models") or {})
    if baseline in labels:
        labels.remove(baseline)
        labels.insert(0, baseline)
    return labels


def iter_rows(result: dict[str, Any]) -> Iterator[tuple[dict[str, Any], str]]:
    """(row, label) pairs in report order: results order, baseline first within each row."""
    for row in _rows(result):
        for label in _labels(row, result.get("baseline")):
            yield row, label


def _num(value: Any) -> float | None:
    """``value`` as a float, or None when it is missing or not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _fmt(value: Any, spec: str = ".3f") -> str:
    number = _num(value)
    return "–" if number is None else format(number, spec)


def _settings(result: dict[str, Any]) -> dict[str, Any]:
    """Settings of a schema-2 result; schema 1 kept them at the top level."""
    return result.get("settings") or result


def _cov_warn(result: dict[str, Any]) -> float:
    return _num(_settings(result).get("cov_warn")) or COV_WARN  # results without settings.cov_warn


def _speedup_text(label: str, row: dict[str, Any], baseline: str | None) -> str:
    if label == baseline:
        return "1.00× (baseline)"
    sp = (row.get("speedup") or {}).get(label)
    if not sp or _num(sp.get("p50")) is None:
        return "–"
    return f"{sp['p50']:.2f}× (mean {_fmt(sp.get('mean'), '.2f')}×)"


def md_cell(text: Any) -> str:
    """Text safe inside a Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


# --------------------------------------------------------------------------------------------- environment


def _environment(result: dict[str, Any]) -> dict[str, Any]:
    """CPU model, GPU name, library versions and threads of a result (``_UNKNOWN`` where not recorded)."""
    if "env" in result:
        env = result.get("env") or {}
        cpu = env.get("cpu") or {}
        gpu = env.get("gpu")
        return {
            "CPU": cpu.get("model_name") or cpu.get("processor"),
            "usable CPUs": cpu.get("usable_cpus", cpu.get("cpu_count")),
            "GPU": gpu.get("name") if isinstance(gpu, dict) else None,
            "onnxruntime": env.get("onnxruntime"),
            "torch": env.get("torch"),
            "threads": _settings(result).get("threads"),
        }
    cpu = result.get("cpu") or {}  # schema 1
    return {
        "CPU": cpu.get("model_name") or cpu.get("processor"),
        "usable CPUs": cpu.get("usable_cpus", cpu.get("cpu_count")),
        "GPU": _UNKNOWN,
        "onnxruntime": result.get("onnxruntime"),
        "torch": _UNKNOWN,
        "threads": result.get("threads"),
    }


def environment_notes(result: dict[str, Any], previous: dict[str, Any]) -> list[str]:
    """One note per environment field (CPU, GPU, versions, threads) that differs from ``previous``."""
    now, before = _environment(result), _environment(previous)
    notes = []
    for key in ("CPU", "usable CPUs", "GPU", "onnxruntime", "torch", "threads"):
        a, b = before[key], now[key]
        if a is _UNKNOWN or b is _UNKNOWN or a == b:
            continue
        notes.append(f"environment differs: {key} was {a or 'none'}, now {b or 'none'}")
    return notes


# --------------------------------------------------------------------------------------------- markdown


def _header(result: dict[str, Any]) -> str:
    env, settings = _environment(result), _settings(result)
    libs = [f"ONNX Runtime {env['onnxruntime']}" if env["onnxruntime"] else None]
    libs.append(f"torch {env['torch']}" if env["torch"] not in (None, _UNKNOWN) else None)
    where = f"{env['CPU'] or 'unknown CPU'} ({env['usable CPUs'] or '?'} usable CPUs)"
    gpu = (result.get("env") or {}).get("gpu")
    if isinstance(gpu, dict) and gpu.get("name"):
        extra = ", ".join(f"{name} {gpu[k]}" for k, name in (("driver", "driver"), ("cuda", "CUDA")) if gpu.get(k))
        where += f", GPU {gpu['name']}" + (f" ({extra})" if extra else "")
    threads = f"threads={settings.get('threads') or 'default'}"
    if settings.get("inter_threads"):
        threads += f", inter-op threads={settings['inter_threads']}"
    if settings.get("duration"):
        stop = f"{settings['duration']:g} s per setting"
        stop += f" (≥ {settings['min_iters']} rounds)" if settings.get("min_iters") else ""
    else:
        stop = f"{settings.get('iters')} rounds"
    trt = ", TensorRT fp16" if settings.get("trt_fp16") and "tensorrt" in (settings.get("providers") or []) else ""
    lib_text = ", ".join(x for x in libs if x) or "compress bench"
    return f"{lib_text} on {where}; {threads}, warm-up {settings.get('warmup')}, {stop}{trt}, interleaved."


def _markdown_row(row: dict[str, Any], label: str, baseline: str | None, cov_warn: float) -> str:
    st = row["models"][label]
    warm = st.get("warmup") or {}
    cov = _num(st.get("cov"))
    cov_text = "–" if cov is None else f"{cov:.1%}" + (" ⚠" if cov > cov_warn else "")
    cells = [
        row.get("provider"), row_io(row), row.get("batch"), md_cell(label),
        _fmt(st.get("p50_ms")), _fmt(st.get("p90_ms")), _fmt(st.get("p95_ms")), _fmt(st.get("p99_ms")),
        f"{_fmt(st.get('mean_ms'))} ± {_fmt(st.get('std_ms'))}", _fmt(st.get("min_ms")), cov_text,
        _fmt(st.get("throughput"), ".1f"), _fmt(warm.get("first_ms")), _fmt(st.get("setup_s"), ".2f"),
        _speedup_text(label, row, baseline),
    ]  # fmt: skip
    return "| " + " | ".join(str(c) for c in cells) + " |"


def compared_labels(result: dict[str, Any]) -> list[str]:
    """Every model label of a result but the baseline's, in the order the models were given."""
    labels = dict.fromkeys(label for row in _rows(result) for label in row.get("models") or {})
    return [label for label in labels if label != result.get("baseline")]


def speedup_table(result: dict[str, Any]) -> list[str]:
    """With a baseline and several models: one column per model, its p50 speedup in each setting (else none)."""
    baseline, labels = result.get("baseline"), compared_labels(result)
    if baseline is None or len(labels) < 2:
        return []
    lines = ["", f"p50 speedup over {md_cell(baseline)}:", "",
             "| provider | io | batch | " + " | ".join(md_cell(label) for label in labels) + " |",
             "|---|---|---:|" + "---:|" * len(labels)]  # fmt: skip
    for row in _rows(result):
        cells = [_fmt(((row.get("speedup") or {}).get(label) or {}).get("p50"), ".2f") for label in labels]
        cells = [c if c == "–" else f"{c}×" for c in cells]
        lines.append(f"| {row.get('provider')} | {row_io(row)} | {row.get('batch')} | " + " | ".join(cells) + " |")
    return lines


def render_markdown(result: dict[str, Any]) -> str:
    """A Markdown report of a bench result: header line, one table row per (provider, io, batch, model), with
    several models a table of their speedups (a column each), notes."""
    baseline = result.get("baseline")
    cov_warn = _cov_warn(result)
    lines = [
        _header(result),
        "",
        "| provider | io | batch | model | p50 ms | p90 ms | p95 ms | p99 ms | mean ± std ms | min ms | CoV | img/s "
        "| warm-up 1st ms | setup s | speedup |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    flagged = False
    for row, label in iter_rows(result):
        lines.append(_markdown_row(row, label, baseline, cov_warn))
        flagged |= (_num(row["models"][label].get("cov")) or 0.0) > cov_warn
    lines += speedup_table(result)
    notes = []
    if baseline is not None:
        notes.append("Speedup = baseline p50 / model p50 (mean ratio in brackets).")
    if flagged:
        notes.append(f"⚠ = CoV (std / mean) above {cov_warn:.0%}: unstable timings.")
    if any(row_io(row) == "device" for row in _rows(result)):
        notes.append("io: device = inputs and outputs bound on the GPU (copies not timed); host = copies timed.")
    if notes:
        lines += ["", *notes]
    warnings = [" ".join(str(w).split()) for w in result.get("warnings") or []]
    if warnings:
        lines += ["", "Warnings:", "", *(f"- {w}" for w in warnings)]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- csv


def _csv_record(row: dict[str, Any], label: str, baseline: str | None) -> dict[str, Any]:
    st = row["models"][label]
    warm = st.get("warmup") or {}
    sp = {"p50": 1.0, "mean": 1.0} if label == baseline else (row.get("speedup") or {}).get(label) or {}
    record = {k: st.get(k) for k in _STAT_FIELDS}
    record.update(
        provider=row.get("provider"),
        io=row_io(row),
        batch=row.get("batch"),
        model=label,
        is_baseline=label == baseline,
        rounds=row.get("rounds"),
        speedup_p50=sp.get("p50"),
        speedup_mean=sp.get("mean"),
        warmup_n=warm.get("n"),
        warmup_first_ms=warm.get("first_ms"),
        warmup_mean_ms=warm.get("mean_ms"),
        providers_used="+".join((row.get("providers_used") or {}).get(label) or []),
    )
    return {k: "" if record.get(k) is None else record[k] for k in CSV_FIELDS}


def render_csv(result: dict[str, Any]) -> str:
    """CSV text (header row, then one row per (provider, io, batch, model)); missing values are empty."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row, label in iter_rows(result):
        writer.writerow(_csv_record(row, label, result.get("baseline")))
    return buf.getvalue()


# --------------------------------------------------------------------------------------------- plot


def _plot_title(row: dict[str, Any], baseline: str | None) -> str:
    speedups = [
        f"{label} {sp['p50']:.2f}×"
        for label, sp in (row.get("speedup") or {}).items()
        if label != baseline and _num((sp or {}).get("p50")) is not None
    ]
    if speedups:
        second = f"p50 speedup vs {baseline}: " + ", ".join(speedups)
    else:
        second = "no baseline" if baseline not in (row.get("models") or {}) else "no speedup measured"
    return f"{row.get('provider')} · {row_io(row)} · batch {row.get('batch')}\n{second}"


def _ms_text(value: float) -> str:
    return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"


def _plot_row(ax: Any, row: dict[str, Any], baseline: str | None) -> None:
    import numpy as np

    labels = _labels(row, baseline)
    data, positions = [], []
    for pos, label in enumerate(labels, start=1):
        samples = np.asarray((row["models"][label].get("samples_ms") or []), dtype=np.float64)
        samples = samples[np.isfinite(samples)]
        if samples.size:
            data.append(samples)
            positions.append(pos)
    if data:
        ax.boxplot(data, positions=positions, whis=(1, 99), showfliers=False, widths=0.5)
    for pos, label in enumerate(labels, start=1):
        st = row["models"][label]
        p50 = _num(st.get("p50_ms"))
        if p50 is None:
            ax.text(pos, 0.5, "not measured", transform=ax.get_xaxis_transform(), ha="center", fontsize=7)
            continue
        note = "" if pos in positions else " (no samples)"
        if note:  # e.g. a schema-1 result: only its p50 can be shown
            ax.plot([pos], [p50], marker="_", markersize=24, color="C1")
        ax.annotate(f"p50 {_ms_text(p50)} ms{note}", xy=(pos + 0.27, p50), fontsize=7, va="center")
    ax.set_xticks(range(1, len(labels) + 1), [f"{x}\n(baseline)" if x == baseline else x for x in labels])
    ax.set_xlim(0.5, len(labels) + 1.1)  # room for the last p50 note
    ax.set_ylabel("latency per run (ms)")
    ax.set_title(_plot_title(row, baseline), fontsize=9)
    ax.grid(axis="y", alpha=0.3)


def plot_distributions(result: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """PNG of the latency distributions: one subplot per (provider, io, batch), a box per model; atomic write."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    from compressor.runtime.atomic import atomic_path

    rows = _rows(result)
    ncols = min(max(len(rows), 1), 3)
    nrows = math.ceil(max(len(rows), 1) / ncols)
    fig = Figure(figsize=(max(4.4 * ncols, 6.0), 3.8 * nrows), dpi=100, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, row in zip(axes, rows, strict=False):  # more axes than rows in a partial last line
        _plot_row(ax, row, result.get("baseline"))
    for ax in axes[len(rows) :]:
        ax.set_axis_off()
    if not rows:
        axes[0].text(0.5, 0.5, "no results", ha="center", va="center")
    fig.suptitle("latency per run (box: quartiles, whiskers: p1–p99)", fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


# --------------------------------------------------------------------------------------------- gates


def _require_label(result: dict[str, Any], label: str) -> None:
    known = {x for row in _rows(result) for x in row.get("models") or {}}
    if label not in known:
        raise BadInput(f"no model labelled {label!r} in the bench result (have: {', '.join(sorted(known)) or 'none'})")


def speedup_failures(result: dict[str, Any], min_speedup: float | None, label: str) -> list[str]:
    """Rows where ``label``'s p50 speedup over the baseline is below ``min_speedup`` (equal passes).

    ``None`` disables the gate. Raises ``BadInput`` when the result has no baseline or no ``label``.
    """
    if min_speedup is None:
        return []
    baseline = result.get("baseline")
    if baseline is None:
        raise BadInput("a speedup gate needs a baseline model; the bench result has none")
    if label == baseline:
        raise BadInput(f"the speedup gate compares a model with the baseline, not the baseline {label!r} itself")
    _require_label(result, label)
    threshold = float(min_speedup)
    failures = []
    for row in _rows(result):
        value = _num(((row.get("speedup") or {}).get(label) or {}).get("p50"))
        if value is None:
            failures.append(f"{_where(row)}: no p50 speedup of {label} over {baseline} measured")
        elif not value >= threshold * (1 - REL_TOL):  # NaN fails
            failures.append(f"{_where(row)}: {label} p50 speedup {value:.3f}× is below {threshold:g}×")
    return failures


def p50_failures(result: dict[str, Any], max_p50_ms: float | None, label: str) -> list[str]:
    """Rows where ``label``'s p50 latency exceeds ``max_p50_ms`` (equal passes); ``None`` disables the gate."""
    if max_p50_ms is None:
        return []
    _require_label(result, label)
    limit = float(max_p50_ms)
    failures = []
    for row in _rows(result):
        value = _num(((row.get("models") or {}).get(label) or {}).get("p50_ms"))
        if value is None:
            failures.append(f"{_where(row)}: {label} has no p50 measured")
        elif not value <= limit * (1 + REL_TOL):
            failures.append(f"{_where(row)}: {label} p50 {value:.3f} ms is above {limit:g} ms")
    return failures


def _p50_index(result: dict[str, Any]) -> dict[tuple[str, str, int, str], float]:
    index = {}
    for row in _rows(result):
        for label, st in (row.get("models") or {}).items():
            value = _num((st or {}).get("p50_ms"))
            if value is not None:
                index[(str(row.get("provider")), row_io(row), int(row.get("batch") or 0), str(label))] = value
    return index


def _key_text(key: tuple[str, str, int, str]) -> str:
    return f"{key[0]}/{key[1]}/batch {key[2]} {key[3]}"


def regression_failures(
    result: dict[str, Any], previous: dict[str, Any], max_regression_pct: float
) -> tuple[list[str], list[str]]:
    """Compare p50s with a previous result (schema 1 or 2) by (provider, io, batch, model label).

    A regression is current p50 > previous p50 × (1 + pct/100) (equal passes). Returns
    ``(failures, notes)``: notes name rows only one side has and environment differences.
    """
    pct = float(max_regression_pct)
    if not math.isfinite(pct) or pct < 0:
        raise BadInput(f"the allowed regression must be a percentage >= 0, got {max_regression_pct}")
    now, before = _p50_index(result), _p50_index(previous)
    failures, notes = [], []
    for key, value in now.items():
        if key not in before:
            notes.append(f"{_key_text(key)}: not in the previous result, not compared")
            continue
        old = before[key]
        if value > old * (1 + pct / 100) * (1 + REL_TOL):
            change = (value / old - 1) * 100 if old > 0 else math.inf
            failures.append(
                f"{_key_text(key)}: p50 {value:.3f} ms vs {old:.3f} ms before (+{change:.1f}%, allowed +{pct:g}%)"
            )
    notes += [f"{_key_text(key)}: in the previous result, not measured now" for key in before if key not in now]
    if now and before and not set(now) & set(before):
        notes.append("nothing in common with the previous result: no row was compared")
    return failures, notes + environment_notes(result, previous)


def raise_on_failures(failures: list[str], models: list[str] | tuple[str, ...] = ()) -> None:
    """``GateFailed`` (exit code 1) naming the first failure and how many there are, if any; with ``models``
    (the labels that failed a gate) naming them all when more than one did."""
    if failures:
        which = f"; failed: {', '.join(models)}" if len(models) > 1 else ""
        more = f" (and {len(failures) - 1} more{which})" if len(failures) > 1 else ""
        raise GateFailed(f"{failures[0]}{more}")


# --------------------------------------------------------------------------------------------- previous


def _row_problem(i: int, row: Any) -> str | None:
    if not isinstance(row, dict):
        return f"results[{i}] is not an object"
    if not isinstance(row.get("provider"), str) or _num(row.get("batch")) is None:
        return f"results[{i}] has no provider or batch"
    models = row.get("models")
    if not isinstance(models, dict) or not models:
        return f"results[{i}] has no models"
    for label, st in models.items():
        if not isinstance(st, dict) or _num(st.get("p50_ms")) is None:
            return f"results[{i}] model {label!r} has no p50_ms"
    return None


def bench_problem(data: Any) -> str | None:
    """Why ``data`` is not a bench result this module can read, or None."""
    if not isinstance(data, dict):
        return "the top level is not a JSON object"
    schema = data.get("schema")
    if schema not in SCHEMAS:
        newer = isinstance(schema, int) and not isinstance(schema, bool) and schema > max(SCHEMAS)
        return f"schema {schema} is newer than this version reads" if newer else f"unknown schema {schema!r}"
    if schema >= 2 and data.get("kind") != KIND:
        return f"kind is {data.get('kind')!r}, not {KIND!r}"
    if not isinstance(data.get("results"), list):
        return "no results list"
    problems = (_row_problem(i, row) for i, row in enumerate(data["results"]))
    return next((p for p in problems if p), None)


def load_previous(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a previous bench result JSON; ``BadInput`` (one line) when missing, unreadable or not a bench result."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInput(f"previous bench result {p} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"cannot read previous bench result {p}: {one_line(exc, typed=True)}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise BadInput(f"previous bench result {p} is not JSON: {one_line(exc)}") from None
    problem = bench_problem(data)
    if problem:
        raise BadInput(f"{p} is not a compress bench result: {problem}")
    return data
