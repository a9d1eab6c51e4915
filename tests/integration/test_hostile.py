"""The hostile-input corpus (issues 7 and 18): bad invocations and bad files for every command.

Issue 18 adds files in any encoding or state (recipes that are not UTF-8, corrupt IDX/CIFAR/image data, ONNX
external data outside the model's folder), requests beyond the machine (refused up front with a memory
estimate) and degenerate data (one class, empty splits, labels or outputs that disagree with the data).

Each case runs ``compress`` in its own process and directory. It must exit 2 (1 for a failed gate) with exactly
one line on stderr naming the problem, no traceback, nothing on stdout (a failed gate has printed its table) and
nothing written: the directory tree is the same after the run as before it. It must never exit 3 (an internal
error is a bug for a hostile input). ``--debug`` shows the traceback and keeps the exit code.

The inputs are tiny and made here, before any case starts. The cases run ``PARALLEL`` at a time as processes
forked from one driver that imported ``compress`` once (a fresh interpreter per case would pay the torch import
every time); ``test_debug_shows_the_traceback`` runs its cases as ``python -m compressor.cli`` processes.
"""

from __future__ import annotations

import functools
import json
import os
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import pytest
import torch
import yaml
from once import once
from onnx import TensorProto, helper
from torch import nn

from compressor.artifacts import pruned_payload
from compressor.models import build_model

ROOT = Path(__file__).resolve().parents[2]
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    "OMP_NUM_THREADS": "1",
}
ENV.pop("COMPRESS_DEBUG", None)
USER = str(Path(__file__).resolve().parents[1] / "user_models.py")
SYN_TINY = "synthetic:1x28x28:10:64:32"  # 64 train / 32 test images
PARALLEL = 4
CASE_TIMEOUT = 180  # seconds


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _assert_one_line(stderr: str) -> None:
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip(), f"stderr is not one non-empty line:\n{stderr}"
    assert "Traceback" not in stderr


def _chmod_restricts() -> bool:
    """False where a directory with mode 0o500 is still writable to us (root): its cases cannot fail there."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        ro = Path(tmp) / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            return not os.access(ro, os.W_OK)
        finally:
            ro.chmod(0o700)


CHMOD_RESTRICTS = _chmod_restricts()
_RO_MOUNTS: list[Path] = []  # read-only bind mounts made by the cases, undone once they have run


def _bind_read_only(path: Path) -> bool:
    """Make ``path`` a read-only bind mount of itself (binds root too, unlike a mode); False where we cannot."""
    for cmd in (["mount", "--bind", str(path), str(path)], ["mount", "-o", "remount,bind,ro", str(path)]):
        if subprocess.run(cmd, capture_output=True).returncode != 0:
            subprocess.run(["umount", str(path)], capture_output=True)
            return False
    _RO_MOUNTS.append(path)
    return True


def _unmount_read_only() -> None:
    while _RO_MOUNTS:
        subprocess.run(["umount", "-l", str(_RO_MOUNTS.pop())], capture_output=True)


@functools.cache
def _read_only_mounts_work() -> bool:
    """Whether a read-only bind mount refuses writes here (as root, where a mode does not); probed once, when a case
    first needs it."""
    import tempfile

    if CHMOD_RESTRICTS or os.geteuid() != 0:
        return False
    with tempfile.TemporaryDirectory() as tmp:
        if not _bind_read_only(Path(tmp)):
            return False
        try:
            return not os.access(tmp, os.W_OK)
        finally:
            _unmount_read_only()


def _read_only_works() -> bool:
    """Where read-only directories can be made: by mode (not root), or by a read-only bind mount (root, as in CI)."""
    return CHMOD_RESTRICTS or _read_only_mounts_work()


def _make_read_only(path: Path) -> Path:
    path.chmod(0o500)
    if not CHMOD_RESTRICTS:
        _bind_read_only(path)
    return path


# --------------------------------------------------------------------------------------------
# Inputs the cases use
# --------------------------------------------------------------------------------------------


def _prune(*extra: str, model: str = "cifar:resnet20", data: str = SYN_TINY, target: str | None = "0.3",
           out: str = "run") -> list[str]:  # fmt: skip
    """``compress prune`` on tiny synthetic data, with ``extra`` options."""
    args = ["prune", "--model", model, "--data", data, "--device", "cpu", "--quiet", "--out", out]
    return [*args, *(["--target-flops", target] if target else []), *extra]


def _tiny_net() -> nn.Module:
    """A small conv net of standard layers only (a pickled one unpickles in any process)."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )  # fmt: skip


class LocalNet(nn.Module):
    """Pickled from this test module: a process that unpickles it cannot import its class."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean((2, 3)))


def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _random_bytes(path: Path) -> Path:
    path.write_bytes(random.Random(0).randbytes(4096))
    return path


def _state_dict_file(path: Path) -> Path:
    """A real state_dict (cifar:resnet20, 1 input channel) saved with torch.save."""
    torch.save(build_model("cifar:resnet20", num_classes=10, in_channels=1).state_dict(), path)
    return path


def _pickled_module(path: Path, module: nn.Module | None = None) -> Path:
    torch.save(module if module is not None else _tiny_net(), path)
    return path


def _onnx_file(path: Path) -> Path:
    """A tiny valid ONNX model: Relu over a (N, 1, 8, 8) float input, dynamic batch."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 1, 8, 8])
    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["output"])], "tiny", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def _run_dir(d: Path, spec: dict[str, Any] | None = None, **payload: Any) -> Path:
    """A run directory holding a valid (dense, unpruned) pruned.pt of cifar:resnet20 for 1x28x28 inputs."""
    run = d / "run"
    run.mkdir()
    spec = spec or {"model": "cifar:resnet20", "num_classes": 10, "in_channels": 1, "trust_code": False}
    model = build_model("cifar:resnet20", num_classes=10, in_channels=1)
    torch.save({**pruned_payload(spec, (1, 28, 28), [], model), **payload}, run / "pruned.pt")
    return run


def _user_file(d: Path, name: str, body: str) -> str:
    (d / f"{name}.py").write_text("import torch\nfrom torch import nn\n" + body)
    return str(d / f"{name}.py")


def _read_only_dir(d: Path, name: str = "ro") -> Path:
    ro = d / name
    ro.mkdir(exist_ok=True)
    return _make_read_only(ro)


def _dir(path: Path) -> Path:
    path.mkdir()
    return path


def _file(d: Path, name: str, text: str = "a file, not a directory\n") -> Path:
    (d / name).write_text(text)
    return d / name


