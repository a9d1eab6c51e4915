"""ONNX ``metadata_props``: the keys compress writes (and reserves), merging them in, reading them back."""

from __future__ import annotations

import logging
import os
from typing import Any

import onnx

from compressor import tool_version
from exporters.files import load_model

log = logging.getLogger("compress.export")

#: Keys export_onnx writes into metadata_props; user metadata cannot override them.
RESERVED_KEYS = (
    "tool",
    "tool_version",
    "exporter",
    "exporter_fallback",
    "opset",
    "dynamic_batch",
    "input_shape",
    "precision",
    "verified",
    "max_abs_diff",
    "verify_batch_sizes",
    "verify_rtol",
    "verify_atol",
    "accuracy_top1",
    "accuracy_top5",
    "accuracy_loss",
    "accuracy_n",
    "accuracy_split",
)


def _set_metadata(proto: onnx.ModelProto, props: dict[str, str]) -> None:
    merged = {p.key: p.value for p in proto.metadata_props}
    merged.update(props)
    del proto.metadata_props[:]
    for key, value in merged.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def _export_props(
    metadata: dict[str, Any] | None,
    *,
    used: str,
    fallback_reason: str | None,
    opset: int,
    dynamic: bool,
    shape: tuple[int, ...],
    precision: str,
    rtol: float,
    atol: float,
) -> dict[str, str]:
    """The caller's metadata (reserved keys dropped with a warning), then what compress records of the export."""
    props: dict[str, str] = {}
    for key, value in (metadata or {}).items():
        if str(key) in RESERVED_KEYS:
            log.warning("metadata key %r is reserved by compress and was not written", key)
            continue
        props[str(key)] = str(value)
    props.update(
        {
            "tool": "compress",
            "tool_version": tool_version(),
            "exporter": used,
            **({"exporter_fallback": fallback_reason} if fallback_reason else {}),
            "opset": str(opset),
            "dynamic_batch": "true" if dynamic else "false",
            "input_shape": "x".join(str(d) for d in shape),
            "precision": precision,
            "verify_rtol": repr(rtol),
            "verify_atol": repr(atol),
        }
    )
    return props


def _verification_props(verification: dict) -> dict[str, str]:
    """What compress records of the verification (written after it ran)."""
    return {
        "verified": "true" if verification["passed"] else "false",
        "max_abs_diff": repr(verification["max_abs_diff"]),
        "verify_batch_sizes": ",".join(str(b) for b in verification["batch_sizes"]),
    }


def accuracy_props(accuracy: dict[str, Any]) -> dict[str, str]:
    """What compress records of the file's accuracy on real data (see ``exporters.accuracy``)."""
    return {
        "accuracy_top1": repr(float(accuracy["acc"])),
        "accuracy_top5": repr(float(accuracy["top5"])),
        "accuracy_loss": repr(float(accuracy["loss"])),
        "accuracy_n": str(int(accuracy["n"])),
        "accuracy_split": str(accuracy.get("split", "test")),
    }


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file as a plain dict (external data is not read)."""
    return {p.key: p.value for p in load_model(path).metadata_props}
