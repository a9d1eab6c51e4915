"""Multi-process training under ``torchrun``: process group, rank checks and the collectives the methods use.

Every rank runs the whole prune job. Mask decisions are computed on every rank from identical inputs:
the weights and gradients are identical (DistributedDataParallel averages the gradients), and each
per-rank quantity a method reads is all-reduced first (the batch loss and size, PSAP's gradient pulses,
Taylor scores). Nothing is decided on one rank and broadcast, because that would mean shipping every
soft-masked weight and optimizer buffer it changes. Instead :func:`check_agree` compares a digest of
the method's whole state (masks, thresholds, statistics) on every rank at each epoch end and stops the
run if they ever differ. Timing work (latency search, allocation) runs on rank 0 only and its result
is broadcast (:func:`on_main`). Only rank 0 writes files. Outside ``torchrun`` every function here is a
no-op on one process.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from compressor.errors import BadInput, Interrupted

T = TypeVar("T")
TIMEOUT = datetime.timedelta(minutes=60)  # rank 0 may time models for minutes while the others wait


def launched() -> bool:
    """True under ``torchrun`` (it sets RANK, WORLD_SIZE and LOCAL_RANK), even with one process."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else int(os.environ.get("RANK", 0)) if launched() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def setup(device: torch.device) -> torch.device:
    """Join the ``torchrun`` process group (NCCL on CUDA, gloo on the CPU); the device this rank uses."""
    if not launched() or active():
        return device
    local = int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise BadInput(f"local rank {local} has no GPU: {torch.cuda.device_count()} visible, lower --nproc")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, timeout=TIMEOUT)
    return device


TEARDOWN_WAIT = datetime.timedelta(seconds=60)  # how long a finished rank waits for the others at exit


def teardown() -> None:
    """Leave the process group once every rank is here (or after :data:`TEARDOWN_WAIT`).

    A rank that destroys its gloo group while a peer is still working (rank 0 writes the outputs last)
    can abort in C++ ("terminate called without an active exception") and turn a finished run into a
    SIGABRT, so the ranks meet first. gloo's ``monitored_barrier`` is bounded, so a rank whose peer died
    still exits; NCCL has no bounded barrier and skips the meeting.
    """
    if not active():
        return
    if dist.get_backend() == "gloo":
        try:
            dist.monitored_barrier(timeout=TEARDOWN_WAIT)
        except RuntimeError:  # a peer is gone or stuck: leave anyway
            pass
    dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


def _device() -> torch.device:
    if active() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_sum(values: Iterable[float]) -> list[float]:
    """Sum a few numbers over all ranks (float64)."""
    t = torch.tensor(list(values), dtype=torch.float64)
    if active():
        t = t.to(_device())
        dist.all_reduce(t)
    return t.cpu().tolist()


def all_mean_(tensors: Iterable[torch.Tensor]) -> None:
    """Average each tensor over all ranks, in place."""
    if not active():
        return
    n = world_size()
    for t in tensors:
        buf = t.detach().to(_device(), torch.float64)
        dist.all_reduce(buf)
        t.copy_((buf / n).to(t.device, t.dtype))


def average_bn_stats(model: nn.Module) -> None:
    """Average BatchNorm running statistics over the ranks (each estimated them on its own share of data)."""
    if not active():
        return
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    all_mean_([b for m in norms for b in (m.running_mean, m.running_var) if b is not None])


def on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and hand its (picklable) result to every rank; an error there stops all."""
    if not active():
        return fn()
    box: list[Any] = [None]
    if is_main():
        try:
            box[0] = ("ok", fn())
        except (Exception, Interrupted) as exc:  # every rank raises the same error instead of waiting forever
            box[0] = ("error", exc)
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise value
    return value


def digest(state: Any) -> str:
    """A short hash of nested dicts/lists of tensors and numbers (a method's state), for comparing ranks."""
    h = hashlib.sha256()

    def walk(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            h.update(f"T{x.dtype}{tuple(x.shape)}".encode())
            h.update(x.detach().cpu().contiguous().numpy().tobytes())
        elif isinstance(x, dict):
            for key in sorted(x, key=str):
                h.update(f"K{key!r}".encode())
                walk(x[key])
        elif isinstance(x, (list, tuple)):
            h.update(f"L{len(x)}".encode())
            for item in x:
                walk(item)
        else:
            h.update(f"V{x!r}".encode())

    walk(state)
    return h.hexdigest()[:16]


def check_agree(value: str, what: str) -> list[str]:
    """Every rank's ``value``; RuntimeError if they differ (a bug: decisions must be identical)."""
    if not active():
        return [value]
    values: list[Any] = [None] * world_size()
    dist.all_gather_object(values, value)
    if len(set(values)) != 1:
        raise RuntimeError(f"ranks disagree on {what}: {values}")
    return values
