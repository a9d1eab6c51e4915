"""Model specs -> ``nn.Module``, and checkpoints.

:mod:`~compressor.models.registry` (specs, :func:`build_model`, :func:`list_models`), :mod:`.cifar` (the CIFAR
nets), :mod:`.stem` (input-channel adaptation), :mod:`.builtin_sources` (torchvision, CIFAR, timm),
:mod:`.user_code` (user files and pickled modules), :mod:`.pretrained` (``torchvision:NAME:WEIGHTS`` from the local
cache), :mod:`.pickle_scan`, :mod:`.checkpoints`, :mod:`.batchnorm`.
"""

from __future__ import annotations

from compressor.models.batchnorm import init_bn_gamma
from compressor.models.checkpoints import Loaded, load_state, load_weights, read_checkpoint
from compressor.models.cifar import BasicBlock, CifarResNet, CifarVGG
from compressor.models.pretrained import categories, pretrained_record
from compressor.models.registry import _REGISTRY, build_model, known_spec, list_models, register
from compressor.models.stem import adapt_stem

__all__ = [
    "build_model",
    "known_spec",
    "load_weights",
    "load_state",
    "Loaded",
    "categories",
    "pretrained_record",
    "read_checkpoint",
    "list_models",
    "adapt_stem",
    "CifarResNet",
    "CifarVGG",
    "BasicBlock",
    "init_bn_gamma",
    "register",
    "_REGISTRY",
]
