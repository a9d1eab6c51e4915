"""Accuracy study: pruning methods compared at the same FLOPs budget, epochs and LR schedule.

    python -m benchmarks.suites.accuracy                                   # fashion-mnist, cifar:resnet20, 50% and 70%
    python -m benchmarks.suites.accuracy --train-subset 10000 --epochs 10 --jobs 2
    python -m benchmarks.suites.accuracy --models cifar:resnet56 --merge   # add ResNet-56 rows (GPU)

For every model and seed a dense model is trained from random init (``--dense-epochs`` at ``--scratch-lr``);
then every variant (l1, bn-scale, SFP, the PSAP ablations; see VARIANTS) is run through ``compress prune``'s
code (``compressor.jobs.prune.prune``) from two starts:

* ``trained``: the dense checkpoint of that seed (the same one for every method), then ``--epochs`` epochs at
  ``--lr`` (cosine), plus ``--finetune-epochs`` of the materialized model;
* ``scratch``: random init (the same init as the dense reference), ``--epochs`` epochs at ``--scratch-lr``.

Top-1 is measured once, on the test split, on the materialized model after the last epoch: nothing is selected
on it (the pipeline's per-epoch evaluation uses the validation split and chooses nothing). FLOPs/params drops are
Torch-Pruning's counter on the materialized model; every pruned model is exported to ONNX and verified against
PyTorch. A separate interleaved measurement times plain vs PSAP training epochs (``--overhead-epochs``).
Writes ``<results>.json`` and ``<results>.md`` (atomically, after every finished row).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shlex
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from compressor.errors import BadInput, GateFailed, one_line
from compressor.runtime.atomic import atomic_path, write_json, write_text

if TYPE_CHECKING:
    from compressor.jobs.prune import PruneConfig
    from compressor.train import Progress, Trainer

SCHEMA = 1
RESULTS = Path(__file__).resolve().parents[1] / "results" / "accuracy"
TARGET_TOL = 0.01  # a row meets its target when |flops_drop - target| <= 0.01
OVERHEAD_LIMIT = 1.10  # acceptance: a PSAP (ASTER update) epoch costs at most 10% more than a plain one
#: Options of the timed run per method. ASTER's x is lowered so that tau stays below the target in the timed
#: epochs: every one is then an update epoch (x scales tau's steps, not the work per batch).
#: PSAP's mask is never frozen in the timed run (freeze-at 1): every timed epoch takes its v2 steps.
OVERHEAD_OPTIONS: dict[str, dict[str, Any]] = {"psap": {"psap_freeze_at": 1.0}, "aster": {"aster_x": 1e-3}}
STARTS = ("trained", "scratch")

#: Pruning variants: name -> PruneConfig options. Adding a method is one line here.
VARIANTS: dict[str, dict[str, Any]] = {
    "l1": {"method": "l1"},
    "bn-scale": {"method": "bn-scale"},
    "sfp": {"method": "psap", "psap_adaptive": False, "psap_protect": False},  # PSAP, both components off
    "sfp-regrow": {"method": "psap", "psap_adaptive": False, "psap_protect": False, "psap_regrow": True},  # He et al.
    "psap-adaptive": {"method": "psap", "psap_protect": False},
    "psap-protect": {"method": "psap", "psap_adaptive": False},
    "psap": {"method": "psap"},
    # alternatives tried when PSAP-full trailed (chosen on the validation split, see docs/methods.md)
    "psap-g2": {"method": "psap", "psap_gamma": 2.0},  # the spec's gamma knob: protect fewer channels
    "psap-kept": {"method": "psap", "psap_sparsity_scope": "kept"},  # sparsity of the live filters only
    "psap-filter": {"method": "psap", "psap_sparsity": "filter", "psap_sparsity_scope": "kept"},
    "psap-e2": {"method": "psap", "prune_every": 2},  # schedule: a step every 2 epochs (less re-selection churn)
    "psap-const": {"method": "psap", "prune_schedule": "constant"},  # schedule: full target from the first step
    "aster": {"method": "aster"},  # L-BFGS sensitivity (the spec's default)
    "aster-gradient": {"method": "aster", "aster_sensitivity": "gradient"},  # H = I
    # sensitivity sweep on the 50% target (the default x = 0.01, tau0 = 1e-4 are the "aster" row)
    "aster-x0.03": {"method": "aster", "aster_x": 0.03},
    "aster-x0.1": {"method": "aster", "aster_x": 0.1},
    "aster-tau0.01": {"method": "aster", "aster_tau0": 0.01},
    "aster-tau0.3": {"method": "aster", "aster_tau0": 0.3},
}
DENSE = "dense"
#: Options that define what a row means: --merge refuses results made with other values.
STUDY_KEYS = ("data", "train_subset", "val_subset", "test_subset", "batch_size", "epochs", "dense_epochs",
              "finetune_epochs", "lr", "scratch_lr")  # fmt: skip


# --------------------------------------------------------------------------------------------- options


def _csv_of(kind: type, what: str) -> Callable[[str], list[Any]]:
    """An argparse type: a non-empty comma-separated list of ``kind`` values."""

    def parse(text: str) -> list[Any]:
        try:
            values = [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}") from None
        if not values:
            raise argparse.ArgumentTypeError("expected at least one value")
        return values

    return parse


_floats = _csv_of(float, "numbers")
_ints = _csv_of(int, "integers")


def _names(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values:
        raise argparse.ArgumentTypeError("expected at least one name")
    return values


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.suites.accuracy", description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=_names, default=["cifar:resnet20"], help="comma list of model specs")
    ap.add_argument("--data", default="fashion-mnist", help="data spec (default fashion-mnist)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--train-subset", type=_positive, default=None, help="seeded subset of the train split")
    ap.add_argument("--val-subset", type=_positive, default=5000)
    ap.add_argument("--test-subset", type=_positive, default=None, help="default: the full test split")
    ap.add_argument("--batch-size", type=_positive, default=128)
    ap.add_argument("--epochs", type=_positive, default=20, help="epochs of every method (both starts)")
    ap.add_argument("--dense-epochs", type=_positive, default=None, help="dense checkpoint epochs (default --epochs)")
    ap.add_argument("--finetune-epochs", type=_non_negative, default=0, help="fine-tuning of the pruned model")
    ap.add_argument("--lr", type=float, default=0.02, help="LR of the methods from the trained checkpoint")
    ap.add_argument("--scratch-lr", type=float, default=0.1, help="LR from random init (dense and methods)")
    ap.add_argument("--targets", type=_floats, default=[0.5, 0.7], help="FLOPs drop targets")
    ap.add_argument("--seeds", type=_ints, default=[0], help="seeds of the rows with a target below --high-from")
    ap.add_argument("--seeds-high", type=_ints, default=[0, 1], help="seeds of the rows with target >= --high-from")
    ap.add_argument("--high-from", type=float, default=0.7)
    ap.add_argument("--starts", type=_names, default=list(STARTS), help="trained,scratch")
    ap.add_argument("--only", type=_names, default=None, help=f"variants to run: {DENSE},{','.join(VARIANTS)}")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--jobs", type=_positive, default=1, help="worker processes for independent runs")
    ap.add_argument("--overhead-epochs", type=_non_negative, default=2, help="interleaved timing epochs (0: skip)")
    ap.add_argument("--overhead-methods", type=_names, default=["psap", "aster"], help="methods timed vs plain")
    ap.add_argument(
        "--overhead-only",
        action="store_true",
        help="run only the interleaved overhead measurement (with --merge: into the existing results)",
    )
    ap.add_argument("--out-dir", default="runs/accuracy", help="run directories")
    ap.add_argument("--results", default=str(RESULTS), help="path prefix of the .json and .md results")
    ap.add_argument("--merge", action="store_true", help="merge the rows into the existing results JSON")
    ap.add_argument("--reuse-dense", action="store_true",
                    help="reuse dense checkpoints already in --out-dir trained with the same settings")  # fmt: skip
    ap.add_argument("--quiet", action="store_true")
    return ap


def _check_args(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.dense_epochs is None:
        args.dense_epochs = args.epochs
    for t in args.targets:
        if not 0.0 < t < 1.0:
            ap.error(f"--targets: {t} is not a drop fraction strictly between 0 and 1")
    args.targets = sorted(set(args.targets))
    args.starts = list(dict.fromkeys(args.starts))
    bad = [s for s in args.starts if s not in STARTS]
    if bad:
        ap.error(f"--starts: unknown {bad}; choose from {', '.join(STARTS)}")
    known = [DENSE, *VARIANTS]
    if args.only is not None:
        bad = [v for v in args.only if v not in known]
        if bad:
            ap.error(f"--only: unknown variant(s) {bad}; choose from {', '.join(known)}")


def seeds_for(target: float, args: argparse.Namespace) -> list[int]:
    return list(dict.fromkeys(args.seeds_high if target >= args.high_from - 1e-9 else args.seeds))


def device_name(device: str = "auto") -> str:
    if device != "cpu" and torch.cuda.is_available():
        index = torch.device(device).index if device.startswith("cuda:") else None
        return torch.cuda.get_device_name(index)
    cpu = platform.processor() or platform.machine()
    return f"cpu ({cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


# --------------------------------------------------------------------------------------------- work units
# Module-level functions of plain dicts: they run in-process (--jobs 1) or in spawned workers.


def _init_worker(jobs: int) -> None:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // jobs))


def _data(task: dict[str, Any], seed: int) -> Any:
    from compressor.data import load_data

    return load_data(task["data"], data_dir=task["data_dir"], batch_size=task["batch_size"],
                     train_subset=task["train_subset"], val_subset=task["val_subset"],
                     test_subset=task["test_subset"], seed=seed)  # fmt: skip


def _dense_key(task: dict[str, Any]) -> dict[str, Any]:
    keys = ("model", "data", "train_subset", "val_subset", "test_subset", "batch_size", "epochs", "lr", "seed")
    return {k: task[k] for k in keys}


def train_dense(task: dict[str, Any]) -> dict[str, Any]:
    """Train the dense model of one (model, seed) from random init; save ``{"state_dict": ...}`` to task["path"]."""
    from compressor.models import build_model
    from compressor.train import Progress, TrainConfig, Trainer, evaluate, pick_device, seed_everything
    from exporters.onnx import export_onnx

    path = Path(task["path"])
    meta_path = path.with_suffix(".json")
    if task.get("reuse") and path.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("key") == _dense_key(task):
            return {**meta["result"], "path": str(path), "reused": True}  # the file here (moved or re-cloned)
    seed_everything(task["seed"])  # the same sequence as prune(): seed, data, model -> the same random init
    data = _data(task, task["seed"])
    model = build_model(task["model"], num_classes=data.num_classes, in_channels=data.input_shape[0])
    device = pick_device(task["device"])
    progress = Progress(enabled=not task["quiet"])
    progress.log(f"[accuracy] dense {task['model']} seed {task['seed']}: {task['epochs']} epochs")
    trainer = Trainer(model, data.train, data.val, TrainConfig(epochs=task["epochs"], lr=task["lr"], schedule="cosine"),
                      device=device, progress=progress, phase="dense")  # fmt: skip
    t0 = time.perf_counter()
    rows = trainer.fit()
    wall = time.perf_counter() - t0
    test = evaluate(model, data.test, device)
    model = model.cpu().eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save({"state_dict": model.state_dict()}, tmp)
    result: dict[str, Any] = {
        "model": task["model"], "seed": task["seed"], "epochs": task["epochs"], "lr": task["lr"],
        "acc": test["acc"], "val_acc": rows[-1].get("val_acc") if rows else None,
        "epoch_seconds": [float(r["seconds"]) for r in rows], "wall_s": round(wall, 1),
        "path": str(path), "data_sizes": dict(data.sizes), "device": device_name(task["device"]), "reused": False,
    }  # fmt: skip
    try:
        exported = export_onnx(model, tuple(data.input_shape), path.with_suffix(".onnx"))
        result["verified"] = bool(exported["verification"]["passed"])
        result["max_abs_diff"] = exported["verification"]["max_abs_diff"]
    except Exception as exc:  # recorded, not fatal: the accuracy is still valid
        result.update(verified=False, max_abs_diff=None, export_error=one_line(exc, typed=True))
    write_text(meta_path, json.dumps({"key": _dense_key(task), "result": result}, indent=2) + "\n")
    return result


def run_variant(task: dict[str, Any]) -> dict[str, Any]:
    """One pruning run through ``compressor.jobs.prune.prune`` + ONNX export; failures are recorded, not raised."""
    from compressor.jobs.prune import PruneConfig, prune

    out = Path(task["out"])
    shutil.rmtree(out, ignore_errors=True)  # no stale report.json from an earlier invocation
    cfg = PruneConfig(model=task["model"], out=str(out), data=task["data"], data_dir=task["data_dir"],
                      weights=task["weights"], from_scratch=task["start"] == "scratch",
                      target_flops=task["target"], epochs=task["epochs"], finetune_epochs=task["finetune_epochs"],
                      lr=task["lr"], schedule="cosine", batch_size=task["batch_size"],
                      train_subset=task["train_subset"], val_subset=task["val_subset"],
                      test_subset=task["test_subset"], seed=task["seed"], device=task["device"], overwrite=True,
                      quiet=task["quiet"], **VARIANTS[task["variant"]])  # fmt: skip
    row = _row_head(task)
    row.update(epochs=task["epochs"], finetune_epochs=task["finetune_epochs"], lr=task["lr"])
    report, error = None, None
    try:
        report = prune(cfg)
    except GateFailed as exc:  # the report is written before the target gate: keep its numbers
        error = one_line(exc, typed=True)
        if (out / "report.json").is_file():
            report = json.loads((out / "report.json").read_text())
    except Exception as exc:  # one failed row must not end the study
        error = one_line(exc, typed=True)
    row["error"] = error
    if report is not None:
        row.update(_report_fields(report, task["target"]))
    row.update(verified=None, max_abs_diff=None)
    if report is not None and (out / "pruned.pt").is_file():
        row.update(export_fields(out))
    row["device"] = device_name(task["device"])
    row["run_dir"] = str(out)
    return row


def export_fields(run_dir: Path) -> dict[str, Any]:
    """Export a finished run to ONNX and verify it against PyTorch: the row's verified / max_abs_diff (or the
    export error, recorded: a failed export must not end a study)."""
    from compressor.jobs.export import export

    try:
        exported = export(run_dir)
    except Exception as exc:
        return {"verified": False, "export_error": one_line(exc, typed=True)}
    check = exported["verification"]
    return {"verified": bool(check["passed"]), "max_abs_diff": check["max_abs_diff"]}


def _row_head(task: dict[str, Any]) -> dict[str, Any]:
    return {k: task[k] for k in ("model", "start", "target", "variant", "seed")}


def steady(seconds: Sequence[float]) -> list[float]:
    """Epoch times without the first epoch (warm-up: allocator, caches) when there are more."""
    return list(seconds[1:] if len(seconds) > 1 else seconds)


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def _report_fields(report: dict[str, Any], target: float) -> dict[str, Any]:
    history = report.get("history") or []
    prune_s = [float(h["seconds"]) for h in history if h.get("phase") == "prune"]
    finetune_s = [float(h["seconds"]) for h in history if h.get("phase") == "finetune"]
    log = (report.get("method") or {}).get("log") or []
    psap = report["method"]["name"] == "psap"
    flops_drop = float(report["flops_drop"])
    return {
        "acc": report["pruned"]["acc"],
        "start_acc": report["dense"]["acc"],  # the weights the method started from (random init for scratch)
        "flops_drop": flops_drop,
        "params_drop": float(report["params_drop"]),
        "target_met": abs(flops_drop - target) <= TARGET_TOL + 1e-12,
        "wall_s": report["seconds"],
        "epoch_s": _mean(steady(prune_s)),
        "finetune_epoch_s": _mean(steady(finetune_s)),
        "last_val_acc": next((h["val_acc"] for h in reversed(history) if "val_acc" in h), None),
        "psap_steps": len(log) if psap else None,
        "psap_protected": sum(int(r.get("protected", 0)) for r in log) if psap else None,
        "psap_protected_survived": sum(int(r.get("protected_survived", 0)) for r in log) if psap else None,
        **_aster_fields(log if report["method"]["name"] == "aster" else []),
    }


def _aster_fields(log: list[dict[str, Any]]) -> dict[str, Any]:
    """ASTER's outcome: where tau ended, when the mask froze and whether the fallback had to set tau."""
    if not log:
        return {}
    last = log[-1]
    fb = last.get("fallback")
    return {"aster_tau": last["tau"], "aster_freeze_epoch": last.get("freeze_epoch"), "aster_fallback": bool(fb),
            "aster_tau_before_fallback": fb["tau_before"] if fb else None}  # fmt: skip


