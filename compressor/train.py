"""One training/eval loop with method callbacks, LR schedules, per-epoch checkpoints and resume."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import random
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from compressor.errors import BadInput, Interrupted
from compressor.methods.base import Method
from compressor.models.checkpoints import with_module_versions
from compressor.runtime import checkpoint as checkpoints
from compressor.runtime import distributed
from compressor.runtime.atomic import append_line


@dataclass
class TrainConfig:
    epochs: int = 1
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # cosine | step
    step_milestones: tuple[float, ...] = (0.5, 0.75)  # fractions of the epochs, x0.1 at each
    label_smoothing: float = 0.0
    amp: bool = True  # only used on CUDA
    distill_temperature: float = 4.0  # used only when the Trainer has a teacher
    distill_alpha: float = 0.5  # weight of the teacher term (1 - alpha: the cross-entropy on the labels)


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, y: torch.Tensor, *, temperature: float,
                 alpha: float, label_smoothing: float = 0.0) -> torch.Tensor:  # fmt: skip
    """Knowledge distillation (Hinton et al.): ``(1 - alpha) * CE(student, y) + alpha * T^2 * KL(p_t || p_s)``,
    ``p = softmax(logits / T)``; the T^2 keeps the soft term's gradients on the scale of the hard one's."""
    t = float(temperature)
    ce = nn.functional.cross_entropy(student, y, label_smoothing=label_smoothing)
    kl = nn.functional.kl_div(nn.functional.log_softmax(student.float() / t, 1),
                              nn.functional.log_softmax(teacher.float() / t, 1), log_target=True,
                              reduction="batchmean")  # fmt: skip
    return (1 - alpha) * ce + alpha * t * t * kl


def frozen_copy(model: nn.Module) -> nn.Module:
    """A teacher: a deep copy of ``model`` in eval mode with no gradients."""
    teacher = copy.deepcopy(model).eval()
    teacher.requires_grad_(False)
    return teacher


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.are_deterministic_algorithms_enabled():  # the call imports torch's compiler stack (~1 s): only if needed
        torch.use_deterministic_algorithms(False)


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``; anything else is BadInput."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise BadInput(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BadInput(f"device {name!r} requested but CUDA is not available on this machine")
    if device.type not in ("cpu", "cuda"):
        raise BadInput(f"unsupported device {name!r}; use auto, cpu, cuda or cuda:N")
    return device


class Progress:
    """A rich progress bar on a terminal, plain lines otherwise (CI, pipes): there, a line at least every
    ``HEARTBEAT_S`` seconds inside a long epoch, so a CI log never sits silent for minutes."""

    HEARTBEAT_S = 30.0

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()

    def log(self, msg: str) -> None:
        if self.enabled:
            print(msg, file=sys.stderr, flush=True)

    def iterate(self, it: Iterable[Any], total: int, desc: str) -> Iterable[Any]:
        if not self.tty:
            return self._heartbeat(it, total, desc) if self.enabled else it
        from rich.console import Console
        from rich.progress import track

        return track(it, total=total, description=desc, transient=True, console=Console(stderr=True))

    def _heartbeat(self, it: Iterable[Any], total: int, desc: str) -> Iterator[Any]:
        start = last = time.monotonic()
        for i, item in enumerate(it, 1):
            yield item
            now = time.monotonic()
            if now - last >= self.HEARTBEAT_S and i < total:
                self.log(f"{desc}: {i}/{total} batches, {now - start:.0f} s")
                last = now


class Tally:
    """Top-1, top-5 (top-k for fewer than 5 classes) and mean cross-entropy over batches of logits."""

    TOP_K = 5

    def __init__(self, world_size: int = 1) -> None:
        self.world_size = world_size  # > 1: each rank tallies its share and result() sums them
        self.loss_sum, self.correct, self.correct_k, self.n = 0.0, 0, 0, 0

    def add(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        logits = logits.float()
        self.loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        self.correct += int((logits.argmax(1) == y).sum())
        top = logits.topk(min(self.TOP_K, logits.shape[1]), dim=1).indices
        self.correct_k += int((top == y[:, None]).any(1).sum())
        self.n += len(y)

    def result(self) -> dict[str, Any]:
        loss_sum, correct, correct_k, n = self.loss_sum, self.correct, self.correct_k, self.n
        if self.world_size > 1:
            loss_sum, correct, correct_k, n = distributed.all_sum([loss_sum, correct, correct_k, n])
        d = max(int(n), 1)
        return {"loss": loss_sum / d, "acc": int(correct) / d, "top5": int(correct_k) / d, "n": int(n)}


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device) -> dict:
    """Top-1/top-5 accuracy and mean cross-entropy of ``model`` over ``loader`` (all ranks' shares when sharded)."""
    was_training = model.training
    model.eval().to(device)
    tally = Tally(getattr(loader, "world_size", 1))
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        tally.add(model(x), y)
    model.train(was_training)
    return tally.result()


@runtime_checkable
class Hooks(Protocol):
    """What the Trainer calls: the surface of :class:`compressor.Pruner` (the prune job hands its Pruner in, so the
    CLI runs the same calls as a user's own loop). ``step`` is the Trainer's global step."""

    finished: bool

    def after_backward(self, loss: torch.Tensor | float | None = None, batch_size: int = 0, *,
                       step: int | None = None) -> None: ...  # fmt: skip

    def after_step(self, *, step: int | None = None) -> None: ...

    def epoch_end(self, epoch: int | None = None) -> dict[str, Any]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class MethodHooks:
    """A bare :class:`Method` behind the :class:`Hooks` surface (phases without a Pruner: pretraining, fine-tuning
    a finished method's slim model, tests that drive a method directly). Its state is the method's own."""

    def __init__(self, method: Method) -> None:
        self.method = method

    @property
    def finished(self) -> bool:
        return bool(self.method.finished)

    def after_backward(self, loss: torch.Tensor | float | None = None, batch_size: int = 0, *,
                       step: int | None = None) -> None:  # fmt: skip
        self.method.on_after_backward(int(step or 0), loss, int(batch_size))  # type: ignore[arg-type]

    def after_step(self, *, step: int | None = None) -> None:
        self.method.on_after_step(int(step or 0))

    def epoch_end(self, epoch: int | None = None) -> dict[str, Any]:
        return self.method.on_epoch_end(int(epoch or 0))

    def state_dict(self) -> dict[str, Any]:
        return self.method.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.method.load_state_dict(state)


class Trainer:
    """SGD + cosine/step LR; calls ``method``'s hooks (a :class:`Hooks` such as a Pruner, or a bare
    :class:`Method`); checkpoints to ``checkpoint`` (crash-safe, see
    ``compressor.runtime.checkpoint``) at every epoch end, every ``checkpoint_every`` steps and on SIGINT/SIGTERM.

    Under ``torchrun`` the model trains wrapped in DistributedDataParallel: each step's loss, batch size and
    accuracy are summed over the ranks before the method sees them, BN running statistics are averaged at
    each epoch end, the ranks' method states (masks, thresholds) are compared, and only rank 0 writes the
    checkpoint and history.

    With a ``teacher`` (a frozen model, see :func:`frozen_copy`) the loss is :func:`distill_loss` with the
    config's temperature and alpha; the teacher is not wrapped in DDP (no gradients): each rank runs it on
    its own shard of the batch.
    """

    def __init__(self, model: nn.Module, train_loader: Any, val_loader: Any, cfg: TrainConfig, *,
                 method: Hooks | Method | None = None, device: torch.device | None = None,
                 checkpoint: Path | None = None, history: Path | None = None,
                 progress: Progress | None = None, phase: str = "train",
                 checkpoint_every: int = 0, teacher: nn.Module | None = None,
                 stop_when_finished: bool = False) -> None:  # fmt: skip
        self.model, self.train_loader, self.val_loader, self.cfg = model, train_loader, val_loader, cfg
        self.hooks: Hooks = method if isinstance(method, Hooks) else MethodHooks(method or Method())
        self.device = device or pick_device()
        self.checkpoint, self.history_path, self.phase = checkpoint, history, phase
        self.checkpoint_every = checkpoint_every
        self.stop_when_finished = stop_when_finished  # end the phase at the first epoch start with the mask final
        self.epochs_done = 0
        self.progress = progress or Progress()
        self.model.to(self.device)
        self.teacher = teacher.to(self.device).eval() if teacher is not None else None
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.optimizer = torch.optim.SGD(
            model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True
        )
        self.use_amp = cfg.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.start_epoch, self.start_step = 0, 0
        self.running = [0.0, 0.0, 0.0]  # loss sum, correct, seen: the current epoch so far (all ranks)
        self.history: list[dict[str, Any]] = []

    def lr_at(self, epoch: float) -> float:
        total = max(self.cfg.epochs, 1)
        if self.cfg.schedule == "step":
            return self.cfg.lr * 0.1 ** sum(epoch >= m * total for m in self.cfg.step_milestones)
        return 0.5 * self.cfg.lr * (1 + math.cos(math.pi * epoch / total))

    def _network(self) -> nn.Module:
        if not distributed.active():
            return self.model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(self.model, device_ids=ids)

    def fit(self) -> list[dict[str, Any]]:
        steps = len(self.train_loader)
        net = self._network()
        self.epochs_done = self.start_epoch
        with STOP.armed() as stop:
            for epoch in range(self.start_epoch, self.cfg.epochs):
                resuming_inside = epoch == self.start_epoch and self.start_step > 0  # finish a started epoch
                if self.stop_when_finished and self.hooks.finished and not resuming_inside:
                    break
                self.model.train()
                if hasattr(self.train_loader, "set_epoch"):
                    self.train_loader.set_epoch(epoch)
                first = self.start_step if epoch == self.start_epoch else 0
                if not first:
                    self.running = [0.0, 0.0, 0.0]
                t0 = time.perf_counter()
                batches = self.train_loader.iter_from(first) if first else self.train_loader
                for i, (x, y) in enumerate(self.progress.iterate(batches, steps - first, f"{self.phase} epoch "
                                                                 f"{epoch + 1}"), start=first):  # fmt: skip
                    halt = self._step(net, epoch * steps + i, epoch + i / steps, x, y, stop)
                    if halt or (self.checkpoint_every and (epoch * steps + i + 1) % self.checkpoint_every == 0):
                        self.save(epoch, step=i + 1)
                    if halt:
                        raise Interrupted(stop.signum or signal.SIGTERM, self.checkpoint)
                self._end_epoch(epoch, t0)  # saves the epoch's checkpoint
                self.epochs_done = epoch + 1
                if self._halt(stop):
                    raise Interrupted(stop.signum or signal.SIGTERM, self.checkpoint)
        return self.history

    @staticmethod
    def _halt(stop: SignalStop) -> bool:
        """Whether any rank was signalled (every rank gets the same answer, so they stop at the same step)."""
        flag = float(bool(stop.signum))
        return (distributed.all_sum([flag])[0] if distributed.active() else flag) > 0

    def _step(self, net: nn.Module, step: int, at: float, x: torch.Tensor, y: torch.Tensor, stop: SignalStop) -> bool:
        """One optimizer step; the method sees the loss and batch size of the global batch. True: stop after it
        (a rank was signalled before the step's all-reduce; a later signal is seen at the next step)."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(at)
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, enabled=self.use_amp):
            out = net(x)
            loss = self._loss(x, out, y)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        local = [loss.item() * len(y), float((out.argmax(1) == y).sum()), float(len(y)), float(bool(stop.signum))]
        loss_sum, correct, seen, stopping = distributed.all_sum(local) if distributed.active() else local
        # the training loss the method sees: the distillation loss when distilling, else the cross-entropy
        self.hooks.after_backward(torch.tensor(loss_sum / seen), int(seen), step=step)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.hooks.after_step(step=step)
        self.running = [self.running[0] + loss_sum, self.running[1] + correct, self.running[2] + seen]
        return stopping > 0

    def _loss(self, x: torch.Tensor, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The step's loss: cross-entropy, or with a teacher the distillation loss (the teacher sees the same
        batch, in the caller's autocast)."""
        if self.teacher is None:
            return self.loss_fn(out, y)
        with torch.no_grad():
            teacher_out = self.teacher(x)
        return distill_loss(out, teacher_out, y, temperature=self.cfg.distill_temperature,
                            alpha=self.cfg.distill_alpha, label_smoothing=self.cfg.label_smoothing)  # fmt: skip

    def _end_epoch(self, epoch: int, t0: float) -> None:
        loss_sum, correct, seen = self.running
        row = {"phase": self.phase, "epoch": epoch + 1, "lr": self.lr_at(epoch),
               "train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1)}  # fmt: skip
        row.update(self.hooks.epoch_end(epoch))
        if distributed.active():
            distributed.average_bn_stats(self.model)
            what = f"the method state after {self.phase} epoch {epoch + 1}"
            row["rank_state"] = distributed.check_agree(distributed.digest(self.hooks.state_dict()), what)
        row["seconds"] = round(time.perf_counter() - t0, 3)  # training + the method's epoch-end work
        if self.val_loader is not None:
            val = evaluate(self.model, self.val_loader, self.device)
            row.update(val_loss=val["loss"], val_acc=val["acc"])
        self.history.append(row)
        self.progress.log(
            f"{self.phase} epoch {epoch + 1}/{self.cfg.epochs}: "
            + " ".join(
                f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                for k, v in row.items()
                if k not in ("phase", "epoch") and not isinstance(v, (dict, list))
            )  # fmt: skip
        )
        self._append_history(row)
        self.running = [0.0, 0.0, 0.0]
        self.save(epoch + 1)

    def _append_history(self, row: dict[str, Any]) -> None:
        if self.history_path is not None and distributed.is_main():
            append_line(self.history_path, json.dumps(row, default=float))

    def state(self, epoch: int, step: int = 0) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "epoch": epoch,  # completed epochs
            "step": step,  # batches done in the next epoch (a mid-epoch checkpoint)
            "running": list(self.running),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "method": self.hooks.state_dict(),
            "history": self.history,
            "rng": torch.get_rng_state(),  # data order and augmentation use their own per-epoch generators
        }

    def save(self, epoch: int, step: int = 0) -> None:
        if self.checkpoint is not None and distributed.is_main():
            checkpoints.save(self.checkpoint, self.state(epoch, step))

    def resume(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint written by :meth:`save`, at an epoch end or mid-epoch."""
        self.model.load_state_dict(with_module_versions(state["model"], self.model))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.hooks.load_state_dict(state["method"])
        self.history = list(state["history"])
        self.start_epoch, self.start_step = int(state["epoch"]), int(state.get("step", 0))
        self.running = [float(v) for v in state.get("running", [0.0, 0.0, 0.0])]
        torch.set_rng_state(state["rng"])


class SignalStop:
    """SIGINT/SIGTERM during a job: inside a training loop (:meth:`armed`) the step finishes, a checkpoint is
    saved and :class:`Interrupted` is raised; anywhere else :class:`Interrupted` is raised at once (outputs are
    atomic, so nothing is half-written). A second signal while a checkpoint is pending aborts at once."""

    def __init__(self) -> None:
        self.signum = 0
        self._armed = 0
        self._saved: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: Any) -> None:
        if self._armed and not self.signum:
            self.signum = signum
            return
        raise Interrupted(signum)

    @contextlib.contextmanager
    def installed(self) -> Iterator[SignalStop]:
        """Handle the signals for the duration of a job (main thread only; elsewhere a no-op)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        self.signum, saved = 0, {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for sig, handler in saved.items():
                signal.signal(sig, handler)
            self.signum = 0

    @contextlib.contextmanager
    def armed(self) -> Iterator[SignalStop]:
        self._armed += 1
        try:
            yield self
        finally:
            self._armed -= 1


STOP = SignalStop()
