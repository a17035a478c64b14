"""ttm.data: loading, subsets, the fast and the DataLoader paths, (seed, epoch) determinism, augmentation."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ttm import data
from ttm.spec import DatasetSpec

CPU = torch.device("cpu")


def fashion(**kw) -> DatasetSpec:
    return DatasetSpec(name="fashion_mnist", **kw)


def small(train=1000, test=300, **kw) -> DatasetSpec:
    return fashion(subset={"train": train, "test": test}, **kw)


def to_uint8(x: torch.Tensor, info: data.DataInfo) -> torch.Tensor:
    """Undo the normalization: back to the stored uint8 pixels."""
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    return ((x * std + mean) * 255).round().clamp(0, 255).to(torch.uint8)


def collect(batches) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*((batch[0], batch[1]) for batch in batches))  # training batches also carry indices
    return torch.cat(xs), torch.cat(ys)


def multiset(x: torch.Tensor, y: torch.Tensor) -> Counter:
    return Counter((img.numpy().tobytes(), int(label)) for img, label in zip(x, y))


@pytest.fixture(scope="module")
def fashion_arrays():
    if not os.path.isdir(data.DEBIAN_FASHION_MNIST):
        pytest.fail(f"{data.DEBIAN_FASHION_MNIST} is missing: apt-get install -y dataset-fashion-mnist")
    start = time.perf_counter()
    arrays = data.load_arrays(fashion())
    return arrays, time.perf_counter() - start


# ---------------------------------------------------------------------------------------------- loading
def test_fashion_mnist_loads_from_debian_package(fashion_arrays):
    (train_x, train_y, test_x, test_y, info), _ = fashion_arrays  # its speed: benchmarks/, not here
    assert train_x.shape == (60000, 1, 28, 28) and test_x.shape == (10000, 1, 28, 28)
    assert train_x.dtype == torch.uint8 and train_y.dtype == torch.int64
    assert set(train_y.tolist()) == set(range(10)) and set(test_y.tolist()) == set(range(10))
    assert (info.train_size, info.test_size, info.num_classes) == (60000, 10000, 10)
    assert (info.channels, info.image_size, info.fast) == (1, 28, False)
    assert info.class_names[0] == "T-shirt/top"


def test_subset_keeps_the_first_samples(fashion_arrays):
    (train_x, train_y, test_x, test_y, _), _ = fashion_arrays
    sx, sy, tx, ty, info = data.load_arrays(small(train=100, test=30))
    assert (info.train_size, info.test_size) == (100, 30)
    assert torch.equal(sx, train_x[:100]) and torch.equal(sy, train_y[:100])
    assert torch.equal(tx, test_x[:30]) and torch.equal(ty, test_y[:30])
    train, test, info, _ = data.make_loaders(small(train=100, test=30), batch_size=32, device=CPU, seed=0)
    assert (len(train), len(test), info.fast) == (3, 1, True)


def test_digits_read_from_sklearns_file_are_load_digits_and_leave_sklearn_unimported():
    code = ("import sys; from ttm.data import digits_arrays; x, y = digits_arrays(); "
            "print(x.shape, y.shape, 'sklearn' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.stdout.split() == ["(1797,", "8,", "8)", "(1797,)", "False"], done.stderr
    from sklearn.datasets import load_digits

    x, y = data.digits_arrays()
    reference = load_digits()
    assert np.array_equal(x, reference.images) and np.array_equal(y, reference.target)


def test_digits_split():
    train_x, train_y, test_x, test_y, info = data.load_arrays(DatasetSpec(name="digits"))
    assert (len(train_x), len(test_x)) == (1500, 297)
    assert train_x.shape[1:] == (1, 8, 8) and int(train_x.max()) == 255
    assert (info.image_size, info.channels, info.num_classes) == (8, 1, 10)
    train, test, _, _ = data.make_loaders(DatasetSpec(name="digits"), batch_size=100, device=CPU, seed=0)
    train.set_epoch(0)
    x, _ = collect(train)
    assert x.shape == (1500, 1, 8, 8)
    assert abs(float(x.mean())) < 0.05  # its mean/std were computed from this split


def test_missing_cifar_root_names_the_directory(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        data.load_arrays(DatasetSpec(name="cifar100", root=str(tmp_path)))
    assert str(tmp_path) in str(e.value) and "download: true" in str(e.value)
    with pytest.raises(FileNotFoundError, match="data root"):
        data.load_arrays(DatasetSpec(name="cifar10"))


def test_read_idx_rejects_a_bad_file(tmp_path):
    bad = tmp_path / "x-idx1-ubyte"
    bad.write_bytes(b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + b"abc")
    with pytest.raises(ValueError, match="header"):
        data.read_idx(str(bad))


# ---------------------------------------------------------------------------------------------- batches
def test_normalized_train_data_is_centred():
    train, _, info, _ = data.make_loaders(fashion(augment=False), batch_size=10000, device=CPU, seed=0)
    train.set_epoch(0)
    total, sq, n = 0.0, 0.0, 0
    for x, y, _ in train:
        assert x.dtype == torch.float32 and x.is_contiguous() and y.dtype == torch.int64
        total, sq, n = total + float(x.sum()), sq + float((x * x).sum()), n + x.numel()
    mean = total / n
    assert abs(mean) < 0.05
    assert abs((sq / n - mean**2) ** 0.5 - 1) < 0.05


@pytest.mark.parametrize("fast_path", ["on", "off"])
def test_training_batches_carry_each_samples_index(fast_path):
    # CRD's memory bank is indexed by sample: the index must name the very image and label of the batch row
    spec = small(train=300, test=10, augment=False)
    train_x, train_y, *_ = data.load_arrays(spec)
    train, _, _, _ = data.make_loaders(spec, batch_size=64, device=CPU, seed=3, fast_path=fast_path, num_workers=0,
                                    drop_last=False)
    train.set_epoch(2)
    seen = []
    for x, y, i in train:
        assert i.dtype == torch.int64 and torch.equal(y, train_y[i]) and torch.equal(train.labels[i], y)
        assert torch.equal(x, train.normalize(train_x[i]))
        seen.append(i)
    assert sorted(torch.cat(seen).tolist()) == list(range(300))  # every sample once per epoch


@pytest.mark.parametrize("fast_path", ["on", "off"])
def test_same_seed_and_epoch_give_the_same_batches(fast_path):
    def epoch_batches(epoch, seed=7, warm_epochs=()):
        train, _, _, _ = data.make_loaders(small(train=512), batch_size=128, device=CPU, seed=seed, fast_path=fast_path,
                                        num_workers=0)
        for e in warm_epochs:  # an uninterrupted run went through these first
            train.set_epoch(e)
            list(train)
        train.set_epoch(epoch)
        return collect(train)

    x3, y3 = epoch_batches(3)
    x3_again, y3_again = epoch_batches(3, warm_epochs=(0, 1, 2))  # resumed at 3 vs. uninterrupted
    assert torch.equal(x3, x3_again) and torch.equal(y3, y3_again)
    x4, y4 = epoch_batches(4)
    assert not torch.equal(y3, y4)  # another order
    _, y3_other_seed = epoch_batches(3, seed=8)
    assert not torch.equal(y3, y3_other_seed)


def test_dataloader_path_does_not_depend_on_workers_nor_touch_the_global_rng():
    def epoch(workers):
        train, _, info, _ = data.make_loaders(small(train=512), batch_size=128, device=CPU, seed=1, fast_path="off",
                                           num_workers=workers)
        assert not info.fast
        train.set_epoch(2)
        return collect(train)

    state = torch.get_rng_state()
    x0, y0 = epoch(0)
    assert torch.equal(state, torch.get_rng_state())
    x2, y2 = epoch(2)
    assert torch.equal(x0, x2) and torch.equal(y0, y2)


def test_both_paths_visit_samples_in_the_same_order():
    ys = []
    for fast_path in ("on", "off"):
        train, _, _, _ = data.make_loaders(small(augment=False), batch_size=100, device=CPU, seed=3,
                                        fast_path=fast_path, num_workers=0)
        train.set_epoch(5)
        ys.append(collect(train))
    assert torch.equal(ys[0][0], ys[1][0]) and torch.equal(ys[0][1], ys[1][1])


@pytest.mark.parametrize("fast_path", ["on", "off"])
def test_augmentation_is_a_padded_crop_and_a_flip_of_the_image(fast_path):
    pad, flip = data.AUGMENT["fashion_mnist"]
    assert (pad, flip) == (2, True)
    batches = {}
    for augment in (True, False):
        train, _, info, _ = data.make_loaders(small(train=256, augment=augment), batch_size=128, device=CPU, seed=5,
                                           fast_path=fast_path, num_workers=0)
        train.set_epoch(1)
        batches[augment] = collect(train)
    (aug, y_aug), (plain, y_plain) = batches[True], batches[False]
    assert aug.shape == plain.shape == (256, 1, 28, 28)
    assert torch.equal(y_aug, y_plain)  # augmentation draws after the permutation: same order
    assert not torch.equal(aug, plain)

    aug8, plain8 = to_uint8(aug, info), to_uint8(plain, info)
    padded = F.pad(plain8, (pad,) * 4)
    shifted = flipped = 0
    for a, p in zip(aug8, padded):
        matches = [(dy, dx, f) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1) for f in (False, True)
                   if torch.equal(a, (lambda c: c.flip(-1) if f else c)(p[:, dy:dy + 28, dx:dx + 28]))]
        assert matches, "an augmented image is no crop/flip of its original"
        shifted += all((dy, dx) != (pad, pad) for dy, dx, _ in matches)
        flipped += all(f for _, _, f in matches)
    assert shifted > 100 and flipped > 50  # 24/25 of crops move, half the images flip


def test_no_flip_where_the_table_says_so():
    assert data.AUGMENT["svhn"] == (4, False) and data.AUGMENT["mnist"] == (2, False)
    assert data.AUGMENT["cifar100"] == (4, True) and data.AUGMENT["digits"] == (0, False)


def test_drop_last_and_the_test_split_covers_every_sample_once(fashion_arrays):
    (train_x, train_y, test_x, test_y, _), _ = fashion_arrays
    spec = small(train=1000, test=300, augment=False)
    train, test, info, _ = data.make_loaders(spec, batch_size=64, device=CPU, seed=0, test_batch_size=128)
    train.set_epoch(0)
    sizes = [len(x) for x, *_ in train]
    assert len(train) == 15 and sizes == [64] * 15
    assert len(test) == 3 and [len(x) for x, _ in test] == [128, 128, 44]
    x, y = collect(test)
    assert torch.equal(to_uint8(x, info), test_x[:300]) and torch.equal(y, test_y[:300])  # in order

    for fast_path in ("on", "off"):
        train, _, _, _ = data.make_loaders(spec, batch_size=64, device=CPU, seed=0, drop_last=False,
                                        fast_path=fast_path, num_workers=0)
        train.set_epoch(0)
        assert len(train) == 16 and [len(x) for x, *_ in train][-1] == 1000 - 15 * 64
        x, y = collect(train)
        assert multiset(to_uint8(x, info), y) == multiset(train_x[:1000], train_y[:1000])


def test_a_training_set_smaller_than_a_batch_is_an_error():
    with pytest.raises(ValueError, match=r"50 samples.*batch_size=64"):
        data.make_loaders(small(train=50), batch_size=64, device=CPU, seed=0)
    train, _, _, _ = data.make_loaders(small(train=50), batch_size=64, device=CPU, seed=0, drop_last=False)
    assert len(train) == 1


def test_iterating_before_set_epoch_is_an_error():
    train, _, _, _ = data.make_loaders(DatasetSpec(name="digits"), batch_size=100, device=CPU, seed=0)
    with pytest.raises(RuntimeError, match="set_epoch"):
        next(iter(train))


# ---------------------------------------------------------------------------------------------- image folders
@pytest.fixture
def image_tree(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, per_class in (("train", 4), ("val", 2)):
        for k, cls in enumerate(("cat", "dog", "fox")):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 255, size=(20 + 3 * i, 24, 3), dtype=np.uint8)
                pixels[..., k] = 255  # one bright channel per class
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return tmp_path


@pytest.mark.parametrize("fast_path", ["auto", "on"])
def test_imagefolder(image_tree, fast_path):
    spec = DatasetSpec(name="imagefolder", path=str(image_tree), image_size=16, num_classes=3)
    train, test, info, _ = data.make_loaders(spec, batch_size=4, device=CPU, seed=0, fast_path=fast_path,
                                          num_workers=0)
    assert info.fast == (fast_path == "on")  # auto: the DataLoader path for image folders
    assert (info.num_classes, info.class_names, info.train_size, info.test_size) == (3, ["cat", "dog", "fox"], 12, 6)
    assert (info.image_size, info.channels, info.mean) == (16, 3, (0.485, 0.456, 0.406))
    assert len(train) == 3 and len(test) == 2
    train.set_epoch(0)
    x, y = collect(train)
    assert x.shape == (12, 3, 16, 16) and sorted(y.tolist()) == [0] * 4 + [1] * 4 + [2] * 4
    train.set_epoch(0)
    assert torch.equal(collect(train)[0], x)
    x, y = collect(test)
    assert x.shape == (6, 3, 16, 16) and y.tolist() == [0, 0, 1, 1, 2, 2]
    bright = to_uint8(x, info).float().mean(dim=(2, 3)).argmax(dim=1)  # the class's channel survives resizing
    assert torch.equal(bright, y)


def test_imagefolder_class_count_and_class_lists_are_checked(image_tree):
    spec = DatasetSpec(name="imagefolder", path=str(image_tree), num_classes=5)
    with pytest.raises(ValueError, match=r"num_classes=5.*3 classes"):
        data.make_loaders(spec, batch_size=4, device=CPU, seed=0, num_workers=0)
    (image_tree / "val" / "fox").rename(image_tree / "val" / "wolf")
    spec = DatasetSpec(name="imagefolder", path=str(image_tree))
    with pytest.raises(ValueError, match="wolf"):
        data.make_loaders(spec, batch_size=4, device=CPU, seed=0, num_workers=0)


# ---------------------------------------------------------------------------------------------- torchvision layouts
def test_cifar_and_svhn_files_become_nchw_uint8(tmp_path, monkeypatch):
    """Small stand-ins in torchvision's layout (its md5 check switched off): the pixel layout ends up NCHW."""
    import pickle

    import scipy.io
    import torchvision.datasets.cifar
    import torchvision.datasets.svhn

    for module in (torchvision.datasets.cifar, torchvision.datasets.svhn):
        monkeypatch.setattr(module, "check_integrity", lambda *args, **kwargs: True)
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rows = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        rows[name] = rng.integers(0, 256, size=(3, 3 * 32 * 32), dtype=np.uint8)  # CIFAR rows: R plane, G, B
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rows[name], "labels": [1, 2, 3]}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    train_x, train_y, test_x, test_y, info = data.load_arrays(DatasetSpec(name="cifar10", root=str(tmp_path)))
    assert train_x.shape == (15, 3, 32, 32) and test_x.shape == (3, 3, 32, 32) and train_x.dtype == torch.uint8
    assert torch.equal(test_x, torch.from_numpy(rows["test_batch"]).view(3, 3, 32, 32))
    assert train_y.tolist()[:3] == [1, 2, 3] and info.class_names[9] == "c9"

    pixels = rng.integers(0, 256, size=(32, 32, 3, 4), dtype=np.uint8)  # SVHN's .mat: H, W, C, N
    for split in ("train", "test"):
        scipy.io.savemat(tmp_path / f"{split}_32x32.mat", {"X": pixels, "y": np.array([[10], [1], [2], [3]])})
    train_x, train_y, _, _, info = data.load_arrays(DatasetSpec(name="svhn", root=str(tmp_path)))
    assert torch.equal(train_x, torch.from_numpy(pixels).permute(3, 2, 0, 1))
    assert train_y.tolist() == [0, 1, 2, 3] and info.channels == 3  # label 10 means the digit 0


