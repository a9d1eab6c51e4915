"""DDP under torchrun with the gloo backend on the CPU: ranks agree exactly, and 2 processes match 1.

``compress prune --nproc 2`` (our launcher) and plain ``torchrun -m compressor prune`` both run here as real
processes: the launcher is forked from the test's warm interpreter (``cli_process``), and it starts its ranks as
fresh interpreters, as it does for a user; the collectives' unit tests run in a real 2-process gloo group
(``torch.multiprocessing``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cli_process
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from compressor.data import load_data
from compressor.errors import BadInput
from compressor.runtime import distributed, launch, orphans
from compressor.train import evaluate

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
       "OMP_NUM_THREADS": "1"}  # fmt: skip
DATA = ["--data", "synthetic:1x28x28:10:256:64", "--batch-size", "32", "--device", "cpu", "--quiet", "--seed", "0"]
NO_BN = """from torch import nn
def make(num_classes=10, in_channels=1):
    return nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1),
                         nn.ReLU(), nn.Conv2d(32, 32, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(32, num_classes))
"""
# DDP vs one process on the same global batch (no BatchNorm, see the test): the tolerance we state
WEIGHT_ATOL = 1e-5
LOSS_RTOL = 1e-5

pytestmark = pytest.mark.ddp  # every test here launches or emulates several ranks


def _compress(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return cli_process.run(args, cwd=cwd, env=ENV, timeout=300)


def _torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    launcher = ["--standalone", "--nproc-per-node", "2", "-m", "compressor"]
    return cli_process.run([*launcher, *args], module="torch.distributed.run", cwd=cwd, env=ENV, timeout=300)


def _report(out: Path) -> dict[str, Any]:
    return json.loads((out / "report.json").read_text())


def test_two_processes_match_one_process_on_the_same_global_batch(tmp_path: Path) -> None:
    """PSAP on a BatchNorm-free net: the 2-rank run equals the 1-process run up to float summation order.

    Each rank takes every other sample of the epoch's order with a batch of 16, so rank 0's and rank 1's
    k-th batches together are the 1-process k-th batch of 32, with the same augmentation; DDP averages the
    gradients. (With BatchNorm each rank normalises by its own half batch, as in any DDP run without
    SyncBatchNorm, which PyTorch runs on GPUs only: such runs differ by more than float noise.)
    """
    (tmp_path / "nobn.py").write_text(NO_BN)
    args = ["prune", "--model", "nobn.py:make", "--trust-code", "--method", "psap", "--epochs", "3",
            "--target-flops", "0.4", "--round-to", "1", *DATA]  # fmt: skip
    one = _compress(*args, "--out", "one", cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    two = _compress(*args, "--nproc", "2", "--out", "two", cwd=tmp_path)
    assert two.returncode == 0, two.stderr
    a, b = _report(tmp_path / "one"), _report(tmp_path / "two")
    assert b["distributed"]["world_size"] == 2 and b["distributed"]["backend"] == "gloo"
    assert "distributed" not in a
    assert [g["kept"] for g in a["groups"]] == [g["kept"] for g in b["groups"]]  # the same masks
    assert [r["train_loss"] for r in b["history"]] == pytest.approx([r["train_loss"] for r in a["history"]],
                                                                    rel=LOSS_RTOL)  # fmt: skip
    assert b["pruned"]["acc"] == a["pruned"]["acc"]
    wa, wb = (torch.load(tmp_path / d / "pruned.pt", weights_only=True)["state_dict"] for d in ("one", "two"))
    for key, value in wa.items():
        torch.testing.assert_close(wb[key], value, rtol=0, atol=WEIGHT_ATOL, msg=key)
    rows = (tmp_path / "two" / "history.jsonl").read_text().splitlines()
    assert len(rows) == 3, "only rank 0 writes the history"


@pytest.mark.parametrize("method", ["psap", "aster"])
def test_ranks_agree_exactly_under_torchrun(tmp_path: Path, method: str) -> None:
    """With BatchNorm (per-rank statistics, per-rank PSAP pulses) every rank still reaches the same state."""
    out = tmp_path / "run"
    steps_all_along = ["--psap-freeze-at", "1"] if method == "psap" else []  # v2 freezes early: keep stepping
    proc = _torchrun("prune", "--model", "cifar:resnet20", "--method", method, "--epochs", "3", "--target-flops",
                     "0.4", *DATA, *steps_all_along, "--out", str(out), cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = _report(out)
    assert report["distributed"]["world_size"] == 2
    digests = [row["rank_state"] for row in report["history"]]
    assert len(digests) == 3 and all(len(d) == 2 and d[0] == d[1] for d in digests), digests
    assert len({d[0] for d in digests}) > 1, "the method state never changed: the digest checks nothing"
    assert report["target"]["met"]
    assert sorted(p.name for p in out.iterdir() if p.suffix != ".png") == [
        "config.yaml", "dense.pt", "history.jsonl", "pruned.pt", "report.json", "report.md"]  # fmt: skip


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie has ended)."""
    try:
        return " Z " not in Path(f"/proc/{pid}/stat").read_text().split(")", 1)[1][:3]
    except FileNotFoundError:
        return False