# --------------------------------------------------------------------------------------------- overhead


def measure_overhead(model_spec: str, args: argparse.Namespace, progress: Callable[[str], None],
                     method_name: str = "psap") -> dict[str, Any]:  # fmt: skip
    """Interleaved per-epoch timing: plain training vs a method's training (from scratch), same model, data, batch.

    Both run through ``Trainer.fit`` one epoch at a time (plain, method, plain, method, ...). The first epoch of each
    is a warm-up and not counted (PSAP's first epoch has no gradient pulse yet: it is the cheap one). Seconds are the
    Trainer's per-epoch ``seconds``: the training loop plus the method's epoch-end work, no validation.
    """
    from compressor.jobs.prune import PruneConfig
    from compressor.train import Progress, pick_device

    k = args.overhead_epochs
    seed = args.seeds[0]
    target = max(args.targets)
    cfg = PruneConfig(model=model_spec, out="", method=method_name, from_scratch=True, target_flops=target,
                      seed=seed, epochs=k + 1, lr=args.scratch_lr, **OVERHEAD_OPTIONS.get(method_name, {}))  # fmt: skip
    device = pick_device(args.device)
    quiet = Progress(enabled=False)
    task = _common_task(args)
    trainers = _overhead_trainers(model_spec, method_name, cfg, args, task, device, quiet)
    seconds = _interleaved_seconds(trainers, k, model_spec, method_name, progress)
    plain, timed = statistics.median(seconds["plain"]), statistics.median(seconds[method_name])
    ratio = timed / plain if plain > 0 else None
    return {
        "model": model_spec, "method": method_name, "options": OVERHEAD_OPTIONS.get(method_name, {}), "epochs": k,
        "warmup_epochs": 1, "target": target, "seed": seed,
        "batch_size": args.batch_size, "steps_per_epoch": len(trainers["plain"].train_loader),
        "plain_epoch_s": seconds["plain"], "method_epoch_s": seconds[method_name],
        "plain_median_s": plain, "method_median_s": timed, "ratio": ratio,
        "limit": OVERHEAD_LIMIT, "passed": ratio is not None and ratio <= OVERHEAD_LIMIT,
        "device": device_name(args.device),
    }  # fmt: skip