def _recipe(recipe: Any = None, text: str | None = None) -> Callable[[Path], list[str]]:
    def setup(d: Path) -> list[str]:
        _file(d, "recipe.yaml", text if text is not None else yaml.safe_dump(recipe))
        return ["run", "recipe.yaml"]

    return setup


_RECIPE_PRUNE = {"model": "cifar:resnet20", "data": SYN_TINY, "target_flops": 0.4, "device": "cpu", "out": "run"}
_FAST = ["--iters", "1", "--warmup", "1"]


def _bench(*extra: str, baseline: Callable[[Path], Path] | None = None) -> Callable[[Path], list[str]]:
    """``compress bench model.onnx`` (a valid tiny model) with ``extra`` options and maybe a --baseline file."""

    def setup(d: Path) -> list[str]:
        _onnx_file(d / "model.onnx")
        base = ["--baseline", baseline(d).name] if baseline else []
        return ["bench", "model.onnx", *_FAST, *base, *extra]

    return setup


def _user(factory: str, *extra: str, command: str = "prune") -> Callable[[Path], list[str]]:
    """A factory of tests/user_models.py (the hostile ones raise or return the wrong output)."""
    if command == "info":
        return lambda d: ["info", f"{USER}:{factory}", "--input-shape", "1x28x28", *extra]
    return lambda d: _prune(*extra, model=f"{USER}:{factory}")


# --------------------------------------------------------------------------------------------
# The cases: name -> setup(directory) -> arguments (run in that directory)
# --------------------------------------------------------------------------------------------


def _no_bn_model(*method: str) -> Callable[[Path], list[str]]:
    """A user model file (conv-relu only): nothing ASTER (the default method) can score."""

    def make(d: Path) -> list[str]:
        path = _user_file(d, "nobn", (
            "def make(num_classes=10, in_channels=1):\n"
            "    return nn.Sequential(nn.Conv2d(in_channels, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.ReLU(),\n"
            "                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))\n"
        ))  # fmt: skip
        return _prune("--trust-code", *method, model=f"{path}:make")

    return make


def _case_user_import_raises(d: Path) -> list[str]:
    path = _user_file(d, "broken", "raise ImportError('needs the lab cluster')\n")
    return _prune("--trust-code", model=f"{path}:make")


def _case_user_syntax_error(d: Path) -> list[str]:
    path = _user_file(d, "typo", "def make(:\n    pass\n")
    return ["info", f"{path}:make", "--trust-code"]


def _case_config_unknown(d: Path) -> list[str]:
    _file(d, "cfg.yaml", yaml.safe_dump({"model": "cifar:resnet20", "not_an_option": 3}))
    return ["prune", "--config", "cfg.yaml", "--data", SYN_TINY, "--target-flops", "0.4", "--out", "run"]


def _case_config_not_a_mapping(d: Path) -> list[str]:
    _file(d, "cfg.yaml", "- 1\n- 2\n")
    return _prune("--config", "cfg.yaml")


def _case_recipe_out_under_file(d: Path) -> list[str]:
    _file(d, "notes.txt")
    return _recipe({"prune": {**_RECIPE_PRUNE, "out": "notes.txt/run"}})(d)


def _case_out_not_empty(d: Path) -> list[str]:
    _file(_dir(d / "run"), "notes.txt", "keep me\n")
    return _prune()


def _case_resume_changed_option(d: Path) -> list[str]:
    run = _dir(d / "run")
    _file(run, "config.yaml", yaml.safe_dump({"model": "cifar:resnet20", "target_flops": 0.3}))
    _file(run, "checkpoint.pt", "not read: the options are checked first")
    return _prune("--resume", target="0.4")


def _case_resume_without_checkpoint(d: Path) -> list[str]:
    _file(_dir(d / "run"), "notes.txt", "keep me\n")
    return _prune("--resume")


def _export(*extra: str, **payload: Any) -> Callable[[Path], list[str]]:
    """``compress export run`` of a run directory with a valid pruned.pt (``payload`` overrides its entries)."""

    def setup(d: Path) -> list[str]:
        _run_dir(d, **payload)
        return ["export", "run", *extra]

    return setup


def _export_bad_pt(damage: Callable[[Path], Any]) -> Callable[[Path], list[str]]:
    def setup(d: Path) -> list[str]:
        damage(_run_dir(d) / "pruned.pt")
        return ["export", "run"]

    return setup


def _case_export_state_dict_as_pt(d: Path) -> list[str]:
    _state_dict_file(_dir(d / "run") / "pruned.pt")  # a state_dict, not our format
    return ["export", "run"]


def _case_export_run_read_only(d: Path) -> list[str]:
    _make_read_only(_run_dir(d))
    return ["export", "run"]


def _case_export_out(out: str, prepare: Callable[[Path], Any]) -> Callable[[Path], list[str]]:
    def setup(d: Path) -> list[str]:
        _run_dir(d)
        prepare(d)
        return ["export", "run", "--out", out]

    return setup


def _with(prepare: Callable[[Path], Any], make: Callable[[Path], list[str]]) -> Callable[[Path], list[str]]:
    def setup(d: Path) -> list[str]:
        prepare(d)
        return make(d)

    return setup


# --------------------------------------------------------------------------------------------
# Issue 18, classes 1-3: files in any encoding or state, requests beyond the machine, degenerate data
# --------------------------------------------------------------------------------------------

SYN_8 = "synthetic:1x8x8:10:16:8"  # what _classifier_onnx takes


def _classifier_onnx(path: Path, classes: int = 10, external: str | None = None) -> Path:
    """A tiny ONNX classifier: (N, 1, 8, 8) -> Flatten -> MatMul -> (N, classes); ``external`` is the location its
    weight claims to be stored at (written as external data, never read by a correct loader when it escapes)."""
    from onnx import numpy_helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", classes])
    w = numpy_helper.from_array(torch.randn(64, classes).numpy(), "w")
    if external is not None:
        w.ClearField("raw_data")
        w.data_location = TensorProto.EXTERNAL
        for key, value in (("location", external), ("offset", "0"), ("length", str(64 * classes * 4))):
            entry = w.external_data.add()
            entry.key, entry.value = key, value
    nodes = [helper.make_node("Flatten", ["input"], ["flat"], axis=1), helper.make_node("MatMul", ["flat", "w"],
                                                                                       ["output"])]  # fmt: skip
    model = helper.make_model(helper.make_graph(nodes, "cls", [x], [y], [w]),
                              opset_imports=[helper.make_opsetid("", 17)])  # fmt: skip
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


