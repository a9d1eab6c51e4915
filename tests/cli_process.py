"""``python -m compressor ARGS`` as a real child process, without the seconds of imports a fresh interpreter pays.

A fresh interpreter spends ~2.5 s importing torch, ONNX, ONNX Runtime and the CLI before a command does anything,
and the crash, signal, lock and write-failure tests start a hundred of them. Here a *zygote* (one per pytest
process) imports all that once and forks on request. A fork is a real process: its own PID, the command's own
signal handlers, a real exit status (a SIGKILL reads -9), atexit handlers, real files. It is reparented to this
process (Linux's child subreaper), so ``wait``/``poll``/``send_signal`` work as with ``subprocess.Popen``; its
stdout and stderr go to files read when it ends. Where that cannot be set up (not Linux), :func:`start` runs a
fresh interpreter instead. What a fork does not test is the interpreter's own start: ``test_cli_startup.py``
and the ``--nproc``/torchrun tests start real ones.
"""

from __future__ import annotations

import atexit
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

ZYGOTE = r"""
import json, os, runpy, sys, tempfile
import torch, torch._dynamo, onnx  # what every command imports (SGD's first step imports dynamo)
import compressor.cli, compressor.jobs.prune, compressor.jobs.export, compressor.jobs.bench  # noqa: F401
import compressor.jobs.quantize, compressor.jobs.report  # noqa: F401
# Not ONNX Runtime: its import starts a thread, and a fork's exit then waits on a thread it does not have.
assert "onnxruntime" not in sys.modules, "the zygote imported onnxruntime"
DEFAULT_THREADS = torch.get_num_threads()
_reply = os.fdopen(int(sys.argv[1]), "w")
_reply.write("ready\n")
_reply.flush()

def child(req):
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    tempfile.tempdir = None  # TMPDIR is read again from this environment
    torch.set_num_threads(int(req["env"].get("OMP_NUM_THREADS") or DEFAULT_THREADS))
    _reply.close()
    sys.stdin.close()  # the requests: the command reads /dev/null
    for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                            (2, req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
        f = os.open(path, flags, 0o644)
        os.dup2(f, fd)
        os.close(f)
    sys.stdin = open(0)
    if req.get("code") is not None:  # python -c CODE ARGS
        sys.argv = ["-c", *req["args"]]
        exec(compile(req["code"], "<string>", "exec"), {"__name__": "__main__"})
    else:  # python -m MODULE ARGS
        sys.argv = [req["module"], *req["args"]]
        runpy.run_module(req["module"], run_name="__main__", alter_sys=True)

for line in sys.stdin:
    req = json.loads(line)
    r, w = os.pipe()
    middle = os.fork()
    if middle == 0:  # fork again and leave: the command is reparented to the subreaper that asked for it
        os.close(r)
        pid = os.fork()
        if pid:
            os.write(w, str(pid).encode())
            os._exit(0)
        os.close(w)
        child(req)  # SystemExit, an exception or KeyboardInterrupt end this interpreter as they end any
        sys.exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        pid = int(f.read())
    os.waitpid(middle, 0)
    _reply.write(f"{pid}\n")
    _reply.flush()
"""


class _Zygote:
    """The forking process of this pytest process (started on first use, ended at exit)."""

    def __init__(self) -> None:
        if ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
        r, w = os.pipe()
        env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE, str(w)], stdin=subprocess.PIPE, env=env,
                                     pass_fds=(w,), text=True, cwd=ROOT)  # fmt: skip
        os.close(w)
        self.replies = os.fdopen(r)
        if self.replies.readline() != "ready\n":  # its imports are done
            raise RuntimeError(f"the zygote did not start (exit {self.proc.wait()})")
        self.dir = Path(tempfile.mkdtemp(prefix="cli-process-"))
        self.count = 0
        atexit.register(self.close)

    def fork(self, request: dict[str, Any]) -> tuple[int, Path, Path]:
        self.count += 1
        out, err = self.dir / f"{self.count}.out", self.dir / f"{self.count}.err"
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({**request, "stdout": str(out), "stderr": str(err)}) + "\n")
        self.proc.stdin.flush()
        line = self.replies.readline()
        if not line:
            raise RuntimeError(f"the zygote ended (exit {self.proc.wait()})")
        return int(line), out, err

    def close(self) -> None:
        if self.proc.poll() is None and self.proc.stdin is not None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)