def _overhead_trainers(model_spec: str, method_name: str, cfg: PruneConfig, args: argparse.Namespace,
                       task: dict[str, Any], device: torch.device, quiet: Progress) -> dict[str, Trainer]:  # fmt: skip
    """One-epoch Trainers, ``plain`` and ``method_name``, on the same init and batches (seeded alike)."""
    from compressor.budget import Budget
    from compressor.graph import PruningGraph
    from compressor.methods import Context, build_method
    from compressor.methods.registry import options_for
    from compressor.models import build_model
    from compressor.train import TrainConfig, Trainer, seed_everything

    k, seed, target = args.overhead_epochs, args.seeds[0], max(args.targets)
    trainers = {}
    for name in ("plain", method_name):
        seed_everything(seed)  # the same init and batches for both
        data = _data(task, seed)
        model = build_model(model_spec, num_classes=data.num_classes, in_channels=data.input_shape[0])
        # constant LR: fit() is driven one epoch at a time below, and the LR value does not change the cost
        train_cfg = TrainConfig(epochs=1, lr=args.scratch_lr, schedule="step", step_milestones=())
        if name == "plain":
            trainers[name] = Trainer(model, data.train, None, train_cfg, device=device, progress=quiet, phase=name)
            continue
        # as compressor.jobs.prune.prune builds it
        graph = PruningGraph(model, torch.zeros(1, *data.input_shape), round_to=cfg.round_to, arch=model_spec)
        budget = Budget(graph)
        method = build_method(method_name, **options_for(method_name, cfg.method_options()))
        model.to(device)
        ctx = Context(model=model, graph=graph, budget=budget, target=target, metric="flops", epochs=k + 1,
                      steps_per_epoch=len(data.train), train_loader=data.train, loss_fn=torch.nn.CrossEntropyLoss(),
                      device=device, max_ratio=cfg.max_layer_ratio, lr=cfg.lr, log=lambda _msg: None)  # fmt: skip
        method.setup(graph, ctx)
        trainers[name] = Trainer(model, data.train, None, train_cfg, method=method, device=device, progress=quiet,
                                 phase=name)  # fmt: skip
        ctx.optimizer = trainers[name].optimizer
    return trainers


