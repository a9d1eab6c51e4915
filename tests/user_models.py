"""Models written the way users write them, loaded as ``tests/user_models.py:FACTORY`` with ``--trust-code``.

Each stresses one thing the dependency graph must get right: a squeeze-excitation gate (channel-wise
multiply by a computed scale), a channel concat of unequal branches, depthwise-separable blocks, one module
applied twice, a ``forward`` with non-tensor arguments, and a small Vision Transformer (attention heads,
a static ``hidden_dim``).
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn


def _cbr(cin: int, cout: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class _Head(nn.Module):
    def __init__(self, cin: int, num_classes: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(x), 1))


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, r: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(c, c // r, 1)
        self.fc2 = nn.Conv2d(c // r, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        return x * s


class SENet(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = _cbr(in_channels, 32)
        self.body = nn.Sequential(_cbr(32, 48), nn.Conv2d(48, 32, 3, 1, 1), nn.BatchNorm2d(32))
        self.se = SqueezeExcite(32)
        self.head = _Head(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.head(torch.relu(x + self.se(self.body(x))))


class ConcatNet(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = _cbr(in_channels, 24)
        self.a = _cbr(24, 32)
        self.b = nn.Sequential(_cbr(24, 16), _cbr(16, 40))
        self.fuse = _cbr(72, 48, stride=2)
        self.head = _Head(48, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.head(self.fuse(torch.cat([self.a(x), self.b(x)], dim=1)))


class DepthwiseSeparable(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [_cbr(in_channels, 32, stride=2)]
        for cin, cout in ((32, 64), (64, 96)):
            layers += [_cbr(cin, cin, groups=cin), nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout),
                       nn.ReLU6(inplace=True)]  # fmt: skip
        self.features = nn.Sequential(*layers)
        self.head = _Head(96, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class SharedTwice(nn.Module):
    """The same block (weights shared) runs twice in a row."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = _cbr(in_channels, 32)
        self.block = nn.Sequential(nn.Conv2d(32, 32, 3, 1, 1), nn.ReLU())
        self.mid = _cbr(32, 48, stride=2)
        self.head = _Head(48, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.block(self.block(x))
        return self.head(self.mid(x))


class WithOptions(nn.Module):
    """``forward`` takes non-tensor arguments with defaults (export and the graph see only the image)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(_cbr(in_channels, 32), _cbr(32, 64, stride=2), _cbr(64, 64))
        self.head = _Head(64, num_classes)

    def forward(self, x: torch.Tensor, return_features: bool = False, temperature: float = 1.0) -> torch.Tensor:
        f = self.features(x)
        return f if return_features else self.head(f) / temperature


def se_net(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return SENet(num_classes, in_channels)


def concat_net(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return ConcatNet(num_classes, in_channels)


def depthwise_separable(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return DepthwiseSeparable(num_classes, in_channels)


def shared_twice(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return SharedTwice(num_classes, in_channels)


def with_options(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return WithOptions(num_classes, in_channels)


def tiny_vit(num_classes: int = 10) -> nn.Module:
    """A 2-layer ViT for 32x32 inputs (torchvision's VisionTransformer: same code as vit_b_16)."""
    return torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128, num_classes=num_classes
    )


# Hostile models (tests/integration/test_hostile.py): each must be refused with one clear line, never a crash.


def _small(num_classes: int, in_channels: int) -> nn.Sequential:
    return nn.Sequential(_cbr(in_channels, 16), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))


def factory_raises(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    raise RuntimeError("checkpoint server unreachable")


def returns_int(num_classes: int = 10, in_channels: int = 3) -> int:
    return 42


class _ForwardRaises(nn.Module):
    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.features = _cbr(in_channels, 16)
        self.fc = nn.Linear(17, num_classes)  # a hard-coded width that does not match the features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


class _ForwardDict(nn.Module):
    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.net = _small(num_classes, in_channels)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.net(x)}


class _ForwardTuple(nn.Module):
    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.net = _small(num_classes, in_channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.net(x)
        return logits, logits.softmax(1)


def forward_raises(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return _ForwardRaises(num_classes, in_channels)


def forward_dict(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return _ForwardDict(num_classes, in_channels)


def forward_tuple(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return _ForwardTuple(num_classes, in_channels)
