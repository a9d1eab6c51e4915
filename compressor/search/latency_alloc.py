"""Latency-aware allocation (``--allocation latency``): prune harder where a removed MAC saves more time.

A uniform per-group ratio treats every MAC alike, but on a real runtime they are not: a 7x7-spatial
conv at batch 1 costs more per MAC than a 56x56 one, and memory-bound layers next to a group (pooling,
the stem) save time that the MACs count does not see. So, measured rather than modelled: each group in
turn is pruned alone by ``probe`` (lowest-L2 channels), every such variant is materialized, exported and
timed against the dense model in ONE interleaved ONNX Runtime run, and

    w_g = (dense p50 - variant_g p50) / (dense MACs - variant_g MACs)      (ms saved per MAC removed)

normalised to mean 1 and raised to ``power`` (default 2) becomes the group's weight in the budget solver
(``ratio_g = c * w_g``, see ``budget.solve_counts``). A group whose pruning saved no measurable time
gets the floor weight.
Cost: one export per group plus one bench run (seconds for a ResNet-18, minutes for a ResNet-50).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressor.budget import Budget, masks_from_counts
from compressor.config import DEFAULT_PRUNE as _P
from compressor.errors import BadInput
from compressor.graph import PruningGraph, tp_importances

MIN_WEIGHT = 0.25  # floor (x mean) for groups whose probe saved nothing measurable


def _export(model: nn.Module, input_shape: tuple[int, ...], path: Path, batch: int) -> str:
    from exporters.onnx import export_onnx

    export_onnx(model.eval(), input_shape, path, dynamic_batch=False, simplify=True, verify_batches=(batch,),
                exporter="legacy")  # fmt: skip
    return str(path)


def probe_masks(graph: PruningGraph, gid: int, probe: float, max_ratio: float) -> dict | None:
    """Masks pruning only group ``gid`` by about ``probe`` (its lowest-L2 channels); None if it cannot move."""
    g = next(g for g in graph.groups if g.id == gid)
    allowed = [k for k in graph.allowed_keep(gid, max_ratio) if k < g.size]
    if not allowed:
        return None
    keep = min(allowed, key=lambda k: abs(k - g.size * (1 - probe)))
    scores = {gid: graph.tp_importance(tp_importances()["l2"](), gid)}
    masks = graph.full_masks()
    masks.update(masks_from_counts(scores, {gid: keep}))
    return graph.legalize(masks)


def latency_weights(graph: PruningGraph, budget: Budget, model: nn.Module, input_shape: tuple[int, ...], *,
                    provider: str = "cpu", batch: int = 1, threads: int | None = None, probe: float = 0.5,
                    max_ratio: float = _P.max_layer_ratio, iters: int = 40, power: float = 2.0,
                    log: Callable[[str], None] = print) -> dict[str, Any]:  # fmt: skip
    """Per-group weights from measured latency savings (see the module docstring) and the table behind them.

    ``power`` sharpens them (weight ** power, renormalised): 1 is proportional to the ms saved per MAC.
    """
    from benchmarks.latency import bench

    dense_macs = budget.count(graph.full_masks())
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        files = {"dense": _export(model, input_shape, Path(tmp) / "dense.onnx", batch)}
        saved_macs = {}
        for g in graph.groups:
            masks = probe_masks(graph, g.id, probe, max_ratio)
            if masks is None:
                continue
            slim, _ = graph.materialize(masks, model)
            files[f"g{g.id}"] = _export(slim, input_shape, Path(tmp) / f"g{g.id}.onnx", batch)
            saved_macs[g.id] = dense_macs - budget.count(masks)
        log(f"[allocation] timing the dense model and {len(saved_macs)} one-group probes on {provider}")
        result = bench(files, baseline="dense", providers=[provider], batches=[batch], threads=threads, warmup=5,
                       iters=iters)  # fmt: skip
    stats = result["results"][0]["models"]
    dense_ms = stats["dense"]["p50_ms"]
    per_mac = {gid: max(dense_ms - stats[f"g{gid}"]["p50_ms"], 0.0) / max(m, 1.0) for gid, m in saved_macs.items()}
    mean = sum(per_mac.values()) / len(per_mac) if per_mac else 0.0
    weights = {g.id: 1.0 for g in graph.groups}
    if mean > 0:
        sharp = {gid: max(v / mean, MIN_WEIGHT) ** power for gid, v in per_mac.items()}
        norm = sum(sharp.values()) / len(sharp)
        weights.update({gid: v / norm for gid, v in sharp.items()})
    table = [{"group": gid, "root": next(g.root_name for g in graph.groups if g.id == gid),
              "saved_macs": saved_macs[gid], "saved_ms": dense_ms - stats[f"g{gid}"]["p50_ms"],
              "weight": weights[gid]} for gid in saved_macs]  # fmt: skip
    return {"weights": weights, "dense_ms": dense_ms, "probe": probe, "power": power, "provider": provider,
            "batch": batch, "threads": threads, "table": table}  # fmt: skip


ALLOCATION_FILE = "allocation.json"


def allocation_for_run(cfg: Any, out: Path, graph: PruningGraph, budget: Budget, model: nn.Module,
                       input_shape: tuple[int, ...], log: Callable[[str], None]) -> dict[str, Any] | None:  # fmt: skip
    """The run's latency weights (None for ``uniform``): reused from ``out/allocation.json`` on --resume."""
    if cfg.allocation != "latency":
        return None
    path = out / ALLOCATION_FILE
    if cfg.resume and path.is_file():
        try:
            saved = json.loads(path.read_text())
            saved["weights"] = {int(k): float(v) for k, v in saved["weights"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise BadInput(f"{path} is unreadable; start the run again (without --resume)") from None
        return saved
    found = latency_weights(graph, budget, model, input_shape, provider=cfg.latency_provider,
                            batch=cfg.latency_batch, threads=cfg.latency_threads,
                            max_ratio=cfg.max_layer_ratio, power=cfg.allocation_power, log=log)  # fmt: skip
    top = sorted(found["table"], key=lambda r: -r["weight"])[:3]
    log("[allocation] heaviest weights: " + ", ".join(f"{r['root']} {r['weight']:.2f}" for r in top))
    return found
