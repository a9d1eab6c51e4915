"""Errors the CLI maps to exit codes: BadInput -> 2, GateFailed -> 1, Unavailable -> 4, Interrupted -> 128 + signal."""

from __future__ import annotations


class BadInput(Exception):
    """The user gave something we cannot use (exit code 2, one line, no traceback)."""


class GateFailed(Exception):
    """A check the user asked for did not pass: verification, target, speedup (exit code 1)."""


class Unavailable(GateFailed):
    """A requested provider or backend is not available on this machine (exit code 4, so CI can tell a missing
    GPU from a failed gate); a GateFailed for code that only cares that the run did not pass."""


class WriteFailed(BadInput):
    """Writing an output failed (no space left, an I/O error, a directory that vanished): exit code 2, one line
    naming the file; the write was atomic, so nothing partial is left (see ``compressor.runtime.atomic``)."""

    def __init__(self, message: str, path: object = None) -> None:
        super().__init__(message)
        self.path = path

    @classmethod
    def of(cls, exc: BaseException, path: object) -> WriteFailed:
        """The one-line error for ``exc`` (an OSError) raised while writing ``path``."""
        import errno

        if isinstance(exc, WriteFailed):
            return exc
        code = getattr(exc, "errno", None)
        why = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
               errno.EIO: "I/O error", errno.EROFS: "read-only file system",
               errno.EFBIG: "file too large"}.get(code)  # fmt: skip
        if why:
            return cls(f"{why} writing {path}", path)
        if code == errno.ENOENT:
            return cls(f"cannot write {path}: its directory vanished", path)
        return cls(f"cannot write {path}: {exc.strerror or one_line(exc, 120, typed=True)}", path)


def one_line(text: object, limit: int = 300, *, typed: bool = False) -> str:
    """``text`` (often an exception) on one line, cut to ``limit``; ``typed`` prefixes the exception type."""
    flat = " ".join(str(text).split())
    if isinstance(text, BaseException) and (typed or not flat):
        flat = f"{type(text).__name__}: {flat}" if flat else type(text).__name__
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure: ``MemoryError``, torch's ``OutOfMemoryError`` (CUDA) or the CPU
    allocator's ``RuntimeError`` ("can't allocate memory")."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text.lower())


class Interrupted(BaseException):
    """SIGINT/SIGTERM stopped the command (exit code 128 + signal): training after saving a checkpoint, any
    other stage at once (``during`` names it, ``note`` says what was kept). A ``BaseException``, like
    ``KeyboardInterrupt``: an ``except Exception`` fallback or error report does not swallow it."""

    def __init__(self, signum: int, checkpoint: object = None, during: str | None = None,
                 note: str | None = None, resume: bool = True) -> None:  # fmt: skip
        import signal

        self.signum, self.checkpoint, self.during, self.note = int(signum), checkpoint, during, note
        self.resume = resume
        name = signal.Signals(self.signum).name
        if during:
            super().__init__(f"interrupted by {name} during {during}; {note or 'nothing written'}")
            return
        where = f": resumable checkpoint at {checkpoint}, continue" if checkpoint else ": continue"
        hint = f"{where} with --resume" if resume else ""
        super().__init__(f"interrupted by {name}{hint}")

    def __reduce__(self) -> tuple[type[Interrupted], tuple[int, object, str | None, str | None, bool]]:
        return type(self), (self.signum, self.checkpoint, self.during, self.note, self.resume)  # sent between ranks
