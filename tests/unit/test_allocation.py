"""--allocation latency: measured per-group weights steer a baseline's ratios; the FLOPs target still holds."""

from __future__ import annotations

import json

import pytest

from compressor.errors import BadInput
from compressor.jobs.prune import PruneConfig, prune

BASE = dict(model="cifar:resnet20", data="synthetic:3x32x32:10:64:32", method="l2", target_flops=0.5, epochs=0,
            batch_size=32, quiet=True, latency_threads=1)  # fmt: skip


def test_latency_allocation_weights_and_target(tmp_path):
    report = prune(PruneConfig(**BASE, out=str(tmp_path / "lat"), allocation="latency"))
    uniform = prune(PruneConfig(**BASE, out=str(tmp_path / "uni")))
    alloc = report["allocation"]
    saved = json.loads((tmp_path / "lat" / "allocation.json").read_text())
    assert alloc["provider"] == "cpu" and alloc["power"] == 2.0 and alloc["table"] == saved["table"]
    assert len(alloc["table"]) == len(report["groups"])  # every group was probed
    weights = [float(w) for w in saved["weights"].values()]
    assert min(weights) > 0 and sum(weights) / len(weights) == pytest.approx(1.0)
    assert report["target"]["met"] and abs(report["flops_drop"] - 0.5) <= 0.01
    assert "allocation" not in uniform and max(weights) > min(weights)  # measured, not flat
    assert all(r["saved_macs"] > 0 for r in alloc["table"])


@pytest.mark.parametrize(
    "extra, match",
    [
        ({"allocation": "fastest"}, "--allocation must be one of"),
        ({"allocation": "latency", "method": "psap"}, "sets its own group ratios"),
    ],
)
def test_bad_allocation(tmp_path, extra, match):
    with pytest.raises(BadInput, match=match):
        prune(PruneConfig(**{**BASE, **extra}, out=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()
