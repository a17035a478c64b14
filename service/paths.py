"""The one check that a user's dataset path lies inside the server's data root (DESIGN decision 5), used by the API's
admission and again by the worker just before it starts a trainer.

Every component is resolved (symlinks followed) before the comparison, and for an image folder every entry the
loader will read is looked at too: a `train/` that is a symlink to /etc is outside, whatever its name says.
Messages name the user's value, never the server's own paths.
"""
from __future__ import annotations

import os
from pathlib import Path

OUTSIDE = "lies outside the server's data root (TTM_DATA_ROOT)"


class PathRefused(ValueError):
    """A dataset path that is not the server's to read; `field` is the spec field, str() the reason."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def inside_data_root(value: str, field: str, data_root: Path, *, image_folder: bool = False) -> Path:
    """`value` (relative to the data root, or absolute) as a resolved path inside the resolved data root.

    With `image_folder`, `train/`, `val/` and everything below them must resolve inside the root as well.
    Raises PathRefused naming `field`.
    """
    if "\0" in value:
        raise PathRefused(field, "the path holds a NUL character")
    if value.startswith("~"):  # never expanded: `~user` would read another account's home (or crash on a bad name)
        raise PathRefused(field, f"{value!r}: '~' is not expanded; give a path relative to the server's data root "
                                 "(TTM_DATA_ROOT)")
    try:
        root = data_root.resolve()
        path = Path(value)
        path = (path if path.is_absolute() else root / path).resolve()
    except (OSError, RuntimeError) as err:  # a symlink loop, a name too long
        raise PathRefused(field, f"{value!r} cannot be resolved ({type(err).__name__})") from None
    if not path.is_relative_to(root):
        raise PathRefused(field, f"{value!r} {OUTSIDE}")
    if image_folder:
        _tree_inside(path, root, value, field)
    return path


def _tree_inside(base: Path, root: Path, value: str, field: str) -> None:
    """Walk base (with os.scandir; links are resolved and checked, and a linked folder inside the root is walked
    once), refusing the first entry that resolves outside the root: what ImageFolder (os.walk, followlinks=True)
    would read."""
    seen: set[str] = set()
    stack = [str(base / split) for split in ("train", "val")]
    for top in stack[:]:
        if os.path.lexists(top):
            _check(top, base, root, value, field)
    while stack:
        folder = os.path.realpath(stack.pop())
        if folder in seen or not os.path.isdir(folder):
            continue
        seen.add(folder)
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue  # unreadable: the loader will say so
        for entry in entries:
            if entry.is_symlink():
                target = _check(entry.path, base, root, value, field)
                if os.path.isdir(target):
                    stack.append(target)
            elif entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)


def _check(path: str, base: Path, root: Path, value: str, field: str) -> str:
    try:
        target = os.path.realpath(path, strict=False)
    except (OSError, RuntimeError):
        target = ""
    if not target or not Path(target).is_relative_to(root):
        try:
            shown = os.path.relpath(path, base)
        except ValueError:
            shown = os.path.basename(path)
        raise PathRefused(field, f"{value!r}: {shown} {OUTSIDE}")
    return target
