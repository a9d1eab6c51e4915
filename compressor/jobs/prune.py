"""The prune job behind ``compress prune``: validate everything first, then work, then write atomically."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import yaml

from compressor import tool_version
from compressor.api import Pruner
from compressor.artifacts import build_from_spec, load_pruned, pruned_payload
from compressor.budget import Budget
from compressor.config import SHARED_METHOD_OPTIONS
from compressor.data import load_data
from compressor.errors import BadInput, GateFailed, WriteFailed
from compressor.graph import PruningGraph, count_ops_and_params
from compressor.jobs.accuracy import gate_failures, preprocessing, raise_failed
from compressor.jobs.config import RESUME_FIXED, PruneConfig
from compressor.jobs.report import build_report, group_table, plot_kept_ratios, plot_threshold, render_markdown
from compressor.methods.base import Method
from compressor.methods.options import METHOD_OPTIONS
from compressor.methods.registry import METHODS, build_method, method_parameters, options_for
from compressor.models import init_bn_gamma, load_weights, pretrained_record, read_checkpoint
from compressor.models.checkpoints import with_module_versions
from compressor.runtime import checkpoint, distributed, lock
from compressor.runtime.atomic import check_writable_dir, write_json, write_text, write_torch, writing
from compressor.runtime.hardware import resolve_round_to
from compressor.search.latency_alloc import ALLOCATION_FILE, allocation_for_run
from compressor.search.latency_target import final_record, load_search, save_search, search_for_run
from compressor.train import Progress, TrainConfig, Trainer, evaluate, frozen_copy, pick_device, seed_everything

TARGET_TOL = 0.01  # gate: the materialized drop may fall short of the target by at most 1% (absolute)


def _resolve_round_to(cfg: PruneConfig) -> str | None:
    """``--round-to auto`` becomes the multiple for the target runtime (``compressor.runtime.hardware``); why."""
    provider = str(cfg.latency_provider).strip().lower() if cfg.target_latency is not None else "cpu"
    cfg.round_to, why = resolve_round_to(cfg.round_to, provider)
    return why


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
    started = out.is_dir() and any(p.name != lock.RUN_LOCK for p in out.iterdir())
    if started and not (cfg.resume or cfg.overwrite):
        raise BadInput(f"--out {out} is not empty: pass --resume to continue it or --overwrite to replace it")
    if cfg.resume and started:
        ckpt = out / CHECKPOINT
        if not (ckpt.is_file() or checkpoint.previous(ckpt).is_file() or (out / "config.yaml").is_file()):
            raise BadInput(f"--resume: {out} holds no compress run (no {CHECKPOINT} or config.yaml)")
        _check_resume_config(out, cfg)


CHECKPOINT = "checkpoint.pt"


def _check_resume_config(out: Path, cfg: PruneConfig) -> None:
    saved_path = out / "config.yaml"
    try:
        saved = yaml.safe_load(saved_path.read_bytes().decode("utf-8-sig")) if saved_path.is_file() else None
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError):  # RecursionError: nested thousands deep
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
    Every input is checked before the run directory changes: options, data, model, target, method.
    """
    metric, target = cfg.target()
    cfg.check()
    round_note = _resolve_round_to(cfg)  # before the run directory (and --resume) sees the config
    _refuse_unused_method_options(cfg)
    method = build_method(cfg.method, **options_for(cfg.method, cfg.method_options()))  # a bad name/value: BadInput
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise BadInput(f"--out {out} exists and is not a directory")
    check_writable_dir(out, "--out")  # now, not after an hour of training
    # one process writes a run directory at a time (under torchrun: rank 0, which writes it, holds the lock)
    with lock.run_directory(out) if distributed.is_main() else contextlib.nullcontext():
        _prepare_out(out, cfg)
        return _prune(cfg, out, method, metric, target, round_note)