def _interleaved_seconds(trainers: dict[str, Trainer], k: int, model_spec: str, method_name: str,
                         progress: Callable[[str], None]) -> dict[str, list[float]]:  # fmt: skip
    """``k + 1`` epochs of each trainer in turn; the seconds of every epoch after the first (the warm-up)."""
    seconds: dict[str, list[float]] = {"plain": [], method_name: []}
    for epoch in range(k + 1):
        for name, trainer in trainers.items():
            trainer.start_epoch, trainer.cfg.epochs = epoch, epoch + 1
            trainer.fit()
            if epoch > 0:
                seconds[name].append(float(trainer.history[-1]["seconds"]))
        if epoch > 0:
            progress(f"[accuracy] overhead {model_spec} epoch {epoch}/{k}: plain {seconds['plain'][-1]:.2f}s, "
                     f"{method_name} {seconds[method_name][-1]:.2f}s")  # fmt: skip
    return seconds


# --------------------------------------------------------------------------------------------- scheduling


class _Inline:
    """An executor that runs each task at submit time, in this process (--jobs 1)."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # re-raised by future.result()
            future.set_exception(exc)
        return future

    def __enter__(self) -> _Inline:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def _common_task(args: argparse.Namespace) -> dict[str, Any]:
    return {"data": args.data, "data_dir": args.data_dir, "batch_size": args.batch_size,
            "train_subset": args.train_subset, "val_subset": args.val_subset, "test_subset": args.test_subset,
            "device": args.device, "quiet": args.quiet}  # fmt: skip


def _plan(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Dense trainings and variant runs of this invocation."""
    common, out_dir = _common_task(args), Path(args.out_dir)
    variants = [v for v in VARIANTS if args.only is None or v in args.only]
    seeds = list(dict.fromkeys(s for t in args.targets for s in seeds_for(t, args)))
    dense: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    for model in args.models:
        mdir = out_dir / _slug(model)
        epochs = {args.dense_epochs} if "trained" in args.starts else set()
        if "scratch" in args.starts:
            epochs.add(args.epochs)
        for seed in seeds:
            for e in sorted(epochs):
                path = mdir / "dense" / f"e{e}_s{seed}" / "dense.pt"
                starts = [s for s in args.starts if (args.dense_epochs if s == "trained" else args.epochs) == e]
                dense.append({**common, "model": model, "seed": seed, "epochs": e, "lr": args.scratch_lr,
                              "path": str(path), "starts": starts, "reuse": args.reuse_dense})  # fmt: skip
        for start in args.starts:
            for target in args.targets:
                for variant in variants:
                    for seed in seeds_for(target, args):
                        out = mdir / start / f"t{round(100 * target)}" / variant / f"s{seed}"
                        runs.append({**common, "model": model, "start": start, "target": target,
                                     "variant": variant, "seed": seed, "out": str(out), "weights": None,
                                     "epochs": args.epochs, "finetune_epochs": args.finetune_epochs,
                                     "lr": args.lr if start == "trained" else args.scratch_lr})  # fmt: skip
    return dense, runs


