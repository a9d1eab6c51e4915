"""Neighbour locks: one compress process writes a run directory (or an output file) at a time.

A lock is a file (``RUN/.compress.lock`` for a run directory, ``FILE.lock`` beside an output file) held with
``fcntl.flock``: the kernel releases it when the holder dies, however it dies, so a lock whose flock can be taken
is stale (its PID and host, written into the file for the message, name a process that is gone) and is taken
over with a note on stderr. A held lock refuses the second command (BadInput, exit 2) naming the holder.

Locks are reentrant within a process (``compress run`` holds the run directory and its prune takes it again)
and removed on release: after a normal exit, an error, SIGINT or SIGTERM (while a lock is held and nothing else
handles SIGTERM, it raises :class:`~compressor.errors.Interrupted`, so the ``finally`` blocks run). A SIGKILL
leaves the file behind, unlocked: the next command takes it over.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from compressor.errors import BadInput, Interrupted, WriteFailed

RUN_LOCK = ".compress.lock"
LOCK_SUFFIX = ".lock"

_held: dict[str, list] = {}  # resolved lock path -> [fd, depth, directories made for it, saved SIGTERM handler]


def run_dir_lock(directory: str | os.PathLike[str]) -> Path:
    return Path(directory) / RUN_LOCK


def file_lock(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    return p.with_name(p.name + LOCK_SUFFIX)


def holder(lock: str | os.PathLike[str]) -> str:
    """``PID N on HOST`` as the lock file records it (``an unknown process`` when it cannot be read)."""
    try:
        fields = dict(line.split("=", 1) for line in Path(lock).read_text().splitlines() if "=" in line)
    except OSError:
        fields = {}
    if "pid" not in fields:
        return "an unknown process"
    return f"PID {fields['pid']} on {fields.get('host', '?')}"


def _raise_sigterm(signum: int, _frame: object) -> None:
    raise Interrupted(signum, resume=False)


def _open_locked(lock: Path, what: str) -> int:
    """An fd holding the flock of the file now at ``lock`` (retrying when a releaser unlinked the file we opened)."""
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise WriteFailed.of(exc, lock) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise BadInput(f"{what} is being written by {holder(lock)} (lock {lock}); wait for it to finish "
                               "or stop it") from None  # fmt: skip
            raise WriteFailed.of(exc, lock) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder released (and removed) it between our open and flock: try the new file


@contextlib.contextmanager
def locked(lock: str | os.PathLike[str], what: str) -> Iterator[Path]:
    """Hold the lock file ``lock`` for the block; ``what`` names the locked thing in the refusal."""
    lock = Path(lock)
    key = os.path.realpath(lock)
    if key in _held:
        _held[key][1] += 1
        try:
            yield lock
        finally:
            _held[key][1] -= 1
        return
    made = [d for d in (lock.parent, *lock.parent.parents) if not d.exists()]
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteFailed.of(exc, lock.parent) from None
    try:
        fd = _open_locked(lock, what)
    except BaseException:
        _rmdirs(made)
        raise
    try:
        previous = os.read(fd, 4096).decode(errors="replace")
        if "pid=" in previous:
            print(f"note: taking over the stale lock {lock} (left by {holder(lock)}, which no longer holds it)",
                  file=sys.stderr, flush=True)  # fmt: skip
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid={os.getpid()}\nhost={socket.gethostname()}\n".encode(), 0)
    except OSError as exc:
        _release(lock, fd, made)
        raise WriteFailed.of(exc, lock) from None
    saved = None
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        saved = signal.signal(signal.SIGTERM, _raise_sigterm)  # so the lock is removed on SIGTERM too
    _held[key] = [fd, 1, made, saved]
    try:
        yield lock
    finally:
        entry = _held.pop(key)
        if entry[3] is not None:
            signal.signal(signal.SIGTERM, entry[3])
        _release(lock, fd, made)


def _release(lock: Path, fd: int, made: list[Path]) -> None:
    with contextlib.suppress(OSError):
        lock.unlink()  # while holding the flock: a waiter that opened this file retries on the new one
    with contextlib.suppress(OSError):
        os.close(fd)
    _rmdirs(made)


def _rmdirs(made: list[Path]) -> None:
    """Remove the directories made only for the lock, if they stayed empty (deepest first)."""
    for d in made:
        with contextlib.suppress(OSError):
            d.rmdir()


def run_directory(directory: str | os.PathLike[str], option: str = "--out") -> contextlib.AbstractContextManager:
    """The lock of a run directory (``RUN/.compress.lock``)."""
    return locked(run_dir_lock(directory), f"{option} {directory}")


def run_directory_if_writable(directory: str | os.PathLike[str] | None) -> contextlib.AbstractContextManager:
    """The run directory's lock for a command that updates the run (export, quantize); none when there is no
    run or it is not writable (a read-only run can still be exported elsewhere)."""
    if directory is None or not os.access(directory, os.W_OK | os.X_OK):
        return contextlib.nullcontext()
    return locked(run_dir_lock(directory), f"run directory {directory}")


def output_file(path: str | os.PathLike[str], option: str = "output") -> contextlib.AbstractContextManager:
    """The lock of an output file (``FILE.lock`` beside it)."""
    return locked(file_lock(path), f"{option} {path}")


@contextlib.contextmanager
def output_files(paths: list[tuple[str, str | os.PathLike[str]]]) -> Iterator[None]:
    """Hold the locks of several ``(option, path)`` outputs (in order; a refusal releases those taken)."""
    with contextlib.ExitStack() as stack:
        for option, path in paths:
            stack.enter_context(output_file(path, option))
        yield
