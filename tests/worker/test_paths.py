"""service.paths.inside_data_root, the one data-root check of the API and the worker: symlinks resolved (train/
and val/ and what lies under them), no '~' expansion, no NUL; messages never show the server's data root."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.paths import PathRefused, inside_data_root


def image_folder(base: Path) -> Path:
    for split in ("train", "val"):
        (base / split / "cat").mkdir(parents=True)
        (base / split / "cat" / "a.png").write_bytes(b"x")
    return base


def test_a_folder_inside_is_resolved(tmp_path: Path):
    root = tmp_path / "data"
    image_folder(root / "pets")
    assert inside_data_root("pets", "dataset.path", root, image_folder=True) == (root / "pets").resolve()
    assert inside_data_root(str(root / "pets"), "dataset.path", root) == (root / "pets").resolve()
    os.symlink(root / "pets" / "train", root / "pets" / "train2")  # a link that stays inside is fine
    inside_data_root("pets", "dataset.path", root, image_folder=True)


@pytest.mark.parametrize("where", ["train", "val", "train/cat/b.png", "val/dog"])
def test_a_link_out_of_the_root_is_refused(tmp_path: Path, where: str):
    root, outside = tmp_path / "data", image_folder(tmp_path / "secret")
    base = image_folder(root / "pets")
    target = base / where
    if target.exists():
        import shutil

        shutil.rmtree(target)
    os.symlink(outside / "train" if not where.endswith(".png") else outside / "train" / "cat" / "a.png", target)
    with pytest.raises(PathRefused) as err:
        inside_data_root("pets", "dataset.path", root, image_folder=True)
    assert err.value.field == "dataset.path"
    assert "'pets'" in str(err.value) and "TTM_DATA_ROOT" in str(err.value)
    assert str(root) not in str(err.value) and str(tmp_path) not in str(err.value)


@pytest.mark.parametrize("value", ["../secret", "/etc", "pets/../../secret"])
def test_a_path_out_of_the_root_is_refused(tmp_path: Path, value: str):
    (tmp_path / "data").mkdir()
    with pytest.raises(PathRefused, match="outside the server's data root"):
        inside_data_root(value, "dataset.root", tmp_path / "data")


@pytest.mark.parametrize("value", ["~nosuchuser/x", "~/x", "pets\0/x"])
def test_tilde_and_nul_are_refusals_not_crashes(tmp_path: Path, value: str):
    with pytest.raises(PathRefused) as err:
        inside_data_root(value, "dataset.path", tmp_path, image_folder=True)
    assert isinstance(err.value, ValueError) and err.value.field == "dataset.path"


def test_a_symlink_loop_is_a_refusal(tmp_path: Path):
    os.symlink(tmp_path / "b", tmp_path / "a")
    os.symlink(tmp_path / "a", tmp_path / "b")
    with pytest.raises(PathRefused):
        inside_data_root("a", "dataset.path", tmp_path)