def _prune(cfg: PruneConfig, out: Path, method: Method, metric: str, target: float,
           round_note: str | None) -> dict[str, Any]:  # fmt: skip
    progress = Progress(enabled=not cfg.quiet and distributed.is_main())
    if round_note:
        progress.log(f"--round-to auto: {cfg.round_to} ({round_note})")
    if cfg.resume and (finished := _finished_report(out, cfg)) is not None:
        progress.log(f"{out}: the run is complete; nothing to resume")
        return finished
    device, data = _load_inputs(cfg)
    spec, model, loaded = _build_model(cfg, data)
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
    fresh = not (out.is_dir() and any(p.name != lock.RUN_LOCK for p in out.iterdir())) or (
        cfg.overwrite and not cfg.resume
    )
    resume_state, history_rows = _open_run_dir(cfg, out, search, alloc)  # inputs are valid: rank 0 writes now
    with _removed_on_bad_input(out, fresh and distributed.is_main()):
        run = _Run(cfg, out, data, device, progress, graph, budget, metric, target, spec, input_shape,
                   time.perf_counter(), _trainer_io(cfg, out, device, progress), loaded,
                   round_note=round_note)  # fmt: skip
        phase = resume_state["phase"] if resume_state else "pretrain"
        history_rows += _dense_phase(run, model, resume_state, phase)
        if phase in SLIM_PHASES:
            return _finetune(run, resume_state, history_rows, phase)
        return _prune_phase(run, pruner, model, resume_state, phase, history_rows)


@contextmanager
def _removed_on_bad_input(out: Path, fresh: bool) -> Iterator[None]:
    """Remove the run directory this invocation made when a BadInput found only now (an image that does not
    decode, read lazily by the loaders) stops the run: a bad input leaves nothing half-written. A write that
    failed (a full disk) is not a bad input of the run: what it wrote, the checkpoint above all, stays."""
    try:
        yield
    except BadInput as exc:
        if fresh and not isinstance(exc, WriteFailed):  # a failed write keeps the checkpoint: it stays resumable
            # all but the lock this process holds (its release removes the directory it made)
            for p in out.iterdir():
                if p.name != lock.RUN_LOCK:
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        raise


def _load_inputs(cfg: PruneConfig) -> tuple[torch.device, Any]:
    """The device (joining the torchrun process group, if any) and the data, sharded over the ranks."""
    ranks = int(os.environ.get("WORLD_SIZE", 1)) if distributed.launched() else 1
    if cfg.batch_size % ranks:
        raise BadInput(f"--batch-size {cfg.batch_size} is the global batch: it must divide by the {ranks} processes")
    device = distributed.setup(pick_device(cfg.device))
    seed_everything(cfg.seed)
    data = load_data(cfg.data, data_dir=cfg.data_dir, batch_size=cfg.batch_size // ranks,
                     train_subset=cfg.train_subset, val_subset=cfg.val_subset, test_subset=cfg.test_subset,
                     seed=cfg.seed, download=cfg.download, image_size=cfg.image_size)  # fmt: skip
    if ranks > 1:
        for loader in (data.train, data.val, data.test):
            if loader is not None:
                loader.set_distributed(distributed.rank(), ranks, pad=loader is data.train)
    return device, data


def _build_model(cfg: PruneConfig, data: Any) -> tuple[dict[str, Any], torch.nn.Module, dict[str, Any]]:
    """The model spec (classes and channels from the data unless given), the model with its weights loaded
    (pretrained or ``--weights``), and the report's record of those weights."""
    if cfg.num_classes and cfg.num_classes < data.num_classes:  # more outputs than classes train; fewer cannot
        raise BadInput(f"--num-classes {cfg.num_classes} disagrees with the data ({data.spec or cfg.data} has "
                       f"{data.num_classes} classes, labels up to {data.num_classes - 1}); leave it out to use "
                       "the data's")  # fmt: skip
    spec = model_spec(cfg, cfg.num_classes or data.num_classes, cfg.in_channels or data.input_shape[0])
    model = build_from_spec(spec, weights_head=cfg.weights_head)
    record = pretrained_record(model) or {}
    loaded = {k: record.get(k, []) for k in ("reinitialized", "adapted", "messages")}
    if cfg.weights:
        loaded = asdict(load_weights(model, cfg.weights, cfg.weights_head))
    for line in loaded.pop("messages"):  # an adapted stem, a re-initialized classifier
        _warn(line)
    if cfg.bn_init is not None:
        init_bn_gamma(model, cfg.bn_init)
    pretrained = None
    if record:
        names = record["categories"]
        pretrained = {k: record[k] for k in ("weights", "file", "url", "transforms", "head")}
        pretrained["categories"] = len(names) if names else None
    return spec, model, {"weights_head": cfg.weights_head, "pretrained": pretrained, **loaded}


