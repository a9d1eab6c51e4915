"""Model specs -> ``nn.Module``.

One registry of factories (timm-style). A spec is one of:

* ``torchvision:NAME`` -- every torchvision classification model
  (``torchvision.models.list_models(module=torchvision.models)``), built with ``weights=None``;
* ``torchvision:NAME:WEIGHTS`` -- the same with pretrained weights (``IMAGENET1K_V1``, ``DEFAULT``, ...) read from
  the local torch hub cache, never downloaded (:mod:`~compressor.models.pretrained`);
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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from compressor.config import WEIGHTS_HEADS, pretrained_spec
from compressor.errors import BadInput
from compressor.models.builtin_sources import Factory, _build_timm, _cifar_factories, _torchvision_factories
from compressor.models.pretrained import build_pretrained
from compressor.models.user_code import PICKLED_SUFFIXES, _build_pickled, _build_user
from compressor.runtime.memory import check_fits

_REGISTRY: dict[str, Factory] = {}
_LISTED: set[str] = set()  # the sources whose built-in specs were added (each once, whatever a user registered)
_BUILT_INS: dict[str, Factory] = {}  # the built-in factories (a user's register() under the same spec wins)

Builder = Callable[[str, int, int, bool], nn.Module]  # (spec, num_classes, in_channels, trust_code) -> model


@dataclass(frozen=True)
class Source:
    """One kind of spec: which specs it ``claims``, how it ``build``s one, and the built-in specs it ``lists``."""

    claims: Callable[[str], bool]
    build: Builder
    lists: Callable[[], dict[str, Factory]] | None = None


def _is_user_file(spec: str) -> bool:
    """``path/to/file.py:factory``, or a bare ``path/to/file.py`` that forgot the factory."""
    head, sep, _rest = spec.rpartition(":")
    return (bool(sep) and head.endswith(".py")) or spec.endswith(".py")


def _build_user_file(spec: str, num_classes: int, in_channels: int, trust_code: bool) -> nn.Module:
    """A ``file.py:factory`` spec; a bare ``file.py`` is :class:`BadInput` asking for the factory's name."""
    head, sep, _rest = spec.rpartition(":")
    if sep and head.endswith(".py"):
        return _build_user(spec, num_classes, in_channels, trust_code)
    raise BadInput(f"model spec {spec!r}: name the factory function, e.g. {spec}:build")


def _build_timm_spec(spec: str, num_classes: int, in_channels: int, trust_code: bool) -> nn.Module:
    """A ``timm:NAME`` spec."""
    return _build_timm(spec[len("timm:") :], num_classes, in_channels)


def _registered(spec: str) -> tuple[str, Factory] | None:
    """The registered spec and factory ``spec`` names (a bare name: when exactly one spec has it), else None."""
    _populate(spec)
    if spec in _REGISTRY:
        return spec, _REGISTRY[spec]
    if ":" not in spec:
        # Bare names are accepted when unambiguous (resnet20 -> cifar:resnet20, resnet18 -> torchvision:).
        matches = [s for s in _REGISTRY if s.split(":", 1)[-1] == spec]
        if len(matches) > 1:
            raise BadInput(f"ambiguous model name {spec!r}: use one of {', '.join(sorted(matches))}")
        if matches:
            return matches[0], _REGISTRY[matches[0]]
    return None


def _build_registered(spec: str, num_classes: int, in_channels: int, trust_code: bool) -> nn.Module:
    """A registered spec (built-in or :func:`register`-ed), or a bare name that exactly one of them has."""
    found = _registered(spec)
    if found is None:
        raise BadInput(f"unknown model spec {spec!r}{_suggest(spec)}")
    return found[1](num_classes, in_channels)


def _source_of(spec: str) -> str | None:
    """The key of the first source in :data:`SOURCES` that claims ``spec``, or None."""
    return next((key for key, source in SOURCES.items() if source.claims(spec)), None)


