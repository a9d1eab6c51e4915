"""Write failures anywhere (a full disk, an I/O error, a directory that vanishes): one line naming the file,
exit 2, no partial files, and a run that was resumable stays resumable.

The end-to-end tests mount a small tmpfs and fill it, for real, just before one chosen write of a real
``python -m compressor`` process (a wrapper opens the filler when that file is opened for writing), then free
the space and ``--resume``. They need root (CI runs as root) and skip otherwise. The unit tests inject the
error at the write layer.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
from pathlib import Path

import cli_process
import pytest

from compressor.errors import WriteFailed
from compressor.runtime import atomic
from compressor.runtime import checkpoint as checkpoints

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
       "OMP_NUM_THREADS": "1"}  # fmt: skip
DATA = "synthetic:1x28x28:10:64:32"
PRUNE = ["prune", "--model", "cifar:resnet20", "--data", DATA, "--epochs", "1", "--target-flops", "0.3",
         "--device", "cpu", "--quiet"]  # fmt: skip
# a prune's run directory with the default method (aster_tau.png is its plot)
RUN_FILES = {"pruned.pt", "dense.pt", "report.json", "report.md", "config.yaml", "history.jsonl",
             "aster_tau.png"}  # fmt: skip

# Runs the CLI; the first time a file whose name contains FILL_AT is opened for writing under FILL_FS, the
# file system is filled first (FILL_FS/.filler), so that write meets a real ENOSPC.
WRAPPER = r"""
import builtins, io, os, runpy, sys
fs, at, done = os.environ["FILL_FS"], os.environ["FILL_AT"], []
real_open = io.open

def fill():
    with real_open(os.path.join(fs, ".filler"), "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
        try:
            while True:
                f.write(b"\0")
        except OSError:
            pass

def patched(file, mode="r", *args, **kwargs):
    name = os.fspath(file) if isinstance(file, (str, bytes, os.PathLike)) else ""
    if (not done and isinstance(name, str) and any(c in mode for c in "wax+")
            and os.path.abspath(name).startswith(fs) and at in os.path.basename(name)):
        done.append(name)
        fill()
    return real_open(file, mode, *args, **kwargs)

builtins.open = io.open = patched
sys.argv = ["compress", *sys.argv[1:]]
runpy.run_module("compressor", run_name="__main__")
"""


def compress(*args: str, fill_fs: Path | None = None, fill_at: str | None = None) -> subprocess.CompletedProcess:
    env = dict(ENV)
    if fill_at is not None:
        env.update(FILL_FS=str(fill_fs), FILL_AT=fill_at)
        return cli_process.run(args, code=WRAPPER, env=env, cwd=ROOT, timeout=600)
    return cli_process.run(args, env=env, cwd=ROOT, timeout=600)


@pytest.fixture
def tmpfs(tmp_path: Path):
    """A 32 MiB tmpfs (unmounted afterwards); skipped when not root or the mount fails."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    fs = tmp_path / "fs"
    fs.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(fs)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield fs
    finally:
        subprocess.run(["umount", "-l", str(fs)], capture_output=True)


def assert_write_error(r: subprocess.CompletedProcess, path: Path) -> None:
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0] == f"error: no space left on device writing {path}", r.stderr
    assert "internal error" not in r.stderr and "Traceback" not in r.stderr


def partial(directory: Path) -> list[str]:
    """Temp files and locks left in ``directory`` (recursively)."""
    return sorted(str(p) for p in directory.rglob("*") if p.name.endswith((".tmp", ".lock")))


# ------------------------------------------------------------------------------------------- prune, for real


@pytest.mark.parametrize("fill_at", ["config.yaml", "dense.pt", "history.jsonl", "checkpoint.pt", "pruned.pt",
                                     "report.json"])  # fmt: skip
def test_prune_disk_full_then_resume(tmpfs: Path, fill_at: str) -> None:
    run = tmpfs / "run"
    r = compress(*PRUNE, "--out", str(run), fill_fs=tmpfs, fill_at=fill_at)
    assert_write_error(r, run / fill_at)
    assert not partial(tmpfs), partial(tmpfs)
    assert not (run / "report.json").exists()  # the run is not marked finished
    if fill_at in ("pruned.pt", "report.json"):  # the last epoch's checkpoint was written before
        assert (run / "checkpoint.pt").is_file()
    history = run / "history.jsonl"
    if history.is_file():  # no half line
        assert all(json.loads(line) for line in history.read_text().splitlines())
    (tmpfs / ".filler").unlink()
    r = compress(*PRUNE, "--out", str(run), "--resume")
    assert r.returncode == 0, r.stderr
    assert {p.name for p in run.iterdir()} == RUN_FILES
    assert json.loads((run / "report.json").read_text())["target"]["met"]


