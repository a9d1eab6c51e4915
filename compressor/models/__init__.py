"""Model specs -> ``nn.Module``.

One registry of factories (timm-style). A spec is one of:

* ``torchvision:NAME`` -- every torchvision classification model
  (``torchvision.models.list_models(module=torchvision.models)``), built with ``weights=None``;
* ``cifar:resnet20|resnet32|resnet56|resnet110`` -- He et al. 2016 CIFAR ResNets;
* ``cifar:vgg16`` -- the CIFAR VGG-16 with BatchNorm of the pruning literature;
* ``timm:NAME`` -- any timm model, if timm is installed;
* ``path/to/file.py:factory`` -- user code, only with ``trust_code=True`` (it runs arbitrary code).
* ``path/to/model.pt`` (or ``.pth``) -- a whole module saved with ``torch.save(model)``, only with
  ``trust_code=True``: unpickling it runs arbitrary code (``torch.load(weights_only=False)``). The classes it
  was saved with must be importable. Its input channels are adapted like a user factory's.

A bare name (``resnet20``, ``mobilenet_v2``) is accepted when exactly one registry entry has it.

Every model accepts any ``num_classes`` and ``in_channels``. For torchvision models with
``in_channels != 3`` the stem (the first ``Conv2d`` in module order, which is also the first one run
in forward order for every torchvision classification model) is replaced by a conv with the same
hyper-parameters and ``in_channels`` inputs; its weights are derived from the freshly initialised
RGB ones the way timm adapts pretrained stems (1 channel: sum over RGB; otherwise: repeat RGB
cyclically and scale by ``3 / in_channels``), so the initial function and scale are preserved.

Building is deterministic given ``torch.manual_seed``.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import inspect
import math
import pickle
import pickletools
import re
import sys
import warnings
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressor.errors import BadInput, one_line

__all__ = [
    "build_model",
    "load_weights",
    "read_checkpoint",
    "list_models",
    "adapt_stem",
    "CifarResNet",
    "CifarVGG",
    "BasicBlock",
]

CIFAR_RESNET_DEPTHS = {"resnet20": 20, "resnet32": 32, "resnet56": 56, "resnet110": 110}
CIFAR_VGG16_CFG: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M"]
CIFAR_VGG16_CFG += [512, 512, 512]


# --------------------------------------------------------------------------------------------
# CIFAR networks
# --------------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """3x3-3x3 residual block. Shortcut: identity, or option B (1x1 conv + BN) when the shape changes."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + identity)


class CifarResNet(nn.Module):
    """He et al. 2016 ("Deep Residual Learning", sec. 4.2) CIFAR ResNet of depth 6n+2.

    3x3 stem conv (16 channels) + BN + ReLU, three stages of ``n`` BasicBlocks with 16/32/64 channels
    (strides 1/2/2), global average pooling and a linear classifier. Shortcuts use **option B**:
    identity when the shape is unchanged, a projection (1x1 conv with stride + BN) where the stage
    changes width/resolution (option B rather than A's zero-padding, so every channel is a real,
    prunable conv channel for DepGraph). Kaiming-normal init (fan_out, ReLU) for convs, BN gamma=1 and
    beta=0. resnet20 has ~0.27M parameters.
    """

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise BadInput(f"CIFAR ResNet depth must be 6n+2 (e.g. 20, 32, 56, 110), got {depth}")
        n = (depth - 2) // 6
        self.depth = depth
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        in_planes = 16
        stages = []
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


