"""The losses against the paper's identities (NOTES.md), in float64, plus stability in float32/bf16."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ttm.losses import LOSSES, compute_loss, output_stats, teacher_transform
from ttm.spec import CELoss, DISTLoss, DKDLoss, KDLoss, TTMLoss, WTTMLoss

F64 = torch.float64
B, K = 6, 10


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def logits(seed: int, scale: float = 3.0, shape=(B, K), dtype=F64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=g, dtype=F64)).to(dtype)


def labels(seed: int, n: int = B) -> torch.Tensor:
    return torch.randint(0, K, (n,), generator=torch.Generator().manual_seed(seed))


def grad_of(loss_fn, z: torch.Tensor) -> torch.Tensor:
    z = z.detach().clone().requires_grad_(True)
    loss_fn(z).backward()
    return z.grad


def renyi(log_p: torch.Tensor, alpha: float) -> torch.Tensor:
    """Per-sample Rényi entropy of order alpha."""
    return torch.logsumexp(alpha * log_p, dim=1) / (1 - alpha)


def shannon(log_p: torch.Tensor) -> torch.Tensor:
    return -(log_p.exp() * log_p).sum(1)


def kl_ref(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Per-sample KL from probabilities (safe for the moderate logits used here)."""
    return (p * (p.log() - q.log())).sum(1)


ALL_CFGS = [
    CELoss(kind="ce"),
    KDLoss(kind="kd"),
    TTMLoss(kind="ttm", gamma=0.3, beta=7.0),
    WTTMLoss(kind="wttm", gamma=0.3, beta=1.5),
    DKDLoss(kind="dkd", warmup_epochs=5),
    DISTLoss(kind="dist"),
]
EXPECTED_KEYS = {
    "ce": {"loss", "ce"},
    "kd": {"loss", "ce", "kd"},
    "ttm": {"loss", "ce", "ttm"},
    "wttm": {"loss", "ce", "wttm", "u"},
    "dkd": {"loss", "ce", "tckd", "nckd"},
    "dist": {"loss", "ce", "inter", "intra"},
}


# ---------------------------------------------------------------------------------------------- eq. 9
@pytest.mark.parametrize("gamma", [0.05, 0.1, 0.3, 0.7, 1.0])
def test_power_transform_is_temperature_scaling(gamma):
    v = logits(1)
    p = F.softmax(v, dim=1)
    powered = p**gamma / (p**gamma).sum(1, keepdim=True)
    log_pt, u = teacher_transform(v, gamma)
    torch.testing.assert_close(powered, F.softmax(gamma * v, dim=1))
    torch.testing.assert_close(log_pt.exp(), powered)
    torch.testing.assert_close(u, (p**gamma).sum(1))


# ---------------------------------------------------------------------------------------------- eq. 14-19
@pytest.mark.parametrize("temp", [1.5, 4.0, 10.0])
def test_kl_decomposition_eq15(temp):
    z, v = logits(2), logits(3)
    p_t = F.softmax(v / temp, dim=1)
    q, q_t = F.softmax(z, dim=1), F.softmax(z / temp, dim=1)
    lhs = kl_ref(p_t, q)
    rhs = (temp * kl_ref(p_t, q_t) - (temp - 1) * renyi(q.log(), 1 / temp)
           + (temp - 1) * shannon(p_t.log()))
    torch.testing.assert_close(lhs, rhs)


@pytest.mark.parametrize("temp,lam", [(4.0, 0.9), (2.0, 0.5), (10.0, 0.3)])
def test_ttm_is_kd_plus_renyi_regulariser(temp, lam):
    """eq. 16-19: TTM(β) = KD(λ)/(1−λ) − β(T−1)·H_{1/T}(q) + β(T−1)·H(p_t^T), β = λT/(1−λ)."""
    z, v, y = logits(4), logits(5), labels(6)
    beta = lam * temp / (1 - lam)
    ttm = TTMLoss(kind="ttm", gamma=1 / temp, beta=beta)
    kd = KDLoss(kind="kd", temperature=temp, kd_weight=lam, ce_weight=1 - lam)

    def ttm_fn(zz):
        return LOSSES["ttm"](zz, v, y, ttm)["loss"]

    def kd_plus_renyi(zz):
        log_q = F.log_softmax(zz, dim=1)
        return (LOSSES["kd"](zz, v, y, kd)["loss"] / (1 - lam)
                - beta * (temp - 1) * renyi(log_q, 1 / temp).mean())

    const = beta * (temp - 1) * shannon(F.log_softmax(v / temp, dim=1)).mean()
    torch.testing.assert_close(ttm_fn(z), kd_plus_renyi(z) + const)
    # the teacher entropy is a constant: the two objectives train the student identically
    torch.testing.assert_close(grad_of(ttm_fn, z), grad_of(kd_plus_renyi, z))