def _builder(spec: str) -> Builder:
    """How ``spec`` is built: its source's builder; a registered spec wins over a prefix handler (a user's
    ``register("timm:x")`` is not timm's ``x``), and a spec no source claims is looked up in the registry."""
    _populate(spec)
    key = _source_of(spec)
    return _build_registered if key is None or spec in _REGISTRY else SOURCES[key].build


def known_spec(spec: str) -> bool:
    """Whether :func:`build_model` can resolve ``spec`` (a source claims it or the registry has it); the spec's own
    checks (a user file exists, timm is installed, weights are cached) happen when it is built."""
    if pretrained_spec(spec) is not None or _builder(spec) is not _build_registered:
        return True
    try:
        return _registered(spec) is not None
    except BadInput:  # an ambiguous bare name
        return False


def _ours(spec: str, build: Builder) -> bool:
    """Whether ``spec`` builds with this package's or a library's code (a built-in spec, ``timm:``), not a user's
    (a file, a pickled module, a registered factory): only ours are built twice to estimate their memory."""
    if build is _build_timm_spec:
        return True
    if build is not _build_registered:
        return False
    try:
        found = _registered(spec)
    except BadInput:
        return False
    return found is not None and _BUILT_INS.get(found[0]) is found[1]


# The sources of models, tried in order: the first whose ``claims`` accepts a spec builds it (so ``x.py:f`` and
# ``torchvision:x.pt`` are user code, not registry names). A spec none claims is looked up in the registry. Adding a
# source is one entry; one with ``lists`` adds its specs to the registry (and to list_models).
SOURCES: dict[str, Source] = {
    "file.py:factory": Source(_is_user_file, _build_user_file),
    ".pt": Source(lambda spec: spec.lower().endswith(PICKLED_SUFFIXES), _build_pickled),
    "timm:": Source(lambda spec: spec.startswith("timm:"), _build_timm_spec),
    "cifar:": Source(lambda spec: spec.startswith("cifar:"), _build_registered, _cifar_factories),
    "torchvision:": Source(lambda spec: spec.startswith("torchvision:"), _build_registered, _torchvision_factories),
}


def register(spec: str) -> Callable[[Factory], Factory]:
    """Register a factory ``f(num_classes, in_channels) -> nn.Module`` under ``spec``."""

    def deco(fn: Factory) -> Factory:
        _REGISTRY[spec] = fn
        return fn

    return deco


def _populate(spec: str | None = None) -> None:
    """Add the built-in specs a lookup of ``spec`` can find, each source once: its own source's, none for a spec a
    source without listings claims (a file, a pickled module, ``timm:``: only a user's register() can name one),
    all of them for ``None`` or a spec no source claims (a bare name). A spec the user registered under the same
    name keeps the user's factory. Only what is needed is listed: building ``cifar:resnet20`` never imports
    torchvision."""
    claimed = None if spec is None else _source_of(spec)
    listing = [k for k, s in SOURCES.items() if s.lists is not None]
    for key in listing if claimed is None else [k for k in listing if k == claimed]:
        if key in _LISTED:
            continue
        built = SOURCES[key].lists()  # type: ignore[misc]
        for name, fn in built.items():
            _REGISTRY.setdefault(name, fn)
        _BUILT_INS.update(built)
        _LISTED.add(key)


def list_models(pattern: str | None = None) -> list[str]:
    """All registered specs (``cifar:*``, ``torchvision:*`` and any registered with :func:`register`; timm models
    and user files are not listed), filtered by a glob such as ``'torchvision:resnet*'`` when given."""
    import fnmatch

    _populate()
    return sorted(s for s in _REGISTRY if pattern is None or fnmatch.fnmatchcase(s, pattern))


