"""timm/<name> architectures: timm's own parameter counts, forwards at Fashion-MNIST's 1×28×28, teachers from a timm
state_dict (and a refusal naming the first mismatch), "did you mean" for unknown names, and what is said without timm.

Built on the meta device wherever only shapes matter: no weights are drawn, so a check costs milliseconds."""
from __future__ import annotations

import sys

import pytest
import timm
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from ttm.cli import app
from ttm.inspection import describe_arch, describe_file
from ttm.models import build_model, count_params
from ttm.registry import DATASET_CHANNELS
from ttm.shapes import shape_mismatch
from ttm.spec import SpecError, parse_spec
from ttm.teacher import WeightsError, load_teacher

# Measured with timm 1.0.31: sum(p.numel()) of timm.create_model(name, num_classes=10, in_chans=1). Each is timm's
# own count at its defaults (3 channels, 1000 classes: resnet18 11,689,512, the published ResNet-18 figure;
# mobilenetv3_small_100 2,542,856) less the classifier's 990 dropped rows (513,000 - 5,130 and 1,025,000 - 10,250)
# and less the stem's two dropped input channels (64·2·7·7 = 6,272 and 16·2·3·3 = 288).
TIMM_PARAMS = {"timm/resnet18": 11_175_370, "timm/mobilenetv3_small_100": 1_527_818}
CHANNELS, SIZE = DATASET_CHANNELS["fashion_mnist"], 28  # the trainer's Fashion-MNIST batches are 1×28×28 (ttm.data)
SMALL = "timm/mobilenetv3_small_100"


@pytest.mark.parametrize("arch", sorted(TIMM_PARAMS))
def test_parameter_counts_are_timms_own(arch):
    with torch.device("meta"):
        ours = build_model(arch, num_classes=10, in_channels=CHANNELS)
        theirs = timm.create_model(arch.removeprefix("timm/"), pretrained=False, num_classes=10, in_chans=1)
    assert count_params(ours) == sum(p.numel() for p in theirs.parameters()) == TIMM_PARAMS[arch]


@pytest.mark.parametrize("arch", sorted(TIMM_PARAMS))
def test_forward_at_fashion_mnists_shape(arch):
    model = build_model(arch, num_classes=10, in_channels=CHANNELS)
    x = torch.randn(2, CHANNELS, SIZE, SIZE)
    with torch.no_grad():  # the shapes are the question, not the gradients (autograd would double the cost)
        out = model.train()(x)  # a training step's forward: BatchNorm on the batch's statistics, at 1×1 at the end
        assert isinstance(out, torch.Tensor) and out.shape == (2, 10)
        assert model.eval()(x[:1]).shape == (1, 10)


def test_a_vit_made_for_224_says_so_at_28():
    with pytest.raises(ValueError, match=r"cannot take a 1×28×28 input: .*timm made it for 224×224 inputs"):
        describe_arch("timm/vit_tiny_patch16_224", 10, CHANNELS, SIZE)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_a_timm_state_dict_teaches(tmp_path, suffix):
    """The file a timm user has (model.state_dict(), saved with torch.save or safetensors) loads as the teacher, and
    fits the shapes the API's inspection records for the architecture."""
    trained = timm.create_model(SMALL.removeprefix("timm/"), pretrained=False, num_classes=10, in_chans=1).eval()
    path = tmp_path / f"teacher{suffix}"
    if suffix == ".pt":
        torch.save(trained.state_dict(), path)
    else:
        save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, path)
    teacher = load_teacher(arch=SMALL, weights=str(path), num_classes=10, in_channels=CHANNELS)
    x = torch.randn(2, CHANNELS, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(teacher(x), trained(x))
    expected = describe_arch(SMALL, 10, CHANNELS, SIZE)["tensors"]
    assert shape_mismatch(expected, describe_file(path, 1 << 30)["tensors"], "teacher weights") is None


def test_weights_of_another_architecture_are_refused_naming_the_first_mismatch(tmp_path):
    path = tmp_path / "resnet20.pt"
    torch.save(build_model("resnet20", num_classes=10, in_channels=CHANNELS).state_dict(), path)
    said = "first mismatch at 'conv1.weight': file has (16, 1, 3, 3), model expects (64, 1, 7, 7)"
    with pytest.raises(WeightsError, match=said.replace("(", r"\(").replace(")", r"\)")):
        load_teacher(arch="timm/resnet18", weights=str(path), num_classes=10, in_channels=CHANNELS)
    # the API's admission compares the same shapes, from its inspection, before a job is queued
    expected = describe_arch("timm/resnet18", 10, CHANNELS, SIZE)["tensors"]
    assert said in (shape_mismatch(expected, describe_file(path, 1 << 30)["tensors"], "teacher weights") or "")


def test_an_unknown_timm_name_gets_did_you_mean():
    with pytest.raises(ValueError) as err:
        build_model("timm/resnet999", num_classes=10)
    assert str(err.value) == ("unknown architecture 'timm/resnet999'; did you mean timm/resnet50 or timm/resnet34 "
                              "or timm/resnet26?")


def test_a_pretrained_tag_is_refused_by_the_spec_with_the_architectures_name():
    with pytest.raises(SpecError) as err:
        parse_spec({"name": "x", "student": {"arch": "timm/resnet18.a1_in1k"}, "dataset": {"name": "fashion_mnist"}})
    assert "never downloaded here: name the architecture, timm/resnet18" in str(err.value)


def test_without_timm_the_extra_is_named(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "timm", None)  # what `import timm` and find_spec see where it is not installed
    with pytest.raises(ValueError, match=r"timm/resnet18 is a timm model and timm is not installed: "
                                         r"pip install 'ttm\[timm\]'"):
        build_model("timm/resnet18", num_classes=10)
    spec = tmp_path / "timm.yaml"
    spec.write_text("name: x\nstudent: {arch: timm/resnet18}\ndataset: {name: fashion_mnist}\n")
    result = CliRunner().invoke(app, ["train", str(spec), "--out", str(tmp_path / "runs")])
    said = " ".join(result.output.split())  # rich wraps long lines
    assert result.exit_code == 2 and "student.arch: timm/resnet18 is a timm model" in said
    assert "pip install 'ttm[timm]'" in said
    assert not (tmp_path / "runs").exists()  # said before any data was loaded