# ---------------------------------------------------------------------------------------------- eq. 20-21
@pytest.mark.parametrize("gamma", [0.1, 0.25, 1.0])
def test_ttm_gradient_eq20(gamma):
    z, v, y = logits(7), logits(8), labels(9)
    cfg = TTMLoss(kind="ttm", gamma=gamma, beta=1.0, ce_weight=0.0)
    g = grad_of(lambda zz: LOSSES["ttm"](zz, v, y, cfg)["loss"], z) * B  # undo the batch mean
    torch.testing.assert_close(g, F.softmax(z, dim=1) - F.softmax(gamma * v, dim=1))


@pytest.mark.parametrize("temp", [2.0, 4.0])
def test_kd_gradient_eq21(temp):
    z, v, y = logits(10), logits(11), labels(12)
    cfg = KDLoss(kind="kd", temperature=temp, kd_weight=1.0, ce_weight=0.0)
    g = grad_of(lambda zz: LOSSES["kd"](zz, v, y, cfg)["loss"], z) * B / temp**2  # undo batch mean and T²
    torch.testing.assert_close(g, (F.softmax(z / temp, dim=1) - F.softmax(v / temp, dim=1)) / temp)


def test_kd_matches_kl_div_reference():
    z, v, y = logits(13), logits(14), labels(15)
    cfg = KDLoss(kind="kd", temperature=4.0)
    out = LOSSES["kd"](z, v, y, cfg)
    ref = F.kl_div(F.log_softmax(z / 4, dim=1), F.softmax(v / 4, dim=1), reduction="batchmean") * 16
    torch.testing.assert_close(out["kd"], ref)
    torch.testing.assert_close(out["loss"], 0.1 * F.cross_entropy(z, y) + 0.9 * ref)


# ---------------------------------------------------------------------------------------------- U_γ
@pytest.mark.parametrize("gamma", [0.05, 0.2, 0.5, 0.9, 1.0])
def test_power_sum_bounds(gamma):
    v = logits(16, scale=5.0, shape=(64, K))
    _, u = teacher_transform(v, gamma)
    upper = K ** (1 - gamma)
    assert torch.all(u >= 1 - 1e-12) and torch.all(u <= upper + 1e-12)

    uniform = torch.zeros(3, K, dtype=F64)
    torch.testing.assert_close(teacher_transform(uniform, gamma)[1], torch.full((3,), upper, dtype=F64))
    peaked = torch.full((3, K), -1000.0, dtype=F64)
    peaked[:, 0] = 1000.0
    torch.testing.assert_close(teacher_transform(peaked, gamma)[1], torch.ones(3, dtype=F64))


# ---------------------------------------------------------------------------------------------- WTTM
def test_wttm_with_constant_u_is_ttm():
    """Rows that are permutations of one logit vector share U_γ: then WTTM(β) == TTM(β·U)."""
    gamma, beta = 0.2, 2.0
    base = logits(17, shape=(K,))
    g = torch.Generator().manual_seed(18)
    v = torch.stack([base[torch.randperm(K, generator=g)] for _ in range(B)])
    z, y = logits(19), labels(20)
    _, u = teacher_transform(v, gamma)
    torch.testing.assert_close(u, u[0].expand(B))
    c = float(u[0])
    wttm = WTTMLoss(kind="wttm", gamma=gamma, beta=beta)
    ttm = TTMLoss(kind="ttm", gamma=gamma, beta=beta * c)

    def w(zz):
        return LOSSES["wttm"](zz, v, y, wttm)["loss"]

    def t(zz):
        return LOSSES["ttm"](zz, v, y, ttm)["loss"]

    torch.testing.assert_close(w(z), t(z))
    torch.testing.assert_close(grad_of(w, z), grad_of(t, z))
    out = LOSSES["wttm"](z, v, y, wttm)
    torch.testing.assert_close(out["u"], u[0])


