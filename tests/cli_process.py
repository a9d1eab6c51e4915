"""``python -m compressor ARGS`` as a real child process, without the seconds of imports a fresh interpreter pays.

A fresh interpreter spends ~2.5 s importing torch, ONNX and the CLI before a command does anything (~4 s on an
AVX2 box), and the crash, signal, lock and write-failure tests start a hundred of them. Here a *zygote* (one per
pytest process) imports all that once and forks on request. A fork is a real process: its own PID, the command's
own signal handlers, a real exit status (a SIGKILL reads -9), atexit handlers, real files. It is reparented to
this process (Linux's child subreaper, set only while it is handed over), so ``wait``/``poll``/``send_signal``
work as with ``subprocess.Popen``; its stdout and stderr go to files read when it ends.

A fresh interpreter runs instead where a fork would not behave as one: not Linux, a zygote that died or printed
anything while importing (a command's stderr would miss it), an environment that differs where Python or the
CLI read it at import time (:data:`IMPORT_TIME_ENV`), or ``fresh=True`` (its own start and hash seed: the crash
tests' reference run). ``test_cli_startup.py`` starts real interpreters; under ``--nproc``/torchrun the
launcher is forked and its ranks are fresh interpreters, as for a user.
"""

from __future__ import annotations

import atexit
import ctypes
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
#: Environment a fresh interpreter reads while importing (Python itself, our import-time settings, BLAS, the home
#: directory): a command whose environment differs from the zygote's there runs in a fresh interpreter.
IMPORT_TIME_ENV = ("PYTHON", "COMPRESS_", "HOME", "XDG_", "OPENBLAS_", "MKL_")

ZYGOTE = r"""
import gc, json, os, runpy, sys, tempfile
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
    _reply.close()
    sys.stdin.close()  # the requests: the command reads /dev/null
    for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                            (2, req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
        f = os.open(path, flags, 0o644)
        os.dup2(f, fd)
        os.close(f)
    sys.stdin = open(0)
    os.chdir(req["cwd"])  # from here on, errors go to the command's own stderr
    os.environ.clear()
    os.environ.update(req["env"])
    tempfile.tempdir = None  # TMPDIR is read again from this environment
    torch.set_num_threads(int(req["env"].get("OMP_NUM_THREADS") or DEFAULT_THREADS))
    if req.get("code") is not None:  # python -c CODE ARGS
        sys.argv = ["-c", *req["args"]]
        exec(compile(req["code"], "<string>", "exec"), {"__name__": "__main__"})
    else:  # python -m MODULE ARGS
        sys.argv = [req["module"], *req["args"]]
        runpy.run_module(req["module"], run_name="__main__", alter_sys=True)

for line in sys.stdin:
    req = json.loads(line)
    # The imports' objects are old and shared: the collector skips them, so a command's exit does not walk (and
    # copy) them all; that walk cost ~0.7 s a command. The command's own objects are collected as usual.
    gc.freeze()
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
        _subreaper(False)  # fails here, not mid-test, where prctl is refused
        self.logfile = _outputs()[0].with_suffix(".zygote.log")
        atexit.register(self.close)
        r, w = os.pipe()
        self.env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        with open(self.logfile, "w") as log:  # its own output (import-time warnings), not a test's
            self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE, str(w)], stdin=subprocess.PIPE, stdout=log,
                                         stderr=log, env=self.env, pass_fds=(w,), text=True, cwd=ROOT)  # fmt: skip
        os.close(w)
        self.replies = os.fdopen(r)
        if self.replies.readline() != "ready\n":  # its imports are done
            raise RuntimeError(f"the zygote did not start (exit {self.proc.wait()}): {self.log()}")
        if self.log():  # a command's stderr must not lose what a fresh interpreter would print at import
            raise RuntimeError(f"importing printed: {self.log()}")

    def log(self) -> str:
        return self.logfile.read_text(errors="replace").strip()

    def serves(self, env: dict[str, str]) -> bool:
        """Whether a fork runs as a fresh interpreter with ``env`` would: nothing read at import time differs."""
        return all(env.get(k) == self.env.get(k) for k in {*env, *self.env}
                   if k.startswith(IMPORT_TIME_ENV) and k != "PYTHONPATH")  # fmt: skip

    def fork(self, request: dict[str, Any]) -> tuple[int, Path, Path]:
        out, err = _outputs()
        assert self.proc.stdin is not None
        _subreaper(True)  # only while the command is being reparented: later orphans go to init as usual
        try:
            self.proc.stdin.write(json.dumps({**request, "stdout": str(out), "stderr": str(err)}) + "\n")
            self.proc.stdin.flush()
            line = self.replies.readline()
        finally:
            _subreaper(False)
        if not line:
            raise RuntimeError(f"the zygote ended (exit {self.proc.wait()}): {self.log()}")
        return int(line), out, err

    def close(self) -> None:
        if self.proc.poll() is None and self.proc.stdin is not None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


_OUTPUTS: list[Path] = []  # this process's folder of command outputs (removed at exit)
_NUMBERS = itertools.count()


def _outputs() -> tuple[Path, Path]:
    """Paths for the next command's stdout and stderr."""
    if not _OUTPUTS:
        _OUTPUTS.append(Path(tempfile.mkdtemp(prefix="cli-process-")))
        atexit.register(shutil.rmtree, _OUTPUTS[0], ignore_errors=True)
    n = next(_NUMBERS)
    return _OUTPUTS[0] / f"{n}.out", _OUTPUTS[0] / f"{n}.err"


