"""Protocol study of the pruning methods: every method under the same data, budget, epochs and LR schedule.

    python -m benchmarks.suites.methods --tier dev --jobs 2                  # ablations, chosen on validation accuracy
    python -m benchmarks.suites.methods --tier confirm --jobs 2 --merge      # the confirmation rows (resumable)
    python -m benchmarks.suites.methods --tier confirm --dry-run             # the planned rows, in order

What the protocol fixes (tier numbers in ``TIERS``, the one source of truth):

* Data: Fashion-MNIST, a seeded training subset (``train_subset``); the validation split is carved from the train
  split (``val_subset``) and is the only split any choice is made on; the full 10k test split is reported and never
  used to choose. Model ``cifar:resnet20`` (``--models``).
* Starts. ``trained``: one dense checkpoint per seed, trained from random init (``dense_epochs`` at the scratch LR,
  cosine), shared by every method of that seed. ``scratch``: random init of the same seed (the dense reference's
  init). ``dense_epochs`` equals the scratch epochs, so one dense training per seed is the dense row of both starts.
* Every method of a (tier, start) gets the same total epochs E and ONE cosine LR schedule over pruning and
  fine-tuning (``PruneConfig(epochs=E, finetune_epochs=0, schedule="cosine")``), the same optimizer (SGD, momentum
  0.9, nesterov, weight decay 5e-4), batch and augmentation; ``round_to=1`` for every row.
* FLOPs drop within [target, target + 0.5%]: ``flops_in_band`` per row. Every pruned row is exported to ONNX and
  verified against PyTorch (``compressor.jobs.export.export``).
* Controls run after the row they copy: ``l1-matched-*`` is L1 pruned at the epoch where the method's mask last
  changed (``E - epochs_final``), ``random-alloc-*`` keeps random channels at the method's per-group kept counts.
  ``<variant>+distill`` adds knowledge distillation from the dense checkpoint (trained start only).
* The best baseline of a (tier, start, target) is the one of l1/bn-scale with the higher mean VALIDATION accuracy;
  each method is compared with it by the paired per-seed difference of test accuracy (mean, 95% t-interval, wins,
  verdict beats/level/loses) and the same difference of validation accuracy (what dev-tier choices use).

Planning: a tier's ``blocks`` (start, target, seeds, variants) in order, seed-major within a block (a seed's dense
training, then its methods), so paired seeds complete early. ``--targets`` keeps the blocks of those targets (a
target the tier lacks copies its first target's main blocks); ``--starts`` keeps the blocks of those starts
(``optional`` ones only when asked for); ``--seeds`` replaces every block's seeds; ``--variants`` keeps those
variants in the blocks that list them, and puts one no selected block lists into the blocks of its kind (controls,
distill) or else the main ones. A control whose method row is not planned gets it planned just before it.

Writes ``<results>.json`` and ``<results>.md`` atomically after every finished row; ``--merge`` continues a study
(rows already there without an error are skipped; ``--redo`` runs the selected ones again). The dense checkpoints
live in ``--store`` (beside the results, committed), so a study continued in a fresh checkout starts its trained rows
from the same weights; every trained-start row records its checkpoint's ``dense_sha``, and a done row whose
checkpoint is not the one in the store (another hash, none recorded, none kept) is stale and runs again. A
control reads its method row's allocation from the row itself (``allocation``) when that row's run directory is
gone.
Without ``--merge`` the tier's rows are replaced; rows of the other tier in the same results file are kept.
``--merge`` into a file whose rows of this tier were made with other tier settings (data, subsets, batch, epochs,
learning rates) is refused.

Exit codes: 2 with one line on stderr for bad arguments or inputs (also: a planned variant sets a PruneConfig option
this checkout lacks; ``--dry-run`` lists those); 0 otherwise: a failed row records its ``error``, it does not stop
the study.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing
import os
import shlex
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import torch

from benchmarks.suites.accuracy import (
    OVERHEAD_LIMIT,
    _floats,
    _init_worker,
    _Inline,
    _ints,
    _mean,
    _names,
    _positive,
    _report_fields,
    _slug,
    device_name,
    export_fields,
    measure_overhead,
    train_dense,
)
from compressor.errors import BadInput, GateFailed, Interrupted, one_line
from compressor.runtime.atomic import check_writable_dir, write_json, write_text

SCHEMA = 1
KIND = "compress.methods"
PROG = "python -m benchmarks.suites.methods"
RESULTS = Path(__file__).resolve().parents[1] / "results" / "methods"
OUT_DIR = "runs/methods"
STORE_SUFFIX = "_store"  # the store of --results R is R_store (benchmarks/results/methods_store)
STARTS = ("trained", "scratch")
DENSE = "dense"
BASELINES = ("l1", "bn-scale")  # the best baseline is chosen among these, on validation accuracy
ONE_SHOT = ("l1", "l2", "bn-scale", "taylor", "random")  # one-shot (steps=1) baselines: the mask is final at epoch 0
DISTILL = "+distill"
BEST_DISTILL = "best-baseline+distill"  # resolved when it runs: <the best baseline so far>+distill
BAND = 0.005  # flops_in_band: target <= flops_drop <= target + BAND
ROUND_TO = 1
OVERHEAD_EPOCHS = 3
OVERHEAD_METHODS = ("psap", "aster")

# The dev tier's ablations switch one candidate off the v2 reading as it stood then (gamma 1, four prunes an epoch);
# the settings chosen there (psap-g4, aster-once) became v2's defaults, which the confirm tier's psap and aster use.
_V2 = {"method": "psap", "psap_variant": "v2", "psap_gamma": 1.0}
_A2 = {"method": "aster", "aster_variant": "v2", "aster_prunes_per_epoch": 4}

#: Research variants: name -> PruneConfig options (one line each).
VARIANTS: dict[str, dict[str, Any]] = {
    "l1": {"method": "l1"},
    "bn-scale": {"method": "bn-scale"},
    "l1-iter3": {"method": "l1", "steps": 3},
    "sfp": {"method": "psap", "psap_variant": "v1", "psap_adaptive": False, "psap_protect": False},
    "psap-v1": {"method": "psap", "psap_variant": "v1"},
    "psap": {"method": "psap", "psap_variant": "v2"},  # the chosen settings: v2's defaults (gamma 4)
    "psap-g1": {**_V2},  # v2 as first set: protect at gamma 1
    # PSAP ablations: v2 with one candidate switched back
    "psap-filter": {**_V2, "psap_mode": "filter"},
    "psap-extra": {**_V2, "psap_protection": "extra"},
    "psap-readmit-norm": {**_V2, "psap_readmit": "norm"},
    "psap-late": {**_V2, "psap_freeze_at": 1.0, "psap_steps_per_epoch": 1},
    "psap-l2": {**_V2, "psap_score": "l2"},
    "psap-taylor": {**_V2, "psap_score": "taylor"},
    "psap-sparsity-all": {**_V2, "psap_sparsity_scope": "all"},
    "psap-no-protect": {**_V2, "psap_protect": False},
    "psap-churn": {**_V2, "psap_protect_steps": 1},  # protection lasts one step, as in v1
    "psap-f0.2": {**_V2, "psap_freeze_at": 0.2},  # a tuning trial: the structure final after a fifth of the epochs
    "psap-g4": {**_V2, "psap_gamma": 4.0},  # a tuning trial: protect only strong comebacks (fewer swaps)
    "psap-f0.2-g4": {**_V2, "psap_freeze_at": 0.2, "psap_gamma": 4.0},  # both trials together
    "psap-uniform": {**_V2, "psap_adaptive": False},
    "aster-v1": {"method": "aster", "aster_variant": "v1"},
    "aster": {"method": "aster", "aster_variant": "v2"},  # the chosen settings: v2's defaults (one prune an epoch)
    "aster-p4": {**_A2},  # v2 as first set: four prunes an epoch
    # ASTER ablations: v2 with one candidate switched back
    "aster-once": {**_A2, "aster_prunes_per_epoch": 1},  # (search "rounded" equals "exact" at round_to 1)
    "aster-eta-lr": {**_A2, "aster_eta": "lr"},
    "aster-gradient": {**_A2, "aster_sensitivity": "gradient"},
    "aster-mean": {**_A2, "aster_reduce": "mean"},
    "aster-normalized": {**_A2, "aster_normalize": True},
    "aster-same-batch": {**_A2, "aster_curvature": "same-batch"},
}

#: Controls: name -> (the variant whose row of the same tier/start/target/seed they copy, their options). The None
#: value is filled from that row: prune_at = E - its epochs_final; allocation_from = its run directory.
CONTROLS: dict[str, tuple[str, dict[str, Any]]] = {
    "l1-matched-psap": ("psap", {"method": "l1", "prune_at": None}),
    "l1-matched-aster": ("aster", {"method": "l1", "prune_at": None}),
    "random-alloc-psap": ("psap", {"method": "random", "allocation_from": None}),
    "random-alloc-aster": ("aster", {"method": "random", "allocation_from": None}),
}

#: psap-extra is left out: protection floors never bind at these budgets, so it equals psap (measured at seed 0 of
#: the dev tier: the same masks and accuracy); psap-churn measures what v1's protection did differently.
_PSAP_ABLATIONS = [v for v in VARIANTS if v.startswith("psap-") and v not in ("psap-v1", "psap-extra", "psap-g1")]
_ASTER_ABLATIONS = [v for v in VARIANTS if v.startswith("aster-") and v not in ("aster-v1", "aster-p4")]
DEV_VARIANTS = [DENSE, "l1", "bn-scale", "sfp", "psap-v1", "psap-g1", *_PSAP_ABLATIONS, "aster-v1", "aster-p4",
                *_ASTER_ABLATIONS]  # fmt: skip
MAIN_VARIANTS = [DENSE, "l1", "bn-scale", "sfp", "psap", "aster"]
DEV_MAIN = [DENSE, "l1", "bn-scale", "sfp", "psap-g1", "aster-p4", "psap-v1", "aster-v1"]  # scratch runs these first
CONTROL_VARIANTS = ["l1-iter3", "l1-matched-psap", "l1-matched-aster", "random-alloc-psap", "random-alloc-aster"]
DISTILL_VARIANTS = [BEST_DISTILL, "psap+distill", "aster+distill"]


def _block(kind: str, target: float, start: str, seeds: list[int], variants: list[str], **kw: Any) -> dict[str, Any]:
    return {"kind": kind, "target": target, "start": start, "seeds": seeds, "variants": variants, **kw}


#: The tiers. Every key but ``blocks`` defines what a row means (``--merge`` refuses results made with other values);
#: ``blocks`` is the default plan, in order (seed-major within a block). ``optional``: planned only when its start is
#: asked for with ``--starts``.
TIERS: dict[str, dict[str, Any]] = {
    "dev": {
        "data": "fashion-mnist", "train_subset": 4000, "val_subset": 2000, "test_subset": None, "batch_size": 128,
        "dense_epochs": 10, "epochs": {"trained": 8, "scratch": 10}, "lr": {"trained": 0.02, "scratch": 0.1},
        "blocks": [_block("main", 0.7, "trained", [0, 1, 2], DEV_VARIANTS),
                   _block("main", 0.7, "scratch", [0, 1, 2], DEV_MAIN),
                   _block("main", 0.7, "scratch", [0, 1, 2], [v for v in DEV_VARIANTS if v not in DEV_MAIN])],
    },
    "confirm": {
        "data": "fashion-mnist", "train_subset": 16000, "val_subset": 4000, "test_subset": None, "batch_size": 128,
        "dense_epochs": 20, "epochs": {"trained": 15, "scratch": 20}, "lr": {"trained": 0.02, "scratch": 0.1},
        # once a mask is final, the rest of the epochs train the slim model under the same schedule (same function
        # and gradients as soft masking; only the optimizer momentum restarts at that point): ~2x faster rows
        "materialize_early": True,
        "blocks": [_block("main", 0.7, "trained", [0, 1, 2, 3, 4], MAIN_VARIANTS),
                   _block("main", 0.7, "scratch", [0, 1, 2, 3, 4], MAIN_VARIANTS),
                   _block("main", 0.5, "trained", [0, 1, 2], MAIN_VARIANTS),
                   _block("main", 0.5, "scratch", [0, 1, 2], MAIN_VARIANTS, optional=True),
                   _block("controls", 0.7, "trained", [0, 1, 2], CONTROL_VARIANTS),
                   _block("distill", 0.7, "trained", [0, 1, 2], DISTILL_VARIANTS)],
    },
}  # fmt: skip

#: Two-sided 95% Student t quantiles (t_{0.975, df}) for df 1..30; beyond, a Cornish-Fisher expansion.
T975 = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 5: 2.5706, 6: 2.4469, 7: 2.3646, 8: 2.3060, 9: 2.2622,
        10: 2.2281, 11: 2.2010, 12: 2.1788, 13: 2.1604, 14: 2.1448, 15: 2.1314, 16: 2.1199, 17: 2.1098,
        18: 2.1009, 19: 2.0930, 20: 2.0860, 21: 2.0796, 22: 2.0739, 23: 2.0687, 24: 2.0639, 25: 2.0595,
        26: 2.0555, 27: 2.0518, 28: 2.0484, 29: 2.0452, 30: 2.0423}  # fmt: skip


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (df >= 1)."""
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    if df in T975:
        return T975[df]
    z = 1.959964
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))  # fmt: skip