def _dense_rows(result: dict[str, Any], starts: Sequence[str]) -> list[dict[str, Any]]:
    rows = []
    for start in starts:
        rows.append({
            "model": result["model"], "start": start, "target": None, "variant": DENSE, "seed": result["seed"],
            "epochs": result["epochs"], "finetune_epochs": 0, "lr": result["lr"], "error": None,
            "acc": result["acc"], "dense_acc": result["acc"], "start_acc": None, "acc_drop": 0.0,
            "flops_drop": 0.0, "params_drop": 0.0, "target_met": None, "wall_s": result["wall_s"],
            "epoch_s": _mean(steady(result["epoch_seconds"])), "last_val_acc": result["val_acc"],
            "verified": result.get("verified"), "max_abs_diff": result.get("max_abs_diff"),
            "device": result["device"], "run_dir": str(Path(result["path"]).parent),
            "reused": result.get("reused", False),
        })  # fmt: skip
    return rows


def _sort_key(row: dict[str, Any]) -> tuple:
    order = [DENSE, *VARIANTS]
    start = STARTS.index(row["start"]) if row["start"] in STARTS else len(STARTS)
    variant = order.index(row["variant"]) if row["variant"] in order else len(order)
    target = -1.0 if row.get("target") is None else float(row["target"])
    return (row["model"], start, target, variant, row["variant"], int(row["seed"]))


def row_key(row: dict[str, Any]) -> tuple:
    target = None if row.get("target") is None else round(float(row["target"]), 4)
    return (row["model"], row["start"], target, row["variant"], int(row["seed"]))


def _finalize(rows: list[dict[str, Any]], dense: dict[tuple, dict[str, Any]]) -> None:
    """Fill the fields that need the dense results: the reference accuracy and the epoch-time overhead."""
    plain: dict[str, list[float]] = {}
    for res in dense.values():
        if not res.get("reused"):  # only epochs timed in this invocation
            plain.setdefault(res["model"], []).extend(steady(res["epoch_seconds"]))
    by_start = {(r["model"], r["start"], r["seed"]): r for r in rows if r["variant"] == DENSE}
    for row in rows:
        ref = by_start.get((row["model"], row["start"], row["seed"]))
        plain_s = _mean(plain.get(row["model"], []))
        if row["variant"] != DENSE and ref is not None:
            row["dense_acc"] = ref["acc"]
            row["acc_drop"] = ref["acc"] - row["acc"] if row.get("acc") is not None else None
        row["plain_epoch_s"] = plain_s
        row["epoch_overhead"] = row["epoch_s"] / plain_s if row.get("epoch_s") and plain_s else None


# --------------------------------------------------------------------------------------------- results


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean ± std over seeds per (model, start, target, variant). The dense reference gets one entry per target,
    over the seeds that the target's pruned rows used."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        if row["variant"] != DENSE:
            groups.setdefault((row["model"], row["start"], row["target"], row["variant"]), []).append(row)
    dense: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        if row["variant"] == DENSE:
            dense.setdefault((row["model"], row["start"]), []).append(row)
    targets: dict[tuple, set[int]] = {}
    for (model, start, target, _), members in groups.items():
        targets.setdefault((model, start, target), set()).update(int(r["seed"]) for r in members)
    for (model, start), members in dense.items():
        wanted = {t: s for (m, st, t), s in targets.items() if (m, st) == (model, start)}
        for target, seeds in (wanted or {None: {int(r["seed"]) for r in members}}).items():
            chosen = [r for r in members if int(r["seed"]) in seeds] or members
            groups[(model, start, target, DENSE)] = chosen
    out = []
    for (model, start, target, variant), members in groups.items():
        ok = [r for r in members if not r.get("error") and r.get("acc") is not None]
        accs = [float(r["acc"]) for r in ok]

        def mean_of(key: str, rs: list[dict[str, Any]] = ok) -> float | None:
            return _mean(float(r[key]) for r in rs if r.get(key) is not None)

        verified = [r.get("verified") for r in members if r.get("verified") is not None]
        out.append({
            "model": model, "start": start, "target": target, "variant": variant,
            "seeds": sorted(int(r["seed"]) for r in members), "n": len(accs), "failed": len(members) - len(ok),
            "acc_mean": _mean(accs), "acc_std": statistics.stdev(accs) if len(accs) > 1 else None,
            "acc_drop_mean": mean_of("acc_drop"), "flops_drop_mean": mean_of("flops_drop"),
            "params_drop_mean": mean_of("params_drop"), "wall_s_mean": mean_of("wall_s"),
            "epoch_overhead_mean": mean_of("epoch_overhead"),
            "target_met_all": None if variant == DENSE else all(bool(r.get("target_met")) for r in members),
            "verified_all": all(verified) if verified else None,
        })  # fmt: skip
    return out


