"""The paper's recipes as presets: `paper/cifar100/<teacher>-<student>/<kd|ttm|wttm|wttm_noce|wttm_crd|wttm_itrd>` and
`paper/imagenet/<teacher>-<student>/<kd|wttm>`.

Sources (see ../shared/paper/NOTES.md): γ, β from the paper's Tables 8, 9 and 10; the CIFAR-100 recipe is the
CRD/RepDistiller one (240 epochs, batch 64, SGD 0.9, wd 5e-4, lr 0.05 or 0.01 for MobileNetV2/ShuffleNet students,
×0.1 at 150/180/210); KD is T = 4 with CE weight 0.1 and KD weight 0.9. `wttm_noce` exists for the seven
same-architecture pairs, the only ones Table 8 gives a γ for; its β is the pair's WTTM β (with CE removed, β only
scales the loss). `wttm_crd` and `wttm_itrd` add CRD (μ = 0.8) or ITRD (μ = 1, β_corr = 2, β_mi = 1 or 0, α_it
1.01 or 1.5) to WTTM with the pair's γ, β of those columns (A.5; `ttm.features`). ImageNet follows torchdistill:
100 epochs, batch 256, lr 0.1, ×0.1 at 30/60/90, wd 1e-4, and KD with T = 1 and weights 0.5/0.5.
"""
from __future__ import annotations

import copy
from typing import Any

# teacher, student, TTM (γ, β), WTTM (γ, β), WTTM w/o CE γ or None, WTTM+CRD (γ, β), WTTM+ITRD (γ, β), and what
# the paper reports for the pair (CIFAR-100 test top-1 %; its Tables 1–4): teacher, student alone (CE), KD, TTM,
# WTTM, WTTM+CRD, WTTM+ITRD. The first seven pairs share an architecture family (Table 8), the rest do not (Table 9).
CIFAR100_PAIRS: list[tuple[str, str, tuple[float, float], tuple[float, float], float | None, tuple[float, float],
                           tuple[float, float], tuple[float, float, float, float, float, float, float]]] = [
    ("wrn_40_2", "wrn_16_2", (0.1, 101), (0.1, 4), 0.2, (0.1, 4), (0.3, 6),
     (75.61, 73.26, 74.92, 76.23, 76.37, 76.61, 76.65)),
    ("wrn_40_2", "wrn_40_1", (0.1, 76), (0.1, 3), 0.5, (0.1, 2), (0.4, 0.08),
     (75.61, 71.98, 73.54, 74.32, 74.58, 74.94, 75.34)),
    ("resnet56", "resnet20", (0.3, 7), (0.3, 1.5), 0.6, (0.3, 0.6), (0.5, 5),
     (72.34, 69.06, 70.66, 71.83, 71.92, 72.20, 72.16)),
    ("resnet110", "resnet20", (0.2, 8), (0.2, 2), 0.4, (0.2, 1.4), (0.3, 1.5),
     (74.31, 69.06, 70.67, 71.46, 71.67, 72.13, 72.20)),
    ("resnet110", "resnet32", (0.1, 33), (0.1, 1.5), 0.4, (0.2, 1), (0.3, 0.015),
     (74.31, 71.14, 73.08, 73.97, 74.13, 74.52, 74.36)),
    ("resnet32x4", "resnet8x4", (0.1, 100), (0.1, 3), 0.5, (0.2, 4), (0.1, 1.5),
     (79.42, 72.50, 73.33, 76.17, 76.06, 76.65, 77.36)),
    ("vgg13", "vgg8", (0.1, 45), (0.1, 2.25), 0.2, (0.2, 4), (0.1, 0.5),
     (74.64, 70.36, 72.98, 74.33, 74.44, 74.71, 75.13)),
    ("vgg13", "MobileNetV2", (0.2, 16), (0.2, 3), None, (0.3, 4.2), (0.3, 0.03),
     (74.64, 64.6, 67.37, 68.98, 69.16, 70.30, 70.70)),
    ("ResNet50", "MobileNetV2", (0.2, 20), (0.2, 5), None, (0.3, 3), (0.2, 0.02),
     (79.34, 64.6, 67.35, 69.24, 69.59, 70.84, 71.56)),
    ("ResNet50", "vgg8", (0.1, 70), (0.1, 2), None, (0.1, 3), (0.1, 1),
     (79.34, 70.36, 73.81, 74.87, 74.82, 75.30, 76.00)),
    ("resnet32x4", "ShuffleV1", (0.2, 12), (0.2, 1.4), None, (0.2, 0.4), (0.3, 0.6),
     (79.42, 70.5, 74.07, 74.18, 74.37, 75.82, 77.03)),
    ("resnet32x4", "ShuffleV2", (0.4, 40), (0.4, 16), None, (0.4, 12), (0.4, 0.8),
     (79.42, 71.82, 74.45, 76.57, 76.55, 77.04, 77.68)),
    ("wrn_40_2", "ShuffleV1", (0.3, 8), (0.3, 3), None, (0.2, 0.16), (0.1, 0.2),
     (75.61, 70.5, 74.83, 75.39, 75.42, 76.86, 77.44)),
]
SAME_FAMILY_PAIRS = 7  # the first seven rows (Table 8): ITRD's α_it is 1.01 for them, 1.5 for the others
# ITRD's β_mi (WTTM paper A.5, from the ITRD paper): 0 for these three pairs, 1 for the other ten; β_corr is 2
ITRD_NO_MI = {("ResNet50", "MobileNetV2"), ("ResNet50", "vgg8"), ("wrn_40_2", "ShuffleV1")}
SMALL_LR_STUDENTS = {"MobileNetV2", "ShuffleV1", "ShuffleV2"}