def _eval(*extra: str, classes: int = 10, external: str | None = None,
          data: str = SYN_8) -> Callable[[Path], list[str]]:  # fmt: skip
    def setup(d: Path) -> list[str]:
        _classifier_onnx(d / "model.onnx", classes, external)
        return ["eval", "model.onnx", "--data", data, *extra]

    return setup


def _quantize(*extra: str, classes: int = 10, external: str | None = None,
              data: str = SYN_8) -> Callable[[Path], list[str]]:  # fmt: skip
    def setup(d: Path) -> list[str]:
        _classifier_onnx(d / "model.onnx", classes, external)
        return ["quantize", "model.onnx", "--data", data, "--calib-batches", "1", *extra]

    return setup


def _bench_external(location: str) -> Callable[[Path], list[str]]:
    return lambda d: ["bench", _classifier_onnx(d / "model.onnx", external=location).name, *_FAST]


def _gz(path: Path, raw: bytes) -> None:
    import gzip

    path.write_bytes(gzip.compress(raw, mtime=0))


def _idx(array: Any) -> bytes:
    import struct

    return bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def _fmnist(damage: Callable[[Path], Any] | None = None,
            labels: list[int] | None = None) -> Callable[[Path], list[str]]:  # fmt: skip
    """``--data fashion-mnist --data-dir fm``: four tiny IDX .gz files (8 train, 4 test images); ``damage`` gets
    the train-images file, ``labels`` replaces the train labels."""
    import numpy as np

    def setup(d: Path) -> list[str]:
        fm = _dir(d / "fm")
        ytr = np.array(labels if labels is not None else [i % 10 for i in range(8)], dtype=np.uint8)
        for prefix, n, y in (("train", len(ytr), ytr), ("t10k", 4, np.arange(4, dtype=np.uint8))):
            _gz(fm / f"{prefix}-images-idx3-ubyte.gz", _idx(np.zeros((n, 28, 28), np.uint8)))
            _gz(fm / f"{prefix}-labels-idx1-ubyte.gz", _idx(y))
        if damage:
            damage(fm / "train-images-idx3-ubyte.gz")
        return _prune("--data-dir", "fm", data="fashion-mnist")

    return setup


def _cifar(damage: Callable[[Path], Any] | None = None, labels: list[int] | None = None,
           data_shape: tuple[int, int] = (2, 3072)) -> Callable[[Path], list[str]]:  # fmt: skip
    """``--data cifar10 --data-dir c``: tiny python-pickle batches (2 images each); ``damage`` gets data_batch_1."""
    import pickle

    import numpy as np

    def setup(d: Path) -> list[str]:
        folder = _dir(_dir(d / "c") / "cifar-10-batches-py")
        for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
            y = labels if labels is not None and name == "data_batch_1" else [0, 1]
            entry = {b"data": np.zeros(data_shape, np.uint8), b"labels": y}
            (folder / name).write_bytes(pickle.dumps({k.decode(): v for k, v in entry.items()}))
        if damage:
            damage(folder / "data_batch_1")
        return _prune("--data-dir", "c", data="cifar10")

    return setup


class _Evil:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo pwned > pwned.txt",))


def _imagefolder(classes: dict[str, int], bad: bytes | None = None, *extra: str) -> Callable[[Path], list[str]]:
    """``--data imagefolder:img``: class folders of tiny PNGs (name -> count); ``bad`` replaces the first image."""
    from PIL import Image

    def setup(d: Path) -> list[str]:
        root = _dir(d / "img")
        first = True
        for name, n in classes.items():
            folder = _dir(root / name)
            for i in range(n):
                path = folder / f"{i}.png"
                if first and bad is not None:
                    path.write_bytes(bad)
                else:
                    Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(path)
                first = False
        return _prune("--image-size", "8", "--epochs", "0", *extra, data="imagefolder:img")

    return setup


def _png_bytes() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 20, 30)).save(buf, format="PNG")
    return buf.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG header that claims ``width`` x ``height`` pixels (a decompression bomb: PIL refuses it on open)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _bytes_file(name: str, data: bytes) -> Callable[[Path], Path]:
    def make(d: Path) -> Path:
        (d / name).write_bytes(data)
        return d / name

    return make


def _recipe_bytes(data: bytes) -> Callable[[Path], list[str]]:
    return _with(_bytes_file("recipe.yaml", data), lambda d: ["run", "recipe.yaml"])


def _config_bytes(data: bytes, command: Callable[[Path], list[str]] | None = None) -> Callable[[Path], list[str]]:
    return _with(_bytes_file("cfg.yaml", data), command or (lambda d: _prune("--config", "cfg.yaml")))


_LATIN1 = "prune:\n  model: cifar:resnet20\n  out: caf\u00e9\n".encode("latin-1")
_UTF16 = "prune:\n  model: cifar:resnet20\n".encode("utf-16")
_RANDOM = random.Random(1).randbytes(512)
_DEEP = ("prune: " + "[" * 3000 + "]" * 3000 + "\n").encode()  # nested past Python's recursion limit


_USER_SPEC = {"model": f"{USER}:se_net", "num_classes": 10, "in_channels": 1, "trust_code": True}
_R32_SPEC = {"model": "cifar:resnet32", "num_classes": 10, "in_channels": 1, "trust_code": False}

