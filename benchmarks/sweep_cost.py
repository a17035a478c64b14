"""Sweep cost: K students of one sweep trained as a student group (ttm.group: one data pipeline, one teacher
forward per batch) against the same K students as K separate jobs, resnet56 → resnet20 with WTTM (K values of β) on
CIFAR-100-shaped random images (the `synthetic` data set: speed only, never accuracy).

For K = 1, 4, 8: the wall time of the whole sweep (K `ttm.train.train` calls one after the other, as one worker runs
K queued jobs, against one `ttm.group.train_group` call; set-up, evaluation and checkpoints included) and the images/s
per student of epoch 2 (epoch 1 holds the warm-up). Targets: on the CPU a group of 4 costs ≤ 0.8 × four separate
jobs; on an H100/H200 a group of 8 costs ≤ 3 × one job.

First, a probe of `torch.func.stack_module_state` + `vmap`: 4 students' forward and backward as one vmapped call
against the plain loop over them (the group trains with the plain loop; this says whether batching would pay). The
JSON (benchmarks/results/sweep_cost-<device>.json) is rewritten after the probe and after every K.

    OMP_NUM_THREADS=2 python -m benchmarks.sweep_cost --ks 4,8,1 --steps 4 --probe-reps 2   # this 2-core CPU
    python -m benchmarks.sweep_cost                                                         # GPU: batch 256
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ttm.models import build_model
from ttm.spec import JobSpec, parse_spec

BETAS = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)


def sweep_specs(k: int, teacher: str, batch: int, steps: int, test: int, device: str) -> list[JobSpec]:
    return [parse_spec({
        "name": f"beta{beta:g}", "teacher": {"arch": "resnet56", "weights": teacher}, "student": {"arch": "resnet20"},
        "dataset": {"name": "synthetic", "num_classes": 100, "image_size": 32,
                    "subset": {"train": batch * steps, "test": test}},
        "loss": {"kind": "wttm", "gamma": 0.3, "beta": beta},
        "train": {"epochs": 2, "batch_size": batch, "lr": 0.05, "device": device, "schedule": {"kind": "constant"}},
    }) for beta in BETAS[:k]]


def separate_jobs(specs: list[JobSpec], root: Path) -> dict:
    from ttm.train import train

    rates = []
    start = time.perf_counter()
    for spec in specs:
        rates.append(train(spec, root / spec.name, resume=False).last_metrics["images_per_s"])  # epoch 2's
    return {"wall_s": time.perf_counter() - start, "img_s_per_student": statistics.mean(rates)}


def student_group(specs: list[JobSpec], root: Path) -> dict:
    from ttm.group import train_group

    rates: dict[int, float] = {}

    def on_metrics(member, epoch, metrics):
        if epoch == 2:
            rates[member.index] = metrics["images_per_s"]

    start = time.perf_counter()
    results = train_group(specs, [root / s.name for s in specs], on_metrics=on_metrics, resume=False)
    wall = time.perf_counter() - start
    assert all(r.state == "done" for r in results), [r.error for r in results]
    return {"wall_s": wall, "img_s_per_student": statistics.mean(rates.values())}


def vmap_probe(k: int, batch: int, reps: int, device: torch.device) -> dict:
    """Forward + backward of K resnet20 students on one batch: a plain loop, and one vmapped functional call over
    their stacked parameters and buffers (BatchNorm's running statistics stacked too)."""
    from torch.func import functional_call, grad, stack_module_state, vmap

    from ttm.losses import wttm_loss
    from ttm.spec import WTTMLoss

    loss_cfg = WTTMLoss(kind="wttm", gamma=0.3, beta=1.5)
    torch.manual_seed(0)
    students = [build_model("resnet20", 100).to(device) for _ in range(k)]
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 100, (batch,), device=device)
    v = torch.randn(batch, 100, device=device)

    def plain() -> None:
        for s in students:
            s.zero_grad(set_to_none=True)
            wttm_loss(s(x), v, y, loss_cfg)["loss"].backward()

    params, buffers = stack_module_state(students)
    base = copy.deepcopy(students[0]).to("meta")

    def loss_of(p, b, xb, yb, vb):
        return wttm_loss(functional_call(base, (p, b), (xb,)), vb, yb, loss_cfg)["loss"]

    grads_of = vmap(grad(loss_of), in_dims=(0, 0, None, None, None))

    def batched() -> None:
        grads_of(params, buffers, x, y, v)

    out: dict = {"k": k, "batch": batch, "reps": reps}
    for name, fn in (("plain_loop", plain), ("vmap", batched)):
        try:
            fn()  # warm-up
            times = []
            for _ in range(reps):
                _sync(device)
                t0 = time.perf_counter()
                fn()
                _sync(device)
                times.append(time.perf_counter() - t0)
            out[f"{name}_s"] = statistics.median(times)
        except Exception as err:  # vmap may not cover an operator of the model: say which, keep the plain figure
            out[f"{name}_error"] = f"{type(err).__name__}: {str(err)[:300]}"
    if "vmap_s" in out and "plain_loop_s" in out:
        out["vmap_over_plain"] = out["vmap_s"] / out["plain_loop_s"]
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ks", default="1,4,8", help="group sizes")
    ap.add_argument("--batch", type=int, default=None, help="default: 256 on a GPU, 64 on the CPU")
    ap.add_argument("--steps", type=int, default=40, help="optimizer steps per epoch (2 epochs)")
    ap.add_argument("--test", type=int, default=None, help="test images evaluated per epoch (default: one batch)")
    ap.add_argument("--probe-reps", type=int, default=3, help="timed repetitions of the vmap probe (0: skip it)")
    ap.add_argument("--out")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batch = args.batch or (256 if device.type == "cuda" else 64)
    ks = [int(k) for k in args.ks.split(",")]
    figures: dict = {"device": str(device), "batch": batch, "steps_per_epoch": args.steps, "epochs": 2,
                     "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "load_avg_before": os.getloadavg()[0],
                     "runs": {}}
    if args.probe_reps:  # first: it is short, and a run cut short keeps it
        figures["vmap_probe"] = vmap_probe(4, batch, args.probe_reps, device)
        _record(figures, args.out)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        torch.manual_seed(0)
        teacher = root / "resnet56.pt"
        torch.save(build_model("resnet56", 100).state_dict(), teacher)
        for k in ks:
            specs = sweep_specs(k, str(teacher), batch, args.steps, args.test or batch, device.type)
            separate = separate_jobs(specs, root / f"separate-{k}")
            group = student_group(specs, root / f"group-{k}")
            figures["runs"][str(k)] = {"separate": separate, "group": group,
                                       "group_over_separate": group["wall_s"] / separate["wall_s"]}
            _record(figures, args.out)  # after every K: a run cut short keeps what it measured


def _record(figures: dict, out: str | None) -> None:
    from benchmarks.common import write_result

    one_job = figures["runs"].get("1", {}).get("separate", {}).get("wall_s")
    if one_job:
        for run in figures["runs"].values():
            run["group_over_one_job"] = run["group"]["wall_s"] / one_job
    # each target is judged on its own kind of device only
    if "4" in figures["runs"] and figures["device"] == "cpu":
        figures["cpu_target_group4_le_0.8x_separate"] = figures["runs"]["4"]["group_over_separate"] <= 0.8
    if "8" in figures["runs"] and one_job and figures["device"].startswith("cuda"):
        figures["gpu_target_group8_le_3x_one_job"] = figures["runs"]["8"]["group_over_one_job"] <= 3
    figures["load_avg_after"] = os.getloadavg()[0]
    write_result("sweep_cost", figures, out)


if __name__ == "__main__":
    main()
