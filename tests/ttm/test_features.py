"""CRD and ITRD (ttm.features): values and gradients in float64 against the two papers' formulas written out here
again with numpy, the penultimate features of every architecture, the negatives CRD draws, and training with them
(metrics, resume to the same weights)."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from ttm.features import CRD, ITRD, FeatureTerm, Penultimate, itrd_correlation, itrd_mutual
from ttm.models import build_model
from ttm.registry import CIFAR_ARCHS, IMAGENET_ARCHS
from ttm.spec import CRDFeatures, ITRDFeatures, parse_spec
from ttm.train import train

torch.set_default_dtype(torch.float32)
F64 = torch.float64


def crd_module(n=40, classes=4, s_dim=6, t_dim=5, dim=4, k=7, seed=0) -> tuple[CRD, torch.Tensor]:
    torch.manual_seed(seed)
    labels = torch.arange(n) % classes
    cfg = CRDFeatures(kind="crd", dim=dim, negatives=k, temperature=0.5, momentum=0.3)
    return CRD(cfg, s_dim, t_dim, labels).to(F64), labels


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def crd_reference(crd: CRD, f_s, f_t, idx, contrast, z_s=None, z_t=None):
    """CRD's objective, from its paper: both anchors, NCE with noise K/N, normalisers from this batch if not given."""
    w_s, b_s = crd.embed_s.weight.detach().numpy(), crd.embed_s.bias.detach().numpy()
    w_t, b_t = crd.embed_t.weight.detach().numpy(), crd.embed_t.bias.detach().numpy()
    e_s, e_t = unit(f_s @ w_s.T + b_s), unit(f_t @ w_t.T + b_t)
    mem_s, mem_t = crd.memory_s.numpy().copy(), crd.memory_t.numpy().copy()
    n, k, tau = crd.n, crd.k, crd.tau
    h_s = np.array([[math.exp(mem_t[j] @ e_s[b] / tau) for j in contrast[b]] for b in range(len(idx))])
    h_t = np.array([[math.exp(mem_s[j] @ e_t[b] / tau) for j in contrast[b]] for b in range(len(idx))])
    z_s = h_s.mean() * n if z_s is None else z_s
    z_t = h_t.mean() * n if z_t is None else z_t

    def nce(h):
        total = 0.0
        for row in h:
            total += math.log(row[0] / (row[0] + k / n + 1e-7))
            total += sum(math.log((k / n) / (x + k / n + 1e-7)) for x in row[1:])
        return -total / len(h)

    m = crd.momentum
    new_s = unit(m * mem_s[idx] + (1 - m) * e_s)
    new_t = unit(m * mem_t[idx] + (1 - m) * e_t)
    return nce(h_s / z_s) + nce(h_t / z_t), new_s, new_t


def test_crd_value_and_memory_update_match_the_paper():
    crd, _ = crd_module()
    g = torch.Generator().manual_seed(1)
    f_s, f_t = torch.randn(8, 6, dtype=F64, generator=g), torch.randn(8, 5, dtype=F64, generator=g)
    idx = torch.tensor([0, 3, 5, 9, 12, 21, 30, 39])
    before = copy.deepcopy(crd)
    torch.manual_seed(5)
    got = crd(f_s, f_t, idx)["crd"]
    torch.manual_seed(5)  # the same draw of negatives
    contrast = torch.cat([idx[:, None], before.negatives(idx)], 1).numpy()
    want, new_s, new_t = crd_reference(before, f_s.numpy(), f_t.numpy(), idx.numpy(), contrast)
    assert got.item() == pytest.approx(want, rel=1e-10)
    np.testing.assert_allclose(crd.memory_s[idx].numpy(), new_s, rtol=1e-12)
    np.testing.assert_allclose(crd.memory_t[idx].numpy(), new_t, rtol=1e-12)
    untouched = np.setdiff1d(np.arange(crd.n), idx.numpy())
    assert torch.equal(crd.memory_s[untouched], before.memory_s[untouched])
    # the normalisers are those of the first batch, and stay
    z_s = float(crd.z_s)
    crd(f_s * 3, f_t, idx)
    assert float(crd.z_s) == z_s


