"""The forked command-line processes of :mod:`cli_process` behave as fresh interpreters do."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import cli_process

PROBE = """
import atexit, json, os, sys, tempfile
atexit.register(lambda: print("atexit ran"))
print(json.dumps({"pid": os.getpid(), "cwd": os.getcwd(), "argv": sys.argv[1:], "var": os.environ.get("PROBE_VAR"),
                  "tmp": tempfile.gettempdir(), "threads": __import__("torch").get_num_threads()}))
sys.exit(int(sys.argv[1]))
"""


def test_a_forked_command_is_its_own_process_with_its_own_environment(tmp_path: Path) -> None:
    import json

    env = {**os.environ, "PROBE_VAR": "x", "TMPDIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    r = cli_process.run(["3", "more"], code=PROBE, cwd=tmp_path, env=env, timeout=120)
    assert r.returncode == 3, r.stderr
    seen, last = r.stdout.splitlines()
    info = json.loads(seen)
    assert info["pid"] != os.getpid() and info["cwd"] == str(tmp_path) and info["argv"] == ["3", "more"]
    assert info["var"] == "x" and info["tmp"] == str(tmp_path) and info["threads"] == 1
    assert last == "atexit ran"  # a normal interpreter exit, not os._exit


def test_signals_and_statuses_are_real() -> None:
    proc = cli_process.start([], code="import time\nprint('up', flush=True)\ntime.sleep(60)")
    end = time.monotonic() + 60
    while proc.poll() is None and "up" not in proc.stdout_text() and time.monotonic() < end:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    r = cli_process.run(["info", "nope:x"], timeout=120)  # the real CLI: one line, exit 2
    assert r.returncode == 2 and r.stderr.startswith("error: unknown model spec 'nope:x'"), r.stderr


def test_an_environment_read_at_import_time_gets_a_fresh_interpreter() -> None:
    """A fork has torch imported already; a variable read while importing (here ``COMPRESS_DATA_DIR``) would be the
    zygote's, so such a command, or one asked ``fresh``, starts a new interpreter."""
    code = "import sys; print('torch' in sys.modules)"
    assert cli_process.run([], code=code).stdout.strip() == str(cli_process.forking())
    elsewhere = {**os.environ, "COMPRESS_DATA_DIR": "/elsewhere"}
    assert cli_process.run([], code=code, env=elsewhere).stdout.strip() == "False"
    assert cli_process.run([], code=code, fresh=True).stdout.strip() == "False"
