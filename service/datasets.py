"""A data set sent over HTTP: an ImageFolder tree (train/<class>/<image>, val/<class>/<image>) as a .tar, .tar.gz
or .zip, unpacked as data, never as instructions.

The archive is untrusted. Each entry is checked before a byte of it is written: a relative path of plain names (no
absolute path, no `..`, no backslash or control character), a regular file or a folder (no link, device or fifo),
at most `max_files` files and `max_bytes` unpacked (counted while writing, not taken from the headers), each file an
image that PIL decodes whole (at most MAX_PIXELS), under the layout above (one folder around it all is allowed, as
zipping a folder makes it). A refusal names the entry. Files are created by this code alone (O_EXCL, in folders it
made), so nothing in the archive can point a write elsewhere.

The API runs it as `python -m service.datasets` (`unpack_in_sandbox`): image decoders parse hostile bytes, so they
do it in a process of their own, with the inspection sandbox's cleared environment (no database URL, no token) and
limits on its memory, CPU time, file sizes and open files, and a wall-clock timeout.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import IO

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")  # what ImageFolder reads
MAX_PIXELS = 4096 * 4096  # per image: a larger one is a decompression bomb or no training image
SKIPPED = ("__MACOSX",)  # what a Mac adds to a zip: not extracted
SKIPPED_NAMES = (".DS_Store", "Thumbs.db")
MAX_NAME = 255
MAX_PATH = 1024
CHUNK = 1024 * 1024


class DatasetRefused(ValueError):
    """The archive is not a data set this server takes; the message names the entry and the rule."""


@dataclass(frozen=True)
class Unpacked:
    classes: list[str]
    files: int
    size: int  # unpacked bytes
    counts: dict[str, dict[str, int]]  # split -> class -> images


@dataclass(frozen=True)
class _Entry:
    parts: tuple[str, ...]  # the checked path, as names
    is_dir: bool
    size: int
    open: Callable[[], IO[bytes] | None]  # a binary file of the entry's bytes (tarfile's may be None)


def archive_kind(path: Path) -> str:
    """zip | tar (gzip-compressed or not), from the first bytes; anything else is refused."""
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "zip"
    if head.startswith(b"\x1f\x8b") or head[257:262] == b"ustar":
        return "tar"
    raise DatasetRefused("not a .tar, .tar.gz or .zip archive (send an ImageFolder tree: train/<class>/<image> "
                         "and val/<class>/<image>)")


def _checked_parts(name: str) -> tuple[str, ...] | None:
    """The entry's path as names, or None for an entry to skip (what a Mac adds); DatasetRefused for a path that
    could leave the folder or is no plain name."""
    shown = repr(name[:200])
    if any(ord(c) < 32 or ord(c) == 127 for c in name) or "\\" in name:
        raise DatasetRefused(f"entry {shown}: control characters and backslashes are not allowed in names")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise DatasetRefused(f"entry {shown}: an absolute path; entries must be relative (train/<class>/<image>)")
    if len(name) > MAX_PATH:
        raise DatasetRefused(f"entry {shown}: a path over {MAX_PATH} characters")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise DatasetRefused(f"entry {shown}: '..' would leave the data set's folder")
    if any(len(p) > MAX_NAME for p in parts):
        raise DatasetRefused(f"entry {shown}: a name over {MAX_NAME} characters")
    if not parts or parts[0] in SKIPPED or parts[-1] in SKIPPED_NAMES or parts[-1].startswith("._"):
        return None
    return parts


def _listed(entries: Iterator[_Entry], max_files: int) -> list[_Entry]:
    listed = []
    for entry in entries:
        listed.append(entry)
        if len(listed) > 2 * max_files + 1000:  # folders too: a listing is bounded before anything is written
            raise DatasetRefused(f"more than {max_files} files (TTM_DATASET_MAX_FILES)")
    return listed


def _refuse_kind(name: str, kind: str) -> DatasetRefused:
    return DatasetRefused(f"entry {name[:200]!r} is {kind}: only folders and image files are taken")


@contextmanager
def _entries(path: Path, kind: str, max_files: int) -> Iterator[list[_Entry]]:
    """The archive's entries, checked, in its order, while it is open. A tar is read front to back twice at most
    (its listing, then its members in order: a gzip stream seeks forward only)."""
    if kind == "tar":
        with tarfile.open(path, "r:*") as tar:
            def tar_entries() -> Iterator[_Entry]:
                for member in tar:
                    parts = _checked_parts(member.name)
                    if parts is None:
                        continue
                    if not (member.isreg() or member.isdir()):
                        raise _refuse_kind(member.name, "a symbolic link" if member.issym() else "a hard link"
                                           if member.islnk() else "a fifo" if member.isfifo() else
                                           "a device file" if member.isdev() else "not a plain file")
                    yield _Entry(parts, member.isdir(), member.size, partial(tar.extractfile, member))
            yield _listed(tar_entries(), max_files)
        return
    with zipfile.ZipFile(path) as archive:
        def zip_entries() -> Iterator[_Entry]:
            for info in archive.infolist():
                parts = _checked_parts(info.filename)
                if parts is None:
                    continue
                kind = stat.S_IFMT(info.external_attr >> 16)  # the file type, where the zip was made on Unix
                if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                    raise _refuse_kind(info.filename, "a symbolic link" if kind == stat.S_IFLNK else "not a plain file")
                if info.flag_bits & 0x1:
                    raise DatasetRefused(f"entry {info.filename[:200]!r} is encrypted")
                yield _Entry(parts, info.is_dir(), info.file_size, partial(archive.open, info))
        yield _listed(zip_entries(), max_files)


def _strip_wrapper(entries: list[_Entry]) -> list[_Entry]:
    """train/ and val/ at the top, or inside one folder that holds everything (as zipping a folder makes it)."""
    tops = {e.parts[0] for e in entries}
    if len(tops) == 1 and not {"train", "val"} & tops and all(len(e.parts) > 1 or e.is_dir for e in entries):
        return [_Entry(e.parts[1:], e.is_dir, e.size, e.open) for e in entries if len(e.parts) > 1]
    return entries


def _check_image(path: Path, shown: str) -> None:
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as im:
                if im.width * im.height > MAX_PIXELS:
                    raise DatasetRefused(f"entry {shown}: {im.width}×{im.height} pixels, over {MAX_PIXELS}")
                im.load()  # the whole image decoded: a truncated or corrupt file fails here
        except DatasetRefused:
            raise
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning, Image.DecompressionBombError) \
                as err:
            raise DatasetRefused(f"entry {shown}: not an image PIL can decode ({type(err).__name__})") from None


@contextmanager
def _cleanup_on_error(folder: Path) -> Iterator[None]:
    try:
        yield
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def unpack_dataset(archive: Path, dest: Path, *, max_files: int, max_bytes: int) -> Unpacked:
    """Unpack `archive` into the new folder `dest` (train/ and val/ in it), checking every entry; on a refusal
    nothing is left behind."""
    kind = archive_kind(archive)
    dest.mkdir(parents=True)
    with _cleanup_on_error(dest):
        try:
            with _entries(archive, kind, max_files) as listed:
                files, written, counts = _unpack(_strip_wrapper(listed), dest, max_files, max_bytes)
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, zipfile.LargeZipFile, zlib.error) as err:
            raise DatasetRefused(f"the archive is damaged or truncated ({type(err).__name__}: {str(err)[:200]})") \
                from None
        train, val = sorted(counts["train"]), sorted(counts["val"])
        if not train or not val:
            raise DatasetRefused("need train/<class>/<image> and val/<class>/<image>: "
                                 f"{'train/' if not train else 'val/'} holds no image")
        if train != val:
            only = sorted(set(train) ^ set(val))
            raise DatasetRefused(f"train/ and val/ need the same classes; only in one of them: {', '.join(only)}")
        if len(train) < 2:
            raise DatasetRefused(f"one class ({train[0]}): a classifier needs at least two")
        return Unpacked(train, files, written, counts)


def _unpack(entries: list[_Entry], dest: Path, max_files: int, max_bytes: int
            ) -> tuple[int, int, dict[str, dict[str, int]]]:
    files = written = 0
    seen: set[tuple[str, ...]] = set()
    counts: dict[str, dict[str, int]] = {"train": {}, "val": {}}
    for entry in entries:
        shown = repr("/".join(entry.parts)[:200])
        if entry.is_dir:
            if len(entry.parts) > 2 or entry.parts[0] not in ("train", "val"):
                raise DatasetRefused(f"entry {shown}: folders are train/<class> and val/<class> only")
            continue
        if len(entry.parts) != 3 or entry.parts[0] not in ("train", "val"):
            raise DatasetRefused(f"entry {shown}: images go in train/<class>/ or val/<class>/ (an ImageFolder "
                                 "tree)")
        if not entry.parts[2].lower().endswith(IMAGE_SUFFIXES):
            raise DatasetRefused(f"entry {shown}: not an image file ({', '.join(IMAGE_SUFFIXES)})")
        if entry.parts in seen:
            raise DatasetRefused(f"entry {shown} appears twice")
        seen.add(entry.parts)
        files += 1
        if files > max_files:
            raise DatasetRefused(f"more than {max_files} files (TTM_DATASET_MAX_FILES)")
        target = dest.joinpath(*entry.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        written += _write(entry, target, max_bytes - written, shown, max_bytes)
        _check_image(target, shown)
        counts[entry.parts[0]][entry.parts[1]] = counts[entry.parts[0]].get(entry.parts[1], 0) + 1
    return files, written, counts


def _write(entry: _Entry, target: Path, budget: int, shown: str, max_bytes: int) -> int:
    """The entry's bytes into a new file (never through an existing name or link), at most `budget` of them."""
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    size = 0
    with os.fdopen(fd, "wb") as out:
        source = entry.open()
        if source is None:  # tarfile has no file for a member that is not a regular file; those are refused above
            raise DatasetRefused(f"entry {shown} has no data")
        with source:
            while chunk := source.read(CHUNK):
                size += len(chunk)
                if size > budget:
                    raise DatasetRefused(f"entry {shown}: unpacked, the data set passes {max_bytes} bytes "
                                         "(TTM_DATASET_MAX_UNPACKED_BYTES)")
                out.write(chunk)
    return size


