"""Latency-targeted pruning: find the FLOPs drop whose exported ONNX model runs in the requested time.

``compress prune --target-latency 4ms`` measures, it does not predict. Each candidate FLOPs drop ``f`` is
turned into a real model (one-shot L2 channel importance on the starting weights -- the run's own importance
for a one-shot l1/l2/bn-scale/random run -- the uniform per-group ratio of
:func:`compressor.budget.solve_counts`, legalized, materialized), exported like a default ``compress export``
(opset 17, dynamic batch, onnxslim) and timed with the ``compress bench`` harness
(:func:`benchmarks.latency.bench`, p50). The search brackets the target between the dense model (too slow,
else there is nothing to do: BadInput) and the largest reachable drop (fast enough, else the target is out of
reach: GateFailed) and narrows the bracket by safeguarded interpolation (see :func:`search_drop`). It runs
before the run directory is created; the run then prunes to the chosen FLOPs drop as usual, and at the end
exports and times the final model the same way and gates on it (``report.json`` ``latency``).

Latency depends on the kept channel counts only, and those come from ``solve_counts`` whatever the scores:
for the baselines (l1, l2, bn-scale, taylor, random) with one step the searched architecture is the final
one. PSAP and ASTER choose their own per-group ratios during training (and iterative steps cap later ones),
so for them the searched architecture is a proxy of the same FLOPs (``proxy: true`` in the report); the
final timing says whether it landed.
"""

from __future__ import annotations

import contextlib
import json
import random
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from compressor.budget import Budget, reachable, solve_counts, solve_masks
from compressor.config import DEFAULT_PRUNE as _P
from compressor.config import LatencySpec
from compressor.errors import BadInput, GateFailed
from compressor.graph import Masks, PruningGraph, count_ops_and_params, tp_importances
from compressor.runtime.atomic import write_json

#: One-shot importances whose searched structure is exactly the run's (with one step and no training).
ONE_SHOT = ("l1", "l2", "bn-scale", "random")
SEARCH_FILE = "latency_search.json"  # in the run directory: the search, reused on --resume
MAX_EVALS = 8  # candidate timings (re-timings included) besides the dense model
MIN_ITERS = 20  # timed runs per measurement, at least
WARMUP = 5


class Meter:
    """Export models as a default ``compress export`` does and time them with the bench harness (p50 ms).

    The first timing (the dense model, the slowest) runs for ``spec.duration`` seconds; later ones run as many
    rounds as it got (at least :data:`MIN_ITERS`), so every candidate is timed as thoroughly.
    """

    def __init__(self, spec: LatencySpec, input_shape: tuple[int, ...]) -> None:
        self.spec, self.input_shape = spec, tuple(input_shape)
        self.iters: int | None = None

    def export(self, model: nn.Module, path: Path) -> Path:
        """Opset 17, dynamic batch, onnxslim (verified on batch 1 only: the file is the same)."""
        from exporters.onnx import export_onnx

        was_training = model.training
        export_onnx(model.eval(), self.input_shape, path, verify_batches=(1,))
        model.train(was_training)
        return path

    def time(self, path: Path) -> float:
        from benchmarks.latency import bench

        s = self.spec
        opts = {"providers": [s.provider], "batches": [s.batch], "threads": s.threads}
        timing = {"iters": self.iters} if self.iters else {"iters": None, "duration": s.duration}
        row = bench({"candidate": path}, warmup=WARMUP, **opts, **timing)["results"][0]
        if self.iters is None:
            self.iters = max(MIN_ITERS, int(row["rounds"]))
            if row["rounds"] < MIN_ITERS:  # a slow model: time it again, MIN_ITERS rounds
                row = bench({"candidate": path}, warmup=0, iters=MIN_ITERS, **opts)["results"][0]
        return float(row["models"]["candidate"]["p50_ms"])

    def __call__(self, model: nn.Module) -> float:
        """Export ``model`` to a temporary file and time it."""
        with tempfile.TemporaryDirectory(prefix="compress-latency-") as tmp:
            return self.time(self.export(model, Path(tmp) / "candidate.onnx"))


def proxy_scores(graph: PruningGraph, importance: str = "l2") -> dict[int, torch.Tensor]:
    """One-shot Torch-Pruning importance of every group's channels on the graph model's current weights."""
    if importance == "random":
        torch.manual_seed(0)
    imp = tp_importances()[importance]()
    return {g.id: graph.tp_importance(imp, g.id) for g in graph.groups}


def proxy_importance(method: str, epochs: int, steps: int) -> str:
    """The run's own importance when the run is a one-shot magnitude baseline, else L2 (a proxy)."""
    return method if method in ONE_SHOT and epochs == 0 and steps == 1 else "l2"


