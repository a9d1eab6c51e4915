"""One training/eval loop with method callbacks, LR schedules, per-epoch checkpoints and resume."""

from __future__ import annotations

import json
import math
import random
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from compressor.atomic import atomic_path
from compressor.errors import BadInput
from compressor.methods.base import Method


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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
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
    """A rich progress bar on a terminal, plain lines otherwise (CI, pipes)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()

    def log(self, msg: str) -> None:
        if self.enabled:
            print(msg, file=sys.stderr, flush=True)

    def iterate(self, it: Iterable[Any], total: int, desc: str) -> Iterable[Any]:
        if not self.tty:
            return it
        from rich.console import Console
        from rich.progress import track

        return track(it, total=total, description=desc, transient=True, console=Console(stderr=True))


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device) -> dict:
    """Top-1 accuracy and mean cross-entropy of ``model`` over ``loader``."""
    was_training = model.training
    model.eval().to(device)
    loss_sum, correct, n = 0.0, 0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        out = model(x)
        loss_sum += float(nn.functional.cross_entropy(out, y, reduction="sum"))
        correct += int((out.argmax(1) == y).sum())
        n += len(y)
    model.train(was_training)
    return {"loss": loss_sum / max(n, 1), "acc": correct / max(n, 1), "n": n}


class Trainer:
    """SGD + cosine/step LR; calls the method's hooks; checkpoints every epoch to ``checkpoint``."""

    def __init__(self, model: nn.Module, train_loader: Any, val_loader: Any, cfg: TrainConfig, *,
                 method: Method | None = None, device: torch.device | None = None,
                 checkpoint: Path | None = None, history: Path | None = None,
                 progress: Progress | None = None, phase: str = "train") -> None:  # fmt: skip
        self.model, self.train_loader, self.val_loader, self.cfg = model, train_loader, val_loader, cfg
        self.method = method or Method()
        self.device = device or pick_device()
        self.checkpoint, self.history_path, self.phase = checkpoint, history, phase
        self.progress = progress or Progress()
        self.model.to(self.device)
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.optimizer = torch.optim.SGD(
            model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True
        )
        self.use_amp = cfg.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.start_epoch = 0
        self.history: list[dict[str, Any]] = []

    def lr_at(self, epoch: float) -> float:
        total = max(self.cfg.epochs, 1)
        if self.cfg.schedule == "step":
            return self.cfg.lr * 0.1 ** sum(epoch >= m * total for m in self.cfg.step_milestones)
        return 0.5 * self.cfg.lr * (1 + math.cos(math.pi * epoch / total))

    def fit(self) -> list[dict[str, Any]]:
        steps = len(self.train_loader)
        for epoch in range(self.start_epoch, self.cfg.epochs):
            self.model.train()
            if hasattr(self.train_loader, "set_epoch"):
                self.train_loader.set_epoch(epoch)
            t0, loss_sum, correct, seen = time.perf_counter(), 0.0, 0, 0
            batches = self.progress.iterate(self.train_loader, steps, f"{self.phase} epoch {epoch + 1}")
            for i, (x, y) in enumerate(batches):
                for group in self.optimizer.param_groups:
                    group["lr"] = self.lr_at(epoch + i / steps)
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                with torch.autocast(self.device.type, enabled=self.use_amp):
                    out = self.model(x)
                    loss = self.loss_fn(out, y)
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(self.optimizer)
                self.method.on_after_backward(epoch * steps + i, loss.detach(), len(y))
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.method.on_after_step(epoch * steps + i)
                loss_sum += loss.item() * len(y)
                correct += int((out.argmax(1) == y).sum())
                seen += len(y)
            row = {"phase": self.phase, "epoch": epoch + 1, "lr": self.lr_at(epoch),
                   "train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1)}  # fmt: skip
            row.update(self.method.on_epoch_end(epoch))
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
            self.save(epoch + 1)
        return self.history

    def _append_history(self, row: dict[str, Any]) -> None:
        if self.history_path is not None:
            with open(self.history_path, "a") as fh:
                fh.write(json.dumps(row, default=float) + "\n")

    def state(self, epoch: int) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "epoch": epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "method": self.method.state_dict(),
            "history": self.history,
            "rng": torch.get_rng_state(),  # data order and augmentation use their own per-epoch generators
        }

    def save(self, epoch: int) -> None:
        if self.checkpoint is None:
            return
        with atomic_path(self.checkpoint) as tmp:
            torch.save(self.state(epoch), tmp)

    def resume(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint written by :meth:`save` (loaded with ``weights_only=True``)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.method.load_state_dict(state["method"])
        self.history = list(state["history"])
        self.start_epoch = int(state["epoch"])
        torch.set_rng_state(state["rng"])