def test_wttm_weights_each_sample_by_its_u():
    z, v, y = logits(21), logits(22, scale=4.0), labels(23)
    cfg = WTTMLoss(kind="wttm", gamma=0.3, beta=1.5)
    out = LOSSES["wttm"](z, v, y, cfg)
    p = F.softmax(v, dim=1)
    u = (p**0.3).sum(1)
    ref = (u * kl_ref(F.softmax(0.3 * v, dim=1), F.softmax(z, dim=1))).mean()
    torch.testing.assert_close(out["wttm"], ref)
    torch.testing.assert_close(out["u"], u.mean())
    torch.testing.assert_close(out["loss"], F.cross_entropy(z, y) + 1.5 * ref)


# ---------------------------------------------------------------------------------------------- totals
@pytest.mark.parametrize("cfg", ALL_CFGS, ids=lambda c: c.kind)
def test_keys_and_loss_is_weighted_sum(cfg):
    z, v, y = logits(24), logits(25), labels(26)
    epoch = 2
    out = compute_loss(cfg, z, v, y, epoch=epoch)
    assert set(out) == EXPECTED_KEYS[cfg.kind]
    assert all(t.dim() == 0 for t in out.values())
    torch.testing.assert_close(out["ce"], F.cross_entropy(z, y))
    w = {
        "ce": lambda: out["ce"],
        "kd": lambda: cfg.ce_weight * out["ce"] + cfg.kd_weight * out["kd"],
        "ttm": lambda: cfg.ce_weight * out["ce"] + cfg.beta * out["ttm"],
        "wttm": lambda: cfg.ce_weight * out["ce"] + cfg.beta * out["wttm"],
        "dkd": lambda: cfg.ce_weight * out["ce"] + epoch / cfg.warmup_epochs * (
            cfg.alpha * out["tckd"] + cfg.beta * out["nckd"]),
        "dist": lambda: cfg.ce_weight * out["ce"] + cfg.inter_weight * out["inter"]
        + cfg.intra_weight * out["intra"],
    }[cfg.kind]()
    torch.testing.assert_close(out["loss"], w)


def test_compute_loss_dispatches_by_kind():
    assert set(LOSSES) == {"ce", "kd", "ttm", "wttm", "dkd", "dist"}
    z, v, y = logits(27), logits(28), labels(29)
    for cfg in ALL_CFGS:
        direct = LOSSES[cfg.kind](z, v, y, cfg, 3)
        via = compute_loss(cfg, z, v, y, epoch=3)
        assert direct.keys() == via.keys()
        for key in direct:
            torch.testing.assert_close(via[key], direct[key])
    ce = compute_loss(CELoss(kind="ce"), z, None, y)
    torch.testing.assert_close(ce["loss"], F.cross_entropy(z, y))


def test_teacher_gets_no_gradient():
    z, v, y = logits(30).requires_grad_(True), logits(31).requires_grad_(True), labels(32)
    for cfg in ALL_CFGS[1:]:
        compute_loss(cfg, z, v, y)["loss"].backward()
    assert v.grad is None and z.grad is not None


# ---------------------------------------------------------------------------------------------- no CE
@pytest.mark.parametrize("cfg", [
    WTTMLoss(kind="wttm", gamma=0.5, beta=1.0, ce_weight=0.0),
    TTMLoss(kind="ttm", gamma=0.2, beta=8.0, ce_weight=0.0),
    KDLoss(kind="kd", ce_weight=0.0, kd_weight=1.0),
    DKDLoss(kind="dkd", ce_weight=0.0),
    DISTLoss(kind="dist", ce_weight=0.0),
], ids=lambda c: c.kind)
def test_zero_ce_weight_ignores_labels(cfg):
    z, v = logits(33), logits(34)
    a = compute_loss(cfg, z, v, labels(35), epoch=30)["loss"]
    b = compute_loss(cfg, z, v, (labels(35) + 1) % K, epoch=30)["loss"]
    if cfg.kind == "dkd":  # DKD's split into target / non-target needs the labels by construction
        assert not torch.equal(a, b)
    else:
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------- stats
def test_output_stats_are_sums():
    z, v = logits(36), logits(37)
    gamma = 0.3
    s = output_stats(z, v, gamma)
    assert set(s) == {"entropy", "kl", "u"} and all(t.dim() == 0 for t in s.values())
    q = F.softmax(z, dim=1)
    torch.testing.assert_close(s["entropy"] / B, shannon(q.log()).mean())
    torch.testing.assert_close(s["kl"] / B, kl_ref(F.softmax(gamma * v, dim=1), q).mean())
    torch.testing.assert_close(s["u"] / B, (F.softmax(v, dim=1) ** gamma).sum(1).mean())
    y = labels(38)
    torch.testing.assert_close(s["kl"] / B, LOSSES["ttm"](z, v, y, TTMLoss(kind="ttm", gamma=gamma, beta=1))["ttm"])
    torch.testing.assert_close(s["u"] / B, LOSSES["wttm"](z, v, y, WTTMLoss(kind="wttm", gamma=gamma, beta=1))["u"])
    only = output_stats(z, None, gamma)
    assert set(only) == {"entropy"}
    torch.testing.assert_close(only["entropy"], s["entropy"])
    assert output_stats(z.requires_grad_(True), v, gamma)["kl"].grad_fn is None


