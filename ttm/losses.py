"""The distillation losses: one small function per method, one registry, one dispatcher.

Each function attaches itself with `@loss_for(SpecClass)` to the kind its spec class registered in
`ttm.registry.LOSS_KINDS`; `LOSSES` (kind → function) is derived from that table, and importing this module fails if a
registered kind has no function. Adding a loss: its spec class with `@loss_spec` in `ttm.spec`, its function here.

Every loss has the same shape, `fn(z, v, y, cfg, epoch) -> {"loss": total, part: value, ...}`:
z student logits [B, K], v teacher logits [B, K] (None for plain CE), y int64 labels [B], cfg the loss's spec
object from `ttm.spec`, epoch the 1-based current epoch (only DKD's warm-up uses it).

Conventions, the same for every loss:
- Every value is a 0-dim tensor, a mean over the batch. KL divergences are summed over classes.
- A part is its term *before* the weight the user chose (ce_weight, kd_weight, β, α, inter_weight, ...) and *with*
  the factors the method itself fixes (T² in KD, DKD and DIST; U_γ inside WTTM's term). So
  "loss" = ce_weight·ce + Σ weight·part, and DKD's warm-up factor multiplies its weighted parts as well.
- Half-precision inputs (bf16/fp16, as under autocast) are upcast to float32; float32/float64 stay as they are.
- Everything runs in log space (log_softmax, logsumexp) so that γ down to 0.05, one-hot-like teachers and logits of
  magnitude 100 give finite values and gradients. A KL is Σ p·(log p − log q) with p = exp(log p), so 0·(−inf)
  never appears.
- The teacher carries no gradient. No loss reads a tensor's value on the host (.item(), bool(tensor), branching),
  so a training step built on them can be captured in a CUDA graph.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ttm.registry import LOSS_KINDS, kind_of
from ttm.spec import CELoss, DISTLoss, DKDLoss, KDLoss, TTMLoss, WTTMLoss

Parts = dict[str, Tensor]
LossFn = Callable[..., Parts]


def loss_for(spec_cls: type) -> Callable[[LossFn], LossFn]:
    """Decorator: make `fn` the loss of `spec_cls`'s kind (one function per kind)."""

    def attach(fn: LossFn) -> LossFn:
        entry = LOSS_KINDS[kind_of(spec_cls)]
        if entry.fn is not None and entry.fn is not fn:
            raise ValueError(f"loss kind {entry.kind!r} has two functions: {entry.fn.__name__} and {fn.__name__}")
        entry.fn = fn
        return fn

    return attach