def test_crd_gradients_are_those_of_its_formula():
    crd, _ = crd_module()
    g = torch.Generator().manual_seed(2)
    warm = torch.randn(8, 6, dtype=F64, generator=g), torch.randn(8, 5, dtype=F64, generator=g)
    crd(*warm, torch.arange(8))  # fixes Z, so that the objective is a function of the inputs alone
    idx = torch.tensor([1, 2, 7, 11, 19, 33])
    f_s = torch.randn(6, 6, dtype=F64, generator=g, requires_grad=True)
    f_t = torch.randn(6, 5, dtype=F64, generator=g, requires_grad=True)

    def objective(a, b):
        fresh = copy.deepcopy(crd)  # the memory update is a side effect: each evaluation starts from the same bank
        torch.manual_seed(9)
        return fresh(a, b, idx)["crd"]

    assert torch.autograd.gradcheck(objective, (f_s, f_t))


def test_crd_negatives_are_other_classes_and_cover_them():
    crd, labels = crd_module(n=60, classes=3, k=3000)
    idx = torch.tensor([0, 1, 2, 10])
    neg = crd.negatives(idx)
    assert neg.shape == (4, 3000)
    for row, i in zip(neg, idx):
        assert not (labels[row] == labels[i]).any()
        others = set(torch.nonzero(labels != labels[i]).flatten().tolist())
        assert set(row.tolist()) == others  # 3,000 draws over 40 samples: every one of them
        counts = torch.bincount(row, minlength=60)[sorted(others)].double()
        assert counts.std() / counts.mean() < 0.25  # uniform: 75 expected per sample


def itrd_reference(z_s: np.ndarray, f_t: np.ndarray, alpha: float) -> tuple[float, float]:
    """ITRD's two terms from its paper: the correlation of each standardised dimension, and Rényi's matrix form
    of the mutual information (α = 2) on trace-normalised Gram matrices of unit rows."""
    n, d = z_s.shape
    corr = 0.0
    for j in range(d):
        a = (z_s[:, j] - z_s[:, j].mean()) / z_s[:, j].std(ddof=1)
        b = (f_t[:, j] - f_t[:, j].mean()) / f_t[:, j].std(ddof=1)
        c = float((a * b).sum()) / n
        corr += abs(c - 1) ** (2 * alpha)
    s, t = unit(z_s), unit(f_t)
    g_s = np.array([[s[i] @ s[j] for j in range(n)] for i in range(n)])
    g_t = np.array([[t[i] @ t[j] for j in range(n)] for i in range(n)])
    g_st = g_s * g_t
    g_s, g_st = g_s / np.trace(g_s), g_st / np.trace(g_st)
    return math.log2(corr), float((g_s ** 2).sum() - (g_st ** 2).sum())


@pytest.mark.parametrize("alpha", [1.01, 1.5])
def test_itrd_terms_match_the_paper(alpha):
    g = torch.Generator().manual_seed(3)
    z_s, f_t = torch.randn(16, 5, dtype=F64, generator=g), torch.randn(16, 5, dtype=F64, generator=g)
    corr, mi = itrd_reference(z_s.numpy(), f_t.numpy(), alpha)
    assert itrd_correlation(z_s, f_t, alpha).item() == pytest.approx(corr, rel=1e-10)
    assert itrd_mutual(z_s, f_t).item() == pytest.approx(mi, rel=1e-10, abs=1e-14)
    z, t = z_s.clone().requires_grad_(), f_t.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: itrd_correlation(a, b, alpha), (z, t))
    assert torch.autograd.gradcheck(itrd_mutual, (z, t))


def test_itrd_maps_the_student_to_the_teachers_width():
    torch.manual_seed(0)
    cfg = ITRDFeatures(kind="itrd", corr_weight=2.0, mi_weight=0.5, alpha=1.5)
    itrd = ITRD(cfg, s_dim=7, t_dim=5).to(F64)
    f_s, f_t = torch.randn(10, 7, dtype=F64), torch.randn(10, 5, dtype=F64)
    parts = itrd(f_s, f_t)
    z_s = (f_s @ itrd.embed.weight.T + itrd.embed.bias).detach().numpy()
    corr, mi = itrd_reference(z_s, f_t.numpy(), 1.5)
    assert parts["corr"].item() == pytest.approx(corr, rel=1e-10)
    assert parts["mi"].item() == pytest.approx(mi, rel=1e-10)  # widths differ: MI on the mapped features
    assert itrd.total(parts).item() == pytest.approx(2.0 * corr + 0.5 * mi, rel=1e-10)
    same = ITRD(cfg, s_dim=5, t_dim=5).to(F64)
    assert same(f_t * 2, f_t)["mi"].item() == pytest.approx(itrd_reference(f_t.numpy(), f_t.numpy(), 1.5)[1])


