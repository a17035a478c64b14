"""Datasets and batches for the trainer: named datasets load once into uint8 tensors, an image folder decodes per item.

Two ways to make batches, the same semantics:

* the fast path keeps the whole uint8 dataset on the device; a batch is an index_select with a slice of the epoch's
  permutation, then one gather that does the random crop (zero padding) and the horizontal flip together, then one
  fused normalize. Every random number of an epoch is drawn up front, so a step has static shapes and never waits on
  the host (no .item(), no per-sample Python) - what CUDA graphs need.
* the DataLoader path (image folders, or fast_path="off") decodes and augments per sample in workers with
  torchvision.transforms.v2 and normalizes on the device.

Randomness: `set_epoch(e)` seeds a CPU generator from (seed, e) that draws the epoch's permutation and then the
augmentation parameters (fast path) or one seed per sample (DataLoader path, each sample's v2 transform runs under
its own seed). So the batches of epoch e are a pure function of (seed, e): independent of the device, of the number
of workers, of persistent workers, and of whether the run was resumed. Both paths visit samples in the same order;
their crops differ because they draw them differently. Neither path touches the global torch RNG of the trainer.
"""
from __future__ import annotations

import gzip
import math
import os
import struct
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple, cast

import numpy as np
import torch
import torch.nn.functional as F

from ttm.spec import DatasetSpec

Stats = tuple[float, ...]

# Per-channel mean and std of the training images in [0, 1]. digits: computed once from its training split (the
# first 1500 of sklearn's 1797 images, scaled 0..16 -> 0..255), so that this table stays a table.
NORMALIZATION: dict[str, tuple[Stats, Stats]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "digits": ((0.3052,), (0.3749,)),
    "imagefolder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # ImageNet's
    "synthetic": ((0.5, 0.5, 0.5), (0.2887, 0.2887, 0.2887)),  # uniform uint8 noise
}

# The standard training augmentation: dataset -> (zero padding of the random crop, horizontal flip). Digit datasets
# are not mirror-symmetric, so no flip. digits (8x8) gets none: the `augment` flag is ignored for it. An image
# folder's crop comes from its resize margin (short side resized to 1.14x image_size), not from padding.
AUGMENT: dict[str, tuple[int, bool]] = {
    "cifar10": (4, True),
    "cifar100": (4, True),
    "svhn": (4, False),
    "mnist": (2, False),
    "fashion_mnist": (2, True),
    "digits": (0, False),
    "imagefolder": (0, True),
    "synthetic": (4, True),  # costs what CIFAR's augmentation costs
}

# Where Debian's dataset-fashion-mnist package puts the IDX files; the default when no data root holds them.
DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
RESIZE_MARGIN = 1.14  # image folders: resize the short side to int(1.14 * image_size), then crop image_size
DIGITS_TRAIN = 1500  # sklearn digits: the first 1500 images train, the other 297 test
IN_MEMORY = ("cifar10", "cifar100", "svhn", "mnist", "fashion_mnist", "digits", "synthetic")
SYNTHETIC_SIZES = (50_000, 10_000)  # CIFAR's split, unless subset says otherwise


@dataclass
class DataInfo:
    name: str
    num_classes: int
    channels: int
    image_size: int  # H == W of the batches
    mean: Stats
    std: Stats
    train_size: int
    test_size: int
    fast: bool  # True when batches come from device-resident uint8 tensors
    class_names: list[str] | None
    validation_size: int = 0  # held out of the training set (dataset.validation); 0: no validation split


class Loaders(NamedTuple):
    train: TrainBatches
    test: TestBatches
    info: DataInfo
    validation: TestBatches | None  # dataset.validation's held-out samples, as test batches (no augmentation)


