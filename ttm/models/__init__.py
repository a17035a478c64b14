"""Model architectures by name: the CIFAR networks of the paper's tables, MobileNet v1, torchvision/<name> and
timm/<name> (the `timm` extra).

    build_model("resnet56", num_classes=100)                  # CIFAR-100 teacher
    build_model("resnet20", num_classes=10, in_channels=1)    # Fashion-MNIST / digits student
    build_model("torchvision/resnet18", num_classes=10, in_channels=1)
    build_model("timm/mobilenetv3_small_100", num_classes=10, in_channels=1)

Every model's forward returns the logits [B, num_classes] and nothing else, and has no data-dependent Python
control flow, so torch.compile and CUDA graphs capture it whole. Inputs: the ResNets and WRNs take anything from
8×8 up (sklearn digits); VGG, MobileNetV2 and the ShuffleNets are meant for 28×28 / 32×32 (they run down to 8×8
through their global pool, but see little there); mobilenet_v1 is an ImageNet 224×224 network. timm's CNNs
(resnet18, mobilenetv3_small_100, efficientnet_b0, ...) take 28×28; its ViTs want the size they were made for.
"""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ttm.models.mobilenet import mobilenet_v1, mobilenetv2_cifar
from ttm.models.resnet import cifar_resnet, resnet50
from ttm.models.shufflenet import shufflenet_v1, shufflenet_v2
from ttm.models.vgg import cifar_vgg
from ttm.models.wrn import wide_resnet
from ttm.registry import (
    TIMM_PREFIX,
    TORCHVISION_PREFIX,
    closest_names,
    missing_library,
    timm_archs,
    torchvision_archs,
    unknown_arch_message,
)

# name → builder(num_classes, in_channels). The names are RepDistiller's/mdistiller's, which the paper's tables use;
# ttm.registry lists the same names without importing torch (a test keeps the two in step).
ARCHS: dict[str, Callable[..., nn.Module]] = {
    "resnet8": cifar_resnet(8),
    "resnet14": cifar_resnet(14),
    "resnet20": cifar_resnet(20),
    "resnet32": cifar_resnet(32),
    "resnet44": cifar_resnet(44),
    "resnet56": cifar_resnet(56),
    "resnet110": cifar_resnet(110),
    "resnet8x4": cifar_resnet(8, (32, 64, 128, 256)),
    "resnet32x4": cifar_resnet(32, (32, 64, 128, 256)),
    "wrn_16_1": wide_resnet(16, 1),
    "wrn_16_2": wide_resnet(16, 2),
    "wrn_40_1": wide_resnet(40, 1),
    "wrn_40_2": wide_resnet(40, 2),
    "vgg8": cifar_vgg("vgg8"),
    "vgg11": cifar_vgg("vgg11"),
    "vgg13": cifar_vgg("vgg13"),
    "vgg16": cifar_vgg("vgg16"),
    "vgg19": cifar_vgg("vgg19"),
    "MobileNetV2": mobilenetv2_cifar,
    "ShuffleV1": shufflenet_v1,
    "ShuffleV2": shufflenet_v2,
    "ResNet50": resnet50,
    "mobilenet_v1": mobilenet_v1,
}


def build_model(arch: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    """A freshly initialised model (never downloaded weights) whose forward returns logits [B, num_classes]."""
    if arch.startswith(TORCHVISION_PREFIX):
        return build_torchvision_model(arch.removeprefix(TORCHVISION_PREFIX), num_classes, in_channels)
    if arch.startswith(TIMM_PREFIX):
        return build_timm_model(arch.removeprefix(TIMM_PREFIX), num_classes, in_channels)
    if arch not in ARCHS:
        raise ValueError(unknown_arch_message(arch))
    return ARCHS[arch](num_classes, in_channels)


def count_params(model: nn.Module) -> int:
    """Parameters (not buffers such as BN running stats), each shared tensor once: the figure papers report."""
    return sum(p.numel() for p in model.parameters())


def build_torchvision_model(name: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    import torchvision

    if name not in torchvision_archs():
        hint = closest_names(name, sorted(torchvision_archs()), prefix=TORCHVISION_PREFIX) or \
            "torchvision's classifiers are listed by torchvision.models.list_models()"
        raise ValueError(f"unknown architecture {TORCHVISION_PREFIX + name!r}; {hint}")
    kwargs: dict = {}
    if name in ("googlenet", "inception_v3"):
        # Their auxiliary heads make training-mode forward return a tuple; the trainer wants logits only.
        # init_weights=True is what they do anyway without weights, minus the warning.
        kwargs = {"aux_logits": False, "init_weights": True}
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    if in_channels != 3:
        replace_first_conv(model, in_channels)
    return model


def build_timm_model(name: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    """timm's own classes and input channels (it adapts the stem itself); never its pretrained weights: nothing is
    downloaded at run time, a teacher's weights come as a file like any other's."""
    missing = missing_library(TIMM_PREFIX + name)
    if missing:
        raise ValueError(missing)
    import timm

    if name not in timm_archs():
        hint = closest_names(name, sorted(timm_archs()), prefix=TIMM_PREFIX) or \
            "timm's architectures are listed by timm.list_models()"
        raise ValueError(f"unknown architecture {TIMM_PREFIX + name!r}; {hint}")
    return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels)


def replace_first_conv(model: nn.Module, in_channels: int) -> None:
    """Swap the first Conv2d (resnet's `conv1`; in torchvision's classifiers the first registered conv is the stem)
    for one with the same settings that reads `in_channels` channels."""
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                setattr(parent, child_name, conv_with_in_channels(child, in_channels))
                return
    raise ValueError(f"{type(model).__name__} has no Conv2d whose input channels could be set to {in_channels}")


def conv_with_in_channels(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    if conv.groups != 1:
        raise ValueError(f"the first conv is grouped (groups={conv.groups}); cannot change its input channels")
    # torch types a conv's kernel_size/stride/padding/dilation as tuple[int, ...], its arguments as tuple[int, int]
    new = nn.Conv2d(in_channels, conv.out_channels,
                    kernel_size=conv.kernel_size, stride=conv.stride,  # type: ignore[arg-type]
                    padding=conv.padding, dilation=conv.dilation, groups=conv.groups,  # type: ignore[arg-type]
                    bias=conv.bias is not None, padding_mode=conv.padding_mode)
    # torchvision's CNNs draw their convs with kaiming fan_out; fan_out does not depend on the input channels, so
    # the new stem gets the distribution the old one had.
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    return new


__all__ = ["ARCHS", "build_model", "count_params"]
