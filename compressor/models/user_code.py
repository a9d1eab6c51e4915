"""Models from user code, only with ``trust_code`` (both run arbitrary code).

* ``path/to/file.py:factory`` -- a factory function in a user file; it is passed ``num_classes`` and
  ``in_channels`` when it takes them, and its stem is adapted otherwise.
* ``path/to/model.pt`` (or ``.pth``) -- a whole module saved with ``torch.save(model)``, unpickled with
  ``torch.load(weights_only=False)``; the classes it was saved with must be importable. Its input channels are
  adapted like a user factory's.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import inspect
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressor.errors import BadInput, one_line
from compressor.models.checkpoints import load_problem
from compressor.models.pickle_scan import _needs_unpickling, _pickle_globals
from compressor.models.stem import _first_conv, adapt_stem


def _load_user_module(path: Path) -> Any:
    """Import the user file at ``path`` once per path, under a name of its own in ``sys.modules``."""
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    mod_name = f"compress_user_{path.stem}_{digest}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise BadInput(f"cannot import user model file {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[mod_name]
        raise BadInput(f"error importing user model file {path}: {one_line(e, typed=True)}") from None
    return module


def _build_user(spec: str, num_classes: int, in_channels: int, trust_code: bool) -> nn.Module:
    """Call the factory a ``file.py:factory`` spec names; its stem is adapted when it takes no ``in_channels``."""
    file_part, _, factory_name = spec.rpartition(":")
    if not trust_code:
        raise BadInput(f"model spec {spec!r} runs Python code from {file_part}; pass --trust-code if you trust it")
    if not factory_name.isidentifier():
        raise BadInput(f"model spec {spec!r}: expected path/to/file.py:factory_function")
    path = Path(file_part).expanduser().resolve()
    if not path.is_file():
        raise BadInput(f"user model file not found: {path}")
    module = _load_user_module(path)
    factory = getattr(module, factory_name, None)
    if factory is None or not callable(factory):
        public = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        close = difflib.get_close_matches(factory_name, public, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise BadInput(f"{path} has no callable {factory_name!r}{hint}")
    kwargs: dict[str, Any] = {}
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if var_kw or "num_classes" in params:
        kwargs["num_classes"] = num_classes
    if var_kw or "in_channels" in params:
        kwargs["in_channels"] = in_channels
    try:
        model = factory(**kwargs)
    except Exception as e:
        raise BadInput(f"{spec}: factory raised {one_line(e, typed=True)}") from None
    if not isinstance(model, nn.Module):
        raise BadInput(f"{spec}: factory returned {type(model).__name__}, expected a torch.nn.Module")
    if "in_channels" not in kwargs:
        first = _first_conv(model)
        if first is not None and first[1].in_channels != in_channels:
            adapt_stem(model, in_channels)
    return model


PICKLED_SUFFIXES = (".pt", ".pth")
UNPICKLE_WHY = "loading it unpickles arbitrary Python code (torch.load with weights_only=False)"


def _build_pickled(spec: str, num_classes: int, in_channels: int, trust_code: bool) -> nn.Module:
    """A whole module saved with ``torch.save(model)``; unpickled only with ``trust_code``."""
    path = Path(spec).expanduser()
    if path.is_dir():
        raise BadInput(f"model file {path} is a directory, not a torch.save file")
    if not path.is_file():
        raise BadInput(f"model file not found: {path} (a .pt/.pth model spec is a pickled torch.save(model) file)")
    try:  # safe: weights_only reads tensors and plain containers only
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        if not _needs_unpickling(path, exc):
            raise BadInput(load_problem(path, exc, "model file")) from None
    else:
        raise BadInput(_not_a_module(path, obj))
    if not trust_code:
        raise BadInput(f"model file {path} is a pickled whole module: {UNPICKLE_WHY}; pass --trust-code if you "
                       "trust the file")  # fmt: skip
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = torch.load(path, map_location="cpu", weights_only=False)
    except (AttributeError, ImportError) as exc:
        own = [n for n in _pickle_globals(path) if not n.startswith(("torch.", "collections.", "builtins."))]
        names = f"it names {', '.join(own[:3])}: " if own else ""
        raise BadInput(f"cannot unpickle model file {path}: {one_line(exc, 200, typed=True)} ({names}the classes "
                       "it was saved with must be importable here)") from None  # fmt: skip
    except Exception as exc:
        raise BadInput(f"cannot unpickle model file {path}: {one_line(exc, 200, typed=True)}") from None
    if not isinstance(model, nn.Module):
        raise BadInput(f"model file {path} holds a {type(model).__name__}, not a pickled torch.nn.Module")
    first = _first_conv(model)
    if first is not None and first[1].in_channels != in_channels:
        adapt_stem(model, in_channels)
    return model


def _not_a_module(path: Path, obj: Any) -> str:
    """Why a file that loads with ``weights_only=True`` is no pickled module, and what to do with it."""
    if isinstance(obj, Mapping) and str(obj.get("format", "")).startswith("compress.pruned/"):
        return (f"model file {path} is a compress pruned-model file, not a pickled module: export or bench it "
                "(compress export/bench), or give its spec as --model")  # fmt: skip
    if isinstance(obj, Mapping):
        return (f"model file {path} holds a state_dict (weights only), not a pickled module: pass the "
                f"architecture as --model SPEC and the file as --weights {path}")  # fmt: skip
    return f"model file {path} holds a {type(obj).__name__}, not a pickled torch.nn.Module"
