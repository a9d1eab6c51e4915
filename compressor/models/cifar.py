"""The CIFAR networks of the pruning literature: He et al. 2016 ResNets (depth 6n+2) and VGG-16 with BatchNorm."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from compressor.errors import BadInput

CIFAR_RESNET_DEPTHS = {"resnet20": 20, "resnet32": 32, "resnet56": 56, "resnet110": 110}
CIFAR_VGG16_CFG: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M"]
CIFAR_VGG16_CFG += [512, 512, 512]


def init_weights(model: nn.Module, linear: Callable[[torch.Tensor], object]) -> None:
    """The papers' init: Kaiming-normal convs (fan out), BatchNorm scale 1 and shift 0, ``linear`` for each
    Linear weight, zero Linear biases; in module order, so one seed always gives the same weights."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            linear(m.weight)
            nn.init.zeros_(m.bias)


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
        init_weights(self, nn.init.kaiming_normal_)

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
        init_weights(self, lambda w: nn.init.normal_(w, 0, 0.01))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))