def validation_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, held out): indices of a stratified split, each ascending. Per class, round(fraction × its count)
    samples are held out (at least one, and never all, of a class with two or more), chosen by a permutation drawn
    from `seed`: a function of the labels, the fraction and the seed alone."""
    generator = torch.Generator().manual_seed(seed)
    held = []
    for c in torch.unique(labels):  # ascending: the draws come in one order
        members = (labels == c).nonzero().flatten()
        k = min(max(1, round(fraction * len(members))), len(members) - 1) if len(members) > 1 else 0
        held.append(members[torch.randperm(len(members), generator=generator)[:k]])
    out = torch.sort(torch.cat(held)).values if held else torch.empty(0, dtype=torch.int64)
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[out] = False
    return keep.nonzero().flatten(), out


# ---------------------------------------------------------------------------------------------- loading
def load_arrays(spec: DatasetSpec, data_root: str | None = None):
    """(train_x, train_y, test_x, test_y, info): uint8 NCHW images and int64 labels on the CPU, subset applied.

    For the in-memory datasets; an image folder is decoded whole (images at image_size, centre-cropped, as the test
    transform does; for training crops make_loaders keeps a margin instead). info.fast is False here: whether batches
    come from these tensors on the device is make_loaders' decision.
    """
    if spec.name == "imagefolder":
        train_ds, test_ds, classes = _imagefolder_datasets(spec, data_root)
        train_x, train_y = _decode_all(train_ds, _test_transform(spec.image_size), num_workers=0)
        test_x, test_y = _decode_all(test_ds, _test_transform(spec.image_size), num_workers=0)
        return train_x, train_y, test_x, test_y, _info(spec, train_x, test_x, len(classes), classes)
    train_x, train_y, test_x, test_y, classes = _load_named(spec, data_root)
    train_x, train_y, test_x, test_y = _subset(spec, train_x, train_y, test_x, test_y)
    assert spec.classes is not None  # only an image folder has no class count before it is read
    return train_x, train_y, test_x, test_y, _info(spec, train_x, test_x, spec.classes, classes)


def _info(spec: DatasetSpec, train_x: torch.Tensor, test_x: torch.Tensor, num_classes: int,
          class_names: list[str] | None, *, image_size: int | None = None) -> DataInfo:
    mean, std = NORMALIZATION[spec.name]
    return DataInfo(name=spec.name, num_classes=num_classes, channels=train_x.shape[1],
                    image_size=image_size or train_x.shape[-1], mean=mean, std=std,
                    train_size=len(train_x), test_size=len(test_x), fast=False, class_names=class_names)


def _subset(spec: DatasetSpec, *arrays):
    """Keep the first N train / M test samples: deterministic, and done before anything else sees the data."""
    train_x, train_y, test_x, test_y = arrays
    n, m = spec.subset_sizes
    return train_x[:n], train_y[:n], test_x[:m], test_y[:m]


def _load_named(spec: DatasetSpec, data_root: str | None):
    root = spec.root or data_root
    if spec.name == "digits":
        return _load_digits()
    if spec.name == "synthetic":
        return _load_synthetic(spec)
    if spec.name in ("mnist", "fashion_mnist"):
        return _load_mnist_like(spec, root)
    return _load_torchvision(spec, root)


def _load_digits():
    images, target = digits_arrays()
    images = np.round(images * (255.0 / 16.0)).astype(np.uint8)  # values 0..16 -> 0..255
    x = torch.from_numpy(images).unsqueeze(1)
    y = torch.from_numpy(target.astype(np.int64))
    names = [str(d) for d in range(10)]
    return x[:DIGITS_TRAIN], y[:DIGITS_TRAIN], x[DIGITS_TRAIN:], y[DIGITS_TRAIN:], names


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits, (1797, 8, 8) images valued 0..16 and their labels: read from the CSV file scikit-learn
    ships (its `load_digits` reads the same file) without importing scikit-learn, whose import (scipy, pandas) takes
    2-3 s of every trainer process's start here; `load_digits` itself where the file is not found."""
    import importlib.util

    found = importlib.util.find_spec("sklearn")  # locates the package without running it
    where = found.submodule_search_locations if found is not None else None
    path = Path(where[0]) / "datasets" / "data" / "digits.csv.gz" if where else None
    if path is None or not path.is_file():
        from sklearn.datasets import load_digits

        digits = load_digits()
        return digits.images, digits.target
    data = np.loadtxt(path, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)


def _load_synthetic(spec: DatasetSpec):
    """Random uint8 images and labels (seeded): for speed benchmarks and smoke runs, never for accuracy claims."""
    n, m = spec.subset_sizes
    n, m = n or SYNTHETIC_SIZES[0], m or SYNTHETIC_SIZES[1]
    g = torch.Generator().manual_seed(1234)
    size, classes = spec.image_size, spec.classes
    assert classes is not None  # synthetic: num_classes or 100
    x = torch.randint(0, 256, (n + m, 3, size, size), generator=g, dtype=torch.uint8)
    y = torch.randint(0, classes, (n + m,), generator=g)
    return x[:n], y[:n], x[n:], y[n:], None


