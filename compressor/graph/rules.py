"""The caller's rules: which layers to leave alone (``--ignore``), how far to prune each (``--group-max-ratio``)."""

from __future__ import annotations

import fnmatch

from torch import nn

from compressor.errors import BadInput
from compressor.graph.groups import Member


def resolve_ignore(model: nn.Module, patterns: list[str] | tuple[str, ...]) -> dict[nn.Module, str]:
    """Layers matched by ``--ignore`` patterns: a module name, a glob over names, or ``type:ClassName``.

    A matched container ignores every conv/linear/norm inside it. A pattern matching nothing is bad input.
    """
    named = list(model.named_modules())
    found: dict[nn.Module, str] = {}
    for raw in patterns:
        pat = str(raw).strip()
        if not pat:
            continue
        if pat.startswith("type:"):
            cls = pat[5:].removeprefix("nn.")
            hits = [(n, m) for n, m in named if type(m).__name__ == cls]
        else:
            hits = [(n, m) for n, m in named if n and fnmatch.fnmatchcase(n, pat)]
        if not hits:
            raise BadInput(f"--ignore {pat!r} matches no layer of the model (names as in `compress info`)")
        for _, mod in hits:
            for sub in mod.modules():
                found.setdefault(sub, f"ignored (--ignore {pat})")
    return found


def _check_overrides(model: nn.Module, overrides: dict[str, float]) -> dict[str, float]:
    names = [n for n, _ in model.named_modules() if n]
    checked: dict[str, float] = {}
    for pat, value in overrides.items():
        try:
            ratio = float(value)
        except (TypeError, ValueError):
            raise BadInput(f"--group-max-ratio {pat}={value!r}: the ratio must be a number in [0, 1)") from None
        if not 0 <= ratio < 1:
            raise BadInput(f"--group-max-ratio {pat}={value}: the ratio must be in [0, 1)")
        if not any(fnmatch.fnmatchcase(n, str(pat)) for n in names):
            raise BadInput(f"--group-max-ratio {pat!r} matches no layer of the model")
        checked[str(pat)] = ratio
    return checked


def _matches(pattern: str, members: list[Member]) -> bool:
    return any(m.side == "out" and fnmatch.fnmatchcase(m.name, pattern) for m in members)
