"""Checkpoints: the resume state (every epoch) and the student exports (best and last), all written atomically.

Layout of a run directory:
    state.pt                       resume state: model, optimizer, scheduler, RNG states, epoch, best accuracy
    best.pt / best.safetensors     the student with the best test top-1 (a plain state_dict, and safetensors)
    best.json                      its manifest: arch, classes, input shape, normalization, accuracy, epoch, spec
    last.pt / last.safetensors / last.json     the student after the latest epoch
    best.onnx / best.pt2 / best.torchscript.pt    exports of the best student that the spec asked for and that
                                   passed their check (ttm.export); best.json's "exports" says how each went
    metrics.jsonl                  one line per epoch
    train.log                      the trainer's log
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

# the suffixes live in ttm.registry, which the API and the client import without torch; re-exported here
from ttm.registry import CHECKPOINT_SUFFIXES, MANIFEST_SUFFIX, checkpoint_name  # noqa: F401

MANIFEST_VERSION = 1


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Write through a temporary file in the same directory, fsync, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # the same suffix: some writers and readers go by it (torch.export's .pt2 archives)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """CPU, contiguous, unwrapped (DDP/compile) tensors: what safetensors and other tools accept."""
    model = getattr(model, "module", model)
    model = getattr(model, "_orig_mod", model)
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}


def save_state(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path: Path) -> dict[str, Any]:
    # our own file, but loaded like any other: weights_only keeps it data
    return torch.load(path, map_location="cpu", weights_only=True)


def save_student(out_dir: Path, which: str, model: nn.Module, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write `<which>.pt`, `<which>.safetensors` and `<which>.json`; returns the manifest with file hashes."""
    from safetensors.torch import save_file

    state = plain_state_dict(model)
    pt, st = out_dir / checkpoint_name(which, "pt"), out_dir / checkpoint_name(which, "safetensors")
    atomic_write(pt, lambda tmp: torch.save(state, tmp))
    atomic_write(st, lambda tmp: save_file(state, str(tmp), metadata=student_metadata(manifest)))
    manifest = {**manifest, "version": MANIFEST_VERSION, "which": which,
                "files": {"pt": file_info(pt), "safetensors": file_info(st)}}
    write_json(out_dir / f"{which}{MANIFEST_SUFFIX}", manifest)
    return manifest


STUDENT_FORMAT = "ttm-student/1"


def student_metadata(manifest: dict[str, Any]) -> dict[str, str]:
    """What a student's safetensors file says of itself (strings only, as safetensors requires): enough for
    `ttm.load_student` to rebuild the model and its preprocessing without any other file."""
    channels, height, width = manifest["input_shape"]
    meta = {"format": STUDENT_FORMAT, "arch": manifest["arch"], "num_classes": manifest["num_classes"],
            "in_channels": channels, "input_size": height, "input_shape": json.dumps([channels, height, width]),
            "normalization": json.dumps(manifest["normalization"]), "dataset": manifest.get("dataset"),
            "class_names": json.dumps(manifest["class_names"]) if manifest.get("class_names") else None,
            "top1": manifest.get("top1"), "epoch": manifest.get("epoch"), "job_id": manifest.get("job_id")}
    return {k: str(v) for k, v in meta.items() if v is not None}


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, sort_keys=True)))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_info(path: Path) -> dict[str, Any]:
    return {"name": path.name, "sha256": sha256_file(path), "size": path.stat().st_size}
