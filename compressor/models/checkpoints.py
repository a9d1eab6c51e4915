"""Checkpoints: read a ``torch.load(weights_only=True)`` file, say in one line why one cannot be read, and load a
state_dict into a model strictly."""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressor.errors import BadInput, one_line
from compressor.models.pickle_scan import _is_pickled_module, _pickle_globals


def load_problem(path: Path, exc: Exception, what: str, module_hint: str = "") -> str:
    """One line saying why ``torch.load(path, weights_only=True)`` failed: empty, truncated, not a PyTorch file,
    a pickled whole module (``module_hint`` says what to do instead) or other pickled Python objects."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(4)
    except OSError as e:
        return f"cannot read {what} {path}: {one_line(e, 200, typed=True)}"
    why = f"{one_line(exc, 200, typed=True)}"
    if size == 0:
        why = "the file is empty (0 bytes)"
    elif not zipfile.is_zipfile(path):
        if head.startswith(b"PK"):
            why = f"truncated or corrupt ({size} bytes of an incomplete torch.save archive)"
        elif head[:1] == b"\x80":  # a pickle: the legacy (pre-1.6) torch.save format, or plain pickle.dump
            why = f"a legacy or plain pickle file: {one_line(exc, 150, typed=True)}"
        else:
            why = "not a PyTorch file (not a torch.save archive: garbage or another format)"
    elif isinstance(exc, pickle.UnpicklingError):
        names = _pickle_globals(path)
        m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        refused = m.group(1) if m else ", ".join(n for n in names if not n.startswith("torch."))[:120]
        if _is_pickled_module(names):
            hint = module_hint or "a weights-only load refuses it (unpickling runs arbitrary code)"
            why = f"it holds a pickled whole module (torch.save(model)), not a state_dict or tensors: {hint}"
        elif refused:
            why = f"it holds pickled Python objects ({refused}) that a weights-only load refuses"
    return f"cannot read {what} {path}: {why}"


def _extract_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The state_dict in a loaded checkpoint (raw or under a known key), without DDP/torch.compile prefixes."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise BadInput(f"checkpoint {path} holds no state_dict (expected a dict of tensors)")
    sd: dict[str, torch.Tensor] = {}
    for k, v in obj.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise BadInput(f"checkpoint {path} is not a state_dict: entry {k!r} is {type(v).__name__}")
        for prefix in ("module.", "_orig_mod."):  # DDP / torch.compile wrappers
            while k.startswith(prefix):
                k = k[len(prefix) :]
        sd[k] = v
    return sd


def _preview(keys: list[str], n: int = 3) -> str:
    """The first ``n`` of ``keys``, and how many more there are."""
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def read_checkpoint(path: str | Path, what: str = "checkpoint", module_hint: str = "") -> Any:
    """``torch.load(path, weights_only=True)`` on CPU; a missing or unreadable file is :class:`BadInput` saying
    why (empty, truncated, not a PyTorch file, a pickled whole module: then ``module_hint``, ...)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise BadInput(f"{what} {path} is a directory, not a file")
    if not path.is_file():
        raise BadInput(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise BadInput(load_problem(path, e, what, module_hint)) from None


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a checkpoint into ``model`` (in place), strictly.

    Reads with ``torch.load(weights_only=True)``; accepts a raw state_dict or a dict holding it under
    ``"state_dict"``/``"model"``; strips ``module.`` (DDP) and ``_orig_mod.`` (torch.compile)
    prefixes. Missing/corrupt file, missing/unexpected keys or shape mismatches -> :class:`BadInput`.
    """
    path = Path(path).expanduser()
    hint = f"save model.state_dict() instead, or pass the file as --model {path} with --trust-code"
    sd = _extract_state_dict(read_checkpoint(path, module_hint=hint), path)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s): {_preview(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s): {_preview(unexpected)}")
        raise BadInput(f"checkpoint {path} does not match the model: {'; '.join(parts)}")
    bad = [f"{k} {tuple(sd[k].shape)} vs model {tuple(v.shape)}" for k, v in own.items() if sd[k].shape != v.shape]
    if bad:
        raise BadInput(
            f"checkpoint {path} has mismatched shapes: {_preview(bad, 2)}"
            " (a pruned model? load it with its pruning history)"
        )
    try:
        model.load_state_dict(sd, strict=True)
    except Exception as e:
        raise BadInput(f"cannot load checkpoint {path}: {one_line(e)[:200]}") from None