def _pct(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f}%"


def _acc_cell(s: dict[str, Any] | None) -> str:
    if s is None:
        return ""
    if s["n"] == 0:
        return f"failed ({s['failed']})"
    text = f"{100 * s['acc_mean']:.2f}"
    if s["acc_std"] is not None:
        text += f" ± {100 * s['acc_std']:.2f}"
    text += f" (n={s['n']})"
    if s["failed"]:
        text += f", {s['failed']} failed"
    return text


def _flag(value: bool | None) -> str:
    return "–" if value is None else ("yes" if value else "**no**")


def _order(names: Iterable[str]) -> list[str]:
    known = [DENSE, *VARIANTS]
    return sorted(set(names), key=lambda v: (known.index(v) if v in known else len(known), v))


def render_markdown(result: dict[str, Any]) -> str:
    st = result["settings"]
    if not result["rows"]:  # --overhead-only into a results file of its own
        lines = ["# Epoch-time overhead", "", "Produced by:", ""]
        lines += _invocation_lines(result["invocations"])
        return "\n".join(lines + _overhead_lines(result)) + "\n"
    lines = ["# Accuracy study: pruning methods at the same FLOPs budget", ""]
    lines += ["Produced by" + (" (merged invocations, latest last):" if len(result["invocations"]) > 1 else ":"), ""]
    lines += _invocation_lines(result["invocations"])
    lines += _settings_lines(st)
    summary = result["summary"]
    rows = result["rows"]
    for model in dict.fromkeys(r["model"] for r in rows):
        for start in [name for name in STARTS if any(r["model"] == model and r["start"] == name for r in rows)]:
            lines += _section_lines(model, start, rows, summary)
    lines += _failed_lines(rows)
    lines += _aster_lines(result)
    lines += _overhead_lines(result)
    return "\n".join(lines)


def _invocation_lines(invocations: list[dict[str, Any]]) -> list[str]:
    """Each invocation's command (a code block), when and where it ran."""
    lines: list[str] = []
    for inv in invocations:
        lines += ["```", inv["command"], "```", f"({inv['created']}, {inv['device']})", ""]
    return lines


def _settings_lines(st: dict[str, Any]) -> list[str]:
    """The settings of the latest invocation as a Markdown list."""
    sizes = st.get("data_sizes") or {}
    full = st.get("full_train_size")
    train_note = (f"**reduced training set: {sizes.get('train')} of the {full} training images** (seeded subset)"
                  if st["train_subset"] else f"full training split ({sizes.get('train')} images)")  # fmt: skip
    return [
        "Settings (latest invocation):", "",
        f"- data `{st['data']}`: {train_note}; validation {sizes.get('val')} images (carved from train, used by "
        f"nothing but the per-epoch log); test {sizes.get('test')} images"
        + (" (**reduced test subset**)" if st["test_subset"] else " (the full test split)"),
        f"- dense checkpoint: {st['dense_epochs']} epochs from random init, lr {st['scratch_lr']}, cosine; "
        f"SGD momentum 0.9, nesterov, weight decay 5e-4, batch {st['batch_size']}",
        f"- `trained` start: every method from the same dense checkpoint (per seed), {st['epochs']} epochs at lr "
        f"{st['lr']}, cosine" + (f", then {st['finetune_epochs']} fine-tuning epochs" if st["finetune_epochs"] else ""),
        f"- `scratch` start: random init (the dense reference's init), {st['epochs']} epochs at lr {st['scratch_lr']}, "
        f"cosine; the dense row is the same model trained {st['epochs']} epochs without pruning",
        f"- seeds: {st['seeds']} for targets < {st['high_from']}, {st['seeds_high']} for targets >= {st['high_from']}",
        "- top-1 %: mean ± sample std over the seeds (n seeds), on the test split, of the materialized model after "
        "the last epoch (no selection on test); "
        "FLOPs (MACs) and params drops measured on the materialized model (Torch-Pruning counter); "
        "verified: ONNX export matches PyTorch (ORT-CPU)",
        "- wall s: the pruning run (training, materialization, evaluation; not the dense checkpoint's training); "
        "for the dense rows, the dense training",
        "- epoch ×: mean training-epoch seconds of the pruning phase / mean dense training-epoch seconds "
        "of the same model in the same invocation (first epoch of each run left out when it has more than one)"
        + (f" (**{st['jobs']} runs in parallel**: indicative only, see the interleaved measurement below)"
           if st["jobs"] > 1 else ""),
        "",
    ]  # fmt: skip