def unpack_in_sandbox(archive: Path, dest: Path, *, max_files: int, max_bytes: int, memory_bytes: int,
                      timeout_s: float) -> Unpacked:
    """unpack_dataset in a sandboxed child (see the module's doc); DatasetRefused for a refusal, a timeout or a
    child that died (past a limit), with nothing left in `dest`."""
    from service.inspection import sandbox_environment

    with tempfile.TemporaryDirectory(prefix="ttm-dataset-") as cwd:
        try:
            done = subprocess.run(
                [sys.executable, "-m", "service.datasets", str(archive), str(dest), str(max_files), str(max_bytes),
                 str(memory_bytes), str(int(timeout_s) + 1)], cwd=cwd, env=sandbox_environment(cwd),
                stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout_s, start_new_session=True)
        except subprocess.TimeoutExpired:
            shutil.rmtree(dest, ignore_errors=True)
            raise DatasetRefused(f"checking it took longer than {timeout_s:g} s "
                                 "(TTM_DATASET_UNPACK_TIMEOUT_SECONDS)") from None
    lines = done.stdout.decode("utf-8", "replace").strip().splitlines()
    result = json.loads(lines[-1]) if done.returncode == 0 and lines else None
    if result is None or "refused" in result:
        shutil.rmtree(dest, ignore_errors=True)
        raise DatasetRefused(result["refused"] if result else
                             f"checking it failed (exit status {done.returncode}: past the sandbox's memory or CPU "
                             "limit, or a decoder crashed)")
    return Unpacked(**result)


def _limit_self(memory_bytes: int, cpu_seconds: int, max_bytes: int) -> None:
    """Set before the archive is opened: address space, CPU time, no file past the data set's limit, no core."""
    import resource

    for which, value in ((resource.RLIMIT_AS, memory_bytes), (resource.RLIMIT_CPU, cpu_seconds),
                         (resource.RLIMIT_FSIZE, max_bytes), (resource.RLIMIT_CORE, 0),
                         (resource.RLIMIT_NOFILE, 256)):
        resource.setrlimit(which, (value, value))


def main(argv: list[str]) -> int:
    archive, dest, max_files, max_bytes, memory_bytes, cpu_seconds = argv
    _limit_self(int(memory_bytes), int(cpu_seconds), int(max_bytes))
    try:
        out = asdict(unpack_dataset(Path(archive), Path(dest), max_files=int(max_files), max_bytes=int(max_bytes)))
    except DatasetRefused as err:
        out = {"refused": str(err)}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
