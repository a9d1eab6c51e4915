"""``compress prune --nproc N``: run the same command under ``torchrun`` with N processes on this machine."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

from compressor.errors import BadInput

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
    its one-line error (None: the ranks printed none), for the launcher to print.

    torchrun reports any failed worker as its own failure with a traceback; each worker instead records its
    exit code and error in a temp directory, and the highest code (bad input 2 over a gate 1) is returned with
    the error of the lowest rank that exited with it.
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
    with tempfile.TemporaryDirectory(prefix="compress-ranks-") as tmp:
        os.environ[EXIT_FILE_ENV] = tmp
        try:
            run(args)
        except (ChildFailedError, SignalException):
            pass
        finally:
            os.environ.pop(EXIT_FILE_ENV, None)
        return outcome(Path(tmp))


def outcome(where: Path) -> tuple[int, str | None]:
    """The exit code and error line of the ranks that recorded theirs in ``where``: the highest code, with the
    error of the lowest rank that exited with it; (1, None) where none recorded (all killed)."""
    exits = sorted(_read_exit(p) for p in where.glob("rank*"))
    if not exits:
        return 1, None
    code = max(c for _, c, _ in exits)
    return code, next((line for _, c, line in exits if c == code and line is not None), None)


def _read_exit(path: Path) -> tuple[int, int, str | None]:
    """(rank, exit code, error line) a worker recorded; code 1 where the file is unreadable (a rank killed while
    writing it)."""
    rank = int(path.name.removeprefix("rank"))
    try:
        got = json.loads(path.read_text())
        return rank, int(got["code"]), got.get("error")
    except (OSError, ValueError, KeyError, TypeError):
        return rank, 1, None


def reports_to_launcher() -> bool:
    """Whether this process is a worker of :func:`launch_torchrun` (which prints the ranks' error line)."""
    where = os.environ.get(EXIT_FILE_ENV)
    return bool(where) and Path(where).is_dir()


def record_exit(code: int, error: str | None = None) -> None:
    """Called by a worker on exit: leave its exit code and one-line error for :func:`launch_torchrun`."""
    if reports_to_launcher():
        from compressor.runtime import distributed

        where = Path(os.environ[EXIT_FILE_ENV])
        tmp = where / f".rank{distributed.rank()}.tmp"
        tmp.write_text(json.dumps({"code": code, "error": error}))
        tmp.replace(where / tmp.name[1:].removesuffix(".tmp"))  # whole or absent, never half
