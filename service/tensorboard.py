"""A job's TensorBoard events (`<run dir>/tensorboard/`, written by ttm.tensorboard) as a tar stream.

The run directory is written by a trainer that may run a teacher's code, so the folder is read as hostile: it is
walked without following a link (os.fwalk), only regular files go in (opened with O_NOFOLLOW, their size taken from
the open file), under names relative to the folder and prefixed with the job's id, so that unpacking several jobs
into one folder gives TensorBoard one run per job. A file that shrinks while it is sent is padded with zeros to the
size its header says; one that grows is sent as it was when its header was written.
"""
from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path

from ttm.tensorboard import EVENTS_DIR

CHUNK = 1024 * 1024
BLOCK = tarfile.BLOCKSIZE
MAX_FILES = 10_000  # a trainer writes one event file per run of the job: a folder of millions is no job's


def event_files(run_dir: Path) -> list[str]:
    """Names (relative to the events folder, '/'-separated) of its regular files (MAX_FILES at most); [] when there
    is none."""
    names: list[str] = []
    try:
        for dirpath, _dirs, files, dirfd in os.fwalk(run_dir / EVENTS_DIR, follow_symlinks=False):
            rel = os.path.relpath(dirpath, run_dir / EVENTS_DIR)
            for name in files:
                path = name if rel == "." else f"{rel}/{name}"
                if not path.isprintable():  # a control character, or a byte that is no UTF-8 (a lone surrogate)
                    continue  # which no tar header says plainly (the trainer writes no such name)
                try:
                    st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode) and len(names) < MAX_FILES:
                    names.append(path)
    except OSError:  # no events folder (yet)
        return []
    return sorted(names)


def tar_stream(run_dir: Path, names: list[str], prefix: str) -> Iterator[bytes]:
    """An uncompressed tar (POSIX pax) of `names` under `prefix/`, chunk by chunk."""
    root = run_dir / EVENTS_DIR
    for name in names:
        opened = _open_regular(root, name)
        if opened is None:  # gone, or replaced by something that is no regular file, since it was listed
            continue
        fd, st = opened
        with os.fdopen(fd, "rb") as f:
            info = tarfile.TarInfo(f"{prefix}/{name}")
            info.size, info.mtime, info.mode = st.st_size, int(st.st_mtime), 0o644
            yield info.tobuf(format=tarfile.PAX_FORMAT)
            left = st.st_size
            while left > 0:
                data = f.read(min(CHUNK, left))
                if not data:
                    data = b"\0" * left  # it was truncated meanwhile: the header's size is kept
                left -= len(data)
                yield data
            if st.st_size % BLOCK:
                yield b"\0" * (BLOCK - st.st_size % BLOCK)
    yield b"\0" * (2 * BLOCK)  # the end of the archive


def _open_regular(root: Path, name: str) -> tuple[int, os.stat_result] | None:
    """Open root/name without following a link in any part of `name`."""
    try:
        dirfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        parts = name.split("/")
        for part in parts[:-1]:
            next_fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dirfd)
            os.close(dirfd)
            dirfd = next_fd
        fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dirfd)
    except OSError:
        return None
    finally:
        os.close(dirfd)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return None
    return fd, st
