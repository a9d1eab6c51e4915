"""The prune and export jobs behind the CLI: validate everything first, then work, then write atomically."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import yaml

from compressor import tool_version
from compressor.api import Pruner
from compressor.artifacts import build_from_spec, load_pruned
from compressor.budget import Budget
from compressor.config import parse_patterns, parse_ratios
from compressor.data import load_data
from compressor.errors import BadInput, GateFailed, one_line
from compressor.graph import PruningGraph, count_ops_and_params, pruned_payload
from compressor.jobs.report import build_report, group_table, plot_kept_ratios, plot_threshold, render_markdown
from compressor.methods import Method, build_method, method_parameters
from compressor.models import init_bn_gamma, load_weights, read_checkpoint
from compressor.runtime import checkpoint, distributed
from compressor.runtime.atomic import atomic_path, check_writable_dir, write_json, write_text
from compressor.search.latency_alloc import ALLOCATION_FILE, allocation_for_run, check_allocation
from compressor.search.latency_target import LatencySpec, final_record, load_search, save_search, search_for_run
from compressor.train import Progress, TrainConfig, Trainer, evaluate, frozen_copy, pick_device, seed_everything

TARGET_TOL = 0.01  # gate: the materialized drop may fall short of the target by at most 1% (absolute)


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "yes", "1", "on"):
        return True
    if str(value).lower() in ("false", "no", "0", "off"):
        return False
    raise ValueError(value)


def _to_int(value: Any) -> int:
    if isinstance(value, bool) or float(value) != int(float(value)):
        raise ValueError(value)
    return int(float(value))


_COERCE: dict[str, Any] = {"int": _to_int, "float": float, "str": str, "bool": _to_bool}


@dataclass
class PruneConfig:
    """Every option of ``compress prune`` (the CLI and YAML recipes fill it)."""

    model: str
    out: str
    data: str = "fashion-mnist"
    method: str = "psap"
    weights: str | None = None
    from_scratch: bool = False
    target_flops: float | None = None
    target_params: float | None = None
    target_latency: str | None = None
    latency_provider: str = "cpu"
    latency_batch: int = 1
    latency_threads: int | None = None
    latency_tolerance: float = 0.1
    latency_duration: float = 1.0
    allocation: str = "uniform"
    allocation_power: float = 2.0
    epochs: int = 0
    pretrain_epochs: int = 0
    steps: int = 1
    prune_every: int = 1
    prune_schedule: str | None = None
    prune_at: int = 0
    allocation_from: str | None = None
    finetune_epochs: int = 0
    finetune_lr: float | None = None
    materialize_early: bool = False
    round_to: int = 8
    max_layer_ratio: float = 0.8
    lr: float = 0.05
    pretrain_lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    distill: bool = False
    distill_temperature: float = 4.0
    distill_alpha: float = 0.5
    batch_size: int = 128
    data_dir: str | None = None
    download: bool = False
    train_subset: int | None = None
    val_subset: int | None = None
    test_subset: int | None = None
    image_size: int | None = None
    num_classes: int | None = None
    in_channels: int | None = None
    trust_code: bool = False
    seed: int = 0
    device: str = "auto"
    resume: bool = False
    checkpoint_every: int = 0
    overwrite: bool = False
    quiet: bool = False
    psap_beta: float = 0.05
    psap_sparsity: str = "weight"
    psap_beta_filter: float = 0.5
    psap_pulse_iters: int = 20
    psap_gamma: float = 1.0
    psap_pulse: str = "bn"
    psap_adaptive: bool = True
    psap_protect: bool = True
    psap_restore: bool = True
    psap_zero_bn: bool = False
    psap_regrow: bool = False
    psap_sparsity_scope: str | None = None
    psap_variant: str = "v2"
    psap_mode: str | None = None
    psap_protection: str | None = None
    psap_readmit: str | None = None
    psap_score: str | None = None
    psap_freeze_at: float | None = None
    psap_steps_per_epoch: int | None = None
    psap_protect_steps: int | None = None
    psap_bn_batches: int = 20
    aster_sensitivity: str = "lbfgs"
    aster_tau0: float = 1e-4
    aster_x: float = 0.01
    aster_reduce: str = "max"
    aster_history: int = 10
    aster_update_every: int = 1
    aster_search_epochs: int | None = None
    aster_loss: str = "sum"
    aster_eps: float = 1e-12
    aster_variant: str = "v2"
    aster_search: str | None = None
    aster_eta: str | None = None
    aster_eta0: float = 0.1
    aster_prunes_per_epoch: int | None = None
    aster_normalize: bool = False
    aster_curvature: str | None = None
    aster_curvature_every: int = 20
    max_prune_fraction: float = 0.8
    bn_init: float | None = None
    ignore: list[str] = field(default_factory=list)
    ignore_stem: bool = False
    group_max_ratio: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Recipes give raw YAML values: coerce each to its field's type or fail with BadInput."""
        self.ignore = parse_patterns(self.ignore)
        self.group_max_ratio = parse_ratios(self.group_max_ratio)
        for f in fields(self):
            value = getattr(self, f.name)
            kind = str(f.type).replace(" | None", "")
            if value is None or kind not in _COERCE:
                continue
            try:
                setattr(self, f.name, _COERCE[kind](value))
            except (TypeError, ValueError):
                raise BadInput(f"{f.name.replace('_', '-')}: expected {kind}, got {value!r}") from None

    def target(self) -> tuple[str, float]:
        """(metric, value): a FLOPs/params drop fraction, or ("latency", milliseconds) for --target-latency."""
        given = [(m, v) for m, v in (("flops", self.target_flops), ("params", self.target_params),
                                     ("latency", self.target_latency)) if v is not None]  # fmt: skip
        if len(given) != 1:
            raise BadInput("give exactly one of --target-flops, --target-params and --target-latency")
        metric, value = given[0]
        if metric == "latency":
            return metric, LatencySpec.of(self).target_ms
        if not 0.0 < float(value) < 1.0:
            raise BadInput(f"--target-{metric} must be a drop fraction strictly between 0 and 1, got {value}")
        return metric, float(value)

    def check(self) -> None:
        """Options that contradict each other are BadInput before any work."""
        check_allocation(self.allocation, self.method)
        if self.from_scratch and self.weights:
            raise BadInput("--from-scratch starts from random weights: drop --weights")
        if self.from_scratch and self.pretrain_epochs:
            raise BadInput("--from-scratch prunes during training from random init: drop --pretrain-epochs")
        if self.from_scratch and self.epochs < 1:
            raise BadInput("--from-scratch needs --epochs >= 1")
        for name in ("epochs", "pretrain_epochs", "finetune_epochs", "psap_pulse_iters", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise BadInput(f"--{name.replace('_', '-')} must be >= 0")
        if self.prune_every < 1 or self.steps < 1:
            raise BadInput("--prune-every and --steps must be >= 1")
        if (self.prune_at or self.allocation_from) and self.method in ("psap", "aster"):
            raise BadInput(f"--prune-at and --allocation-from are for the one-shot baselines, not {self.method}")
        if not 0 <= self.prune_at < max(self.epochs, 1):
            raise BadInput(f"--prune-at must be in [0, --epochs), got {self.prune_at} with --epochs {self.epochs}")
        if self.bn_init is not None and self.weights:
            raise BadInput("--bn-init initialises BN gamma of a randomly initialised model: drop --weights")
        for name in ("lr", "pretrain_lr", "finetune_lr"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise BadInput(f"--{name.replace('_', '-')} must be a finite number > 0, got {value}")
        if not (math.isfinite(self.momentum) and 0 <= self.momentum < 1):
            raise BadInput(f"--momentum must be in [0, 1), got {self.momentum}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise BadInput(f"--weight-decay must be a finite number >= 0, got {self.weight_decay}")
        if self.round_to < 1:
            raise BadInput(f"--round-to must be >= 1 (1: no rounding), got {self.round_to}")
        if not 0 < self.max_layer_ratio < 1:
            raise BadInput(f"--max-layer-ratio must be strictly between 0 and 1, got {self.max_layer_ratio}")
        if not 0 <= self.seed < 2**32:
            raise BadInput(f"--seed must be in 0..{2**32 - 1}, got {self.seed}")
        if self.distill and not (self.weights or self.pretrain_epochs > 0):
            raise BadInput("--distill learns from the trained dense model: give --weights or --pretrain-epochs"
                           + (" (not --from-scratch)" if self.from_scratch else ""))  # fmt: skip
        if not (math.isfinite(self.distill_temperature) and self.distill_temperature > 0):
            raise BadInput(f"--distill-temperature must be a finite number > 0, got {self.distill_temperature}")
        if not 0 <= self.distill_alpha <= 1:
            raise BadInput(f"--distill-alpha must be in [0, 1], got {self.distill_alpha}")
        for name in ("num_classes", "in_channels"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise BadInput(f"--{name.replace('_', '-')} must be >= 1, got {value}")

    def method_options(self) -> dict[str, Any]:
        """Every method option; each method's factory takes the ones it uses."""
        own = f"{self.method}_"  # psap_* options go to PSAP, aster_* to ASTER (both have e.g. a variant)
        prefixed = {k[len(own):]: getattr(self, k) for k in vars(self) if k.startswith(own)}
        return {"steps": self.steps, "seed": self.seed, "prune_every": self.prune_every, "prune_at": self.prune_at,
                "allocation_from": self.allocation_from,
                "from_scratch": self.from_scratch, "schedule": self.prune_schedule,
                "max_prune_fraction": self.max_prune_fraction, **prefixed}  # fmt: skip


def graph_options(cfg: PruneConfig) -> dict[str, Any]:
    """The PruningGraph keyword arguments a config sets (what is prunable and how counts round)."""
    return {"round_to": cfg.round_to, "arch": cfg.model, "ignore": cfg.ignore, "ignore_stem": cfg.ignore_stem,
            "group_max_ratio": cfg.group_max_ratio}  # fmt: skip


def model_spec(cfg: PruneConfig, num_classes: int, in_channels: int) -> dict[str, Any]:
    return {
        "model": cfg.model,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "trust_code": cfg.trust_code,
    }


def _prepare_out(out: Path, cfg: PruneConfig) -> None:
    """Refuse an output directory the run cannot use. ``--resume`` accepts a run killed at any point: one
    with a checkpoint, one started but not yet checkpointed (it starts over), a finished one (nothing to
    do), and a missing or empty directory (a run killed before it wrote anything)."""
    if out.exists() and not out.is_dir():
        raise BadInput(f"--out {out} exists and is not a directory")
    started = out.is_dir() and any(out.iterdir())
    if started and not (cfg.resume or cfg.overwrite):
        raise BadInput(f"--out {out} is not empty: pass --resume to continue it or --overwrite to replace it")
    if cfg.resume and started:
        ckpt = out / CHECKPOINT
        if not (ckpt.is_file() or checkpoint.previous(ckpt).is_file() or (out / "config.yaml").is_file()):
            raise BadInput(f"--resume: {out} holds no compress run (no {CHECKPOINT} or config.yaml)")
        _check_resume_config(out, cfg)
    check_writable_dir(out, "--out")  # now, not after an hour of training


CHECKPOINT = "checkpoint.pt"


# Options that may differ on --resume (where and how the run executes, not what it computes); every other option
# changes what a checkpoint means and is fixed: a new PruneConfig field is resume-fixed unless listed here.
RESUME_FREE = ("out", "latency_duration", "data_dir", "download", "trust_code", "device", "resume",
               "checkpoint_every", "overwrite", "quiet")  # fmt: skip
RESUME_FIXED = tuple(f.name for f in fields(PruneConfig) if f.name not in RESUME_FREE)


def _check_resume_config(out: Path, cfg: PruneConfig) -> None:
    saved_path = out / "config.yaml"
    try:
        saved = yaml.safe_load(saved_path.read_text()) if saved_path.is_file() else None
    except yaml.YAMLError:
        saved = None
    if not isinstance(saved, dict):
        raise BadInput(f"--resume: {saved_path} is missing or unreadable; cannot check the run's options")
    changed = [k for k in RESUME_FIXED if k in saved and saved[k] != getattr(cfg, k)]
    if changed:
        k = changed[0]
        raise BadInput(f"--resume: --{k.replace('_', '-')} was {saved[k]!r} in this run, now {getattr(cfg, k)!r}"
                       f" ({len(changed)} option(s) differ; resume with the run's options)")  # fmt: skip


def prune(cfg: PruneConfig) -> dict[str, Any]:
    """Train (optionally), prune to the target, materialize, evaluate and write the run directory.

    Under ``torchrun`` every rank runs this (see ``compressor.runtime.distributed``); only rank 0 writes.
    """
    metric, target = cfg.target()
    cfg.check()
    method = build_method(cfg.method, **cfg.method_options())  # an unknown name or option value is BadInput
    out = Path(cfg.out)
    _prepare_out(out, cfg)
    main = distributed.is_main()
    progress = Progress(enabled=not cfg.quiet and main)
    if cfg.resume and (finished := _finished_report(out)) is not None:
        progress.log(f"{out}: the run is complete; nothing to resume")
        return finished
    ranks = int(os.environ.get("WORLD_SIZE", 1)) if distributed.launched() else 1
    if cfg.batch_size % ranks:
        raise BadInput(f"--batch-size {cfg.batch_size} is the global batch: it must divide by the {ranks} processes")
    device = distributed.setup(pick_device(cfg.device))  # joins the torchrun process group, if any
    seed_everything(cfg.seed)
    data = load_data(cfg.data, data_dir=cfg.data_dir, batch_size=cfg.batch_size // ranks,
                     train_subset=cfg.train_subset, val_subset=cfg.val_subset, test_subset=cfg.test_subset,
                     seed=cfg.seed, download=cfg.download, image_size=cfg.image_size)  # fmt: skip
    if ranks > 1:
        for loader in (data.train, data.val, data.test):
            if loader is not None:
                loader.set_distributed(distributed.rank(), ranks, pad=loader is data.train)
    num_classes = cfg.num_classes or data.num_classes
    in_channels = cfg.in_channels or data.input_shape[0]
    spec = model_spec(cfg, num_classes, in_channels)
    model = build_from_spec(spec)
    if cfg.weights:
        load_weights(model, cfg.weights)
    if cfg.bn_init is not None:
        init_bn_gamma(model, cfg.bn_init)
    input_shape = tuple(data.input_shape)
    example = torch.zeros(1, *input_shape)
    graph = PruningGraph(model, example, **graph_options(cfg))
    budget = Budget(graph)
    alloc = distributed.on_main(lambda: allocation_for_run(cfg, out, graph, budget, model, input_shape, progress.log))
    weights = alloc["weights"] if alloc else None
    search = None
    if metric == "latency":  # measure real exported models to find the FLOPs drop (BadInput/GateFailed first)
        method.check(graph, budget, 0.01, "flops", cfg.max_layer_ratio)  # fail fast, before minutes of timing
        search = distributed.on_main(lambda: search_for_run(cfg, out, graph, budget, model, input_shape,
                                                            progress.log, weights=weights))  # fmt: skip
        metric, target = "flops", float(search["chosen_drop"])
    # reachable, and can this method prune it? (BadInput/GateFailed before anything is written)
    pruner = Pruner(model, example, method=method, **{f"target_{metric}": target}, epochs=cfg.epochs,
                    steps_per_epoch=len(data.train), max_layer_ratio=cfg.max_layer_ratio, graph=graph, budget=budget,
                    weights=weights, train_loader=data.train, loss_fn=torch.nn.CrossEntropyLoss(), lr=cfg.lr,
                    device=device, log=progress.log, start=False)  # fmt: skip

    # Inputs are valid: from here on rank 0 writes into the run directory.
    distributed.barrier()  # every rank has checked the directory before it changes
    if main:
        if cfg.overwrite and out.exists() and not cfg.resume:
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.glob(".*.tmp"):  # a temp file left by a killed write
            stale.unlink(missing_ok=True)
    resume_state = checkpoint.load(out / CHECKPOINT, _warn) if cfg.resume else None
    distributed.barrier()  # every rank has read the checkpoint before rank 0 writes a new one
    history_rows = _rewind_history(out / "history.jsonl", resume_state, write=main) if resume_state else []
    if main:
        write_text(out / "config.yaml", yaml.safe_dump(_plain(cfg), sort_keys=False))
        if search is not None:
            save_search(out, search)
        if alloc is not None:
            write_json(out / ALLOCATION_FILE, alloc)
    t_start = time.perf_counter()

    phase = resume_state["phase"] if resume_state else "pretrain"
    trainer_io = {"device": device, "checkpoint": out / CHECKPOINT, "history": out / "history.jsonl",
                  "progress": progress, "checkpoint_every": cfg.checkpoint_every}  # fmt: skip
    # 1. dense training (from scratch) when asked
    if cfg.pretrain_epochs > 0 and phase == "pretrain":
        trainer = Trainer(model, data.train, data.val, _train_cfg(cfg, cfg.pretrain_epochs, cfg.pretrain_lr),
                          phase="pretrain", **trainer_io)  # fmt: skip
        if resume_state and resume_state["phase"] == "pretrain":
            trainer.resume(resume_state)
        trainer.fit()
        history_rows += trainer.history
    elif resume_state and (out / "dense.pt").is_file():
        model.load_state_dict(read_checkpoint(out / "dense.pt", "dense model")["state_dict"])
    dense_eval = evaluate(model, data.test, device)
    dense_flops, dense_params = count_ops_and_params(model.cpu(), input_shape)
    if main and not (out / "dense.pt").is_file():
        with atomic_path(out / "dense.pt") as tmp:
            torch.save(pruned_payload(spec, input_shape, [], model), tmp)
    progress.log(f"dense: acc={dense_eval['acc']:.4f} MACs={dense_flops / 1e6:.2f}M params={dense_params / 1e6:.3f}M")
    # --distill: the teacher of the prune and finetune phases is the dense model as dense.pt holds it (on --resume
    # past the pretraining, the model was just loaded from dense.pt), copied before the method touches the model
    teacher = frozen_copy(model) if cfg.distill else None

    # 2. prune with the method (and fine-tune for cfg.epochs)
    run = _Run(cfg, out, data, device, progress, graph, budget, metric, target, spec, input_shape, dense_eval,
               (dense_flops, dense_params), t_start, trainer_io, teacher=teacher)  # fmt: skip
    if phase in SLIM_PHASES:
        return _finetune(run, resume_state, history_rows, phase)
    model.to(device)
    pruner.start()  # the method sets up on the (pretrained) weights
    trainer = Trainer(model, data.train, data.val, _train_cfg(cfg, cfg.epochs, cfg.lr), method=method,
                      phase="prune", teacher=teacher, stop_when_finished=cfg.materialize_early,
                      **trainer_io)  # fmt: skip
    pruner.attach(trainer.optimizer)
    if phase == "prune":
        trainer.resume(resume_state)  # the checkpoint holds the (soft-masked) model exactly
    trainer.fit()
    masks = method.masks()
    distributed.check_agree(distributed.digest(masks), "the final masks")

    # 3. materialize (then fine-tune the slim model when asked)
    slim = pruner.materialize(model)
    history = pruner.history
    history_rows += trainer.history
    holder = Finished.of(method, cfg.steps)
    frozen = cfg.materialize_early and trainer.epochs_done < cfg.epochs  # the mask was final before the last epoch
    if frozen or cfg.finetune_epochs > 0:
        if main:
            with atomic_path(out / "pruned.pt") as tmp:  # the slim architecture, for resuming the later phases
                torch.save(pruned_payload(spec, input_shape, history, slim), tmp)
        distributed.barrier()
        state = {"holder": holder, "slim": slim, "history": history, "start_epoch": trainer.epochs_done}
        return _finetune(run, state, history_rows, "frozen" if frozen else "finetune")
    return _finish(run, slim, history, holder, history_rows)


def _warn(message: str) -> None:
    """A warning on stderr, even with --quiet (rank 0 only)."""
    if distributed.is_main():
        print(message, file=sys.stderr, flush=True)


def _finished_report(out: Path) -> dict[str, Any] | None:
    """A finished run's report (written last): ``--resume`` on it has nothing to do; its gates still count."""
    path = out / "report.json"
    if not path.is_file() or not (out / "pruned.pt").is_file():
        return None
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # a report cannot be half-written (atomic), so this is foreign: redo the finish
    if distributed.is_main():
        checkpoint.remove(out / CHECKPOINT)
    _gate(report)
    return report


@dataclass
class _Run:
    """What the phases after pruning share."""

    cfg: PruneConfig
    out: Path
    data: Any
    device: torch.device
    progress: Progress
    graph: PruningGraph
    budget: Budget
    metric: str
    target: float
    spec: dict[str, Any]
    input_shape: tuple[int, ...]
    dense_eval: dict[str, Any]
    dense_counts: tuple[float, float]
    t_start: float
    trainer_io: dict[str, Any]
    teacher: torch.nn.Module | None = None  # --distill: the frozen dense model


class Finished(Method):
    """A finished method's masks, log and left-alone groups, carried through fine-tuning and its checkpoints."""

    def __init__(self, masks: dict[int, torch.Tensor], log: list[dict[str, Any]], steps: int,
                 skipped: list[tuple[str, str]] | None = None) -> None:  # fmt: skip
        super().__init__()
        self._masks, self.log, self.steps, self.finished = masks, log, steps, True
        self.skipped = list(skipped or [])

    @classmethod
    def of(cls, method: Method, steps: int) -> Finished:
        holder = cls(method.masks(), getattr(method, "log", []), getattr(method, "steps", steps),
                     getattr(method, "skipped", []))  # fmt: skip
        holder.mask_final_epoch = method.mask_final_epoch
        return holder

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "log": self.log, "steps": self.steps, "skipped": self.skipped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.log, self.steps = list(state["log"]), int(state["steps"])
        self.skipped = [tuple(x) for x in state.get("skipped", [])]


def _finetune(run: _Run, state: dict[str, Any], history_rows: list[dict[str, Any]],
              phase: str = "finetune") -> dict[str, Any]:  # fmt: skip
    """Train the materialized model (resumable), then finish the run. Phase ``frozen`` (--materialize-early):
    the prune phase's remaining epochs, its LR schedule continued (a fresh optimizer: momentum restarts);
    ``finetune``: ``cfg.finetune_epochs`` on their own schedule (after ``frozen`` when both apply)."""
    cfg, out = run.cfg, run.out
    resuming = "holder" not in state
    if resuming:  # the slim architecture (and its pruning history) is in pruned.pt, the weights in the checkpoint
        slim, payload = load_pruned(out / "pruned.pt", trust_code=cfg.trust_code)
        holder, history = Finished({}, [], cfg.steps), payload["history"]
    else:
        holder, slim, history = state["holder"], state["slim"], state["history"]
    if phase == "frozen":
        train_cfg = _train_cfg(cfg, cfg.epochs, cfg.lr)
    else:
        train_cfg = _train_cfg(cfg, cfg.finetune_epochs, cfg.finetune_lr if cfg.finetune_lr is not None else cfg.lr)
    trainer = Trainer(slim, run.data.train, run.data.val, train_cfg, method=holder, phase=phase, teacher=run.teacher,
                      **run.trainer_io)  # fmt: skip
    if resuming:
        trainer.resume(state)
    elif phase == "frozen":
        trainer.start_epoch = int(state["start_epoch"])  # the global epoch: the LR schedule and data order go on
    trainer.fit()
    rows = history_rows + trainer.history
    if phase == "frozen" and cfg.finetune_epochs > 0:
        return _finetune(run, {"holder": holder, "slim": slim, "history": history}, rows, "finetune")
    return _finish(run, slim, history, holder, rows)


def _finish(run: _Run, slim: torch.nn.Module, history: list, method: Finished,
            history_rows: list[dict[str, Any]]) -> dict[str, Any]:  # fmt: skip
    """Evaluate (every rank, sharded), then rank 0 measures, reports and writes; every rank gates the target
    (so under torchrun no rank leaves while rank 0 still works, and all exit with the same code)."""
    slim = slim.cpu()
    pruned_eval = evaluate(slim, run.data.test, run.device)
    report = distributed.on_main(lambda: _write_run(run, slim, history, method, history_rows, pruned_eval))
    _gate(report)
    return report


def _write_run(run: _Run, slim: torch.nn.Module, history: list, method: Finished, history_rows: list[dict[str, Any]],
               pruned_eval: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """Measure and write the run directory (report, pruned.pt, plot); the report is written last."""
    cfg, out, data, graph, budget, metric, target = (
        run.cfg,
        run.out,
        run.data,
        run.graph,
        run.budget,
        run.metric,
        run.target,
    )
    spec, input_shape, dense_eval, (dense_flops, dense_params) = (
        run.spec,
        run.input_shape,
        run.dense_eval,
        run.dense_counts,
    )
    masks = method.masks()
    num_classes, in_channels = spec["num_classes"], spec["in_channels"]
    flops, params = count_ops_and_params(slim, input_shape)
    achieved = 1 - (flops if metric == "flops" else params) / (dense_flops if metric == "flops" else dense_params)
    latency = None
    if cfg.target_latency is not None:  # the final model, exported and timed as the search timed its candidates
        latency = final_record(cfg, load_search(out), slim, input_shape, run.progress.log)
    report = build_report(
        tool={"name": "compress", "version": tool_version()},
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        model={
            "spec": cfg.model,
            "num_classes": num_classes,
            "in_channels": in_channels,
            "input_shape": list(input_shape),
            "weights": cfg.weights,
        },  # fmt: skip
        data={"spec": cfg.data, "sizes": getattr(data, "sizes", None)},
        method={"name": cfg.method, "options": _method_report_options(cfg), "steps": method.steps, "log": method.log,
                "mask_final_epoch": method.mask_final_epoch, "epochs": cfg.epochs},
        distill={"enabled": cfg.distill, "temperature": cfg.distill_temperature, "alpha": cfg.distill_alpha},
        target={
            "metric": metric,
            "value": target,
            "achieved": achieved,
            "met": achieved >= target - TARGET_TOL,
        },  # fmt: skip
        **({"latency": latency} if latency is not None else {}),
        **({"allocation": _allocation_record(out)} if cfg.allocation != "uniform" else {}),
        **({"distributed": _distributed_record()} if distributed.active() else {}),
        dense={
            "flops": dense_flops,
            "params": dense_params,
            "acc": dense_eval["acc"],
            "loss": dense_eval["loss"],
        },
        pruned={"flops": flops, "params": params, "acc": pruned_eval["acc"], "loss": pruned_eval["loss"]},
        flops_drop=1 - flops / dense_flops,
        params_drop=1 - params / dense_params,
        analytic_flops_drop=budget.drop(masks, "flops"),
        round_to=cfg.round_to,
        groups=group_table(graph, masks),
        skipped=graph.skipped + [tuple(x) for x in method.skipped],
        history=history_rows,
        seconds=round(time.perf_counter() - run.t_start, 1),
    )
    with atomic_path(out / "pruned.pt") as tmp:
        torch.save(pruned_payload(spec, input_shape, history, slim, {"report": _summary(report)}), tmp)
    write_text(out / "report.md", render_markdown(report))
    if cfg.method in PLOTS and method.log:
        plot, name = PLOTS[cfg.method]
        plot(method.log, out / name, title=f"{cfg.model} · {cfg.method} · {cfg.data}")
    write_json(out / "report.json", report)  # last: its presence marks the run finished (see _finished_report)
    checkpoint.remove(out / CHECKPOINT)
    return report


def _gate(report: dict[str, Any]) -> None:
    """GateFailed when the run missed its FLOPs/params target or its latency target."""
    metric, target, achieved = (report["target"][k] for k in ("metric", "value", "achieved"))
    if not report["target"]["met"]:
        raise GateFailed(f"target {metric} drop {target} not met: achieved {achieved:.4f}")
    latency = report.get("latency")
    if latency is not None and not latency["met"]:
        lat = latency
        raise GateFailed(f"target latency {lat['target_ms']:.3f} ms not met: the pruned model runs in "
                         f"{lat['final_ms']:.3f} ms on {lat['provider']} at batch {lat['batch']} "
                         f"(tolerance {lat['tolerance']:.0%}; searched {lat['searched_ms']:.3f} ms)")  # fmt: skip


def _rewind_history(path: Path, state: dict[str, Any], write: bool = True) -> list[dict[str, Any]]:
    """Make history.jsonl match the checkpoint (a kill between the row and the checkpoint leaves one extra row);
    return the rows of the phases before the checkpoint's (pretraining, when resuming the prune phase)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    before = PHASES[: PHASES.index(state["phase"])]
    earlier = [r for r in rows if r.get("phase") in before]
    if write:
        write_text(path, "".join(json.dumps(r, default=float) + "\n" for r in earlier + list(state["history"])))
    return earlier


PHASES = ("pretrain", "prune", "frozen", "finetune")
SLIM_PHASES = ("frozen", "finetune")  # phases that train the materialized model


PLOTS = {"psap": (plot_kept_ratios, "psap_kept.png"), "aster": (plot_threshold, "aster_tau.png")}


def _distributed_record() -> dict[str, Any]:
    """How the run trained under torchrun: world size, backend and the per-rank batch."""
    import torch.distributed as dist

    return {"world_size": distributed.world_size(), "backend": dist.get_backend(),
            "mask_decisions": "every rank, from all-reduced statistics; method state compared by digest each epoch",
            }  # fmt: skip


def _allocation_record(out: Path) -> dict[str, Any]:
    """The report's ``allocation`` section: the measured per-group weights (see ``latency_alloc``)."""
    saved = json.loads((out / ALLOCATION_FILE).read_text())
    return {k: saved.get(k) for k in ("provider", "batch", "threads", "probe", "power", "dense_ms", "table")}


def _method_report_options(cfg: PruneConfig) -> dict[str, Any]:
    """The options the run's method takes (every method option is passed; each takes its own)."""
    taken = method_parameters(cfg.method)
    return {k: v for k, v in cfg.method_options().items() if k in taken or k == "from_scratch"}


def _train_cfg(cfg: PruneConfig, epochs: int, lr: float) -> TrainConfig:
    return TrainConfig(epochs=epochs, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                       schedule=cfg.schedule, distill_temperature=cfg.distill_temperature,
                       distill_alpha=cfg.distill_alpha)  # fmt: skip


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    keys = ("flops_drop", "params_drop")
    return {"method": report["method"]["name"], **{k: float(report[k]) for k in keys},
            "acc": report["pruned"]["acc"], "dense_acc": report["dense"]["acc"]}  # fmt: skip


def _plain(cfg: PruneConfig) -> dict[str, Any]:
    return dict(vars(cfg))


def export(run_dir: str | Path, out: str | Path | None = None, *, dense: bool = False, opset: int = 17,
           trust_code: bool = False, dynamic_batch: bool = True, simplify: bool = True,
           rtol: float | None = None, atol: float | None = None, exporter: str = "auto", fp16: bool = False,
           external_data: bool | None = None) -> dict[str, Any]:  # fmt: skip
    """Export a run's pruned (or dense) model to ONNX, verified against PyTorch (see ``exporters.onnx``).

    ``rtol``/``atol`` None: the exporter's default for the precision (fp32 1e-3/1e-4, fp16 2e-2/5e-2).
    """
    from exporters.onnx import check_options, export_onnx

    check_options(opset=opset, exporter=exporter, fp16=fp16, rtol=rtol, atol=atol, external_data=external_data)
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise BadInput(f"run directory {run_dir} does not exist")
    name = "dense" if dense else "pruned"
    model, payload = load_pruned(run_dir / f"{name}.pt", trust_code=trust_code)
    out = Path(out) if out else run_dir / f"{name}.onnx"
    meta = {"source_run": str(run_dir), "model_spec": payload["spec"]["model"], "variant": name}
    summary = payload.get("report") or {}
    meta.update({k: str(v) for k, v in summary.items()})
    meta.update(_report_figures(run_dir, name))
    result = export_onnx(model.eval(), tuple(payload["input_shape"]), out, opset=opset,
                         dynamic_batch=dynamic_batch, simplify=simplify, metadata=meta, rtol=rtol,
                         atol=atol, exporter=exporter, fp16=fp16, external_data=external_data)  # fmt: skip
    return result


def _report_figures(run_dir: Path, variant: str) -> dict[str, str]:
    """The report's key figures for the ONNX metadata: target and FLOPs/params (the dense model: its own only).

    Read from ``report.json`` when the run has one (``pruned.pt`` keeps a short summary only).
    """
    path = run_dir / "report.json"
    if not path.is_file():
        return {}
    try:
        report = json.loads(path.read_text())
        figures = {"dense_flops": report["dense"]["flops"], "dense_params": report["dense"]["params"]}
        if variant == "dense":
            figures["dense_acc"] = report["dense"]["acc"]
        else:
            target, pruned = report["target"], report["pruned"]
            figures.update({"target_metric": target["metric"], "target_value": target["value"],
                            "target_achieved": target["achieved"], "target_met": target["met"],
                            "pruned_flops": pruned["flops"], "pruned_params": pruned["params"]})  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError) as exc:
        import logging

        logging.getLogger("compress.export").warning("%s: no report figures in the ONNX metadata (%s)", path,
                                                     one_line(exc, typed=True))  # fmt: skip
        return {}
    return {k: _meta_text(v) for k, v in figures.items()}


def _meta_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return str(value)


def _csv(value: Any) -> list[str]:
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    return [str(v).strip() for v in items if str(v).strip()]


#: Every ``compress bench`` option (CLI and recipe ``bench:`` section) and its default.
BENCH_DEFAULTS: dict[str, Any] = {
    "provider": "cpu", "batch": "1", "threads": None, "inter_threads": None, "warmup": 10, "iters": 100,
    "min_iters": 10, "duration": None, "io": "device,host", "trt_fp16": False, "trt_cache": "auto",
    "fail_below_speedup": None, "fail_above_p50": None, "compare": None, "max_regression": 10.0,
}  # fmt: skip


def bench_models(models: dict[str, str], baseline: str | None, *, label: str | None = None,
                 trust_code: bool = False, **options: Any) -> dict[str, Any]:  # fmt: skip
    """Benchmark model files with options as the CLI/recipes give them (comma lists or YAML lists).

    ``label`` is the model the gates judge (default: the first non-baseline one). The gate outcome is in
    ``result["gates"]``; :func:`bench_gate` raises on it once the outputs are written.
    """
    from benchmarks.bench_output import load_previous
    from benchmarks.latency import bench

    unknown = sorted(set(options) - set(BENCH_DEFAULTS))
    if unknown:
        raise BadInput(f"unknown bench option(s): {', '.join(unknown)}")
    o = {**BENCH_DEFAULTS, **{k: v for k, v in options.items() if v is not None or k == "compare"}}
    if o["fail_below_speedup"] is not None and baseline is None:
        raise BadInput("--fail-below-speedup needs --baseline")
    if o["max_regression"] is None or float(o["max_regression"]) < 0:
        raise BadInput(f"--max-regression must be a percentage >= 0, got {o['max_regression']}")
    previous = load_previous(o["compare"]) if o["compare"] else None  # bad file: exit 2 before any timing
    result = bench(models, baseline=baseline, providers=_csv(o["provider"]), batches=_csv(o["batch"]),
                   threads=o["threads"], inter_threads=o["inter_threads"], warmup=o["warmup"],
                   iters=None if o["duration"] else o["iters"], min_iters=o["min_iters"], duration=o["duration"],
                   io=_csv(o["io"]), trt_fp16=o["trt_fp16"], trt_cache=_trt_cache(o["trt_cache"]),
                   trust_code=trust_code)  # fmt: skip
    label = label or next((k for k in models if k != baseline), baseline)
    result["gates"] = _gates(result, label, previous, o)
    return result


def _trt_cache(value: Any) -> str | None:
    """``auto``: the user cache directory; ``off``/``none``: no engine cache; else a directory."""
    text = str(value).strip()
    if text.lower() in ("off", "none", "false", ""):
        return None
    if text.lower() == "auto":
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        return str(base / "compress" / "tensorrt")
    return text


def _gates(result: dict[str, Any], label: str, previous: dict[str, Any] | None, o: dict[str, Any]) -> dict[str, Any]:
    from benchmarks.bench_output import p50_failures, regression_failures, speedup_failures

    failures, notes = [], []
    if o["fail_below_speedup"] is not None:
        failures += speedup_failures(result, float(o["fail_below_speedup"]), label)
    if o["fail_above_p50"] is not None:
        failures += p50_failures(result, float(o["fail_above_p50"]), label)
    if previous is not None:
        regressions, compare_notes = regression_failures(result, previous, float(o["max_regression"]))
        failures += regressions
        notes += compare_notes
    return {"label": label, "passed": not failures, "failures": failures, "notes": notes,
            "fail_below_speedup": o["fail_below_speedup"], "fail_above_p50": o["fail_above_p50"],
            "compare": o["compare"] and str(o["compare"]), "max_regression": float(o["max_regression"])}  # fmt: skip


def bench_gate(result: dict[str, Any]) -> None:
    """GateFailed (exit 1) naming the first failed bench gate (and how many failed)."""
    from benchmarks.bench_output import raise_on_failures

    raise_on_failures(result.get("gates", {}).get("failures") or [])