def _missing(name: str, searched: str) -> FileNotFoundError:
    return FileNotFoundError(f"{name} not found (or incomplete): searched {searched} "
                             "(torchvision's on-disk layout); `download: true` in the dataset spec would fetch it")


def _load_torchvision(spec: DatasetSpec, root: str | None):
    """CIFAR-10/100 and SVHN through torchvision's classes; the images become NCHW uint8 tensors."""
    import torchvision.datasets as tvd

    if root is None:
        raise FileNotFoundError(f"{spec.name} needs a data root: set dataset.root in the spec or TTM_DATA_ROOT")
    cls = {"cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100, "svhn": tvd.SVHN}[spec.name]
    splits = []
    for train in (True, False):
        kwargs = {"split": "train" if train else "test"} if spec.name == "svhn" else {"train": train}
        try:
            splits.append(cls(root, download=spec.download, **kwargs))
        except RuntimeError as e:  # torchvision: "Dataset not found or corrupted"
            raise _missing(spec.name, os.path.abspath(root)) from e
    arrays = []
    for ds in splits:
        if spec.name == "svhn":  # already NCHW, labels in .labels
            x, y = torch.from_numpy(ds.data), torch.from_numpy(np.asarray(ds.labels, dtype=np.int64))
        else:  # CIFAR: NHWC
            x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
            y = torch.tensor(ds.targets, dtype=torch.int64)
        arrays += [x, y]
    names = list(splits[0].classes) if spec.name != "svhn" else [str(d) for d in range(10)]
    return (*arrays, names)


_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _load_mnist_like(spec: DatasetSpec, root: str | None):
    """MNIST / Fashion-MNIST from IDX files: torchvision's layout under the root, else Debian's package."""
    import torchvision.datasets as tvd

    cls = tvd.MNIST if spec.name == "mnist" else tvd.FashionMNIST
    candidates = [os.path.join(root, cls.__name__, "raw")] if root else []
    if spec.name == "fashion_mnist":
        candidates.append(DEBIAN_FASHION_MNIST)
    for folder in candidates:
        files = [_find_idx(folder, stem) for stem in _IDX_FILES]
        if all(files):
            train_x, train_y, test_x, test_y = (torch.from_numpy(read_idx(f)) for f in cast("list[str]", files))
            return (train_x.unsqueeze(1), train_y.long(), test_x.unsqueeze(1), test_y.long(), list(cls.classes))
    if spec.download and root:
        train, test = cls(root, train=True, download=True), cls(root, train=False, download=True)
        return (train.data.unsqueeze(1), train.targets.long(), test.data.unsqueeze(1), test.targets.long(),
                list(cls.classes))
    raise _missing(spec.name, " and ".join(candidates) if candidates else "nothing (no data root was given)")


def _find_idx(folder: str, stem: str) -> str | None:
    for name in (stem, stem + ".gz"):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    return None


def read_idx(path: str) -> np.ndarray:
    """An unsigned-byte IDX file (gzipped or not): 2 zero bytes, type 0x08, ndim, ndim big-endian uint32 sizes, data."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != math.prod(dims):
        raise ValueError(f"{path}: header says {dims}, file holds {data.size} bytes of data")
    return data.reshape(dims).copy()  # writable, so torch.from_numpy stays quiet


# ---------------------------------------------------------------------------------------------- image folders
def _imagefolder_datasets(spec: DatasetSpec, data_root: str | None):
    """ImageFolder datasets of train/ and val/ (subset applied), and the class names they share.

    A relative path is taken under the data root when one is given.
    """
    from torch.utils.data import Subset
    from torchvision.datasets import ImageFolder

    assert spec.path is not None  # DatasetSpec refuses an imagefolder without a path
    base = Path(spec.path)
    root = spec.root or data_root
    if not base.is_absolute() and root:
        base = Path(root) / base
    for split in ("train", "val"):
        if not (base / split).is_dir():
            raise FileNotFoundError(f"imagefolder: {base / split} is not a directory (need train/ and val/ in {base})")
    train, val = ImageFolder(str(base / "train")), ImageFolder(str(base / "val"))
    if train.classes != val.classes:
        raise ValueError(f"imagefolder: train/ has classes {train.classes} but val/ has {val.classes}")
    if spec.num_classes is not None and spec.num_classes != len(train.classes):
        raise ValueError(f"imagefolder: spec says num_classes={spec.num_classes} but {base / 'train'} "
                         f"holds {len(train.classes)} classes")
    n, m = spec.subset_sizes
    # ImageFolder lists samples by class, then file name: "first N" is deterministic, not class-balanced
    train_ds = Subset(train, range(min(n, len(train)))) if n else train
    val_ds = Subset(val, range(min(m, len(val)))) if m else val
    return train_ds, val_ds, list(train.classes)


def _margin(size: int) -> int:
    return int(size * RESIZE_MARGIN)


def _train_transform(size: int, augment: bool):
    from torchvision.transforms import v2

    if not augment:
        return _test_transform(size)
    return v2.Compose([v2.Resize(_margin(size)), v2.RandomCrop(size), v2.RandomHorizontalFlip(), v2.PILToTensor()])


def _test_transform(size: int, crop: int | None = None):
    from torchvision.transforms import v2

    return v2.Compose([v2.Resize(_margin(size)), v2.CenterCrop(crop or size), v2.PILToTensor()])


def _decode_all(dataset, transform, num_workers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of `dataset` through a deterministic `transform`, stacked into one uint8 tensor."""
    from torch.utils.data import DataLoader

    # any map-style object (__getitem__, __len__) is a dataset to DataLoader; its stub asks for a Dataset
    loader: DataLoader[Any] = DataLoader(_SeededItems(dataset, transform),  # type: ignore[arg-type]
                                         batch_size=256, num_workers=num_workers,
                                         generator=torch.Generator().manual_seed(0))
    xs, ys, _ = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


# ---------------------------------------------------------------------------------------------- randomness
def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator whose stream is a pure function of (seed, epoch), well mixed even for neighbouring values."""
    words = np.random.SeedSequence([seed & (2**64 - 1), epoch & (2**64 - 1)]).generate_state(2, dtype=np.uint32)
    g = torch.Generator()
    g.manual_seed((int(words[0]) << 31) ^ int(words[1]))
    return g


# ---------------------------------------------------------------------------------------------- batches
class TrainBatches(ABC):
    """(x float32 NCHW normalized, y int64 labels, i int64 sample indices into the training set), all on the device.
    Call set_epoch(e) before iterating epoch e. `labels` holds every training sample's label, by index."""

    labels: torch.Tensor

    @abstractmethod
    def set_epoch(self, epoch: int) -> None: ...

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]: ...


