"""A rank under torchrun stops when the process that started it dies (Linux's parent-death signal).

Its own module: every command starts through :func:`follow_launcher`, so it imports nothing beyond the standard
library (``compress --help`` stays fast).
"""

from __future__ import annotations

import os
import signal
import sys

LAUNCHER_PID_ENV = "COMPRESS_LAUNCHER_PID"  # set by prune --nproc's launcher for its ranks
TORCHRUN_ENV = "TORCHELASTIC_RUN_ID"  # set by torchrun in every rank it starts
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_LAUNCHER_GONE = signal.SIGHUP  # the parent-death signal a rank asks for (a rank has no terminal to hang up)


def follow_launcher() -> None:
    """In a rank under torchrun: stop as on SIGTERM when the process that started it dies, however it dies.

    torchrun starts each rank in a session of its own, so a launcher killed outright (SIGKILL: the OOM killer, a
    CI job's time limit) left its ranks training, holding the run's lock and device. Linux's parent-death signal
    turns that into one SIGTERM, the signal a rank stops on (checkpoint, exit 143). A rank of ``--nproc`` whose
    launcher died before this ran stops the same way (plain torchrun does not say which process started the
    rank). Elsewhere (not Linux, not under torchrun) it does nothing.
    """
    launcher = os.environ.get(LAUNCHER_PID_ENV, "")
    if not sys.platform.startswith("linux") or not (launcher or os.environ.get(TORCHRUN_ENV)):
        return
    import ctypes  # here, not at the top: every command starts through this function

    signal.signal(_LAUNCHER_GONE, _stop_once)
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, _LAUNCHER_GONE, 0, 0, 0)  # a sandbox may refuse
    if launcher.isdigit() and os.getppid() != int(launcher):  # it died before the signal was set up
        _stop_once(_LAUNCHER_GONE, None)


def _stop_once(_signum: int, _frame: object) -> None:
    """The launcher died: one SIGTERM to this rank. Linux sends the parent-death signal again as each thread of
    the dying launcher exits (three times from torchrun's agent, seen here), and a second SIGTERM would abort
    the rank at once, wherever it is, leaving its peer waiting in a collective."""
    signal.signal(_LAUNCHER_GONE, signal.SIG_IGN)
    os.kill(os.getpid(), signal.SIGTERM)
