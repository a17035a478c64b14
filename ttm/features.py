"""Feature terms on the penultimate features: CRD and ITRD, added to a logit loss as the paper adds them to WTTM
(its eq. 23: loss = WTTM + μ·L_X).

The penultimate features are the input of a network's classifier, its last `nn.Linear` (the pooled, flattened
features of every architecture here and of torchvision's), caught by a forward pre-hook, so no model needs a second
forward. Both terms hold trainable heads (the student's map, CRD's two embeddings), which the trainer adds to the
optimizer and to the resume state; CRD also holds a memory bank of the whole training set per network, indexed by
sample, which is why the training batches carry their samples' indices.

Formulas (f_s, f_t the student's and the teacher's features of a batch of B samples with indices i):

CRD (Tian et al., "Contrastive Representation Distillation", ICLR 2020). e_s = normalize(W_s f_s + b_s),
e_t = normalize(W_t f_t + b_t), on the unit sphere of `dim`. Memory banks M_s, M_t [N, dim]. For each sample, its
own index and K negatives drawn with replacement from the training samples of other classes. Scores
h = exp(⟨M_t[j], e_s⟩ / τ) / Z_s for the student (the teacher's memory as contrast) and h = exp(⟨M_s[j], e_t⟩ / τ) / Z_t
for the teacher; Z is N times the mean score of the first batch, then fixed. NCE with noise probability 1/N:
L = −(1/B) Σ_b [log(h⁺ / (h⁺ + K/N)) + Σ_k log((K/N) / (h⁻_k + K/N))], summed over both anchors. After the step
M[i] ← normalize(m·M[i] + (1 − m)·e), no gradient.

ITRD (Miles, Rodríguez & Mikolajczyk, "Information Theoretic Representation Distillation", BMVC 2022).
z_s = W f_s + b maps the student to the teacher's width (the same as the teacher's: then the MI term uses f_s).
Correlation: standardise each dimension over the batch (unbiased std), c_d = (1/B) Σ_b ẑ_s,bd ẑ_t,bd;
L_corr = log2 Σ_d |c_d − 1|^(2α). Mutual information: rows normalised to unit length, Gram matrices G_s = Z_s Z_sᵀ,
G_t = F_t F_tᵀ, G_st = G_s ⊙ G_t, each divided by its trace; L_mi = Σ_ij (G_s,ij² − G_st,ij²).
L_ITRD = β_corr·L_corr + β_mi·L_mi.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ttm.losses import upcast
from ttm.spec import CRDFeatures, ITRDFeatures


class FeatureError(ValueError):
    """A network whose penultimate features cannot be read, said in words a user can act on."""


def classifier_of(model: nn.Module, role: str) -> nn.Linear:
    """The network's classifier: its last `nn.Linear`, whose input is the penultimate features."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise FeatureError(f"the {role} ({type(model).__name__}) has no nn.Linear classifier, so it has no "
                           "penultimate features for loss.features: pick another architecture or drop "
                           "loss.features")
    return linears[-1]


class Penultimate:
    """Keeps the input of `model`'s classifier from its latest forward, flattened to [B, dim]."""

    def __init__(self, model: nn.Module, role: str):
        linear = classifier_of(model, role)
        self.dim = linear.in_features
        self.value: Tensor | None = None
        self.handle = linear.register_forward_pre_hook(self._keep)

    def _keep(self, module: nn.Module, args: tuple[Tensor, ...]) -> None:
        self.value = args[0].flatten(1)

    def take(self) -> Tensor:
        value, self.value = self.value, None
        if value is None:
            raise FeatureError("the network's forward did not pass through its classifier")
        return value