class TestBatches(ABC):
    """The whole test split in order, unaugmented, each sample once; the last batch may be smaller."""

    __test__ = False  # not a pytest class

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


class _Normalizer:
    """uint8 -> float32 (x/255 - mean)/std, as one multiply-add on the device."""

    def __init__(self, mean: Stats, std: Stats, device: torch.device):
        m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.scale = (1.0 / (255.0 * s)).to(device)
        self.shift = (-m / s).to(device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.shift, x.float(), self.scale)


def _num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else math.ceil(n / batch_size)


class _FastTrainBatches(TrainBatches):
    """Device-resident uint8 images; crop (from `pad` zero padding or a stored margin) and flip by one gather."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, *, out_size: int, pad: int, flip: bool, augment: bool,
                 batch_size: int, drop_last: bool, seed: int, normalize: _Normalizer):
        self.x, self.y, self.out, self.pad, self.flip, self.augment = x, y, out_size, pad, flip, augment
        self.labels = y
        self.batch_size, self.drop_last, self.seed, self.normalize = batch_size, drop_last, seed, normalize
        self.span = x.shape[-1] + 2 * pad  # side of the padded stored image the crop is taken from
        self.cropping = augment and (self.span > out_size or flip) or x.shape[-1] != out_size
        self.epoch: int | None = None

    def __len__(self) -> int:
        return _num_batches(len(self.x), self.batch_size, self.drop_last)

    def set_epoch(self, epoch: int) -> None:
        n, device = len(self.x), self.x.device
        g = _epoch_generator(self.seed, epoch)
        self.perm = torch.randperm(n, generator=g).to(device)
        if self.augment:
            self.offsets = torch.randint(0, self.span - self.out + 1, (n, 2), generator=g).to(device)
            self.flips = (torch.randint(0, 2, (n,), generator=g).bool() & self.flip).to(device)
        else:  # centred crop (image folders keep a margin), no flip
            self.offsets = torch.full((n, 2), (self.span - self.out) // 2, dtype=torch.int64, device=device)
            self.flips = torch.zeros(n, dtype=torch.bool, device=device)
        self.epoch = epoch

    def _crop_flip(self, x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
        # Output pixel (r, c) of sample b reads padded pixel (dy_b + r, dx_b + c), or column dx_b + out-1-c when
        # flipped: one flat gather per batch, no per-sample Python, no data-dependent shapes.
        if self.pad:
            x = F.pad(x, (self.pad,) * 4)
        b, c, side = x.shape[0], x.shape[1], self.span
        ar = torch.arange(self.out, device=x.device)
        rows = offsets[:, :1] + ar  # [B, out]
        cols = offsets[:, 1:] + torch.where(flips[:, None], self.out - 1 - ar, ar)  # [B, out]
        flat = (rows[:, :, None] * side + cols[:, None, :]).view(b, 1, -1).expand(b, c, -1)
        return x.reshape(b, c, side * side).gather(2, flat).view(b, c, self.out, self.out)

    def __iter__(self):
        if self.epoch is None:
            raise RuntimeError("call set_epoch(epoch) before iterating the training batches")
        bs = self.batch_size
        for i in range(len(self)):
            idx = self.perm[i * bs:(i + 1) * bs]
            x = self.x.index_select(0, idx)
            if self.cropping:
                x = self._crop_flip(x, self.offsets[i * bs:(i + 1) * bs], self.flips[i * bs:(i + 1) * bs])
            yield self.normalize(x), self.y.index_select(0, idx), idx


class _FastTestBatches(TestBatches):
    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, normalize: _Normalizer):
        self.x, self.y, self.batch_size, self.normalize = x, y, batch_size, normalize

    def __len__(self) -> int:
        return _num_batches(len(self.x), self.batch_size, drop_last=False)

    def __iter__(self):
        for i in range(0, len(self.x), self.batch_size):
            yield self.normalize(self.x[i:i + self.batch_size]), self.y[i:i + self.batch_size]


class _TensorItems:
    """A map-style dataset over in-memory uint8 images: (CHW uint8 tensor, int label)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], int(self.y[i])