# ----------------------------------------------------------------------------------- export, quantize, bench


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small finished run with its pruned.onnx (on the ordinary disk)."""
    run = tmp_path_factory.mktemp("writes") / "run"
    args = [a if a != "1" else "0" for a in PRUNE]  # --epochs 0
    r = compress(*args, "--out", str(run))
    assert r.returncode == 0, r.stderr
    r = compress("export", str(run), "--no-accuracy")
    assert r.returncode == 0, r.stderr
    return run


def test_export_disk_full(tmpfs: Path, exported: Path) -> None:
    out = tmpfs / "model.onnx"
    report = (exported / "report.json").read_text()
    r = compress("export", str(exported), "--out", str(out), "--no-accuracy", fill_fs=tmpfs, fill_at="model.onnx")
    assert_write_error(r, out)
    assert sorted(p.name for p in tmpfs.iterdir()) == [".filler"]  # no model.onnx, no .data, no temp folder
    assert (exported / "report.json").read_text() == report  # nothing recorded for a file that was not written


def test_quantize_disk_full(tmpfs: Path, exported: Path) -> None:
    out = tmpfs / "model.int8.onnx"
    r = compress("quantize", str(exported), "--out", str(out), "--no-accuracy", "--calib-batches", "1",
                 fill_fs=tmpfs, fill_at="model.int8.onnx")  # fmt: skip
    assert_write_error(r, out)
    assert sorted(p.name for p in tmpfs.iterdir()) == [".filler"]


@pytest.mark.parametrize("option,name", [("--json-out", "b.json"), ("--csv", "b.csv"), ("--md", "b.md")])
def test_bench_outputs_disk_full(tmpfs: Path, exported: Path, option: str, name: str) -> None:
    out = tmpfs / name
    r = compress("bench", str(exported / "pruned.onnx"), "--warmup", "1", "--iters", "2", "--min-iters", "1",
                 option, str(out), fill_fs=tmpfs, fill_at=name)  # fmt: skip
    assert_write_error(r, out)
    assert sorted(p.name for p in tmpfs.iterdir()) == [".filler"]


# ------------------------------------------------------------------------------------- the write layer, unit


def _fail_replace(code: int):
    def replace(src: object, dst: object) -> None:
        raise OSError(code, os.strerror(code), str(src))

    return replace


@pytest.mark.parametrize("code,words", [(errno.ENOSPC, "no space left on device writing"),
                                        (errno.EIO, "I/O error writing")])  # fmt: skip
def test_atomic_write_error_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int,
                                           words: str) -> None:  # fmt: skip
    target = tmp_path / "report.json"
    target.write_text("old\n")
    monkeypatch.setattr(atomic.os, "replace", _fail_replace(code))
    with pytest.raises(WriteFailed) as info:
        atomic.write_json(target, {"a": 1})
    assert str(info.value) == f"{words} {target}"
    assert target.read_text() == "old\n"  # the previous file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]  # no temp file


def test_directory_vanishes_during_write(tmp_path: Path) -> None:
    target = tmp_path / "gone" / "out.txt"
    with pytest.raises(WriteFailed) as info, atomic.atomic_path(target) as tmp:
        tmp.write_text("x")
        for p in target.parent.iterdir():
            p.unlink()
        target.parent.rmdir()
    assert str(info.value) == f"cannot write {target}: its directory vanished"
    assert not target.parent.exists()


def test_checkpoint_save_failure_keeps_the_previous(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "checkpoint.pt"
    checkpoints.save(path, {"phase": "prune", "epoch": 1, "history": []})
    real = atomic.os.replace
    monkeypatch.setattr(atomic.os, "replace", _fail_replace(errno.ENOSPC))
    monkeypatch.setattr(checkpoints.os, "replace", _fail_replace(errno.ENOSPC))
    with pytest.raises(WriteFailed, match=f"no space left on device writing {path}"):
        checkpoints.save(path, {"phase": "prune", "epoch": 2, "history": []})
    monkeypatch.setattr(atomic.os, "replace", real)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
    assert checkpoints.load(path, print)["epoch"] == 1


def test_append_line_leaves_no_half_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "history.jsonl"
    atomic.append_line(path, '{"epoch": 0}')

    class Short:
        """A file whose writes stop half-way, then fail with ENOSPC."""

        def __init__(self, fh):
            self.fh, self.calls = fh, 0

        def __getattr__(self, name):
            return getattr(self.fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, data):
            self.calls += 1
            if self.calls > 1:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.fh.write(bytes(data[:3]))

    real_open = open
    monkeypatch.setattr("builtins.open", lambda *a, **k: Short(real_open(*a, **k)))
    with pytest.raises(WriteFailed, match="no space left on device writing"):
        atomic.append_line(path, '{"epoch": 1}')
    monkeypatch.undo()
    assert path.read_text() == '{"epoch": 0}\n'


def test_onnx_write_error_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import onnx
    from onnx import helper

    from exporters import files

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])  # fmt: skip
    proto = helper.make_model(graph)
    out = tmp_path / "m.onnx"
    monkeypatch.setattr(files.os, "replace", _fail_replace(errno.EIO))
    with pytest.raises(WriteFailed) as info:
        files._write(proto, out, external=False)
    assert str(info.value) == f"I/O error writing {out}"
    assert list(tmp_path.iterdir()) == []
