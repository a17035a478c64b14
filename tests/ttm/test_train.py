"""The training loop on real data: a Fashion-MNIST teacher → WTTM student run, checkpoints that reload and give the
logged accuracy, resume equivalence, and a diverging run that fails with a reason."""
from __future__ import annotations

import json

import pytest
import torch

from ttm.data import make_loaders
from ttm.models import build_model
from ttm.spec import parse_spec
from ttm.train import TrainingError, evaluate, train

FM_SUBSET = {"train": 4000, "test": 1000}


def fm_spec(name, **over):
    base = {"name": name, "student": {"arch": "resnet8"}, "dataset": {"name": "fashion_mnist", "subset": FM_SUBSET},
            "train": {"epochs": 3, "batch_size": 100, "lr": 0.1, "schedule": {"kind": "cosine"}, "seed": 0}}
    base.update(over)
    return parse_spec(base)


def test_teacher_then_wttm_student_on_fashion_mnist(tmp_path):
    from ttm import zoo

    teacher = zoo.get("fashion_mnist/resnet20")  # trained by this project (tests/ttm/test_zoo.py checks the file)
    seen: list[tuple[int, dict]] = []
    spec = fm_spec("student", teacher={"arch": teacher.arch, "weights": str(teacher.path)},
                   loss={"kind": "wttm", "gamma": 0.3, "beta": 1.5})
    result = train(spec, tmp_path, on_metrics=lambda e, m: seen.append((e, m)))

    assert [e for e, _ in seen] == [0, 1, 2, 3]  # epoch 0: the teacher's accuracy, once
    assert seen[0][1]["teacher/top1"] > 85  # its 92 % on the whole test split; chance is 10 %
    for _, m in seen[1:]:
        assert all(torch.isfinite(torch.tensor(v)) for v in m.values()), m
        for key in ("train/loss", "train/ce", "train/wttm", "train/u", "test/top1", "test/top5", "test/entropy",
                    "test/kl", "test/u", "lr", "images_per_s", "elapsed_s", "eta_s"):
            assert key in m, key
        assert 1.0 <= m["test/u"] <= 10 ** 0.7 + 1e-6  # 1 ≤ U_γ ≤ K^(1−γ)
    assert result.best_top1 > 65
    assert seen[-1][1]["eta_s"] == 0

    # the best checkpoint reloads into the architecture and gives the logged accuracy
    manifest = json.loads((tmp_path / "best.json").read_text())
    assert manifest["arch"] == "resnet8" and manifest["num_classes"] == 10 and manifest["input_shape"] == [1, 28, 28]
    assert manifest["top1"] == pytest.approx(result.best_top1)
    from safetensors.torch import load_file

    model = build_model("resnet8", num_classes=10, in_channels=1)
    model.load_state_dict(load_file(str(tmp_path / "best.safetensors")))
    _, test, _, _ = make_loaders(spec.dataset, batch_size=100, device=torch.device("cpu"), seed=0)
    from contextlib import nullcontext

    assert evaluate(model, test, None, None, nullcontext)["top1"] == pytest.approx(result.best_top1, abs=1e-6)
    lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [l["epoch"] for l in lines] == [0, 1, 2, 3]
    assert "epoch 3/3" in (tmp_path / "train.log").read_text()


@pytest.mark.parametrize("loss", [{"kind": "ce"}, {"kind": "wttm", "gamma": 0.3, "beta": 1.5}])
def test_stop_and_resume_gives_the_same_weights(tmp_path, loss):
    teacher = None
    if loss["kind"] != "ce":
        torch.manual_seed(1)
        torch.save(build_model("resnet8", 10, 1).state_dict(), tmp_path / "t.pt")
        teacher = {"arch": "resnet8", "weights": str(tmp_path / "t.pt")}
    data = {"name": "r", "student": {"arch": "resnet8"}, "dataset": {"name": "digits"}, "loss": loss,
            "train": {"epochs": 3, "batch_size": 64, "lr": 0.05, "seed": 3,
                      "schedule": {"kind": "step", "milestones": [2], "factor": 0.1}}}
    if teacher:
        data["teacher"] = teacher
    spec = parse_spec(data)
    full = train(spec, tmp_path / "full")
    first = train(spec, tmp_path / "split", stop_after_epoch=1)
    assert first.stopped_early and first.epochs_done == 1
    second = train(spec, tmp_path / "split")
    assert second.epochs_done == 3 and not second.stopped_early
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "last.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert full.best_top1 == second.best_top1


def test_an_absurd_lr_fails_with_a_reason(tmp_path):
    spec = parse_spec({"name": "nan", "student": {"arch": "resnet8"}, "dataset": {"name": "digits"},
                       "train": {"epochs": 2, "batch_size": 64, "lr": 1000.0, "weight_decay": 0,
                                 "schedule": {"kind": "constant"}}})
    with pytest.raises(TrainingError, match="lower train.lr"):
        train(spec, tmp_path)


def test_the_step_within_an_epoch_is_reported(tmp_path, monkeypatch):
    """Every PROGRESS_EVERY_S (0 here: every step) the callback and progress.json say the step reached."""
    import ttm.train

    monkeypatch.setattr(ttm.train, "PROGRESS_EVERY_S", 0.0)
    spec = parse_spec({"name": "p", "student": {"arch": "resnet8"}, "dataset": {"name": "digits"},
                       "train": {"epochs": 2, "batch_size": 256, "schedule": {"kind": "constant"}}})
    seen: list[tuple[int, int, int]] = []
    train(spec, tmp_path, on_progress=lambda *p: seen.append(p))
    steps = seen[0][2]
    assert steps == 1500 // 256  # the ragged last batch is dropped
    assert seen == [(epoch, step, steps) for epoch in (1, 2) for step in range(1, steps + 1)]
    assert json.loads((tmp_path / "progress.json").read_text()) == {"epoch": 2, "step": steps, "steps": steps}


def test_with_a_validation_split_the_best_student_is_chosen_on_it(tmp_path):
    """val/* beside test/* every epoch; `best` is the epoch of the highest val top-1, and reports its test top-1."""
    spec = parse_spec({"name": "v", "student": {"arch": "resnet8"},
                       "dataset": {"name": "digits", "validation": {"fraction": 0.2}},
                       "train": {"epochs": 3, "batch_size": 128, "lr": 0.05, "schedule": {"kind": "cosine"}}})
    seen: dict[int, dict[str, float]] = {}
    result = train(spec, tmp_path, on_metrics=lambda e, m: seen.__setitem__(e, m))
    epochs = [e for e in seen if e > 0]
    assert all({"val/top1", "val/top5", "val/entropy", "test/top1"} <= set(seen[e]) for e in epochs)
    chosen = max(epochs, key=lambda e: (seen[e]["val/top1"], -e))  # the first epoch of the highest
    assert result.best_epoch == chosen and result.best_top1 == seen[chosen]["test/top1"]
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["selected_by"] == "val/top1" and best["val_top1"] == seen[chosen]["val/top1"]
    assert "1200 train / 300 validation / 297 test images" in (tmp_path / "train.log").read_text()