class _SeededItems:
    """Applies a v2 transform per item. A key (index, seed) runs the transform under that seed, so an item's
    augmentation depends on nothing else (worker, worker count, earlier items); a plain index runs it as is."""

    def __init__(self, base, transform):
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, None)
        img, label = self.base[index]
        if self.transform is None:
            return img, label, index
        if seed is None:
            return self.transform(img), label, index
        # v2 draws from the global CPU generator; seeding only that one is cheaper than torch.manual_seed
        if torch.utils.data.get_worker_info() is not None:  # a worker's RNG is its own
            torch.default_generator.manual_seed(seed)
            return self.transform(img), label, index
        with torch.random.fork_rng(devices=[]):  # in the trainer's process: leave its RNG as it was
            torch.default_generator.manual_seed(seed)
            return self.transform(img), label, index


class _EpochSampler(torch.utils.data.Sampler):
    """Yields (index, sample seed) in the epoch's order; both drawn from the (seed, epoch) generator."""

    epoch: int | None

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, None

    def set_epoch(self, epoch: int) -> None:
        g = _epoch_generator(self.seed, epoch)
        self.perm = torch.randperm(self.n, generator=g).tolist()
        self.seeds = torch.randint(0, 2**62, (self.n,), generator=g).tolist()
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        if self.epoch is None:
            raise RuntimeError("call set_epoch(epoch) before iterating the training batches")
        return iter(zip(self.perm, self.seeds))


def _loader(dataset, *, batch_size: int, sampler, drop_last: bool, num_workers: int, device: torch.device):
    from torch.utils.data import DataLoader

    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                      num_workers=num_workers, persistent_workers=num_workers > 0,
                      pin_memory=device.type == "cuda",
                      generator=torch.Generator().manual_seed(0))  # worker base seeds: not from the global RNG


class _LoaderTrainBatches(TrainBatches):
    def __init__(self, dataset, labels: torch.Tensor, *, batch_size: int, drop_last: bool, seed: int,
                 num_workers: int, device: torch.device, normalize: _Normalizer):
        self.labels = labels.to(device)
        self.sampler = _EpochSampler(len(dataset), seed)
        self.loader = _loader(dataset, batch_size=batch_size, sampler=self.sampler, drop_last=drop_last,
                              num_workers=num_workers, device=device)
        self.device, self.normalize = device, normalize

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        if self.sampler.epoch is None:
            raise RuntimeError("call set_epoch(epoch) before iterating the training batches")
        for x, y, i in self.loader:
            yield (self.normalize(x.to(self.device, non_blocking=True)), y.to(self.device, non_blocking=True),
                   i.to(self.device, non_blocking=True))