# --------------------------------------------------------------------------------------------- variants


def is_known(variant: str) -> bool:
    if variant in (DENSE, BEST_DISTILL) or variant in VARIANTS or variant in CONTROLS:
        return True
    base = variant[: -len(DISTILL)] if variant.endswith(DISTILL) else None
    return base is not None and (base in VARIANTS or base in CONTROLS)


def family(variant: str) -> str:
    """The block kind a variant belongs to: distill, controls or main."""
    if variant.endswith(DISTILL):
        return "distill"
    if variant in CONTROLS:
        return "controls"
    return "main"


def _base(variant: str) -> str:
    return variant[: -len(DISTILL)] if variant.endswith(DISTILL) else variant


#: What a control or a distilled row answers, read as "variant − reference" (paired over seeds).
QUESTIONS = {
    "l1-iter3": "does pruning in 3 steps beat one shot?",
    "l1-matched": "does L1 at the method's own mask timing match the method (its channel choice, not its timing)?",
    "random-alloc": "do random channels at the method's per-group counts match it (its allocation alone)?",
    "distill": "does distillation from the dense model help?",
}


def reference(variant: str) -> str | None:
    """The row a control or distilled variant is compared with: its method (a control), the variant without
    distillation, or one-shot ``l1`` for ``l1-iter3``; None for the others."""
    if variant.endswith(DISTILL) and variant != BEST_DISTILL:
        return _base(variant)
    if variant in CONTROLS:
        return CONTROLS[variant][0]
    return "l1" if variant == "l1-iter3" else None


def dependency(variant: str) -> str | None:
    """The variant whose row (same tier, model, start, target, seed) a control needs first."""
    entry = CONTROLS.get(_base(variant))
    return entry[0] if entry else None


def variant_options(variant: str) -> dict[str, Any]:
    """PruneConfig options of a variant; a control's row-dependent value is None here (filled when it runs)."""
    base = _base(variant)
    options = dict(CONTROLS[base][1]) if base in CONTROLS else dict(VARIANTS[base])
    if variant.endswith(DISTILL):
        options["distill"] = True
    return options


def missing_options(variants: Iterable[str]) -> dict[str, list[str]]:
    """variant -> the options it sets that this checkout's PruneConfig does not have."""
    from compressor.jobs.prune import PruneConfig

    have = {f.name for f in dataclasses.fields(PruneConfig)}
    out: dict[str, list[str]] = {}
    for v in variants:
        if v == DENSE:
            continue
        names = variant_options("l1+distill" if v == BEST_DISTILL else v)
        lacking = sorted(k for k in names if k not in have)
        if lacking:
            out[v] = lacking
    return out


# --------------------------------------------------------------------------------------------- options


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    ap.add_argument("--tier", required=True, help="dev or confirm (see TIERS)")
    ap.add_argument("--models", type=_names, default=["cifar:resnet20"], help="comma list of model specs")
    ap.add_argument("--variants", type=_names, default=None, help="comma list (default: the tier's list)")
    ap.add_argument("--starts", type=_names, default=None, help="trained,scratch (default: the tier's)")
    ap.add_argument("--targets", type=_floats, default=None, help="FLOPs drop targets (default: the tier's)")
    ap.add_argument("--seeds", type=_ints, default=None, help="seeds of every planned block (default: the tier's)")
    ap.add_argument("--merge", action="store_true", help="continue the results file: skip rows already done")
    ap.add_argument("--results", default=str(RESULTS), help="path prefix of the .json and .md results")
    ap.add_argument("--out-dir", default=OUT_DIR, help="run directories")
    ap.add_argument("--store", help=f"dense checkpoints kept for a continued study (default: <results>{STORE_SUFFIX})")
    ap.add_argument("--redo", action="store_true", help="with --merge: run the selected rows again even if done")
    ap.add_argument("--jobs", type=_positive, default=1, help="worker processes (each cpu_count//jobs threads)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--overhead", action="store_true", help="also time psap/aster epochs vs plain (interleaved)")
    ap.add_argument("--overhead-only", action="store_true", help="only the interleaved timing (no rows)")
    ap.add_argument("--dry-run", action="store_true", help="print the planned rows and exit")
    return ap


def _check_args(ap: argparse.ArgumentParser, args: argparse.Namespace, tiers: dict[str, dict[str, Any]]) -> None:
    if args.tier not in tiers:
        ap.error(f"--tier: unknown {args.tier!r}; choose from {', '.join(tiers)}")
    if args.store is None:
        args.store = args.results + STORE_SUFFIX
    if args.redo and not args.merge:
        ap.error("--redo needs --merge (without it every row of the tier runs again anyway)")
    if args.starts is not None:
        args.starts = list(dict.fromkeys(args.starts))
        bad = [s for s in args.starts if s not in STARTS]
        if bad:
            ap.error(f"--starts: unknown {bad}; choose from {', '.join(STARTS)}")
    if args.targets is not None:
        for t in args.targets:
            if not 0.0 < t < 1.0:
                ap.error(f"--targets: {t} is not a drop fraction strictly between 0 and 1")
        args.targets = list(dict.fromkeys(round(t, 4) for t in args.targets))
    if args.seeds is not None:
        if any(s < 0 for s in args.seeds):
            ap.error("--seeds: seeds must be >= 0")
        args.seeds = list(dict.fromkeys(args.seeds))
    if args.variants is not None:
        args.variants = list(dict.fromkeys(args.variants))
        bad = [v for v in args.variants if not is_known(v)]
        if bad:
            known = [DENSE, *VARIANTS, *CONTROLS, BEST_DISTILL]
            ap.error(f"--variants: unknown {bad}; choose from {', '.join(known)} (any of them +distill)")
    tier = tiers[args.tier]
    if tier["dense_epochs"] != tier["epochs"]["scratch"]:
        raise BadInput(f"tier {args.tier}: dense_epochs {tier['dense_epochs']} must equal the scratch epochs "
                       f"{tier['epochs']['scratch']} (the dense row of both starts is one training)")  # fmt: skip


# --------------------------------------------------------------------------------------------- plan


def row_key(row: dict[str, Any]) -> tuple:
    target = None if row.get("target") is None else round(float(row["target"]), 4)
    return (row["tier"], row["model"], row["start"], target, row["variant"], int(row["seed"]))


def _key(tier: str, model: str, start: str, target: float | None, variant: str, seed: int) -> tuple:
    return (tier, model, start, None if variant == DENSE or target is None else round(target, 4), variant, seed)