def _open_run_dir(cfg: PruneConfig, out: Path, search: dict[str, Any] | None,
                  alloc: dict[str, Any] | None) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:  # fmt: skip
    """Create (or clear, or reopen) the run directory; the resume state and the history rows it keeps."""
    main = distributed.is_main()
    distributed.barrier()  # every rank has checked the directory before it changes
    if main:
        with writing(out):
            if cfg.overwrite and out.exists() and not cfg.resume:
                for old in out.iterdir():  # all but the lock this process holds
                    if old.name != lock.RUN_LOCK:
                        shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
            out.mkdir(parents=True, exist_ok=True)
            for stale in out.glob(".*.tmp"):  # a temp file left by a killed write
                shutil.rmtree(stale) if stale.is_dir() else stale.unlink(missing_ok=True)
    resume_state = checkpoint.load(out / CHECKPOINT, _warn) if cfg.resume else None
    distributed.barrier()  # every rank has read the checkpoint before rank 0 writes a new one
    history_rows = _rewind_history(out / "history.jsonl", resume_state, write=main) if resume_state else []
    if main:
        write_text(out / "config.yaml", yaml.safe_dump(_plain(cfg), sort_keys=False))
        if search is not None:
            save_search(out, search)
        if alloc is not None:
            write_json(out / ALLOCATION_FILE, alloc)
    return resume_state, history_rows


def _trainer_io(cfg: PruneConfig, out: Path, device: torch.device, progress: Progress) -> dict[str, Any]:
    return {"device": device, "checkpoint": out / CHECKPOINT, "history": out / "history.jsonl",
            "progress": progress, "checkpoint_every": cfg.checkpoint_every}  # fmt: skip


def _dense_phase(run: _Run, model: torch.nn.Module, resume_state: dict[str, Any] | None,
                 phase: str) -> list[dict[str, Any]]:  # fmt: skip
    """Train the dense model when asked (or reload it on --resume), evaluate it, save ``dense.pt`` and set the
    run's dense figures and teacher; the history rows of the pretraining."""
    cfg, out, rows = run.cfg, run.out, []
    if cfg.pretrain_epochs > 0 and phase == "pretrain":
        trainer = Trainer(model, run.data.train, run.data.val, _train_cfg(cfg, cfg.pretrain_epochs, cfg.pretrain_lr),
                          phase="pretrain", **run.trainer_io)  # fmt: skip
        if resume_state and resume_state["phase"] == "pretrain":
            trainer.resume(resume_state)
        trainer.fit()
        rows = trainer.history
    elif resume_state and (out / "dense.pt").is_file():
        model.load_state_dict(
            with_module_versions(read_checkpoint(out / "dense.pt", "dense model")["state_dict"], model)
        )
    run.dense_eval = evaluate(model, run.data.test, run.device)
    run.dense_counts = count_ops_and_params(model.cpu(), run.input_shape)
    if distributed.is_main() and not (out / "dense.pt").is_file():
        write_torch(out / "dense.pt", pruned_payload(run.spec, run.input_shape, [], model))
    flops, params = run.dense_counts
    run.progress.log(f"dense: acc={run.dense_eval['acc']:.4f} MACs={flops / 1e6:.2f}M params={params / 1e6:.3f}M")
    # --distill: the teacher of the prune and finetune phases is the dense model as dense.pt holds it (on --resume
    # past the pretraining, the model was just loaded from dense.pt), copied before the method touches the model
    run.teacher = frozen_copy(model) if cfg.distill else None
    return rows


def _prune_phase(run: _Run, pruner: Pruner, model: torch.nn.Module, resume_state: dict[str, Any] | None,
                 phase: str, history_rows: list[dict[str, Any]]) -> dict[str, Any]:  # fmt: skip
    """Prune with the method for ``--epochs``, materialize, then fine-tune the slim model or finish."""
    cfg, method = run.cfg, pruner.method
    model.to(run.device)
    pruner.start()  # the method sets up on the (pretrained) weights
    trainer = Trainer(model, run.data.train, run.data.val, _train_cfg(cfg, cfg.epochs, cfg.lr), method=pruner,
                      phase="prune", teacher=run.teacher, stop_when_finished=cfg.materialize_early,
                      **run.trainer_io)  # fmt: skip
    pruner.attach(trainer.optimizer)
    if phase == "prune":
        trainer.resume(resume_state)  # the checkpoint holds the (soft-masked) model exactly
    trainer.fit()
    distributed.check_agree(distributed.digest(method.masks()), "the final masks")
    slim = pruner.materialize(model)
    history = pruner.history
    history_rows += trainer.history
    holder = Finished.of(method, cfg.steps)
    frozen = cfg.materialize_early and trainer.epochs_done < cfg.epochs  # the mask was final before the last epoch
    if frozen or cfg.finetune_epochs > 0:
        if distributed.is_main():
            # the slim architecture, for resuming the later phases
            write_torch(run.out / "pruned.pt", pruned_payload(run.spec, run.input_shape, history, slim))
        distributed.barrier()
        state = {"holder": holder, "slim": slim, "history": history, "start_epoch": trainer.epochs_done}
        return _finetune(run, state, history_rows, "frozen" if frozen else "finetune")
    return _finish(run, slim, history, holder, history_rows)


