"""A downloaded student, ready to use: `ttm.load_student(path)` rebuilds the network from what its file says of
itself and puts its preprocessing in front.

    import ttm
    student = ttm.load_student("student.safetensors")       # an nn.Module in eval mode
    probs = student(images).softmax(dim=1)                   # images: N×C×H×W in [0, 1] (or uint8 0–255)

The safetensors file of every student this project writes carries its architecture, classes, input shape and
normalization in its metadata (ttm.checkpoint.student_metadata). A file without them (an older one, a zoo teacher,
a `.pt` state_dict) is read with the manifest beside it (`best.json` for `best.safetensors`/`best.pt`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn


class Student(nn.Module):
    """The trained network behind its input preprocessing: uint8 images are scaled to [0, 1], and every image is
    normalized with the training set's mean and std, as during training. `info` holds what the file said."""

    def __init__(self, model: nn.Module, info: dict[str, Any]):
        super().__init__()
        self.model, self.info = model, info
        norm = info["normalization"]
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(norm["mean"], dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(norm["std"], dtype=torch.float32).view(1, -1, 1, 1))

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.info["input_shape"]
        return int(c), int(h), int(w)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        c, h, w = self.input_shape
        if images.dim() == 3:
            images = images.unsqueeze(0)
        if tuple(images.shape[1:]) != (c, h, w):
            raise ValueError(f"this student takes N×{c}×{h}×{w} images, not {tuple(images.shape)}; "
                             "ttm.student.prepare_image reads and resizes an image file")
        x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
        return self.model((x - self.mean) / self.std)

    @torch.no_grad()
    def ranked(self, files: list[str | Path], top: int = 1) -> list[list[tuple[str, float]]]:
        """For each image file, its `top` classes (by name when the file says them) with their probabilities."""
        names = self.info.get("class_names") or []
        batch = torch.stack([prepare_image(f, self) for f in files])
        probs = self(batch).softmax(dim=1)
        values, labels = probs.topk(min(top, probs.shape[1]), dim=1)
        return [[(names[i] if i < len(names) else str(i), round(v, 4)) for v, i in zip(vs, ls)]
                for vs, ls in zip(values.tolist(), labels.tolist())]

    def predict(self, files: list[str | Path]) -> list[tuple[str, float]]:
        """For each image file, its most likely class and that class's probability."""
        return [best[0] for best in self.ranked(files)]


def describe(path: str | Path) -> dict[str, Any]:
    """What the student file says of itself: arch, num_classes, input_shape, normalization (and dataset, top1, epoch,
    job_id when known), from its safetensors metadata or else its manifest."""
    path = Path(path)
    meta: dict[str, Any] = {}
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
    if "input_shape" in meta and "normalization" in meta:
        info: dict[str, Any] = {**meta, "num_classes": int(meta["num_classes"]),
                                "input_shape": json.loads(meta["input_shape"]),
                                "normalization": json.loads(meta["normalization"]),
                                "class_names": json.loads(meta["class_names"]) if "class_names" in meta else None}
        if "top1" in info:
            info["top1"] = float(info["top1"])
        return info
    manifest = path.with_suffix(".json")
    if not manifest.is_file():
        raise ValueError(f"{path.name} does not say what it is (no architecture or normalization in its metadata) "
                         f"and has no manifest {manifest.name} beside it: download it again from the server "
                         "(`ttm download ID -o student.safetensors`), or build the model yourself with "
                         "ttm.models.build_model")
    return json.loads(manifest.read_text())


def load_student(path: str | Path) -> Student:
    """The student of a file this project wrote, in eval mode on the CPU, with its preprocessing."""
    from ttm.models import build_model
    from ttm.teacher import load_into, load_state_dict_file

    info = describe(path)
    model = build_model(info["arch"], num_classes=int(info["num_classes"]), in_channels=int(info["input_shape"][0]))
    load_into(model, load_state_dict_file(path), what=Path(path).name)
    return Student(model, info).eval()


def prepare_image(path: str | Path, student: Student) -> torch.Tensor:
    """An image file as the student's input: decoded, converted to its channels, resized (short side, then a
    centre crop) to its size; uint8, C×H×W."""
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms.v2 import functional as F

    c, h, w = student.input_shape
    image = decode_image(str(path), mode=ImageReadMode.GRAY if c == 1 else ImageReadMode.RGB)
    return F.center_crop(F.resize(image, [min(h, w)], antialias=True), [h, w])
