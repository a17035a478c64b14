"""Names the spec may use, kept free of torch so that validating a spec stays cheap (the API does it per request)."""
from __future__ import annotations

from functools import lru_cache

# The CIFAR architectures of the paper's tables, under the names RepDistiller/mdistiller use.
CIFAR_ARCHS: tuple[str, ...] = (
    "resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
    "resnet8x4", "resnet32x4",
    "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2",
    "vgg8", "vgg11", "vgg13", "vgg16", "vgg19",
    "MobileNetV2", "ShuffleV1", "ShuffleV2", "ResNet50",
)
# ImageNet architectures that torchvision lacks (the paper's ResNet-50 → MobileNet pair uses MobileNet v1).
IMAGENET_ARCHS: tuple[str, ...] = ("mobilenet_v1",)

DATASET_CLASSES: dict[str, int | None] = {
    "cifar10": 10, "cifar100": 100, "mnist": 10, "fashion_mnist": 10, "svhn": 10, "digits": 10,
    "imagefolder": None, "synthetic": None,  # random images for speed benchmarks
}
DATASET_CHANNELS: dict[str, int] = {"mnist": 1, "fashion_mnist": 1, "digits": 1}


@lru_cache(maxsize=1)
def torchvision_archs() -> frozenset[str]:
    import torchvision

    return frozenset(torchvision.models.list_models(module=torchvision.models))


def is_known_arch(name: str) -> bool:
    if name in CIFAR_ARCHS or name in IMAGENET_ARCHS:
        return True
    if name.startswith("torchvision/"):
        return name.removeprefix("torchvision/") in torchvision_archs()
    return False


def known_archs_hint() -> str:
    return "known: " + ", ".join(CIFAR_ARCHS + IMAGENET_ARCHS) + ", or torchvision/<name> (e.g. torchvision/resnet18)"
