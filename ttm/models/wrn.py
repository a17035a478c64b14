"""Wide ResNets for CIFAR (wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2): pre-activation blocks, width k times 16/32/64.

Names follow RepDistiller's `wrn.py` (`block1.layer.0.convShortcut` …) so its published teachers load as they are.
Dropout is left out: every model in the paper's tables uses a drop rate of 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ttm.models.common import init_conv_bn_, init_linear_


class WideBlock(nn.Module):
    """BN-ReLU-conv twice; when the width changes, a 1×1 conv takes the shortcut from the pre-activated input."""

    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        # Fixed at construction: whether the shortcut is the raw input or a projection of the pre-activated one.
        self.equal_in_out = in_planes == out_planes
        if not self.equal_in_out:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        shortcut = x if self.equal_in_out else self.convShortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class WideStage(nn.Module):
    """n WideBlocks; a module of its own only so the keys read `blockN.layer.i`, as in the reference."""

    def __init__(self, blocks: int, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.layer = nn.Sequential(*[
            WideBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1) for i in range(blocks)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """conv3×3 (16) → three stages of (depth−4)/6 blocks, widths 16k/32k/64k, strides 1/2/2 → BN-ReLU → pool → fc."""

    def __init__(self, depth: int, widen_factor: int, num_classes: int, in_channels: int = 3):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"a Wide ResNet has depth 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = WideStage(n, widths[0], widths[1], stride=1)
        self.block2 = WideStage(n, widths[1], widths[2], stride=2)
        self.block3 = WideStage(n, widths[2], widths[3], stride=2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        # The reference pools with F.avg_pool2d(out, 8); adaptive pooling is the same at 32×32 and also fits 28×28.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        init_conv_bn_(self)
        init_linear_(self, std=None)  # the reference zeroes the fc bias and keeps PyTorch's default weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = F.relu(self.bn1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def wide_resnet(depth: int, widen_factor: int):
    """A builder `(num_classes, in_channels) → model` for wrn_<depth>_<widen_factor>."""

    def build(num_classes: int, in_channels: int = 3) -> WideResNet:
        return WideResNet(depth, widen_factor, num_classes, in_channels)

    return build