# fmt: off
#: name -> (setup, exit code, a substring of the one-line message)
CASES: dict[str, tuple[Callable[[Path], list[str]], int, str]] = {
    # --- graph rules, unprunable models
    "ignore-matches-nothing": (lambda d: _prune("--ignore", "layer9.*"), 2, "layer9.*"),
    "group-max-ratio-no-equals": (lambda d: _prune("--group-max-ratio", "layer1.*"), 2, "PATTERN=RATIO"),
    "group-max-ratio-out-of-range": (lambda d: _prune("--group-max-ratio", "layer1.*=1.5"), 2, "[0, 1)"),
    "info-swin-refused": (lambda d: ["info", "torchvision:swin_t", "--input-shape", "3x224x224"], 2,
                          "cannot be pruned"),
    "aster-no-batchnorm": (_no_bn_model("--method", "aster"), 2, "BatchNorm"),
    "default-method-no-batchnorm": (_no_bn_model(), 2, "choose method psap, l1 or l2 (--method"),
    # --- unknown specs and names
    "unknown-model": (lambda d: _prune(model="cifar:resnet99"), 2, "resnet99"),
    "info-unknown-model": (lambda d: ["info", "torchvision:resnet1800"], 2, "resnet1800"),
    "model-py-without-factory": (lambda d: _prune("--trust-code", model=USER), 2, "factory"),
    "unknown-method": (lambda d: _prune("--method", "obd"), 2, "obd"),
    "unknown-data": (lambda d: _prune(data="mnist-fashion"), 2, "mnist-fashion"),
    "synthetic-malformed": (lambda d: _prune(data="synthetic:3x32:10"), 2, "synthetic:3x32:10"),
    "info-synthetic-malformed": (lambda d: ["info", "cifar:resnet20", "--data", "synthetic:1x28x28"], 2,
                                 "synthetic:1x28x28"),
    "missing-data-dir": (lambda d: _prune("--data-dir", str(d / "nonexistent"), data="fashion-mnist"), 2,
                         "nonexistent"),
    "device-unknown": (lambda d: _prune("--device", "tpu7"), 2, "tpu7"),
    "bench-provider-unknown": (_bench("--provider", "gpu9"), 2, "gpu9"),
    "export-exporter-unknown": (_export("--exporter", "torchscript"), 2, "torchscript"),
    # --- numbers out of range or of the wrong type
    "target-flops-0": (lambda d: _prune(target="0"), 2, "--target-flops"),
    "target-flops-1.5": (lambda d: _prune(target="1.5"), 2, "--target-flops"),
    "target-flops-nan": (lambda d: _prune(target="nan"), 2, "--target-flops"),
    "target-flops-not-a-number": (lambda d: _prune(target="half"), 2, "half"),
    "two-targets": (lambda d: _prune("--target-params", "0.3"), 2, "exactly one"),
    "target-latency-5parsecs": (lambda d: _prune("--target-latency", "5parsecs", target=None), 2, "5parsecs"),
    "latency-tolerance-negative": (lambda d: _prune("--target-latency", "5ms", "--latency-tolerance", "-1",
                                                    target=None), 2, "--latency-tolerance"),
    "batch-size-0": (lambda d: _prune("--batch-size", "0"), 2, "batch"),
    "batch-size-abc": (lambda d: _prune("--batch-size", "abc"), 2, "abc"),
    "epochs-negative": (lambda d: _prune("--epochs", "-1"), 2, "--epochs"),
    "lr-nan": (lambda d: _prune("--epochs", "1", "--lr", "nan"), 2, "--lr"),
    "lr-negative": (lambda d: _prune("--epochs", "1", "--lr", "-0.1"), 2, "--lr"),
    "weight-decay-negative": (lambda d: _prune("--epochs", "1", "--weight-decay", "-1"), 2, "--weight-decay"),
    "seed-negative": (lambda d: _prune("--seed", "-1"), 2, "--seed"),
    "round-to-0": (lambda d: _prune("--round-to", "0"), 2, "--round-to"),
    "max-layer-ratio-1.5": (lambda d: _prune("--max-layer-ratio", "1.5"), 2, "--max-layer-ratio"),
    "num-classes-0": (lambda d: _prune("--num-classes", "0"), 2, "num-classes"),
    "prune-every-0": (lambda d: _prune("--prune-every", "0"), 2, "--prune-every"),
    "aster-max-prune-0": (lambda d: _prune("--method", "aster", "--max-prune-fraction", "0"), 2,
                          "max-prune-fraction"),
    "psap-bad-pulse": (lambda d: _prune("--psap-pulse", "loud"), 2, "loud"),
    "psap-option-default-method": (lambda d: _prune("--psap-gamma", "2"), 2,
                                   "--psap-gamma applies to --method psap, not aster"),
    "steps-with-aster": (lambda d: _prune("--method", "aster", "--steps", "3"), 2,
                         "--steps applies to --method bn-scale, l1, l2, psap, random or taylor, not aster"),
    "aster-option-with-l1": (lambda d: _prune("--method", "l1", "--aster-x", "0.1"), 2, "--aster-x applies to"),
    "aster-bad-sensitivity": (lambda d: _prune("--method", "aster", "--aster-sensitivity", "newton"), 2, "newton"),
    "info-round-to-0": (lambda d: ["info", "cifar:resnet20", "--round-to", "0"], 2, "--round-to"),
    "info-max-layer-ratio-1.5": (lambda d: ["info", "cifar:resnet20", "--max-layer-ratio", "1.5"], 2,
                                 "--max-layer-ratio"),
    "info-input-shape-2d": (lambda d: ["info", "cifar:resnet20", "--input-shape", "3x32"], 2, "--input-shape"),
    "info-num-classes-0": (lambda d: ["info", "cifar:resnet20", "--input-shape", "3x32x32", "--num-classes", "0"],
                           2, "num_classes"),
    "export-opset-3": (_export("--opset", "3"), 2, "opset"),
    "export-rtol-negative": (_export("--rtol", "-1"), 2, "rtol"),
    "bench-batch-0": (_bench("--batch", "0"), 2, "batch"),
    "bench-batch-abc": (_bench("--batch", "abc"), 2, "abc"),
    "bench-iters-0": (_bench("--iters", "0"), 2, "iters"),
    "bench-threads-0": (_bench("--threads", "0"), 2, "threads"),
    # --- options that contradict each other
    "scratch-with-weights": (lambda d: _prune("--from-scratch", "--epochs", "1", "--weights", "w"), 2, "--weights"),
    "scratch-no-epochs": (lambda d: _prune("--from-scratch"), 2, "--epochs"),
    "bn-init-with-weights": (lambda d: _prune("--bn-init", "0.5", "--weights", "w.pt"), 2, "--bn-init"),
    # --- unreadable, truncated, garbage checkpoints: --weights, --model FILE.pt, a run's pruned.pt
    "corrupt-weights": (lambda d: _prune("--weights", _random_bytes(d / "weights.pt").name), 2, "weights.pt"),
    "weights-truncated": (lambda d: _prune("--weights", _truncate(_state_dict_file(d / "half.pt")).name), 2,
                          "half.pt: truncated"),
    "weights-empty": (lambda d: _prune("--weights", _file(d, "empty.pt", "").name), 2, "empty.pt: the file is empty"),
    "weights-directory": (lambda d: _prune("--weights", _dir(d / "ckpt").name), 2, "ckpt is a directory"),
    "weights-missing": (lambda d: _prune("--weights", "nowhere.pt"), 2, "nowhere.pt"),
    "weights-not-a-state-dict": (_with(lambda d: torch.save([1, 2], d / "list.pt"),
                                       lambda d: _prune("--weights", "list.pt")), 2, "list.pt holds no state_dict"),
    "weights-pickled-module": (lambda d: _prune("--weights", _pickled_module(d / "whole.pt").name), 2,
                               "save model.state_dict()"),
    "weights-wrong-architecture": (lambda d: _prune("--weights", _state_dict_file(d / "r20.pt").name,
                                                    model="cifar:resnet32"), 2, "does not match"),
    "model-pickled-untrusted": (lambda d: _prune(model=_pickled_module(d / "net.pt").name), 2, "--trust-code"),
    "model-pt-holds-state-dict": (lambda d: _prune("--trust-code", model=_state_dict_file(d / "sd.pt").name), 2,
                                  "--weights sd.pt"),
    "model-pt-truncated": (lambda d: _prune("--trust-code", model=_truncate(_pickled_module(d / "net.pt")).name), 2,
                           "net.pt: truncated"),
    "model-pt-class-missing": (lambda d: _prune("--trust-code", model=_pickled_module(d / "l.pt", LocalNet()).name),
                               2, "LocalNet"),
    "export-missing-run": (lambda d: ["export", "no-such-run", "--out", "model.onnx"], 2, "no-such-run"),
    "export-truncated-pt": (_export_bad_pt(_truncate), 2, "pruned.pt: truncated"),
    "export-garbage-pt": (_export_bad_pt(_random_bytes), 2, "pruned.pt: not a PyTorch file"),
    "export-empty-pt": (_export_bad_pt(lambda p: p.write_bytes(b"")), 2, "pruned.pt: the file is empty"),
    "export-state-dict-as-pt": (_case_export_state_dict_as_pt, 2, "not a compress pruned-model file"),
    "export-other-format": (_export(format="compress.pruned/9"), 2, "compress.pruned/9"),
    "export-mismatched-pt": (_export(spec=_R32_SPEC), 2, "does not rebuild"),  # resnet20 weights, resnet32 spec
    "export-user-code-untrusted": (_export(spec=_USER_SPEC), 2, "--trust-code"),
    "export-no-dense": (_export("--dense"), 2, "dense.pt"),
    # --- unreadable, truncated, garbage ONNX files
    "bench-text-as-onnx": (lambda d: ["bench", _file(d, "model.onnx", "not ONNX\n").name, *_FAST, "--json-out",
                                      "o.json"], 2, "model.onnx"),
    "bench-pt-file": (_with(lambda d: torch.save({"w": torch.zeros(4)}, d / "model.pt"),
                            lambda d: ["bench", "model.pt", *_FAST, "--json-out", "out.json"]), 2, "model.pt"),
    "bench-truncated-onnx": (lambda d: ["bench", _truncate(_onnx_file(d / "half.onnx")).name, *_FAST, "--json-out",
                                        "out.json"], 2, "half.onnx"),
    "bench-empty-onnx": (lambda d: ["bench", _file(d, "empty.onnx", "").name, *_FAST], 2, "empty.onnx"),
    "bench-garbage-baseline": (_bench("--json-out", "out.json",
                                      baseline=lambda d: _random_bytes(d / "dense.onnx")), 2, "dense.onnx"),
    "bench-truncated-baseline": (_bench(baseline=lambda d: _truncate(_onnx_file(d / "dense.onnx"))), 2,
                                 "dense.onnx"),
    "bench-directory-as-model": (lambda d: ["bench", _dir(d / "model.onnx").name], 2, "model.onnx"),
    "bench-missing-model": (lambda d: ["bench", "nowhere.onnx"], 2, "nowhere.onnx"),
    "bench-compare-garbage": (_with(lambda d: _file(d, "previous.json", "{not json"),
                                    _bench("--compare", "previous.json")), 2, "previous.json"),
    # --- recipes and --config files
    "run-missing-recipe": (lambda d: ["run", "missing.yaml"], 2, "missing.yaml"),
    "recipe-unknown-section": (_recipe({"prune": _RECIPE_PRUNE, "tune": {"lr": 0.1}}), 2, "tune"),
    "recipe-unknown-key": (_recipe({"prune": {**_RECIPE_PRUNE, "learning_rate": 0.1}}), 2, "learning_rate"),
    "recipe-bench-unknown-key": (_recipe({"prune": _RECIPE_PRUNE, "bench": {"repeats": 5}}), 2, "repeats"),
    "recipe-export-unknown-key": (_recipe({"prune": _RECIPE_PRUNE, "export": {"opset_version": 17}}), 2,
                                  "opset_version"),
    "recipe-bad-value": (_recipe({"prune": {**_RECIPE_PRUNE, "epochs": "many"}}), 2, "many"),
    "recipe-bad-provider": (_recipe({"prune": _RECIPE_PRUNE, "bench": {"provider": "gpu9"}}), 2, "gpu9"),
    "recipe-no-model": (_recipe({"prune": {"out": "run", "target_flops": 0.4}}), 2, "model"),
    "recipe-is-a-list": (_recipe([_RECIPE_PRUNE]), 2, "mapping"),
    "recipe-not-yaml": (_recipe(text="prune: {model: [cifar:resnet20\n"), 2, "not valid YAML"),
    "recipe-section-is-a-list": (_recipe({"prune": [1, 2]}), 2, "'prune' must be a mapping"),
    "config-unknown-option": (_case_config_unknown, 2, "not_an_option"),
    "config-not-a-mapping": (_case_config_not_a_mapping, 2, "mapping"),
    # --- output paths that cannot be written
    "out-not-empty": (_case_out_not_empty, 2, "--resume"),
    "resume-without-checkpoint": (_case_resume_without_checkpoint, 2, "checkpoint"),
    "resume-changed-option": (_case_resume_changed_option, 2, "--target-flops was 0.3"),
    "out-under-a-file": (_with(lambda d: _file(d, "notes.txt"), lambda d: _prune(out="notes.txt/run")), 2,
                         "notes.txt is not a directory"),
    "out-read-only": (_with(_read_only_dir, lambda d: _prune(out="ro/run")), 2, "not writable"),
    "recipe-out-under-a-file": (_case_recipe_out_under_file, 2, "notes.txt"),
    "export-out-read-only": (_case_export_out("ro/model.onnx", _read_only_dir), 2, "not writable"),
    "export-out-under-a-file": (_case_export_out("notes.txt/m.onnx", lambda d: _file(d, "notes.txt")), 2,
                                "notes.txt is not a directory"),
    "export-out-is-a-directory": (_case_export_out("onnx", lambda d: _dir(d / "onnx")), 2,
                                  "onnx is a directory"),
    "export-run-read-only": (_case_export_run_read_only, 2, "not writable"),
    "bench-json-under-a-file": (_with(lambda d: _file(d, "notes.txt"), _bench("--json-out", "notes.txt/out.json")),
                                2, "notes.txt is not a directory"),
    "bench-json-read-only": (_with(_read_only_dir, _bench("--json-out", "ro/out.json")), 2, "not writable"),
    "bench-csv-is-a-directory": (_with(lambda d: _dir(d / "t.csv"), _bench("--csv", "t.csv")), 2,
                                 "t.csv is a directory"),
    # --- user model files and pickled modules
    "user-model-untrusted": (_user("se_net"), 2, "--trust-code"),
    "user-import-raises": (_case_user_import_raises, 2, "needs the lab cluster"),
    "user-syntax-error": (_case_user_syntax_error, 2, "SyntaxError"),
    "user-factory-raises": (_user("factory_raises", "--trust-code"), 2, "factory raised"),
    "user-factory-returns-int": (_user("returns_int", "--trust-code"), 2, "expected a torch.nn.Module"),
    "user-forward-raises": (_user("forward_raises", "--trust-code"), 2, "forward fails"),
    "user-forward-dict": (_user("forward_dict", "--trust-code"), 2, "forward returns a dict"),
    "user-forward-tuple": (_user("forward_tuple", "--trust-code"), 2, "forward returns a tuple"),
    "info-forward-dict": (_user("forward_dict", "--trust-code", command="info"), 2, "forward returns a dict"),
    # --- issue 18, class 1: recipes and --config files in any encoding, corrupt data files, checkpoints, ONNX
    "recipe-latin1": (_recipe_bytes(_LATIN1), 2, "not UTF-8"),
    "recipe-utf16": (_recipe_bytes(_UTF16), 2, "not UTF-8"),
    "recipe-random-bytes": (_recipe_bytes(_RANDOM), 2, "recipe.yaml"),
    "recipe-nul-bytes": (_recipe_bytes(b"prune:\x00\x00\n"), 2, "recipe.yaml"),
    "recipe-scalar": (_recipe(text="42\n"), 2, "mapping"),
    "config-latin1": (_config_bytes(b"epochs: 1\nout: caf\xe9\n"), 2, "not UTF-8"),
    "config-random-bytes": (_config_bytes(_RANDOM), 2, "cfg.yaml"),
    "quantize-config-utf16": (_config_bytes("calib_batches: 1\n".encode("utf-16"),
                                            _quantize("--config", "cfg.yaml")), 2, "not UTF-8"),
    "fmnist-truncated-gz": (_fmnist(_truncate), 2, "train-images-idx3-ubyte.gz"),
    "fmnist-wrong-magic": (_fmnist(lambda p: _gz(p, b"\x08\x03\x00\x00" + bytes(64))), 2, "not an IDX file"),
    "fmnist-not-gzip": (_fmnist(lambda p: p.write_bytes(b"plain text, not gzip\n")), 2, "train-images-idx3-ubyte.gz"),
    "fmnist-header-lies": (_fmnist(lambda p: _gz(p, bytes([0, 0, 8, 3]) + (9).to_bytes(4, "big") * 3 + bytes(10))), 2,
                           "IDX header says"),
    "fmnist-huge-ndim": (_fmnist(lambda p: _gz(p, bytes([0, 0, 8, 255]) + bytes(8))), 2, "truncated IDX header"),
    "fmnist-dims-beyond-memory": (_fmnist(lambda p: _gz(p, bytes([0, 0, 8, 3]) + (100000).to_bytes(4, "big") * 3)),
                                  2, "memory"),
    "cifar-garbled": (_cifar(_random_bytes), 2, "data_batch_1"),
    "cifar-truncated": (_cifar(_truncate), 2, "data_batch_1"),
    "cifar-code-in-pickle": (_cifar(lambda p: p.write_bytes(__import__("pickle").dumps(_Evil()))), 2,
                             "forbidden global"),
    "cifar-not-a-batch": (_cifar(lambda p: p.write_bytes(__import__("pickle").dumps([1, 2]))), 2,
                          "not a CIFAR batch"),
    "cifar-wrong-shape": (_cifar(data_shape=(2, 100)), 2, "expected data (N, 3072)"),
    "imagefolder-corrupt-png": (_imagefolder({"a": 3, "b": 3}, b"\x89PNG\r\n\x1a\n garbage"), 2, "0.png"),
    "imagefolder-truncated-png": (_imagefolder({"a": 3, "b": 3}, _png_bytes()[:60]), 2, "0.png"),
    "weights-json": (_with(_bytes_file("w.pt", b'{"conv.weight": [1, 2]}'),
                           lambda d: _prune("--weights", "w.pt")), 2, "w.pt"),
    "eval-garbage-pt": (lambda d: ["eval", _random_bytes(d / "m.pt").name, "--data", SYN_8], 2, "m.pt"),
    "eval-truncated-onnx": (lambda d: ["eval", _truncate(_classifier_onnx(d / "m.onnx")).name, "--data", SYN_8], 2,
                            "m.onnx"),
    "eval-text-as-onnx": (lambda d: ["eval", _file(d, "m.onnx", "hello\n").name, "--data", SYN_8], 2, "m.onnx"),
    "eval-external-escapes": (_eval(external="../../etc/passwd"), 2, "external data"),
    "eval-external-absolute": (_eval(external="/etc/passwd"), 2, "external data"),
    "eval-external-missing": (_eval(external="weights.bin"), 2, "weights.bin"),
    "bench-external-escapes": (_bench_external("../../../etc/passwd"), 2, "external data"),
    "bench-external-absolute": (_bench_external("/etc/hostname"), 2, "external data"),
    "quantize-external-escapes": (_quantize(external="../secret.bin"), 2, "external data"),
    "recipe-nested-deep": (_recipe_bytes(_DEEP), 2, "nested too deeply"),
    "config-nested-deep": (_config_bytes(_DEEP), 2, "nested too deeply"),
    "imagefolder-decompression-bomb": (_imagefolder({"a": 3, "b": 3}, _png_claiming(20000, 20000)), 2, "0.png"),
    "cifar-string-labels": (_cifar(labels=["x", "y"]), 2, "not an array of int64"),
    "cifar-nested-labels": (_cifar(labels=[[0, 1], [1, 0]]), 2, "N labels"),
    "cifar-data-beyond-uint8": (_cifar(lambda p: p.write_bytes(__import__("pickle").dumps(
        {"data": [[300] * 3072] * 2, "labels": [0, 1]}))), 2, "not an array of uint8"),
    "eval-external-nul": (_eval(external="w\x00.bin"), 2, "external data"),
    "quantize-garbage-onnx": (lambda d: ["quantize", _random_bytes(d / "m.onnx").name, "--data", SYN_8], 2,
                              "m.onnx"),
    # --- class 2: requests beyond the machine, refused up front with the estimate
    "image-size-huge": (lambda d: _prune("--image-size", "100000"), 2, "memory"),
    "synthetic-huge": (lambda d: _prune(data="synthetic:3x50000x50000:10"), 2, "memory"),
    "synthetic-many-images": (lambda d: _prune(data="synthetic:3x1024x1024:10:100000:10"), 2, "memory"),
    "eval-synthetic-huge": (_eval(data="synthetic:1x8x8:10:1000000000000:8"), 2, "memory"),
    "bench-batch-huge": (_bench("--batch", "1000000000"), 2, "memory"),
    "num-classes-beyond-memory": (lambda d: _prune("--num-classes", "10000000000"), 2, "needs about 2.6 TB"),
    "info-num-classes-beyond-memory": (lambda d: ["info", "torchvision:resnet18", "--input-shape", "3x32x32",
                                                  "--num-classes", "10000000000"],
                                       2, "needs about 20.5 TB"),
    "info-input-shape-huge": (lambda d: ["info", "cifar:resnet20", "--input-shape", "3x100000x100000"], 2, "memory"),
    # --- class 3: degenerate data
    "synthetic-one-class": (lambda d: _prune(data="synthetic:1x28x28:1"), 2, "classes >= 2"),
    "test-subset-0": (lambda d: _prune("--test-subset", "0"), 2, "test_subset"),
    "eval-test-subset-0": (_eval("--test-subset", "0"), 2, "test"),
    "imagefolder-one-class": (_imagefolder({"a": 6}), 2, "at least 2 classes"),
    "imagefolder-empty-class": (_imagefolder({"a": 4, "b": 0}), 2, "img"),
    "imagefolder-no-images": (_with(lambda d: _file(_dir(_dir(d / "img") / "a"), "notes.txt"),
                                    lambda d: _prune(data="imagefolder:img")), 2, "img"),
    "fmnist-label-out-of-range": (_fmnist(labels=[0, 1, 2, 3, 4, 5, 6, 12]), 2, "out of range"),
    "cifar-label-out-of-range": (_cifar(labels=[0, 10]), 2, "out of range"),
    "cifar-label-negative": (_cifar(labels=[-1, 3]), 2, "out of range"),
    "num-classes-disagrees": (lambda d: _prune("--num-classes", "5"), 2, "--num-classes 5"),
    "eval-fewer-logits-than-classes": (_eval(classes=5), 2, "5 classes"),
    "quantize-fewer-logits-than-classes": (_quantize(classes=3), 2, "3 classes"),
    # --- a gate (exit 1): the table is printed, then the gate fails
    "bench-p50-gate": (_bench("--fail-above-p50", "0.000001"), 1, "p50"),
}
# fmt: on
NEEDS_CHMOD = {"out-read-only", "export-out-read-only", "export-run-read-only", "bench-json-read-only"}