class _LoaderTestBatches(TestBatches):
    def __init__(self, dataset, *, batch_size: int, num_workers: int, device: torch.device,
                 normalize: _Normalizer):
        self.loader = _loader(dataset, batch_size=batch_size, sampler=None, drop_last=False,
                              num_workers=num_workers, device=device)
        self.device, self.normalize = device, normalize

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for x, y, _ in self.loader:
            yield self.normalize(x.to(self.device, non_blocking=True)), y.to(self.device, non_blocking=True)


# ---------------------------------------------------------------------------------------------- entry point
def _memory_budget(device: torch.device) -> int:
    """Bytes free where the uint8 tensors would live: free device memory on CUDA, MemAvailable on the CPU."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 2**62  # unknown: let the allocation itself fail


def _use_fast_path(spec: DatasetSpec, fast_path: str, nbytes: int, device: torch.device) -> bool:
    """auto: named datasets when they take under half the free device memory (always on the CPU, where they are
    already loaded), never image folders; on: always, unless the data cannot fit at all; off: never."""
    if fast_path not in ("auto", "on", "off"):
        raise ValueError(f"fast_path must be auto, on or off, not {fast_path!r}")
    if fast_path == "off":
        return False
    resident = device.type == "cpu" and spec.name != "imagefolder"  # nothing more to allocate
    if fast_path == "on":
        budget = 2**62 if resident else _memory_budget(device)
        if nbytes > budget:
            raise RuntimeError(f"fast_path on: {spec.name} needs {nbytes / 2**20:.0f} MiB as uint8 but only "
                               f"{budget / 2**20:.0f} MiB are free on {device}; use fast_path auto or off")
        return True
    if spec.name == "imagefolder":
        return False
    return resident or nbytes < 0.5 * _memory_budget(device)


def make_loaders(spec: DatasetSpec, *, batch_size: int, device: torch.device, seed: int,
                 fast_path: str = "auto", drop_last: bool = True, num_workers: int = 2,
                 data_root: str | None = None, test_batch_size: int | None = None) -> Loaders:
    """Training, test (and validation) batches for `spec`, on `device`, and what the trainer needs to know about
    the data."""
    device = torch.device(device)
    test_bs = test_batch_size or batch_size
    if spec.name == "imagefolder":
        return _imagefolder_loaders(spec, batch_size=batch_size, test_bs=test_bs, device=device, seed=seed,
                                    fast_path=fast_path, drop_last=drop_last, num_workers=num_workers,
                                    data_root=data_root)
    train_x, train_y, test_x, test_y, info = load_arrays(spec, data_root)
    val_x = val_y = None
    if spec.validation is not None:
        keep, held = validation_split(train_y, spec.validation.fraction, spec.validation.seed)
        val_x, val_y, train_x, train_y = train_x[held], train_y[held], train_x[keep], train_y[keep]
        info = replace(info, train_size=len(train_x), validation_size=len(val_x))
    _check_batch(spec, len(train_x), batch_size, drop_last)
    fast = _use_fast_path(spec, fast_path, train_x.nbytes + test_x.nbytes, device)
    normalize = _Normalizer(info.mean, info.std, device)
    pad, flip = AUGMENT[spec.name]
    augment = spec.augment and spec.name != "digits"
    train: TrainBatches
    test: TestBatches
    if fast:
        train = _FastTrainBatches(train_x.to(device), train_y.to(device), out_size=info.image_size, pad=pad,
                                  flip=flip, augment=augment, batch_size=batch_size, drop_last=drop_last,
                                  seed=seed, normalize=normalize)
        test = _FastTestBatches(test_x.to(device), test_y.to(device), test_bs, normalize)
    else:
        transform = _named_train_transform(info.image_size, pad, flip) if augment else None
        train = _LoaderTrainBatches(_SeededItems(_TensorItems(train_x, train_y), transform), train_y,
                                    batch_size=batch_size,
                                    drop_last=drop_last, seed=seed, num_workers=num_workers, device=device,
                                    normalize=normalize)
        test = _LoaderTestBatches(_SeededItems(_TensorItems(test_x, test_y), None), batch_size=test_bs,
                                  num_workers=num_workers, device=device, normalize=normalize)
    val: TestBatches | None = None
    if val_x is not None and val_y is not None:
        val = (_FastTestBatches(val_x.to(device), val_y.to(device), test_bs, normalize) if fast else
               _LoaderTestBatches(_SeededItems(_TensorItems(val_x, val_y), None), batch_size=test_bs,
                                  num_workers=num_workers, device=device, normalize=normalize))
    return Loaders(train, test, replace(info, fast=fast), val)


def _named_train_transform(size: int, pad: int, flip: bool):
    from torchvision.transforms import v2

    steps = [v2.RandomCrop(size, padding=pad)] if pad else []
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps) if steps else None


def _check_batch(spec: DatasetSpec, n: int, batch_size: int, drop_last: bool) -> None:
    if drop_last and n < batch_size:
        raise ValueError(f"{spec.name}: the training set has {n} samples, fewer than batch_size={batch_size}; "
                         "with drop_last there would be no batch at all")


def _imagefolder_loaders(spec: DatasetSpec, *, batch_size: int, test_bs: int, device: torch.device, seed: int,
                         fast_path: str, drop_last: bool, num_workers: int, data_root: str | None):
    from torch.utils.data import Subset

    train_ds, test_ds, classes = _imagefolder_datasets(spec, data_root)
    # a subset is the first N samples (_imagefolder_datasets)
    targets = (train_ds.dataset if hasattr(train_ds, "dataset") else train_ds).targets[:len(train_ds)]
    labels = torch.tensor(targets, dtype=torch.int64)
    val_ds = None
    if spec.validation is not None:
        keep, held = validation_split(labels, spec.validation.fraction, spec.validation.seed)
        train_ds, val_ds, labels = Subset(train_ds, keep.tolist()), Subset(train_ds, held.tolist()), labels[keep]
    _check_batch(spec, len(train_ds), batch_size, drop_last)
    size, margin = spec.image_size, _margin(spec.image_size)
    # train images are kept with the resize margin (square, centre-cropped) so the crop can move; test at size
    nbytes = 3 * (len(train_ds) * margin**2 + len(test_ds) * size**2)
    fast = _use_fast_path(spec, fast_path, nbytes, device)
    mean, std = NORMALIZATION["imagefolder"]
    normalize = _Normalizer(mean, std, device)
    info = DataInfo(name="imagefolder", num_classes=len(classes), channels=3, image_size=size, mean=mean,
                    std=std, train_size=len(train_ds), test_size=len(test_ds), fast=fast, class_names=classes,
                    validation_size=len(val_ds) if val_ds is not None else 0)
    train: TrainBatches
    test: TestBatches
    val: TestBatches | None = None
    if fast:
        train_x, train_y = _decode_all(train_ds, _test_transform(size, crop=margin), num_workers)
        test_x, test_y = _decode_all(test_ds, _test_transform(size), num_workers)
        _, flip = AUGMENT["imagefolder"]
        train = _FastTrainBatches(train_x.to(device), train_y.to(device), out_size=size, pad=0, flip=flip,
                                  augment=spec.augment, batch_size=batch_size, drop_last=drop_last, seed=seed,
                                  normalize=normalize)
        test = _FastTestBatches(test_x.to(device), test_y.to(device), test_bs, normalize)
        if val_ds is not None:
            val_x, val_y = _decode_all(val_ds, _test_transform(size), num_workers)
            val = _FastTestBatches(val_x.to(device), val_y.to(device), test_bs, normalize)
        return Loaders(train, test, info, val)
    train = _LoaderTrainBatches(_SeededItems(train_ds, _train_transform(size, spec.augment)), labels,
                                batch_size=batch_size,
                                drop_last=drop_last, seed=seed, num_workers=num_workers, device=device,
                                normalize=normalize)
    test = _LoaderTestBatches(_SeededItems(test_ds, _test_transform(size)), batch_size=test_bs,
                              num_workers=num_workers, device=device, normalize=normalize)
    if val_ds is not None:
        val = _LoaderTestBatches(_SeededItems(val_ds, _test_transform(size)), batch_size=test_bs,
                                 num_workers=num_workers, device=device, normalize=normalize)
    return Loaders(train, test, info, val)
