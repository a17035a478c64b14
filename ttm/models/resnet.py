"""CIFAR ResNets: the BasicBlock family (resnet8 … resnet110, resnet8x4, resnet32x4) and the Bottleneck ResNet50.

Layer and attribute names follow RepDistiller's `resnet.py` and `resnetv2.py`, so the state_dict keys of their
published CIFAR teachers (also the ones mdistiller ships) load as they are.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ttm.models.common import init_conv_bn_


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3×3 convs plus a shortcut; a 1×1 conv + BN on the shortcut when the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        # Identity, not None, so forward has no branch; it holds no parameters, so the keys stay the reference's.
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.downsample(x))


class CifarResNet(nn.Module):
    """conv3×3 → three stages of n BasicBlocks (strides 1, 2, 2) → global average pool → fc; depth = 6n + 2.

    `widths` is RepDistiller's num_filters: the stem's width, then the three stages'. The reference pools with a
    fixed AvgPool2d(8); adaptive pooling gives the same result at 32×32 and lets 28×28 and 8×8 inputs through.
    """

    def __init__(self, depth: int, widths: tuple[int, int, int, int], num_classes: int, in_channels: int = 3):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"a BasicBlock CIFAR ResNet has depth 6n+2, got {depth}")
        blocks_per_stage = (depth - 2) // 6
        self.conv1 = conv3x3(in_channels, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.layer1 = self._stage(widths[0], widths[1], blocks_per_stage, stride=1)
        self.layer2 = self._stage(widths[1], widths[2], blocks_per_stage, stride=2)
        self.layer3 = self._stage(widths[2], widths[3], blocks_per_stage, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        init_conv_bn_(self)

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class Bottleneck(nn.Module):
    """1×1 reduce → 3×3 (carries the stride) → 1×1 expand ×4, plus a projection shortcut when the shape changes."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        out_planes = self.expansion * planes
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut: nn.Module = nn.Sequential()  # an empty Sequential is the identity, as in the reference
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(out_planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class BottleneckResNet(nn.Module):
    """RepDistiller's CIFAR ResNet50: ImageNet's stages and widths behind a 3×3 stride-1 stem with no max-pool."""

    def __init__(self, blocks: tuple[int, int, int, int], num_classes: int, in_channels: int = 3):
        super().__init__()
        self.conv1 = conv3x3(in_channels, 64)
        self.bn1 = nn.BatchNorm2d(64)
        e = Bottleneck.expansion
        self.layer1 = self._stage(64, 64, blocks[0], stride=1)
        self.layer2 = self._stage(64 * e, 128, blocks[1], stride=2)
        self.layer3 = self._stage(128 * e, 256, blocks[2], stride=2)
        self.layer4 = self._stage(256 * e, 512, blocks[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(512 * e, num_classes)
        init_conv_bn_(self)

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [Bottleneck(in_planes, planes, stride)]
        layers += [Bottleneck(planes * Bottleneck.expansion, planes) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.linear(torch.flatten(self.avgpool(x), 1))


def cifar_resnet(depth: int, widths: tuple[int, int, int, int] = (16, 16, 32, 64)):
    """A builder `(num_classes, in_channels) → model`; the ×4 models pass widths (32, 64, 128, 256)."""

    def build(num_classes: int, in_channels: int = 3) -> CifarResNet:
        return CifarResNet(depth, widths, num_classes, in_channels)

    return build


def resnet50(num_classes: int, in_channels: int = 3) -> BottleneckResNet:
    return BottleneckResNet((3, 4, 6, 3), num_classes, in_channels)
