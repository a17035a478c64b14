"""Names the spec may use, kept free of torch so that validating a spec stays cheap (the API does it per request)."""
from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal, TypeVar, get_args

if TYPE_CHECKING:
    from pydantic import BaseModel

_Spec = TypeVar("_Spec", bound="BaseModel")

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
# the named data sets' own image size (H = W); an image folder is resized to dataset.image_size, synthetic data made
DATASET_IMAGE_SIZES: dict[str, int] = {"cifar10": 32, "cifar100": 32, "mnist": 28, "fashion_mnist": 28, "svhn": 32,
                                       "digits": 8}


# Architectures of other libraries, named <library>/<its name>: torchvision's come with the trainer, timm's with the
# `timm` extra. Their names have the shape of those libraries' own (lowercase, digits, _), checked without importing
# them; whether the library has the name is checked where a model is built (ttm.models.build_model, and the API's
# inspection subprocess, ttm.inspection).
TORCHVISION_PREFIX = "torchvision/"
TIMM_PREFIX = "timm/"


@lru_cache(maxsize=1)
def torchvision_archs() -> frozenset[str]:
    import torchvision

    return frozenset(torchvision.models.list_models(module=torchvision.models))


@lru_cache(maxsize=1)
def timm_archs() -> frozenset[str]:
    import timm

    return frozenset(timm.list_models())  # architectures, without the .<tag> of their pretrained weights


def missing_library(arch: str) -> str | None:
    """Why `arch` cannot be built here because an optional library is not installed, or None. Asks importlib, not
    import, so that the client and the API can say it without loading torch."""
    if arch.startswith(TIMM_PREFIX) and importlib.util.find_spec("timm") is None:
        return f"{arch} is a timm model and timm is not installed: pip install 'ttm[timm]'"
    return None


def _library_name(name: str) -> bool:
    return 0 < len(name) <= 64 and name.isascii() and all(c.islower() or c.isdigit() or c == "_" for c in name)


def is_known_arch(name: str) -> bool:
    """Our architectures by name; torchvision's and timm's by the shape of their names only (see above), so that
    validating a spec never imports torch."""
    if name in CIFAR_ARCHS or name in IMAGENET_ARCHS:
        return True
    return any(name.startswith(prefix) and _library_name(name.removeprefix(prefix))
               for prefix in (TORCHVISION_PREFIX, TIMM_PREFIX))


def known_archs_hint() -> str:
    return ("known: " + ", ".join(CIFAR_ARCHS + IMAGENET_ARCHS) + ", or torchvision/<name> (e.g. torchvision/resnet18)"
            ", or timm/<name> (e.g. timm/resnet18; pip install 'ttm[timm]')")


def closest_names(name: str, names: list[str] | tuple[str, ...], prefix: str = "") -> str | None:
    """"did you mean a or b?" for the names nearest `name` (each written with `prefix`), or None."""
    import difflib

    close = difflib.get_close_matches(name, list(names), n=3, cutoff=0.6) if len(name) <= 200 else []
    return f"did you mean {' or '.join(prefix + c for c in close)}?" if close else None


def unknown_arch_message(name: str) -> str:
    """What to say of an architecture name this project does not have: the nearest of its own names, else them all."""
    base, dot, tag = name.removeprefix(TIMM_PREFIX).partition(".")
    if name.startswith(TIMM_PREFIX) and dot and _library_name(base):
        # timm names pretrained weights <arch>.<tag>; a user copying one from timm's docs means the architecture
        return (f"unknown architecture {name!r}; .{tag} names pretrained weights, which are never downloaded here: "
                f"name the architecture, {TIMM_PREFIX}{base}, and give the weights as teacher.weights")
    near = closest_names(name, CIFAR_ARCHS + IMAGENET_ARCHS)
    if near and _library_name(name):
        near += f" (torchvision's is torchvision/{name})"  # resnet18: the user may mean torchvision's
    return f"unknown architecture {name!r}; " + (near or known_archs_hint())


# ---------------------------------------------------------------------------------------------- loss kinds
@dataclass
class LossKind:
    """One loss method: its spec class (ttm.spec), whether it distills from a teacher, and its function.

    The spec class registers itself with `@loss_spec(...)` where it is defined; the function attaches itself with
    `ttm.losses.loss_for(SpecClass)`. Two files because validating a spec must not import torch (the API does it per
    request), but every list of kinds (the spec's union, its tags, "needs a teacher", the dispatch table, the error
    hints) derives from this one table.
    """

    kind: str
    spec: type
    needs_teacher: bool
    fn: Callable[..., Any] | None = None


LOSS_KINDS: dict[str, LossKind] = {}


def kind_of(cls: type[BaseModel]) -> str:
    """The tag of a tagged spec class: the single value of its `kind: Literal[...]` field."""
    (kind,) = get_args(cls.model_fields["kind"].annotation)
    return kind


def loss_spec(*, needs_teacher: bool) -> Callable[[type[_Spec]], type[_Spec]]:
    """Class decorator: register a loss's spec class under its `kind` (registration order is the union's order)."""

    def register(cls: type[_Spec]) -> type[_Spec]:
        kind = kind_of(cls)
        if kind in LOSS_KINDS:
            raise ValueError(f"loss kind {kind!r} is registered twice")
        LOSS_KINDS[kind] = LossKind(kind, cls, needs_teacher)
        return cls

    return register


def teacher_kinds() -> list[str]:
    """The loss kinds that distill from a teacher, in registration order."""
    return [k for k, lk in LOSS_KINDS.items() if lk.needs_teacher]


# ---------------------------------------------------------------------------------------------- checkpoint files
# The suffix of each student export format, as the manifest's "files" keys, the download route and the client name
# them: `<which><suffix>`, e.g. best.safetensors. Here rather than in ttm.checkpoint so that the API and the client
# can read it without importing torch.
CheckpointFormat = Literal["pt", "safetensors", "torchscript", "onnx", "pt2"]
CHECKPOINT_SUFFIXES: dict[str, str] = {"pt": ".pt", "safetensors": ".safetensors", "torchscript": ".torchscript.pt",
                                       "onnx": ".onnx", "pt2": ".pt2"}
assert set(CHECKPOINT_SUFFIXES) == set(get_args(CheckpointFormat))
# The formats a spec may ask for in output.formats, made of the best student at the end of a job and checked in their
# own runtime before they are offered (ttm.export); pt and safetensors are written every epoch.
ExportFormat = Literal["onnx", "pt2", "torchscript"]
EXPORT_FORMATS: tuple[str, ...] = get_args(ExportFormat)
MANIFEST_SUFFIX = ".json"


def checkpoint_name(which: str, fmt: str) -> str:
    """`best` + `safetensors` → `best.safetensors`."""
    return which + CHECKPOINT_SUFFIXES[fmt]