class CifarVGG(nn.Module):
    """The CIFAR VGG-16 with BatchNorm used in the filter-pruning literature (Li et al. 2017, Liu et
    al. 2017): 13 conv3x3+BN+ReLU layers with cfg ``[64,64,M,128,128,M,256,256,256,M,512,512,512,M,
    512,512,512]``, then adaptive average pooling to 1x1 and ``Linear(512, num_classes)``. Works for
    any input of at least 16x16 (e.g. 28x28 Fashion-MNIST, 32x32 CIFAR).
    """

    def __init__(self, cfg: list[int | str] | None = None, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        cfg = list(CIFAR_VGG16_CFG if cfg is None else cfg)
        layers: list[nn.Module] = []
        c = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                assert isinstance(v, int)
                layers += [
                    nn.Conv2d(c, v, 3, padding=1, bias=False),
                    nn.BatchNorm2d(v),
                    nn.ReLU(inplace=True),
                ]
                c = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


# --------------------------------------------------------------------------------------------
# Stem adaptation
# --------------------------------------------------------------------------------------------


def _first_conv(model: nn.Module) -> tuple[str, nn.Conv2d] | None:
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            return name, m
    return None


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


@torch.no_grad()
def adapt_stem(model: nn.Module, in_channels: int) -> nn.Module:
    """Replace the first ``Conv2d`` (module order) by one with ``in_channels`` inputs, in place.

    The new conv keeps every other hyper-parameter (kernel, stride, padding, dilation, bias, padding
    mode, dtype/device); its weights are derived from the old ones (timm's ``adapt_input_conv`` rule)
    so the model's initialisation scale is preserved. Returns ``model``.
    """
    found = _first_conv(model)
    if found is None:
        raise BadInput("cannot adapt the input channels: the model has no Conv2d")
    name, old = found
    if old.in_channels == in_channels:
        return model
    if old.groups != 1:
        raise BadInput(f"cannot adapt the input channels: first conv {name!r} is grouped")
    new = nn.Conv2d(
        in_channels,
        old.out_channels,
        kernel_size=old.kernel_size,  # type: ignore[arg-type]
        stride=old.stride,  # type: ignore[arg-type]
        padding=old.padding,  # type: ignore[arg-type]
        dilation=old.dilation,  # type: ignore[arg-type]
        groups=1,
        bias=old.bias is not None,
        padding_mode=old.padding_mode,
        device=old.weight.device,
        dtype=old.weight.dtype,
    )
    w = old.weight
    c_old = old.in_channels
    if in_channels == 1:
        new_w = w.sum(dim=1, keepdim=True)
    else:
        reps = math.ceil(in_channels / c_old)
        new_w = w.repeat(1, reps, 1, 1)[:, :in_channels] * (c_old / in_channels)
    new.weight.copy_(new_w)
    if old.bias is not None:
        new.bias.copy_(old.bias)  # type: ignore[union-attr]
    new.train(old.training)
    _set_submodule(model, name, new)
    return model


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

Factory = Callable[[int, int], nn.Module]  # (num_classes, in_channels) -> model
_REGISTRY: dict[str, Factory] = {}
_BUILT_IN = [False]  # the built-in specs are added once, whatever a user registered before


def register(spec: str) -> Callable[[Factory], Factory]:
    """Register a factory ``f(num_classes, in_channels) -> nn.Module`` under ``spec``."""

    def deco(fn: Factory) -> Factory:
        _REGISTRY[spec] = fn
        return fn

    return deco


def _torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _make_torchvision(name: str) -> Factory:
    def factory(num_classes: int, in_channels: int) -> nn.Module:
        import torchvision

        kwargs: dict[str, Any] = {"weights": None, "num_classes": num_classes}
        if name in ("googlenet", "inception_v3"):
            # Plain tensor from forward (no aux heads), explicit init (no FutureWarning), and no
            # ImageNet RGB input transform (it indexes channels 0..2).
            kwargs.update(aux_logits=False, init_weights=True, transform_input=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            model = torchvision.models.get_model(name, **kwargs)
        if in_channels != 3:
            adapt_stem(model, in_channels)
        return model

    return factory


def _make_cifar_resnet(depth: int) -> Factory:
    def factory(num_classes: int, in_channels: int) -> nn.Module:
        return CifarResNet(depth, num_classes=num_classes, in_channels=in_channels)

    return factory


def _populate() -> None:
    """Add the built-in specs (once); a spec the user registered under the same name keeps the user's factory."""
    if _BUILT_IN[0]:
        return
    built: dict[str, Factory] = {f"cifar:{n}": _make_cifar_resnet(d) for n, d in CIFAR_RESNET_DEPTHS.items()}
    built["cifar:vgg16"] = lambda num_classes, in_channels: CifarVGG(num_classes=num_classes, in_channels=in_channels)
    for name in _torchvision_names():
        built[f"torchvision:{name}"] = _make_torchvision(name)
    for spec, fn in built.items():
        _REGISTRY.setdefault(spec, fn)
    _BUILT_IN[0] = True


def list_models(pattern: str | None = None) -> list[str]:
    """All registered specs (``cifar:*``, ``torchvision:*`` and any registered with :func:`register`; timm models
    and user files are not listed), filtered by a glob such as ``'torchvision:resnet*'`` when given."""
    import fnmatch

    _populate()
    return sorted(s for s in _REGISTRY if pattern is None or fnmatch.fnmatchcase(s, pattern))


def _suggest(spec: str) -> str:
    names = list_models()
    bare = {n.split(":", 1)[1]: n for n in names}
    key = spec.split(":", 1)[-1]
    close = difflib.get_close_matches(spec, names, n=3, cutoff=0.6)
    close += [bare[b] for b in difflib.get_close_matches(key, list(bare), n=3, cutoff=0.6)]
    close = list(dict.fromkeys(close))[:3]
    return f"; did you mean {', '.join(close)}?" if close else "; `compress info --list-models` lists them"


def _build_timm(name: str, num_classes: int, in_channels: int) -> nn.Module:
    try:
        import timm  # type: ignore[import-not-found]
    except ImportError:
        raise BadInput(f"model spec 'timm:{name}' needs timm, which is not installed (pip install timm)") from None
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels)
    except Exception as e:  # timm raises RuntimeError for unknown names
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join('timm:' + c for c in close)}?" if close else ""
        raise BadInput(f"cannot build timm model {name!r}: {one_line(e)}{hint}") from None