# The driver: imports compress once, then forks one child per case (cwd, stdout and stderr set, then main()).
# A child ends as a normal exit would (atexit handlers: logging, finalizers, then flushed stdio) but skips the
# interpreter's module teardown, which costs a torch-laden process about a second.
DRIVER = r"""
import atexit, json, os, sys, time, traceback
import compressor.cli, compressor.jobs.info, compressor.jobs.prune, compressor.jobs.run
import exporters.onnx, benchmarks.latency
import torch._inductor, torchvision  # imported by many cases (use_deterministic_algorithms, the model registry)

def case_main(case):
    os.chdir(case["cwd"])
    for fd, name in ((1, "out"), (2, "err")):
        os.dup2(os.open(case[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
    sys.argv = ["compress", *case["args"]]
    try:
        compressor.cli.main(case["args"], prog_name="compress")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        if not isinstance(exc.code, (int, type(None))):
            print(exc.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

cases, parallel, limit = json.load(sys.stdin), int(sys.argv[1]), float(sys.argv[2])
running, results = {}, {}
while cases or running:
    while cases and len(running) < parallel:
        case = cases.pop(0)
        pid = os.fork()
        if pid == 0:
            case_main(case)
        running[pid] = (case["name"], time.monotonic())
    pid, status = os.waitpid(-1, os.WNOHANG)
    if pid == 0:
        for p, (name, t0) in running.items():
            if time.monotonic() - t0 > limit:
                os.kill(p, 9)
        time.sleep(0.01)
        continue
    name, t0 = running.pop(pid)
    results[name] = {"rc": os.waitstatus_to_exitcode(status), "seconds": round(time.monotonic() - t0, 2)}
print(json.dumps(results))
"""


