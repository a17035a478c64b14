"""Exports of a student (ttm.export): each file runs in its own runtime (onnxruntime, torch.export.load,
torch.jit.load) on real Fashion-MNIST test images and gives PyTorch's logits; one that does not is refused, and
nothing of it is offered."""
from __future__ import annotations

import json
import warnings

import onnxruntime
import pytest
import torch
from torch import nn

from ttm.checkpoint import save_student, sha256_file
from ttm.data import DEBIAN_FASHION_MNIST, NORMALIZATION, read_idx
from ttm.export import ONNX_OPSET, TOLERANCE, check_images, export_student
from ttm.models import build_model


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """The first 80 Fashion-MNIST test images as the student sees them, normalized, from batches of 32 (the check
    joins them). Only the test file is read: the training split costs seconds to unpack."""
    raw = torch.from_numpy(read_idx(f"{DEBIAN_FASHION_MNIST}/t10k-images-idx3-ubyte.gz")[:80]).unsqueeze(1)
    (mean,), (std,) = NORMALIZATION["fashion_mnist"]
    x = (raw.float() / 255 - mean) / std
    return check_images([(x[i:i + 32],) for i in range(0, 80, 32)], n=80)


(MEAN,), (STD,) = NORMALIZATION["fashion_mnist"]


def _student_dir(tmp_path, model: nn.Module, shape=(1, 28, 28), classes=10):
    save_student(tmp_path, "best", model, {"arch": "resnet8", "num_classes": classes, "input_shape": list(shape),
                                           "normalization": {"mean": [MEAN], "std": [STD]}, "epoch": 1,
                                           "top1": 10.0})
    return tmp_path / "best.json"


def _trained_looking_resnet8() -> nn.Module:
    """resnet8 with batch-norm statistics of its own, so that folding them into the convolutions changes numbers."""
    torch.manual_seed(0)
    model = build_model("resnet8", num_classes=10, in_channels=1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    return model.eval()


def test_every_export_runs_in_its_own_runtime_and_matches_pytorch(tmp_path, images):
    model = _trained_looking_resnet8()
    manifest_path = _student_dir(tmp_path, model)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        exports = export_student(model, ["onnx", "pt2", "torchscript"], images[:64], manifest_path)
    assert not [w for w in said if "deprecated" in str(w.message)], [str(w.message) for w in said]

    manifest = json.loads(manifest_path.read_text())
    assert manifest["exports"] == exports
    for fmt, name in (("onnx", "best.onnx"), ("pt2", "best.pt2"), ("torchscript", "best.torchscript.pt")):
        record = exports[fmt]
        assert record["offered"] and record["file"] == name
        assert manifest["files"][fmt]["sha256"] == sha256_file(tmp_path / name)
        check = record["check"]
        assert check["images"] == 64 and check["batch_sizes"] == [64, 1] and check["argmax_agreement"] == 1.0
        assert check["max_abs_diff"] <= check["tolerance"] and check["tolerance"] >= TOLERANCE
        assert record["input"]["shape"] == ["batch", 1, 28, 28] and record["input"]["dtype"] == "float32"
        assert record["input"]["normalization"]["mean"] == [MEAN]
    assert exports["onnx"]["opset"] == ONNX_OPSET

    # each file alone, in its own runtime, on images and a batch size the check did not use
    x = images[64:]  # 16 other test images
    with torch.no_grad():
        want = model(x)
    session = onnxruntime.InferenceSession(str(tmp_path / "best.onnx"), providers=["CPUExecutionProvider"])
    (onnx_in,), (onnx_out,) = session.get_inputs(), session.get_outputs()
    assert (onnx_in.name, onnx_out.name) == ("input", "logits")
    assert onnx_in.shape[0] == "batch" and onnx_in.shape[1:] == [1, 28, 28]  # the batch axis is dynamic
    got = {"onnx": torch.from_numpy(session.run(None, {"input": x.numpy()})[0]),
           "pt2": torch.export.load(str(tmp_path / "best.pt2")).module()(x).detach()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load says TorchScript is deprecated
        got["torchscript"] = torch.jit.load(str(tmp_path / "best.torchscript.pt"))(x).detach()
    for fmt, logits in got.items():
        diff = (logits - want).abs().max().item()
        assert diff <= TOLERANCE * max(1.0, want.abs().max().item()), (fmt, diff)
        assert torch.equal(logits.argmax(1), want.argmax(1)), fmt


class _Branchy(nn.Module):
    """A student whose forward branches on its input's values: a trace keeps the branch of its example batch, and
    torch.export (so the ONNX exporter too) cannot export it."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(28 * 28, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.fc(x.flatten(1))
        return z if x.mean() > 0 else -z


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # the trace's warning is what this test is about
def test_an_export_that_fails_or_differs_is_refused_and_never_offered(tmp_path, images):
    model = _Branchy().eval()
    manifest_path = _student_dir(tmp_path, model)
    # an earlier run's file and entry for this student must not survive a refusal
    (tmp_path / "best.torchscript.pt").write_bytes(b"stale")
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["torchscript"] = {"name": "best.torchscript.pt", "sha256": "0" * 64, "size": 5}
    manifest_path.write_text(json.dumps(manifest))
    # the two brightest images first (the trace's example), then the darkest, which take the other branch
    order = images.mean(dim=(1, 2, 3)).argsort(descending=True)
    mixed = torch.cat([images[order[:2]], images[order[-30:]]])
    exports = export_student(model, ["onnx", "pt2", "torchscript"], mixed, manifest_path)

    manifest = json.loads(manifest_path.read_text())
    assert set(manifest["files"]) == {"pt", "safetensors"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.json", "best.pt", "best.safetensors"]
    assert not any(e["offered"] for e in exports.values()) and manifest["exports"] == exports
    assert "data-dependent" in exports["pt2"]["reason"] and "data-dependent" in exports["onnx"]["reason"]
    assert "differ from PyTorch's by up to" in exports["torchscript"]["reason"]
    assert "over the tolerance" in exports["torchscript"]["reason"]
    assert exports["onnx"]["opset"] == ONNX_OPSET and exports["onnx"]["input"]["shape"] == ["batch", 1, 28, 28]