def _load_user_module(path: Path) -> Any:
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


def _pickle_globals(path: Path) -> list[str]:
    """The classes and functions the pickle of a ``torch.save`` archive names, read without unpickling it."""
    try:
        with zipfile.ZipFile(path) as zf:
            name = next((n for n in zf.namelist() if n.endswith("data.pkl")), None)
            data = zf.read(name) if name else b""
    except (OSError, zipfile.BadZipFile, ValueError, RuntimeError):
        return []
    found: list[str] = []
    strings: list[str] = []
    try:
        for op, arg, _pos in pickletools.genops(data):
            if op.name == "GLOBAL":
                found.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
            elif "UNICODE" in op.name and isinstance(arg, str):
                strings.append(arg)
    except Exception:  # a damaged pickle: what was read so far
        pass
    return list(dict.fromkeys(found))


def _is_pickled_module(names: list[str]) -> bool:
    return any(n.startswith("torch.nn.modules.") or n in ("torch._utils._rebuild_parameter",
                                                            "torch.nn.parameter.Parameter") for n in names)  # fmt: skip


def _needs_unpickling(path: Path, exc: Exception) -> bool:
    """True when a weights-only load refused a sound archive for the Python objects it holds."""
    return isinstance(exc, pickle.UnpicklingError) and zipfile.is_zipfile(path) and bool(_pickle_globals(path))


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


@torch.no_grad()
def init_bn_gamma(model: nn.Module, value: float) -> None:
    """Set every BatchNorm scale (gamma) to ``value`` (the ASTER authors start from 0.5)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None:
            m.weight.fill_(value)


def build_model(spec: str, *, num_classes: int = 10, in_channels: int = 3, trust_code: bool = False) -> nn.Module:
    """Build the model named by ``spec`` (see the module docstring) with fresh weights.

    Raises :class:`BadInput` (one line) for an unknown/malformed spec, an untrusted user file, or bad
    ``num_classes``/``in_channels``.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise BadInput("empty model spec; expected e.g. cifar:resnet20 or torchvision:resnet18")
    spec = spec.strip()
    if not isinstance(num_classes, int) or num_classes < 1:
        raise BadInput(f"num_classes must be a positive integer, got {num_classes!r}")
    if not isinstance(in_channels, int) or in_channels < 1:
        raise BadInput(f"in_channels must be a positive integer, got {in_channels!r}")

    head, sep, rest = spec.rpartition(":")
    if sep and head.endswith(".py"):
        return _build_user(spec, num_classes, in_channels, trust_code)
    if spec.endswith(".py"):
        raise BadInput(f"model spec {spec!r}: name the factory function, e.g. {spec}:build")
    if spec.lower().endswith(PICKLED_SUFFIXES):
        return _build_pickled(spec, num_classes, in_channels, trust_code)
    if spec.startswith("timm:"):
        return _build_timm(spec[len("timm:") :], num_classes, in_channels)

    _populate()
    factory = _REGISTRY.get(spec)
    if factory is None and ":" not in spec:
        # Bare names are accepted when unambiguous (resnet20 -> cifar:resnet20, resnet18 -> torchvision:).
        matches = [s for s in _REGISTRY if s.split(":", 1)[1] == spec]
        if len(matches) == 1:
            factory = _REGISTRY[matches[0]]
        elif len(matches) > 1:
            raise BadInput(f"ambiguous model name {spec!r}: use one of {', '.join(sorted(matches))}")
    if factory is None:
        raise BadInput(f"unknown model spec {spec!r}{_suggest(spec)}")
    return factory(num_classes, in_channels)


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


def _extract_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
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