_ZYGOTE: list[_Zygote] = []


_FAILED: list[str] = []


def _zygote() -> _Zygote | None:
    if not _ZYGOTE and not _FAILED and sys.platform == "linux":
        try:
            _ZYGOTE.append(_Zygote())
        except (OSError, RuntimeError) as exc:  # slower, still correct: say so in pytest's warnings summary
            _FAILED.append(str(exc))
            warnings.warn(f"no zygote ({exc}): command-line tests start fresh interpreters", stacklevel=2)
    return _ZYGOTE[0] if _ZYGOTE else None


def warm() -> None:
    """Start the zygote now (its imports take seconds), e.g. before timing a command."""
    _zygote()


class CliProcess:
    """The ``subprocess.Popen`` surface the tests use, for a forked command: ``pid``, ``returncode``, ``poll``,
    ``wait``, ``send_signal``, ``kill``, ``communicate`` (stdout and stderr as text, once it has ended)."""

    def __init__(self, args: list[str], pid: int, out: Path, err: Path) -> None:
        self.args, self.pid, self._out, self._err = args, pid, out, err
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        end = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if end is not None and time.monotonic() > end:
                raise subprocess.TimeoutExpired(self.args, timeout)  # type: ignore[arg-type]
            time.sleep(0.01)
        return self.returncode  # type: ignore[return-value]

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        self.wait(timeout)
        return self.stdout_text(), self.stderr_text()

    def stdout_text(self) -> str:
        return self._out.read_text(errors="replace")

    def stderr_text(self) -> str:
        return self._err.read_text(errors="replace")


class _Fresh(subprocess.Popen):
    """A fresh interpreter with the same surface (where no zygote can run): output to files as well."""

    def __init__(self, cmd: list[str], out: Path, err: Path, **kwargs: Any) -> None:
        self._out, self._err = out, err
        with open(out, "wb") as stdout, open(err, "wb") as stderr:
            super().__init__(cmd, stdout=stdout, stderr=stderr, **kwargs)

    def communicate(self, input: Any = None, timeout: float | None = None) -> tuple[str, str]:  # noqa: A002
        self.wait(timeout)
        return self.stdout_text(), self.stderr_text()

    stdout_text = CliProcess.stdout_text
    stderr_text = CliProcess.stderr_text


Process = CliProcess | _Fresh


def start(args: Sequence[str], *, module: str = "compressor", code: str | None = None, cwd: Path | str = ROOT,
          env: dict[str, str] | None = None) -> Process:  # fmt: skip
    """``python -m MODULE ARGS`` (or ``python -c CODE ARGS``) in ``cwd`` with ``env`` (default: this process's)."""
    args = [str(a) for a in args]
    env = dict(os.environ if env is None else env)
    zygote = _zygote()
    if zygote is None:
        cmd = [sys.executable, *(["-c", code] if code is not None else ["-m", module]), *args]
        fd, name = tempfile.mkstemp(prefix="cli-process-", suffix=".out")
        os.close(fd)
        out = Path(name)
        atexit.register(lambda: [p.unlink(missing_ok=True) for p in (out, out.with_suffix(".err"))])
        return _Fresh(cmd, out, out.with_suffix(".err"), cwd=cwd, env=env)
    pid, out, err = zygote.fork({"args": args, "module": module, "code": code, "cwd": str(cwd), "env": env})
    return CliProcess(args, pid, out, err)


def run(args: Sequence[str], *, timeout: float = 600, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """:func:`start`, wait (killing it past ``timeout``), and the finished process with its output as text."""
    proc = start(args, **kwargs)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