# The paper's figures by pair, for `ttm reproduce` to print beside its jobs.
PAPER_CIFAR100_TOP1: dict[tuple[str, str], dict[str, float]] = {
    (t, s): dict(zip(("teacher", "ce", "kd", "ttm", "wttm", "wttm_crd", "wttm_itrd"), top1))
    for t, s, *_, top1 in CIFAR100_PAIRS}

# teacher, student, WTTM (γ, β)
IMAGENET_PAIRS = [
    ("torchvision/resnet34", "torchvision/resnet18", (0.8, 1.6)),
    ("torchvision/resnet50", "mobilenet_v1", (0.7, 3.5)),
]


def _cifar_recipe(student: str) -> dict[str, Any]:
    return {
        "epochs": 240, "batch_size": 64, "optimizer": "sgd", "momentum": 0.9, "weight_decay": 5e-4,
        "lr": 0.01 if student in SMALL_LR_STUDENTS else 0.05,
        "schedule": {"kind": "step", "milestones": [150, 180, 210], "factor": 0.1},
    }


def _imagenet_recipe() -> dict[str, Any]:
    return {
        "epochs": 100, "batch_size": 256, "optimizer": "sgd", "momentum": 0.9, "weight_decay": 1e-4, "lr": 0.1,
        "schedule": {"kind": "step", "milestones": [30, 60, 90], "factor": 0.1},
    }