def _subreaper(on: bool) -> None:
    """Linux's PR_SET_CHILD_SUBREAPER on this process: a forked command's parent exits and it becomes ours."""
    if ctypes.CDLL(None, use_errno=True).prctl(36, int(on), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


_ZYGOTE: list[_Zygote] = []
_FAILED: list[str] = []


def _failed(exc: Exception) -> None:
    """No more forks in this process: slower, still correct; said in pytest's warnings summary."""
    _FAILED.append(str(exc))
    warnings.warn(f"no zygote ({exc}): command-line tests start fresh interpreters", stacklevel=3)


def _zygote() -> _Zygote | None:
    if not _ZYGOTE and not _FAILED and sys.platform == "linux":
        try:
            _ZYGOTE.append(_Zygote())
        except (OSError, RuntimeError) as exc:
            _failed(exc)
    return _ZYGOTE[0] if _ZYGOTE and not _FAILED else None


def forking() -> bool:
    """Whether commands run as forks here (False: fresh interpreters, each paying its start); starts the zygote
    (its imports take seconds) if it is not running yet."""
    return _zygote() is not None


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
          env: dict[str, str] | None = None, fresh: bool = False) -> Process:  # fmt: skip
    """``python -m MODULE ARGS`` (or ``python -c CODE ARGS``) in ``cwd`` with ``env`` (default: this process's);
    ``fresh``: in a new interpreter (its own start, its own hash seed), not a fork."""
    args = [str(a) for a in args]
    env = dict(os.environ if env is None else env)
    zygote = None if fresh else _zygote()
    if zygote is not None and zygote.serves(env):
        try:
            pid, out, err = zygote.fork({"args": args, "module": module, "code": code, "cwd": str(cwd), "env": env})
            return CliProcess(args, pid, out, err)
        except (OSError, RuntimeError) as exc:  # the zygote died: fresh interpreters from now on
            _failed(exc)
    cmd = [sys.executable, *(["-c", code] if code is not None else ["-m", module]), *args]
    return _Fresh(cmd, *_outputs(), cwd=cwd, env=env)


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


def until(done: Callable[[], bool], limit: float, every: float = 0.05) -> bool:
    """Poll ``done`` until it holds (True) or ``limit`` seconds pass (False): a generous limit, not a timing check."""
    end = time.monotonic() + limit
    while not done():
        if time.monotonic() > end:
            return False
        time.sleep(every)
    return True


def wait_for(path: Path, proc: CliProcess | subprocess.Popen, limit: float = 300) -> bool:
    """Poll until ``path`` exists (True) or ``proc`` ended (False)."""
    until(lambda: path.exists() or proc.poll() is not None, limit)
    return path.exists()
