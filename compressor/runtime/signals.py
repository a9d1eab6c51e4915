"""SIGINT/SIGTERM outside training: stop the command at once with :class:`~compressor.errors.Interrupted`.

``with interruptible("export"):`` installs handlers (main thread only; elsewhere a no-op) that raise
``Interrupted(signum)`` where the main thread is, so ``finally`` blocks and ``except BaseException`` cleanups
(temp files, staging directories) run on the way out, and the CLI exits 128 + signal with one line. The
previous handlers are restored on exit. ``Interrupted`` is a ``BaseException``: an ``except Exception``
fallback in the interrupted code does not swallow it. A long C call (ONNX Runtime, a torch kernel) finishes
first; the handler runs when control returns to Python.

A signal that lands while the guard itself is installing or restoring the handlers is held and raised as the
block is left (or entered); one swallowed by the code (a bare ``except:``) is raised again at the end.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any

from compressor.errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class interruptible:  # lower case: used like a function, ``with interruptible("export"):``
    """Raise ``Interrupted(signum, during=...)`` on SIGINT/SIGTERM inside the block.

    ``during`` names the stage in the message (it may be reassigned as a job moves on); ``note`` ends it
    (default: "nothing written": every output is written through a temp file and renamed at the end).
    """

    def __init__(self, during: str, note: str = "nothing written") -> None:
        self.during, self.note = during, note
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def _error(self, signum: int) -> Interrupted:
        return Interrupted(signum, during=self.during, note=self.note)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = self.signum or signum
        if frame is not None and frame.f_code in _PLUMBING:
            return  # raised by __enter__/__exit__ once the handlers are in a known state
        raise self._error(signum)

    def _restore(self) -> None:
        previous, self._previous = self._previous, {}
        for sig in previous:
            signal.signal(sig, previous[sig])

    def __enter__(self) -> interruptible:
        if threading.current_thread() is not threading.main_thread():
            return self
        self.signum = 0
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        if self.signum:  # arrived while installing
            self._restore()
            raise self._error(self.signum)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        if not self._previous:
            return
        self._restore()
        if exc is None and self.signum:  # arrived while restoring, or swallowed by the block
            raise self._error(self.signum)


_PLUMBING = {interruptible.__enter__.__code__, interruptible.__exit__.__code__, interruptible._restore.__code__}