def max_drop(graph: PruningGraph, budget: Budget, max_ratio: float) -> float:
    """The largest FLOPs drop any mask reaches (rounding and per-group caps included)."""
    return float(reachable(graph, budget, max_ratio)["max"])


def candidate_masks(graph: PruningGraph, budget: Budget, scores: dict[int, torch.Tensor], drop: float,
                    max_ratio: float, weights: dict[int, float] | None = None) -> Masks:  # fmt: skip
    """The legal masks a baseline would choose for FLOPs drop ``drop`` (``weights``: per-group allocation)."""
    return graph.legalize(solve_masks(graph, budget, scores, drop, metric="flops", max_ratio=max_ratio,
                                      weights=weights))  # fmt: skip


def structure_key(graph: PruningGraph, budget: Budget, drop: float, max_ratio: float,
                  weights: dict[int, float] | None = None) -> tuple[int, ...]:  # fmt: skip
    """Kept channel counts at ``drop``: two drops with the same key give the same architecture."""
    counts = solve_counts(graph, budget, drop, metric="flops", max_ratio=max_ratio, weights=weights)
    return tuple(counts[g.id] for g in graph.groups)


Point = dict[str, Any]  # flops_drop, requested_drop, latency_ms (the fastest of runs), runs, macs, params
Evaluate = Callable[[float, bool], Point]


def _cost(ms: float, target: float) -> float:
    """Distance to the target; being slower counts double (a re-measurement may cross the tolerance)."""
    return target - ms if ms <= target else 2.0 * (ms - target)