def _set_up(base: Path, names: list[str], extra: tuple[str, ...]) -> list[dict[str, Any]]:
    cases = []
    for name in names:
        d = base / name
        d.mkdir()
        args = [*CASES[name][0](d), *extra]
        logs = base / ".logs"
        cases.append({"name": name, "cwd": str(d), "args": args, "before": _tree(d),
                      "out": str(logs / f"{name}.out"), "err": str(logs / f"{name}.err")})  # fmt: skip
    return cases


def _collect(base: Path, cases: list[dict[str, Any]], codes: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    results = {}
    for c in cases:
        results[c["name"]] = {**codes[c["name"]], "args": c["args"], "before": c["before"],
                              "after": _tree(Path(c["cwd"])), "stdout": Path(c["out"]).read_text(),
                              "stderr": Path(c["err"]).read_text()}  # fmt: skip
    _unmount_read_only()
    for p in base.rglob("*"):  # let pytest clean up the read-only directories
        if p.is_dir():
            p.chmod(0o700)
    return results


def _run_forked(base: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """Set up every case (in this process), then run them all from one driver process, ``PARALLEL`` at a time."""
    (base / ".logs").mkdir()
    cases = _set_up(base, names, ())
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(PARALLEL), str(CASE_TIMEOUT)], env=ENV, text=True,
                          input=json.dumps([{k: c[k] for k in ("name", "cwd", "args", "out", "err")} for c in cases]),
                          capture_output=True, timeout=CASE_TIMEOUT * len(cases) / PARALLEL + 60)  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.strip(), f"the driver failed:\n{proc.stdout}\n{proc.stderr}"
    return _collect(base, cases, json.loads(proc.stdout.strip().splitlines()[-1]))


