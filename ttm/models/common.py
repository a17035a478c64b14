"""Pieces several architectures share: the reference initialisation and the ShuffleNet channel shuffle."""
from __future__ import annotations

import torch
from torch import nn


def init_conv_bn_(model: nn.Module) -> None:
    """Convs ~ N(0, 2/fan_out), BN weight 1 and bias 0, as RepDistiller does.

    The references write it either as kaiming_normal_(mode="fan_out") or as normal_(0, sqrt(2 / (k·k·out_channels)));
    PyTorch's fan_out is out_channels·k·k (groups do not enter), so the two are the same distribution.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def init_linear_(model: nn.Module, std: float | None) -> None:
    """Zero every Linear bias; with `std`, also draw its weight from N(0, std²) (VGG and MobileNetV2 use 0.01)."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            if std is not None:
                nn.init.normal_(m.weight, 0.0, std)
            nn.init.zeros_(m.bias)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """[N, g·k, H, W] → [N, k·g, H, W]: interleave the channels of the g groups so the next grouped conv mixes them."""
    return x.unflatten(1, (groups, -1)).transpose(1, 2).flatten(1, 2)
