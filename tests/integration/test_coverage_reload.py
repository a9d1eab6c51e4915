"""The coverage suite's file path: a row passes only when ``pruned.pt`` reloads in a fresh process to the same
model and exports verified; a file that reloads to something else fails the row (stage ``reload``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks.suites.coverage import _reload_check
from compressor.graph import PruningGraph
from compressor.models import build_model

pytestmark = pytest.mark.slow  # two fresh interpreters


def _pruned(shape: tuple[int, int, int]) -> tuple[torch.nn.Module, list]:
    model = build_model("torchvision:resnet18", num_classes=1000, in_channels=3).eval()
    graph = PruningGraph(model, torch.zeros(1, *shape), arch="resnet18")
    masks = {g.id: torch.arange(g.size) >= g.size // 2 for g in graph.groups}  # drop the first half
    return graph.materialize(masks)


def test_a_sound_file_passes_and_a_wrong_history_fails(tmp_path: Path) -> None:
    shape = (3, 32, 32)
    slim, history = _pruned(shape)
    row: dict = {"method": "l2"}
    _reload_check("resnet18", slim, history, shape, "legacy", tmp_path, row)
    assert row["stage"] == "done" and row["reload_max_abs_diff"] <= 1e-5
    bad: dict = {"method": "bad"}
    with pytest.raises(RuntimeError, match="fresh process"):  # no history: the dense architecture comes back
        _reload_check("resnet18", slim, [], shape, "legacy", tmp_path, bad)
    assert bad["stage"] == "reload"