def _suggest(spec: str) -> str:
    """A hint naming up to three registered specs close to ``spec`` (full or bare), or where to list them."""
    names = list_models()
    bare = {n.split(":", 1)[-1]: n for n in names}
    key = spec.split(":", 1)[-1]
    close = difflib.get_close_matches(spec, names, n=3, cutoff=0.6)
    close += [bare[b] for b in difflib.get_close_matches(key, list(bare), n=3, cutoff=0.6)]
    close = list(dict.fromkeys(close))[:3]
    return f"; did you mean {', '.join(close)}?" if close else "; `compress info --list-models` lists them"


def build_model(spec: str, *, num_classes: int = 10, in_channels: int = 3, trust_code: bool = False,
                pretrained: bool = True, weights_head: str = WEIGHTS_HEADS[0]) -> nn.Module:  # fmt: skip
    """Build the model named by ``spec`` (see the module docstring) with fresh weights, or the pretrained ones of a
    ``torchvision:NAME:WEIGHTS`` spec (``pretrained=False``: its architecture only, as a pruned-model file that
    loads its own weights needs; ``weights_head``: ``strict`` refuses their classifier for another class count,
    ``reinit`` re-initializes it).

    Raises :class:`BadInput` (one line) for an unknown/malformed spec, an untrusted user file, bad
    ``num_classes``/``in_channels``, or pretrained weights that are unknown, not cached or do not fit.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise BadInput("empty model spec; expected e.g. cifar:resnet20 or torchvision:resnet18")
    spec = spec.strip()
    if not isinstance(num_classes, int) or num_classes < 1:
        raise BadInput(f"num_classes must be a positive integer, got {num_classes!r}")
    if not isinstance(in_channels, int) or in_channels < 1:
        raise BadInput(f"in_channels must be a positive integer, got {in_channels!r}")
    if weights_head not in WEIGHTS_HEADS:
        raise BadInput(f"--weights-head must be one of {', '.join(WEIGHTS_HEADS)}, got {weights_head!r}")
    if (parts := pretrained_spec(spec)) is not None:  # reads a file: it takes the loading options
        arch = f"torchvision:{parts[0]}"
        if arch not in list_models("torchvision:*"):
            raise BadInput(f"unknown model spec {arch!r}{_suggest(arch)}")
        return build_pretrained(spec, num_classes, in_channels, load=pretrained, head=weights_head)
    build = _builder(spec)
    if _ours(spec, build):  # user code (a file, a pickled module, a registered factory) runs once
        _check_fits(build, spec, num_classes, in_channels)
    return build(spec, num_classes, in_channels, trust_code)


_RANDOM_FILLS = {"normal_", "uniform_", "random_", "bernoulli_", "exponential_", "geometric_", "log_normal_", "cauchy_"}


class _NoInitOnMeta(TorchFunctionMode):
    """Skips weight initialisation (``nn.init.*`` and the random fills) while a model is built on ``meta``: its
    values do not exist, and PyTorch's meta kernels for random fills import ``torch._dynamo`` (about 1 s)."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if getattr(func, "__module__", None) == "torch.nn.init" or getattr(func, "__name__", "") in _RANDOM_FILLS:
            return args[0] if args else next(v for v in kwargs.values() if isinstance(v, torch.Tensor))
        return func(*args, **kwargs)


def _check_fits(build: Callable[..., nn.Module], spec: str, num_classes: int, in_channels: int) -> None:
    """:class:`BadInput` before building when the model's parameters and buffers alone (counted on the ``meta``
    device: no memory, no random numbers drawn) exceed the memory available. A model that cannot be built on
    ``meta`` is not estimated."""
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"), _NoInitOnMeta():
            meta = build(spec, num_classes, in_channels, False)
        needed = sum(t.numel() * t.element_size() for t in [*meta.parameters(), *meta.buffers()])
        count = sum(t.numel() for t in meta.parameters())
    except Exception:  # noqa: BLE001 (lazy modules, tensor maths at build time: the real build reports errors)
        return
    check_fits(f"model {spec} ({count:,} parameters, {num_classes} classes)", needed,
               "a smaller model or --num-classes")  # fmt: skip
