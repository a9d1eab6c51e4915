"""The pruned-model file format: plain spec dicts in, ``torch.load(weights_only=True)`` out.

A file holds the model spec (``{"model", "num_classes", "in_channels", "trust_code"}``), the input shape, the
DepGraph pruning history and the slim state_dict (:func:`pruned_payload`); loading rebuilds
the dense architecture from the spec, replays the history, then loads the weights. A pretrained spec
(``torchvision:NAME:WEIGHTS``) rebuilds without its pretrained file: the file's own weights replace them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from compressor.config import WEIGHTS_HEADS
from compressor.errors import BadInput, one_line
from compressor.graph import TP_VERSION, rebuild_pruned
from compressor.models import build_model, read_checkpoint

PRUNED_FORMAT = "compress.pruned/1"


def pruned_payload(spec: dict[str, Any], input_shape: tuple[int, ...], history: list, model: torch.nn.Module,
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """What a pruned-model file holds: plain types only, so ``torch.load(weights_only=True)`` reads it."""
    return {
        "format": PRUNED_FORMAT,
        "spec": dict(spec),
        "input_shape": list(input_shape),
        "history": history,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "torch_pruning": TP_VERSION,
        **(extra or {}),
    }


def build_from_spec(spec: dict[str, Any], *, pretrained: bool = True,
                    weights_head: str = WEIGHTS_HEADS[0]) -> torch.nn.Module:  # fmt: skip
    """The model of a spec dict; ``pretrained=False``: the architecture of a ``torchvision:NAME:WEIGHTS`` spec
    without reading its weights (a pruned-model file holds its own)."""
    return build_model(
        spec["model"],
        num_classes=int(spec["num_classes"]),
        in_channels=int(spec["in_channels"]),
        trust_code=bool(spec.get("trust_code", False)),
        pretrained=pretrained,
        weights_head=weights_head,
    )


def build_architecture(spec: dict[str, Any]) -> torch.nn.Module:
    """The dense architecture of a spec dict with fresh weights, reading no pretrained file."""
    return build_from_spec(spec, pretrained=False)


def read_pruned(path: str | Path) -> dict[str, Any]:
    """A pruned-model file's payload (``weights_only=True``); BadInput naming the format if it is not one."""
    payload = read_checkpoint(path, "pruned model")
    if not isinstance(payload, dict) or payload.get("format") != PRUNED_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else None
        raise BadInput(
            f"{path} is not a compress pruned-model file ({PRUNED_FORMAT})"
            + (f": its format is {found!r} (written by another compress version?)" if found else "")
        )
    return payload


def load_pruned(path: str | Path, *, trust_code: bool = False) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Load a pruned-model file (``weights_only=True``) and rebuild the slim model."""
    payload = read_pruned(path)
    if payload["spec"].get("trust_code") and not trust_code:
        raise BadInput(f"{path} was built from user code ({payload['spec']['model']}): pass --trust-code")
    try:
        return rebuild_pruned(payload, build_architecture), payload
    except BadInput:
        raise
    except Exception as exc:  # a readable file that does not match its architecture
        raise BadInput(f"{path} does not rebuild: {one_line(exc, 200, typed=True)}") from None