def _children(pid: int) -> list[int]:
    """The processes ``pid``'s main thread started (torchrun's agent starts the ranks there)."""
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@pytest.mark.skipif(not Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").exists(),
                    reason="reads the process tree from Linux's /proc/PID/task/TID/children")  # fmt: skip
@pytest.mark.parametrize("launcher", ["--nproc", "torchrun"])
def test_the_ranks_stop_when_the_launcher_is_killed(tmp_path: Path, launcher: str) -> None:
    """torchrun starts each rank in a session of its own: a launcher killed outright (SIGKILL, which it cannot
    pass on) left them training. Now they get SIGTERM, save a checkpoint and release the run's lock."""
    args = ["prune", "--model", "cifar:resnet20", "--method", "psap", "--epochs", "500", "--target-flops", "0.4",
            *DATA, "--data", "synthetic:1x28x28:10:768:64", "--out", "run"]  # fmt: skip
    env = {**ENV, "TMPDIR": str(tmp_path)}  # the killed launcher's own temp directory stays behind
    if launcher == "--nproc":
        proc = cli_process.start([*args, "--nproc", "2"], cwd=tmp_path, env=env)
    else:
        proc = cli_process.start(["--standalone", "--nproc-per-node", "2", "-m", "compressor", *args],
                                 module="torch.distributed.run", cwd=tmp_path, env=env)  # fmt: skip
    try:
        cli_process.wait_for(tmp_path / "run" / "checkpoint.pt", proc, 120)
        ranks = _children(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    assert len(ranks) == 2, ranks
    cli_process.until(lambda: not any(map(_alive, ranks)), 60, every=0.1)  # seconds; 500 epochs take far longer
    running = [pid for pid in ranks if _alive(pid)]
    for pid in running:  # do not leave them to the next test
        os.kill(pid, signal.SIGKILL)
    assert not running, "ranks outlived their launcher"
    assert not (tmp_path / "run" / ".compress.lock").exists(), "rank 0 did not stop through SIGTERM (a kill leaves it)"
    from compressor.runtime import checkpoint

    warnings: list[str] = []
    assert checkpoint.load(tmp_path / "run" / "checkpoint.pt", warnings.append)["phase"] and not warnings


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's parent-death signal")
def test_a_rank_whose_launcher_is_already_gone_stops_itself() -> None:
    """The parent-death signal only covers a launcher that dies after the rank asked for it."""
    code = ("import signal, sys; from compressor.runtime.orphans import follow_launcher\n"
            "signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))\nfollow_launcher()\nsys.exit(0)")  # fmt: skip
    env = {k: v for k, v in ENV.items() if k not in (orphans.LAUNCHER_PID_ENV, orphans.TORCHRUN_ENV)}
    gone = {**env, orphans.LAUNCHER_PID_ENV: str(os.getppid())}  # never the child's parent: as if its launcher died
    assert subprocess.run([sys.executable, "-c", code], env=gone, timeout=60).returncode == 143
    for alive in ({orphans.LAUNCHER_PID_ENV: str(os.getpid())}, {orphans.TORCHRUN_ENV: "x"}, {}):
        assert subprocess.run([sys.executable, "-c", code], env={**env, **alive}, timeout=60).returncode == 0


_THREADED_LAUNCHER = """
import os, subprocess, sys, threading, time
os.environ["COMPRESS_LAUNCHER_PID"] = str(os.getpid())
for _ in range(3):  # torchrun's agent runs threads too
    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]], start_new_session=True)
time.sleep(60)
"""
_COUNTING_RANK = """
import signal, sys, time
from pathlib import Path
log = Path(sys.argv[1])
signal.signal(signal.SIGTERM, lambda *_: log.open("a").write("SIGTERM\\n"))
from compressor.runtime.orphans import follow_launcher
follow_launcher()
Path(sys.argv[1] + ".ready").write_text("")
time.sleep(3)
Path(sys.argv[1] + ".done").write_text("")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's parent-death signal")
def test_a_killed_launcher_sends_its_rank_one_sigterm(tmp_path: Path) -> None:
    """Linux sends the parent-death signal again as each thread of a dying launcher exits (a plain SIGTERM there
    reached a rank three times); a second SIGTERM aborts a rank wherever it is, so a rank gets exactly one."""
    log = tmp_path / "rank.log"
    launcher = subprocess.Popen([sys.executable, "-c", _THREADED_LAUNCHER, _COUNTING_RANK, str(log)], env=ENV)
    try:
        cli_process.until(Path(f"{log}.ready").exists, 60, every=0.02)
    finally:
        launcher.kill()
        launcher.wait()
    cli_process.until(Path(f"{log}.done").exists, 60)
    assert Path(f"{log}.done").exists(), "the rank never finished"
    assert log.read_text().splitlines() == ["SIGTERM"]


def test_bad_input_under_nproc_is_one_line_exit_2(tmp_path: Path) -> None:
    proc = _compress("prune", "--model", "cifar:resnet20", "--target-flops", "0.4", *DATA, "--batch-size", "33",
                     "--nproc", "2", "--out", "run", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--batch-size 33" in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "run").exists()


def _record(where: Path, rank: int, code: int, error: str | None, at: float) -> None:
    (where / f"rank{rank}").write_text(json.dumps({"code": code, "error": error, "at": at}))


def test_the_launcher_reports_the_first_rank_that_failed(tmp_path: Path) -> None:
    """torchrun stops the other ranks as soon as one fails (SIGTERM: their 143s; a peer sees a broken connection
    later): the launcher prints why the first one failed, whatever the others left."""
    bad = "--batch-size 33 is not a multiple of 2"
    _record(tmp_path, 1, 2, bad, at=10.0)
    assert launch.outcome(tmp_path, 2) == (2, bad)  # rank 0 was stopped before it could record
    _record(tmp_path, 0, 143, "interrupted by SIGTERM", at=11.0)
    assert launch.outcome(tmp_path, 2) == (2, bad)  # torchrun's SIGTERM is not the cause
    _record(tmp_path, 0, 3, "internal error: RuntimeError: connection closed by peer", at=11.0)
    assert launch.outcome(tmp_path, 2) == (2, bad)  # nor is the broken connection it saw afterwards
    _record(tmp_path, 0, 2, bad, at=10.5)
    assert launch.outcome(tmp_path, 2) == (2, bad)  # both failed alike: rank 0's line


def test_the_launcher_reports_a_stop_and_a_rank_that_left_nothing(tmp_path: Path) -> None:
    stopped = "interrupted by SIGINT: resumable checkpoint at run/checkpoint.pt, continue with --resume"
    _record(tmp_path, 0, 130, stopped, at=10.0)
    _record(tmp_path, 1, 130, "interrupted by SIGINT", at=10.0)
    assert launch.outcome(tmp_path, 2, signalled=signal.SIGINT) == (130, stopped)  # rank 0 names the checkpoint
    assert launch.outcome(tmp_path, 2) == (130, stopped)  # the ranks alone got the signal
    empty = tmp_path / "none"
    empty.mkdir()
    assert launch.outcome(empty, 2, signalled=signal.SIGTERM) == (143, "interrupted by SIGTERM")
    # a rank killed or crashed outside Python leaves no record (nor does an unreadable one): exit 3, never 0 or 1
    _record(empty, 0, 0, None, at=10.0)
    (empty / "rank2").write_text("{")
    assert launch.outcome(empty, 3, died={1: "signal SIGKILL"}) == (3, "rank 1 of 3 ended without a result "
                                                                       "(signal SIGKILL)")  # fmt: skip
    assert launch.outcome(empty, 1) == (0, None)


# --------------------------------------------------------------------------------------------
# the collectives, in a real 2-process gloo group
# --------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, results: Any) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    out: dict[str, Any] = {}
    try:
        distributed.setup(torch.device("cpu"))
        out["world"] = (distributed.rank(), distributed.world_size(), dist.get_backend())
        out["sum"] = distributed.all_sum([rank + 1.0, 10.0])
        t = torch.tensor([float(rank)])
        distributed.all_mean_([t])
        out["mean"] = float(t)
        out["on_main"] = distributed.on_main(lambda: f"from rank {distributed.rank()}")
        try:
            distributed.on_main(lambda: (_ for _ in ()).throw(BadInput("rank 0 says no")))
        except BadInput as exc:
            out["on_main_error"] = str(exc)
        try:
            distributed.check_agree(f"value {rank}", "a test value")
        except RuntimeError as exc:
            out["disagree"] = str(exc)
        out["agree"] = distributed.check_agree("same", "a test value")
        data = load_data("synthetic:1x8x8:3:40:37", batch_size=4, eval_batch_size=5, seed=0)
        data.test.set_distributed(rank, 2, pad=False)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
        torch.manual_seed(0)
        model[1].reset_parameters()
        out["eval"] = evaluate(model, data.test, torch.device("cpu"))
        out["share"] = len(data.test.iter_from(0).__next__()[1])
    except Exception as exc:  # reported to the test instead of hanging it
        out["error"] = repr(exc)
    finally:
        distributed.teardown()
        results[rank] = out


def test_collectives_in_a_two_process_gloo_group() -> None:
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        results = manager.dict()
        mp.start_processes(_worker, args=(_free_port(), results), nprocs=2, join=True, start_method="spawn")
        r0, r1 = dict(results[0]), dict(results[1])
    assert "error" not in r0 and "error" not in r1, (r0, r1)
    assert r0["world"] == (0, 2, "gloo") and r1["world"] == (1, 2, "gloo")
    assert r0["sum"] == r1["sum"] == [3.0, 20.0]
    assert r0["mean"] == r1["mean"] == 0.5
    assert r0["on_main"] == r1["on_main"] == "from rank 0"
    assert r0["on_main_error"] == r1["on_main_error"] == "rank 0 says no"
    assert "ranks disagree on a test value" in r0["disagree"] and "value 1" in r1["disagree"]
    assert r0["agree"] == ["same", "same"]
    # sharded evaluation (19 + 18 of 37 images, no padding) equals one process over all of them
    data = load_data("synthetic:1x8x8:3:40:37", batch_size=4, eval_batch_size=5, seed=0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    torch.manual_seed(0)
    model[1].reset_parameters()
    full = evaluate(model, data.test, torch.device("cpu"))
    assert r0["eval"]["n"] == r1["eval"]["n"] == full["n"] == 37
    assert r0["eval"]["acc"] == r1["eval"]["acc"] == full["acc"]
    assert r0["eval"]["loss"] == pytest.approx(full["loss"], rel=1e-6)


def test_rank_shards_make_up_the_one_process_batches() -> None:
    """Rank r's k-th batch of B/2 and rank 1-r's together are the one-process k-th batch of B (augmented)."""
    one = load_data("synthetic:1x12x12:4:64:8", batch_size=8, seed=3).train
    halves = [load_data("synthetic:1x12x12:4:64:8", batch_size=4, seed=3).train for _ in range(2)]
    for r, loader in enumerate(halves):
        loader.set_distributed(r, 2)
    for loader in (one, *halves):
        loader.set_epoch(1)
    for (x, y), (x0, y0), (x1, y1) in zip(one, *halves, strict=True):
        xs, ys = torch.empty_like(x), torch.empty_like(y)
        xs[0::2], xs[1::2], ys[0::2], ys[1::2] = x0, x1, y0, y1
        assert torch.equal(xs, x) and torch.equal(ys, y)
    # a mid-epoch start yields the remaining batches of the same epoch
    tail = list(one.iter_from(5))
    one.set_epoch(1)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(tail, list(one)[5:], strict=True))


def test_sigint_under_nproc_saves_once_and_resumes_bit_identically(tmp_path: Path) -> None:
    """Ctrl-C on ``--nproc 2``: every rank stops at the same step, rank 0 saves, --resume equals a clean run."""
    args = ["prune", "--model", "cifar:resnet20", "--method", "psap", "--epochs", "3", "--target-flops", "0.4",
            *DATA, "--data", "synthetic:1x28x28:10:768:64", "--nproc", "2"]  # fmt: skip
    proc = cli_process.start([*args, "--out", "run"], cwd=tmp_path, env=ENV)
    try:
        cli_process.wait_for(tmp_path / "run" / "checkpoint.pt", proc, 120)
        time.sleep(0.5)  # into the next epoch
        proc.send_signal(signal.SIGINT)  # the launcher passes it to its ranks
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:  # a hung launcher: SIGINT again stops its ranks too, then kill it
            proc.send_signal(signal.SIGINT)
            time.sleep(5)
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines() == [f"error: interrupted by SIGINT: resumable checkpoint at "
                                           f"{Path('run') / 'checkpoint.pt'}, continue with --resume"]  # fmt: skip
    resumed = _compress(*args, "--out", "run", "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    clean = _compress(*args, "--out", "clean", cwd=tmp_path)
    assert clean.returncode == 0, clean.stderr
    got, want = (torch.load(tmp_path / d / "pruned.pt", weights_only=True)["state_dict"] for d in ("run", "clean"))
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert _report(tmp_path / "run")["groups"] == _report(tmp_path / "clean")["groups"]
