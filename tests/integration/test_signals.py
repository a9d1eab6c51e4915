"""SIGINT/SIGTERM outside training: export, quantize, eval, bench and a recipe's later stages exit 130/143
with one line on stderr, no traceback, no temp files and no partial output (an existing file stays intact).

Each case runs the real command line in a subprocess. To signal it at a known point, deterministically, the
subprocess starts through a two-line hook that wraps one function of the pipeline (``SLOW_AT``: the ONNX
file save, the latency timer, an accuracy batch): the wrapper touches a marker file and sleeps, so the test
waits for the marker (no fixed sleeps) and signals a process that is inside that stage, temp files present.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import cli_process
import pytest
import yaml
from click.testing import CliRunner

from compressor.cli import main
from compressor.errors import Interrupted

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
DATA = "synthetic:3x32x32:10:64:32"
PRUNE = ["prune", "--model", "cifar:resnet20", "--data", DATA, "--method", "l1", "--epochs", "0",
         "--target-flops", "0.3", "--device", "cpu", "--quiet", "--seed", "0"]  # fmt: skip
SIGNALS = [(signal.SIGINT, 130), (signal.SIGTERM, 143)]

# Wrap SLOW_AT ("module:function" or "module:Class.method") so that its first call marks SLOW_MARK and
# sleeps, then run the CLI.
HOOK = """
import importlib, os, sys, time
from pathlib import Path
mod, _, path = os.environ["SLOW_AT"].partition(":")
owner = importlib.import_module(mod)
*parents, name = path.split(".")
for parent in parents:
    owner = getattr(owner, parent)
real = getattr(owner, name)
def slow(*args, **kwargs):
    Path(os.environ["SLOW_MARK"]).touch()
    time.sleep(300)
    return real(*args, **kwargs)
setattr(owner, name, slow)
from compressor.cli import main
main(sys.argv[1:])
"""


def _invoke(args: list[str]) -> Any:
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny pruned run with its pruned.onnx (made in this process: no interpreter start)."""
    out = tmp_path_factory.mktemp("signals") / "run"
    _invoke([*PRUNE, "--out", str(out)])
    _invoke(["export", str(out)])
    return out


def _tree(d: Path) -> dict[str, str]:
    """Every file under ``d`` (temp files included) with a hash of its bytes."""
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(d.rglob("*"))}  # fmt: skip