# ---------------------------------------------------------------------------------------------- CRD
class CRD(nn.Module):
    """CRD's heads, memory banks and NCE loss; `forward(f_s, f_t, idx)` returns {"crd": L} (both anchors)."""

    memory_s: Tensor
    memory_t: Tensor
    z_s: Tensor
    z_t: Tensor
    order: Tensor
    count: Tensor
    start: Tensor
    labels: Tensor

    def __init__(self, cfg: CRDFeatures, s_dim: int, t_dim: int, labels: Tensor):
        super().__init__()
        self.k, self.tau, self.momentum = cfg.negatives, cfg.temperature, cfg.momentum
        self.n = len(labels)
        self.embed_s = nn.Linear(s_dim, cfg.dim)
        self.embed_t = nn.Linear(t_dim, cfg.dim)
        bound = 1.0 / math.sqrt(cfg.dim / 3)  # CRD's initial bank: uniform, then used as it is
        self.register_buffer("memory_s", torch.rand(self.n, cfg.dim).mul_(2 * bound).sub_(bound))
        self.register_buffer("memory_t", torch.rand(self.n, cfg.dim).mul_(2 * bound).sub_(bound))
        # NCE's normalisers, fixed from the first batch (NaN until then; resumed with the rest of the state)
        self.register_buffer("z_s", torch.tensor(float("nan")))
        self.register_buffer("z_t", torch.tensor(float("nan")))
        self._fixed = False
        # negatives of a sample of class c are drawn from the samples of the other classes: `order` lists the
        # training samples class by class, `start[c]` and `count[c]` locate class c's run in it
        labels = labels.long()
        classes = int(labels.max()) + 1
        self.register_buffer("order", torch.argsort(labels, stable=True), persistent=False)
        count = torch.bincount(labels, minlength=classes)
        self.register_buffer("count", count, persistent=False)
        self.register_buffer("start", torch.cumsum(count, 0) - count, persistent=False)
        self.register_buffer("labels", labels, persistent=False)
        if int(count.max()) == self.n:
            raise FeatureError("loss.features crd needs training samples of at least two classes")

    def negatives(self, idx: Tensor) -> Tensor:
        """[B, K] indices of samples of classes other than each sample's own, uniform with replacement."""
        c = self.labels[idx]
        others = (self.n - self.count[c]).unsqueeze(1)  # [B, 1]
        r = (torch.rand(len(idx), self.k, device=idx.device) * others).long().clamp_(max=others - 1)
        start, count = self.start[c].unsqueeze(1), self.count[c].unsqueeze(1)
        return self.order[r + (r >= start) * count]  # skip the sample's own class run

    def _scores(self, memory: Tensor, anchor: Tensor, contrast: Tensor) -> Tensor:
        # exp(⟨memory row, anchor⟩ / τ) for the positive (column 0) and the K negatives: [B, K + 1]
        return torch.exp(torch.bmm(memory[contrast], anchor.unsqueeze(2)).squeeze(2) / self.tau)

    def _nce(self, h: Tensor) -> Tensor:
        noise = self.k / self.n  # K·P_n, P_n = 1/N
        eps = 1e-7
        positive = torch.log(h[:, 0] / (h[:, 0] + noise + eps))
        negative = torch.log(noise / (h[:, 1:] + noise + eps)).sum(dim=1)
        return -(positive + negative).mean()

    def forward(self, f_s: Tensor, f_t: Tensor, idx: Tensor) -> dict[str, Tensor]:
        e_s = F.normalize(self.embed_s(upcast(f_s)), dim=1)
        e_t = F.normalize(self.embed_t(upcast(f_t)), dim=1)
        contrast = torch.cat([idx.unsqueeze(1), self.negatives(idx)], dim=1)
        out_s = self._scores(self.memory_t, e_s, contrast)  # student anchor, teacher memory
        out_t = self._scores(self.memory_s, e_t, contrast)  # teacher anchor, student memory
        if not self._fixed:  # one host read per process: a resumed run has them already
            if torch.isnan(self.z_s).item():  # the first batch of the run fixes both normalisers
                self.z_s.copy_(out_s.detach().mean() * self.n)
                self.z_t.copy_(out_t.detach().mean() * self.n)
            self._fixed = True
        loss = self._nce(out_s / self.z_s) + self._nce(out_t / self.z_t)
        with torch.no_grad():
            m = self.momentum
            self.memory_s[idx] = F.normalize(m * self.memory_s[idx] + (1 - m) * e_s.detach(), dim=1)
            self.memory_t[idx] = F.normalize(m * self.memory_t[idx] + (1 - m) * e_t.detach(), dim=1)
        return {"crd": loss}


