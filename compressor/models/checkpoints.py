"""Checkpoints: read a ``torch.load(weights_only=True)`` file, say in one line why one cannot be read, and load a
state_dict into a model strictly (but for an adapted stem and, when asked, a re-initialized classifier)."""

from __future__ import annotations

import pickle
import re
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressor.config import WEIGHTS_HEADS
from compressor.errors import BadInput, one_line
from compressor.models.pickle_scan import _is_pickled_module, _pickle_globals
from compressor.models.stem import adapt_weight, stem_weight


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


@dataclass
class Loaded:
    """What a load changed besides copying tensors: ``adapted`` (the stem weight, to the model's input channels),
    ``reinitialized`` (classifier keys left at the model's fresh init), and one line saying so for each."""

    adapted: list[str] = field(default_factory=list)
    reinitialized: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)


def _classifier(model: nn.Module) -> str | None:
    """The name of the last ``Linear``/``Conv2d`` in module order: the classifier of every torchvision model and
    CIFAR net."""
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return names[-1] if names else None


def _differs_only_in(a: torch.Tensor, b: torch.Tensor, dim: int) -> bool:
    """Same shape except in dimension ``dim``."""
    sa, sb = tuple(a.shape), tuple(b.shape)
    return len(sa) == len(sb) > dim and sa[dim] != sb[dim] and sa[:dim] + sa[dim + 1 :] == sb[:dim] + sb[dim + 1 :]


def _adapt_stem_entry(model: nn.Module, sd: dict[str, torch.Tensor], own: dict[str, Any], source: str,
                      loaded: Loaded) -> None:  # fmt: skip
    """An RGB (or other) stem weight for a model of other input channels: adapted as :func:`adapt_stem` does."""
    key = stem_weight(model)
    if key is None or key not in sd or not _differs_only_in(sd[key], own[key], 1):
        return
    c_old, c_new = sd[key].shape[1], own[key].shape[1]
    sd[key] = adapt_weight(sd[key], c_new).to(sd[key].dtype)
    rule = "summed over its channels" if c_new == 1 else f"repeated, scaled by {c_old}/{c_new}"
    loaded.adapted.append(key)
    loaded.messages.append(f"{source}: adapted the stem {key} from {c_old} to {c_new} input channels ({rule})")


def _head_entries(model: nn.Module, sd: dict[str, torch.Tensor], own: dict[str, Any], bad: list[str], head: str,
                  source: str, loaded: Loaded) -> list[str]:  # fmt: skip
    """Re-initialize (``reinit``) or refuse (``strict``) a classifier of another class count; the other keys of
    ``bad``."""
    cls = _classifier(model)
    keys = [k for k in bad if cls and k.startswith(f"{cls}.") and _differs_only_in(sd[k], own[k], 0)]
    if not keys:
        return bad
    theirs, ours = sd[keys[0]].shape[0], own[keys[0]].shape[0]
    if head != "reinit":
        shapes = _preview([f"{k} {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}" for k in keys], 2)
        raise BadInput(f"{source} has a classifier for {theirs} classes, the model has {ours}: {shapes}; pass "
                       f"--weights-head reinit to re-initialize it (or --num-classes {theirs})")  # fmt: skip
    for k in keys:
        sd[k] = own[k]
    loaded.reinitialized += keys
    loaded.messages.append(f"{source}: re-initialized the classifier {', '.join(keys)} ({theirs} -> {ours} classes, "
                           "--weights-head reinit)")  # fmt: skip
    return [k for k in bad if k not in keys]


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor], source: str,
               head: str = WEIGHTS_HEADS[0]) -> Loaded:  # fmt: skip
    """Load ``state`` into ``model`` (in place), strictly, but for two documented changes.

    A stem weight of other input channels is adapted (:func:`adapt_stem`'s rule: an RGB stem for a 1-channel model
    is summed over RGB); a classifier of another class count (the last Linear/Conv2d, first dimension) is refused
    with ``head="strict"`` or left at the model's fresh init with ``"reinit"``. Missing/unexpected keys and any
    other shape mismatch -> :class:`BadInput` naming ``source``. Returns what changed.
    """
    sd, own, loaded = dict(state), model.state_dict(), Loaded()
    # files older than BatchNorm's num_batches_tracked (many of torchvision's) lack it: load_state_dict fills it in
    missing = [k for k in own if k not in sd and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s): {_preview(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s): {_preview(unexpected)}")
        raise BadInput(f"{source} does not match the model: {'; '.join(parts)}")
    _adapt_stem_entry(model, sd, own, source, loaded)
    bad = [k for k, v in own.items() if k in sd and sd[k].shape != v.shape]
    bad = _head_entries(model, sd, own, bad, head, source, loaded)
    if bad:
        shapes = _preview([f"{k} {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}" for k in bad], 2)
        raise BadInput(f"{source} has mismatched shapes: {shapes} (a pruned model? load it with its pruning history)")
    try:
        model.load_state_dict(with_module_versions(sd, model), strict=True)
    except Exception as e:
        raise BadInput(f"cannot load {source}: {one_line(e)[:200]}") from None
    return loaded


def load_weights(model: nn.Module, path: str | Path, head: str = WEIGHTS_HEADS[0]) -> Loaded:
    """Load a checkpoint into ``model`` (in place), strictly but for :func:`load_state`'s stem and head rules.

    Reads with ``torch.load(weights_only=True)``; accepts a raw state_dict or a dict holding it under
    ``"state_dict"``/``"model"``; strips ``module.`` (DDP) and ``_orig_mod.`` (torch.compile)
    prefixes. Missing/corrupt file, missing/unexpected keys or shape mismatches -> :class:`BadInput`.
    """
    path = Path(path).expanduser()
    hint = f"save model.state_dict() instead, or pass the file as --model {path} with --trust-code"
    sd = _extract_state_dict(read_checkpoint(path, module_hint=hint), path)
    return load_state(model, sd, f"checkpoint {path}", head)


def with_module_versions(state: Mapping[str, torch.Tensor], model: nn.Module) -> Mapping[str, torch.Tensor]:
    """``state`` with the module versions ``load_state_dict`` hands each module's ``_load_from_state_dict``
    (``state_dict()._metadata``), taken from ``model`` when the state has none: our files hold plain dicts, and
    some modules refuse a state without their version (torchvision's MNASNet: "version should be set to 1 or 2").
    Only a state holding every key of ``model`` (one a current model wrote) gets them: an older checkpoint's
    missing keys are what a module's version-less path fills in (BatchNorm's ``num_batches_tracked`` in
    torchvision's DenseNet weights)."""
    if getattr(state, "_metadata", None) is not None:
        return state
    own = model.state_dict()
    if not set(own) <= set(state):
        return state
    versioned = OrderedDict(state)
    versioned._metadata = own._metadata  # type: ignore[attr-defined]
    return versioned
