"""BatchNorm initialisation."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def init_bn_gamma(model: nn.Module, value: float) -> None:
    """Set every BatchNorm scale (gamma) to ``value`` (the ASTER authors start from 0.5)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None:
            m.weight.fill_(value)
