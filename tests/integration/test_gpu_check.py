"""``python -m benchmarks.suites.gpu_check`` on a machine without CUDA: one line, exit 4, nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device: the check would run")
def test_refuses_cleanly_without_a_gpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.suites.gpu_check", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 4, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "CUDA device" in lines[0] and "--allow-no-gpu" in lines[0], proc.stderr
    assert not list(tmp_path.iterdir())  # nothing written