def search_drop(evaluate: Evaluate, spec: LatencySpec, dense: Point, top: float, *, max_evals: int = MAX_EVALS,
                log: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:  # fmt: skip
    """Find a FLOPs drop in (0, ``top``] whose measured latency meets ``spec`` (closest to its target).

    ``evaluate(f, again)`` returns the point of the architecture at drop ``f``: it builds and times it the first
    time, returns the same (shared) point for an architecture timed before, and with ``again`` times it once
    more (``latency_ms`` is the fastest of its ``runs``: contention only ever slows a run down). ``dense`` is the
    unpruned model's point.

    Latency falls with the drop, roughly linearly in the kept MACs, but it is noisy and steps with rounding.
    Every iteration takes the bracket from all timings so far: hi the smallest drop timed fast enough (at most
    the target), lo the largest smaller drop timed too slow (the dense model at worst), so a noisy timing can
    never leave an empty bracket. The next drop interpolates latency linearly between lo and hi, kept in the
    middle 80% of the bracket so that one noisy end cannot stall it. A new point slower than lo, or faster
    than hi, by more than a quarter of the tolerance is out of order: the more-pruned of the pair is timed
    again (once). A point within half the tolerance of the target is timed a second time before the search
    stops on it; the search also stops after ``max_evals`` timings or when the bracket is narrower than 0.2%.
    The answer is the point that meets the target (at most target * (1 + tolerance)) closest to it, slower
    points counting double; the ``top`` drop must meet it (else GateFailed: out of reach).
    """
    target = spec.target_ms
    dense_ms = dense["latency_ms"]
    if dense_ms <= target:
        raise BadInput(f"the dense model already runs in {dense_ms:.3f} ms <= target {target:.3f} ms "
                       f"({spec.provider}, batch {spec.batch}): nothing to prune")  # fmt: skip
    search = _Search(evaluate, dense, target, log)
    point = search.visit(top)
    if not spec.met(point["latency_ms"]):
        raise GateFailed(f"target latency {target:.3f} ms is out of reach: the fastest measured model (FLOPs drop "
                         f"{point['flops_drop']:.3f}, the most --max-layer-ratio and --round-to allow) runs in "
                         f"{point['latency_ms']:.3f} ms on {spec.provider} at batch {spec.batch}")  # fmt: skip
    _narrow(search, spec, top, point, max_evals)
    curve = search.curve
    meeting = [p for p in curve[1:] if spec.met(p["latency_ms"])]
    best = min(meeting or curve[1:], key=lambda p: _cost(p["latency_ms"], target))
    return {"target_ms": target, "dense_ms": dense_ms, "curve": sorted(curve, key=lambda p: p["flops_drop"]),
            "chosen_drop": best["requested_drop"], "chosen_flops_drop": best["flops_drop"],
            "searched_ms": best["latency_ms"], "timings": search.timings()}  # fmt: skip


class _Search:
    """What :func:`search_drop` timed: the distinct points (``curve``, dense first) and every drop asked for."""

    def __init__(self, evaluate: Evaluate, dense: Point, target: float, log: Callable[[str], None]) -> None:
        self.evaluate, self.target, self.log = evaluate, target, log
        self.curve: list[Point] = [{**dense, "flops_drop": 0.0, "requested_drop": 0.0}]
        self.visits: list[tuple[float, Point]] = [(0.0, self.curve[0])]  # every drop asked for and its point

    def timings(self) -> int:
        return sum(len(p.get("runs") or [0]) for p in self.curve[1:])

    def visit(self, drop: float, again: bool = False) -> Point:
        point = self.evaluate(drop, again)
        if all(point is not p for p in self.curve):
            self.curve.append(point)
        self.visits.append((drop, point))
        self.log(_line(point, self.target, again))
        return point

    def bracket(self) -> tuple[tuple[float, Point], tuple[float, Point] | None]:
        """(lo, hi): hi the smallest drop timed fast enough, lo the largest smaller drop timed too slow."""
        target = self.target
        fast = [v for v in self.visits if v[1]["latency_ms"] <= target]
        hi = min(fast, key=lambda v: v[0], default=None)
        lo = max((v for v in self.visits if v[1]["latency_ms"] > target and (hi is None or v[0] < hi[0])),
                 key=lambda v: v[0])  # fmt: skip
        return lo, hi


def _runs(p: Point) -> int:
    return len(p.get("runs") or [0])


def _narrow(search: _Search, spec: LatencySpec, drop: float, point: Point, max_evals: int) -> None:
    """:func:`search_drop`'s iterations from the ``top`` drop's ``point``: confirm, interpolate, re-time."""
    target, band = spec.target_ms, spec.tolerance * spec.target_ms
    while search.timings() < max_evals:
        if abs(point["latency_ms"] - target) <= band / 2:
            if _runs(point) > 1:
                break  # close enough, and confirmed
            point = search.visit(drop, again=True)  # confirm it: a burst of load may have slowed the first timing
            continue
        (lo_f, lo), hi_v = search.bracket()
        if hi_v is None or hi_v[0] - lo_f < 2e-3:
            break  # only the top meets the target (within the tolerance), or the bracket cannot narrow further
        hi_f, hi = hi_v
        width, lo_ms, hi_ms = hi_f - lo_f, lo["latency_ms"], hi["latency_ms"]
        guess = lo_f + width * (lo_ms - target) / max(lo_ms - hi_ms, 1e-12)
        drop = round(min(max(guess, lo_f + 0.1 * width), hi_f - 0.1 * width), 6)
        point = search.visit(drop)
        ms, margin = point["latency_ms"], 1 + spec.tolerance / 4
        suspect = (drop, point) if ms > lo_ms * margin else (hi_f, hi) if ms * margin < hi_ms else None
        if suspect is not None and _runs(suspect[1]) < 2 and search.timings() < max_evals:
            search.visit(suspect[0], again=True)  # out of order: time the more-pruned point again


def _line(p: Point, target: float, again: bool = False) -> str:
    runs = p.get("runs") or []
    how = " (timed again: fastest of " + ", ".join(f"{r:.3f}" for r in runs) + ")" if again else ""
    return f"[latency] FLOPs drop {p['flops_drop']:.4f}: {p['latency_ms']:.3f} ms{how} (target {target:.3f} ms)"


def find_drop(graph: PruningGraph, budget: Budget, model: nn.Module, input_shape: tuple[int, ...],
              spec: LatencySpec, *, importance: str = "l2", max_ratio: float = _P.max_layer_ratio,
              log: Callable[[str], None] = lambda _m: None, meter: Meter | None = None,
              max_evals: int = MAX_EVALS, weights: dict[int, float] | None = None) -> dict[str, Any]:  # fmt: skip
    """Time the dense model, then :func:`search_drop` over real pruned, exported models; the search record.

    ``weights``: the run's per-group allocation weights (``solve_counts``), None for the uniform ratio.
    """
    meter = meter or Meter(spec, input_shape)
    model = model.cpu()
    scores = proxy_scores(graph, importance)
    seen: dict[tuple[int, ...], tuple[Path, Point]] = {}
    with tempfile.TemporaryDirectory(prefix="compress-latency-") as tmp:
        dense_ms = meter.time(meter.export(model, Path(tmp) / "dense.onnx"))
        macs, params = count_ops_and_params(model, input_shape)
        dense = {"latency_ms": dense_ms, "runs": [dense_ms], "macs": macs, "params": params}
        log(f"[latency] dense: {dense_ms:.3f} ms on {spec.provider} at batch {spec.batch} "
            f"(target {spec.target_ms:.3f} ms ± {spec.tolerance:.0%})")  # fmt: skip

        def evaluate(drop: float, again: bool) -> Point:
            key = structure_key(graph, budget, drop, max_ratio, weights)
            if key in seen:  # an architecture timed before: the same point (timed once more when asked)
                path, point = seen[key]
                if again:
                    point["runs"].append(meter.time(path))
                    point["latency_ms"] = min(point["runs"])
                return point
            masks = candidate_masks(graph, budget, scores, drop, max_ratio, weights)
            slim, _ = graph.materialize(masks, model)
            path = meter.export(slim, Path(tmp) / f"candidate{len(seen)}.onnx")
            ms = meter.time(path)
            macs, params = count_ops_and_params(slim, input_shape)
            point = {"requested_drop": drop, "flops_drop": budget.drop(masks, "flops"), "latency_ms": ms,
                     "runs": [ms], "macs": macs, "params": params}  # fmt: skip
            seen[key] = (path, point)
            return point

        top = max_drop(graph, budget, max_ratio)
        result = search_drop(evaluate, spec, dense, top, max_evals=max_evals, log=log)
    log(f"[latency] chosen FLOPs drop {result['chosen_drop']:.4f}: {result['searched_ms']:.3f} ms "
        f"({result['timings']} candidate timings)")  # fmt: skip
    return {"spec": asdict(spec), "importance": importance, "max_drop": top, **result}


@contextlib.contextmanager
def _rng_untouched() -> Iterator[None]:
    """The search must not shift the run's random streams (training stays deterministic per --seed)."""
    state = (random.getstate(), np.random.get_state())
    with torch.random.fork_rng(devices=[]):
        yield
    random.setstate(state[0])
    np.random.set_state(state[1])


def search_for_run(cfg: Any, out: Path, graph: PruningGraph, budget: Budget, model: nn.Module,
                   input_shape: tuple[int, ...], log: Callable[[str], None],
                   weights: dict[int, float] | None = None) -> dict[str, Any]:  # fmt: skip
    """The run's search (``weights``: the run's allocation weights).

    Reused from ``out/latency_search.json`` on ``--resume``, else measured now.
    """
    if cfg.resume and (out / SEARCH_FILE).is_file():
        saved = load_search(out)
        log(f"[latency] reusing {out / SEARCH_FILE}: FLOPs drop {saved['chosen_drop']:.4f} "
            f"({saved['searched_ms']:.3f} ms)")  # fmt: skip
        return saved
    spec = LatencySpec.of(cfg)
    importance = proxy_importance(cfg.method, cfg.epochs, cfg.steps)
    with _rng_untouched():
        found = find_drop(graph, budget, model, input_shape, spec, importance=importance,
                          max_ratio=cfg.max_layer_ratio, log=log, weights=weights)  # fmt: skip
    # PSAP/ASTER choose their own per-group ratios, iterative steps cap later ones: other kept counts
    found["proxy"] = cfg.method in ("psap", "aster") or cfg.steps > 1
    return found


def load_search(out: Path) -> dict[str, Any]:
    """A run's saved search (BadInput when missing or unreadable)."""
    path = out / SEARCH_FILE
    try:
        saved = json.loads(path.read_text())
        _ = float(saved["chosen_drop"]), float(saved["searched_ms"]), float(saved["dense_ms"]), list(saved["curve"])
    except (OSError, ValueError, KeyError, TypeError):
        raise BadInput(f"{path} is missing or unreadable; start the run again (without --resume)") from None
    return saved


def save_search(out: Path, search: dict[str, Any]) -> None:
    write_json(out / SEARCH_FILE, search)


def final_record(cfg: Any, search: dict[str, Any], slim: nn.Module, input_shape: tuple[int, ...],
                 log: Callable[[str], None]) -> dict[str, Any]:  # fmt: skip
    """Measure the run's final model like the search did: the report's ``latency`` section."""
    spec = LatencySpec.of(cfg)
    target, tol = spec.target_ms, spec.tolerance
    meter = Meter(spec, input_shape)
    with _rng_untouched(), tempfile.TemporaryDirectory(prefix="compress-latency-") as tmp:
        path = meter.export(slim, Path(tmp) / "pruned.onnx")
        runs = [meter.time(path)]
        if not spec.met(runs[0]):  # contention only slows a run down: time it once more, keep the faster
            runs.append(meter.time(path))
    final = min(runs)
    met = spec.met(final)
    log(f"[latency] pruned model: {final:.3f} ms (target {target:.3f} ms ± {tol:.0%}: {'met' if met else 'NOT met'})")
    return {"target_ms": target, "provider": spec.provider, "batch": spec.batch, "threads": spec.threads,
            "tolerance": tol, "duration": spec.duration, "importance": search.get("importance"),
            "proxy": bool(search.get("proxy")), "dense_ms": search["dense_ms"], "max_drop": search.get("max_drop"),
            "curve": search["curve"], "chosen_drop": search["chosen_drop"], "searched_ms": search["searched_ms"],
            "final_ms": final, "final_runs": runs, "met": met}  # fmt: skip
