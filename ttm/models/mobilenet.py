"""MobileNets: RepDistiller's CIFAR MobileNetV2 (width 0.5, expansion 6) and the ImageNet MobileNet v1.

Module names are the references' (RepDistiller `mobilenetv2.py`, mdistiller `imagenet/mobilenetv1.py`) so their
published checkpoints load as they are. Both end in a global average pool, so any input from 8×8 up runs; the
strides were chosen for 32×32 (MobileNetV2: four stride-2 steps) and 224×224 (v1: five).
"""
from __future__ import annotations

import torch
from torch import nn

from ttm.models.common import init_conv_bn_, init_linear_


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1×1 expand → 3×3 depthwise (carries the stride) → 1×1 linear projection; residual when the shape is kept.

    Unlike torchvision, RepDistiller keeps the 1×1 expansion conv even when the expansion ratio is 1.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = in_channels * expand_ratio
        self.use_residual = stride == 1 and in_channels == out_channels
        self.conv = nn.Sequential(
            *conv_bn_relu(in_channels, hidden, 1),
            *conv_bn_relu(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class CifarMobileNetV2(nn.Module):
    """RepDistiller's `mobilenetv2_T_w(T, W)`; the paper's "MobileNetV2" is T=6, W=0.5 (its `mobile_half`)."""

    def __init__(self, num_classes: int, in_channels: int = 3, expansion: int = 6, width_mult: float = 0.5):
        super().__init__()
        # (expansion, channels at width 1, blocks, stride of the first block): the ImageNet table with the second
        # stage's stride at 1 and a stride-2 stem, so 32×32 ends at 2×2.
        stages = [(1, 16, 1, 1), (expansion, 24, 2, 1), (expansion, 32, 3, 2), (expansion, 64, 4, 2),
                  (expansion, 96, 3, 1), (expansion, 160, 3, 2), (expansion, 320, 1, 1)]
        channels = int(32 * width_mult)
        self.conv1 = conv_bn_relu(in_channels, channels, 3, stride=2)
        self.blocks = nn.ModuleList()
        for t, c, n, s in stages:
            out_channels = int(c * width_mult)
            stage = []
            for i in range(n):
                stage.append(InvertedResidual(channels, out_channels, s if i == 0 else 1, t))
                channels = out_channels
            self.blocks.append(nn.Sequential(*stage))
        # The reference widens the last conv only above width 1 (and then with int(), not make_divisible).
        last_channels = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = conv_bn_relu(channels, last_channels, 1)
        # The reference uses AvgPool2d(2, ceil_mode=True) on the 2×2 map of a 32×32 input: a global mean.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(last_channels, num_classes))
        init_conv_bn_(self)
        init_linear_(self, std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        for stage in self.blocks:
            x = stage(x)
        x = self.conv2(x)
        return self.classifier(torch.flatten(self.avgpool(x), 1))


def depthwise_separable(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """3×3 depthwise (carries the stride) then 1×1 pointwise, each with BN and ReLU: MobileNet v1's unit."""
    return nn.Sequential(*conv_bn_relu(in_channels, in_channels, 3, stride, groups=in_channels),
                         *conv_bn_relu(in_channels, out_channels, 1))


class MobileNetV1(nn.Module):
    """The ImageNet MobileNet v1 (width 1, 224×224 → 7×7 before the pool), the student of the ResNet-50 → MobileNet
    pair. mdistiller sets no initialisation for it, so PyTorch's defaults stay, as there."""

    # (output channels, stride) of the 13 depthwise-separable units after the 32-channel stride-2 stem.
    UNITS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
             (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))

    def __init__(self, num_classes: int, in_channels: int = 3):
        super().__init__()
        layers: list[nn.Module]
        layers, channels = [conv_bn_relu(in_channels, 32, 3, stride=2)], 32
        for out_channels, stride in self.UNITS:
            layers.append(depthwise_separable(channels, out_channels, stride))
            channels = out_channels
        # The reference ends `model` with AvgPool2d(7), exact at 224×224; the adaptive pool is the same there.
        layers.append(nn.AdaptiveAvgPool2d(1))
        self.model = nn.Sequential(*layers)
        self.fc = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.model(x), 1))


def mobilenetv2_cifar(num_classes: int, in_channels: int = 3) -> CifarMobileNetV2:
    return CifarMobileNetV2(num_classes, in_channels, expansion=6, width_mult=0.5)


def mobilenet_v1(num_classes: int, in_channels: int = 3) -> MobileNetV1:
    return MobileNetV1(num_classes, in_channels)