@pytest.mark.parametrize("arch", [*CIFAR_ARCHS, *IMAGENET_ARCHS, "torchvision/resnet18",
                                  "torchvision/mobilenet_v3_small"])
def test_every_architecture_exposes_its_penultimate_features(arch):
    torch.manual_seed(0)
    size = 64 if arch.startswith("torchvision/") or arch in IMAGENET_ARCHS else 32
    model = build_model(arch, num_classes=10).eval()
    feats = Penultimate(model, "student")
    with torch.no_grad():
        logits = model(torch.randn(2, 3, size, size))
    f = feats.take()
    assert f.shape == (2, feats.dim)
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    torch.testing.assert_close(head(f), logits)  # the classifier's own input: nothing after it but the head


def digits_spec(features: dict, epochs: int = 2) -> object:
    return parse_spec({
        "teacher": {"zoo": "digits/resnet20"}, "student": {"arch": "resnet8"},
        "dataset": {"name": "digits", "subset": {"train": 256, "test": 100}},
        "loss": {"kind": "wttm", "gamma": 0.3, "beta": 1.5, "features": features},
        "train": {"epochs": epochs, "batch_size": 64, "lr": 0.05, "seed": 4, "device": "cpu"}})


def test_crd_trains_and_resumes_to_the_same_weights(tmp_path):
    from ttm.cli import _teacher_from_zoo

    spec = _teacher_from_zoo(digits_spec({"kind": "crd", "negatives": 256, "dim": 32}))
    whole = train(spec, tmp_path / "whole")
    train(spec, tmp_path / "split", stop_after_epoch=1)
    state = torch.load(tmp_path / "split" / "state.pt", weights_only=False)
    assert state["features"]["term.memory_s"].shape == (256, 32)  # the bank travels with the resume state
    split = train(spec, tmp_path / "split")
    assert split.best_top1 == whole.best_top1
    for name, value in torch.load(tmp_path / "whole" / "last.pt", weights_only=True).items():
        assert torch.equal(value, torch.load(tmp_path / "split" / "last.pt", weights_only=True)[name]), name
    last = whole.last_metrics
    assert last["train/crd"] > 0 and math.isfinite(last["train/loss"])
    # the total is the logit loss plus μ·CRD (μ = 0.8), averaged over the epoch's steps
    assert last["train/loss"] == pytest.approx(last["train/ce"] + 1.5 * last["train/wttm"] + 0.8 * last["train/crd"],
                                               rel=1e-5)


def test_itrd_trains_across_widths(tmp_path):
    from ttm.cli import _teacher_from_zoo

    spec = _teacher_from_zoo(digits_spec({"kind": "itrd", "alpha": 1.5}, epochs=1))
    result = train(spec, tmp_path)
    m = result.last_metrics
    assert {"train/corr", "train/mi"} <= set(m) and math.isfinite(m["train/loss"])
    # resnet8's 64 features against resnet20's 64: the same width; the map is still trained (a parameter group)
    term = FeatureTerm(spec.loss.features, build_model("resnet8", 10, 1), build_model("vgg8", 10, 1),
                       torch.zeros(4, dtype=torch.int64))
    assert term.term.embed.weight.shape == (512, 64)  # vgg8's 512 features from resnet8's 64


def test_feature_terms_refuse_what_they_cannot_read():
    from ttm.spec import SpecError

    base = {"student": {"arch": "resnet8"}, "dataset": {"name": "digits"},
            "loss": {"kind": "wttm", "gamma": 0.3, "beta": 1.5, "features": {"kind": "crd"}}}
    with pytest.raises(SpecError, match="loss.features: crd reads the teacher's penultimate features"):
        parse_spec({**base, "teacher": {"torchscript": "/t.pt"}})
    with pytest.raises(SpecError, match="set resources.gpus to 1"):
        parse_spec({**base, "teacher": {"zoo": "digits/resnet20"}, "resources": {"gpus": 2}})
    with pytest.raises(SpecError, match="did you mean 'itrd'"):
        parse_spec({**base, "teacher": {"zoo": "digits/resnet20"},
                    "loss": {**base["loss"], "features": {"kind": "itrdd"}}})
