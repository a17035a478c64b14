"""Teacher weights: every accepted format loads; code-carrying pickles are refused without running; mismatches
name the key and both shapes."""
from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import save_file

from ttm.inspection import Refused, describe_arch, describe_file
from ttm.models import build_model
from ttm.shapes import shape_mismatch
from ttm.teacher import WeightsError, detect_format, load_teacher

MAX = 1 << 30


def inspect_artifact(path):
    return describe_file(path, MAX)


@pytest.fixture(scope="module")
def resnet8():
    torch.manual_seed(0)
    return build_model("resnet8", num_classes=10, in_channels=1)


def _same(a, b):
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


@pytest.mark.parametrize("form", ["state_dict", "repdistiller", "ddp", "safetensors", "torchscript"])
def test_each_format_loads_the_same_teacher(tmp_path, resnet8, form):
    path = tmp_path / "teacher.bin"
    sd = resnet8.state_dict()
    if form == "state_dict":
        torch.save(sd, path)
    elif form == "repdistiller":  # {"model": state_dict, "epoch": ..., "best_acc": ...}
        torch.save({"model": sd, "epoch": 240, "best_acc": torch.tensor(72.3)}, path)
    elif form == "ddp":
        torch.save({f"module.{k}": v for k, v in sd.items()}, path)
    elif form == "safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.jit.save(torch.jit.trace(resnet8.eval(), torch.zeros(1, 1, 28, 28)), str(path))
    expected = {"safetensors": "safetensors", "torchscript": "torchscript"}.get(form, "state_dict")
    assert detect_format(path) == expected
    described = inspect_artifact(path)
    assert described["format"] == expected
    if form == "torchscript":
        teacher = load_teacher(arch=None, torchscript=str(path), num_classes=10, in_channels=1)
    else:
        teacher = load_teacher(arch="resnet8", weights=str(path), num_classes=10, in_channels=1)
    assert not any(p.requires_grad for p in teacher.parameters())
    assert _same(teacher, resnet8)
    arch = describe_arch("resnet8", 10, 1, 28)
    assert arch["params"] > 70_000 and arch["output"] == [2, 10]
    if form == "torchscript":  # a program: recognised, never opened
        assert described["tensors"] is None
    else:  # the recorded shapes are what the architecture expects
        assert shape_mismatch(arch["tensors"], described["tensors"], "teacher") is None


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_that_needs_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": _Exploit(str(marker))}, f)
    with pytest.raises(Refused, match="needs code to load"):
        inspect_artifact(path)
    with pytest.raises(WeightsError, match="needs code to load"):
        load_teacher(arch="resnet8", weights=str(path), num_classes=10, in_channels=1)
    torch.save({"model": _Exploit(str(marker))}, tmp_path / "evil2.pth")  # the zip format too
    with pytest.raises(Refused, match="needs code to load"):
        inspect_artifact(tmp_path / "evil2.pth")
    assert not marker.exists()


def test_shape_mismatch_names_the_key_and_both_shapes(tmp_path, resnet8):
    path = tmp_path / "t.pth"
    torch.save(resnet8.state_dict(), path)
    with pytest.raises(WeightsError) as e:  # 10-class weights into a 100-class model
        load_teacher(arch="resnet8", weights=str(path), num_classes=100, in_channels=1)
    msg = str(e.value)
    assert "first mismatch at" in msg and "(10, 64)" in msg and "(100, 64)" in msg, msg
    with pytest.raises(WeightsError, match="missing"):
        load_teacher(arch="resnet14", weights=str(path), num_classes=10, in_channels=1)


def test_garbage_and_empty_files(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not weights at all" * 10)
    with pytest.raises(Refused, match="not a PyTorch weights file"):
        inspect_artifact(junk)
    nodict = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], nodict)
    with pytest.raises(Refused, match="holds no state_dict"):
        inspect_artifact(nodict)