def select_blocks(tier: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    """The tier's blocks after --targets, --starts, --seeds and --variants (see the module docstring)."""
    blocks = [dict(b) for b in tier["blocks"]]
    if args.targets is not None:
        have = {round(b["target"], 4) for b in blocks}
        first = blocks[0]["target"]
        clones = [{**b, "target": t} for t in args.targets if t not in have
                  for b in tier["blocks"] if b["kind"] == "main" and b["target"] == first]  # fmt: skip
        blocks = [b for b in blocks if round(b["target"], 4) in args.targets] + clones
        blocks.sort(key=lambda b: args.targets.index(round(b["target"], 4)))  # stable: the tier's order per target
    if args.starts is None:
        blocks = [b for b in blocks if not b.get("optional")]
    else:
        blocks = [b for b in blocks if b["start"] in args.starts]
    if args.seeds is not None:
        blocks = [{**b, "seeds": list(args.seeds)} for b in blocks]
    if args.variants is not None:
        placed = {v for b in blocks for v in b["variants"] if v in args.variants}
        extra = [v for v in args.variants if v not in placed]
        kinds = {b["kind"] for b in blocks}
        out = []
        for b in blocks:
            own = [v for v in args.variants if v in b["variants"]]
            own += [v for v in extra if (family(v) if family(v) in kinds else "main") == b["kind"]]
            out.append({**b, "variants": [v for v in args.variants if v in own]})
        blocks = out
    return [b for b in blocks if b["variants"] and b["seeds"]]


def build_plan(tier_name: str, tier: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    """The rows of this invocation, in run order: block by block, seed-major within a block. A control whose
    dependency row is not planned gets it inserted just before it. BadInput for a distillation row at scratch."""
    rows: list[dict[str, Any]] = []
    keys: set[tuple] = set()

    def add(model: str, block: dict[str, Any], seed: int, variant: str, added: bool = False) -> None:
        start, target = block["start"], block["target"]
        key = _key(tier_name, model, start, target, variant, seed)
        if key in keys:
            return
        if variant.endswith(DISTILL) and start == "scratch":
            raise BadInput(f"{variant}: distillation rows are trained-start only (from the dense checkpoint); "
                           "pass --starts trained")  # fmt: skip
        dep = dependency(variant)
        if dep is not None and _key(tier_name, model, start, target, dep, seed) not in keys:
            add(model, block, seed, dep, added=True)
        keys.add(key)
        rows.append({"key": key, "tier": tier_name, "model": model, "start": start,
                     "target": None if variant == DENSE else target, "variant": variant, "seed": seed,
                     "block": block["kind"], "added": added, "dep": dep})  # fmt: skip

    for model in args.models:
        for block in select_blocks(tier, args):
            for seed in block["seeds"]:
                for variant in block["variants"]:
                    add(model, block, seed, variant)
    return rows


def _task(row: dict[str, Any], tier: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The picklable settings of one pruning row."""
    target = row["target"]
    out = (Path(args.out_dir) / row["tier"] / _slug(row["model"]) / row["start"] / f"t{round(100 * target)}"
           / _slug(row["variant"]) / f"s{row['seed']}")  # fmt: skip
    return {**_common(tier, args), "tier": row["tier"], "model": row["model"], "start": row["start"],
            "target": target, "variant": row["variant"], "seed": row["seed"], "out": str(out), "weights": None,
            "epochs": tier["epochs"][row["start"]], "lr": tier["lr"][row["start"]], "options": None,
            "materialize_early": bool(tier.get("materialize_early", False))}  # fmt: skip


def _dense_task(tier_name: str, model: str, seed: int, tier: dict[str, Any], args: argparse.Namespace,
                starts: list[str]) -> dict[str, Any]:  # fmt: skip
    path = dense_path(args.store, tier_name, model, seed)
    return {**_common(tier, args), "tier": tier_name, "model": model, "seed": seed, "epochs": tier["dense_epochs"],
            "lr": tier["lr"]["scratch"], "path": str(path), "reuse": bool(args.merge), "starts": starts}  # fmt: skip


def dense_path(store: str | Path, tier_name: str, model: str, seed: int) -> Path:
    """Where the dense checkpoint of one (tier, model, seed) is kept."""
    return Path(store) / tier_name / _slug(model) / "dense" / f"s{seed}" / "dense.pt"


def file_sha(path: str | Path) -> str:
    """The first 16 hex digits of a file's SHA-256 (which dense checkpoint a row started from)."""
    import hashlib

    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()[:16]


def _common(tier: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    return {"data": tier["data"], "data_dir": tier.get("data_dir"), "batch_size": tier["batch_size"],
            "train_subset": tier["train_subset"], "val_subset": tier["val_subset"],
            "test_subset": tier["test_subset"], "device": args.device, "quiet": args.quiet}  # fmt: skip


# --------------------------------------------------------------------------------------------- work units
# Module-level functions of plain dicts: they run in-process (--jobs 1) or in spawned workers. A failure becomes the
# row's ``error``; only a stop request (Interrupted, KeyboardInterrupt) propagates.


def cpu_info() -> dict[str, Any]:
    """CPU model, AVX-512 (avx512f in the flags) and the kind: avx512 | avx2 | other."""
    model, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() == "model name" and not model:
                model = value.strip()
            elif name.strip() in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    if not model:
        import platform

        model = platform.processor() or platform.machine()
    kind = "avx512" if "avx512f" in flags else ("avx2" if "avx2" in flags else "other")
    return {"cpu": model, "avx512": "yes" if "avx512f" in flags else "no", "cpu_kind": kind}


def machine_info() -> dict[str, Any]:
    info = cpu_info()
    return {"cpu": info["cpu"], "avx512": info["avx512"], "cpu_kind": info["cpu_kind"], "cores": os.cpu_count(),
            "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}  # fmt: skip


def dense_job(task: dict[str, Any]) -> dict[str, Any]:
    """The dense training of one (tier, model, seed) (``suites.accuracy.train_dense``); errors are returned."""
    t0 = time.perf_counter()
    try:
        result = train_dense(task)
    except Interrupted:  # a stop request ends the study (rows are written after each one)
        raise
    except Exception as exc:
        return {"error": one_line(exc, typed=True), "wall_s": round(time.perf_counter() - t0, 1),
                "device": device_name(task["device"]), "path": task["path"]}  # fmt: skip
    return {**result, "dense_sha": file_sha(task["path"]), "error": None}


def dense_rows(task: dict[str, Any], result: dict[str, Any], starts: Iterable[str]) -> list[dict[str, Any]]:
    """The dense rows (one per start asked) of one dense training."""
    sizes = result.get("data_sizes") or {}
    return [{
        "tier": task["tier"], "model": task["model"], "variant": DENSE, "start": start, "target": None,
        "seed": task["seed"], "acc": result.get("acc"), "last_val_acc": result.get("val_acc"),
        "flops_drop": 0.0 if not result["error"] else None, "params_drop": 0.0 if not result["error"] else None,
        "epochs_final": task["epochs"], "verified": result.get("verified"), "flops_in_band": None,
        "epochs": task["epochs"], "lr": task["lr"], "error": result["error"],
        "export_error": result.get("export_error"), "max_abs_diff": result.get("max_abs_diff"),
        "run_dir": str(Path(task["path"]).parent), "wall_s": result.get("wall_s"), "device": result.get("device"),
        "cpu_kind": cpu_info()["cpu_kind"], "reused": bool(result.get("reused")), "dense_sha": result.get("dense_sha"),
        "train_size": sizes.get("train"), "val_size": sizes.get("val"), "test_size": sizes.get("test"),
    } for start in starts]  # fmt: skip


def _number(value: float) -> int | float:
    """An epoch count: an int when whole (fractions come from several mask updates per epoch)."""
    value = round(float(value), 6)
    return int(value) if value.is_integer() else value


def epochs_final(report: dict[str, Any], epochs: int, options: dict[str, Any]) -> int | float | None:
    """Epochs trained on the final structure: E - the epoch where the mask last changed (the report's
    ``mask_final_epoch``); without it, a one-shot baseline's is E, anything else unknown (None)."""
    final = (report.get("method") or {}).get("mask_final_epoch")
    if final is not None:
        return _number(epochs - float(final))
    if options.get("method") in ONE_SHOT and int(options.get("steps", 1)) == 1 and options.get("prune_at") is None:
        return int(epochs)
    return None


def _readmitted(report: dict[str, Any]) -> dict[str, Any]:
    """PSAP's re-admitted zero channels: every key containing ``readmitted_zero`` in the method record (as is) and
    in its log (numbers summed over the steps)."""
    method = report.get("method") or {}
    out: dict[str, Any] = {}
    for k, v in method.items():
        if "readmitted_zero" in k:
            out[f"psap_{k}"] = v
    for rec in method.get("log") or []:
        for k, v in rec.items() if isinstance(rec, dict) else ():
            if "readmitted_zero" in k and isinstance(v, (int, float)) and not isinstance(v, bool):
                name = f"psap_log_{k}"
                out[name] = out.get(name, 0) + v
    return out


def run_row(task: dict[str, Any]) -> dict[str, Any]:
    """One pruning row through ``compressor.jobs.prune.prune`` + ONNX export; failures are recorded, not raised."""
    t0 = time.perf_counter()
    out = Path(task["out"])
    shutil.rmtree(out, ignore_errors=True)  # no stale report.json from an earlier invocation
    options = dict(task["options"] or {})
    row = {k: task[k] for k in ("tier", "model", "variant", "start", "target", "seed")}
    row.update(acc=None, last_val_acc=None, flops_drop=None, params_drop=None, epochs_final=None, verified=None,
               flops_in_band=None, epochs=task["epochs"], lr=task["lr"], options=options)  # fmt: skip
    report, error = None, task.get("error")
    if error is None:
        try:
            from compressor.jobs.prune import PruneConfig, prune

            cfg = PruneConfig(model=task["model"], out=str(out), data=task["data"], data_dir=task["data_dir"],
                              weights=task["weights"], from_scratch=task["start"] == "scratch",
                              target_flops=task["target"], epochs=task["epochs"], finetune_epochs=0,
                              schedule="cosine", lr=task["lr"], batch_size=task["batch_size"],
                              train_subset=task["train_subset"], val_subset=task["val_subset"],
                              test_subset=task["test_subset"], seed=task["seed"], device=task["device"],
                              round_to=ROUND_TO, overwrite=True, quiet=task["quiet"],
                              materialize_early=task.get("materialize_early", False), **options)  # fmt: skip
            report = prune(cfg)
        except GateFailed as exc:  # the report is written before the target gate: keep its numbers
            error = one_line(exc, typed=True)
            if (out / "report.json").is_file():
                report = json.loads((out / "report.json").read_text())
        except Interrupted:  # a stop request ends the study; --merge continues it
            raise
        except Exception as exc:  # one failed row must not end the study
            error = one_line(exc, typed=True)
    row["error"] = error
    if report is not None:
        fields = _report_fields(report, task["target"])
        fields["prune_s"] = fields.pop("wall_s")
        row.update(fields)
        flops = row["flops_drop"]
        row["flops_in_band"] = bool(task["target"] - 1e-9 <= flops <= task["target"] + BAND + 1e-9)
        row["mask_final_epoch"] = (report.get("method") or {}).get("mask_final_epoch")
        row["epochs_final"] = epochs_final(report, task["epochs"], options)
        sizes = (report.get("data") or {}).get("sizes") or {}
        row.update(train_size=sizes.get("train"), val_size=sizes.get("val"), test_size=sizes.get("test"))
        if report["method"]["name"] == "psap":
            row.update(_readmitted(report))
        row["allocation"] = [[g["root"], g["channels"], g["kept"]] for g in report.get("groups", [])]
        if (out / "pruned.pt").is_file():
            row.update(export_fields(out))
    row.update(run_dir=str(out), wall_s=round(time.perf_counter() - t0, 1), device=device_name(task["device"]),
               cpu_kind=cpu_info()["cpu_kind"], dense_sha=task.get("dense_sha"))  # fmt: skip
    return row


# --------------------------------------------------------------------------------------------- statistics


def paired(method_rows: Iterable[dict[str, Any]], base_rows: Iterable[dict[str, Any]], field: str = "acc"
           ) -> dict[str, Any]:  # fmt: skip
    """Per-seed difference method - baseline of ``field`` over the seeds both have: mean, 95% t-interval, wins."""
    ok = lambda r: not r.get("error") and r.get(field) is not None  # noqa: E731
    base = {int(r["seed"]): float(r[field]) for r in base_rows if ok(r)}
    mine = {int(r["seed"]): float(r[field]) for r in method_rows if ok(r)}
    seeds = sorted(set(base) & set(mine))
    diffs = [mine[s] - base[s] for s in seeds]
    return paired_stats(diffs, seeds)


def paired_stats(diffs: Sequence[float], seeds: Sequence[int] | None = None) -> dict[str, Any]:
    n = len(diffs)
    out: dict[str, Any] = {"n": n, "seeds": list(seeds) if seeds is not None else None, "diffs": list(diffs),
                           "mean": _mean(diffs), "std": None, "half_width": None, "lo": None, "hi": None,
                           "wins": sum(d > 0 for d in diffs), "verdict": "n<2"}  # fmt: skip
    if n >= 2:
        sd = statistics.stdev(diffs)
        half = t975(n - 1) * sd / math.sqrt(n)
        lo, hi = out["mean"] - half, out["mean"] + half
        verdict = "beats" if lo > 0 else ("loses" if hi < 0 else "level")
        out.update(std=sd, half_width=half, lo=lo, hi=hi, verdict=verdict)
    return out


def _ok(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if not r.get("error") and r.get("acc") is not None]


def best_baseline(rows: Iterable[dict[str, Any]]) -> str | None:
    """Of BASELINES, the one with the higher mean validation accuracy (``last_val_acc``) among ``rows`` (one
    tier/model/start/target); None when neither has one. Test accuracy is never looked at."""
    rows = list(rows)
    best, best_val = None, None
    for name in BASELINES:
        vals = [
            float(r["last_val_acc"]) for r in _ok(rows) if r["variant"] == name and r.get("last_val_acc") is not None
        ]
        if vals and (best_val is None or _mean(vals) > best_val):
            best, best_val = name, _mean(vals)
    return best


def _group_key(row: dict[str, Any]) -> tuple:
    return (row["tier"], row["model"], row["start"], None if row.get("target") is None else round(row["target"], 4))


def _variant_order(name: str) -> tuple:
    known = [DENSE, *VARIANTS, *CONTROLS]
    base = _base(name)
    return (name.endswith(DISTILL), known.index(base) if base in known else len(known), name)


def _tier_order(name: str) -> int:
    return {"confirm": 0, "dev": 1}.get(name, 2)


def _sort_key(row: dict[str, Any]) -> tuple:
    target = 2.0 if row.get("target") is None else float(row["target"])  # dense first, then high targets first
    start = STARTS.index(row["start"]) if row["start"] in STARTS else len(STARTS)
    return (_tier_order(row["tier"]), row["tier"], row["model"], start, -target, _variant_order(row["variant"]),
            int(row["seed"]))  # fmt: skip


def _group_order(k: tuple) -> tuple:
    """(tier, model, start, target, variant): confirm first, dense first, higher targets first."""
    start = STARTS.index(k[2]) if k[2] in STARTS else len(STARTS)
    return (_tier_order(k[0]), k[0], k[1], start, -(2.0 if k[3] is None else k[3]), _variant_order(k[4]))


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Entries of three kinds: ``variant`` (per tier, model, start, target, variant: n, mean ± sample std of test
    accuracy, means, flags and, for a method, the paired differences vs the best baseline), ``noise`` (per tier,
    model, start, target) and ``cost`` (per tier)."""
    pruned, groups = _summary_groups(rows)
    out: list[dict[str, Any]] = [_variant_entry(key, groups[key]) for key in sorted(groups, key=_group_order)]
    _add_paired(out, pruned)
    out += _noise_entries(out, pruned)
    out += agreement(rows)
    out += _cost_entries(rows)
    return out


def _summary_groups(rows: list[dict[str, Any]]) -> tuple[dict[tuple, list[dict[str, Any]]],
                                                         dict[tuple, list[dict[str, Any]]]]:  # fmt: skip
    """(pruned rows per (tier, model, start, target), rows per (tier, model, start, target, variant)); a dense
    row's group has target None."""
    pruned: dict[tuple, list[dict[str, Any]]] = {}
    dense: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        g = _group_key(row)
        (dense if row["variant"] == DENSE else pruned).setdefault(g, []).append(row)
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for g, members in pruned.items():
        for r in members:
            groups.setdefault((*g, r["variant"]), []).append(r)
    for (tier, model, start, _), members in dense.items():
        groups[(tier, model, start, None, DENSE)] = members
    return pruned, groups


def _variant_entry(key: tuple, members: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``variant`` entry of one (tier, model, start, target, variant) group."""
    tier, model, start, target, variant = key
    ok = _ok(members)
    accs = [float(r["acc"]) for r in ok]

    def mean_of(field: str, rs: list[dict[str, Any]] = ok) -> float | None:
        return _mean(float(r[field]) for r in rs if r.get(field) is not None)

    verified = [r.get("verified") for r in members]
    entry: dict[str, Any] = {
        "kind": "variant", "tier": tier, "model": model, "start": start, "target": target, "variant": variant,
        "seeds": sorted(int(r["seed"]) for r in ok), "n": len(accs), "failed": len(members) - len(ok),
        "acc_mean": _mean(accs), "acc_std": statistics.stdev(accs) if len(accs) > 1 else None,
        "last_val_acc_mean": mean_of("last_val_acc"), "flops_drop_mean": mean_of("flops_drop"),
        "params_drop_mean": mean_of("params_drop"), "epochs_final_mean": mean_of("epochs_final"),
        "verified_all": bool(members) and all(v is True for v in verified),
        "in_band_all": None if variant == DENSE else all(r.get("flops_in_band") is True for r in members),
        "fallback_rate": mean_of("aster_fallback"),
    }  # fmt: skip
    return entry


def _add_paired(out: list[dict[str, Any]], pruned: dict[tuple, list[dict[str, Any]]]) -> None:
    """Paired comparisons against the best baseline (by validation) of each (tier, model, start, target)."""
    for g, members in pruned.items():
        base = best_baseline(members)
        for entry in out:
            if (entry["tier"], entry["model"], entry["start"], entry["target"]) != g:
                continue
            if entry["variant"] in BASELINES:
                entry["best_baseline"] = base
                continue
            mine = [r for r in members if r["variant"] == entry["variant"]]
            theirs = [r for r in members if r["variant"] == base] if base else []
            entry["vs_best"] = None if base is None else {"baseline": base, "test": paired(mine, theirs, "acc"),
                                                          "val": paired(mine, theirs, "last_val_acc")}  # fmt: skip
            ref = reference(entry["variant"])
            refs = [r for r in members if r["variant"] == ref]
            if refs:
                entry["vs_ref"] = {"reference": ref, "test": paired(mine, refs, "acc"),
                                   "val": paired(mine, refs, "last_val_acc")}  # fmt: skip


def _noise_entries(out: list[dict[str, Any]], pruned: dict[tuple, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Noise floor: binomial standard error of the test split at the mean accuracy; the mean seed std."""
    noise: list[dict[str, Any]] = []
    for g, members in pruned.items():
        ok = _ok(members)
        p = _mean(float(r["acc"]) for r in ok)
        sizes = [int(r["test_size"]) for r in ok if r.get("test_size")]
        n_test = max(sizes) if sizes else None
        stds = [e["acc_std"] for e in out if e["kind"] == "variant" and e["acc_std"] is not None
                and (e["tier"], e["model"], e["start"], e["target"]) == g]  # fmt: skip
        noise.append({"kind": "noise", "tier": g[0], "model": g[1], "start": g[2], "target": g[3], "acc_mean": p,
                      "n_test": n_test,
                      "binomial_se": math.sqrt(p * (1 - p) / n_test) if p is not None and n_test else None,
                      "mean_seed_std": _mean(stds)})  # fmt: skip
    return noise


def _cost_entries(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Cost: total wall time per tier (a dense training counted once, though it is the dense row of both starts)."""
    cost: list[dict[str, Any]] = []
    for tier in sorted({r["tier"] for r in rows}, key=_tier_order):
        these = [r for r in rows if r["tier"] == tier]
        seen: set[str] = set()
        total = 0.0
        for r in these:
            if r["variant"] == DENSE:
                if r.get("run_dir") in seen or r.get("reused"):
                    continue
                seen.add(r.get("run_dir"))
            total += float(r.get("wall_s") or 0.0)
        cost.append({"kind": "cost", "tier": tier, "rows": len(these), "wall_s_total": round(total, 1),
                     "cpu_kinds": sorted({str(r.get("cpu_kind")) for r in these}),
                     "devices": sorted({str(r.get("device")) for r in these})})  # fmt: skip
    return cost


def removed_channels(run_dir: str | Path) -> set[tuple[str, int]] | None:
    """The (layer, channel) pairs a run removed, from its ``pruned.pt`` pruning history (None if unreadable)."""
    try:
        payload = torch.load(Path(run_dir) / "pruned.pt", map_location="cpu", weights_only=True)
        return {(str(name), int(i)) for name, out, idxs in payload["history"] if out for i in idxs}
    except Exception:  # a row without a readable file simply has no agreement entry
        return None


#: Pairs of variants whose final masks the summary compares seed by seed (does the sensitivity change the mask?)
AGREEMENT_PAIRS = (("aster", "aster-gradient"), ("aster-v1", "aster"))


def agreement(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``agreement`` entries: per (tier, model, start, target, pair) and seed, whether the two variants removed the
    same channels (Jaccard of the removed sets), their test-accuracy difference and whether each used the fallback."""
    out: list[dict[str, Any]] = []
    by = {(r["tier"], r["model"], r["start"], r["target"], r["variant"], int(r["seed"])): r for r in _ok(rows)}
    for a, b in AGREEMENT_PAIRS:
        groups: dict[tuple, list[dict[str, Any]]] = {}
        for (tier, model, start, target, variant, seed), ra in by.items():
            rb = by.get((tier, model, start, target, b, seed))
            if variant != a or rb is None:
                continue
            sa, sb = removed_channels(ra["run_dir"]), removed_channels(rb["run_dir"])
            jac = None if sa is None or sb is None else len(sa & sb) / max(1, len(sa | sb))
            groups.setdefault((tier, model, start, target), []).append(
                {"seed": seed, "jaccard": jac, "identical": None if jac is None else sa == sb,
                 "acc_diff": float(ra["acc"]) - float(rb["acc"]),
                 "fallback": [ra.get("aster_fallback"), rb.get("aster_fallback")]})  # fmt: skip
        for (tier, model, start, target), seeds in groups.items():
            out.append({"kind": "agreement", "tier": tier, "model": model, "start": start, "target": target,
                        "pair": [a, b], "seeds": sorted(seeds, key=lambda e: e["seed"])})  # fmt: skip
    return out


def _agreement_lines(summary: list[dict[str, Any]]) -> list[str]:
    entries = [e for e in summary if e["kind"] == "agreement"]
    if not entries:
        return []
    lines = ["## Do the variants end with different masks?", "",
             "Per seed: Jaccard overlap of the removed (layer, channel) sets (1 = the same mask), the test-accuracy "
             "difference (first − second, points) and whether each used the fallback.", "",
             "| tier | setting | pair | seed | Jaccard | same mask | Δ top-1 (pp) | fallback |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for e in entries:
        for s in e["seeds"]:
            jac = "–" if s["jaccard"] is None else f"{s['jaccard']:.3f}"
            fb = " / ".join("yes" if f else "no" for f in s["fallback"])
            lines.append(f"| {e['tier']} | {_label((e['start'], e['target']))} | {e['pair'][0]} vs {e['pair'][1]} | "
                         f"{s['seed']} | {jac} | {s['identical']} | {100 * s['acc_diff']:+.2f} | {fb} |")  # fmt: skip
    return [*lines, ""]


# --------------------------------------------------------------------------------------------- markdown


def _pct(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f}"


def _acc_cell(e: dict[str, Any] | None, field: str = "acc") -> str:
    if e is None:
        return ""
    if field != "acc":
        return _pct(e.get("last_val_acc_mean")) + (f" ({e['n']})" if e["n"] else "")
    if e["n"] == 0:
        return f"failed ({e['failed']})"
    text = _pct(e["acc_mean"]) + ("" if e["acc_std"] is None else f" ± {_pct(e['acc_std'])}") + f" ({e['n']})"
    return text + (f", {e['failed']} failed" if e["failed"] else "")


def _band_cell(e: dict[str, Any] | None) -> str:
    """Mean FLOPs drop, whether every seed's lies in [target, target + 0.5%], whether every export verified."""
    if e is None:
        return ""
    band = "–" if e["in_band_all"] is None else ("yes" if e["in_band_all"] else "**no**")
    return f"{_pct(e['flops_drop_mean'], 1)}% {band}, {'yes' if e['verified_all'] else '**no**'}"


def _diff_cell(e: dict[str, Any] | None, which: str = "test") -> str:
    if e is None or not e.get("vs_best"):
        return "" if e is None or "vs_best" not in e else "no baseline"
    return _paired_cell(e["vs_best"][which])


def _paired_cell(p: dict[str, Any]) -> str:
    """A :func:`paired` result as "mean [lo, hi] wins/n verdict" in percentage points."""
    if p["n"] == 0:
        return "–"
    sign = lambda v: f"{100 * v:+.2f}"  # noqa: E731
    if p["lo"] is None:
        return f"{sign(p['mean'])} (n<2)"
    return f"{sign(p['mean'])} [{sign(p['lo'])}, {sign(p['hi'])}] {p['wins']}/{p['n']} **{p['verdict']}**"


def _settings_of(entries: list[dict[str, Any]], tier: str, model: str) -> list[tuple]:
    found = {(e["start"], e["target"]) for e in entries if e["tier"] == tier and e["model"] == model and e["target"]}
    return sorted(found, key=lambda s: (-s[1], STARTS.index(s[0]) if s[0] in STARTS else 9))


def _label(setting: tuple) -> str:
    return f"{setting[0]} {round(100 * setting[1])}%"


def _lookup(entries: list[dict[str, Any]], tier: str, model: str, setting: tuple, variant: str
            ) -> dict[str, Any] | None:  # fmt: skip
    start, target = setting
    want = None if variant == DENSE else target
    return next((e for e in entries if e["tier"] == tier and e["model"] == model and e["start"] == start
                 and e["target"] == want and e["variant"] == variant), None)  # fmt: skip


def _confirm_lines(entries: list[dict[str, Any]], model: str) -> list[str]:
    settings = _settings_of(entries, "confirm", model)
    if not settings:
        return [f"## Confirm tier · {model}", "", "No confirm-tier rows yet.", ""]
    variants = sorted({e["variant"] for e in entries if e["tier"] == "confirm" and e["model"] == model},
                      key=_variant_order)  # fmt: skip
    head = ["variant"]
    for s in settings:
        head += [f"{_label(s)} val %", f"{_label(s)} test top-1 %", f"{_label(s)} Δ test vs best baseline (pp)",
                 f"{_label(s)} FLOPs↓ in band, verified"]  # fmt: skip
    lines = [f"## Confirm tier · {model}", "",
             "Validation top-1 % (what every choice reads: the best baseline, the default method), then test top-1 %: "
             "mean ± sample std (n seeds). Δ: paired per-seed test difference method − best baseline "
             "(percentage points), 95% t-interval, wins/pairs, verdict (beats: interval above 0; loses: below 0).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]  # fmt: skip
    for v in variants:
        cells = [v]
        for s in settings:
            e = _lookup(entries, "confirm", model, s, v)
            cells += [_acc_cell(e, "val"), _acc_cell(e), "best baseline" if v in BASELINES and e
                      and e.get("best_baseline") == v else _diff_cell(e), _band_cell(e)]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    bests = []
    winners, losers, level = [], [], []
    for s in settings:
        base = next((e.get("best_baseline") for e in entries if e["tier"] == "confirm" and e["model"] == model
                     and (e["start"], e["target"]) == s and e.get("best_baseline")), None)  # fmt: skip
        bests.append(f"{_label(s)}: {base or 'none'}")
        for e in entries:  # the methods; controls and distilled rows have a table of their own
            here = e["tier"] == "confirm" and e["model"] == model and (e["start"], e["target"]) == s
            if not here or not e.get("vs_best") or family(e["variant"]) != "main":
                continue
            p = e["vs_best"]["test"]
            text = f"{e['variant']} at {_label(s)} ({100 * p['mean']:+.2f} pp, n={p['n']})" if p["n"] else ""
            {"beats": winners, "loses": losers, "level": level}.get(p["verdict"], []).append(text)
    lines.append("Best baseline (higher mean validation accuracy): " + "; ".join(bests) + ".")
    lines.append("")
    if winners:
        lines.append("**Winner(s)**: " + "; ".join(winners) + " beat(s) the best baseline (95% interval above 0).")
    elif level or losers:
        lines.append("**No method beats the best baseline** at the confirm tier: every interval includes 0"
                     + (" or lies below it." if losers else "."))  # fmt: skip
    else:
        lines.append("No verdict yet: fewer than 2 paired seeds per method.")
    if losers:
        lines.append("Below the best baseline: " + "; ".join(losers) + ".")
    return lines + [""]


def _question(variant: str) -> str:
    if variant.endswith(DISTILL):
        return QUESTIONS["distill"]
    return next((q for prefix, q in QUESTIONS.items() if variant.startswith(prefix)), "")


def _control_lines(entries: list[dict[str, Any]], model: str) -> list[str]:
    """Each control and distilled variant against the row it copies (``vs_ref``), per setting."""
    order = _settings_of(entries, "confirm", model)  # higher targets first, then the starts' order
    found = sorted((e for e in entries if e["tier"] == "confirm" and e["model"] == model and e.get("vs_ref")),
                   key=lambda e: (order.index((e["start"], e["target"])), _variant_order(e["variant"])))  # fmt: skip
    if not found:
        return []
    lines = [f"## Controls and distillation · {model}", "",
             "Each row against the row it copies, paired per seed: Δ = variant − reference (percentage points), "
             "95% t-interval, wins/pairs, verdict.", "",
             "| setting | variant | reference | Δ val (pp) | Δ test (pp) | the question |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for e in found:
        ref = e["vs_ref"]
        cells = [_label((e["start"], e["target"])), e["variant"], ref["reference"], _paired_cell(ref["val"]),
                 _paired_cell(ref["test"]), _question(e["variant"])]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _dev_lines(entries: list[dict[str, Any]], model: str) -> list[str]:
    settings = _settings_of(entries, "dev", model)
    if not settings:
        return []
    variants = sorted({e["variant"] for e in entries if e["tier"] == "dev" and e["model"] == model},
                      key=_variant_order)  # fmt: skip
    head = ["variant"]
    for s in settings:
        head += [f"{_label(s)} val %", f"{_label(s)} Δ val (pp)"]
    for s in settings:
        head += [f"{_label(s)} test %", f"{_label(s)} Δ test (pp)"]
    for s in settings:
        head += [f"{_label(s)} epochs final", f"{_label(s)} FLOPs↓ in band, verified"]
    lines = [f"## Dev tier ablations · {model}", "",
             "Chosen on validation accuracy (first columns); test accuracy after, for the record. Δ: paired per-seed "
             "difference vs the best baseline, 95% t-interval, wins/pairs, verdict.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]  # fmt: skip
    for v in variants:
        row = [v]
        found = [_lookup(entries, "dev", model, s, v) for s in settings]
        for e in found:
            row += [_acc_cell(e, "val"), "best baseline" if e and e.get("best_baseline") == v else _diff_cell(e, "val")]
        for e in found:
            row += [_acc_cell(e), "best baseline" if e and e.get("best_baseline") == v else _diff_cell(e, "test")]
        for e in found:
            ef = "" if e is None else "–" if e["epochs_final_mean"] is None else f"{e['epochs_final_mean']:.1f}"
            row += [ef, _band_cell(e)]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    beats = {}
    for e in entries:
        if (
            e["tier"] == "dev"
            and e["model"] == model
            and e.get("vs_best")
            and family(e["variant"]) == "main"
            and e["vs_best"]["val"]["verdict"] == "beats"
        ):
            beats.setdefault(e["variant"], []).append(_label((e["start"], e["target"])))
    lines.append("On validation, beat the best baseline: "
                 + ("; ".join(f"{v} ({', '.join(where)})" for v, where in sorted(beats.items(),
                    key=lambda kv: _variant_order(kv[0]))) if beats else "none") + ".")  # fmt: skip
    return lines + [""]


def render_markdown(result: dict[str, Any]) -> str:
    summary = result["summary"]
    entries = [e for e in summary if e["kind"] == "variant"]
    rows = result["rows"]
    models = list(dict.fromkeys(r["model"] for r in sorted(rows, key=_sort_key))) or ["cifar:resnet20"]
    lines = ["# Pruning methods: protocol study", ""]
    for model in models:
        lines += _confirm_lines(entries, model)
        lines += _control_lines(entries, model)
    for model in models:
        lines += _dev_lines(entries, model)
    noise = [e for e in summary if e["kind"] == "noise"]
    if noise:
        lines += ["## Noise floor", "",
                  "Binomial standard error of the test split at the mean accuracy, sqrt(p(1−p)/n_test), and the mean "
                  "seed std of the variants (sample std over seeds).", "",
                  "| tier | model | setting | mean top-1 % | n_test | binomial SE (pp) | mean seed std (pp) |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for e in noise:
            lines.append(f"| {e['tier']} | {e['model']} | {_label((e['start'], e['target']))} | {_pct(e['acc_mean'])} "
                         f"| {e['n_test']} | {_pct(e['binomial_se'])} | {_pct(e['mean_seed_std'])} |")  # fmt: skip
        lines.append("")
    lines += _method_lines(rows)
    lines += _agreement_lines(summary)
    cost = [e for e in summary if e["kind"] == "cost"]
    machine = result.get("machine") or {}
    if cost:
        lines += ["## Cost", "",
                  f"Machine (latest invocation): {machine.get('cpu')}, AVX-512 {machine.get('avx512')}, "
                  f"{machine.get('cores')} cores, torch {machine.get('torch')}"
                  + (f", GPU {machine['cuda']}" if machine.get("cuda") else "") + ".", "",
                  "| tier | rows | wall time (h) | CPU kind | devices |", "|---|---|---|---|---|"]  # fmt: skip
        for e in cost:
            lines.append(f"| {e['tier']} | {e['rows']} | {e['wall_s_total'] / 3600:.2f} | {', '.join(e['cpu_kinds'])} "
                         f"| {', '.join(e['devices'])} |")  # fmt: skip
        lines.append("")
    lines += _overhead_lines(result.get("overhead") or {})
    failed = sorted((r for r in rows if r.get("error") or r.get("export_error")), key=_sort_key)
    if failed:
        lines += ["## Failed rows", ""]
        for r in failed:
            lines.append(f"- {r['tier']} {r['model']} {r['start']} {r['target']} {r['variant']} seed {r['seed']}: "
                         f"{r.get('error') or r.get('export_error')}")  # fmt: skip
        lines.append("")
    protocol = result["protocol"]
    lines += ["## Protocol", ""]
    for name, tier in protocol["tier_settings"].items():
        lines.append(f"- `{name}`: data `{tier['data']}`, train subset {tier['train_subset']}, validation "
                     f"{tier['val_subset']} (carved from train; every choice), test "
                     f"{'full split' if tier['test_subset'] is None else tier['test_subset']} (reported only); "
                     f"dense {tier['dense_epochs']} epochs at lr {tier['lr']['scratch']}; trained start E="
                     f"{tier['epochs']['trained']} at lr {tier['lr']['trained']}; scratch start E="
                     f"{tier['epochs']['scratch']} at lr {tier['lr']['scratch']}; "
                     f"batch {tier['batch_size']}")  # fmt: skip
    lines += [f"- one cosine schedule over pruning + fine-tuning (finetune_epochs 0), round_to {ROUND_TO}, "
              f"FLOPs drop band [target, target + {100 * BAND:.1f}%], every pruned row exported and verified "
              "(ONNX vs PyTorch)", "", "## Commands", ""]  # fmt: skip
    for inv in protocol["commands"]:
        lines += ["```", inv["command"], "```", f"({inv['created']}, {inv['device']})", ""]
    return "\n".join(lines) + "\n"


def _method_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Per ASTER row: fallback, freeze epoch, tau; per PSAP row: protection and re-admitted zero channels."""
    aster = sorted((r for r in rows if "aster_fallback" in r), key=_sort_key)
    psap = sorted((r for r in rows if r.get("psap_steps") is not None), key=_sort_key)
    lines: list[str] = []
    if aster:
        lines += ["## ASTER rows", "", "| tier | start | target | variant | seed | fallback | frozen at epoch | tau |",
                  "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in aster:
            tau = r.get("aster_tau")
            lines.append(f"| {r['tier']} | {r['start']} | {round(100 * r['target'])}% | {r['variant']} | {r['seed']} "
                         f"| {'**yes**' if r['aster_fallback'] else 'no'} | {r.get('aster_freeze_epoch')} | "
                         f"{'–' if tau is None else f'{tau:.4g}'} |")  # fmt: skip
        lines.append("")
        rates: dict[tuple, list[bool]] = {}
        for r in aster:
            rates.setdefault((r["tier"], r["start"], r["target"], r["variant"]), []).append(bool(r["aster_fallback"]))
        lines.append("Fallback rate: " + "; ".join(f"{t} {st} {round(100 * tg)}% {v}: {sum(f)}/{len(f)}"
                                                   for (t, st, tg, v), f in rates.items()) + ".")  # fmt: skip
        lines.append("")
    if psap:
        extra = sorted({k for r in psap for k in r if "readmitted_zero" in k})
        head = ["tier", "start", "target", "variant", "seed", "steps", "protected", "protected survived", *extra]
        lines += ["## PSAP rows", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in psap:
            cells = [r["tier"], r["start"], f"{round(100 * r['target'])}%", r["variant"], r["seed"], r["psap_steps"],
                     r.get("psap_protected"), r.get("psap_protected_survived"), *[r.get(k) for k in extra]]  # fmt: skip
            lines.append("| " + " | ".join("–" if c is None else str(c) for c in cells) + " |")
        lines.append("")
    return lines


def _overhead_lines(overhead: dict[str, Any]) -> list[str]:
    if not overhead:
        return []
    lines = ["## Epoch-time overhead (interleaved)", "",
             f"Plain vs the method's training epochs in turn (first of each a warm-up), median s/epoch; limit ratio "
             f"<= {OVERHEAD_LIMIT:.2f}.", "",
             "| model | method | epochs | steps/epoch | plain s | method s | ratio | passed | device |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for o in overhead.values():
        if o.get("error"):
            lines.append(f"| {o.get('model')} | {o.get('method')} | failed: {o['error']} |||||||")
            continue
        ratio = "–" if o["ratio"] is None else f"{o['ratio']:.3f}"
        lines.append(f"| {o['model']} | {o['method']} | {o['epochs']} | {o['steps_per_epoch']} | "
                     f"{o['plain_median_s']:.2f} | {o['method_median_s']:.2f} | {ratio} | "
                     f"{'yes' if o['passed'] else '**no**'} | {o['device']} |")  # fmt: skip
    return lines + [""]


# --------------------------------------------------------------------------------------------- results file

ROW_KEYS = ("data", "data_dir", "train_subset", "val_subset", "test_subset", "batch_size", "dense_epochs", "epochs",
            "lr", "materialize_early")  # fmt: skip


def _normal(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def load_results(path: Path) -> dict[str, Any] | None:
    """An existing results file, or None; BadInput when it is not a methods results file."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BadInput(f"--merge: {path} is not valid JSON ({one_line(exc)})") from None
    if not isinstance(data, dict) or data.get("kind") != KIND or data.get("schema") != SCHEMA \
            or not isinstance(data.get("rows"), list):  # fmt: skip
        raise BadInput(f"--merge: {path} is not a {KIND} results file (schema {SCHEMA})")
    return data


def check_same_tier(base: dict[str, Any], tier_name: str, tier: dict[str, Any], path: Path) -> None:
    old = ((base.get("protocol") or {}).get("tier_settings") or {}).get(tier_name)
    if old is None:
        return
    new = _normal(tier)
    differ = [k for k in ROW_KEYS if old.get(k) != new.get(k)]
    if differ:
        k = differ[0]
        raise BadInput(f"--merge: {path} was made with other {tier_name} tier settings ({k} {old.get(k)} vs "
                       f"{new.get(k)}{f', {len(differ)} differ' if len(differ) > 1 else ''}): rows would not be "
                       "comparable; use another --results")  # fmt: skip


def _protocol(tiers: dict[str, dict[str, Any]], tier_settings: dict[str, Any], commands: list[dict[str, Any]]
              ) -> dict[str, Any]:  # fmt: skip
    return {
        "data": "fashion-mnist: a seeded training subset (train_subset); validation carved from the train split "
                "(val_subset), used for every choice; the full 10k test split, reported, never used to choose",
        "model": "cifar:resnet20 (--models)",
        "starts": {"trained": "the dense checkpoint of the seed (dense_epochs from random init at the scratch lr, "
                              "cosine), shared by every method of that seed",
                   "scratch": "random init of the same seed (the dense reference's init); its dense row is the "
                              "same dense training (dense_epochs == scratch epochs)"},
        "schedule": "every method of a (tier, start): the same E epochs, one cosine LR schedule over pruning and "
                    "fine-tuning: PruneConfig(epochs=E, finetune_epochs=0, schedule='cosine')",
        "optimizer": "SGD momentum 0.9, nesterov, weight decay 5e-4; batch per tier; random crop + horizontal flip",
        "round_to": ROUND_TO, "flops_band": f"target <= flops_drop <= target + {BAND}",
        "verification": "every pruned row exported (compressor.jobs.export.export) and verified against PyTorch",
        "baselines": list(BASELINES),
        "best_baseline": "the baseline with the higher mean validation accuracy (last_val_acc) of the (tier, start, "
                         "target); never test",
        "paired": "per-seed test (and validation) accuracy difference method - best baseline over the seeds both "
                  "have; mean, 95% two-sided t-interval, wins k/n, verdict beats (lower end > 0) / loses (upper "
                  "end < 0) / level / n<2",
        "variants": VARIANTS, "controls": {k: {"copies": d, "options": o} for k, (d, o) in CONTROLS.items()},
        "distill": f"<variant>{DISTILL} adds distill=True (trained start only); {BEST_DISTILL}: the best baseline "
                   "(by validation, confirm 70% trained so far; l1 if none) + distill",
        "tiers": _normal(tiers), "tier_settings": tier_settings, "commands": commands,
    }  # fmt: skip


# --------------------------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None, *, tiers: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Run (or with --dry-run, plan) the study; return the results written to ``<results>.json`` (the plan for
    --dry-run). ``tiers`` replaces TIERS (tests)."""
    tiers = TIERS if tiers is None else tiers
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = build_parser()
    args = ap.parse_args(argv)
    _check_args(ap, args, tiers)
    tier_name, tier = args.tier, tiers[args.tier]
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    results = Path(args.results)
    json_path, md_path = results.with_name(results.name + ".json"), results.with_name(results.name + ".md")
    base = _load_base(json_path, args, tier_name, tier)
    done = {row_key(r): r for r in (base or {}).get("rows", []) if args.merge and not r.get("error")}
    plan = build_plan(tier_name, tier, args)
    for key in stale_rows(done, args.store) + ([r["key"] for r in plan] if args.redo else []):
        done.pop(key, None)
    missing = missing_options(dict.fromkeys(r["variant"] for r in plan))
    command = PROG + ("" if not argv else " " + shlex.join(argv))

    if args.dry_run:
        return _dry_run(command, plan, done, tier, missing)
    _check_missing(missing)
    check_writable_dir(results.parent, "--results")
    check_writable_dir(Path(args.out_dir), "--out-dir")
    check_writable_dir(Path(args.store), "--store")

    device = device_name(args.device)
    invocation = {"command": command, "tier": tier_name, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "device": device, "merge": bool(args.merge)}  # fmt: skip
    kept = [r for r in (base or {}).get("rows", []) if args.merge or r.get("tier") != tier_name]
    old_protocol = (base or {}).get("protocol") or {}
    commands = [c for c in old_protocol.get("commands", []) if args.merge or c.get("tier") != tier_name]
    commands.append(invocation)
    tier_settings = {**(old_protocol.get("tier_settings") or {}), tier_name: _normal(tier)}
    overhead: dict[str, Any] = dict((base or {}).get("overhead") or {})
    machine = machine_info()
    new_rows: list[dict[str, Any]] = []

    def write() -> dict[str, Any]:
        protocol = _protocol(tiers, tier_settings, commands)
        return _write_results(json_path, md_path, kept, new_rows, protocol, machine, overhead)

    if not args.overhead_only:
        _execute(plan, done, tier, args, new_rows, write, log)
    if args.overhead or args.overhead_only:
        _measure_overheads(args, tiers.get("confirm", tier), overhead, log)
    out = write()
    log(f"[methods] wrote {json_path} and {md_path}")
    if not args.quiet:
        print(md_path.read_text())
    return out


def _load_base(json_path: Path, args: argparse.Namespace, tier_name: str, tier: dict[str, Any]
               ) -> dict[str, Any] | None:  # fmt: skip
    """The existing results file (None when absent, or not a methods file and not --merge); checked for --merge."""
    try:
        base = load_results(json_path)
    except BadInput:
        if args.merge:
            raise
        base = None  # not a methods results file: a fresh study overwrites it
    if args.merge and base is not None:
        check_same_tier(base, tier_name, tier, json_path)
    return base


def _dry_run(command: str, plan: list[dict[str, Any]], done: dict[tuple, dict[str, Any]], tier: dict[str, Any],
             missing: dict[str, list[str]]) -> dict[str, Any]:  # fmt: skip
    """--dry-run: print the plan (one line per row) and the variants whose options are missing; return the plan."""
    print(f"{command}: {len(plan)} row(s), {sum(r['key'] in done for r in plan)} done")
    for i, r in enumerate(plan, 1):
        target = "-" if r["target"] is None else f"{round(100 * r['target'])}%"
        notes = [n for n in ("done" if r["key"] in done else "", "dependency" if r["added"] else "",
                             f"after {r['dep']}" if r["dep"] else "",
                             "resolved when it runs" if r["variant"] == BEST_DISTILL else "") if n]  # fmt: skip
        print(f"{i:4d}  {r['tier']:7s} {r['model']} {r['start']:7s} {target:>4s} {r['variant']:22s} seed "
              f"{r['seed']}  E={tier['dense_epochs'] if r['variant'] == DENSE else tier['epochs'][r['start']]}"
              + (f"  ({', '.join(notes)})" if notes else ""))  # fmt: skip
    for v, names in missing.items():
        print(f"note: {v}: PruneConfig has no option(s) {', '.join(names)} in this checkout")
    return {"plan": plan, "done": list(done), "missing_options": missing}


def _check_missing(missing: dict[str, list[str]]) -> None:
    """BadInput when a variant needs PruneConfig options this checkout lacks."""
    if missing:
        v, names = next(iter(missing.items()))
        raise BadInput(f"variant {v}: PruneConfig has no option(s) {', '.join(names)} in this checkout"
                       + (f" ({len(missing)} variants lack options)" if len(missing) > 1 else ""))  # fmt: skip


def _write_results(json_path: Path, md_path: Path, kept: list[dict[str, Any]], new_rows: list[dict[str, Any]],
                   protocol: dict[str, Any], machine: dict[str, Any], overhead: dict[str, Any]
                   ) -> dict[str, Any]:  # fmt: skip
    """The kept rows (less those run again) and the new ones, summarized; written to ``<results>.json``/``.md``."""
    fresh = {row_key(r) for r in new_rows}
    rows = sorted([r for r in kept if row_key(r) not in fresh] + new_rows, key=_sort_key)
    out = {"schema": SCHEMA, "kind": KIND, "protocol": protocol,
           "machine": machine, "rows": rows, "summary": summarize(rows), "overhead": overhead}  # fmt: skip
    out = _normal(out)
    write_json(json_path, out)
    write_text(md_path, render_markdown(out))
    return out


def _measure_overheads(args: argparse.Namespace, conf: dict[str, Any], overhead: dict[str, Any],
                       log: Callable[[str], None]) -> None:  # fmt: skip
    """The interleaved epoch-time measurement of each model and overhead method, in ``conf``'s (confirm) settings;
    a failed measurement is recorded as its error."""
    ns = argparse.Namespace(overhead_epochs=OVERHEAD_EPOCHS, seeds=[0], targets=[0.7],
                            scratch_lr=conf["lr"]["scratch"], device=args.device, batch_size=conf["batch_size"],
                            data=conf["data"], data_dir=conf.get("data_dir"), train_subset=conf["train_subset"],
                            val_subset=conf["val_subset"], test_subset=conf["test_subset"],
                            quiet=args.quiet)  # fmt: skip
    for model in args.models:
        for method in OVERHEAD_METHODS:
            try:
                overhead[f"{model} · {method}"] = measure_overhead(model, ns, log, method)
            except Exception as exc:
                overhead[f"{model} · {method}"] = {"model": model, "method": method,
                                                   "error": one_line(exc, typed=True)}  # fmt: skip


def _execute(plan: list[dict[str, Any]], done: dict[tuple, dict[str, Any]], tier: dict[str, Any],
             args: argparse.Namespace, new_rows: list[dict[str, Any]], write: Callable[[], Any],
             log: Callable[[str], None]) -> None:  # fmt: skip
    """Run the plan's rows not done, in plan order as their dependencies allow, ``--jobs`` at a time; write the
    results after every finished row."""
    finished: dict[tuple, dict[str, Any]] = dict(done)  # key -> row (done before or finished now)
    planned = {r["key"] for r in plan}
    todo = [r for r in plan if r["key"] not in done]
    dense_results: dict[tuple, dict[str, Any]] = {}
    dense_need = _dense_need(todo)
    queue = _queue(todo, dense_need)
    executor: Any = _Inline() if args.jobs == 1 else ProcessPoolExecutor(
        max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
        initargs=(args.jobs,))  # fmt: skip
    running: dict[Future, tuple[str, Any, dict[str, Any]]] = {}
    with executor:
        try:
            while queue or running:
                submitted = True
                while submitted and len(running) < args.jobs:
                    submitted = _submit_next(queue, running, executor, plan, tier, args, dense_need, finished,
                                             dense_results, planned)  # fmt: skip
                if not running:
                    for kind, r in queue:  # cannot happen (dependencies come first in the plan); never hang
                        if kind == "row":
                            task = {**_task(r, tier, args), "error": "dependency never finished"}
                            _finish_row(run_row(task), finished, new_rows, write, log)
                    break
                _collect_done(running, dense_results, finished, new_rows, write, log)
        except BaseException:
            for future in running:
                future.cancel()
            raise


def _dense_need(todo: list[dict[str, Any]]) -> dict[tuple, list[str]]:
    """The dense trainings: the (model, seed)s of the trained rows to run and of the dense rows to run, with the
    starts whose dense rows they give."""
    dense_need: dict[tuple, list[str]] = {}
    for r in todo:
        if r["variant"] == DENSE or r["start"] == "trained":
            starts = dense_need.setdefault((r["model"], r["seed"]), [])
            if r["variant"] == DENSE:
                starts.append(r["start"])
    return dense_need


def _queue(todo: list[dict[str, Any]], dense_need: dict[tuple, list[str]]) -> list[tuple[str, Any]]:
    """The work items in plan order: ``("dense", (model, seed))`` before the first row that needs it, ``("row", r)``."""
    queue: list[tuple[str, Any]] = []
    queued_dense: set[tuple] = set()
    for r in todo:
        ms = (r["model"], r["seed"])
        if ms in dense_need and ms not in queued_dense:
            queued_dense.add(ms)
            queue.append(("dense", ms))
        if r["variant"] != DENSE:
            queue.append(("row", r))
    return queue


def _state(item: tuple[str, Any], dense_results: dict[tuple, dict[str, Any]], finished: dict[tuple, dict[str, Any]],
           planned: set[tuple]) -> str:  # fmt: skip
    """``ready`` when the item's dense checkpoint and dependency rows are finished, else ``wait``."""
    kind, r = item
    if kind == "dense":
        return "ready"
    if r["start"] == "trained" and (r["model"], r["seed"]) not in dense_results:
        return "wait"
    deps = []
    if r["dep"]:
        deps.append(_key(r["tier"], r["model"], r["start"], r["target"], r["dep"], r["seed"]))
    if r["variant"] == BEST_DISTILL:  # every planned baseline row of its (tier, model, start, target)
        deps += [k for k in planned if k[:4] == r["key"][:4] and k[4] in BASELINES]
    return "ready" if all(k in finished for k in deps) else "wait"


def _submit_next(queue: list[tuple[str, Any]], running: dict[Future, tuple[str, Any, dict[str, Any]]], executor: Any,
                 plan: list[dict[str, Any]], tier: dict[str, Any], args: argparse.Namespace,
                 dense_need: dict[tuple, list[str]], finished: dict[tuple, dict[str, Any]],
                 dense_results: dict[tuple, dict[str, Any]], planned: set[tuple]) -> bool:  # fmt: skip
    """Take the first ready item off ``queue`` and submit it (a row that resolves to one done or planned is
    dropped); False when no item is ready."""
    for item in queue:
        if _state(item, dense_results, finished, planned) != "ready":
            continue
        queue.remove(item)
        kind, r = item
        if kind == "dense":
            task = _dense_task(plan[0]["tier"], r[0], r[1], tier, args, dense_need[r])
            running[executor.submit(dense_job, task)] = ("dense", r, task)
        else:
            task = _prepare(r, tier, args, finished, dense_results, planned)
            if task is None:  # resolved to a row already done or planned
                return True
            running[executor.submit(run_row, task)] = ("row", r, task)
        return True
    return False


def _collect_done(running: dict[Future, tuple[str, Any, dict[str, Any]]], dense_results: dict[tuple, dict[str, Any]],
                  finished: dict[tuple, dict[str, Any]], new_rows: list[dict[str, Any]], write: Callable[[], Any],
                  log: Callable[[str], None]) -> None:  # fmt: skip
    """Wait for at least one submitted item; record what finished (a dense training gives its dense rows)."""
    ready, _ = wait(list(running), return_when=FIRST_COMPLETED)
    for future in ready:
        kind, r, task = running.pop(future)
        result = future.result()
        if kind == "dense":
            dense_results[r] = result
            state_msg = "failed: " + result["error"] if result["error"] else f"test acc {result['acc']:.4f}"
            log(f"[methods] dense {r[0]} seed {r[1]} ({task['epochs']} epochs): {state_msg}")
            rows = dense_rows(task, result, task["starts"])
            for row in rows:
                finished[row_key(row)] = row
            new_rows.extend(rows)
            write()
        else:
            _finish_row(result, finished, new_rows, write, log)


def _finish_row(row: dict[str, Any], finished: dict[tuple, dict[str, Any]], new_rows: list[dict[str, Any]],
                write: Callable[[], Any], log: Callable[[str], None]) -> None:  # fmt: skip
    finished[row_key(row)] = row
    new_rows.append(row)
    acc = "failed" if row.get("acc") is None else f"{row['acc']:.4f}"
    log(
        f"[methods] {row['tier']} {row['model']} {row['start']} {row['target']} {row['variant']} seed {row['seed']}: "
        f"acc {acc}, FLOPs drop {row.get('flops_drop')}" + (f" ({row['error']})" if row.get("error") else "")
    )
    write()


def _prepare(r: dict[str, Any], tier: dict[str, Any], args: argparse.Namespace, finished: dict[tuple, dict[str, Any]],
             dense_results: dict[tuple, dict[str, Any]], planned: set[tuple]) -> dict[str, Any] | None:  # fmt: skip
    """The task of a row whose dependencies finished: weights, a control's row-dependent option, the best
    baseline's name; None when it resolves to a row already done or planned. A failed dependency becomes the
    row's error (recorded without training)."""
    r = dict(r)
    if r["variant"] == BEST_DISTILL:
        group = [row for k, row in finished.items() if k[:4] == (r["tier"], r["model"], "trained", r["target"])]
        r["variant"] = f"{best_baseline(group) or BASELINES[0]}{DISTILL}"
        r["key"] = _key(r["tier"], r["model"], r["start"], r["target"], r["variant"], r["seed"])
        if r["key"] in finished or r["key"] in planned:
            return None
        planned.add(r["key"])
    task = _task(r, tier, args)
    task["options"] = variant_options(r["variant"])
    task["error"] = None
    if r["start"] == "trained":
        dense = dense_results[(r["model"], r["seed"])]
        if dense.get("error"):
            task["error"] = f"dense checkpoint failed: {dense['error']}"
        task["weights"], task["dense_sha"] = dense.get("path"), dense.get("dense_sha")
    if r["dep"] and task["error"] is None:
        dep = finished[_key(r["tier"], r["model"], r["start"], r["target"], r["dep"], r["seed"])]
        if dep.get("error"):
            task["error"] = f"{r['dep']} row failed: {dep['error']}"
        elif "prune_at" in task["options"]:
            if dep.get("epochs_final") is None:
                task["error"] = f"{r['dep']} row has no epochs_final (its report has no mask_final_epoch)"
            else:
                task["options"]["prune_at"] = _number(task["epochs"] - dep["epochs_final"])
        elif "allocation_from" in task["options"]:
            task["options"]["allocation_from"] = allocation_dir(dep, Path(task["out"]))
    return task


def allocation_dir(dep: dict[str, Any], out: Path) -> str:
    """A run directory whose ``report.json`` holds the dependency row's allocation: its own run directory, or (gone,
    e.g. in a fresh checkout) one written beside ``out`` from the row's recorded ``allocation``."""
    if (Path(dep["run_dir"]) / "report.json").is_file() or not dep.get("allocation"):
        return dep["run_dir"]  # without a recorded allocation, --allocation-from names the missing report
    where = out.with_name(out.name + "-allocation")
    groups = [{"root": root, "channels": channels, "kept": kept} for root, channels, kept in dep["allocation"]]
    where.mkdir(parents=True, exist_ok=True)
    write_json(where / "report.json", {"groups": groups})
    return str(where)


def stale_rows(done: dict[tuple, dict[str, Any]], store: str | Path) -> list[tuple]:
    """Done dense and trained-start rows whose recorded ``dense_sha`` is not the checkpoint now in the store: made
    from another (retrained, lost, or unrecorded) dense model, they do not pair with rows that start from this one,
    so they run again. A dense training is not bit-reproducible across machines."""
    shas: dict[tuple, str | None] = {}
    stale = []
    for key, row in done.items():
        if row.get("start") != "trained" and row.get("variant") != DENSE:
            continue
        ms = (row["tier"], row["model"], int(row["seed"]))
        if ms not in shas:
            path = dense_path(store, *ms)
            shas[ms] = file_sha(path) if path.is_file() else None
        if shas[ms] is None or row.get("dense_sha") != shas[ms]:
            stale.append(key)
    return stale


def cli(argv: Sequence[str] | None = None, *, tiers: dict[str, dict[str, Any]] | None = None) -> int:
    """``main`` with exit codes: 0, or 2 and one line on stderr for bad arguments or inputs."""
    try:
        main(argv, tiers=tiers)
    except BadInput as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    except Interrupted as exc:  # finished rows are written; --merge continues the study
        print(f"stopped by signal {exc.signum}: the finished rows are written; continue with --merge", file=sys.stderr)
        return 128 + exc.signum
    return 0


if __name__ == "__main__":
    sys.exit(cli())
