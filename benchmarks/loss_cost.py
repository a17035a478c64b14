"""Loss cost: forward + backward time of the WTTM and TTM losses against KD (and CE, DKD, DIST for context) at
batch 512 with 100 and 1000 classes, on the CPU and, where present, the GPU. Target: WTTM, TTM ≤ 1.2 × KD.

    python -m benchmarks.loss_cost [--reps 200]
"""
from __future__ import annotations

import argparse
import time

import torch

from ttm.losses import compute_loss
from ttm.spec import CELoss, DISTLoss, DKDLoss, KDLoss, TTMLoss, WTTMLoss

CONFIGS = {
    "ce": CELoss(kind="ce"), "kd": KDLoss(kind="kd"), "ttm": TTMLoss(kind="ttm", gamma=0.3, beta=7.0),
    "wttm": WTTMLoss(kind="wttm", gamma=0.3, beta=1.5), "dkd": DKDLoss(kind="dkd"), "dist": DISTLoss(kind="dist"),
}


def time_loss(cfg, device, batch: int, classes: int, reps: int) -> float:
    """Median milliseconds of one forward + backward, over `reps` runs after a warm-up."""
    g = torch.Generator().manual_seed(0)
    z = (torch.randn(batch, classes, generator=g) * 3).to(device).requires_grad_(True)
    v = (torch.randn(batch, classes, generator=g) * 5).to(device)
    y = torch.randint(0, classes, (batch,), generator=g).to(device)
    times = []
    for i in range(reps + 10):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        compute_loss(cfg, z, v, y)["loss"].backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 10:
            times.append(time.perf_counter() - start)
        z.grad = None
    return 1000 * sorted(times)[len(times) // 2]


def main() -> None:
    from benchmarks.common import write_result

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--out")
    args = ap.parse_args()
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        for classes in (100, 1000):
            ms = {kind: time_loss(cfg, device, args.batch, classes, args.reps) for kind, cfg in CONFIGS.items()}
            rows.append({"device": device.type, "classes": classes, "batch": args.batch, "ms": ms,
                         "ttm_over_kd": ms["ttm"] / ms["kd"], "wttm_over_kd": ms["wttm"] / ms["kd"]})
    write_result("loss_cost", {"rows": rows}, args.out)


if __name__ == "__main__":
    main()
