"""Pretrained torchvision weights: ``torchvision:NAME:WEIGHTS``, read from the local torch hub cache only.

``WEIGHTS`` names a member of the model's weights enum (``torchvision.models.get_model_weights(NAME)``:
``IMAGENET1K_V1``, ``IMAGENET1K_V2``, ...) or ``DEFAULT``. The file is the one torchvision would download, at
``torch.hub.get_dir()/checkpoints/<the file name of weights.url>`` (``$TORCH_HOME/hub/checkpoints/``); compress
never downloads it: a missing file is :class:`BadInput` naming the full path to place it at. It is read with
``torch.load(weights_only=True)`` (:func:`~compressor.models.checkpoints.read_checkpoint`).

The architecture is the one torchvision builds for the weights (the ViT image size of the weights; GoogLeNet and
Inception-v3 with their input transform on RGB), so a pruned-model file rebuilds it from the spec with ``load=False``
and no file. Loading follows :func:`~compressor.models.checkpoints.load_state`: the RGB stem is adapted to the
model's input channels, and a classifier of another class count is refused unless ``head="reinit"``.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from compressor.config import WEIGHTS_HEADS, pretrained_spec
from compressor.errors import BadInput, one_line
from compressor.models.checkpoints import _extract_state_dict, load_state, read_checkpoint
from compressor.models.stem import adapt_stem

#: The attribute of a model built from ``torchvision:NAME:WEIGHTS`` that holds :func:`build_pretrained`'s record.
PRETRAINED_ATTR = "pretrained_weights"
# torchvision's DenseNet files name layers norm.1, conv.2, ...: its loader renames them norm1, conv2 (so do we)
_DENSENET_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12]\.(?:weight|bias|running_mean|running_var))$")
_AUX = ("aux1.", "aux2.", "AuxLogits.")  # GoogLeNet/Inception auxiliary heads: built without them


def resolve_weights(name: str, weights: str) -> Any:
    """The member ``weights`` (or ``DEFAULT``) of torchvision model ``name``'s weights enum; BadInput listing the
    valid names otherwise."""
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(name)
    except (KeyError, ValueError) as e:
        raise BadInput(f"torchvision model {name!r} has no pretrained weights: {one_line(e)}") from None
    if weights not in enum.__members__:
        valid = [w.name for w in enum] + ["DEFAULT"]
        raise BadInput(f"unknown weights {weights!r} for torchvision:{name}; valid: {', '.join(valid)}")
    return enum[weights]


def cache_file(weights: Any) -> Path:
    """Where torchvision keeps the file of ``weights``: ``torch.hub.get_dir()/checkpoints/<url file name>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def categories(spec: str, num_classes: int) -> list[str] | None:
    """The class names of a ``torchvision:NAME:WEIGHTS`` spec's weights when the model keeps their classifier
    (``num_classes`` is their count); ``None`` otherwise. Reads no file."""
    parts = pretrained_spec(spec)
    if parts is None:
        return None
    names = resolve_weights(*parts).meta.get("categories")
    return list(names) if names and len(names) == num_classes else None


def _arch_kwargs(name: str, weights: Any, in_channels: int) -> dict[str, Any]:
    """The builder arguments torchvision sets for ``weights`` (besides the class count)."""
    kwargs: dict[str, Any] = {}
    if name.startswith("vit_") and weights.meta.get("min_size"):
        kwargs["image_size"] = int(weights.meta["min_size"][0])
    if name in ("googlenet", "inception_v3"):
        kwargs.update(aux_logits=False, init_weights=True, transform_input=in_channels == 3)
    return kwargs


def _transforms(weights: Any) -> str:
    """The preprocessing the weights expect (``weights.transforms()``) on one line."""
    lines = [line.strip() for line in repr(weights.transforms()).splitlines()]
    return lines[0] + ", ".join(lines[1:-1]) + lines[-1] if len(lines) > 2 else " ".join(lines)


def _read_state(spec: str, name: str, weights: Any) -> dict[str, torch.Tensor]:
    """The cached file's state_dict, keys as the model names them; BadInput naming the path when it is absent."""
    path = cache_file(weights)
    if not path.is_file():
        raise BadInput(f"pretrained weights {spec} are not in the local cache (compress never downloads): place "
                       f"{path.name} (from {weights.url}) at {path} (TORCH_HOME sets the cache's place)")  # fmt: skip
    sd = _extract_state_dict(read_checkpoint(path, "pretrained weights"), path)
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key.startswith(_AUX):
            continue
        m = _DENSENET_KEY.match(key) if name.startswith("densenet") else None  # torchvision's own key fix
        out[m.group(1) + m.group(2) if m else key] = value
    return out


def build_pretrained(spec: str, num_classes: int, in_channels: int, *, load: bool = True,
                     head: str = WEIGHTS_HEADS[0]) -> nn.Module:  # fmt: skip
    """The model of a ``torchvision:NAME:WEIGHTS`` spec, with the cached weights loaded (``load=False``: the
    architecture only). The record of what was loaded is the model's ``pretrained_weights`` attribute."""
    import torchvision

    name, member = pretrained_spec(spec) or ("", "")
    weights = resolve_weights(name, member)
    state = _read_state(spec, name, weights) if load else None  # a missing file fails before any work
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes,
                                             **_arch_kwargs(name, weights, in_channels))  # fmt: skip
    if in_channels != 3:
        adapt_stem(model, in_channels)
    if state is None:
        return model
    loaded = load_state(model, state, f"pretrained {spec}", head)
    kept = not loaded.reinitialized
    record = {"spec": spec, "weights": str(weights), "file": str(cache_file(weights)), "url": weights.url,
              "transforms": _transforms(weights), "head": "pretrained" if kept else "reinitialized",
              "reinitialized": loaded.reinitialized, "adapted": loaded.adapted, "messages": loaded.messages,
              "categories": categories(spec, num_classes) if kept else None}  # fmt: skip
    setattr(model, PRETRAINED_ATTR, record)
    return model


def pretrained_record(model: nn.Module) -> dict[str, Any] | None:
    """What :func:`build_pretrained` loaded into ``model`` (spec, weights, file, url, transforms, head, categories,
    the keys re-initialized or adapted and a line for each); ``None`` for a model built without pretrained weights."""
    return getattr(model, PRETRAINED_ATTR, None)
