"""``compress prune --nproc N``: run the same command under ``torchrun`` with N processes on this machine."""

from __future__ import annotations

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


def launch_torchrun(nproc: int, argv: list[str]) -> int:
    """Run ``python -m compressor ARGV`` under torchrun (standalone rendezvous); the command's exit code.

    torchrun reports any failed worker as its own failure with a traceback; each worker instead records its
    exit code in a temp directory, and the highest one (bad input 2 over a gate 1) is returned.
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
        texts = [p.read_text().strip() for p in Path(tmp).glob("rank*")]
    codes = [int(t) for t in texts if t.lstrip("-").isdigit()]
    return max(codes) if codes else 1


def record_exit(code: int) -> None:
    """Called by a worker on exit: leave its exit code for :func:`launch_torchrun`."""
    where = os.environ.get(EXIT_FILE_ENV)
    if where and Path(where).is_dir():
        from compressor.runtime import distributed

        Path(where, f"rank{distributed.rank()}").write_text(str(code))
