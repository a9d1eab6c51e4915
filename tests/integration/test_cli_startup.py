"""`compress --help` must not pay for torch: the CLI imports the heavy stack only inside the commands."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "onnx", "onnxruntime", "torch_pruning", "numpy")
PROBE = """
import sys
from compressor.cli import main
try:
    main({args!r})
except SystemExit as e:
    assert e.code in (0, None), e.code
print("HEAVY:" + ",".join(sorted(m for m in sys.modules if m.split(".")[0] in {heavy!r})[:5]))
"""


@pytest.mark.parametrize("args", [["--help"], ["prune", "--help"], ["bench", "--help"], ["info", "--help"]])
def test_help_does_not_import_torch(args: list[str]) -> None:
    code = PROBE.format(args=args, heavy=HEAVY)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    heavy = proc.stdout.strip().splitlines()[-1]
    assert heavy == "HEAVY:", f"imported at startup: {heavy}"


@pytest.mark.parametrize(
    "args",
    [
        ["info", "nope:x"],
        ["prune", "--model", "nope:x", "--data", "synthetic:1x8x8:2:8:4", "--out", "run", "--target-flops", "0.3"],
    ],
)
def test_a_fresh_interpreter_prints_one_error_line(tmp_path, args: list[str]) -> None:
    """The forked command-line tests (``cli_process``) cannot see what importing prints: a real interpreter, from
    its first import to its error, writes exactly one line on stderr."""
    proc = subprocess.run([sys.executable, "-m", "compressor", *args], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.splitlines() == [proc.stderr.strip()], proc.stderr
    assert proc.stderr.startswith("error: unknown model spec 'nope:x'") and proc.stdout == ""
    assert list(tmp_path.iterdir()) == []
