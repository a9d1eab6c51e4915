"""``compress info``: a model's channel groups, FLOPs, params, what is left alone, and target feasibility."""

from __future__ import annotations

import sys
from typing import Any

import torch

from compressor.budget import Budget, reachable, solve_counts
from compressor.config import DEFAULT_INFO as _I
from compressor.config import DEFAULT_PRUNE as _P
from compressor.config import parse_patterns, parse_ratios
from compressor.errors import BadInput, GateFailed
from compressor.graph import PruningGraph, count_ops_and_params
from compressor.models import build_model, pretrained_record
from compressor.runtime.hardware import resolve_round_to

DATA_SHAPES = {
    "fashion-mnist": ((1, 28, 28), 10),
    "cifar10": ((3, 32, 32), 10),
    "cifar100": ((3, 32, 32), 100),
}


def _shape(data: str, input_shape: str | None, num_classes: int) -> tuple[tuple[int, int, int], int]:
    if input_shape:
        try:
            c, h, w = (int(v) for v in input_shape.lower().split("x"))
        except ValueError:
            raise BadInput(f"--input-shape must look like 3x224x224, got {input_shape!r}") from None
        from compressor.runtime.memory import check_fits, tensor_bytes

        check_fits(f"--input-shape {input_shape} (one float32 input)", tensor_bytes((c, h, w)))
        return (c, h, w), num_classes
    if data.startswith("synthetic:"):
        from compressor.data import parse_synthetic

        shape, classes, *_ = parse_synthetic(data.split(":", 1)[1], data)
        return tuple(shape), int(classes)
    if data not in DATA_SHAPES:
        raise BadInput(f"info knows the shapes of {', '.join(DATA_SHAPES)}; use --input-shape for {data!r}")
    return DATA_SHAPES[data]


def model_info(
    model: str,
    *,
    data: str = _I.data,
    input_shape: str | None = _I.input_shape,
    num_classes: int = _I.num_classes,
    round_to: int | str = _P.round_to,
    max_ratio: float = _P.max_layer_ratio,
    target_flops: float | None = _I.target_flops,
    trust_code: bool = False,
    ignore: Any = None,
    ignore_stem: bool = _P.ignore_stem,
    group_max_ratio: Any = None,
    weights_head: str = _P.weights_head,
) -> dict[str, Any]:
    """What ``compress info`` shows: the model's groups, FLOPs and params, every layer left alone and why, the
    reachable drop, and (with ``target_flops``) whether that drop can be reached. Builds nothing it keeps."""
    if not 0 < max_ratio < 1:
        raise BadInput(f"--max-layer-ratio must be strictly between 0 and 1, got {max_ratio}")
    round_to = resolve_round_to(round_to)[0]
    if round_to < 1:
        raise BadInput(f"--round-to must be >= 1 (1: no rounding) or auto, got {round_to}")
    shape, classes = _shape(data, input_shape, num_classes)
    net = build_model(model, num_classes=classes, in_channels=shape[0], trust_code=trust_code,
                      weights_head=weights_head).eval()  # fmt: skip
    record = pretrained_record(net)
    for line in record["messages"] if record else []:  # an adapted stem, a re-initialized classifier
        print(line, file=sys.stderr)
    graph = PruningGraph(net, torch.zeros(1, *shape), round_to=round_to, arch=model, ignore=parse_patterns(ignore),
                         ignore_stem=ignore_stem, group_max_ratio=parse_ratios(group_max_ratio))  # fmt: skip
    budget = Budget(graph)
    result = _describe(model, net, graph, budget, shape, classes, round_to, max_ratio)
    if record:
        result["pretrained"] = {k: v for k, v in record.items() if k not in ("messages", "categories")}
    if target_flops is not None:
        result["dry_run"] = _dry_run(graph, budget, target_flops, max_ratio)
    return result


def _describe(model: str, net: torch.nn.Module, graph: PruningGraph, budget: Budget, shape: tuple[int, ...],
              classes: int, round_to: int, max_ratio: float) -> dict[str, Any]:  # fmt: skip
    """The model's counts, groups, reachable drop and left-alone layers."""
    flops, params = count_ops_and_params(net, shape)
    return {
        "model": model,
        "input_shape": list(shape),
        "num_classes": classes,
        "flops": flops,
        "params": params,
        "analytic_flops": budget.dense["flops"],
        "round_to": round_to,
        "groups": [
            {
                "group": g.id,
                "root": g.root_name,
                "channels": g.size,
                "layers": len(g.layer_names),
                "allowed_kept": graph.allowed_keep(g.id, max_ratio),
            }
            for g in graph.groups
        ],  # fmt: skip
        "prunable_channels": sum(g.size for g in graph.groups),
        "max_layer_ratio": max_ratio,
        "reachable_flops_drop": reachable(graph, budget, max_ratio),
        "left_alone": [{"layer": n, "why": why} for n, why in graph.left_alone()],
    }


def _dry_run(graph: PruningGraph, budget: Budget, target_flops: float, max_ratio: float) -> dict[str, Any]:
    """Whether ``target_flops`` can be reached, and with which kept counts (or why not)."""
    if not 0 < target_flops < 1:
        raise BadInput(f"--target-flops must be strictly between 0 and 1, got {target_flops}")
    try:
        counts = solve_counts(graph, budget, target_flops, max_ratio=max_ratio)
        return {"target_flops": target_flops, "feasible": True, "flops_drop": budget.drop_of_counts(counts),
                "kept": counts}  # fmt: skip
    except GateFailed as exc:
        return {"target_flops": target_flops, "feasible": False, "why": str(exc)}


def render_info(r: dict[str, Any]) -> str:
    lines = [
        f"{r['model']}  input {'x'.join(map(str, r['input_shape']))}  classes {r['num_classes']}",
        f"FLOPs (MACs) {r['flops'] / 1e6:.2f}M  params {r['params'] / 1e6:.3f}M",
        f"{len(r['groups'])} prunable channel groups, {r['prunable_channels']} channels (round to {r['round_to']})",
        "",
        f"{'group':>5}  {'channels':>8}  {'layers':>6}  root",
    ]
    if pre := r.get("pretrained"):
        lines.insert(3, f"pretrained {pre['weights']} ({pre['file']}), classifier {pre['head']}")
    lines += [f"{g['group']:>5}  {g['channels']:>8}  {g['layers']:>6}  {g['root']}" for g in r["groups"]]
    reach = r["reachable_flops_drop"]
    lines += ["", f"reachable FLOPs drop: {reach['min']:.4f} .. {reach['max']:.4f} "
                  f"(max layer ratio {r['max_layer_ratio']}, round to {r['round_to']})"]  # fmt: skip
    if r["left_alone"]:
        lines += ["", f"left alone ({len(r['left_alone'])} conv/linear layers):"]
        lines += [f"  {x['layer']}: {x['why']}" for x in r["left_alone"]]
    if "dry_run" in r:
        d = r["dry_run"]
        verdict = f"feasible ({d['flops_drop']:.4f})" if d["feasible"] else f"NOT feasible: {d['why']}"
        lines += ["", f"dry run, FLOPs drop {d['target_flops']}: {verdict}"]
    return "\n".join(lines)
