"""``compress prune --nproc N``: run the same command under ``torchrun`` with N processes on this machine."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

from compressor.errors import BadInput
from compressor.runtime.orphans import LAUNCHER_PID_ENV

EXIT_FILE_ENV = "COMPRESS_EXIT_DIR"


def strip_nproc(argv: list[str]) -> list[str]:
    """``argv`` without ``--nproc N`` / ``--nproc=N``."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def launch_torchrun(nproc: int, argv: list[str]) -> tuple[int, str | None]:
    """Run ``python -m compressor ARGV`` under torchrun (standalone rendezvous); the command's exit code and
    its one-line error (None: it succeeded), for the launcher to print.

    torchrun reports any failed worker as its own failure with a traceback; each worker instead records its
    exit code and error in a temp directory, and :func:`outcome` reads them.
    """
    from compressor.runtime import distributed  # torch: imported only when launching (not for `compress --help`)

    if nproc < 1:
        raise BadInput(f"--nproc must be >= 1, got {nproc}")
    if distributed.launched():
        raise BadInput("--nproc: already running under torchrun; drop --nproc")
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args(["--standalone", f"--nproc-per-node={nproc}", "--max-restarts=0",
                                         "-m", "compressor", *strip_nproc(argv)])  # fmt: skip
    import torch.distributed.elastic.agent.server.api  # noqa: F401  (its logger, to quiet it)

    for name in list(logging.root.manager.loggerDict):  # the workers print their own one-line errors
        if name.startswith(("torch.distributed.elastic", "torch.distributed.run")):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    signalled, died = None, {}
    with tempfile.TemporaryDirectory(prefix="compress-ranks-") as tmp:
        for_ranks = {EXIT_FILE_ENV: tmp, LAUNCHER_PID_ENV: str(os.getpid())}  # what the ranks inherit, then not
        os.environ.update(for_ranks)
        try:
            run(args)
        except ChildFailedError as exc:
            died = {rank: f"signal {f.signal_name()}" if f.exitcode < 0 else f"exit {f.exitcode}"
                    for rank, f in exc.failures.items()}  # fmt: skip
        except SignalException as exc:
            signalled = int(exc.sigval)
        finally:
            for key in for_ranks:
                os.environ.pop(key, None)
        return outcome(Path(tmp), nproc, signalled=signalled, died=died)


class RankExit(NamedTuple):
    """What a rank recorded at exit."""

    rank: int
    code: int
    error: str | None  # its one-line error
    at: float  # when it exited (seconds since the epoch)


_STOPS = (128 + signal.SIGINT, 128 + signal.SIGTERM)


def outcome(where: Path, nproc: int, *, signalled: int | None = None,
            died: dict[int, str] | None = None) -> tuple[int, str | None]:  # fmt: skip
    """The launcher's exit code and error line from the records the ranks left in ``where``.

    - The launcher was stopped (``signalled``): 128 + the signal, with the line of the lowest rank that
      recorded that stop (rank 0's names the resumable checkpoint).
    - Else a rank failed (any code but 0, 130, 143): the first to fail, by time, says why. torchrun then stops
      the others with SIGTERM (their 143s) or they see a broken connection (an internal error, later); where
      rank 0 failed the same way, its line is printed, as a run without ``--nproc`` would print it.
    - Else a rank left no record (killed, or crashed outside Python): exit 3, naming it (``died``: torchrun's
      word on how each failed rank ended).
    - Else the stops a signal sent to the ranks alone, or success.
    """
    exits = sorted(e for e in map(_read_exit, where.glob("rank*")) if e is not None)  # by rank
    if signalled is not None:
        code = 128 + signalled
        line = next((e.error for e in exits if e.code == code and e.error), None)
        return code, line or f"interrupted by {signal.Signals(signalled).name}"
    failed = sorted((e for e in exits if e.code not in (0, *_STOPS)), key=lambda e: (e.at, e.rank))
    if failed:
        first = failed[0]
        rank0 = next((e.error for e in failed if e.rank == 0 and e.code == first.code and e.error), None)
        return first.code, rank0 or first.error or f"a rank exited with code {first.code}"
    missing = sorted(set(range(nproc)) - {e.rank for e in exits})
    if missing:
        how = (died or {}).get(missing[0], "killed or crashed")
        return 3, f"rank {missing[0]} of {nproc} ended without a result ({how})"
    stops = [e for e in exits if e.code != 0]
    if stops:
        return stops[0].code, stops[0].error or f"interrupted by {signal.Signals(stops[0].code - 128).name}"
    return 0, None


def _read_exit(path: Path) -> RankExit | None:
    """The record a worker left (None where it cannot be read: as if it left none)."""
    try:
        got = json.loads(path.read_text())
        return RankExit(int(path.name.removeprefix("rank")), int(got["code"]), got.get("error"),
                        float(got.get("at", 0.0)))  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError):
        return None


def reports_to_launcher() -> bool:
    """Whether this process is a worker of :func:`launch_torchrun` (which prints the ranks' error line)."""
    where = os.environ.get(EXIT_FILE_ENV)
    return bool(where) and Path(where).is_dir()


def record_exit(code: int, error: str | None = None) -> None:
    """Called by a worker on exit: leave its exit code and one-line error for :func:`launch_torchrun`."""
    if reports_to_launcher():
        from compressor.runtime import distributed

        rank, where = distributed.rank(), Path(os.environ[EXIT_FILE_ENV])
        tmp = where / f".rank{rank}.tmp"  # not matched by the launcher's rank* until whole
        try:
            tmp.write_text(json.dumps({"code": code, "error": error, "at": time.time()}))
            tmp.replace(where / f"rank{rank}")
        except OSError:  # the launcher's directory is full or gone: rank 0 says it itself
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            if error is not None and rank == 0:
                print(f"error: {error}", file=sys.stderr)
