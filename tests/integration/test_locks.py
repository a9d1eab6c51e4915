"""Neighbours: two commands writing the same run directory or output file at once. The second is refused
(exit 2) naming the holder; a stale lock (its process is gone) is taken over with a note; locks are removed
after a normal exit, an error and SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cli_process
import pytest

from compressor.errors import BadInput
from compressor.runtime import lock

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
       "OMP_NUM_THREADS": "1"}  # fmt: skip
DATA = "synthetic:1x28x28:10:64:32"
PRUNE = ["prune", "--model", "cifar:resnet20", "--data", DATA, "--target-flops", "0.3", "--device", "cpu",
         "--quiet"]  # fmt: skip
# a prune's run directory with the default method (aster_tau.png is its plot)
RUN_FILES = {"pruned.pt", "dense.pt", "report.json", "report.md", "config.yaml", "history.jsonl",
             "aster_tau.png"}  # fmt: skip
HOLDER = f"PID {os.getpid()} on {socket.gethostname()}"


def compress(*args: str) -> subprocess.CompletedProcess:
    return cli_process.run(args, env=ENV, cwd=ROOT, timeout=600)


def assert_refused(r: subprocess.CompletedProcess, what: str, holder: str = HOLDER) -> None:
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert what in lines[0] and f"is being written by {holder}" in lines[0], r.stderr


# ------------------------------------------------------------------------------------------------ the module


def test_lock_refuses_a_second_holder_and_is_removed(tmp_path: Path) -> None:
    path = tmp_path / "run" / lock.RUN_LOCK
    with lock.run_directory(tmp_path / "run"):
        assert path.read_text() == f"pid={os.getpid()}\nhost={socket.gethostname()}\n"
        with lock.run_directory(tmp_path / "run"):  # reentrant in this process
            pass
        assert path.is_file()
        code = ("import sys; from compressor.runtime import lock\n"
                "with lock.run_directory(sys.argv[1]): pass")  # fmt: skip
        r = cli_process.run([str(tmp_path / "run")], code=code, env=ENV, cwd=ROOT)
        assert r.returncode != 0 and f"is being written by {HOLDER}" in r.stderr
    assert not (tmp_path / "run").exists()  # the directory was made for the lock alone: removed with it


def test_lock_released_on_error(tmp_path: Path) -> None:
    out = tmp_path / "model.onnx"
    with pytest.raises(BadInput), lock.output_file(out):
        raise BadInput("boom")
    assert list(tmp_path.iterdir()) == []


def test_stale_lock_taken_over(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = lock.file_lock(tmp_path / "b.json")
    path.write_text("pid=999999999\nhost=elsewhere\n")  # a killed process: its flock went with it
    with lock.output_file(tmp_path / "b.json"):
        assert f"pid={os.getpid()}" in path.read_text()
    assert "taking over the stale lock" in capsys.readouterr().err
    assert not path.exists()


# ------------------------------------------------------------------------------------- the commands, for real


def test_prune_refused_while_the_run_directory_is_held(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with lock.run_directory(run):
        r = compress(*PRUNE, "--epochs", "0", "--out", str(run))
        assert_refused(r, f"--out {run}")
        r = compress(*PRUNE, "--epochs", "0", "--out", str(run), "--resume")
        assert_refused(r, f"--out {run}")
    assert not run.exists()


def test_stale_run_lock_taken_over_and_removed(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / lock.RUN_LOCK).write_text("pid=999999999\nhost=gone\n")  # left by a SIGKILLed prune
    r = compress(*PRUNE, "--epochs", "0", "--out", str(run))
    assert r.returncode == 0, r.stderr
    assert "note: taking over the stale lock" in r.stderr and "PID 999999999 on gone" in r.stderr
    # no lock left (no epochs: no history and no tau plot)
    assert {p.name for p in run.iterdir()} == RUN_FILES - {"history.jsonl", "aster_tau.png"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("locks") / "run"
    r = compress(*PRUNE, "--epochs", "0", "--out", str(run))
    assert r.returncode == 0, r.stderr
    r = compress("export", str(run), "--no-accuracy")
    assert r.returncode == 0, r.stderr
    return run


def test_export_quantize_bench_refused_while_the_output_is_held(tmp_path: Path, exported: Path) -> None:
    onnx, int8, out = tmp_path / "m.onnx", tmp_path / "m.int8.onnx", tmp_path / "b.json"
    with lock.output_file(onnx), lock.output_file(int8), lock.output_file(out):
        assert_refused(compress("export", str(exported), "--out", str(onnx), "--no-accuracy"), f"--out {onnx}")
        assert_refused(compress("quantize", str(exported), "--out", str(int8), "--no-accuracy"), f"--out {int8}")
        r = compress("bench", str(exported / "pruned.onnx"), "--warmup", "1", "--iters", "2", "--json-out", str(out))
        assert_refused(r, f"--json-out {out}")
    assert list(tmp_path.iterdir()) == []  # nothing written, no lock left
    with lock.run_directory(exported):  # export and quantize record their file in the run's report.json
        assert_refused(compress("export", str(exported), "--out", str(onnx), "--no-accuracy"),
                       f"run directory {exported}")  # fmt: skip
        assert_refused(compress("quantize", str(exported), "--out", str(int8), "--no-accuracy"),
                       f"run directory {exported}")  # fmt: skip
    assert list(tmp_path.iterdir()) == []
    r = compress("export", str(exported), "--out", str(onnx), "--no-accuracy")  # free again
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


@contextmanager
def _running(*args: str) -> Iterator[cli_process.Process]:
    """``python -m compressor ARGS`` in the background; killed on the way out if it still runs."""
    proc = cli_process.start(args, env=ENV, cwd=ROOT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_second_prune_refused_while_the_first_trains_then_sigterm_and_resume(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = [*PRUNE, "--data", "synthetic:1x28x28:10:512:32", "--epochs", "3", "--checkpoint-every", "1",
            "--out", str(run)]  # fmt: skip
    with _running(*args) as first:
        assert cli_process.wait_for(run / "config.yaml", first), "the first prune did not start"
        second = compress(*args, "--resume")
        if first.poll() is not None:
            pytest.skip("the first prune finished before the second one started (a very fast machine)")
        assert_refused(second, f"--out {run}", holder=f"PID {first.pid} on {socket.gethostname()}")
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=300)
    if first.returncode == 0:
        pytest.skip("the first prune finished before SIGTERM arrived")
    assert first.returncode == 143, err
    assert not (run / lock.RUN_LOCK).exists(), "SIGTERM left the lock behind"
    r = compress(*args, "--resume")
    assert r.returncode == 0, r.stderr
    assert "stale lock" not in r.stderr
    assert {p.name for p in run.iterdir()} == RUN_FILES


def test_sigterm_removes_an_output_lock(tmp_path: Path, exported: Path) -> None:
    out = tmp_path / "b.json"
    args = ["bench", str(exported / "pruned.onnx"), "--warmup", "1", "--iters", "100000", "--json-out", str(out)]
    with _running(*args) as proc:
        assert cli_process.wait_for(lock.file_lock(out), proc), "bench did not take the lock"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1].startswith("error: interrupted by SIGTERM"), err
    assert list(tmp_path.iterdir()) == []