# ---------------------------------------------------------------------------------------------- ITRD
def itrd_correlation(z_s: Tensor, f_t: Tensor, alpha: float) -> Tensor:
    """L_corr = log2 Σ_d |c_d − 1|^(2α), c_d the batch correlation of dimension d of the two (same-width) sets."""
    n = z_s.shape[0]
    s = (z_s - z_s.mean(0)) / z_s.std(0)
    t = (f_t - f_t.mean(0)) / f_t.std(0)
    c = (s * t).sum(0) / n
    return torch.log2(((c - 1).abs() ** (2 * alpha)).sum())


def itrd_mutual(z_s: Tensor, f_t: Tensor) -> Tensor:
    """L_mi = ‖G_s / tr G_s‖²_F − ‖G_st / tr G_st‖²_F with G = unit rows' Gram matrices and G_st = G_s ⊙ G_t."""
    s, t = F.normalize(z_s, dim=1), F.normalize(f_t, dim=1)
    g_s = s @ s.T
    g_st = g_s * (t @ t.T)
    g_s = g_s / torch.diagonal(g_s).sum()
    g_st = g_st / torch.diagonal(g_st).sum()
    return (g_s.pow(2) - g_st.pow(2)).sum()


class ITRD(nn.Module):
    """ITRD's map and terms; `forward(f_s, f_t, idx)` returns {"corr": L_corr, "mi": L_mi} (idx unused)."""

    def __init__(self, cfg: ITRDFeatures, s_dim: int, t_dim: int):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Linear(s_dim, t_dim)
        self.same_width = s_dim == t_dim

    def forward(self, f_s: Tensor, f_t: Tensor, idx: Tensor | None = None) -> dict[str, Tensor]:
        f_s, f_t = upcast(f_s), upcast(f_t)
        z_s = self.embed(f_s)
        return {"corr": itrd_correlation(z_s, f_t, self.cfg.alpha),
                "mi": itrd_mutual(f_s if self.same_width else z_s, f_t)}

    def total(self, parts: dict[str, Tensor]) -> Tensor:
        return self.cfg.corr_weight * parts["corr"] + self.cfg.mi_weight * parts["mi"]


# ---------------------------------------------------------------------------------------------- in the trainer
class FeatureTerm(nn.Module):
    """The spec's feature term bound to a student and a teacher: `add(parts, idx)` reads both networks' latest
    penultimate features, adds weight·term to parts["loss"] and the term's parts under their own names."""

    def __init__(self, cfg: CRDFeatures | ITRDFeatures, student: nn.Module, teacher: nn.Module, labels: Tensor):
        super().__init__()
        self.weight = cfg.weight
        self._student, self._teacher = Penultimate(student, "student"), Penultimate(teacher, "teacher")
        s_dim, t_dim = self._student.dim, self._teacher.dim
        self.term: CRD | ITRD = CRD(cfg, s_dim, t_dim, labels) if isinstance(cfg, CRDFeatures) \
            else ITRD(cfg, s_dim, t_dim)

    def add(self, parts: dict[str, Tensor], idx: Tensor) -> dict[str, Tensor]:
        f_s, f_t = self._student.take(), self._teacher.take()
        term = self.term(f_s, f_t.detach(), idx)
        total = term["crd"] if isinstance(self.term, CRD) else self.term.total(term)
        return {**parts, "loss": parts["loss"] + self.weight * total, **term}