# ---------------------------------------------------------------------------------------------- helpers
def upcast(x: Tensor) -> Tensor:
    """Compute in at least float32: bf16/fp16 logits (autocast) lose the digits a KL or a power sum needs."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _kl(log_p: Tensor, log_q: Tensor, keep: Tensor | None = None) -> Tensor:
    """Per-sample KL(p ‖ q) = Σ_j p_j (log p_j − log q_j), over the classes where `keep` is True (all if None)."""
    diff = log_p - log_q
    if keep is not None:
        # exp(-inf) = 0 and a zeroed difference: dropped classes add exactly 0 and pass back no gradient,
        # whatever value (even a huge one) log p holds there.
        log_p = log_p.masked_fill(~keep, float("-inf"))
        diff = diff.masked_fill(~keep, 0.0)
    return (log_p.exp() * diff).sum(dim=1)


def _entropy(log_p: Tensor) -> Tensor:
    """Per-sample Shannon entropy in nats."""
    return -(log_p.exp() * log_p).sum(dim=1)


def teacher_transform(v: Tensor, gamma: float) -> tuple[Tensor, Tensor]:
    """(log p_t^T, U_γ(p_t)) per sample, as the paper defines them.

    p_t^T = softmax(v)^γ / Σ_j softmax(v)_j^γ, which equals softmax(γ·v) (eq. 9); U_γ is that denominator,
    taken from the untempered teacher softmax. Both come from log-space reductions, never from p**γ, which would
    underflow to 0 for a confident teacher: with lse = logsumexp, log U_γ = lse(γ·log_softmax(v))
    = lse(γ·v) − γ·lse(v). 1 ≤ U_γ ≤ K^(1−γ), so exp(log U) cannot overflow.
    """
    scaled = gamma * v
    lse_scaled = torch.logsumexp(scaled, dim=1, keepdim=True)
    log_u = lse_scaled - gamma * torch.logsumexp(v, dim=1, keepdim=True)
    return scaled - lse_scaled, log_u.squeeze(1).exp()


def _with_ce(ce_weight: float, ce: Tensor, distill: Tensor) -> Tensor:
    # A zero weight drops the CE term outright (WTTM without labels): the total then cannot depend on y at all.
    return distill if ce_weight == 0 else ce_weight * ce + distill


def _prepare(z: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    return upcast(z), upcast(v.detach())


# ---------------------------------------------------------------------------------------------- losses
@loss_for(CELoss)
def ce_loss(z: Tensor, v: Tensor | None, y: Tensor, cfg, epoch: int = 1) -> Parts:
    """H(y, q). The teacher, if given, is ignored."""
    ce = F.cross_entropy(upcast(z), y)
    return {"loss": ce, "ce": ce}


@loss_for(KDLoss)
def kd_loss(z: Tensor, v: Tensor, y: Tensor, cfg, epoch: int = 1) -> Parts:
    """Hinton: ce_weight·CE + kd_weight·kd, kd = T²·KL(softmax(v/T) ‖ softmax(z/T))."""
    z, v = _prepare(z, v)
    t = cfg.temperature
    kd = t * t * _kl(F.log_softmax(v / t, dim=1), F.log_softmax(z / t, dim=1)).mean()
    ce = F.cross_entropy(z, y)
    return {"loss": _with_ce(cfg.ce_weight, ce, cfg.kd_weight * kd), "ce": ce, "kd": kd}


@loss_for(TTMLoss)
def ttm_loss(z: Tensor, v: Tensor, y: Tensor, cfg, epoch: int = 1) -> Parts:
    """TTM: ce_weight·CE + β·ttm, ttm = KL(p_t^T ‖ q); no temperature on the student and no T²."""
    z, v = _prepare(z, v)
    log_pt = F.log_softmax(cfg.gamma * v, dim=1)  # = log p_t^T (eq. 9); TTM needs no U
    log_q = F.log_softmax(z, dim=1)
    ttm = _kl(log_pt, log_q).mean()
    ce = F.nll_loss(log_q, y)  # = cross_entropy(z, y), sharing log q
    return {"loss": _with_ce(cfg.ce_weight, ce, cfg.beta * ttm), "ce": ce, "ttm": ttm}


@loss_for(WTTMLoss)
def wttm_loss(z: Tensor, v: Tensor, y: Tensor, cfg, epoch: int = 1) -> Parts:
    """WTTM: ce_weight·CE + β·wttm, wttm = mean_i U_γ(p_t,i)·KL_i(p_t^T ‖ q); "u" is the batch mean of U_γ."""
    z, v = _prepare(z, v)
    log_pt, u = teacher_transform(v, cfg.gamma)
    log_q = F.log_softmax(z, dim=1)
    wttm = (u * _kl(log_pt, log_q)).mean()
    ce = F.nll_loss(log_q, y)  # = cross_entropy(z, y), sharing log q
    return {"loss": _with_ce(cfg.ce_weight, ce, cfg.beta * wttm), "ce": ce, "wttm": wttm, "u": u.mean()}


def _dkd_warmup(epoch, warmup_epochs: int):
    """min(epoch / warmup_epochs, 1), as in mdistiller; a tensor epoch stays a tensor (no host read)."""
    if warmup_epochs == 0:
        return 1.0
    ratio = epoch / warmup_epochs
    return ratio.clamp(max=1.0) if isinstance(ratio, Tensor) else min(ratio, 1.0)


@loss_for(DKDLoss)
def dkd_loss(z: Tensor, v: Tensor, y: Tensor, cfg, epoch: int = 1) -> Parts:
    """Decoupled KD (Zhao et al. 2022): ce_weight·CE + warm-up·(α·tckd + β·nckd), both parts × T².

    tckd: binary KL between the teacher's and the student's (target, non-target) masses at temperature T.
    nckd: KL between the two distributions renormalised over the non-target classes. mdistiller masks the target
    with a large negative logit; dropping it from the sums here is the same quantity with no scale to pick.
    """
    z, v = _prepare(z, v)
    t = cfg.temperature
    log_s, log_t = F.log_softmax(z / t, dim=1), F.log_softmax(v / t, dim=1)
    target = F.one_hot(y, z.shape[1]).bool()
    others = ~target

    def split(log_p: Tensor) -> tuple[Tensor, Tensor]:
        # log of the target mass and of the non-target mass, [B, 1] each; logsumexp keeps a tiny mass accurate
        log_gt = log_p.gather(1, y.unsqueeze(1))
        log_nt = torch.logsumexp(log_p.masked_fill(target, float("-inf")), dim=1, keepdim=True)
        return log_gt, log_nt

    s_gt, s_nt = split(log_s)
    t_gt, t_nt = split(log_t)
    tckd = _kl(torch.cat([t_gt, t_nt], dim=1), torch.cat([s_gt, s_nt], dim=1)).mean() * t * t
    nckd = _kl(log_t - t_nt, log_s - s_nt, keep=others).mean() * t * t
    ce = F.cross_entropy(z, y)
    distill = _dkd_warmup(epoch, cfg.warmup_epochs) * (cfg.alpha * tckd + cfg.beta * nckd)
    return {"loss": _with_ce(cfg.ce_weight, ce, distill), "ce": ce, "tckd": tckd, "nckd": nckd}


def _pearson(a: Tensor, b: Tensor, dim: int, eps: float = 1e-8) -> Tensor:
    """Pearson correlation along `dim`. The denominator is sqrt(‖a‖²‖b‖² + eps²) rather than ‖a‖‖b‖ + eps:
    the same value away from zero, and a finite gradient when a row has no variance (‖a‖ = 0)."""
    a = a - a.mean(dim=dim, keepdim=True)
    b = b - b.mean(dim=dim, keepdim=True)
    return (a * b).sum(dim=dim) / torch.sqrt((a * a).sum(dim=dim) * (b * b).sum(dim=dim) + eps * eps)


@loss_for(DISTLoss)
def dist_loss(z: Tensor, v: Tensor, y: Tensor, cfg, epoch: int = 1) -> Parts:
    """DIST (Huang et al. 2022): ce_weight·CE + inter_weight·inter + intra_weight·intra, with y_s = softmax(z/τ),
    y_t = softmax(v/τ); inter = τ²·(1 − mean_i Pearson over classes), intra = τ²·(1 − mean_c Pearson over batch)."""
    z, v = _prepare(z, v)
    tau = cfg.temperature
    ys, yt = F.softmax(z / tau, dim=1), F.softmax(v / tau, dim=1)
    inter = tau * tau * (1 - _pearson(ys, yt, dim=1).mean())
    intra = tau * tau * (1 - _pearson(ys, yt, dim=0).mean())
    ce = F.cross_entropy(z, y)
    distill = cfg.inter_weight * inter + cfg.intra_weight * intra
    return {"loss": _with_ce(cfg.ce_weight, ce, distill), "ce": ce, "inter": inter, "intra": intra}


_missing = [k for k, entry in LOSS_KINDS.items() if entry.fn is None]
if _missing:
    raise ImportError(f"loss kinds registered in ttm.spec without a function in ttm.losses: {', '.join(_missing)}")
LOSSES: dict[str, LossFn] = {k: entry.fn for k, entry in LOSS_KINDS.items() if entry.fn is not None}  # all, above


def compute_loss(cfg, z: Tensor, v: Tensor | None, y: Tensor, epoch: int = 1) -> Parts:
    """The loss the spec names: LOSSES[cfg.kind](z, v, y, cfg, epoch)."""
    return LOSSES[cfg.kind](z, v, y, cfg, epoch)


# ---------------------------------------------------------------------------------------------- statistics
@torch.no_grad()
def output_stats(z: Tensor, v: Tensor | None, gamma: float) -> Parts:
    """Per-batch SUMS over samples (the trainer adds them up over an epoch on the device and divides once):
    "entropy" = Σ H(q), and with a teacher "kl" = Σ KL(p_t^T ‖ q) with p_t^T = softmax(γ·v), "u" = Σ U_γ(p_t)."""
    log_q = F.log_softmax(upcast(z), dim=1)
    stats = {"entropy": _entropy(log_q).sum()}
    if v is not None:
        log_pt, u = teacher_transform(upcast(v), gamma)
        stats["kl"] = _kl(log_pt, log_q).sum()
        stats["u"] = u.sum()
    return stats