def _warn(message: str) -> None:
    """A warning on stderr, even with --quiet (rank 0 only)."""
    if distributed.is_main():
        print(message, file=sys.stderr, flush=True)


def _finished_report(out: Path, cfg: PruneConfig) -> dict[str, Any] | None:
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
    _gate(report, cfg)
    return report


@dataclass
class _Run:
    """What the phases share (the dense phase sets ``dense_eval``, ``dense_counts`` and ``teacher``)."""

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
    t_start: float
    trainer_io: dict[str, Any]
    loaded: dict[str, Any]  # the report's record of the starting weights (_build_model)
    dense_eval: dict[str, Any] = field(default_factory=dict)  # set by the dense phase, as the two below
    dense_counts: tuple[float, float] = (0.0, 0.0)  # (FLOPs, params)
    teacher: torch.nn.Module | None = None  # --distill: the frozen dense model
    round_note: str | None = None  # --round-to auto: why this multiple


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
    _gate(report, run.cfg)
    return report


def _write_run(run: _Run, slim: torch.nn.Module, history: list, method: Finished, history_rows: list[dict[str, Any]],
               pruned_eval: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """Measure and write the run directory (report, pruned.pt, plot); the report is written last."""
    cfg, out = run.cfg, run.out
    report = _report(run, slim, method, history_rows, pruned_eval)
    summary = {"report": _summary(report)}
    write_torch(out / "pruned.pt", pruned_payload(run.spec, run.input_shape, history, slim, summary))
    write_text(out / "report.md", render_markdown(report))
    if cfg.method in PLOTS and method.log:
        plot, name = PLOTS[cfg.method]
        plot(method.log, out / name, title=f"{cfg.model} · {cfg.method} · {cfg.data}")
    write_json(out / "report.json", report)  # last: its presence marks the run finished (see _finished_report)
    checkpoint.remove(out / CHECKPOINT)
    return report


def _report(run: _Run, slim: torch.nn.Module, method: Finished, history_rows: list[dict[str, Any]],
            pruned_eval: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """``report.json``: what was pruned, to what, how well, and how (see docs/run-directory.md)."""
    cfg, metric, target, spec = run.cfg, run.metric, run.target, run.spec
    (dense_flops, dense_params), masks = run.dense_counts, method.masks()
    flops, params = count_ops_and_params(slim, run.input_shape)
    achieved = 1 - (flops if metric == "flops" else params) / (dense_flops if metric == "flops" else dense_params)
    latency = None
    if cfg.target_latency is not None:  # the final model, exported and timed as the search timed its candidates
        latency = final_record(cfg, load_search(run.out), slim, run.input_shape, run.progress.log)
    return build_report(
        tool={"name": "compress", "version": tool_version()},
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        model={"spec": cfg.model, "num_classes": spec["num_classes"], "in_channels": spec["in_channels"],
               "input_shape": list(run.input_shape), "weights": cfg.weights, **run.loaded},
        data={"spec": cfg.data, "sizes": getattr(run.data, "sizes", None), "preprocess": preprocessing(run.data)},
        method={"name": cfg.method, "options": _method_report_options(cfg), "steps": method.steps, "log": method.log,
                "mask_final_epoch": method.mask_final_epoch, "epochs": cfg.epochs},
        distill={"enabled": cfg.distill, "temperature": cfg.distill_temperature, "alpha": cfg.distill_alpha},
        target={"metric": metric, "value": target, "achieved": achieved, "met": achieved >= target - TARGET_TOL},
        **({"latency": latency} if latency is not None else {}),
        **({"allocation": _allocation_record(run.out)} if cfg.allocation != "uniform" else {}),
        **({"distributed": _distributed_record()} if distributed.active() else {}),
        dense={"flops": dense_flops, "params": dense_params, "acc": run.dense_eval["acc"],
               "top5": run.dense_eval["top5"], "loss": run.dense_eval["loss"]},
        pruned={"flops": flops, "params": params, "acc": pruned_eval["acc"], "top5": pruned_eval["top5"],
                "loss": pruned_eval["loss"]},
        flops_drop=1 - flops / dense_flops,
        params_drop=1 - params / dense_params,
        analytic_flops_drop=run.budget.drop(masks, "flops"),
        round_to=cfg.round_to,
        **({"round_to_auto": run.round_note} if run.round_note else {}),
        groups=group_table(run.graph, masks),
        skipped=run.graph.skipped + [tuple(x) for x in method.skipped],
        history=history_rows,
        seconds=round(time.perf_counter() - run.t_start, 1),
    )  # fmt: skip


def _gate(report: dict[str, Any], cfg: PruneConfig) -> None:
    """GateFailed when the run missed its FLOPs/params target, its latency target or an accuracy gate."""
    metric, target, achieved = (report["target"][k] for k in ("metric", "value", "achieved"))
    if not report["target"]["met"]:
        raise GateFailed(f"target {metric} drop {target} not met: achieved {achieved:.4f}")
    raise_failed(gate_failures("the pruned model (PyTorch)", report["pruned"]["acc"], report["dense"]["acc"],
                               cfg.min_accuracy, cfg.max_accuracy_drop))  # fmt: skip
    latency = report.get("latency")
    if latency is not None and not latency["met"]:
        lat = latency
        raise GateFailed(f"target latency {lat['target_ms']:.3f} ms not met: the pruned model runs in "
                         f"{lat['final_ms']:.3f} ms on {lat['provider']} at batch {lat['batch']} "
                         f"(tolerance {lat['tolerance']:.0%}; searched {lat['searched_ms']:.3f} ms)")  # fmt: skip


def _rewind_history(path: Path, state: dict[str, Any], write: bool = True) -> list[dict[str, Any]]:
    """Make history.jsonl match the checkpoint (a kill between the row and the checkpoint leaves one extra row);
    return the rows of the phases before the checkpoint's (pretraining, when resuming the prune phase)."""
    rows = [r for line in path.read_text().splitlines() if (r := _json_row(line))] if path.is_file() else []
    before = PHASES[: PHASES.index(state["phase"])]
    earlier = [r for r in rows if r.get("phase") in before]
    if write:
        write_text(path, "".join(json.dumps(r, default=float) + "\n" for r in earlier + list(state["history"])))
    return earlier


def _json_row(line: str) -> dict[str, Any] | None:
    """One history row; None for a blank line or the half line a killed append left."""
    try:
        row = json.loads(line) if line.strip() else None
    except ValueError:
        return None
    return row if isinstance(row, dict) else None


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


def _refuse_unused_method_options(cfg: PruneConfig) -> None:
    """BadInput for an option set away from its default that ``cfg.method`` does not take (``--psap-gamma`` with
    ``--method aster``): it would be ignored without a word, and the run would not be the one asked for."""
    default = {f.name: f.default for f in fields(PruneConfig)}
    owners: dict[str, list[str]] = {}
    for key, name in SHARED_METHOD_OPTIONS.items():
        if name not in ("seed", "from_scratch"):  # they also set up the run itself, whichever the method
            owners[name] = [m for m in METHODS if key in method_parameters(m)]
    for method, cls in METHOD_OPTIONS.items():
        owners.update({f"{method}_{f.name}": [method] for f in fields(cls)})
    for name, methods in owners.items():
        if cfg.method not in methods and getattr(cfg, name) != default[name]:
            which = sorted(methods)
            which = ", ".join(which[:-1]) + " or " + which[-1] if len(which) > 1 else which[0]
            raise BadInput(f"--{name.replace('_', '-')} applies to --method {which}, not {cfg.method} (the default "
                           f"method is {default['method']})")  # fmt: skip


def _method_report_options(cfg: PruneConfig) -> dict[str, Any]:
    """The options the run's method takes, and whether it started from scratch."""
    return {**options_for(cfg.method, cfg.method_options()), "from_scratch": cfg.from_scratch}


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
