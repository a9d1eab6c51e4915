"""The built-in model sources: factories for every torchvision classification model and the CIFAR nets, and timm
models by name (if timm is installed)."""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Callable
from typing import Any

from torch import nn

from compressor.errors import BadInput, one_line
from compressor.models.cifar import CIFAR_RESNET_DEPTHS, CifarResNet, CifarVGG
from compressor.models.stem import adapt_stem

Factory = Callable[[int, int], nn.Module]  # (num_classes, in_channels) -> model


def _torchvision_names() -> list[str]:
    """The names of every torchvision classification model, sorted."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _make_torchvision(name: str) -> Factory:
    """A factory for torchvision model ``name``: fresh weights (``weights=None``), stem adapted to ``in_channels``."""

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
    """A factory for the CIFAR ResNet of ``depth``."""

    def factory(num_classes: int, in_channels: int) -> nn.Module:
        return CifarResNet(depth, num_classes=num_classes, in_channels=in_channels)

    return factory


def _cifar_factories() -> dict[str, Factory]:
    """The ``cifar:*`` specs and their factories."""
    built: dict[str, Factory] = {f"cifar:{n}": _make_cifar_resnet(d) for n, d in CIFAR_RESNET_DEPTHS.items()}
    built["cifar:vgg16"] = lambda num_classes, in_channels: CifarVGG(num_classes=num_classes, in_channels=in_channels)
    return built


def _torchvision_factories() -> dict[str, Factory]:
    """The ``torchvision:*`` specs (every torchvision classification model) and their factories."""
    return {f"torchvision:{name}": _make_torchvision(name) for name in _torchvision_names()}


def _build_timm(name: str, num_classes: int, in_channels: int) -> nn.Module:
    """Timm model ``name`` with fresh weights; :class:`BadInput` when timm is missing or has no such model."""
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
