"""The schema-versioned run report (report.json) and its Markdown rendering."""

from __future__ import annotations

from typing import Any

SCHEMA_VERSION = 1


def build_report(**fields: Any) -> dict[str, Any]:
    """A report dict: ``schema_version`` first, then the given sections in order."""
    return {"schema_version": SCHEMA_VERSION, **fields}


def group_table(graph: Any, masks: dict[int, Any]) -> list[dict[str, Any]]:
    """One row per prunable channel group: its root layer, size and kept channel count."""
    return [
        {
            "group": g.id,
            "root": g.root_name,
            "channels": g.size,
            "kept": int(masks[g.id].sum()) if g.id in masks else g.size,
            "layers": g.layer_names,
        }
        for g in graph.groups
    ]


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _num(x: float | None, unit: float = 1e6, suffix: str = "M") -> str:
    return "-" if x is None else f"{x / unit:.3f}{suffix}"


def render_markdown(report: dict[str, Any]) -> str:
    """A human-readable summary of a prune report."""
    d, p = report["dense"], report["pruned"]
    lines = [
        f"# {report['model']['spec']} · {report['method']['name']} · {report['data']['spec']}",
        "",
        "| | dense | pruned | drop |",
        "|---|---|---|---|",
        f"| FLOPs (MACs) | {_num(d['flops'])} | {_num(p['flops'])} | {_pct(report['flops_drop'])} |",
        f"| params | {_num(d['params'])} | {_num(p['params'])} | {_pct(report['params_drop'])} |",
        f"| test accuracy | {_pct(d.get('acc'))} | {_pct(p.get('acc'))} | |",
        "",
        f"Target: {report['target']['metric']} drop {report['target']['value']} "
        f"({'met' if report['target']['met'] else 'NOT met'}).",
        *_weights_lines(report["model"]),
        *_distill_lines(report.get("distill")),
        *_latency_lines(report.get("latency")),
        "",
        "| group | root layer | channels | kept |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['group']} | `{r['root']}` | {r['channels']} | {r['kept']} |" for r in report["groups"]]
    if report.get("skipped"):
        lines += ["", "Left alone:", ""] + [f"- `{name}`: {why}" for name, why in report["skipped"]]
    return "\n".join(lines) + "\n"


def _weights_lines(model: dict[str, Any]) -> list[str]:
    """Where the starting weights came from (pretrained or --weights) and what loading them changed."""
    pre, lines = model.get("pretrained"), []
    if pre:
        lines.append(f"Started from the pretrained weights {pre['weights']} (`{pre['file']}`).")
    elif model.get("weights"):
        lines.append(f"Started from the weights `{model['weights']}`.")
    if model.get("reinitialized"):
        lines.append(f"Classifier re-initialized (--weights-head reinit): {', '.join(model['reinitialized'])}.")
    if model.get("adapted"):
        lines.append(f"Stem adapted to {model['in_channels']} input channels: {', '.join(model['adapted'])}.")
    return lines


def _distill_lines(distill: dict[str, Any] | None) -> list[str]:
    if not distill or not distill.get("enabled"):
        return []
    return [f"Distilled from the dense model (temperature {distill['temperature']}, alpha {distill['alpha']})."]


def _latency_lines(lat: dict[str, Any] | None) -> list[str]:
    """The "Latency target" section: the measured search curve and the final model's latency."""
    if not lat:
        return []
    threads = lat.get("threads") or "default"
    lines = [
        "",
        "## Latency target",
        "",
        f"Target {lat['target_ms']:.3f} ms ± {lat['tolerance']:.0%} (ONNX Runtime {lat['provider']}, batch "
        f"{lat['batch']}, threads {threads}, p50): the pruned model runs in {lat['final_ms']:.3f} ms "
        f"({'met' if lat['met'] else 'NOT met'}); dense {lat['dense_ms']:.3f} ms. Searched FLOPs drop "
        f"{lat['chosen_drop']:.4f} ({lat['searched_ms']:.3f} ms when searched"
        + ("; the searched structure is an L2 proxy of this method's)." if lat.get("proxy") else ")."),
        "",
        "| FLOPs drop | MACs | p50 ms |",
        "|---:|---:|---:|",
    ]
    for pt in lat["curve"]:
        macs = _num(pt["macs"]) if pt.get("macs") is not None else "dense"
        lines.append(f"| {pt['flops_drop']:.4f} | {macs} | {pt['latency_ms']:.3f} |")
    return lines


def _figure() -> tuple[Any, Any]:
    """A headless (Agg) matplotlib figure and axes of the report plots' size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(8, 4.5), dpi=100)


def _save_png(fig: Any, path: Any) -> None:
    """Write ``fig`` as PNG to ``path`` atomically and free it."""
    import matplotlib.pyplot as plt

    from compressor.runtime.atomic import atomic_path

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def plot_kept_ratios(log: list[dict[str, Any]], path: Any, title: str = "") -> None:
    """PNG of each group's kept-channel ratio over pruning steps (PSAP's per-step records), written atomically."""
    steps = [rec["step"] for rec in log]
    fig, ax = _figure()
    names = [g["name"] for g in log[0]["groups"]]
    for i, name in enumerate(names):
        ax.plot(steps, [1 - rec["groups"][i]["p"] for rec in log], marker=".", linewidth=1, label=name)
    ax.set_xlabel("pruning step")
    ax.set_ylabel("kept channel ratio")
    ax.set_ylim(0, 1.02)
    ax.set_title(title or "kept ratio per channel group")
    if len(names) <= 24:
        ax.legend(fontsize=6, ncol=2, loc="lower left")
    _save_png(fig, path)


def plot_threshold(log: list[dict[str, Any]], path: Any, title: str = "") -> None:
    """PNG of ASTER's threshold (per-update trace and epoch ends), the FLOPs drop and the pruned fraction of the
    scored channels per epoch, written atomically."""
    fig, ax = _figure()
    xs, ts = [], []
    for rec in log:  # the trace of epoch e spreads over (e-1, e]
        trace = rec.get("tau_trace") or []
        xs += [rec["epoch"] - 1 + (i + 1) / len(trace) for i in range(len(trace))]
        ts += trace
    ax.plot(xs, ts, linewidth=0.8, color="tab:blue", alpha=0.6, label="tau (per update)")
    ax.plot([r["epoch"] for r in log], [r["tau"] for r in log], "o-", color="tab:blue", label="tau (epoch end)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("threshold tau on BN |gamma|")
    drop = ax.twinx()
    drop.plot([r["epoch"] for r in log], [r["drop"] for r in log], "s--", color="tab:red", label="FLOPs drop")
    if all("pruned_fraction" in r for r in log):
        drop.plot([r["epoch"] for r in log], [r["pruned_fraction"] for r in log], "^:", color="tab:green",
                  label="pruned fraction of scored channels")  # fmt: skip
    drop.set_ylabel("drop / pruned fraction")
    drop.set_ylim(0, 1)
    last = log[-1]
    if last.get("freeze_epoch") is not None:
        ax.axvline(last["freeze_epoch"], color="gray", linestyle=":", label=f"frozen (epoch {last['freeze_epoch']})")
    if last.get("fallback"):
        fb = last["fallback"]
        ax.plot([fb["epoch"]], [fb["tau_set"]], "x", color="black", markersize=10, label="fallback tau")
    handles = ax.get_legend_handles_labels()
    more = drop.get_legend_handles_labels()
    ax.legend(handles[0] + more[0], handles[1] + more[1], fontsize=7, loc="upper left")
    ax.set_title(title or "ASTER threshold")
    _save_png(fig, path)
