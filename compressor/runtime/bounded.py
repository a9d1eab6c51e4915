"""Run a step under a wall-clock and memory bound: stop it with an exception instead of hanging the machine.

A watcher thread samples the process's resident memory and the elapsed time; past a limit it interrupts the
main thread (``_thread.interrupt_main``, a simulated signal, never a real one), whose handler raises
:class:`LimitExceeded` inside the bounded code. Pure-Python loops (Torch-Pruning's graph search) stop within
one poll; a long C call stops when it returns; an exception swallowed by the code is raised again at the
next poll. Outside the main thread the step runs unbounded.
"""

from __future__ import annotations

import _thread
import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

_SIGNAL = signal.SIGUSR1
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_PLUMBING = {contextlib.__file__, __file__}  # where an interrupt must not raise (see ``bounded``)


class LimitExceeded(Exception):
    """A bounded step ran past its time or memory limit."""


def rss_bytes() -> int:
    """Resident memory of this process (Linux ``/proc``; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def available_bytes() -> int:
    """MemAvailable from ``/proc/meminfo`` (0 where unavailable)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


@contextmanager
def bounded(seconds: float | None, extra_bytes: int | None, *, poll: float = 0.05) -> Iterator[None]:
    """Raise :class:`LimitExceeded` in the block after ``seconds`` or ``extra_bytes`` of memory growth."""
    if threading.current_thread() is not threading.main_thread() or (not seconds and not extra_bytes):
        yield
        return
    start, base = time.monotonic(), rss_bytes()
    reason: list[str] = []
    done, stop = [False], threading.Event()

    def handler(_signum: int, frame: FrameType | None) -> None:
        if done[0] or not reason:
            return
        if frame is not None and frame.f_code.co_filename in _PLUMBING:
            return  # entering or leaving the block (contextlib's code, ours): raised here, the cleanup below
            # would never run and the watcher would go on interrupting after the block; the next poll raises
        raise LimitExceeded(reason[0])

    def watch() -> None:
        while not stop.wait(poll):
            if not reason and seconds and time.monotonic() - start > seconds:
                reason.append(f"ran over {seconds:g} s")
            elif not reason and extra_bytes and base and rss_bytes() - base > extra_bytes:
                reason.append(f"grew memory by over {extra_bytes / 2**30:.1f} GiB")
            if reason:  # again at every poll: the bounded code may swallow one (a bare ``except:``)
                _thread.interrupt_main(_SIGNAL)

    previous = signal.signal(_SIGNAL, handler)
    watcher = threading.Thread(target=watch, name="compress-bounded", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done[0] = True
        stop.set()
        watcher.join()
        signal.signal(_SIGNAL, previous)
