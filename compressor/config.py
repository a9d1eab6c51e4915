"""Option parsing shared by the CLI, recipes and the library (torch-free: it sits at the bottom of the layers)."""

from __future__ import annotations

from typing import Any

from compressor.errors import BadInput


def parse_patterns(value: Any) -> list[str]:
    """``--ignore`` values: repeated options, comma lists or a YAML list -> a flat list of patterns."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    return [p.strip() for item in items for p in str(item).split(",") if p.strip()]


def parse_ratios(value: Any) -> dict[str, float]:
    """``--group-max-ratio PATTERN=RATIO`` (repeated or comma list) or a YAML mapping -> {pattern: ratio}."""
    if value is None:
        return {}
    if isinstance(value, dict):
        pairs = [(str(k), v) for k, v in value.items()]
    else:
        pairs = []
        for entry in parse_patterns(value):
            pat, sep, ratio = entry.rpartition("=")
            if not sep or not pat:
                raise BadInput(f"--group-max-ratio expects PATTERN=RATIO, got {entry!r}")
            pairs.append((pat.strip(), ratio.strip()))
    out: dict[str, float] = {}
    for pat, ratio in pairs:
        try:
            out[pat] = float(ratio)
        except (TypeError, ValueError):
            raise BadInput(f"--group-max-ratio {pat}={ratio!r}: the ratio must be a number in [0, 1)") from None
    return out