def _interrupt(args: list[str], slow_at: str, sig: int, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run ``compress ARGS``, wait until it is inside ``slow_at``, send ``sig``; the finished process."""
    mark, scratch = tmp_path / "inside", tmp_path / "tmpdir"
    scratch.mkdir()
    env = {**ENV, "SLOW_AT": slow_at, "SLOW_MARK": str(mark), "TMPDIR": str(scratch), "OMP_NUM_THREADS": "1"}
    proc = cli_process.start(args, code=HOOK, env=env)
    try:
        deadline = time.monotonic() + 240
        while not mark.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert mark.exists(), f"never reached {slow_at} (exit {proc.poll()}): {proc.stderr_text()}"
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # what libraries keep there on any run (torch's compile cache, ONNX Runtime's .ses) is not a leftover
    left = [p.name for p in scratch.iterdir() if not p.name.startswith("torchinductor_") and p.name != ".ses"]
    assert not left, f"scratch files left in TMPDIR: {left}"
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _check_stopped(proc: subprocess.CompletedProcess[str], sig: int, code: int, stage: str) -> str:
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"error: interrupted by {signal.Signals(sig).name} during {stage}"), lines[0]
    return lines[0]


def _with_previous(out_dir: Path, name: str) -> Path:
    out_dir.mkdir()
    previous = out_dir / name
    previous.write_bytes(b"the previous file\n")
    return previous


# SIGINT while verifying against PyTorch, SIGTERM while the files are being staged next to the output
@pytest.mark.parametrize(("sig", "code", "slow_at"), [(*SIGNALS[0], "exporters.verify:_verify_batch"),
                                                      (*SIGNALS[1], "exporters.files:_save")])  # fmt: skip
def test_export(run_dir: Path, tmp_path: Path, sig: int, code: int, slow_at: str) -> None:
    previous = _with_previous(tmp_path / "out", "model.onnx")
    before, run_before = _tree(previous.parent), _tree(run_dir)
    # --external-data: the export goes through a scratch directory too (TMPDIR), and writes two files
    proc = _interrupt(["export", str(run_dir), "--out", str(previous), "--external-data"], slow_at, sig, tmp_path)
    assert "nothing written" in _check_stopped(proc, sig, code, "export")
    assert _tree(previous.parent) == before  # no staging directory, no model.onnx.data, the old file intact
    assert _tree(run_dir) == run_before  # report.json untouched


# SIGINT while ONNX Runtime calibrates (its own temp directory too), SIGTERM while the file is being staged
@pytest.mark.parametrize(("sig", "code", "slow_at"), [(*SIGNALS[0], "exporters.quantize:_Reader.get_next"),
                                                      (*SIGNALS[1], "exporters.files:_save")])  # fmt: skip
def test_quantize(run_dir: Path, tmp_path: Path, sig: int, code: int, slow_at: str) -> None:
    previous = _with_previous(tmp_path / "out", "model.int8.onnx")
    before, run_before = _tree(previous.parent), _tree(run_dir)
    proc = _interrupt(["quantize", str(run_dir), "--out", str(previous), "--calib-batches", "1"], slow_at, sig,
                      tmp_path)  # fmt: skip
    assert "nothing written" in _check_stopped(proc, sig, code, "quantize")
    assert _tree(previous.parent) == before
    assert _tree(run_dir) == run_before


def test_bench(run_dir: Path, tmp_path: Path) -> None:
    previous = _with_previous(tmp_path / "out", "bench.json")
    before = _tree(previous.parent)
    proc = _interrupt(["bench", str(run_dir / "pruned.onnx"), "--duration", "30", "--json-out", str(previous),
                       "--md", str(previous.parent / "bench.md")], "benchmarks.latency:timed", signal.SIGTERM,
                      tmp_path)  # fmt: skip
    _check_stopped(proc, signal.SIGTERM, 143, "bench")
    assert proc.stdout == ""  # no table
    assert _tree(previous.parent) == before


def test_eval(run_dir: Path, tmp_path: Path) -> None:
    proc = _interrupt(["eval", str(run_dir / "pruned.onnx")], "exporters.accuracy:_run", signal.SIGINT, tmp_path)
    _check_stopped(proc, signal.SIGINT, 130, "eval")
    assert proc.stdout == ""


def test_run_after_pruning_keeps_the_pruned_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    recipe = tmp_path / "recipe.yaml"
    prune = {
        "model": "cifar:resnet20",
        "data": DATA,
        "method": "l1",
        "epochs": 0,
        "target_flops": 0.3,
        "device": "cpu",
        "quiet": True,
        "seed": 0,
        "out": str(out),
    }  # PRUNE as a recipe section
    recipe.write_text(yaml.safe_dump({"prune": prune, "bench": {"iters": 5, "warmup": 1}}))
    proc = _interrupt(["run", str(recipe)], "exporters.files:_save", signal.SIGTERM, tmp_path)
    line = _check_stopped(proc, signal.SIGTERM, 143, "export")
    assert str(out) in line
    names = {p.name for p in out.iterdir()}
    assert {"pruned.pt", "dense.pt", "report.json"} <= names  # the pruning stage's outputs stay
    assert not names & {"pruned.onnx", "dense.onnx", "bench.json", "summary.json"}
    assert not [n for n in names if n.startswith(".") or n.endswith(".tmp")], names
    json.loads((out / "report.json").read_text())  # whole


# --------------------------------------------------------------------------------------------
# the guard itself, in this process
# --------------------------------------------------------------------------------------------


def test_the_guard_raises_interrupted_and_restores_the_handlers() -> None:
    from compressor.errors import Interrupted
    from compressor.runtime.signals import interruptible

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(Interrupted) as info, interruptible("export"):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)  # the handler raises here
        except Exception:  # an except-Exception fallback does not swallow it
            pytest.fail("Interrupted was caught as an Exception")
    assert info.value.signum == signal.SIGTERM
    assert str(info.value) == "interrupted by SIGTERM during export; nothing written"
    assert {sig: signal.getsignal(sig) for sig in before} == before
    with interruptible("bench") as guard:  # no signal: nothing happens
        guard.during = "bench's output"
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_a_swallowed_interrupt_is_raised_again_when_the_block_ends() -> None:
    from compressor.errors import Interrupted
    from compressor.runtime.signals import interruptible

    with pytest.raises(Interrupted, match="SIGINT during eval"), interruptible("eval"):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(30)
        except BaseException:  # what a careless library might do
            pass


def test_interrupted_survives_pickling() -> None:  # sent between ranks (runtime.distributed.on_main)
    import pickle

    from compressor.errors import Interrupted

    for exc in (Interrupted(15, "runs/x/checkpoint.pt"), Interrupted(2, during="quantize", note="kept")):
        again = pickle.loads(pickle.dumps(exc))
        assert (type(again), again.signum, str(again)) == (Interrupted, exc.signum, str(exc))


@pytest.mark.parametrize(("stop", "code", "line"), [
    (lambda: Interrupted(signal.SIGTERM, during="bench", note="nothing written"), 143,
     "error: interrupted by SIGTERM during bench; nothing written"),
    (KeyboardInterrupt, 130, "error: interrupted"),
], ids=["SIGTERM", "SIGINT"])  # fmt: skip
def test_a_signal_inside_a_c_extensions_import_is_still_a_stop(run_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                               stop: Any, code: int, line: str) -> None:  # fmt: skip
    """A signal that lands while ONNX Runtime's extension initializes reaches the command as that import's
    ``ImportError("initialization failed")`` with the stop as its cause (how pybind11 reports any error in a
    module's init; the window is too short to hit on purpose): it is a stop, 130/143, not an internal error."""
    import compressor.jobs.bench as jobs_bench

    def failing_import(*_: Any, **__: Any) -> None:
        raise ImportError("initialization failed") from stop()

    monkeypatch.setattr(jobs_bench, "bench_models", failing_import)
    result = CliRunner().invoke(main, ["bench", str(run_dir / "pruned.onnx")])
    assert result.exit_code == code, result.output
    assert result.output.strip().splitlines() == [line]
