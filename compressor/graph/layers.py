"""What kind of layer a module is for pruning: norms, pass-through ops, grouped convs, and its channel counts."""

from __future__ import annotations

from torch import nn

# Module types whose FLOPs Torch-Pruning's counter sees and that scale with their channel count only.
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.PReLU, nn.ELU, nn.LeakyReLU, nn.Upsample, nn.GELU)  # costed on their output
_PASSTHROUGH = (
    *_ACTIVATIONS,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
)  # fmt: skip
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm,
          nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)  # fmt: skip


def _is_grouped(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and 1 < m.groups < m.in_channels


def _is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels


def _channels(mod: nn.Module, side: str) -> int | None:
    if isinstance(mod, nn.Conv2d):
        return mod.out_channels if side == "out" else mod.in_channels
    if isinstance(mod, nn.Linear):
        return mod.out_features if side == "out" else mod.in_features
    if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
        return mod.num_features
    if isinstance(mod, nn.GroupNorm):
        return mod.num_channels
    if isinstance(mod, nn.LayerNorm) and len(mod.normalized_shape) == 1:
        return int(mod.normalized_shape[0])
    if isinstance(mod, nn.MultiheadAttention):
        return mod.embed_dim
    return None