def _build() -> dict[str, dict[str, Any]]:
    presets: dict[str, dict[str, Any]] = {}
    for row, (teacher, student, (tg, tb), (wg, wb), noce_gamma, (cg, cb), (ig, ib), _) in enumerate(CIFAR100_PAIRS):
        base = {"teacher": {"arch": teacher}, "student": {"arch": student}, "dataset": {"name": "cifar100"},
                "train": _cifar_recipe(student)}
        losses = {
            "kd": {"kind": "kd", "temperature": 4.0, "kd_weight": 0.9, "ce_weight": 0.1},
            "ttm": {"kind": "ttm", "gamma": tg, "beta": tb, "ce_weight": 1.0},
            "wttm": {"kind": "wttm", "gamma": wg, "beta": wb, "ce_weight": 1.0},
        }
        # WTTM + μ·CRD (μ = 0.8) and WTTM + μ·ITRD (μ = 1), eq. 23 and A.5; CRD's own settings are its paper's
        losses["wttm_crd"] = {"kind": "wttm", "gamma": cg, "beta": cb, "ce_weight": 1.0, "features": {
            "kind": "crd", "weight": 0.8, "dim": 128, "negatives": 16384, "temperature": 0.07, "momentum": 0.5}}
        losses["wttm_itrd"] = {"kind": "wttm", "gamma": ig, "beta": ib, "ce_weight": 1.0, "features": {
            "kind": "itrd", "weight": 1.0, "corr_weight": 2.0,
            "mi_weight": 0.0 if (teacher, student) in ITRD_NO_MI else 1.0,
            "alpha": 1.01 if row < SAME_FAMILY_PAIRS else 1.5}}
        if noce_gamma is not None:
            losses["wttm_noce"] = {"kind": "wttm", "gamma": noce_gamma, "beta": wb, "ce_weight": 0.0}
        for method, loss in losses.items():
            presets[f"paper/cifar100/{teacher}-{student}/{method}"] = {**base, "loss": loss}
    for teacher, student, (wg, wb) in IMAGENET_PAIRS:
        base = {"teacher": {"arch": teacher}, "student": {"arch": student},
                "dataset": {"name": "imagefolder", "num_classes": 1000, "image_size": 224},
                "train": _imagenet_recipe()}
        short = f"{teacher.split('/')[-1]}-{student.split('/')[-1]}"
        presets[f"paper/imagenet/{short}/kd"] = {
            **base, "loss": {"kind": "kd", "temperature": 1.0, "kd_weight": 0.5, "ce_weight": 0.5}}
        presets[f"paper/imagenet/{short}/wttm"] = {
            **base, "loss": {"kind": "wttm", "gamma": wg, "beta": wb, "ce_weight": 1.0}}
    return presets


PRESETS: dict[str, dict[str, Any]] = _build()


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge `over` onto `base`; a loss or schedule of another kind replaces the preset's whole."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        prev = out.get(key)
        same_kind = not (isinstance(value, dict) and isinstance(prev, dict)
                         and "kind" in value and value.get("kind") != prev.get("kind"))
        if isinstance(value, dict) and isinstance(prev, dict) and same_kind:
            out[key] = _merge(prev, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def expand_preset(data: dict[str, Any]) -> dict[str, Any]:
    name = data["preset"]
    if name not in PRESETS:
        close = [p for p in PRESETS if name.rsplit("/", 1)[0] in p][:4]
        hint = f"; did you mean {', '.join(close)}" if close else "; `ttm presets` lists them"
        raise ValueError(f"unknown preset {name!r}{hint}")
    merged = _merge(PRESETS[name], data)
    # a teacher given as torchscript/job replaces the preset's arch: they carry their own
    t = data.get("teacher") or {}
    if isinstance(t, dict) and (t.get("torchscript") or t.get("job")) and "arch" not in t:
        merged["teacher"].pop("arch", None)
    return merged


def pair_jobs(pair: str, methods: list[str]) -> dict[str, dict[str, Any]]:
    """The paper's students of one CIFAR-100 pair (`paper/cifar100/<teacher>-<student>`) as job specs without the
    teacher's weights: CE (the student alone, the same recipe) and each method's preset. ValueError names what
    exists."""
    pair = pair.rstrip("/")
    known = sorted({name.rsplit("/", 1)[0] for name in PRESETS if name.startswith("paper/cifar100/")})
    if pair not in known:
        import difflib

        close = difflib.get_close_matches(pair, known, n=1)
        raise ValueError(f"unknown pair {pair!r}; " + (f"did you mean {close[0]}? " if close else "")
                         + f"known: {', '.join(known)}")
    specs: dict[str, dict[str, Any]] = {}
    for method in methods:
        if method == "ce":
            spec = copy.deepcopy(PRESETS[f"{pair}/kd"])
            del spec["teacher"]
            spec["loss"] = {"kind": "ce"}
        elif f"{pair}/{method}" in PRESETS:
            spec = {"preset": f"{pair}/{method}"}
        else:
            have = ["ce"] + [n.rsplit("/", 1)[1] for n in PRESETS if n.rsplit("/", 1)[0] == pair]
            raise ValueError(f"{pair} has no {method!r} student; it has {', '.join(have)}")
        specs[method] = spec
    return specs