# ---------------------------------------------------------------------------------------------- DKD, DIST
def dkd_reference(z, v, y, alpha, beta, temp):
    """DKD written the direct way, with probabilities (fine for moderate float64 logits)."""
    gt = F.one_hot(y, K).bool()
    ps, pt = F.softmax(z / temp, dim=1), F.softmax(v / temp, dim=1)
    bs = torch.stack([ps[gt], ps[~gt].view(len(y), -1).sum(1)], dim=1)
    bt = torch.stack([pt[gt], pt[~gt].view(len(y), -1).sum(1)], dim=1)
    tckd = kl_ref(bt, bs).mean() * temp**2
    ns = F.softmax(z[~gt].view(len(y), -1) / temp, dim=1)
    nt = F.softmax(v[~gt].view(len(y), -1) / temp, dim=1)
    nckd = kl_ref(nt, ns).mean() * temp**2
    return tckd, nckd


def test_dkd_matches_reference_and_warms_up():
    z, v, y = logits(39), logits(40), labels(41)
    cfg = DKDLoss(kind="dkd", alpha=1.0, beta=8.0, temperature=4.0, warmup_epochs=20)
    tckd, nckd = dkd_reference(z, v, y, 1.0, 8.0, 4.0)
    for epoch, warm in [(1, 1 / 20), (10, 0.5), (20, 1.0), (200, 1.0)]:
        out = compute_loss(cfg, z, v, y, epoch=epoch)
        torch.testing.assert_close(out["tckd"], tckd)
        torch.testing.assert_close(out["nckd"], nckd)
        torch.testing.assert_close(out["loss"], F.cross_entropy(z, y) + warm * (tckd + 8 * nckd))
    no_warm = DKDLoss(kind="dkd", warmup_epochs=0)
    out = compute_loss(no_warm, z, v, y, epoch=1)
    torch.testing.assert_close(out["loss"], out["ce"] + out["tckd"] + 8 * out["nckd"])
    tensor_epoch = compute_loss(cfg, z, v, y, epoch=torch.tensor(10.0, dtype=F64))["loss"]
    torch.testing.assert_close(tensor_epoch, compute_loss(cfg, z, v, y, epoch=10)["loss"])


def dist_reference(z, v, tau):
    ys, yt = F.softmax(z / tau, dim=1), F.softmax(v / tau, dim=1)

    def pearson_rows(a, b):
        return torch.stack([torch.corrcoef(torch.stack([ra, rb]))[0, 1] for ra, rb in zip(a, b)])

    inter = tau**2 * (1 - pearson_rows(ys, yt).mean())
    intra = tau**2 * (1 - pearson_rows(ys.T, yt.T).mean())
    return inter, intra


def test_dist_matches_reference():
    z, v, y = logits(42), logits(43), labels(44)
    cfg = DISTLoss(kind="dist", temperature=4.0, inter_weight=2.0, intra_weight=3.0)
    out = compute_loss(cfg, z, v, y)
    inter, intra = dist_reference(z, v, 4.0)
    torch.testing.assert_close(out["inter"], inter)
    torch.testing.assert_close(out["intra"], intra)
    torch.testing.assert_close(out["loss"], F.cross_entropy(z, y) + 2 * inter + 3 * intra)