def _section_lines(model: str, start: str, rows: list[dict[str, Any]], summary: list[dict[str, Any]]) -> list[str]:
    """One (model, start) section: a table of variants by target, then the dense epochs and the devices."""
    entries = {(s["target"], s["variant"]): s for s in summary if s["model"] == model and s["start"] == start}
    targets: list[float | None] = sorted({t for t, _ in entries if t is not None}) or [None]
    variants = _order(v for _, v in entries)
    lines = [f"## {model}, `{start}` start", ""]
    head = ["variant"]
    for t in targets:
        p = "dense" if t is None else f"{round(100 * t)}%"
        head += [f"{p} top-1 %", f"{p} FLOPs↓", f"{p} params↓", f"{p} wall s", f"{p} epoch ×", f"{p} verified"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v in variants:
        lines.append("| " + " | ".join(_variant_cells(v, targets, entries)) + " |")
    lines.append("")
    these = [r for r in rows if r["model"] == model and r["start"] == start]
    dense_rows = [r for r in these if r["variant"] == DENSE]
    if dense_rows:
        lines.append(f"Dense: {dense_rows[0]['epochs']} epochs from random init (per seed).")
    devices = ", ".join(sorted({str(r.get("device")) for r in these}))
    lines += [f"Run on: {devices}.", ""]
    return lines


def _variant_cells(v: str, targets: list[float | None], entries: dict[tuple, dict[str, Any]]) -> list[str]:
    """A variant's table row: its name, then six cells per target (empty where it has no entry)."""
    cells = [v]
    for t in targets:
        s = entries.get((t, v)) or entries.get((None, v))
        if s is None:
            cells += [""] * 6
            continue
        overhead = (
            "1 (ref)"
            if v == DENSE
            else ("–" if s["epoch_overhead_mean"] is None else f"{s['epoch_overhead_mean']:.2f}")
        )
        flops = _pct(s["flops_drop_mean"]) + ("" if s["target_met_all"] in (None, True) else " (missed)")
        wall = "–" if s["wall_s_mean"] is None else f"{s['wall_s_mean']:.{0 if s['wall_s_mean'] >= 10 else 1}f}"
        cells += [_acc_cell(s), flops, _pct(s["params_drop_mean"]), wall, overhead,
                  _flag(s["verified_all"])]  # fmt: skip
    return cells


def _failed_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The rows that failed (run or export), with their error, as a Markdown section."""
    failed = [r for r in rows if r.get("error") or r.get("export_error")]
    lines: list[str] = []
    if failed:
        lines += ["## Failed rows", ""]
        for r in failed:
            lines.append(f"- {r['model']} {r['start']} {r['target']} {r['variant']} seed {r['seed']}: "
                         f"{r.get('error') or r.get('export_error')}")  # fmt: skip
        lines.append("")
    return lines


def _aster_lines(result: dict[str, Any]) -> list[str]:
    """Per ASTER run: did tau reach the target by adaptation, or did the fallback set it?"""
    rows = sorted((r for r in result["rows"] if "aster_fallback" in r), key=_sort_key)
    if not rows:
        return []
    lines = ["## ASTER: adaptation or fallback", "",
             "tau reached: the adapted threshold when the mask froze (before the fallback set it, if it fired). "
             "The fallback fires when the search epochs end below the target.", "",
             "| model | start | target | variant | seed | fallback | tau reached | frozen at epoch | top-1 % |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        tau = r["aster_tau_before_fallback"] if r["aster_fallback"] else r["aster_tau"]
        lines.append(f"| {r['model']} | {r['start']} | {round(100 * r['target'])}% | {r['variant']} | {r['seed']} | "
                     f"{'**yes**' if r['aster_fallback'] else 'no'} | {tau:.3f} | {r['aster_freeze_epoch']} | "
                     f"{100 * r['acc']:.2f} |")  # fmt: skip
    return lines + [""]


def _overhead_lines(result: dict[str, Any]) -> list[str]:
    """The interleaved epoch-time measurement as a Markdown section."""
    overhead = result.get("overhead") or {}
    lines: list[str] = []
    if overhead:
        lines += ["## Epoch-time overhead (interleaved measurement)", "",
                  "Plain training and the method's training (from scratch, all components on) of the same model, "
                  "data and batch, one epoch each in turn in one process; the first epoch of each is a warm-up; "
                  "median seconds per epoch (training loop + the method's epoch-end work). ASTER runs with x = 1e-3 "
                  "here so that every timed epoch is an update epoch (x scales tau's steps, not the work). "
                  f"Acceptance: ratio <= {OVERHEAD_LIMIT:.2f}.", "",
                  "| model | method | epochs | steps/epoch | plain s/epoch | method s/epoch | ratio | ≤ 1.10 "
                  "| device |",
                  "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for o in overhead.values():
            ratio = "–" if o["ratio"] is None else f"{o['ratio']:.3f}"
            lines.append(f"| {o['model']} | {o['method']} | {o['epochs']} | {o['steps_per_epoch']} | "
                         f"{o['plain_median_s']:.2f} | {o['method_median_s']:.2f} | {ratio} | {_flag(o['passed'])} | "
                         f"{o['device']} |")  # fmt: skip
        lines.append("")
    return lines


def overhead_key(model: str, method: str) -> str:
    return model if method == "psap" else f"{model} · {method}"  # psap entries keep their first key


def _migrate_overhead(entry: dict[str, Any]) -> dict[str, Any]:
    """Results written before the timing took a method name were PSAP's, with psap_* fields."""
    if "method" in entry:
        return entry
    renamed = {"psap_epoch_s": "method_epoch_s", "psap_median_s": "method_median_s"}
    return {"method": "psap", "options": {}, **{renamed.get(k, k): v for k, v in entry.items()}}


def _load_existing(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BadInput(f"--merge: {path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or not isinstance(data.get("rows"), list):
        raise BadInput(f"--merge: {path} is not an accuracy results file (schema {SCHEMA})")
    data["overhead"] = {k: _migrate_overhead(v) for k, v in (data.get("overhead") or {}).items()}
    return data


# --------------------------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the study; return the results written to ``<results>.json``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = build_parser()
    args = ap.parse_args(argv)
    _check_args(ap, args)
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    results = Path(args.results)
    json_path, md_path = results.with_name(results.name + ".json"), results.with_name(results.name + ".md")
    base = _load_existing(json_path) if args.merge else None
    if base is not None:
        _check_same_settings(base, args, json_path)
    invocation = _invocation(args, argv)
    dense_tasks, run_tasks = ([], []) if args.overhead_only else _plan(args)
    rows: list[dict[str, Any]] = []
    dense: dict[tuple, dict[str, Any]] = {}
    overhead: dict[str, Any] = {}

    def write() -> dict[str, Any]:
        return _write_results(json_path, md_path, base, invocation, rows, dense, overhead)

    _run_all(args, dense_tasks, run_tasks, rows, dense, log, write)
    if args.overhead_epochs:
        for model in args.models:
            for name in args.overhead_methods:
                overhead[overhead_key(model, name)] = measure_overhead(model, args, log, name)
    out = write()
    if not args.quiet:
        print(md_path.read_text())
    return out


def _check_same_settings(base: dict[str, Any], args: argparse.Namespace, json_path: Path) -> None:
    """BadInput when ``--merge`` would mix rows made with other study settings."""
    old = base.get("settings") or {}
    differ = [k for k in STUDY_KEYS if k in old and old[k] != getattr(args, k)]
    if differ:
        raise BadInput(
            f"--merge: {json_path} was made with other settings ("
            + ", ".join(f"--{k.replace('_', '-')} {old[k]} vs {getattr(args, k)}" for k in differ)
            + "): rows would not be comparable; rerun with the same settings or write to another --results"
        )


def _invocation(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    """This invocation: command, time, device and settings (with the data sizes); loads the data spec first."""
    from compressor.data import load_data

    # Fail fast on the data spec; the full train size is for stating a reduced subset.
    full = load_data(args.data, data_dir=args.data_dir, batch_size=args.batch_size, seed=args.seeds[0])
    command = "python -m benchmarks.suites.accuracy" + ("" if not argv else " " + shlex.join(argv))
    device = device_name(args.device)
    settings = dict(vars(args))
    settings["full_train_size"] = full.sizes["train"]
    subsets = {"train": args.train_subset, "val": args.val_subset, "test": args.test_subset}
    settings["data_sizes"] = {k: min(n, subsets[k] or n) for k, n in full.sizes.items()}  # what load_data keeps
    return {"command": command, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "device": device,
            "settings": settings}  # fmt: skip


def _write_results(json_path: Path, md_path: Path, base: dict[str, Any] | None, invocation: dict[str, Any],
                   rows: list[dict[str, Any]], dense: dict[tuple, dict[str, Any]], overhead: dict[str, Any]
                   ) -> dict[str, Any]:  # fmt: skip
    """Merge this invocation's rows and overhead into ``base``; write ``<results>.json`` and ``.md``."""
    _finalize(rows, dense)
    merged = rows
    if base is not None:
        new = {row_key(r) for r in rows}
        merged = [r for r in base["rows"] if row_key(r) not in new] + rows
    merged = sorted(merged, key=_sort_key)
    over = {**((base or {}).get("overhead") or {}), **overhead}
    out = {"schema": SCHEMA, "command": invocation["command"], "created": invocation["created"],
           "device": invocation["device"], "settings": invocation["settings"],
           "invocations": [*((base or {}).get("invocations") or []), invocation],
           "rows": merged, "overhead": over, "summary": summarize(merged)}  # fmt: skip
    write_json(json_path, out)
    write_text(md_path, render_markdown(out))
    return out


def _run_all(args: argparse.Namespace, dense_tasks: list[dict[str, Any]], run_tasks: list[dict[str, Any]],
             rows: list[dict[str, Any]], dense: dict[tuple, dict[str, Any]], log: Callable[[str], None],
             write: Callable[[], Any]) -> None:  # fmt: skip
    """The dense trainings, then the runs, ``--jobs`` at a time; scratch runs do not wait for a dense training."""
    executor: Any = _Inline() if args.jobs == 1 else ProcessPoolExecutor(
        max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
        initargs=(args.jobs,))  # fmt: skip
    pending: dict[Future, tuple[str, dict[str, Any]]] = {}
    # Scratch runs need no checkpoint: workers take them at once; in-process they wait for the dense trainings.
    scratch = [t for t in run_tasks if t["start"] == "scratch"]
    with executor:
        try:
            for task in dense_tasks:
                pending[executor.submit(train_dense, task)] = ("dense", task)
            while pending or scratch:
                if scratch and (args.jobs > 1 or not any(kind == "dense" for kind, _ in pending.values())):
                    for task in scratch:
                        pending[executor.submit(run_variant, task)] = ("run", task)
                    scratch = []
                _collect(pending, executor, run_tasks, rows, dense, log, write)
        except BaseException:
            for future in pending:
                future.cancel()
            raise


def _collect(pending: dict[Future, tuple[str, dict[str, Any]]], executor: Any, run_tasks: list[dict[str, Any]],
             rows: list[dict[str, Any]], dense: dict[tuple, dict[str, Any]], log: Callable[[str], None],
             write: Callable[[], Any]) -> None:  # fmt: skip
    """Handle the futures that finished; a finished dense training releases the trained-start runs of its seed."""
    done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
    for future in done:
        kind, task = pending.pop(future)
        if kind == "dense":
            res = future.result()  # a dense training that fails ends the study: nothing else is valid
            dense[(task["model"], task["seed"], task["epochs"])] = res
            rows.extend(_dense_rows(res, task["starts"]))
            log(f"[accuracy] dense {task['model']} seed {task['seed']} ({task['epochs']} epochs): "
                f"test acc {res['acc']:.4f}")  # fmt: skip
            if "trained" in task["starts"]:
                for run in run_tasks:
                    if (run["start"], run["model"], run["seed"]) == ("trained", task["model"], task["seed"]):
                        run["weights"] = res["path"]
                        pending[executor.submit(run_variant, run)] = ("run", run)
        else:
            row = future.result()
            rows.append(row)
            acc = "failed" if row.get("acc") is None else f"{row['acc']:.4f}"
            log(f"[accuracy] {row['model']} {row['start']} {row['target']} {row['variant']} seed "
                f"{row['seed']}: acc {acc}, FLOPs drop {row.get('flops_drop')}"
                + (f" ({row['error']})" if row.get("error") else ""))  # fmt: skip
        write()


if __name__ == "__main__":
    try:
        main()
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