def test_fast_path_on_refuses_an_image_folder_that_cannot_fit(image_tree, monkeypatch):
    monkeypatch.setattr(data, "_memory_budget", lambda device: 1000)
    spec = DatasetSpec(name="imagefolder", path=str(image_tree), image_size=16)
    with pytest.raises(RuntimeError, match="MiB"):
        data.make_loaders(spec, batch_size=4, device=CPU, seed=0, fast_path="on", num_workers=0)
    with pytest.raises(ValueError, match="fast_path"):
        data.make_loaders(spec, batch_size=4, device=CPU, seed=0, fast_path="maybe", num_workers=0)


# ---------------------------------------------------------------------------------------------- validation split
def test_the_validation_split_is_stratified_disjoint_and_a_function_of_its_seed():
    labels = torch.tensor([c for c in range(10) for _ in range(20 + 7 * c)] + [10])  # classes of 20..83, and one
    keep, held = data.validation_split(labels, 0.1, seed=0)
    assert torch.equal(torch.sort(torch.cat([keep, held])).values, torch.arange(len(labels)))  # a partition
    counts = Counter(labels[held].tolist())
    assert counts == {c: round(0.1 * (20 + 7 * c)) for c in range(10)}  # per class; a class of one keeps it
    again, _ = data.validation_split(labels, 0.1, seed=0)
    assert torch.equal(again, keep)
    _, other = data.validation_split(labels, 0.1, seed=1)
    assert not torch.equal(other, held)
    _, tiny = data.validation_split(torch.tensor([0, 0, 1, 1, 1]), 0.01, seed=0)
    assert Counter(torch.tensor([0, 0, 1, 1, 1])[tiny].tolist()) == {0: 1, 1: 1}  # at least one of each class


@pytest.mark.parametrize("fast_path", ["on", "off"])
def test_a_validation_split_is_held_out_of_training_and_the_same_for_every_train_seed(fast_path):
    spec = small(train=1000, test=100, augment=False, validation={"fraction": 0.2, "seed": 4})
    splits = []
    for seed in (0, 1):
        train, _, info, val = data.make_loaders(spec, batch_size=100, device=CPU, seed=seed, fast_path=fast_path,
                                                num_workers=0)
        # a fifth of each class, rounded per class
        assert info.train_size + info.validation_size == 1000 and abs(info.validation_size - 200) <= 5
        assert val is not None and len(train) == info.train_size // 100
        val_x, val_y = collect(val)
        train.set_epoch(1)
        train_x, train_y = collect(train)
        splits.append(multiset(to_uint8(val_x, info), val_y))
        seen = multiset(to_uint8(train_x, info), train_y)
        assert not set(seen) & set(splits[-1])  # no held-out image is trained on
    assert splits[0] == splits[1]  # another training seed holds out the same samples
