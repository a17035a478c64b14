"""RepDistiller's CIFAR ShuffleNets: ShuffleV1 (groups 3) and ShuffleV2 (net size 1).

Both start with a 1×1 stem at full resolution and halve it three times, so 32×32 ends at 4×4 (28×28 at 4×4 too).
The references pool with F.avg_pool2d(out, 4); a global average pool is the same there and lets 8×8 inputs through.
They set no initialisation, so PyTorch's defaults stay, as there. Names are the references', so their published
checkpoints load as they are.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ttm.models.common import channel_shuffle


class ShuffleV1Unit(nn.Module):
    """Grouped 1×1 → shuffle → 3×3 depthwise → grouped 1×1. A stride-2 unit concatenates an avg-pooled copy of its
    input (so its convs make out − in channels); a stride-1 unit adds the input."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int):
        super().__init__()
        mid_planes = out_planes // 4
        # The unit right after the 24-channel stem runs its first 1×1 ungrouped: too few input channels to split
        # (ShuffleNet paper, §3.3); with one group the shuffle is the identity.
        first_groups = 1 if in_planes == 24 else groups
        self.first_groups = first_groups
        self.stride = stride
        self.conv1 = nn.Conv2d(in_planes, mid_planes, kernel_size=1, groups=first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.conv2 = nn.Conv2d(mid_planes, mid_planes, kernel_size=3, stride=stride, padding=1, groups=mid_planes,
                               bias=False)
        self.bn2 = nn.BatchNorm2d(mid_planes)
        self.conv3 = nn.Conv2d(mid_planes, out_planes, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1)) if stride == 2 else nn.Sequential()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.first_groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        merged = torch.cat([out, self.shortcut(x)], 1) if self.stride == 2 else out + x
        return F.relu(merged)


class ShuffleNetV1(nn.Module):
    def __init__(self, stage_planes: tuple[int, int, int], stage_units: tuple[int, int, int], groups: int,
                 num_classes: int, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        stages, in_planes = [], 24
        for planes, units in zip(stage_planes, stage_units):
            stage = [ShuffleV1Unit(in_planes, planes - in_planes, stride=2, groups=groups)]
            stage += [ShuffleV1Unit(planes, planes, stride=1, groups=groups) for _ in range(units - 1)]
            stages.append(nn.Sequential(*stage))
            in_planes = planes
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(stage_planes[2], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(torch.flatten(self.avgpool(x), 1))


class ShuffleV2Unit(nn.Module):
    """Keeps half the channels, runs the other half through 1×1 → 3×3 depthwise → 1×1, concatenates, shuffles."""

    half: int  # type: ignore[assignment]  # an int that hides Module.half() on this unit (never called on it)

    def __init__(self, channels: int):
        super().__init__()
        self.half = channels // 2
        branch = channels - self.half
        self.conv1 = nn.Conv2d(branch, branch, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(branch)
        self.conv2 = nn.Conv2d(branch, branch, kernel_size=3, stride=1, padding=1, groups=branch, bias=False)
        self.bn2 = nn.BatchNorm2d(branch)
        self.conv3 = nn.Conv2d(branch, branch, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(branch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept, x = x[:, :self.half], x[:, self.half:]
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = F.relu(self.bn3(self.conv3(out)))
        return channel_shuffle(torch.cat([kept, out], 1), 2)


class ShuffleV2DownUnit(nn.Module):
    """Halves the resolution with two branches on the whole input, each giving half the output channels."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        mid = out_channels // 2
        # left: 3×3 depthwise stride 2 → 1×1
        self.conv1 = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=2, padding=1, groups=in_channels,
                               bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        # right: 1×1 → 3×3 depthwise stride 2 → 1×1
        self.conv3 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, kernel_size=3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, kernel_size=1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, stage_channels: tuple[int, int, int], stage_units: tuple[int, int, int], last_channels: int,
                 num_classes: int, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        stages, channels = [], 24
        for out_channels, units in zip(stage_channels, stage_units):
            # a down unit, then `units` plain ones: the reference's stages have units + 1 blocks
            stages.append(nn.Sequential(ShuffleV2DownUnit(channels, out_channels),
                                        *[ShuffleV2Unit(out_channels) for _ in range(units)]))
            channels = out_channels
        self.layer1, self.layer2, self.layer3 = stages
        self.conv2 = nn.Conv2d(channels, last_channels, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(last_channels)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(last_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.linear(torch.flatten(self.avgpool(x), 1))


def shufflenet_v1(num_classes: int, in_channels: int = 3) -> ShuffleNetV1:
    return ShuffleNetV1((240, 480, 960), (4, 8, 4), groups=3, num_classes=num_classes, in_channels=in_channels)


def shufflenet_v2(num_classes: int, in_channels: int = 3) -> ShuffleNetV2:
    return ShuffleNetV2((116, 232, 464), (3, 7, 3), last_channels=1024, num_classes=num_classes,
                        in_channels=in_channels)