@pytest.mark.parametrize("cfg", [DKDLoss(kind="dkd", warmup_epochs=1), DISTLoss(kind="dist")], ids=["dkd", "dist"])
def test_dkd_dist_zero_at_teacher_positive_elsewhere(cfg):
    z, v, y = logits(45), logits(46), labels(47)
    parts = ("tckd", "nckd") if cfg.kind == "dkd" else ("inter", "intra")
    same = compute_loss(cfg, v.clone(), v, y)
    for part in parts:
        assert abs(float(same[part])) < 1e-8, (part, float(same[part]))
    torch.testing.assert_close(same["loss"], same["ce"], rtol=0, atol=1e-7)
    other = compute_loss(cfg, z, v, y)
    for part in parts:
        assert float(other[part]) > 1e-3
    torch.testing.assert_close(other["ce"], F.cross_entropy(z, y))


# ---------------------------------------------------------------------------------------------- stability
def extreme_inputs(dtype):
    """Student logits ±100, teachers: one-hot-like (one 100, others −100) and random ±100; one row each way."""
    g = torch.Generator().manual_seed(48)
    n = 8
    z = 100.0 * torch.sign(torch.randn(n, K, generator=g))
    z[0] = -100.0
    z[0, 3] = 100.0                 # confident student that agrees with the one-hot teacher ...
    z[1] = 100.0
    z[1, 4] = -100.0                # ... and one that is confidently wrong about it
    z[2] = 0.0                      # uniform student
    v = torch.full((n, K), -100.0)
    v[torch.arange(n), torch.arange(n) % K] = 100.0
    v[0] = -100.0
    v[0, 3] = 100.0
    v[1] = -100.0
    v[1, 4] = 100.0
    v[n // 2:] = 100.0 * torch.sign(torch.randn(n - n // 2, K, generator=g))
    v[-1] = 0.0                     # uniform teacher
    y = torch.arange(n) % K
    y[1] = 4
    return z.to(dtype), v.to(dtype), y


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("gamma", [0.05, 0.1, 0.3, 1.0])
def test_extremes_stay_finite(dtype, gamma):
    z0, v, y = extreme_inputs(dtype)
    temp = 1 / gamma
    cfgs = [
        CELoss(kind="ce"),
        KDLoss(kind="kd", temperature=temp),
        TTMLoss(kind="ttm", gamma=gamma, beta=100.0),
        WTTMLoss(kind="wttm", gamma=gamma, beta=4.0),
        WTTMLoss(kind="wttm", gamma=gamma, beta=4.0, ce_weight=0.0),
        DKDLoss(kind="dkd", temperature=temp),
        DISTLoss(kind="dist", temperature=temp),
    ]
    for cfg in cfgs:
        z = z0.clone().requires_grad_(True)
        out = compute_loss(cfg, z, v, y, epoch=5)
        for key, val in out.items():
            assert val.dtype == torch.float32, (cfg.kind, key, val.dtype)
            assert torch.isfinite(val), (cfg.kind, key, val)
        out["loss"].backward()
        assert torch.isfinite(z.grad).all(), (cfg.kind, gamma, z.grad)
    for key, val in output_stats(z0, v, gamma).items():
        assert val.dtype == torch.float32 and torch.isfinite(val), (key, val)


def test_extreme_teacher_u_is_one_and_stays_exact():
    """A one-hot-like teacher at γ = 0.05 has U = 1 + 9·e^(−10), not a power of an underflowed 0."""
    v = torch.full((1, K), -100.0)
    v[0, 0] = 100.0
    _, u = teacher_transform(v, 0.05)
    assert math.isclose(float(u), 1 + (K - 1) * math.exp(-0.05 * 200), rel_tol=1e-6)


# ---------------------------------------------------------------------------------------------- capturability
def test_losses_trace_as_one_graph():
    """fullgraph=True fails on any graph break, e.g. a host read (.item(), bool(tensor)) inside a loss: such a
    loss could not live in a CUDA-graph-captured step. The eager backend keeps this check quick on a CPU."""
    z, v, y = logits(49, dtype=torch.float32).requires_grad_(True), logits(50, dtype=torch.float32), labels(51)
    cfgs = [*ALL_CFGS, WTTMLoss(kind="wttm", gamma=0.3, beta=1.5, ce_weight=0.0)]
    try:
        for cfg in cfgs:
            step = torch.compile(lambda zz, vv, yy, c=cfg: compute_loss(c, zz, vv, yy, 3)["loss"],
                                 backend="eager", fullgraph=True)
            step(z, v, y).backward()
        stats = torch.compile(lambda zz, vv: output_stats(zz, vv, 0.3), backend="eager", fullgraph=True)
        assert set(stats(z, v)) == {"entropy", "kl", "u"}
    finally:
        torch._dynamo.reset()
