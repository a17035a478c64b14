"""The teacher zoo: teachers this project trained with its own trainer on data sets every machine here can read.

Each teacher is two files in this folder, `<dataset>/<arch>.safetensors` and its manifest `<dataset>/<arch>.json`
(architecture, data set, classes, input shape, normalization, test accuracy, the spec and the command that made
it, the weights' sha256). `python -m benchmarks.make_zoo` trains them again from scratch, so anyone can check them.

A spec names one as `teacher: {zoo: fashion_mnist/resnet20}`. `ttm train` reads the file from here; the job server
turns it into an artifact of the submitting user (stored once per sha256, like an upload), so that a job's record
is the same as if the user had uploaded the file. Names are looked up in the list of what is here, never joined
into a path. Nothing here imports torch: the API and the base install read the manifests.
"""
from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

ZOO_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class ZooTeacher:
    name: str  # <dataset>/<arch>
    manifest: dict[str, Any]

    @property
    def arch(self) -> str:
        return str(self.manifest["arch"])

    @property
    def dataset(self) -> str:
        return str(self.manifest["dataset"])

    @property
    def sha256(self) -> str:
        return str(self.manifest["sha256"])

    @property
    def path(self) -> Path:
        return ZOO_DIR / f"{self.name}.safetensors"


@lru_cache(maxsize=1)
def teachers() -> dict[str, ZooTeacher]:
    """Every teacher of the zoo by name, from the manifests in this folder."""
    found = {}
    for manifest in sorted(ZOO_DIR.glob("*/*.json")):
        name = f"{manifest.parent.name}/{manifest.stem}"
        if (ZOO_DIR / f"{name}.safetensors").is_file():
            found[name] = ZooTeacher(name, json.loads(manifest.read_text()))
    return found


def unknown_message(name: str) -> str:
    known = sorted(teachers())
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    return f"no teacher {name!r} in the zoo; {hint}known: {', '.join(known) or 'none'} (see `ttm zoo`)"


def get(name: str) -> ZooTeacher:
    """The zoo's teacher `name`; KeyError with a message naming the known ones."""
    try:
        return teachers()[name]
    except KeyError:
        raise KeyError(unknown_message(name)) from None
