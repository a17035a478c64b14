"""The CIFAR VGGs with batch norm (vgg8, vgg11, vgg13, vgg16, vgg19): five conv blocks, no big FC head.

RepDistiller's `vgg.py` with batch_norm=True (its `vgg8_bn` … `vgg19_bn`, which its model table names vgg8 …);
the names (`block0.0`, `classifier`) are the reference's so its published teachers load as they are.
Inputs: 32×32 and 28×28, and anything down to 8×8 (three 2×2 max-pools, then a global average pool).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ttm.models.common import init_conv_bn_, init_linear_

# Output channels of the 3×3 convs in each of the five blocks.
VGG_BLOCKS: dict[str, list[list[int]]] = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}


def conv_block(in_channels: int, widths: list[int]) -> nn.Sequential:
    """(conv3×3 with bias, BN, ReLU) per width, minus the last ReLU: the caller applies it (the reference's layout)."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Conv2d(in_channels, width, kernel_size=3, padding=1), nn.BatchNorm2d(width),
                   nn.ReLU(inplace=True)]
        in_channels = width
    return nn.Sequential(*layers[:-1])


class CifarVGG(nn.Module):
    def __init__(self, blocks: list[list[int]], num_classes: int, in_channels: int = 3):
        super().__init__()
        self.block0 = conv_block(in_channels, blocks[0])
        self.block1 = conv_block(blocks[0][-1], blocks[1])
        self.block2 = conv_block(blocks[1][-1], blocks[2])
        self.block3 = conv_block(blocks[2][-1], blocks[3])
        self.block4 = conv_block(blocks[3][-1], blocks[4])
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(blocks[4][-1], num_classes)
        init_conv_bn_(self)
        init_linear_(self, std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The reference pools a fourth time only for 64×64 inputs (Tiny-ImageNet); a shape test, fixed per compile.
        pool_after_block3 = x.shape[2] == 64
        x = self.pool(F.relu(self.block0(x)))
        x = self.pool(F.relu(self.block1(x)))
        x = self.pool(F.relu(self.block2(x)))
        x = F.relu(self.block3(x))
        if pool_after_block3:
            x = self.pool(x)
        x = F.relu(self.block4(x))
        return self.classifier(torch.flatten(self.avgpool(x), 1))


def cifar_vgg(name: str):
    """A builder `(num_classes, in_channels) → model` for one of VGG_BLOCKS."""
    blocks = VGG_BLOCKS[name]

    def build(num_classes: int, in_channels: int = 3) -> CifarVGG:
        return CifarVGG(blocks, num_classes, in_channels)

    return build