def _run_processes(base: Path, names: list[str], extra: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """Like :func:`_run_forked`, each case a ``python -m compressor.cli`` process of its own."""
    (base / ".logs").mkdir()
    cases = _set_up(base, names, extra)
    codes: dict[str, dict[str, Any]] = {}
    pending, running = list(cases), []
    while pending or running:
        while pending and len(running) < PARALLEL:
            c = pending.pop(0)
            with open(c["out"], "wb") as out, open(c["err"], "wb") as err:
                cmd = [sys.executable, "-m", "compressor.cli", *c["args"]]
                running.append((c, subprocess.Popen(cmd, cwd=c["cwd"], env=ENV, stdout=out, stderr=err)))
        c, proc = running.pop(0)
        codes[c["name"]] = {"rc": proc.wait(timeout=CASE_TIMEOUT)}
    return _collect(base, cases, codes)


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Every case's exit code, output and files before and after, run once for all the workers (``once``)."""

    def run_all(base: Path) -> dict[str, dict[str, Any]]:
        names = [n for n in CASES if _read_only_works() or n not in NEEDS_CHMOD]
        try:
            return _run_forked(base, names)
        finally:
            _unmount_read_only()

    return once(tmp_path_factory, "hostile", run_all)


def _skip_without_chmod(case: str, bad_runs: dict[str, dict[str, Any]]) -> None:
    """The corpus leaves out the read-only-directory cases where none can be made (whichever worker ran it)."""
    if case not in bad_runs:
        pytest.skip("no read-only directory can be made here (root, and no read-only bind mount)")


def test_the_corpus_covers_every_command(bad_runs: dict[str, dict[str, Any]]) -> None:
    assert len(CASES) >= 57
    assert {r["args"][0] for r in bad_runs.values()} == {"prune", "export", "bench", "run", "info", "eval", "quantize"}


@pytest.mark.parametrize("case", list(CASES))
def test_exit_code_and_nothing_written(case: str, bad_runs: dict[str, dict[str, Any]]) -> None:
    _skip_without_chmod(case, bad_runs)
    r = bad_runs[case]
    assert r["rc"] == CASES[case][1], r
    assert r["after"] == r["before"], f"files left behind: {sorted(set(r['after']) - set(r['before']))}"
    if r["rc"] == 2:  # a failed gate (1) has done its work: its table is on stdout
        assert r["stdout"] == "", r["stdout"]


@pytest.mark.parametrize("case", list(CASES))
def test_one_line_naming_the_problem(case: str, bad_runs: dict[str, dict[str, Any]]) -> None:
    _skip_without_chmod(case, bad_runs)
    stderr = bad_runs[case]["stderr"]
    _assert_one_line(stderr)
    assert stderr.startswith("error: ") and CASES[case][2] in stderr, stderr


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    """``--debug`` (anywhere on the command line) prints the traceback; the exit code stays the same.

    These run as ``python -m compressor.cli`` processes: the corpus's own entry point, start to end."""
    names = ["weights-truncated", "bench-truncated-onnx", "user-forward-dict"]
    runs = _run_processes(tmp_path, names, extra=("--debug",))
    for name in names:
        r = runs[name]
        assert r["rc"] == CASES[name][1], r
        assert "Traceback" in r["stderr"], r["stderr"]
        last = r["stderr"].rstrip().splitlines()[-1]
        assert last.startswith("error: ") and CASES[name][2] in last, r["stderr"]
        assert r["after"] == r["before"]


# --------------------------------------------------------------------------------------------
# A pickled whole module as --model, with --trust-code
# --------------------------------------------------------------------------------------------


def test_prune_and_export_a_pickled_module(tmp_path: Path) -> None:
    """``--model net.pt --trust-code``: pruned end to end; the run's pruned.pt (weights only) rebuilds from it."""
    from click.testing import CliRunner

    from compressor.cli import main

    net = _pickled_module(tmp_path / "net.pt")
    run = tmp_path / "run"
    args = ["prune", "--model", str(net), "--trust-code", "--data", SYN_TINY, "--method", "l1",
            "--target-flops", "0.3", "--epochs", "0", "--device", "cpu", "--quiet", "--out", str(run)]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, (result.output, result.exception)
    report = json.loads((run / "report.json").read_text())
    assert report["target"]["met"] and report["model"]["spec"] == str(net)
    payload = torch.load(run / "pruned.pt", map_location="cpu", weights_only=True)
    assert payload["spec"]["trust_code"] is True and payload["history"]

    untrusted = CliRunner().invoke(main, ["export", str(run)])
    assert untrusted.exit_code == 2 and "--trust-code" in untrusted.stderr, untrusted.output
    exported = CliRunner().invoke(main, ["export", str(run), "--trust-code", "--json"])
    assert exported.exit_code == 0, (exported.output, exported.exception)
    assert json.loads(exported.stdout)["verification"]["passed"]


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't "
            "allocate memory: you tried to allocate 2560000000000 bytes"
        ),
        MemoryError(),
        RuntimeError("CUDA out of memory. Tried to allocate 80.00 GiB"),
    ],
)
def test_an_allocation_failure_no_estimate_caught_is_bad_input(error: BaseException, monkeypatch) -> None:
    """Past the up-front estimates, an allocator failure is still a request beyond the machine: exit 2, one line."""
    from click.testing import CliRunner

    import compressor.jobs.info
    from compressor.cli import main

    def fails(*_a: Any, **_k: Any) -> None:
        raise error

    monkeypatch.setattr(compressor.jobs.info, "model_info", fails)
    result = CliRunner().invoke(main, ["info", "cifar:resnet20"])
    assert result.exit_code == 2, (result.output, result.exception)
    _assert_one_line(result.stderr)
    assert result.stderr.startswith("error: out of memory") and "smaller" in result.stderr


def test_a_bug_is_still_an_internal_error(monkeypatch) -> None:
    from click.testing import CliRunner

    import compressor.jobs.info
    from compressor.cli import main

    def fails(*_a: Any, **_k: Any) -> None:
        raise RuntimeError("shape mismatch in our own code")

    monkeypatch.setattr(compressor.jobs.info, "model_info", fails)
    result = CliRunner().invoke(main, ["info", "cifar:resnet20"])
    assert result.exit_code == 3 and "internal error" in result.stderr
